"""GPU pins: each SKU's VBIOS, guest driver and PCI ids (firmware/gpu/<sku>.yaml), and the
gpu-admin-tools wheel that sets the CC mode (firmware/gpu/gpu-admin-tools.yaml)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from components.catalog.pinfile import CatalogError, read_pin_file, require
from components.paths import FIRMWARE_DIR

TOOLS_FILE = "gpu-admin-tools"


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


def known_gpu_models(firmware_dir: Path = FIRMWARE_DIR) -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in (firmware_dir / "gpu").glob("*.yaml") if p.stem != TOOLS_FILE))


def gpu_sku(model: str, firmware_dir: Path = FIRMWARE_DIR) -> GpuSku:
    path = firmware_dir / "gpu" / f"{model}.yaml"
    data = read_pin_file(path)
    ids = tuple(str(i).lower() for i in data.get("pciDeviceIds") or ())
    if not ids or not all(re.fullmatch(r"[0-9a-f]{4}", i) for i in ids):
        raise CatalogError(f"{path}: `pciDeviceIds` must list 4-hex-digit PCI device ids")
    return GpuSku(
        sku=require(data, "sku", path),
        name=require(data, "name", path),
        pci_device_ids=ids,
        vbios=require(data, "vbios", path, r"[0-9A-Fa-f]{2}(\.[0-9A-Fa-f]{2}){4}"),
        driver=require(data, "driver", path, r"\d+\.\d+(\.\d+)?"),
        modes=tuple(data.get("modes") or ("on",)),
    )


def gpu_admin_tools(firmware_dir: Path = FIRMWARE_DIR) -> GpuAdminTools:
    path = firmware_dir / "gpu" / f"{TOOLS_FILE}.yaml"
    data = read_pin_file(path)
    return GpuAdminTools(
        package=require(data, "package", path, r"[A-Za-z0-9_.\-]+"),
        version=require(data, "version", path, r"[0-9A-Za-z.\-]+"),
        wheel=require(data, "wheel", path, r"[A-Za-z0-9_.\-]+\.whl"),
        sha256=require(data, "sha256", path, r"[0-9a-f]{64}"),
    )


def gpu_pins_for(
    models: Iterable[str], firmware_dir: Path = FIRMWARE_DIR
) -> tuple[dict[str, GpuSku], GpuAdminTools | None]:
    """The SKU pins of every GPU model a stack uses, and the gpu-admin-tools pin when it uses any."""
    skus = {model: gpu_sku(model, firmware_dir) for model in sorted(set(models))}
    return skus, gpu_admin_tools(firmware_dir) if skus else None
