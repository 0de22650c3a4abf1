"""The tdx-vllm policies as pure functions, and thin CrossGuard adapters.

Every `*_violations` function takes what CrossGuard shows a policy (resource type, properties as
plain Python values, and the stack name where a rule depends on it) and returns a list of
violation messages (empty = compliant). They import nothing that starts a policy pack, so
tests/policy/test_policy_validators.py calls them with hand-built properties.

What each rule inspects in this program's resources (see README "What `pulumi up` does"):

1. `no-gpu-devtools-outside-dev`: a `command:remote:Command` whose `stdin` (the rendered step
   script, components/steps.py) assigns `TDX_GPU_MODE=devtools` (quoted or not), in a stack
   not named `dev`. The stack name is read from the resource URN (`urn:pulumi:<stack>::...`).
2. `no-debug-td`: any property named `tdAttributes` (the `pins` stack output, docs/pins.md: 16
   hex digits, the TD_ATTRIBUTES bytes as in the quote, little-endian, DEBUG = bit 0), and any
   property named `attributes` whose value has that same 16-hex-digit shape (a future TD
   resource), must have DEBUG clear. A `tdAttributes` that is not 16 hex digits is a violation
   too (it cannot be checked). Checked on every resource's inputs and, at stack level, on every
   resource's outputs (the root `pulumi:pulumi:Stack` carries the stack outputs).
3. `images-by-digest`: every string property named `image`, at any depth (Kubernetes containers,
   a future workload resource), must be `<name>@sha256:<64 lowercase hex>`.
4. `host-keys-pinned`: every `command:remote:*` resource's `connection` (and its `proxy`, if any)
   must carry a non-empty `hostKey`.
5. `secrets-never-plain`: credentials in resource inputs must be Pulumi secrets:
   `connection.privateKey`, `connection.password`, `connection.privateKeyPassword` of
   `command:remote:*`; `environment` values of `command:local:Command`/`command:remote:Command`
   whose name looks like a credential (PASSWORD, API_KEY, TOKEN, SECRET,
   PRIVATE_KEY), e.g. `TDXGPU_BMC_PASSWORD`; and a `stdin` that assigns a non-empty credential
   variable (e.g. `TDX_PCCS_API_KEY=...`). A value counts as secret when it, or an enclosing
   object, is a `pulumi_policy.Secret`. Why not the stack config itself: the engine sends the
   decrypted config and its secret keys to the pack (AnalyzerStackConfigureRequest), but the
   Python policy SDK keeps only the stack tags from that request; and its `validate` callbacks
   see secrets already unwrapped. Only the remediation path sees secretness (see
   `secrets_policy` below).

Values CrossGuard cannot know during preview (e.g. `stdout`) are passed to the pure functions as
`UNKNOWN` and never treated as compliant or violating: a rule skips them.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Secret,
    StackValidationArgs,
    StackValidationPolicy,
)

DEV_STACK = "dev"
REMOTE_COMMAND = "command:remote:Command"
LOCAL_COMMAND = "command:local:Command"
TD_ATTR_DEBUG = 1 << 0


class _Unknown:
    """A value the engine does not know yet (preview)."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = _Unknown()
# The engine's unknown-value sentinels (pulumi_policy/proxy.py, sdk/go/common/resource/plugin/rpc.go).
_UNKNOWN_SENTINELS = frozenset(
    {
        "1c4a061d-8072-4f0a-a4cb-0ff528b18fe7",
        "3eeb2bf0-c639-47a8-9e75-3b44932eb421",
        "04da6b54-80e4-46f7-96ec-b56ff0331ba9",
        "6a19a0b0-7e62-4c92-b797-7f8e31da9cc2",
        "030794c1-ac77-496b-92df-f27374a8bd58",
        "e48ece36-62e2-4504-bad9-02848725956a",
        "dd056dcd-154b-4c76-9bd3-c8f88648b5ff",
    }
)

_HEX16 = re.compile(r"^[0-9a-fA-F]{16}$")
_DIGEST_REF = re.compile(r"^[^\s@]+@sha256:[0-9a-f]{64}$")
_ASSIGN = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.M)
# Not a user name: it is plain config (docs/decisions.md, Config), and a secret one would be masked
# everywhere in Pulumi's output.
_CREDENTIAL_NAME = re.compile(r"(PASSWORD|PASSWD|API_?KEY|TOKEN|SECRET|PRIVATE_?KEY)", re.I)
_CONNECTION_SECRETS = ("privateKey", "password", "privateKeyPassword")


