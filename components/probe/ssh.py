"""`python -m components ssh-check`: one SSH handshake with a host before any step runs, so that the
two first-contact mistakes fail at once with their fix instead of after the provider's ten dial
retries (about 11 s for a wrong host key, 13 s for a closed port, and no hint): a host key other
than the pinned one, and nothing answering at the address.

It only reads the key the server presents (no authentication, nothing runs on the host) and prints
one JSON line of facts. The TdxHost runs it as a local command ahead of preflight; it re-runs only
when the address, port or pinned key changes, so a converged stack does not dial.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import socket
import sys

CONNECT_TIMEOUT_S = 10.0


def fingerprint(blob: bytes) -> str:
    """OpenSSH's `SHA256:...` form (ssh-keygen -lf)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def presented_key(address: str, port: int, key_type: str, timeout_s: float = CONNECT_TIMEOUT_S) -> tuple[str, bytes]:
    """(type, wire blob) of the host key the server at address:port presents, asking for `key_type`
    first so that a server with several host keys shows the pinned kind."""
    import paramiko

    sock = socket.create_connection((address, port), timeout=timeout_s)
    transport = paramiko.Transport(sock)
    try:
        options = transport.get_security_options()
        options.key_types = [key_type, *(k for k in options.key_types if k != key_type)]
        transport.start_client(timeout=timeout_s)
        key = transport.get_remote_server_key()
        return key.get_name(), key.asbytes()
    finally:
        transport.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m components ssh-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--address", required=True)
    p.add_argument("--port", type=int, default=22)
    p.add_argument("--host-key", required=True, help="the pinned key, `TYPE BASE64`")
    p.add_argument("--key-path", default="hostKey", help="the config key that pins it (for the messages)")
    args = p.parse_args(argv)
    kind, b64 = args.host_key.split()[:2]
    pinned = base64.b64decode(b64)
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
