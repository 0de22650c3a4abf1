"""Pinned firmware and tool manifests from firmware/ (GPU SKUs, gpu-admin-tools, DCAP packages,
TDX module releases). Reading and checking only; no Pulumi here."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from .paths import FIRMWARE_DIR
from .pinfile import load_pin_yaml


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class GpuSku:
    sku: str
    name: str
    pci_device_ids: tuple[str, ...]
    vbios: str
    driver: str
    modes: tuple[str, ...]


@dataclass(frozen=True)
class GpuAdminTools:
    package: str
    version: str
    wheel: str
    sha256: str


@dataclass(frozen=True)
class DcapPackages:
    packages: Mapping[str, str]  # role -> "name" or "name=version"
    services: Mapping[str, str]  # role -> systemd unit


def _load(path: Path) -> Mapping[str, Any]:
    try:
        data = load_pin_yaml(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(f"{path}: cannot read manifest: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ManifestError(f"{path}: expected a mapping at the top level")
    return data


def _require(data: Mapping[str, Any], key: str, path: Path, pattern: str | None = None) -> str:
    value = data.get(key)
    if value is None or str(value).strip() == "":
        raise ManifestError(f"{path}: `{key}` is required")
    if pattern and not re.fullmatch(pattern, str(value)):
        raise ManifestError(f"{path}: `{key}` = {value!r} does not match {pattern}")
    return str(value)


def gpu_sku(model: str, firmware_dir: Path = FIRMWARE_DIR) -> GpuSku:
    path = firmware_dir / "gpu" / f"{model}.yaml"
    data = _load(path)
    ids = tuple(str(i).lower() for i in data.get("pciDeviceIds") or ())
    if not ids or not all(re.fullmatch(r"[0-9a-f]{4}", i) for i in ids):
        raise ManifestError(f"{path}: `pciDeviceIds` must list 4-hex-digit PCI device ids")
    return GpuSku(
        sku=_require(data, "sku", path),
        name=_require(data, "name", path),
        pci_device_ids=ids,
        vbios=_require(data, "vbios", path, r"[0-9A-Fa-f]{2}(\.[0-9A-Fa-f]{2}){4}"),
        driver=_require(data, "driver", path, r"\d+\.\d+(\.\d+)?"),
        modes=tuple(data.get("modes") or ("on",)),
    )


def gpu_admin_tools(firmware_dir: Path = FIRMWARE_DIR) -> GpuAdminTools:
    path = firmware_dir / "gpu" / "gpu-admin-tools.yaml"
    data = _load(path)
    return GpuAdminTools(
        package=_require(data, "package", path, r"[A-Za-z0-9_.\-]+"),
        version=_require(data, "version", path, r"[0-9A-Za-z.\-]+"),
        wheel=_require(data, "wheel", path, r"[A-Za-z0-9_.\-]+\.whl"),
        sha256=_require(data, "sha256", path, r"[0-9a-f]{64}"),
    )


def dcap_packages(firmware_dir: Path = FIRMWARE_DIR) -> DcapPackages:
    path = firmware_dir / "dcap.yaml"
    data = _load(path)
    pkgs: dict[str, str] = {}
    for role, spec in (data.get("packages") or {}).items():
        name = _require(spec, "name", path, r"[a-z0-9][a-z0-9+.\-]+")
        version = str(spec.get("version") or "")
        pkgs[role] = f"{name}={version}" if version else name
    services = {str(k): str(v) for k, v in (data.get("services") or {}).items()}
    for role in ("pccs", "qgs", "qpl"):
        if role not in pkgs:
            raise ManifestError(f"{path}: packages.{role} is required")
    for role in ("pccs", "qgs"):
        if role not in services:
            raise ManifestError(f"{path}: services.{role} is required")
    return DcapPackages(packages=pkgs, services=services)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
