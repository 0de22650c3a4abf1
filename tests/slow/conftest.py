"""Fixtures of tests/slow/: the guest image, built once per recipe (cached on disk) for every module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.guest_image import ImageBuildFailed, built_images, missing_prerequisite


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
    try:
        return built_images()
    except ImageBuildFailed as exc:
        pytest.fail(str(exc))
