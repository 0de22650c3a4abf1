"""Benchmark: `pulumi up` of a fleet on real SSH hosts, and a converged `up` again (issue 19).

    sudo .venv/bin/python bench/fleet_up.py [--hosts 16] [--out bench/results/fleet-up.json]

The hosts are the harness's OpenSSH servers in network namespaces (tests/support/hosts), each a
TDX-ready host with one H100, all logging in with one key (the stack-wide `ssh.privateKey`). The
first `up` runs every step on every host (BIOS verification, the kernel with its reboot, GPU CC
mode, DCAP); the second must change nothing and run no command on any host; then a changed kernel
argument must plan exactly the three kernel steps of every host, and a pin of one host (its GPU
model) only that host's steps. Records the wall times, writes JSON.
Needs root (network namespaces).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.fleet import timed_preview  # noqa: E402
from bench.machine import write_result  # noqa: E402
from tests.support.engine import (  # noqa: E402
    EXTRA_ARG,
    PCCS_API_KEY,
    Engine,
    changed_steps,
    engine_unavailable,
    host_stack_config,
    up_events,
)
from tests.support.hosts import profiles as H  # noqa: E402
from tests.support.hosts.nshost import namespace_hosts  # noqa: E402

RESULT = REPO / "bench" / "results" / "fleet-up.json"


def fleet_config(hosts: list) -> dict:
    """The plain config of a stack over `hosts`, as host_stack_config has it for one host."""
    first = host_stack_config(hosts[0], "h0")
    doc: dict = {"platform": {}, "dcap": {}, "gpu": {}}
    for key, text in first.items():
        if key.startswith("hosts["):
            continue
        # `pulumi config set --path` stores these typed; the stack file is written directly here.
        value: object = {"true": True, "false": False}.get(text, int(text) if text.isdigit() else text)
        section, _, leaf = key.partition(".")
        if leaf:
            leaf = leaf.replace("[0]", "")
            doc[section][leaf] = [value] if leaf == "extraKernelArgs" else value
        else:
            doc[section] = value
    doc["hosts"] = [
        {"name": f"gpu-{i:02d}", "ssh": {"address": h.address, "hostKey": h.host_key}} for i, h in enumerate(hosts)
    ]
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--hosts", type=int, default=16)
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args(argv)
    reason = engine_unavailable()
    if reason:
        print(f"bench/fleet_up.py needs the Pulumi toolchain and root: {reason}", file=sys.stderr)
        return 2
    profiles = [H.TDX_READY.replace(name=f"fleet_{i}", hostname=f"fleet-{i}") for i in range(args.hosts)]
    with tempfile.TemporaryDirectory(prefix="tdx-fleet-up-") as tmp, namespace_hosts(profiles) as by_name:
        hosts = [by_name[p.name] for p in profiles]
        eng = Engine(Path(tmp))
        eng.pin_fake_wheel(hosts[0].wheel_sha256)
        stack = "fleet"
        eng.pulumi("stack", "init", stack=stack)
        secrets = {"ssh.privateKey": hosts[0].client_private_key, "dcap.pccsApiKey": PCCS_API_KEY}
        eng.config_set(stack, {}, secret=secrets)
        path = eng.project / "stacks" / f"Pulumi.{stack}.yaml"
        doc = yaml.safe_load(path.read_text())
        for key, value in fleet_config(hosts).items():
            current = doc["config"].get(f"tdx-vllm:{key}")
            merged = {**current, **value} if isinstance(current, dict) and isinstance(value, dict) else value
            doc["config"][f"tdx-vllm:{key}"] = merged
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        preview = timed_preview(eng, stack)
        t = time.perf_counter()
        eng.up(stack, "up#1", timeout=1800)
        first = time.perf_counter() - t
        ready = eng.outputs(stack)["ready"]
        calls = [len(h.calls()) for h in hosts]
        t = time.perf_counter()
        p = eng.up(stack, "up#2 converged", True, "--json", timeout=1800)
        second = time.perf_counter() - t
        ops, summary = up_events(p.stdout)
        ran = sum(len(h.calls()) - n for h, n in zip(hosts, calls, strict=True))
        # A changed pin re-runs exactly the steps it reaches: a kernel argument, the kernel steps of
        # every host and nothing else.
        eng.config_set(stack, {"platform.extraKernelArgs[1]": "iommu=pt"})
        planned = changed_steps(eng.preview_json(stack))
        kernel = {f"gpu-{i:02d}-kernel-{s}" for i in range(len(hosts)) for s in ("cmdline", "reboot", "wait")}
        only_kernel = planned == dict.fromkeys(kernel, "update")
        # A pin of one host (its GPU model: another SKU's VBIOS and driver pins) plans only that host's steps.
        eng.pulumi("config", "rm", "--path", "platform.extraKernelArgs[1]", stack=stack)
        one = min(3, len(hosts) - 1)
        eng.config_set(stack, {f"hosts[{one}].gpu.model": "h200-sxm", f"hosts[{one}].gpu.count": "1"})
        one_host = changed_steps(eng.preview_json(stack))
        only_that_host = bool(one_host) and all(name.startswith(f"gpu-{one:02d}-") for name in one_host)
    row = {
        "hosts": args.hosts,
        "resources": preview["resources"],
        "preview_s": preview["wall_s"],
        "first_up_s": round(first, 1),
        "converged_up_s": round(second, 1),
        "ready": ready,
        "converged_changes": ops,
        "converged_summary": summary.get("resourceChanges"),
        "commands_run_by_converged_up": ran,
        "kernel_pin_change_plans_only_kernel_steps": only_kernel,
        "kernel_pin_change_updates": len(planned),
        "one_host_pin_change_plans_only_that_host": only_that_host,
        "one_host_pin_change_updates": sorted(one_host),
        "extra_kernel_arg": EXTRA_ARG,
    }
    for key, value in row.items():
        print(f"{key:>30}: {value}")
    ok = ready is True and ops == {} and ran == 0 and only_kernel and only_that_host
    verdict = "yes" if ok else "NO"
    print(
        "converged up changed nothing and ran nothing; a kernel pin plans only the kernel steps; "
        f"one host's pin plans only that host's steps: {verdict}"
    )
    write_result(args.out, "fleet up", row=row)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
