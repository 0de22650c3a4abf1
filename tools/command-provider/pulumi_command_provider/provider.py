"""Resource logic of the stand-in command provider, on `pulumi.provider.experimental.Provider`.

Semantics follow pulumi-command v1.2.1 as built with pulumi-go-provider's `infer`:

- check: applies the schema defaults (`addPreviousOutputInEnv` true; connection port 22, user
  root, dialErrorLimit 10, perDialTimeout 15), rejects unknown properties and wrong types.
- diff: structural over the input properties (old state vs new inputs), with a detailed diff per
  property path; `triggers` changes are replacements, everything else an update.
- create runs `create`; update runs `update`, else `create`; delete runs `delete`; each with the
  previous stdout/stderr as PULUMI_COMMAND_STDOUT/STDERR when `addPreviousOutputInEnv`.
- preview never runs anything: stdout/stderr are unknown on create, and on update when an input
  changed or is unknown.
- outputs = the checked inputs (same secretness, so secrets stay encrypted in the state) + stdout
  and stderr. Secretness flows only between same-named properties (infer's default), so stdout
  is not secret because stdin or the connection is: use `additionalSecretOutputs` for that.
- read (refresh) returns the state unchanged: a command has nothing to read back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
import grpc.aio
from pulumi.provider.experimental.property_value import Computed, PropertyValue
from pulumi.provider.experimental.provider import (
    CheckFailure,
    CheckRequest,
    CheckResponse,
    ConfigureRequest,
    ConfigureResponse,
    CreateRequest,
    CreateResponse,
    DeleteRequest,
    DiffRequest,
    DiffResponse,
    GetSchemaRequest,
    GetSchemaResponse,
    InvokeRequest,
    InvokeResponse,
    PropertyDiff,
    PropertyDiffKind,
    Provider,
    UpdateRequest,
    UpdateResponse,
)
from pulumi.runtime.proto import engine_pb2, engine_pb2_grpc

from . import PACKAGE, VERSION, ProviderError, ssh
from . import local as local_runner

# The engine's wire value for an unknown (computed) value (sdk/go/common/resource/plugin
# UnknownStringValue); the experimental PropertyValue neither decodes nor encodes unknowns.
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"

# __main__ hands assets/archives to the provider as maps with this key in place of the signature.
ASSET_MARK = "__pulumi_command_provider_sig__"

REMOTE = "command:remote:Command"
LOCAL = "command:local:Command"
RUN = "command:local:run"

STDOUT_ENV = "PULUMI_COMMAND_STDOUT"
STDERR_ENV = "PULUMI_COMMAND_STDERR"
LOGGING_VALUES = ("stdout", "stderr", "stdoutAndStderr", "none")

_COMMON = {
    "create": "string",
    "update": "string",
    "delete": "string",
    "triggers": "array",
    "stdin": "string",
    "logging": "logging",
    "environment": "map[string]",
    "addPreviousOutputInEnv": "bool",
}
INPUTS: dict[str, dict[str, str]] = {
    REMOTE: {**_COMMON, "connection": "connection"},
    LOCAL: {
        **_COMMON,
        "dir": "string",
        "interpreter": "array[string]",
        "assetPaths": "array[string]",
        "archivePaths": "array[string]",
    },
}
RUN_INPUTS = {
    "command": "string",
    "dir": "string",
    "environment": "map[string]",
    "interpreter": "array[string]",
    "stdin": "string",
    "logging": "logging",
    "addPreviousOutputInEnv": "bool",
    "assetPaths": "array[string]",
    "archivePaths": "array[string]",
}
CONNECTION_FIELDS = {
    "host": "string",
    "port": "number",
    "user": "string",
    "password": "string",
    "privateKey": "string",
    "privateKeyPassword": "string",
    "agentSocketPath": "string",
    "hostKey": "string",
    "dialErrorLimit": "integer",
    "perDialTimeout": "integer",
    "proxy": "object",
}
CONNECTION_DEFAULTS: dict[str, float | str] = {
    "port": 22.0,
    "user": "root",
    "dialErrorLimit": float(ssh.DEFAULT_DIAL_ERROR_LIMIT),
    "perDialTimeout": float(ssh.DEFAULT_PER_DIAL_TIMEOUT),
}
UNSUPPORTED = {
    "assetPaths": "assetPaths is not supported by this stand-in provider (tools/command-provider); "
    "use the official pulumi-command plugin",
    "archivePaths": "archivePaths is not supported by this stand-in provider (tools/command-provider); "
    "use the official pulumi-command plugin",
}


# --- property values ----------------------------------------------------------------------------


def is_unknown(pv: PropertyValue | None) -> bool:
    return pv is not None and (isinstance(pv.value, Computed) or pv.value == UNKNOWN)


def has_unknown(pv: PropertyValue | None) -> bool:
    if pv is None:
        return False
    if is_unknown(pv):
        return True
    v = pv.value
    if isinstance(v, Mapping):
        return any(has_unknown(x) for x in v.values())
    if isinstance(v, (tuple, list)):
        return any(has_unknown(x) for x in v)
    return False


def plain(pv: PropertyValue | None) -> Any:
    """The Python value inside (secrets unwrapped, nulls as None)."""
    if pv is None:
        return None
    v = pv.value
    if isinstance(v, Mapping):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (tuple, list)):
        return [plain(x) for x in v]
    return v


def unknown() -> PropertyValue:
    return PropertyValue(UNKNOWN)


def urn_type(urn: str) -> str:
    """The resource type of a URN. (The experimental SDK's `request.type` takes the whole qualified
    type, "parent$...$type", for resources that have a parent.)"""
    parts = urn.split("::", 3)
    return parts[2].rsplit("$", 1)[-1] if len(parts) == 4 else ""


def urn_name(urn: str) -> str:
    parts = urn.split("::", 3)
    return parts[3] if len(parts) == 4 else ""


def _absent(pv: PropertyValue | None) -> bool:
    return pv is None or pv.value is None


# --- check ----------------------------------------------------------------------------------------


def _type_failure(path: str, pv: PropertyValue, kind: str) -> str | None:
    if has_unknown(pv) and not isinstance(pv.value, (Mapping, tuple, list)):
        return None
    v = pv.value
    if kind == "string":
        ok = isinstance(v, str)
    elif kind == "bool":
        ok = isinstance(v, bool)
    elif kind in ("number", "integer"):
        ok = isinstance(v, float) and not isinstance(v, bool) and (kind == "number" or v == int(v))
    elif kind == "logging":
        if not isinstance(v, str):
            ok = False
        elif v not in LOGGING_VALUES:
            return f"{path}: expected one of {', '.join(LOGGING_VALUES)}, got {v!r}"
        else:
            ok = True
    elif kind == "map[string]":
        ok = isinstance(v, Mapping) and all(is_unknown(x) or isinstance(x.value, str) for x in v.values())
    elif kind == "array[string]":
        ok = isinstance(v, (tuple, list)) and all(is_unknown(x) or isinstance(x.value, str) for x in v)
    elif kind == "array":
        ok = isinstance(v, (tuple, list))
    elif kind in ("object", "connection"):
        ok = isinstance(v, Mapping)
    else:
        ok = True
    return None if ok else f"{path}: expected {kind}, got {type(v).__name__}"


def check_properties(
    props: Mapping[str, PropertyValue], schema: Mapping[str, str], what: str
) -> tuple[dict[str, PropertyValue], list[CheckFailure]]:
    failures: list[CheckFailure] = []
    out: dict[str, PropertyValue] = {}
    for key, pv in props.items():
        if _absent(pv):
            continue  # infer drops nulls: an optional property left unset
        kind = schema.get(key)
        if kind is None:
            failures.append(CheckFailure(key, f"{what} has no property {key!r} (pulumi-command {VERSION})"))
            continue
        if key in UNSUPPORTED:
            failures.append(CheckFailure(key, UNSUPPORTED[key]))
            continue
        problem = None if is_unknown(pv) else _type_failure(key, pv, kind)
        if problem:
            failures.append(CheckFailure(key, problem))
            continue
        if kind == "connection" and not is_unknown(pv):
            pv, conn_failures = _check_connection(pv)
            failures.extend(conn_failures)
        out[key] = pv
    if "addPreviousOutputInEnv" in schema and "addPreviousOutputInEnv" not in out:
        out["addPreviousOutputInEnv"] = PropertyValue(True)
    return out, failures


def _check_connection(pv: PropertyValue) -> tuple[PropertyValue, list[CheckFailure]]:
    failures: list[CheckFailure] = []
    fields: dict[str, PropertyValue] = {}
    for key, value in pv.value.items():  # type: ignore[union-attr]
        if _absent(value):
            continue
        kind = CONNECTION_FIELDS.get(key)
        path = f"connection.{key}"
        if kind is None:
            failures.append(CheckFailure(path, f"connection has no property {key!r} (pulumi-command {VERSION})"))
            continue
        if key == "proxy":
            failures.append(
                CheckFailure(
                    path,
                    "proxy (bastion) connections are not supported by this stand-in "
                    "provider (tools/command-provider); use the official plugin",
                )
            )
            continue
        problem = None if is_unknown(value) else _type_failure(path, value, kind)
        if problem:
            failures.append(CheckFailure(path, problem))
            continue
        fields[key] = value
    if "host" not in fields:
        failures.append(CheckFailure("connection.host", "missing required property 'host'"))
    for key, default in CONNECTION_DEFAULTS.items():
        fields.setdefault(key, PropertyValue(default))
    if "hostKey" in fields and not is_unknown(fields["hostKey"]):
        try:
            ssh.parse_host_key(fields["hostKey"].value)  # type: ignore[arg-type]
        except ValueError as exc:
            failures.append(CheckFailure("connection.hostKey", str(exc)))
    return PropertyValue(fields, is_secret=pv.is_secret, dependencies=pv.dependencies), failures


# --- diff -----------------------------------------------------------------------------------------

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


def _child(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if _IDENT.match(key) else f"{path}[{json.dumps(key)}]"


def diff_value(path: str, old: PropertyValue | None, new: PropertyValue | None) -> dict[str, PropertyDiffKind]:
    """Property paths that differ, as infer's detailed diff (secretness alone is no change)."""
    if _absent(old) and _absent(new):
        return {}
    if _absent(old):
        return {path: PropertyDiffKind.ADD}
    if _absent(new):
        return {path: PropertyDiffKind.DELETE}
    assert old is not None and new is not None
    if is_unknown(new):
        return {path: PropertyDiffKind.UPDATE}
    ov, nv = old.value, new.value
    if isinstance(ov, Mapping) and isinstance(nv, Mapping) and ASSET_MARK not in ov and ASSET_MARK not in nv:
        out: dict[str, PropertyDiffKind] = {}
        for k in list(ov) + [k for k in nv if k not in ov]:
            out.update(diff_value(_child(path, k), ov.get(k), nv.get(k)))
        return out
    if isinstance(ov, (tuple, list)) and isinstance(nv, (tuple, list)):
        out = {}
        for i in range(max(len(ov), len(nv))):
            out.update(diff_value(_child(path, i), ov[i] if i < len(ov) else None, nv[i] if i < len(nv) else None))
        return out
    return {} if plain(old) == plain(new) else {path: PropertyDiffKind.UPDATE}


