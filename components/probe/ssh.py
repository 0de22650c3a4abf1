"""`python -m components ssh-check`: one SSH handshake with a host before any step runs, so that the
two first-contact mistakes fail at once with their fix instead of after the provider's ten dial
retries (about 11 s for a wrong host key, 13 s for a closed port, and no hint): a host key other
than the pinned one, and nothing answering at the address.

It only reads the key the server presents (no authentication, nothing runs on the host) and prints
one JSON line of facts. The TdxHost runs it as a local command ahead of preflight; it re-runs only
when the address, port or pinned key changes, so a converged stack does not dial.

`connect` and `run` are the same handshake with authentication after it, for the commands that read
hosts themselves (`python -m components status`): the key is compared before anything is sent.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

CONNECT_TIMEOUT_S = 10.0
# What a read-only step prints is one JSON line and a few error lines; more is a broken host.
MAX_OUTPUT_BYTES = 1 << 20


def fingerprint(blob: bytes) -> str:
    """OpenSSH's `SHA256:...` form (ssh-keygen -lf)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _handshake(address: str, port: int, key_type: str, timeout_s: float) -> Any:
    """A paramiko Transport after the key exchange (nothing authenticated or sent yet), asking for
    `key_type` first so that a server with several host keys shows the pinned kind."""
    import paramiko

    sock = socket.create_connection((address, port), timeout=timeout_s)
    transport = paramiko.Transport(sock)
    try:
        options = transport.get_security_options()
        options.key_types = [key_type, *(k for k in options.key_types if k != key_type)]
        transport.start_client(timeout=timeout_s)
    except BaseException:
        transport.close()
        raise
    return transport


def presented_key(address: str, port: int, key_type: str, timeout_s: float = CONNECT_TIMEOUT_S) -> tuple[str, bytes]:
    """(type, wire blob) of the host key the server at address:port presents."""
    transport = _handshake(address, port, key_type, timeout_s)
    try:
        key = transport.get_remote_server_key()
        return key.get_name(), key.asbytes()
    finally:
        transport.close()


def pinned_key(host_key: str) -> tuple[str, bytes]:
    """(type, wire blob) of a pinned key written `TYPE BASE64`."""
    kind, b64 = host_key.split()[:2]
    return kind, base64.b64decode(b64)


class HostKeyMismatch(Exception):
    """The server presented another key than the pinned one; nothing was sent to it."""

    def __init__(self, seen: str, pinned: str):
        super().__init__(f"presents {seen}, not the pinned {pinned}")
        self.seen, self.pinned = seen, pinned


class AuthenticationFailed(Exception):
    """The pinned host answered, but refused the stack's private key for the user."""


@dataclass(frozen=True)
class Ran:
    rc: int
    stdout: str
    stderr: str


def load_private_key(pem: str) -> Any:
    """A paramiko key from OpenSSH or PEM text, of whichever type it is."""
    import paramiko

    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(pem))
        except (paramiko.SSHException, ValueError):
            continue
    raise ValueError("not an unencrypted ed25519, ECDSA or RSA private key")


def connect(address: str, port: int, host_key: str, user: str, private_key: Any, timeout_s: float) -> Any:
    """An authenticated paramiko Transport to a host that presented exactly `host_key` (`TYPE BASE64`)."""
    import paramiko

    kind, pinned = pinned_key(host_key)
    transport = _handshake(address, port, kind, timeout_s)
    try:
        key = transport.get_remote_server_key()
        if (key.get_name(), key.asbytes()) != (kind, pinned):
            raise HostKeyMismatch(f"{key.get_name()} {fingerprint(key.asbytes())}", f"{kind} {fingerprint(pinned)}")
        try:
            transport.auth_publickey(user, private_key)
        except paramiko.AuthenticationException as exc:
            raise AuthenticationFailed(str(exc)) from None
        return transport
    except BaseException:
        transport.close()
        raise


def run(transport: Any, command: str, stdin: str, timeout_s: float) -> Ran:
    """Run `command` with `stdin` on an open Transport; stdout and stderr bounded, the whole run by
    `timeout_s` (TimeoutError)."""
    channel = transport.open_session(timeout=timeout_s)
    try:
        channel.exec_command(command)
        channel.sendall(stdin.encode())
        channel.shutdown_write()
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout_s
        while True:
            busy = False
            if channel.recv_ready():
                out += channel.recv(65536)
                busy = True
            if channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
                busy = True
            if len(out) > MAX_OUTPUT_BYTES or len(err) > MAX_OUTPUT_BYTES:
                raise ValueError(f"the command printed more than {MAX_OUTPUT_BYTES} bytes")
            if not busy:
                if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no end after {timeout_s:.0f} s")
                time.sleep(0.005)
        return Ran(channel.recv_exit_status(), out.decode(errors="replace"), err.decode(errors="replace"))
    finally:
        channel.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m components ssh-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--address", required=True)
    p.add_argument("--port", type=int, default=22)
    p.add_argument("--host-key", required=True, help="the pinned key, `TYPE BASE64`")
    p.add_argument("--key-path", default="hostKey", help="the config key that pins it (for the messages)")
    args = p.parse_args(argv)
    kind, pinned = pinned_key(args.host_key)
    where = f"{args.address}:{args.port}"
    path = args.key_path.rsplit(".", 1)[0]
    try:
        seen_kind, seen = presented_key(args.address, args.port, kind)
    except OSError as exc:
        print(
            f"error: ssh-check: cannot reach {where}: {exc.strerror or exc}; fix: check {path}.address and "
            f"{path}.port, and that sshd runs and the network lets this machine in",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:  # paramiko's SSHException and friends: not an SSH server, or a broken one
        print(
            f"error: ssh-check: no SSH handshake with {where}: {type(exc).__name__}: {exc}; fix: check that "
            f"{path}.address and {path}.port name the host's sshd",
            file=sys.stderr,
        )
        return 1
    facts = {"address": args.address, "port": args.port, "host_key": f"{seen_kind} {fingerprint(seen)}"}
    if (seen_kind, seen) != (kind, pinned):
        print(
            f"error: ssh-check: {where} presents {seen_kind} {fingerprint(seen)}, not the pinned {args.key_path} "
            f"({kind} {fingerprint(pinned)}); fix: if the host was reinstalled, read its key on the console "
            f"(`ssh-keygen -lf /etc/ssh/ssh_host_{kind.removeprefix('ssh-').removeprefix('ecdsa-sha2-')}_key.pub`) "
            f"and set {args.key_path}; otherwise do not go on: something else answers at that address",
            file=sys.stderr,
        )
        print(json.dumps({**facts, "ok": False}))
        return 1
    print(json.dumps({**facts, "ok": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
