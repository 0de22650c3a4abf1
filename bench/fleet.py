"""Benchmark: `pulumi preview` of fleets of 1, 16, 64 and 256 hosts with the real engine (issue 19).

    .venv/bin/python bench/fleet.py [--hosts 1,16,64,256] [--runs 1] [--out bench/results/fleet.json]

Each stack is the dev example (stacks/Pulumi.dev.yaml) with its rented host (no BMC) repeated N
times on documentation addresses, so nothing is contacted: preview runs the program and plans
every resource. The project is copied and run as the e2e tests run it (tests/support/engine.py: the
Pulumi CLI, language host and command provider built from Go modules, a file backend). For each
size it records the wall time, the number of resources and the peak RSS (VmHWM, sampled every
50 ms) of the CLI, the program's Python process and the providers. Goals on this machine: 64 hosts
in <= 8 s and <= 3x the 16-host time of the same run; CLI peak RSS <= 300 MB at 64 hosts.
"""

from __future__ import annotations

import argparse
import copy
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import write_result  # noqa: E402
from tests.support.engine import PULUMI, Engine, engine_unavailable, session_pids  # noqa: E402

RESULT = REPO / "bench" / "results" / "fleet.json"
PASSPHRASE = "dev-only-passphrase"  # the dev example's (README)
GOAL_64_S = 8.0
GOAL_RATIO = 3.0
GOAL_CLI_RSS_MB = 300.0
# RFC 5737 documentation networks: 762 addresses that route nowhere.
NETWORKS = ("192.0.2", "198.51.100", "203.0.113")


def fleet_stack(n: int) -> str:
    """The dev stack file with its rented host repeated `n` times (names gpu-000 ...), logging in with
    one key set once (`ssh.privateKey`), as a fleet does: a key per host makes the config passed to
    the program too large for Linux at about 210 hosts (components/config/stack.py, MAX_CONFIG_ENV)."""
    doc = yaml.safe_load((REPO / "stacks" / "Pulumi.dev.yaml").read_text())
    rented = next(h for h in doc["config"]["tdx-vllm:hosts"] if "bmc" not in h)
    doc["config"]["tdx-vllm:ssh"] = {"privateKey": rented["ssh"].pop("privateKey")}
    hosts = []
    for i in range(n):
        host = copy.deepcopy(rented)
        host["name"] = f"gpu-{i:03d}"
        host["ssh"]["address"] = f"{NETWORKS[i // 254]}.{i % 254 + 1}"
        hosts.append(host)
    doc["config"]["tdx-vllm:hosts"] = hosts
    return yaml.safe_dump(doc, sort_keys=False)


def role(pid: int) -> str | None:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    exe = Path(cmd[0].decode(errors="replace")).name
    script = Path(cmd[1].decode(errors="replace")).name if len(cmd) > 1 else ""
    if exe.startswith("pulumi-resource-") or script.startswith("pulumi-resource-"):
        return "providers"  # the command provider may be a script (tools/command-provider/)
    if exe == "pulumi":
        return "cli"
    if exe.startswith("pulumi-language-"):
        return "language_host"
    if exe.startswith("python"):  # the language host's interpreter running __main__.py
        return "program"
    return None


