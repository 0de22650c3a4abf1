"""`python -m components status --stack S [--json] [collateral options]`: is the stack ready *now*?

Pulumi keeps the outputs of the last successful update, so after a failed `pulumi up` they still
say `ready: true`. This command tells the truth instead: it reads the stack's history (did the last
`up` succeed?), then logs in to every host over SSH, with the stack's pinned host key and private
key, and runs each host step's read-only check phase: the exact script `pulumi up` runs, with the
same desired values, in its `status` action, which never applies anything. Per host and step it
says in sync, drifted (with what was expected and seen), refused (a problem `up` cannot fix), or
the host is unreachable.

Then it attests every TD endpoint (the stack output `endpoints`) once, exactly as the verifying
proxy attests a connection (tdxattest/channel/probe.py), against the stack's `pins` output: the
verdict with each failed check and its fix, the TCB status and advisories, the collateral's
earliest nextUpdate and TCB evaluation data number, the GPU verdict and CC mode (the evidence's and
the host's). It warns `--warn-days` days (default 7) before the collateral expires, and names the
hosts a TCB recovery affects with the fix (BIOS / microcode, TDX module, DCAP packages), from the
collateral's TCB levels against the quote's. The collateral comes from `--pccs URL` (through the
on-disk cache), `--collateral FILE`, with `--root-ca DER` for a TEST PKI, or, for the dev stack's
TDs without TDX (pins `tdx: false`), `--accept-dev-test-root`, as for `tdxattest proxy`. Given
none of these, a stack with endpoints has its TDs listed as not attested, with a note naming the
options (and is not ready).

It needs what `pulumi` needs (`source tools/env.sh` and the stack's passphrase). Secrets (the SSH
key, the PCCS API key) are read with `pulumi config --show-secrets` into this process only; they go
to the hosts inside the SSH session's stdin, as in `pulumi up`, and are never printed.

Exit status: 0 ready (the last `up` succeeded, every host step in sync, every TD attested);
4 a TD refused or unreachable since a successful `up`, whatever else is wrong; 3 drift since a
successful `up` and nothing else; 1 any other not ready (the last `up` failed, a step refuses, a
host is unreachable, the TDs were not attested for want of a collateral source); 2 the stack, its
outputs or the options could not be used.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.config.model import HostConfig, SshConfig, StackConfig
from components.config.reader import ConfigErrors
from components.config.stack import load_from_cli_json
from components.paths import REPO_ROOT
from components.probe.kube import ClusterReadError, load_kubeconfig
from components.probe.kube_proxy import read_state, state_problems
from components.probe.ssh import AuthenticationFailed, HostKeyMismatch, connect, load_private_key, run
from components.render.host_steps import host_checks
from components.render.proxy import PROXY_STEP, pins_document, proxy_instances, proxy_params
from components.render.proxy_kubernetes import cluster_instances, configmap_name, object_name
from components.render.status import (
    DEFAULT_WARN_DAYS,
    EXIT_UNREADABLE,
    HostStatus,
    StackStatus,
    StepStatus,
    TdCollateral,
    TdGpu,
    TdState,
    TdStatus,
    failure_line,
    last_update_of,
    render_table,
    step_status,
)
from components.render.status import to_json as status_json
from components.render.steps import Rendered, render, render_stage
from tdxattest.cli._verification import add_appraisal_arguments

if TYPE_CHECKING:
    from tdxattest.channel.probe import Probe
    from tdxattest.dcap.appraise import Appraiser

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
    def checks() -> list[tuple[str, str, Rendered]]:
        return [(c.step.name, c.resource, render(c.step, c.params, "status")) for c in host_checks(stack, host)]

    return read_over_ssh(host.name, host.ssh, f"hosts[{index}].ssh", checks)


def read_proxy_host(stack: StackConfig, pins: Any) -> HostStatus | None:
    """The verifying proxy's host (`proxy:`), read like a GPU host: each unit's steady state (the
    retire phase: the current pins only, running, listening)."""
    proxy = stack.proxy
    # A proxy in a cluster (proxy.kubernetes) is the cluster's to report (kubectl rollout status).
    if proxy is None or proxy.ssh is None or stack.workload is None or not isinstance(pins, dict):
        return None
    ssh = proxy.ssh
    served = [(h.name, h.ssh.address, stack.workload.gateway_port) for h in stack.hosts]
    version = importlib.metadata.version("tdxattest")

    def checks() -> list[tuple[str, str, Rendered]]:
        return [
            (
                PROXY_STEP.name,
                f"proxy-{inst.td}-retire",
                render(PROXY_STEP, proxy_params(proxy, inst, pins, "retire", version), "status"),
            )
            for inst in proxy_instances(proxy, served)
        ]

    return read_over_ssh("proxy", ssh, "proxy.ssh", checks)


def read_proxy_cluster(stack: StackConfig, pins: Any) -> HostStatus | None:
    """The verifying proxy in a cluster (`proxy.kubernetes`), read through its kubeconfig: each TD's
    pins ConfigMap, and the pods started on it (the retire phase's steady state)."""
    proxy = stack.proxy
    if proxy is None or proxy.kubernetes is None or stack.workload is None or not isinstance(pins, dict):
        return None
    c = proxy.kubernetes
    tds = [h.name for h in stack.hosts] if stack.workload.kubernetes is None else ["kubernetes"]
    try:
        kubeconfig = load_kubeconfig(c.kubeconfig, c.context, "proxy.kubernetes.kubeconfig")
    except ClusterReadError as exc:
        return HostStatus("proxy", f"{c.namespace} (kubernetes)", str(exc))
    steps = []
    for inst in cluster_instances(proxy, [(td, "") for td in tds]):
        where = f"{c.namespace}/{object_name(c, inst)}"
        try:
            state = read_state(kubeconfig, c.namespace, configmap_name(c, inst), object_name(c, inst))
        except ClusterReadError as exc:
            return HostStatus("proxy", kubeconfig.server, str(exc))
        problems = state_problems(pins_document(pins), state, where)
        steps.append(
            StepStatus("proxy", f"proxy-{inst.td}-retire", "drifted" if problems else "in_sync", tuple(problems))
        )
    return HostStatus("proxy", kubeconfig.server, None, tuple(steps))


def read_proxy(stack: StackConfig, pins: Any) -> HostStatus | None:
    """The stack's verifying proxy, on a host or in a cluster."""
    if stack.proxy is not None and stack.proxy.kubernetes is not None:
        return read_proxy_cluster(stack, pins)
    return read_proxy_host(stack, pins)


def read_over_ssh(
    name: str, ssh: SshConfig, key_path: str, checks: Callable[[], list[tuple[str, str, Rendered]]]
) -> HostStatus:
    """Log in with the pinned host key and run the staged scripts' check, then each of `checks()`
    (step, resource, the rendered `status` action; rendered only once logged in)."""
    where = f"{ssh.address}:{ssh.port}"
    try:
        key = load_private_key(ssh.private_key.value)
    except ValueError as exc:
        return HostStatus(name, where, f"{key_path}.privateKey is {exc}; fix: set it from the key file")
    try:
        transport = connect(ssh.address, ssh.port, ssh.host_key, ssh.user, key, CONNECT_TIMEOUT_S)
    except HostKeyMismatch as exc:
        return HostStatus(
            name,
            where,
            f"{where} {exc} ({key_path}.hostKey); nothing was sent; fix: if the host was reinstalled, read its key "
            f"on the console and set {key_path}.hostKey, otherwise do not go on",
        )
    except AuthenticationFailed:
        return HostStatus(
            name, where, f"{where} refuses {key_path}.privateKey for user {ssh.user}; fix: authorise that key"
        )
    except OSError as exc:
        return HostStatus(
            name, where, f"cannot reach {where}: {exc.strerror or exc}; fix: check {key_path}.address and .port"
        )
    except Exception as exc:  # paramiko's SSHException and friends: no usable SSH server there
        return HostStatus(name, where, f"no SSH session with {where}: {type(exc).__name__}: {exc}")
    steps = []
    try:
        # The staged scripts first (every other check runs them), then each step's check.
        for step_name, resource, rendered in [("scripts", f"{name}-scripts", render_stage(action="status")), *checks()]:
            try:
                ran = run(transport, rendered.command, rendered.stdin, STEP_TIMEOUT_S)
            except Exception as exc:  # a timeout, a dropped session, a runaway output: this step only
                steps.append(StepStatus(step_name, resource, "failed", (f"{type(exc).__name__}: {exc}",)))
                continue
            steps.append(step_status(step_name, resource, ran.rc, ran.stdout, ran.stderr))
    finally:
        transport.close()
    return HostStatus(name, where, None, tuple(steps))


@dataclass(frozen=True)
class TdOptions:
    """Where the TDs' collateral comes from and how they are judged (the options of `tdxattest proxy`)."""

    collateral: str | None = None
    pccs: str | None = None
    cache_dir: str | None = None
    root_ca: str | None = None
    policy: str | None = None
    rim_service: str | None = None
    ocsp_responder: str | None = None
    dev_test_root: bool = False
    warn_days: int = DEFAULT_WARN_DAYS

    @property
    def has_source(self) -> bool:
        return bool(self.collateral or self.pccs or self.dev_test_root)


NO_SOURCE = (
    "the TDs ({names}) were not attested: no collateral source was given; fix: add --pccs URL (a PCCS that "
    "reaches Intel PCS, e.g. a host's on port 8081), or --collateral FILE (tdxattest collateral fetch), or, for "
    "the dev stack's TDs without TDX, --accept-dev-test-root"
)


def td_appraiser(outputs: Mapping[str, Any], options: TdOptions) -> Appraiser:
    """The appraiser for this stack's TDs: its `pins` output and the options. Raises StatusError."""
    from tdxattest.channel.probe import stack_appraiser
    from tdxattest.core.errors import InputError
    from tdxattest.core.pins import StackPins

    try:
        pins = StackPins.from_json(outputs.get("pins"))
    except InputError as exc:
        raise StatusError(
            f"the stack output `pins` is unusable: {exc}; fix: pulumi up exports it (pulumi stack output pins)"
        ) from None
    try:
        return stack_appraiser(
            pins,
            collateral=options.collateral,
            pccs=options.pccs,
            cache_dir=options.cache_dir,
            root_ca=options.root_ca,
            policy_path=options.policy,
            rim_service=options.rim_service,
            ocsp_responder=options.ocsp_responder,
            dev_test_root=options.dev_test_root,
        )
    except (InputError, OSError) as exc:
        raise StatusError(f"cannot attest the TDs: {exc}") from None


def td_status(name: str, host: str | None, seen: Probe) -> TdStatus:
    """What one probe of a TD endpoint showed, in the status's terms."""
    recovery = tuple(fix.text() for fix in seen.recovery)
    failures = tuple(
        failure_line(f.check, f.expected, f.seen, f.detail, seen.endpoint, recovery) for f in seen.failures
    )
    c = seen.collateral
    collateral = None
    if c is not None:
        earliest = min(c.next_updates, key=lambda k: c.next_updates[k]) if c.next_updates else None
        collateral = TdCollateral(c.next_update, earliest, c.tcb_evaluation_data_number, c.fmspc, c.source)
    g = seen.gpu
    gpu = None if g is None else TdGpu(g.accepted, g.served, g.count, g.cc_mode, g.environment, g.vbios, g.driver)
    state: TdState = "attested" if seen.accepted else "refused" if seen.reachable else "unreachable"
    return TdStatus(
        name,
        seen.endpoint,
        host,
        state,
        failures,
        seen.tcb_status,
        seen.advisories,
        collateral,
        recovery,
        gpu,
        seen.quote_source,
    )


def read_tds(
    endpoints: Mapping[str, Any], hosts: Mapping[str, str | None], appraiser: Appraiser | None, options: TdOptions
) -> tuple[TdStatus, ...]:
    """Attest every endpoint once (all at once); `appraiser` None: list them as not attested."""
    from tdxattest.channel.probe import probe_all

    if appraiser is None:
        return tuple(
            TdStatus(n, u if isinstance(u, str) else None, hosts.get(n), "not_attested") for n, u in endpoints.items()
        )
    urls = {n: u for n, u in endpoints.items() if isinstance(u, str) and u}
    try:
        seen = asyncio.run(probe_all(urls, appraiser, dev_test_root=options.dev_test_root))
    except Exception as exc:  # a bug, not the endpoints: name it per TD rather than a traceback
        why = f"status.error: expected a verdict, seen {type(exc).__name__}: {exc}"[:300]
        return tuple(TdStatus(n, urls.get(n), hosts.get(n), "refused", (why,)) for n in endpoints)
    out = []
    for name, url in endpoints.items():
        if name in seen:
            out.append(td_status(name, hosts.get(name), seen[name]))
            continue
        out.append(
            TdStatus(
                name,
                None,
                hosts.get(name),
                "unreachable",
                (
                    f"endpoint: expected https://HOST:PORT in the stack output endpoints.{name}, seen {url!r} "
                    "(the TD was not ready at the last successful `pulumi up`); fix: pulumi up",
                ),
            )
        )
    return tuple(out)


def stack_status(stack_name: str, project: Path, options: TdOptions | None = None) -> StackStatus:
    options = options or TdOptions()
    doc = pulumi_json(["config", "--show-secrets", "--stack", stack_name], project)
    try:
        stack = load_from_cli_json(doc or {}, stack_name, project / "stacks")
    except ConfigErrors as exc:
        raise StatusError(exc.render()) from None
    history = pulumi_json(["stack", "history", "--stack", stack_name], project) or []
    outputs = pulumi_json(["stack", "output", "--stack", stack_name], project) or {}
    if not isinstance(outputs, dict):
        outputs = {}
    ready = outputs.get("ready")
    given = outputs.get("endpoints")
    endpoints: dict[str, Any] = {str(k): v for k, v in given.items()} if isinstance(given, dict) else {}
    # A TD runs on the host of its name; the Kubernetes target's (`kubernetes`) on the cluster's nodes.
    td_hosts = {name: (name if any(h.name == name for h in stack.hosts) else None) for name in endpoints}
    appraiser, td_note = None, None
    if endpoints and options.has_source:
        appraiser = td_appraiser(outputs, options)
    elif endpoints:
        td_note = NO_SOURCE.format(names=", ".join(endpoints))
    now = int(time.time())
    with ThreadPoolExecutor(max_workers=max(1, min(32, len(stack.hosts) + 1))) as pool:
        tds_future = pool.submit(read_tds, endpoints, td_hosts, appraiser, options)
        proxy_future = pool.submit(read_proxy, stack, outputs.get("pins"))
        hosts = list(pool.map(lambda ih: read_host(stack, ih[1], ih[0]), enumerate(stack.hosts)))
        tds = tds_future.result()
        proxy_host = proxy_future.result()
    if proxy_host is not None:
        hosts.append(proxy_host)
    return StackStatus(
        stack=stack_name,
        last_update=last_update_of(history if isinstance(history, list) else []),
        outputs_ready=ready if isinstance(ready, bool) else None,
        hosts=tuple(hosts),
        tds=tds,
        now=now,
        warn_days=options.warn_days,
        td_note=td_note,
    )


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of days, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"0 or more days, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m components status", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--stack", required=True, help="the stack to read (pulumi stack ls)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--cwd", type=Path, default=REPO_ROOT, help="the project directory (default: this checkout)")
    # The TDs are judged with the options `tdxattest proxy` takes (the stack's own pins in place of --pins).
    add_appraisal_arguments(p, pins_required=False, dev_test_root=True, pins=False)
    p.add_argument(
        "--warn-days",
        type=_days,
        default=DEFAULT_WARN_DAYS,
        metavar="N",
        help=f"warn when a TD's collateral expires within N days (default {DEFAULT_WARN_DAYS}; Intel's sets "
        "are valid 30 days from issue and a PCCS refreshes them long before)",
    )
    args = p.parse_args(argv)
    options = TdOptions(
        collateral=args.collateral,
        pccs=args.pccs,
        cache_dir=args.cache_dir,
        root_ca=args.root_ca,
        policy=args.policy,
        rim_service=args.rim_service,
        ocsp_responder=args.ocsp_responder,
        dev_test_root=args.accept_dev_test_root,
        warn_days=args.warn_days,
    )
    try:
        status = stack_status(args.stack, args.cwd, options)
    except StatusError as exc:
        print(f"error: status: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    print(json.dumps(status_json(status), indent=2) if args.json else render_table(status))
    return status.exit_code


if __name__ == "__main__":
    sys.exit(main())
