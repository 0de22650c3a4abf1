"""Serve the provider over gRPC as a Pulumi resource plugin: the engine starts
`pulumi-resource-command <engine address> [flags]` and reads the port from the first stdout line.

The server is `pulumi.provider.experimental.server.ProviderServicer`, with the resource methods
re-done so that a failing command reaches the user as its own error text (the experimental
servicer appends a Python traceback to every error) and unknown values survive (its
PropertyValue has no encoding for them; see provider.UNKNOWN).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import traceback

import grpc
import grpc.aio
from google.protobuf import empty_pb2, struct_pb2
from pulumi.provider.experimental import provider as exp
from pulumi.provider.experimental.property_value import PropertyValue
from pulumi.provider.experimental.server import ProviderServicer
from pulumi.runtime import proto, rpc
from pulumi.runtime._grpc_settings import _GRPC_CHANNEL_OPTIONS
from pulumi.runtime.proto import provider_pb2_grpc

from . import VERSION, ProviderError
from . import local as local_runner
from .provider import ASSET_MARK, CommandProvider

# What the launcher changed in the environment for the provider itself, restored for commands.
_SAVED = {
    "PYTHONPATH": "PULUMI_COMMAND_PROVIDER_SAVED_PYTHONPATH",
    "PYTHONSAFEPATH": "PULUMI_COMMAND_PROVIDER_SAVED_PYTHONSAFEPATH",
}


def _restore_environment() -> None:
    original: dict[str, str | None] = {}
    if os.environ.get("PULUMI_COMMAND_PROVIDER_LAUNCHER") == "1":
        for name, saved in _SAVED.items():
            original[name] = os.environ.pop(saved, None)
        original["PULUMI_COMMAND_PROVIDER_LAUNCHER"] = None
    local_runner.set_env_restore(original)


# Assets and archives (e.g. a FileAsset in `triggers`) pass through as plain maps, so that their
# content hash takes part in the diff: PropertyValue.unmarshal keeps only their path/text/uri.
_SIG = rpc._special_sig_key
_ASSET_SIGS = (rpc._special_asset_sig, rpc._special_archive_sig)


def _rekey(value: struct_pb2.Value, hide: bool) -> None:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        _rekey_fields(value.struct_value, hide)
    elif kind == "list_value":
        for item in value.list_value.values:
            _rekey(item, hide)


def _rekey_fields(struct: struct_pb2.Struct, hide: bool) -> None:
    fields = struct.fields
    src, dst = (_SIG, ASSET_MARK) if hide else (ASSET_MARK, _SIG)
    if src in fields and (not hide or fields[src].string_value in _ASSET_SIGS):
        fields[dst].CopyFrom(fields[src])
        del fields[src]
    for item in fields.values():
        _rekey(item, hide)


def _decode(struct: struct_pb2.Struct) -> dict[str, PropertyValue]:
    copy = struct_pb2.Struct()
    copy.CopyFrom(struct)
    _rekey_fields(copy, hide=True)
    return PropertyValue.unmarshal_map(copy)


def _encode(props: dict[str, PropertyValue]) -> struct_pb2.Struct:
    struct = PropertyValue.marshal_map(props)
    _rekey_fields(struct, hide=False)
    return struct


_KIND = {
    exp.PropertyDiffKind.ADD: proto.PropertyDiff.ADD,
    exp.PropertyDiffKind.ADD_REPLACE: proto.PropertyDiff.ADD_REPLACE,
    exp.PropertyDiffKind.DELETE: proto.PropertyDiff.DELETE,
    exp.PropertyDiffKind.DELETE_REPLACE: proto.PropertyDiff.DELETE_REPLACE,
    exp.PropertyDiffKind.UPDATE: proto.PropertyDiff.UPDATE,
    exp.PropertyDiffKind.UPDATE_REPLACE: proto.PropertyDiff.UPDATE_REPLACE,
}


class CommandServicer(ProviderServicer):
    async def _guard(self, context, coro):
        try:
            return await coro
        except ProviderError as exc:
            await context.abort(grpc.StatusCode.UNKNOWN, str(exc))
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"pulumi-resource-command (stand-in) internal error: {exc!r}\n{traceback.format_exc()}",
            )

    async def Check(self, request, context):
        async def go():
            resp = await self._provider.check(
                exp.CheckRequest(request.urn, _decode(request.olds), _decode(request.news), request.randomSeed)
            )
            failures = [proto.CheckFailure(property=f.property, reason=f.reason) for f in resp.failures or []]
            return proto.CheckResponse(inputs=_encode(resp.inputs or {}), failures=failures)

        return await self._guard(context, go())

    async def Diff(self, request, context):
        async def go():
            resp = await self._provider.diff(
                exp.DiffRequest(
                    request.urn, request.id, _decode(request.olds), _decode(request.news), list(request.ignoreChanges)
                )
            )
            return proto.DiffResponse(
                replaces=resp.replaces,
                stables=resp.stables,
                deleteBeforeReplace=resp.delete_before_replace,
                changes=proto.DiffResponse.DIFF_SOME if resp.changes else proto.DiffResponse.DIFF_NONE,
                diffs=resp.diffs,
                detailedDiff={
                    k: proto.PropertyDiff(kind=_KIND[v.kind], inputDiff=v.input_diff)
                    for k, v in resp.detailed_diff.items()
                },
                hasDetailedDiff=True,
            )

        return await self._guard(context, go())

    async def Create(self, request, context):
        async def go():
            resp = await self._provider.create(
                exp.CreateRequest(request.urn, _decode(request.properties), request.timeout, request.preview)
            )
            return proto.CreateResponse(id=resp.resource_id or "", properties=_encode(resp.properties))

        return await self._guard(context, go())

    async def Update(self, request, context):
        async def go():
            resp = await self._provider.update(
                exp.UpdateRequest(
                    request.urn,
                    request.id,
                    _decode(request.olds),
                    _decode(request.news),
                    timeout=request.timeout,
                    ignore_changes=list(request.ignoreChanges),
                    preview=request.preview,
                )
            )
            return proto.UpdateResponse(properties=_encode(resp.properties))

        return await self._guard(context, go())

    async def Delete(self, request, context):
        async def go():
            await self._provider.delete(
                exp.DeleteRequest(request.urn, request.id, _decode(request.properties), timeout=request.timeout)
            )
            return empty_pb2.Empty()

        return await self._guard(context, go())

    async def Read(self, request, context):
        async def go():
            resp = await self._provider.read(
                exp.ReadRequest(request.urn, request.id, _decode(request.properties), _decode(request.inputs))
            )
            return proto.ReadResponse(
                id=resp.resource_id or request.id, properties=_encode(resp.properties), inputs=_encode(resp.inputs)
            )

        return await self._guard(context, go())

    async def Invoke(self, request, context):
        async def go():
            resp = await self._provider.invoke(exp.InvokeRequest(request.tok, _decode(request.args)))
            kwargs = {"return": _encode(resp.return_value) if resp.return_value else None}
            if resp.failures:
                kwargs["failures"] = [proto.CheckFailure(property=f.property, reason=f.reason) for f in resp.failures]
            return proto.InvokeResponse(**kwargs)

        return await self._guard(context, go())


def _exit_with_parent() -> None:
    """The engine starts plugins in their own process group, so a killed `pulumi` would leave this
    server behind: ask Linux to send SIGTERM when the parent dies (the handler stops the server)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before the request took effect
        sys.exit(0)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="pulumi-resource-command", description="Stand-in pulumi-command provider plugin (gRPC server)"
    )
    parser.add_argument("engine", nargs="?", help="the engine's gRPC address")
    parser.add_argument("--logflow", action="store_true")
    parser.add_argument("--logtostderr", action="store_true")
    parser.add_argument("--tracing")
    parser.add_argument("-v", type=int)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    args, _ = parser.parse_known_args(argv)
    if args.version:
        print(VERSION)
        return
    _restore_environment()
    _exit_with_parent()
    provider = CommandProvider(engine_address=args.engine)

    async def serve() -> None:
        server = grpc.aio.server(options=_GRPC_CHANNEL_OPTIONS)
        servicer = CommandServicer(argv, VERSION, provider, engine_address=args.engine or "")
        provider_pb2_grpc.add_ResourceProviderServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        sys.stdout.write(f"{port}\n")
        sys.stdout.flush()
        waiter = asyncio.ensure_future(server.wait_for_termination())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            await provider.cancel()
            await server.stop(grace=2)

    asyncio.run(serve())


if __name__ == "__main__":
    main(sys.argv[1:])