_AS_REPLACE = {
    PropertyDiffKind.ADD: PropertyDiffKind.ADD_REPLACE,
    PropertyDiffKind.DELETE: PropertyDiffKind.DELETE_REPLACE,
    PropertyDiffKind.UPDATE: PropertyDiffKind.UPDATE_REPLACE,
}


def _ignore(news: dict[str, PropertyValue], olds: Mapping[str, PropertyValue], paths: Iterable[str]) -> None:
    for path in paths:
        top = re.split(r"[.\[]", path, maxsplit=1)[0]
        if top in olds:
            news[top] = olds[top]
        else:
            news.pop(top, None)


# --- engine log -------------------------------------------------------------------------------


class EngineLog:
    """Log messages for one resource operation, sent in order to the engine's Log RPC."""

    def __init__(self, stub: engine_pb2_grpc.EngineStub | None, urn: str, loop: asyncio.AbstractEventLoop):
        self.stub, self.urn, self.loop = stub, urn, loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task = loop.create_task(self._drain())

    async def _drain(self) -> None:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            severity, message, ephemeral = item
            if self.stub is None:
                continue
            try:
                await self.stub.Log(
                    engine_pb2.LogRequest(severity=severity, message=message, urn=self.urn, ephemeral=ephemeral)
                )
            except grpc.RpcError:
                pass

    def put(self, severity: int, message: str, ephemeral: bool) -> None:
        """Thread-safe."""
        item = (severity, message, ephemeral)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.queue.put_nowait(item)
        else:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def status(self, message: str) -> None:  # upstream: ctx.LogStatus(diag.Info, ...)
        self.put(engine_pb2.INFO, message, True)

    def warning(self, message: str) -> None:
        self.put(engine_pb2.WARNING, message, False)

    async def close(self) -> None:
        self.queue.put_nowait(None)
        await self.task


