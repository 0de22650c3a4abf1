"""Run one command on a remote host over SSH the way pulumi-command's `remote.Command` does,
with paramiko.

Upstream (provider/pkg/provider/remote/{connection,commandOutputs}.go, Go's x/crypto/ssh):

- dial: TCP connect + SSH handshake + authentication, retried with pulumi's `retry.Until`
  backoff (100 ms, x1.5, at most 5 s between dials) until more than `dialErrorLimit` dials failed
  (-1: no limit). Every dial error counts, wrong host keys and rejected credentials included.
  Each retry is reported as an ephemeral "Dial n/limit failed: retrying" status line.
- auth: the private key (decrypted with `privateKeyPassword`), then the password (also answered
  to keyboard-interactive prompts), then the keys of the SSH agent at `agentSocketPath` or
  `$SSH_AUTH_SOCK`.
- one session per command: `environment` is sent as "env" requests (a refusal, i.e. sshd without
  a matching `AcceptEnv`, fails the command), then PULUMI_COMMAND_STDOUT/STDERR of the previous
  run (a refusal there only warns), then the command runs with `stdin` and EOF.
- stdout and stderr are captured separately (one trailing newline trimmed from each) and, in
  arrival order, into a combined buffer used for the error text
  "<exit error>: running <Go %q of the command>:\\n<combined output>".

Differences (all deliberate, see ../README.md): `perDialTimeout` bounds the whole dial (TCP,
handshake and authentication), not only the TCP connect; `hostKey` pins the server key and, when
it is absent, any key is accepted as upstream does but a warning says so; a deadline (the
engine's custom timeout) and cancellation bound dialing *and* the running command.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import paramiko
from paramiko.agent import AgentSSH

from . import CancelledError, CommandError, DeadlineError, format_run_error, go_quote

DEFAULT_PORT = 22
DEFAULT_USER = "root"
DEFAULT_DIAL_ERROR_LIMIT = 10
DEFAULT_PER_DIAL_TIMEOUT = 15

# pulumi sdk/go/common/util/retry: first delay, growth factor and cap between attempts.
RETRY_DELAY_S = 0.1
RETRY_BACKOFF = 1.5
RETRY_MAX_DELAY_S = 5.0

_KEY_CLASSES = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)


@dataclass(frozen=True)
class Connection:
    """`connection` of a remote.Command, with pulumi-command's defaults."""

    host: str
    port: int = DEFAULT_PORT
    user: str = DEFAULT_USER
    password: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)
    private_key_password: str | None = field(default=None, repr=False)
    agent_socket_path: str | None = None
    host_key: str | None = None
    dial_error_limit: int = DEFAULT_DIAL_ERROR_LIMIT
    per_dial_timeout: float = DEFAULT_PER_DIAL_TIMEOUT

    @classmethod
    def from_wire(cls, value: Mapping[str, Any]) -> Connection:
        def opt(name: str, default: Any = None) -> Any:
            v = value.get(name)
            return default if v is None else v

        return cls(
            host=str(value["host"]),
            port=int(opt("port", DEFAULT_PORT)),
            user=str(opt("user", DEFAULT_USER)),
            password=opt("password"),
            private_key=opt("privateKey"),
            private_key_password=opt("privateKeyPassword"),
            agent_socket_path=opt("agentSocketPath"),
            host_key=opt("hostKey") or None,
            dial_error_limit=int(opt("dialErrorLimit", DEFAULT_DIAL_ERROR_LIMIT)),
            per_dial_timeout=float(opt("perDialTimeout", DEFAULT_PER_DIAL_TIMEOUT)),
        )

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class Sink:
    """Where a run reports to (the engine log, in the provider). Called from the runner's thread."""

    def status(self, message: str) -> None:  # ephemeral info line (upstream: LogStatus)
        pass

    def warning(self, message: str) -> None:
        pass

    def output(self, line: str) -> None:  # one line of the command's logged output
        pass


