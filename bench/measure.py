"""Benchmark: MRTD of a 4 MiB TDVF, both page-add orders (goal: <= 50 ms each, median).

    .venv/bin/python bench/measure.py [--firmware OVMF.fd] [--runs 30]

Prints a table and writes bench/results/measure.json. The default firmware is the Debian trixie
OVMF (4 MiB) from tests/fixtures/measurements/firmware, else from the artifact directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import cpu_model, machine  # noqa: E402
from tdxattest.core.mrtd import ORDERS, compute_mrtd  # noqa: E402
from tdxattest.core.tdvf import parse_tdvf  # noqa: E402

FIRMWARE_NAME = "ovmf-debian13-trixie-2025.02-8-deb13u1.fd"
CANDIDATES = (
    REPO / "tests" / "fixtures" / "measurements" / "firmware" / FIRMWARE_NAME,
    Path(os.environ.get("TDX_VLLM_ARTIFACT_DIR", REPO / "artifacts")) / FIRMWARE_NAME,
)
GOAL_MS = 50.0
RESULT = REPO / "bench" / "results" / "measure.json"


def timed(fn, runs: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--firmware", type=Path)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args(argv)
    if args.runs < 20:
        ap.error("--runs must be at least 20")
    path = args.firmware or next((p for p in CANDIDATES if p.is_file()), None)
    if path is None:
        print(f"no firmware: pass --firmware or provide one of {', '.join(map(str, CANDIDATES))}", file=sys.stderr)
        return 2
    fw = path.read_bytes()
    meta = parse_tdvf(fw)
    rows: list[tuple[str, list[float], float | None]] = []
    parse_ms = timed(lambda: parse_tdvf(fw), args.runs)
    rows.append(("parse TDVF metadata", parse_ms, None))
    for order in ORDERS:
        rows.append((f"MRTD {order}", timed(lambda o=order: compute_mrtd(fw, meta, o), args.runs), GOAL_MS))

    print(
        f"firmware: {path} ({len(fw)} bytes)   runs: {args.runs}   python {platform.python_version()}   {cpu_model()}"
    )
    print(f"{'case':<22} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'goal ms':>8}  ok")
    results = []
    ok_all = True
    for name, samples, goal in rows:
        med = statistics.median(samples)
        ok = goal is None or med <= goal
        ok_all &= ok
        print(
            f"{name:<22} {med:>10.2f} {min(samples):>8.2f} {max(samples):>8.2f} "
            f"{goal if goal is not None else '-':>8}  {'yes' if ok else 'NO'}"
        )
        results.append(
            {
                "case": name,
                "runs": len(samples),
                "median_ms": round(med, 3),
                "min_ms": round(min(samples), 3),
                "max_ms": round(max(samples), 3),
                "goal_ms": goal,
                "meets_goal": ok,
            }
        )
    doc = {
        "benchmark": "bench/measure.py",
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "firmware": {"file": path.name, "size": len(fw), "sha256": hashlib.sha256(fw).hexdigest()},
        "machine": machine(),
        "results": results,
        "all_goals_met": ok_all,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
