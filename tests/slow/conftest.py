"""Fixtures of tests/slow/: the guest image, built once per recipe (cached on disk) for every module."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.guest_image import BUILD, BUILD_TIMEOUT_S, CACHE, missing_prerequisite, tail


@pytest.fixture(scope="session")
def images(request: pytest.FixtureRequest) -> dict[str, Path]:
    """{"prod": dir, "dev": dir} with vmlinuz, initrd.img, rootfs.verity.img, cmdline.txt, manifest.json."""
    if "slow" not in (request.config.getoption("markexpr", "") or "") and os.environ.get("TDX_VLLM_SLOW", "") in (
        "",
        "0",
    ):
        pytest.skip("slow tier (image build + QEMU boots, minutes): select it with `-m slow` or TDX_VLLM_SLOW=1")
    reason = missing_prerequisite()
    if reason:
        pytest.skip(reason)
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
            pytest.fail(f"image build failed ({done.returncode}), log {log}:\n" + tail(log, 40))
        # Keep one build (~410 MB: two root disks of ~190 MB): drop those of earlier recipes.
        for old in CACHE.iterdir():
            if not old.name.startswith(recipe[:16]):
                shutil.rmtree(old) if old.is_dir() else old.unlink()
    for stack, d in dirs.items():
        manifest = json.loads((d / "manifest.json").read_text())
        assert manifest["stack"] == stack
        for name, entry in manifest["files"].items():
            assert (d / name).stat().st_size == entry["size"], name
    return dirs
