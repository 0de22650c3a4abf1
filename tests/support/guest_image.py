"""The TD guest image the slow tier boots: built from the recipe (tools/build-guest-image.sh) into a
cache keyed by the recipe hash, and the helpers the slow tests share."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.support.paths import REPO

BUILD = REPO / "tools" / "build-guest-image.sh"
CACHE = Path(os.environ.get("TDX_VLLM_GUEST_IMAGE_CACHE", REPO / "artifacts" / "guest-image-cache"))
BUILD_TIMEOUT_S = 1800


def missing_prerequisite() -> str | None:
    if os.geteuid() != 0:
        return "building the guest image needs root (debootstrap, chroot, mounts)"
    if shutil.which("qemu-system-x86_64") is None:
        return "missing qemu-system-x86_64 (apt-get install qemu-system-x86)"
    # The build's own preflight (tools, keyring, mirrors): one list, and its message when it fails.
    done = subprocess.run([str(BUILD), "--preflight"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or [f"{BUILD} --preflight exited {done.returncode}"])[-1]
    return None


def tail(path: Path, n: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""
