"""`python -m components status --stack S [--json]`: is the stack ready *now*?

Pulumi keeps the outputs of the last successful update, so after a failed `pulumi up` they still
say `ready: true`. This command tells the truth instead: it reads the stack's history (did the last
`up` succeed?), then logs in to every host over SSH, with the stack's pinned host key and private
key, and runs each host step's read-only check phase: the exact script `pulumi up` runs, with the
same desired values, in its `status` action, which never applies anything. Per host and step it
says in sync, drifted (with what was expected and seen), refused (a problem `up` cannot fix), or
the host is unreachable.

It needs what `pulumi` needs (`source tools/env.sh` and the stack's passphrase). Secrets (the SSH
key, the PCCS API key) are read with `pulumi config --show-secrets` into this process only; they go
to the hosts inside the SSH session's stdin, as in `pulumi up`, and are never printed.

Exit status: 0 ready; 3 drift since a successful `up` and nothing else; 1 any other not ready (the last
`up` failed, a step refuses, a host is unreachable); 2 the stack could not be read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from components.config.model import HostConfig, StackConfig
from components.config.reader import ConfigErrors
from components.config.stack import load_from_cli_json
from components.paths import REPO_ROOT
from components.probe.ssh import AuthenticationFailed, HostKeyMismatch, connect, load_private_key, run
from components.render.host_steps import host_checks
from components.render.status import HostStatus, StackStatus, StepStatus, last_update_of, render_table, step_status
from components.render.status import to_json as status_json
from components.render.steps import render

STEP_TIMEOUT_S = 120.0  # a check reads files, MSRs and one PCCS request; none waits long
CONNECT_TIMEOUT_S = 10.0
PULUMI_TIMEOUT_S = 120.0


class StatusError(Exception):
    """The stack itself could not be read: one message with the fix."""


def pulumi_json(args: Sequence[str], project: Path) -> Any:
    exe = shutil.which("pulumi") or str(REPO_ROOT / "bin" / "pulumi")
    if not os.access(exe, os.X_OK):
        raise StatusError("the Pulumi CLI is not on PATH; fix: source tools/env.sh (tools/quickstart.sh builds it)")
    try:
        p = subprocess.run(
            [exe, *args, "--json", "--cwd", str(project)],
            capture_output=True,
            text=True,
            timeout=PULUMI_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise StatusError(f"`pulumi {' '.join(args)}` did not answer in {PULUMI_TIMEOUT_S:.0f} s") from None
    if p.returncode != 0:
        said = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")] or p.stderr.strip().splitlines()[-1:]
        raise StatusError(
            f"`pulumi {' '.join(args)}` failed: {said[0] if said else 'no message'}; fix: source tools/env.sh, "
            "export PULUMI_CONFIG_PASSPHRASE, and name a stack that exists (pulumi stack ls)"
        )
    try:
        return json.loads(p.stdout or "null")
    except json.JSONDecodeError:
        raise StatusError(f"`pulumi {' '.join(args)}` printed no JSON") from None


def read_host(stack: StackConfig, host: HostConfig, index: int) -> HostStatus:
    ssh = host.ssh
    where = f"{ssh.address}:{ssh.port}"
    key_path = f"hosts[{index}].ssh"
    try:
        key = load_private_key(ssh.private_key.value)
    except ValueError as exc:
        return HostStatus(host.name, where, f"{key_path}.privateKey is {exc}; fix: set it from the key file")
    try:
        transport = connect(ssh.address, ssh.port, ssh.host_key, ssh.user, key, CONNECT_TIMEOUT_S)
    except HostKeyMismatch as exc:
        return HostStatus(
            host.name,
            where,
            f"{where} {exc} ({key_path}.hostKey); nothing was sent; fix: if the host was reinstalled, read its key "
            f"on the console and set {key_path}.hostKey, otherwise do not go on",
        )
    except AuthenticationFailed:
        return HostStatus(
            host.name, where, f"{where} refuses {key_path}.privateKey for user {ssh.user}; fix: authorise that key"
        )
    except OSError as exc:
        return HostStatus(
            host.name, where, f"cannot reach {where}: {exc.strerror or exc}; fix: check {key_path}.address and .port"
        )
    except Exception as exc:  # paramiko's SSHException and friends: no usable SSH server there
        return HostStatus(host.name, where, f"no SSH session with {where}: {type(exc).__name__}: {exc}")
    steps = []
    try:
        for check in host_checks(stack, host):
            rendered = render(check.step, check.params, "status")
            try:
                ran = run(transport, rendered.command, rendered.stdin, STEP_TIMEOUT_S)
            except Exception as exc:  # a timeout, a dropped session, a runaway output: this step only
                steps.append(StepStatus(check.step.name, check.resource, "failed", (f"{type(exc).__name__}: {exc}",)))
                continue
            steps.append(step_status(check.step.name, check.resource, ran.rc, ran.stdout, ran.stderr))
    finally:
        transport.close()
    return HostStatus(host.name, where, None, tuple(steps))


def stack_status(stack_name: str, project: Path) -> StackStatus:
    doc = pulumi_json(["config", "--show-secrets", "--stack", stack_name], project)
    try:
        stack = load_from_cli_json(doc or {}, stack_name, project / "stacks")
    except ConfigErrors as exc:
        raise StatusError(exc.render()) from None
    history = pulumi_json(["stack", "history", "--stack", stack_name], project) or []
    outputs = pulumi_json(["stack", "output", "--stack", stack_name], project) or {}
    ready = outputs.get("ready") if isinstance(outputs, dict) else None
    with ThreadPoolExecutor(max_workers=max(1, min(32, len(stack.hosts)))) as pool:
        hosts = list(pool.map(lambda ih: read_host(stack, ih[1], ih[0]), enumerate(stack.hosts)))
    return StackStatus(
        stack=stack_name,
        last_update=last_update_of(history if isinstance(history, list) else []),
        outputs_ready=ready if isinstance(ready, bool) else None,
        hosts=tuple(hosts),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m components status", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--stack", required=True, help="the stack to read (pulumi stack ls)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--cwd", type=Path, default=REPO_ROOT, help="the project directory (default: this checkout)")
    args = p.parse_args(argv)
    try:
        status = stack_status(args.stack, args.cwd)
    except StatusError as exc:
        print(f"error: status: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(status_json(status), indent=2) if args.json else render_table(status))
    return status.exit_code


if __name__ == "__main__":
    sys.exit(main())
