"""What the benchmarks record about the machine they ran on."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(**extra: str) -> dict:
    """The `machine` block of a benchmark's JSON: Python, CPU model and count, platform, plus `extra`
    (library versions that matter to that benchmark)."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        **extra,
    }


def write_result(path: Path, benchmark: str, **fields: object) -> None:
    """A benchmark's JSON: its name, when, the machine, then `fields`."""
    doc = {"benchmark": benchmark, "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": machine()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**doc, **fields}, indent=2) + "\n")
