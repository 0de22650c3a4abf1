"""Copies of firmware/ for tests that run the program without the guest image's files."""
from __future__ import annotations

from pathlib import Path

import yaml

GUEST_KEYS = ("kernel", "initrd", "cmdline", "rootfs")
REASON = "guest image not pinned in this test copy of firmware/"


def unpin_guest_image(firmware_dir: Path) -> Path:
    """Leave the guest image out of the TD boot manifests in `firmware_dir` (a copy of firmware/),
    so `pins` comes from the firmware alone (MRTD; RTMR1/2 null with a reason): for the tests of
    host provisioning and promotion, which run where the ~100 MB guest image was never built."""
    for path in sorted((firmware_dir / "td").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        for key in GUEST_KEYS:
            data.pop(key, None)
        if "base" not in data:
            data.update(kernel={"file": None, "reason": REASON}, initrd={"file": None, "reason": REASON},
                        cmdline={"value": None, "reason": REASON})
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return firmware_dir
