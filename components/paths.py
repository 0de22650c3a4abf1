"""Where the project's own files are. `TDX_VLLM_FIRMWARE_DIR` lets a platform team keep its pins
(BIOS tables, GPU SKUs, tool and TD artifact manifests) in a directory of its own; every reader
of firmware/ goes through FIRMWARE_DIR, so one setting moves all of them."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FIRMWARE_DIR = Path(os.environ.get("TDX_VLLM_FIRMWARE_DIR") or REPO_ROOT / "firmware").resolve()