def peak_rss(pid: int) -> int:
    """VmHWM in KiB (the process's peak resident set so far)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def timed_preview(eng: Engine, stack: str, cli_profile: Path | None = None) -> dict:
    # As an operator runs it: the plain plan, not --json (which holds every input of every step).
    cmd = [str(PULUMI), "preview", "--stack", stack, "--non-interactive", "--color", "never"]
    if cli_profile is not None:  # the CLI's own Go CPU profile: `go tool pprof -top bin/pulumi PREFIX.*.cpu`
        cmd += ["--profiling", str(cli_profile.resolve())]
    t = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=eng.project, env=eng.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    peaks: dict[str, dict[int, int]] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for pid in session_pids(proc.pid):
                r = role(pid)
                if r is not None:
                    peaks.setdefault(r, {})[pid] = max(peaks.get(r, {}).get(pid, 0), peak_rss(pid))
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate(timeout=1800)
    wall = time.perf_counter() - t
    done.set()
    sampler.join()
    if proc.returncode != 0:
        text = (out + err).decode(errors="replace")
        raise SystemExit(f"pulumi preview of {stack} failed ({proc.returncode}):\n{text[-4000:]}")
    created = re.search(r"\+ (\d+) to create", out.decode())
    mb = {r: round(max(p.values()) / 1024, 1) for r, p in peaks.items() if p}
    providers = peaks.get("providers", {})
    return {
        "wall_s": round(wall, 2),
        "resources": int(created.group(1)) if created else None,
        "cli_rss_mb": mb.get("cli"),
        "program_rss_mb": mb.get("program"),
        "language_host_rss_mb": mb.get("language_host"),
        "providers_rss_mb": round(sum(providers.values()) / 1024, 1) if providers else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--hosts", default="1,16,64,256", help="fleet sizes, comma-separated")
    ap.add_argument("--runs", type=int, default=1, help="previews per size (the median is reported)")
    ap.add_argument(
        "--out", type=Path, help=f"default {RESULT.relative_to(REPO)} (fleet-skip-checkpoints.json with that option)"
    )
    ap.add_argument(
        "--sdk-patches",
        choices=("on", "off"),
        default="on",
        help="the program's remedies for the SDK's costs (components/resources/sdk_patches.py), or none",
    )
    ap.add_argument(
        "--skip-checkpoints",
        action="store_true",
        help="PULUMI_SKIP_CHECKPOINTS=true: the engine does not serialise the whole snapshot after every step",
    )
    ap.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="run the program under cProfile (its stats for the last size go to FILE; timings include the profiler)",
    )
    ap.add_argument(
        "--cli-profile",
        type=Path,
        metavar="PREFIX",
        help="the Pulumi CLI's CPU profile of each preview (pulumi --profiling PREFIX; read with go tool pprof)",
    )
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = RESULT.with_name("fleet-skip-checkpoints.json") if args.skip_checkpoints else RESULT
    reason = engine_unavailable()
    if reason:
        print(f"bench/fleet.py needs the Pulumi toolchain: {reason}", file=sys.stderr)
        return 2
    sizes = [int(n) for n in args.hosts.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="tdx-fleet-") as tmp:
        eng = Engine(Path(tmp))
        eng.env["PULUMI_CONFIG_PASSPHRASE"] = PASSPHRASE
        eng.env["TDX_VLLM_SDK_PATCHES"] = args.sdk_patches
        if args.skip_checkpoints:
            eng.env["PULUMI_SKIP_CHECKPOINTS"] = "true"
        if args.profile is not None:
            # The language host runs `$PULUMI_PYTHON_CMD -u pulumi-language-python-exec ...`.
            wrapper = Path(tmp) / "python-profiled"
            wrapper.write_text(
                "#!/bin/bash\n"
                '[ "${1:-}" = -u ] && shift\n'
                f'exec {eng.env["PULUMI_PYTHON_CMD"]} -u -m cProfile -o {args.profile.resolve()} "$@"\n'
            )
            wrapper.chmod(0o755)
            eng.env["PULUMI_PYTHON_CMD"] = str(wrapper)
        for n in sizes:
            stack = f"fleet-{n}"
            (eng.project / "stacks" / f"Pulumi.{stack}.yaml").write_text(fleet_stack(n))
            eng.pulumi("stack", "select", "--create", stack=stack)
            runs = [timed_preview(eng, stack, args.cli_profile) for _ in range(args.runs)]
            best = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
            rows.append({"hosts": n, **best, "runs_wall_s": [r["wall_s"] for r in runs]})
            print(f"  {n} hosts: {best['wall_s']} s", file=sys.stderr)
    by_hosts = {r["hosts"]: r for r in rows}
    goals = {}
    if 64 in by_hosts:
        goals["preview_64_le_8s"] = by_hosts[64]["wall_s"] <= GOAL_64_S
        goals["cli_rss_64_le_300mb"] = (by_hosts[64]["cli_rss_mb"] or 0) <= GOAL_CLI_RSS_MB
        if 16 in by_hosts:
            goals["ratio_64_16_le_3"] = by_hosts[64]["wall_s"] <= GOAL_RATIO * by_hosts[16]["wall_s"]
    heads = ("hosts", "resources", "wall_s", "cli_rss_mb", "program_rss_mb", "language_host_rss_mb", "providers_rss_mb")
    print(" ".join(f"{h:>20}" for h in heads))
    for r in rows:
        print(" ".join(f"{'-' if r[h] is None else r[h]!s:>20}" for h in heads))
    for name, ok in goals.items():
        print(f"goal {name}: {'met' if ok else 'NOT met'}")
    write_result(
        args.out,
        "fleet preview",
        sdk_patches=args.sdk_patches,
        skip_checkpoints=args.skip_checkpoints,
        rows=rows,
        goals=goals,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
