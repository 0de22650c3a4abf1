"""Where the project's own files are. `TDX_VLLM_FIRMWARE_DIR` lets a platform team keep its pins
(BIOS tables, GPU SKUs, tool and TD artifact manifests) in a directory of its own; every reader
of firmware/ goes through FIRMWARE_DIR, so one setting moves all of them."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FIRMWARE_DIR = Path(os.environ.get("TDX_VLLM_FIRMWARE_DIR") or REPO_ROOT / "firmware").resolve()


def display_path(path: str | Path) -> str:
    """`path` relative to the repository when it is inside it (for messages and outputs)."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)