def stack_of(urn: str) -> str:
    """The stack name in `urn:pulumi:<stack>::<project>::<type>::<name>`."""
    if not urn.startswith("urn:pulumi:") or "::" not in urn:
        raise ValueError(f"not a Pulumi URN: {urn!r}")
    return urn[len("urn:pulumi:") :].split("::", 1)[0]


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) for every mapping entry at any depth (through lists and secrets)."""
    if isinstance(value, Secret):
        yield from _walk(value.value, path)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            p = f"{path}.{k}" if path else str(k)
            yield p, str(k), v
            yield from _walk(v, p)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")


def _reveal(value: Any) -> Any:
    return value.value if isinstance(value, Secret) else value


def _assignments(script: str) -> dict[str, str]:
    """Shell `NAME=value` lines of a rendered step script (value unquoted as the shell would)."""
    out: dict[str, str] = {}
    for m in _ASSIGN.finditer(script):
        try:
            words = shlex.split(m.group(2), comments=True)
        except ValueError:
            continue
        out.setdefault(m.group(1), words[0] if words else "")
    return out


# --- 1. no GPU devtools outside dev ---------------------------------------------------------------


def gpu_devtools_violations(resource_type: str, props: Mapping[str, Any], stack: str) -> list[str]:
    if resource_type != REMOTE_COMMAND or stack == DEV_STACK:
        return []
    stdin = _reveal(props.get("stdin"))
    if not isinstance(stdin, str):
        return []
    if _assignments(stdin).get("TDX_GPU_MODE") == "devtools":
        return [
            f"stdin sets TDX_GPU_MODE=devtools in stack `{stack}`: GPU devtools mode unblocks GPU "
            f"debugging and is allowed only in the `{DEV_STACK}` stack; use `on` or `ppcie`"
        ]
    return []


# --- 2. no TD with DEBUG --------------------------------------------------------------------------


def td_debug_violations(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for path, key, value in _walk(props):
        value = _reveal(value)
        if key not in ("tdAttributes", "attributes") or value is UNKNOWN:
            continue
        if key == "attributes" and not (isinstance(value, str) and _HEX16.fullmatch(value)):
            continue  # not TD_ATTRIBUTES-shaped: some other resource's `attributes`
        if not (isinstance(value, str) and _HEX16.fullmatch(value)):
            out.append(f"{path} = {value!r} is not 16 hex digits (TD_ATTRIBUTES bytes): cannot check DEBUG")
            continue
        if int.from_bytes(bytes.fromhex(value), "little") & TD_ATTR_DEBUG:
            out.append(
                f"{path} = {value} has DEBUG (bit 0) set: a debuggable TD exposes its memory to the host; clear bit 0"
            )
    return out


# --- 3. images only by digest ---------------------------------------------------------------------


def image_digest_violations(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    out = []
    for path, key, value in _walk(props):
        value = _reveal(value)
        if key != "image" or value is UNKNOWN or not isinstance(value, str):
            continue
        if not _DIGEST_REF.fullmatch(value):
            out.append(f"{path} = {value!r} is not pinned by digest; use `name@sha256:<64 hex>`")
    return out


# --- 4. host keys pinned --------------------------------------------------------------------------


def host_key_violations(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    if not resource_type.startswith("command:remote:"):
        return []
    conn = _reveal(props.get("connection"))
    if conn is UNKNOWN:
        return []
    if not isinstance(conn, Mapping):
        return ["connection is missing: cannot pin the host key"]
    out = []
    for path, c in (("connection", conn), ("connection.proxy", _reveal(conn.get("proxy")))):
        if c is None or c is UNKNOWN or (path != "connection" and not isinstance(c, Mapping)):
            continue
        key = _reveal(c.get("hostKey"))
        if key is UNKNOWN:
            continue
        if not (isinstance(key, str) and key.strip()):
            out.append(
                f"{path}.hostKey is not set: the host key must be pinned (no trust on first use); "
                "set it from `ssh-keyscan -t ed25519 HOST` checked out of band"
            )
    return out


# --- 5. secrets never plain -----------------------------------------------------------------------


def _plain(value: Any) -> bool:
    """A known, non-empty value not marked secret."""
    return not isinstance(value, Secret) and value is not UNKNOWN and value not in (None, "")


def plain_secret_violations(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """`props` as the remediation path shows them: secret values wrapped in `Secret`."""
    out = []
    if resource_type.startswith("command:remote:"):
        conn = props.get("connection")
        if isinstance(conn, Mapping):  # a Secret connection hides all of its fields: fine
            for key in _CONNECTION_SECRETS:
                if _plain(conn.get(key)):
                    out.append(
                        f"connection.{key} is plain text: pass it as a Pulumi secret "
                        "(`pulumi config set --secret`, `pulumi.Output.secret`)"
                    )
    if resource_type in (LOCAL_COMMAND, REMOTE_COMMAND):
        env = props.get("environment")
        if isinstance(env, Mapping):
            for name, value in env.items():
                if _CREDENTIAL_NAME.search(str(name)) and _plain(value):
                    out.append(f"environment.{name} is plain text: pass it as a Pulumi secret")
        stdin = props.get("stdin")
        if isinstance(stdin, str):
            for name, value in _assignments(stdin).items():
                if _CREDENTIAL_NAME.search(name) and value:
                    out.append(
                        f"stdin assigns {name} but stdin is not secret: wrap it in `pulumi.Output.secret` "
                        "(host_step(..., secret=True))"
                    )
    return out


# --- CrossGuard adapters --------------------------------------------------------------------------


def plain_props(value: Any, keep_secrets: bool = False) -> Any:
    """CrossGuard's property proxies as plain values: the engine's unknown sentinels become
    UNKNOWN; with `keep_secrets` (the remediation path), secret values become `Secret(...)`.

    Both SDK proxies (unknown-checking and secret-preserving) expose their raw container under the
    key "__target"; reading it avoids the proxies' UnknownValueError and their secret unwrapping."""
    if isinstance(value, Secret):
        inner = plain_props(value.value, keep_secrets)
        return Secret(inner) if keep_secrets else inner
    if isinstance(value, str):
        return UNKNOWN if value in _UNKNOWN_SENTINELS else value
    if isinstance(value, dict):
        return {k: plain_props(v, keep_secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_props(v, keep_secrets) for v in value]
    if isinstance(value, (Mapping, Sequence)):
        try:
            raw = value["__target"]  # type: ignore[index,call-overload]  # a Mapping here; a Sequence raises
        except (KeyError, TypeError, IndexError):
            raw = None
        if isinstance(raw, (dict, list)):
            return plain_props(raw, keep_secrets)
        if isinstance(value, Mapping):
            return {k: plain_props(value[k], keep_secrets) for k in value}
        return [plain_props(v, keep_secrets) for v in value]
    return value


ResourceRule = Callable[[str, Mapping[str, Any]], list]


def _report_all(report: ReportViolation, messages: list[str], urn: str | None = None) -> None:
    for msg in messages:
        report(msg, urn)


def resource_policy(name: str, description: str, rule: ResourceRule) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report: ReportViolation) -> None:
        _report_all(report, rule(args.resource_type, plain_props(args.props)))

    return ResourceValidationPolicy(
        name=name, description=description, validate=validate, enforcement_level=EnforcementLevel.MANDATORY
    )