class _SshSink(ssh.Sink):
    def __init__(self, log: EngineLog):
        self.log = log

    def status(self, message: str) -> None:
        self.log.status(message)

    def warning(self, message: str) -> None:
        self.log.warning(message)

    def output(self, line: str) -> None:
        self.log.status(line)


# --- the provider ---------------------------------------------------------------------------------


class CommandProvider(Provider):
    def __init__(self, engine_address: str | None = None):
        self.engine_address = engine_address
        self._engine: engine_pb2_grpc.EngineStub | None = None
        self._channel: grpc.aio.Channel | None = None
        self._cancelled_thread = threading.Event()
        self._cancelled_async: asyncio.Event | None = None
        # Remote commands block (paramiko): each runs in a thread; reboot waits can be long.
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="remote-command")

    # engine plumbing

    def _engine_stub(self) -> engine_pb2_grpc.EngineStub | None:
        if self._engine is None and self.engine_address:
            from pulumi.runtime._grpc_settings import _GRPC_CHANNEL_OPTIONS

            self._channel = grpc.aio.insecure_channel(self.engine_address, options=_GRPC_CHANNEL_OPTIONS)
            self._engine = engine_pb2_grpc.EngineStub(self._channel)
        return self._engine

    def _async_cancel(self) -> asyncio.Event:
        if self._cancelled_async is None:
            self._cancelled_async = asyncio.Event()
            if self._cancelled_thread.is_set():
                self._cancelled_async.set()
        return self._cancelled_async

    async def cancel(self) -> None:
        self._cancelled_thread.set()
        self._async_cancel().set()

    async def configure(self, request: ConfigureRequest) -> ConfigureResponse:
        # No output values or resource references: PropertyValue.unmarshal mishandles some of them,
        # and a command needs neither.
        return ConfigureResponse(
            accept_secrets=True, supports_preview=True, accept_resources=False, accept_outputs=False
        )

    async def get_schema(self, request: GetSchemaRequest) -> GetSchemaResponse:
        return GetSchemaResponse(
            schema=json.dumps(
                {
                    "name": PACKAGE,
                    "version": VERSION,
                    "description": "Stand-in for pulumi-command (tools/command-provider): local, remote Command only.",
                }
            )
        )

    # check / diff

    async def check(self, request: CheckRequest) -> CheckResponse:
        schema = INPUTS.get(urn_type(request.urn))
        if schema is None:
            return CheckResponse(
                inputs=request.new_inputs,
                failures=[
                    CheckFailure(
                        "",
                        f"resource type {urn_type(request.urn)} is not supported by this stand-in provider "
                        f"(only {LOCAL} and {REMOTE}); use the official pulumi-command plugin",
                    )
                ],
            )
        inputs, failures = check_properties(request.new_inputs, schema, urn_type(request.urn))
        if (
            urn_type(request.urn) == REMOTE
            and "connection" not in inputs
            and not any(f.property.startswith("connection") for f in failures)
        ):
            failures.append(CheckFailure("connection", "missing required property 'connection'"))
        return CheckResponse(inputs=inputs, failures=failures or None)

    async def diff(self, request: DiffRequest) -> DiffResponse:
        schema = INPUTS.get(urn_type(request.urn), {})
        news = dict(request.new_inputs)
        _ignore(news, request.old_state, request.ignore_changes)
        detailed: dict[str, PropertyDiff] = {}
        diffs: list[str] = []
        replaces: list[str] = []
        for key in schema:
            changed = diff_value(key, request.old_state.get(key), news.get(key))
            if not changed:
                continue
            diffs.append(key)
            if key == "triggers":
                replaces.append(key)
                changed = {p: _AS_REPLACE[k] for p, k in changed.items()}
            detailed.update({p: PropertyDiff(kind=k, input_diff=True) for p, k in changed.items()})
        return DiffResponse(
            changes=bool(diffs), replaces=replaces, diffs=diffs, detailed_diff=detailed, delete_before_replace=False
        )

    # create / update / delete

    async def create(self, request: CreateRequest) -> CreateResponse:
        props = dict(request.properties)
        rid = urn_name(request.urn) + secrets.token_hex(4)  # upstream: resource.NewUniqueHex(name, 8, 0)
        if request.preview:
            return CreateResponse(resource_id=rid, properties={**props, "stdout": unknown(), "stderr": unknown()})
        stdout, stderr = "", ""
        command = plain(props.get("create"))
        if command is not None:
            stdout, stderr = await self._run(
                request.urn, urn_type(request.urn), props, command, props_prev=None, timeout_s=request.timeout
            )
        return CreateResponse(
            resource_id=rid, properties={**props, "stdout": PropertyValue(stdout), "stderr": PropertyValue(stderr)}
        )

    async def update(self, request: UpdateRequest) -> UpdateResponse:
        olds, news = request.olds, dict(request.news)
        old_out = {k: olds.get(k, PropertyValue("")) for k in ("stdout", "stderr")}
        if request.preview:
            schema = INPUTS.get(urn_type(request.urn), {})
            changed = any(diff_value(k, olds.get(k), news.get(k)) for k in schema) or any(
                has_unknown(v) for v in news.values()
            )
            outs = {"stdout": unknown(), "stderr": unknown()} if changed else old_out
            return UpdateResponse(properties={**news, **outs})
        command = plain(news.get("update"))
        if command is None:
            command = plain(news.get("create"))
        if command is None:
            return UpdateResponse(properties={**news, **old_out})
        stdout, stderr = await self._run(
            request.urn, urn_type(request.urn), news, command, props_prev=olds, timeout_s=request.timeout
        )
        return UpdateResponse(properties={**news, "stdout": PropertyValue(stdout), "stderr": PropertyValue(stderr)})

    async def delete(self, request: DeleteRequest) -> None:
        props = request.properties
        command = plain(props.get("delete"))
        if command is None:
            return
        await self._run(request.urn, urn_type(request.urn), props, command, props_prev=props, timeout_s=request.timeout)

    # invoke: command:local:run

    async def invoke(self, request: InvokeRequest) -> InvokeResponse:
        if request.tok != RUN:
            return InvokeResponse(
                failures=[
                    CheckFailure(
                        "",
                        f"function {request.tok} is not supported by this stand-in provider (only command:local:run)",
                    )
                ]
            )
        args, failures = check_properties(request.args, RUN_INPUTS, RUN)
        if "command" not in args:
            failures.append(CheckFailure("command", "missing required property 'command'"))
        if failures:
            return InvokeResponse(failures=failures)
        stdout, stderr = await self._run("", LOCAL, args, plain(args["command"]), props_prev=None, timeout_s=0)
        return InvokeResponse(return_value={**args, "stdout": PropertyValue(stdout), "stderr": PropertyValue(stderr)})

    # running

    async def _run(
        self,
        urn: str,
        typ: str,
        props: Mapping[str, PropertyValue],
        command: str,
        props_prev: Mapping[str, PropertyValue] | None,
        timeout_s: float,
    ) -> tuple[str, str]:
        logging = plain(props.get("logging")) or "stdoutAndStderr"
        log_stdout = logging in ("stdout", "stdoutAndStderr")
        log_stderr = logging in ("stderr", "stdoutAndStderr")
        environment = {k: str(v) for k, v in (plain(props.get("environment")) or {}).items()}
        stdin = plain(props.get("stdin"))
        add_previous = plain(props.get("addPreviousOutputInEnv"))
        previous: dict[str, str] = {}
        if props_prev is not None and add_previous is not False:
            for env_name, key in ((STDOUT_ENV, "stdout"), (STDERR_ENV, "stderr")):
                value = plain(props_prev.get(key))
                if isinstance(value, str) and value:
                    previous[env_name] = value
        timeout = timeout_s if timeout_s and timeout_s > 0 else None
        loop = asyncio.get_running_loop()
        log = EngineLog(self._engine_stub(), urn, loop)
        try:
            if self._cancelled_thread.is_set():
                raise ProviderError("the engine cancelled this deployment")
            if typ == REMOTE:
                conn = ssh.Connection.from_wire(plain(props["connection"]))
                control = ssh.Control(
                    deadline=time.monotonic() + timeout if timeout else None,
                    cancelled=self._cancelled_thread,
                    timeout_s=timeout,
                )
                return await loop.run_in_executor(
                    self._pool,
                    lambda: ssh.run(
                        conn,
                        command,
                        stdin=stdin,
                        environment=environment,
                        previous=previous,
                        log_stdout=log_stdout,
                        log_stderr=log_stderr,
                        control=control,
                        sink=_SshSink(log),
                    ),
                )
            interpreter = plain(props.get("interpreter"))
            return await local_runner.run(
                command,
                interpreter=interpreter,
                directory=plain(props.get("dir")),
                environment=environment,
                previous=previous,
                stdin=stdin,
                log_stdout=log_stdout,
                log_stderr=log_stderr,
                output=log.status,
                timeout_s=timeout,
                cancelled=self._async_cancel(),
            )
        except ValueError as exc:  # bad key material and the like
            raise ProviderError(str(exc)) from None
        finally:
            await log.close()
