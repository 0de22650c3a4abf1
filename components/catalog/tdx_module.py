"""The TDX module releases a stack may pin as `platform.tdxModule` (firmware/tdx-module.yaml)."""

from __future__ import annotations

from pathlib import Path

from components.catalog.pinfile import read_pin_file
from components.paths import FIRMWARE_DIR


def known_tdx_modules(firmware_dir: Path = FIRMWARE_DIR) -> tuple[str, ...]:
    data = read_pin_file(firmware_dir / "tdx-module.yaml")
    return tuple(sorted((data.get("releases") or {}).keys()))
