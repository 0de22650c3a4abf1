"""Run a rendered host step (components.render.steps.Rendered) over SSH the way pulumi-command's
`remote.Command` does (pulumi/pulumi-command provider/pkg/provider/remote/{connection,commandOutputs}.go),
with paramiko:

- dial: TCP connect + SSH handshake, retried on failure with pulumi's retry.Until backoff (100 ms,
  x1.5, at most 5 s between dials) until `dial_error_limit` dials failed (-1 = unlimited; pulumi's
  default is 10); `per_dial_timeout` bounds each dial (pulumi: 15 s).
  Deliberate difference: a host key that differs from the pinned one, or a rejected client key,
  fails at once (pulumi would keep dialing until the limit): a test must never wait on those, and
  an unknown key is never accepted or remembered.
- one session per command: exec the command, write stdin, close our side (EOF), drain stdout and
  stderr until the exit status and EOF arrived; one trailing newline of each is trimmed.
- non-zero exit -> CommandFailed carrying the combined output, like pulumi's
  "<err>: running %q:\\n<stdout+stderr>".
- `deadline_s` bounds the whole call (dials included) so a test can never hang.
The facts are the JSON object on the last non-empty stdout line (components.remote_step.facts_of).
"""

from __future__ import annotations

import base64
import select
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import paramiko

from components.probe.ssh import load_private_key
from components.render.status import last_json_line

DEFAULT_DIAL_ERROR_LIMIT = 10
DEFAULT_PER_DIAL_TIMEOUT = 15.0


class SshRunError(Exception):
    pass


class DialError(SshRunError):
    """The host could not be reached (after the allowed dials)."""


class HostKeyMismatch(DialError):
    """The host presented a key other than the pinned one."""


class AuthFailed(DialError):
    pass


class DeadlineExceeded(SshRunError):
    pass


class CommandFailed(SshRunError):
    def __init__(self, command: str, exit_status: int, stdout: str, stderr: str, combined: str):
        self.command, self.exit_status = command, exit_status
        self.stdout, self.stderr, self.output = stdout, stderr, combined
        self.facts = parse_facts(stdout)
        super().__init__(f"Process exited with status {exit_status}: running {command!r}:\n{combined}")


@dataclass(frozen=True)
class Target:
    """pulumi-command's Connection: host, port, user, private key (PEM text), pinned host key
    ("ssh-ed25519 AAAA..."), dial policy."""

    host: str
    host_key: str
    private_key: str = field(repr=False)
    port: int = 22
    user: str = "root"
    dial_error_limit: int = DEFAULT_DIAL_ERROR_LIMIT
    per_dial_timeout: float = DEFAULT_PER_DIAL_TIMEOUT


@dataclass
class Result:
    stdout: str
    stderr: str
    facts: dict[str, Any] | None
    exit_status: int = 0
    dials: int = 1
    dial_errors: list[str] = field(default_factory=list)


# One reading of a step's facts and of a private key: the production code's own.
parse_facts = last_json_line
_load_key = load_private_key


def _pinned(host_key: str) -> paramiko.PKey:
    parts = host_key.split()
    if len(parts) < 2:
        raise ValueError(f"host key must be 'TYPE BASE64', got {host_key!r}")
    return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))


