"""The TDX module releases a stack may pin as `platform.tdxModule` (firmware/tdx-module.yaml)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from components.catalog.pinfile import CatalogError, read_pin_file
from components.paths import FIRMWARE_DIR

_VERSION = re.compile(r"(1\.5|2\.0)\.[0-9]{2}")
_MRSEAM = re.compile(r"[0-9a-f]{96}")


@dataclass(frozen=True)
class TdxModuleRelease:
    version: str  # major.minor.update, as the kernel prints it (1.5.16, 2.0.08)
    series: str  # "1.5" (SPR, EMR, SRF) or "2.0" (GNR)
    build_number: int | None  # known only where a source ties it to the version
    mrseam: str | None  # lowercase hex SHA-384 from Intel's published table; None with `reason`
    reason: str | None = None  # why there is no MRSEAM (a stack cannot pin such a release)


def tdx_module_releases(firmware_dir: Path = FIRMWARE_DIR) -> Mapping[str, TdxModuleRelease]:
    path = firmware_dir / "tdx-module.yaml"
    data = read_pin_file(path)
    releases = data.get("releases")
    if not isinstance(releases, Mapping) or not releases:
        raise CatalogError(f"{path}: `releases` must map versions to {{series, buildNumber, mrseam}}")
    out: dict[str, TdxModuleRelease] = {}
    for version, entry in releases.items():
        version = str(version)
        if not _VERSION.fullmatch(version):
            raise CatalogError(
                f"{path}: release {version!r} is not major.minor.update of the 1.5 or 2.0 series (1.5.16)"
            )
        if not isinstance(entry, Mapping) or entry.get("series") != version[:3]:
            raise CatalogError(f"{path}: releases.{version}.series must be {version[:3]!r}")
        build = entry.get("buildNumber")
        if build is not None and (isinstance(build, bool) or not isinstance(build, int) or build <= 0):
            raise CatalogError(f"{path}: releases.{version}.buildNumber must be a positive integer, got {build!r}")
        mrseam, reason = entry.get("mrseam"), entry.get("reason")
        if mrseam is None and not (isinstance(reason, str) and reason):
            raise CatalogError(f"{path}: releases.{version} has no mrseam; give Intel's value or a `reason`")
        if mrseam is not None and not (isinstance(mrseam, str) and _MRSEAM.fullmatch(mrseam)):
            raise CatalogError(
                f"{path}: releases.{version}.mrseam must be 96 lowercase hex digits (SHA-384), got {mrseam!r:.120}"
            )
        out[version] = TdxModuleRelease(
            version=version, series=version[:3], build_number=build, mrseam=mrseam, reason=reason
        )
    return out
