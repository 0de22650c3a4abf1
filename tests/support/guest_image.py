"""The TD guest image the slow tier boots: built from the recipe (tools/build-guest-image.sh) into a
cache keyed by the recipe hash, and the helpers the slow tests share."""

from __future__ import annotations

import json
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


class ImageBuildFailed(RuntimeError):
    pass


def built_images() -> dict[str, Path]:
    """{"prod": dir, "dev": dir} with vmlinuz, initrd.img, rootfs.verity.img, cmdline.txt,
    manifest.json: the build of this checkout's recipe, from the cache or built now (minutes cold).
    Call `missing_prerequisite()` first."""
    recipe = subprocess.run(
        [str(BUILD), "--print-recipe-hash"], capture_output=True, text=True, check=True
    ).stdout.strip()
    out = CACHE / recipe[:16]
    dirs = {stack: out / stack for stack in ("prod", "dev")}
    if not all((d / "manifest.json").exists() for d in dirs.values()):
        out.mkdir(parents=True, exist_ok=True)
        log = out.parent / f"{recipe[:16]}.build.log"
        with log.open("w") as f:
            done = subprocess.run(
                [str(BUILD), "--stack", "all", "--out", str(out)],
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=BUILD_TIMEOUT_S,
                check=False,
            )
        if done.returncode != 0:
            raise ImageBuildFailed(f"image build failed ({done.returncode}), log {log}:\n" + tail(log, 40))
        # Keep one build (~410 MB: two root disks of ~190 MB): drop those of earlier recipes.
        for old in CACHE.iterdir():
            if not old.name.startswith(recipe[:16]):
                shutil.rmtree(old) if old.is_dir() else old.unlink()
    for stack, d in dirs.items():
        manifest = json.loads((d / "manifest.json").read_text())
        if manifest["stack"] != stack or any(
            (d / name).stat().st_size != entry["size"] for name, entry in manifest["files"].items()
        ):
            raise ImageBuildFailed(f"{d}: not the {stack} image its manifest.json describes (remove {out})")
    return dirs