@dataclass
class Control:
    """Deadline (time.monotonic() value, or None) and cancellation shared with the caller."""

    deadline: float | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    timeout_s: float | None = None

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self, what: str) -> None:
        if self.cancelled.is_set():
            raise CancelledError(f"{what}: cancelled")
        rem = self.remaining()
        if rem is not None and rem <= 0:
            raise DeadlineError(f"{what}: timed out after {self.timeout_s:g}s (the resource's custom timeout)")

    def bound(self, seconds: float | None) -> float | None:
        """`seconds` (None/0 = unbounded) capped by the time left before the deadline."""
        rem = self.remaining()
        if seconds is not None and seconds <= 0:
            seconds = None
        if rem is None:
            return seconds
        rem = max(rem, 0.01)
        return rem if seconds is None else min(seconds, rem)


# --- keys -------------------------------------------------------------------------------------


def load_private_key(text: str, password: str | None) -> paramiko.PKey:
    errors = []
    for cls in _KEY_CLASSES:
        try:
            return cls.from_private_key(io.StringIO(text), password=password)
        except paramiko.PasswordRequiredException:
            raise ValueError("ssh: this private key is passphrase protected (set privateKeyPassword)") from None
        except (paramiko.SSHException, ValueError, TypeError, IndexError) as exc:
            errors.append(f"{cls.__name__}: {exc}")
    raise ValueError("ssh: no key found in privateKey (supported: ed25519, ecdsa, rsa)")


def parse_host_key(text: str) -> paramiko.PKey:
    """An authorized_keys line ("[options] TYPE BASE64 [comment]"), as upstream's hostKey."""
    tokens = text.strip().split()
    for i, tok in enumerate(tokens[:-1]):
        if tok.startswith(("ssh-", "ecdsa-sha2-", "sk-")):
            try:
                blob = base64.b64decode(tokens[i + 1], validate=True)
                return paramiko.PKey.from_type_string(tok, blob)
            except (binascii.Error, paramiko.SSHException, ValueError, TypeError) as exc:
                raise ValueError(f"hostKey: cannot parse the {tok} key: {exc}") from None
    raise ValueError("hostKey: expected an authorized_keys line such as 'ssh-ed25519 AAAA... comment'")


class _PathAgent(AgentSSH):
    """The keys of the SSH agent listening at a given socket path."""

    def __init__(self, path: str):
        super().__init__()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        self._connect(sock)

    def close(self) -> None:
        self._close()


def _agent_keys(conn: Connection) -> tuple[list[paramiko.PKey], _PathAgent | None]:
    path = conn.agent_socket_path or os.environ.get("SSH_AUTH_SOCK") or None
    if not path:
        return [], None
    try:
        agent = _PathAgent(path)
    except OSError as exc:
        raise ValueError(f"dial unix {path}: {exc.strerror or exc}") from None
    return list(agent.get_keys()), agent


# --- dialing ------------------------------------------------------------------------------------


def _dial_once(
    conn: Connection,
    pkey: paramiko.PKey | None,
    pinned: paramiko.PKey | None,
    agent_keys: list[paramiko.PKey],
    timeout: float | None,
) -> paramiko.Transport:
    start = time.monotonic()

    def left() -> float | None:
        return None if timeout is None else max(timeout - (time.monotonic() - start), 0.01)

    try:
        sock = socket.create_connection((conn.host, conn.port), timeout=left())
    except TimeoutError:
        raise OSError(f"dial tcp {conn.endpoint}: i/o timeout") from None
    except OSError as exc:
        raise OSError(f"dial tcp {conn.endpoint}: connect: {(exc.strerror or str(exc)).lower()}") from None
    transport = paramiko.Transport(sock)
    try:
        if timeout is not None:
            transport.banner_timeout = transport.handshake_timeout = transport.auth_timeout = left()
        if pinned is not None:
            # Ask for the pinned key's type first so a server with several host keys offers it.
            opts = transport.get_security_options()
            name = pinned.get_name()
            if name in opts.key_types:
                opts.key_types = [name] + [k for k in opts.key_types if k != name]
        try:
            transport.start_client(timeout=left())
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise paramiko.SSHException(f"ssh: handshake failed: {exc or type(exc).__name__}") from None
        if pinned is not None:
            seen = transport.get_remote_server_key()
            if seen.get_name() != pinned.get_name() or seen.asbytes() != pinned.asbytes():
                raise paramiko.SSHException(
                    f"ssh: handshake failed: ssh: host key mismatch (pinned {pinned.get_name()} "
                    f"{pinned.fingerprint}, {conn.endpoint} offered {seen.get_name()} {seen.fingerprint})"
                )
        _authenticate(transport, conn, pkey, agent_keys)
        return transport
    except BaseException:
        transport.close()
        raise


