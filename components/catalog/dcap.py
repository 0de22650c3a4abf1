"""The Intel DCAP packages and services a host gets (firmware/dcap.yaml)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from components.catalog.host_tools import package_spec
from components.catalog.pinfile import CatalogError, read_pin_file
from components.paths import FIRMWARE_DIR


@dataclass(frozen=True)
class DcapPackages:
    packages: Mapping[str, str]  # role -> "name" or "name=version"
    services: Mapping[str, str]  # role -> systemd unit


def dcap_packages(firmware_dir: Path = FIRMWARE_DIR) -> DcapPackages:
    path = firmware_dir / "dcap.yaml"
    data = read_pin_file(path)
    pkgs: dict[str, str] = {}
    for role, spec in (data.get("packages") or {}).items():
        pkgs[str(role)] = package_spec(spec, path, str(role))
    services = {str(k): str(v) for k, v in (data.get("services") or {}).items()}
    for role in ("pccs", "qgs", "qpl"):
        if role not in pkgs:
            raise CatalogError(f"{path}: packages.{role} is required")
    for role in ("pccs", "qgs"):
        if role not in services:
            raise CatalogError(f"{path}: services.{role} is required")
    return DcapPackages(packages=pkgs, services=services)
