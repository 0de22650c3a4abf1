"""The Debian packages the host steps call (firmware/host-tools.yaml), installed before preflight."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from components.catalog.pinfile import CatalogError, read_pin_file, require
from components.paths import FIRMWARE_DIR

_NAME = r"[a-z0-9][a-z0-9+.\-]+"
_VERSION = r"[A-Za-z0-9.+~:*\-]*"


def package_spec(spec: object, path: Path, role: str) -> str:
    """`name` or `name=version` (apt's syntax) from a `{name, version}` entry."""
    name = require(spec, "name", path, _NAME)
    version = str(spec.get("version") or "") if isinstance(spec, Mapping) else ""
    if not re.fullmatch(_VERSION, version):
        raise CatalogError(f"{path}: packages.{role}.version = {version!r} is not an apt version")
    return f"{name}={version}" if version else name


def host_tool_packages(firmware_dir: Path = FIRMWARE_DIR) -> tuple[str, ...]:
    path = firmware_dir / "host-tools.yaml"
    data = read_pin_file(path)
    packages = data.get("packages")
    if not isinstance(packages, dict) or not packages:
        raise CatalogError(f"{path}: `packages` must map roles to {{name, version}}")
    return tuple(package_spec(spec, path, str(role)) for role, spec in packages.items())