def gpu_devtools_policy() -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report: ReportViolation) -> None:
        _report_all(report, gpu_devtools_violations(args.resource_type, plain_props(args.props), stack_of(args.urn)))

    return ResourceValidationPolicy(
        name="no-gpu-devtools-outside-dev",
        description="GPU confidential-computing mode `devtools` only in the `dev` stack.",
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
    )


def td_debug_stack_policy() -> StackValidationPolicy:
    """Outputs too: the root stack resource carries the `pins` output (tdAttributes)."""

    def validate(args: StackValidationArgs, report: ReportViolation) -> None:
        for r in args.resources:
            _report_all(
                report,
                [
                    f"{r.resource_type} {r.name}: {m}"
                    for m in td_debug_violations(r.resource_type, plain_props(r.props))
                ],
                r.urn,
            )

    return StackValidationPolicy(
        name="no-debug-td-outputs",
        description="No resource output or stack output pins TD attributes with DEBUG set.",
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
    )


def secrets_policy() -> ResourceValidationPolicy:
    """Secretness is visible only to remediations (the SDK passes secret-preserving proxies there;
    `validate` gets secrets unwrapped). So: `remediate` (run by the engine first, in the same pack
    process) records the violations per URN and changes nothing; `validate` reports them. The SDK
    reports a REMEDIATE policy's validate violations as mandatory."""
    found: dict[str, list[str]] = {}

    def remediate(args: ResourceValidationArgs) -> None:
        found[args.urn] = plain_secret_violations(args.resource_type, plain_props(args.props, keep_secrets=True))
        return None

    def validate(args: ResourceValidationArgs, report: ReportViolation) -> None:
        _report_all(report, found.pop(args.urn, []))

    return ResourceValidationPolicy(
        name="secrets-never-plain",
        description="SSH keys, BMC credentials and API keys reach resources only as Pulumi secrets.",
        validate=validate,
        remediate=remediate,
        enforcement_level=EnforcementLevel.REMEDIATE,
    )


def policies() -> list:
    return [
        gpu_devtools_policy(),
        resource_policy("no-debug-td", "No TD resource with TD attributes DEBUG set.", td_debug_violations),
        td_debug_stack_policy(),
        resource_policy(
            "images-by-digest", "Container images only by digest (name@sha256:...).", image_digest_violations
        ),
        resource_policy("host-keys-pinned", "Every remote command pins the host key.", host_key_violations),
        secrets_policy(),
    ]