def _dial_once(t: Target, pkey: paramiko.PKey, pinned: paramiko.PKey, timeout: float) -> paramiko.Transport:
    sock = socket.create_connection((t.host, t.port), timeout=timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = transport.handshake_timeout = transport.auth_timeout = timeout
        opts = transport.get_security_options()
        opts.key_types = [pinned.get_name()] + [k for k in opts.key_types if k != pinned.get_name()]
        transport.start_client(timeout=timeout)
        seen = transport.get_remote_server_key()
        if seen.get_name() != pinned.get_name() or seen.asbytes() != pinned.asbytes():
            raise HostKeyMismatch(
                f"host key mismatch for {t.host}:{t.port}: pinned {pinned.get_name()} {pinned.get_base64()}, "
                f"offered {seen.get_name()} {seen.get_base64()}"
            )
        try:
            transport.auth_publickey(t.user, pkey)
        except paramiko.AuthenticationException as exc:
            raise AuthFailed(f"{t.user}@{t.host}:{t.port} rejected the client key: {exc}") from None
        return transport
    except BaseException:
        transport.close()
        raise


def dial(t: Target, *, deadline: float) -> tuple[paramiko.Transport, int, list[str]]:
    pkey, pinned = _load_key(t.private_key), _pinned(t.host_key)
    delay, dials = 0.1, 0
    errors: list[str] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(
                f"no SSH connection to {t.host}:{t.port} before the deadline; dial errors: {errors[-3:]}"
            )
        dials += 1
        try:
            return _dial_once(t, pkey, pinned, min(t.per_dial_timeout, remaining)), dials, errors
        except (HostKeyMismatch, AuthFailed):
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            if t.dial_error_limit > -1 and dials > t.dial_error_limit:
                raise DialError(f"dialing {t.host}:{t.port} failed {dials} times; last: {errors[-1]}") from exc
        time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
        delay = min(delay * 1.5, 5.0)


# The hosts whose step scripts are staged (host, port, host key: a new fake host has a new key).
_staged: set[tuple[str, int, str]] = set()


def run(
    target: Target,
    rendered: Any,
    *,
    deadline_s: float = 120.0,
    env: Mapping[str, str] | None = None,
    stage: bool = True,
) -> Result:
    """Run `rendered` (anything with .command and .stdin) on target; raise CommandFailed on a
    non-zero exit. env: session environment (dropped by sshd unless AcceptEnv allows it, as with
    pulumi-command). A step that runs staged scripts gets them staged first, once per host, by the
    `scripts` step `pulumi up` runs first (`stage=False`: as found)."""
    from components.render.steps import render_stage

    key = (target.host, target.port, target.host_key)
    stdin_text = rendered.stdin if isinstance(rendered.stdin, str) else ""
    if stage and "\n_tdx_need " in stdin_text and key not in _staged:
        _run(target, render_stage(), deadline_s=deadline_s, env=None)
        _staged.add(key)
    return _run(target, rendered, deadline_s=deadline_s, env=env)


def _run(target: Target, rendered: Any, *, deadline_s: float, env: Mapping[str, str] | None) -> Result:
    deadline = time.monotonic() + deadline_s
    transport, dials, dial_errors = dial(target, deadline=deadline)
    try:
        chan = transport.open_session(timeout=max(0.1, deadline - time.monotonic()))
        for k, v in (env or {}).items():
            chan.set_environment_variable(k, v)
        chan.exec_command(rendered.command)
        out, err, combined = bytearray(), bytearray(), bytearray()
        stdin = rendered.stdin.encode() if isinstance(rendered.stdin, str) else rendered.stdin
        if stdin:
            chan.settimeout(max(0.1, deadline - time.monotonic()))
            chan.sendall(stdin)
        chan.shutdown_write()
        chan.settimeout(0.0)
        exited_at = None
        while True:
            got = False
            while chan.recv_ready():
                data = chan.recv(65536)
                out += data
                combined += data
                got = True
            while chan.recv_stderr_ready():
                data = chan.recv_stderr(65536)
                err += data
                combined += data
                got = True
            if chan.exit_status_ready():
                exited_at = exited_at or time.monotonic()
                # the exit status comes after the output; wait briefly for EOF/close too
                if (
                    (chan.eof_received or chan.closed or time.monotonic() - exited_at > 2.0)
                    and not chan.recv_ready()
                    and not chan.recv_stderr_ready()
                ):
                    break
            if time.monotonic() > deadline:
                chan.close()
                raise DeadlineExceeded(
                    f"{rendered.command!r} on {target.host} ran past the deadline; "
                    f"output so far:\n{combined.decode(errors='replace')}"
                )
            if not got:
                select.select([chan], [], [], 0.05)
        status = chan.recv_exit_status()
    finally:
        transport.close()
    stdout = out.decode(errors="replace").removesuffix("\n")
    stderr = err.decode(errors="replace").removesuffix("\n")
    if status != 0:
        raise CommandFailed(rendered.command, status, stdout, stderr, combined.decode(errors="replace"))
    return Result(
        stdout=stdout,
        stderr=stderr,
        facts=parse_facts(stdout),
        exit_status=status,
        dials=dials,
        dial_errors=dial_errors,
    )