def _authenticate(
    transport: paramiko.Transport, conn: Connection, pkey: paramiko.PKey | None, agent_keys: list[paramiko.PKey]
) -> None:
    tried: list[str] = []
    errors: list[str] = []

    def attempt(method: str, fn: Callable[[], Any]) -> bool:
        tried.append(method)
        try:
            fn()
        except paramiko.BadAuthenticationType as exc:
            errors.append(f"{method}: server allows only {', '.join(exc.allowed_types)}")
            return False
        except paramiko.AuthenticationException as exc:
            errors.append(f"{method}: {exc}")
            return False
        return transport.is_authenticated()

    if pkey is not None and attempt("publickey", lambda: transport.auth_publickey(conn.user, pkey)):
        return
    if conn.password is not None:
        if attempt("password", lambda: transport.auth_password(conn.user, conn.password, fallback=False)):
            return
        answer = conn.password
        if attempt(
            "keyboard-interactive",
            lambda: transport.auth_interactive(conn.user, lambda _t, _i, prompts: [answer] * len(prompts)),
        ):
            return
    for key in agent_keys:
        if attempt("publickey (agent)", functools.partial(transport.auth_publickey, conn.user, key)):
            return
    if not tried:
        raise paramiko.AuthenticationException(
            "ssh: handshake failed: ssh: unable to authenticate, no supported methods remain "
            "(set privateKey, password or an SSH agent)"
        )
    raise paramiko.AuthenticationException(
        f"ssh: handshake failed: ssh: unable to authenticate, attempted methods [{' '.join(dict.fromkeys(tried))}], "
        f"no supported methods remain ({'; '.join(errors)})"
    )


def dial(conn: Connection, control: Control, sink: Sink) -> paramiko.Transport:
    """Dial with upstream's retry policy, bounded by `control`."""
    pkey = load_private_key(conn.private_key, conn.private_key_password) if conn.private_key else None
    pinned = parse_host_key(conn.host_key) if conn.host_key else None
    if pinned is None:
        sink.warning(
            f"connection.hostKey is not set: the host key of {conn.endpoint} is not verified "
            "(pulumi-command accepts any host key); pin it with hostKey"
        )
    agent_keys, agent = _agent_keys(conn)
    limit = conn.dial_error_limit
    delay = RETRY_DELAY_S
    tries = 0
    try:
        while True:
            control.check(f"dialing {conn.endpoint}")
            try:
                return _dial_once(conn, pkey, pinned, agent_keys, control.bound(conn.per_dial_timeout))
            except (OSError, EOFError, paramiko.SSHException) as exc:
                dials = tries + 1
                message = str(exc) or type(exc).__name__
                if limit > -1 and dials > limit:
                    raise CommandError(f"after {tries} failed attempts: {message}") from None
                sink.status(f"Dial {dials}/{'inf' if limit == -1 else limit} failed: retrying")
                last = message
            tries += 1
            # Sleep before the next dial, waking for cancellation; the deadline ends the wait.
            wait = control.bound(delay)
            if control.cancelled.wait(wait if wait is not None else delay):
                control.check(f"dialing {conn.endpoint}")
            rem = control.remaining()
            if rem is not None and rem <= 0:
                raise DeadlineError(
                    f"dialing {conn.endpoint}: timed out after {control.timeout_s:g}s (the resource's custom "
                    f"timeout) and {tries} failed dials; last error: {last}"
                )
            delay = min(delay * RETRY_BACKOFF, RETRY_MAX_DELAY_S)
    finally:
        if agent is not None:
            agent.close()


# --- running ------------------------------------------------------------------------------------


def _request_env(chan: paramiko.Channel, name: str, value: str) -> bool:
    """Send an "env" request and wait for the reply (paramiko's set_environment_variable does not
    ask for one). False: the server refused, and paramiko closed the channel in response."""
    m = paramiko.Message()
    m.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
    m.add_int(chan.remote_chanid)
    m.add_string("env")
    m.add_boolean(True)
    m.add_string(name)
    m.add_string(value)
    chan._event_pending()
    chan.transport._send_user_message(m)
    try:
        chan._wait_for_event()
    except (paramiko.SSHException, EOFError):
        if chan.transport.is_active():
            return False
        raise
    return True


