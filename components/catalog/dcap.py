"""The Intel DCAP packages and services a host gets (firmware/dcap.yaml)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from components.catalog.host_tools import package_spec
from components.catalog.pinfile import CatalogError, read_pin_file, require
from components.paths import FIRMWARE_DIR


@dataclass(frozen=True)
class DcapPackages:
    packages: Mapping[str, str]  # role -> "name" or "name=version"
    services: Mapping[str, str]  # role -> systemd unit
    apt: AptSource | None = None  # None: the host's own apt sources


@dataclass(frozen=True)
class AptSource:
    uri: str
    components: str
    key_url: str
    key_sha256: str  # "" when not pinned


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
    return DcapPackages(packages=pkgs, services=services, apt=_apt_source(data.get("aptSource"), path))


def _apt_source(raw: object, path: Path) -> AptSource | None:
    if raw is None or (isinstance(raw, Mapping) and not raw.get("uri")):
        return None
    uri = require(raw, "uri", path, r"https://[^\s'\"]+")
    key_url = require(raw, "keyUrl", path, r"https://[^\s'\"]+")
    components = require(raw, "components", path, r"[a-z0-9 -]+")
    sha = str(raw.get("keySha256") or "") if isinstance(raw, Mapping) else ""
    if sha and not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise CatalogError(f"{path}: aptSource.keySha256 = {sha!r} is not a lower-case SHA-256")
    return AptSource(uri=uri, components=components, key_url=key_url, key_sha256=sha)