def _open_session(
    transport: paramiko.Transport, env: Mapping[str, str], previous: Mapping[str, str], control: Control, sink: Sink
) -> paramiko.Channel:
    chan = transport.open_session(timeout=control.bound(30.0))
    for k, v in env.items():
        if not _request_env(chan, k, v):
            message = (
                f"Unable to set '{k}'. This only works if your SSH server is configured to accept these "
                "variables via AcceptEnv. Alternatively, if a Bash-like shell runs the command on the remote "
                "host, you could prefix the command itself with the variables in the form 'VAR=value command'"
            )
            raise CommandError(f"could not set environment variable {k!r}: ssh: setenv failed ({message})")
    for k, v in previous.items():
        if not _request_env(chan, k, v):
            sink.warning(
                f"Unable to set '{k}'. This only works if your SSH server is configured to accept these "
                "variables via AcceptEnv."
            )
            # The refusal closed the channel: open a new one without the previous outputs.
            chan = transport.open_session(timeout=control.bound(30.0))
            for k2, v2 in env.items():
                if not _request_env(chan, k2, v2):
                    raise CommandError(f"could not set environment variable {k2!r}: ssh: setenv failed")
            break
    return chan


class _Lines:
    """Split a byte stream into complete text lines for the log."""

    def __init__(self, emit: Callable[[str], None]):
        self.emit, self.buf = emit, b""

    def feed(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            self.emit(line.decode("utf-8", "replace").rstrip("\r"))

    def flush(self) -> None:
        if self.buf:
            self.emit(self.buf.decode("utf-8", "replace").rstrip("\r"))
            self.buf = b""


def run(
    conn: Connection,
    command: str,
    *,
    stdin: str | None,
    environment: Mapping[str, str],
    previous: Mapping[str, str],
    log_stdout: bool,
    log_stderr: bool,
    control: Control,
    sink: Sink,
) -> tuple[str, str]:
    """Run `command` once; return (stdout, stderr), each with one trailing newline trimmed."""
    transport = dial(conn, control, sink)
    try:
        chan = _open_session(transport, environment, previous, control, sink)
        chan.exec_command(command)
        out, err, both = bytearray(), bytearray(), bytearray()
        lines = _Lines(sink.output)
        pending = (stdin or "").encode()
        eof_sent = False
        if not pending:
            chan.shutdown_write()
            eof_sent = True
        while True:
            try:
                control.check(f"running {go_quote(command)} on {conn.endpoint}")
            except (DeadlineError, CancelledError) as exc:
                chan.close()
                lines.flush()
                raise type(exc)(f"{exc}; output so far:\n{both.decode('utf-8', 'replace')}") from None
            got = False
            while chan.recv_ready():
                data = chan.recv(65536)
                if not data:
                    break
                got = True
                out += data
                both += data
                if log_stdout:
                    lines.feed(data)
            while chan.recv_stderr_ready():
                data = chan.recv_stderr(65536)
                if not data:
                    break
                got = True
                err += data
                both += data
                if log_stderr:
                    lines.feed(data)
            if not eof_sent and chan.send_ready():
                try:
                    n = chan.send(pending[:32768])
                except (OSError, paramiko.SSHException):
                    n, pending = 0, b""  # the command closed its stdin (or exited)
                pending = pending[n:]
                got = got or n > 0
                if not pending:
                    try:
                        chan.shutdown_write()
                    except (OSError, EOFError, paramiko.SSHException):
                        pass
                    eof_sent = True
            if (
                chan.exit_status_ready()
                and chan.eof_received
                and not chan.recv_ready()
                and not chan.recv_stderr_ready()
            ):
                break
            if chan.closed and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if not got:
                select.select([chan], [], [], 0.05 if not eof_sent else 0.5)
        lines.flush()
        status = chan.recv_exit_status() if chan.exit_status_ready() else -1
        if status != 0:
            reason = (
                f"Process exited with status {status}"
                if status > 0
                else "wait: remote command exited without exit status or exit signal"
            )
            raise CommandError(format_run_error(reason, command, both.decode("utf-8", "replace")))
        return (out.decode("utf-8", "replace").removesuffix("\n"), err.decode("utf-8", "replace").removesuffix("\n"))
    finally:
        transport.close()
