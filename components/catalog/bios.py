"""Per-vendor BIOS tables for TDX: which attributes to set in which phase.

The tables live in ``firmware/bios/<vendor>.yaml``. They are data, not code, so that a new board
generation is a reviewed YAML change. This module only reads and validates them. Everything
except the file read is pure.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from components.catalog.pinfile import CatalogError, load_pin_yaml
from components.paths import FIRMWARE_DIR as DEFAULT_FIRMWARE_DIR

# Logical names shared by every vendor table. The Pulumi program and the host checks refer to
# settings by these names, never by a vendor's AttributeName.
PHASE1_SETTINGS = frozenset(
    {
        "tme",
        "tme_mt",
        "tme_bypass",
        "memory_integrity",
        "sgx",
        "sgx_package_info_inband",
        "sgx_auto_registration",
        "pa_limit_46",
        "x2apic",
        "node_interleave",
    }
)
PHASE2_SETTINGS = frozenset({"tdx", "seam_loader", "key_split"})
KNOWN_SETTINGS = PHASE1_SETTINGS | PHASE2_SETTINGS

# Phases are numbered 1..N, N >= 2, ordered by what unlocks what on the vendor's BIOS: an attribute
# appears (or accepts a write) only once the settings it depends on are active, i.e. after a reset.
MIN_PHASES = 2

# The BIOS's SGX Auto MP Registration agent registers the platform at boot and consumes its
# platform manifest; PCKIDRetrievalTool then finds none (tests/fixtures/host/bios/README.md). So the
# setting follows dcap.registration: on for `mpa`, off for `pckid`, left alone for `none`.
REGISTRATION_SETTING = "sgx_auto_registration"

# SGX Factory Reset is one-shot: firing it on a registered platform forces re-registration. No
# table may carry it, whatever the vendor calls it.
_FACTORY_RESET = re.compile(r"factory\s*_?\s*reset", re.IGNORECASE)

_TOP_KEYS = frozenset({"vendor", "description", "sources", "phases", "teeIo"})
_SETTING_KEYS = frozenset({"setting", "attribute", "displayName", "aliases", "value", "offValue"})

# Values as the tables hold them; a BIOS may still answer booleans for Boolean attributes.
Scalar = str | int | bool


@dataclass(frozen=True)
class BiosSetting:
    setting: str
    attribute: str
    display_name: str
    value: Scalar
    aliases: tuple[str, ...] = ()  # other display names boards use for it ("Trust Domain Extensions (TDX)")
    off_value: Scalar | None = None  # sgx_auto_registration only: the value for registration `pckid`


@dataclass(frozen=True)
class VendorTable:
    vendor: str
    description: str
    sources: tuple[str, ...]
    phases: Mapping[int, tuple[BiosSetting, ...]]
    tee_io: tuple[BiosSetting, ...]
    # SHA-256 of the file's bytes ("" for a document parsed in memory): an input of the BIOS
    # phases, so an edited table re-runs them.
    sha256: str = ""

    def phase(self, number: int, registration: str = "mpa") -> tuple[BiosSetting, ...]:
        """The settings of one phase, with the registration agent set for `registration`."""
        try:
            settings = self.phases[number]
        except KeyError:
            raise CatalogError(
                f"firmware/bios/{self.vendor}.yaml has no phase {number} (phases: {sorted(self.phases)})"
            ) from None
        return tuple(_for_registration(s, registration) for s in settings if _applies(s, registration))

    @property
    def phase_numbers(self) -> tuple[int, ...]:
        return tuple(sorted(self.phases))

    @property
    def sets_registration_agent(self) -> bool:
        return any(s.setting == REGISTRATION_SETTING for settings in self.phases.values() for s in settings)


def _applies(setting: BiosSetting, registration: str) -> bool:
    return setting.setting != REGISTRATION_SETTING or registration in ("mpa", "pckid")


def _for_registration(setting: BiosSetting, registration: str) -> BiosSetting:
    if setting.setting != REGISTRATION_SETTING or registration == "mpa" or setting.off_value is None:
        return setting
    return replace(setting, value=setting.off_value)


def table_path(vendor: str, firmware_dir: Path | str = DEFAULT_FIRMWARE_DIR) -> Path:
    return Path(firmware_dir) / "bios" / f"{vendor}.yaml"


def list_vendors(firmware_dir: Path | str = DEFAULT_FIRMWARE_DIR) -> tuple[str, ...]:
    bios_dir = Path(firmware_dir) / "bios"
    if not bios_dir.is_dir():
        return ()
    return tuple(sorted(p.stem for p in bios_dir.glob("*.yaml")))


def load_vendor_table(vendor: str, firmware_dir: Path | str = DEFAULT_FIRMWARE_DIR) -> VendorTable:
    path = table_path(vendor, firmware_dir)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", vendor or ""):
        raise CatalogError(f"invalid vendor name {vendor!r}: use the file stem of a table in {path.parent}")
    if not path.is_file():
        known = ", ".join(list_vendors(firmware_dir)) or "none"
        raise CatalogError(f"{path}: no BIOS table for vendor {vendor!r} (known vendors: {known})")
    try:
        data = path.read_bytes()
        document = load_pin_yaml(data.decode("utf-8"))
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the BIOS table: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path}: not UTF-8 text: {exc}") from None
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from None
    table = parse_vendor_table(document, source=str(path), expected_vendor=vendor)
    return replace(table, sha256=hashlib.sha256(data).hexdigest())


def parse_vendor_table(document: Any, *, source: str, expected_vendor: str | None = None) -> VendorTable:
    """Validate a parsed YAML document. ``source`` is only used in error messages."""
    top = _require_mapping(document, source, "<top level>")
    _reject_unknown_keys(top, _TOP_KEYS, source, "<top level>")

    vendor = _require_str(top, "vendor", source)
    if expected_vendor is not None and vendor != expected_vendor:
        raise CatalogError(f"{source}: key 'vendor' is {vendor!r} but the file is for {expected_vendor!r}")
    description = _require_str(top, "description", source)
    sources = _parse_sources(top.get("sources"), source)
    phases = _parse_phases(top.get("phases"), source)
    tee_io = _parse_settings(top.get("teeIo", []), source, "teeIo", allowed=None, allow_empty=True)

    return VendorTable(
        vendor=vendor,
        description=description,
        sources=sources,
        phases=MappingProxyType(dict(sorted(phases.items()))),
        tee_io=tee_io,
    )


def _parse_sources(raw: Any, source: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        raise CatalogError(f"{source}: key 'sources' must be a non-empty list of citations")
    for index, item in enumerate(raw):
        if not isinstance(item, str) or not item.strip():
            raise CatalogError(f"{source}: key 'sources[{index}]' must be a non-empty string")
    return tuple(raw)


def _parse_phases(raw: Any, source: str) -> dict[int, tuple[BiosSetting, ...]]:
    phases_map = _require_mapping(raw, source, "phases")
    phases: dict[int, tuple[BiosSetting, ...]] = {}
    for key, entries in phases_map.items():
        if isinstance(key, bool) or not isinstance(key, int) or key < 1:
            raise CatalogError(f"{source}: key 'phases.{key}' must be a positive integer phase number")
        phases[key] = _parse_settings(entries, source, f"phases.{key}", allowed=KNOWN_SETTINGS, allow_empty=False)

    numbers = sorted(phases)
    if len(numbers) < MIN_PHASES or numbers != list(range(1, len(numbers) + 1)):
        raise CatalogError(
            f"{source}: key 'phases' must number its phases 1, 2, ... without gaps ({MIN_PHASES} at least: "
            f"memory encryption first, TDX after it), got {numbers}"
        )

    # TDX, SEAM loader and key split only exist once TME-MT is active, so phase 1 can never set them.
    early = sorted(s.setting for s in phases[1] if s.setting in PHASE2_SETTINGS)
    if early:
        raise CatalogError(
            f"{source}: key 'phases.1' sets {early}; these appear only after phase 1 is active, move them to phase 2"
        )

    seen: dict[tuple[str, str], int] = {}
    for number, settings in sorted(phases.items()):
        for item in settings:
            for kind, name in (("setting", item.setting), ("attribute", item.attribute)):
                first = seen.setdefault((kind, name), number)
                if first != number or sum(1 for s in settings if getattr(s, kind) == name) > 1:
                    raise CatalogError(
                        f"{source}: {kind} {name!r} appears more than once (phases.{first} and phases.{number})"
                    )
    return phases


def _parse_settings(
    raw: Any, source: str, key: str, *, allowed: frozenset[str] | None, allow_empty: bool
) -> tuple[BiosSetting, ...]:
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise CatalogError(f"{source}: key '{key}' must be a list of settings")
    if not raw and not allow_empty:
        raise CatalogError(f"{source}: key '{key}' must list at least one setting")
    return tuple(_parse_setting(item, source, f"{key}[{i}]", allowed) for i, item in enumerate(raw))


def _parse_setting(raw: Any, source: str, key: str, allowed: frozenset[str] | None) -> BiosSetting:
    entry = _require_mapping(raw, source, key)
    _reject_unknown_keys(entry, _SETTING_KEYS, source, key)
    setting = _require_str(entry, "setting", source, key)
    attribute = _require_str(entry, "attribute", source, key)
    display_name = _require_str(entry, "displayName", source, key)
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        raise CatalogError(f"{source}: key '{key}.aliases' must be a list of display names")
    off_value = entry.get("offValue")
    if off_value is not None and (isinstance(off_value, bool) or not isinstance(off_value, (str, int))):
        raise CatalogError(f"{source}: key '{key}.offValue' must be a string or an integer, got {off_value!r}")
    if "value" not in entry:
        raise CatalogError(f"{source}: key '{key}.value' is missing")
    value = entry["value"]
    if isinstance(value, bool):
        # YAML 1.1 reads unquoted On/Off/Yes/No as booleans; BIOS enumerations want the string.
        raise CatalogError(
            f"{source}: key '{key}.value' is the boolean {value!r}; quote it (e.g. \"On\") so it stays a string"
        )
    if not isinstance(value, (str, int)) or (isinstance(value, str) and not value):
        raise CatalogError(f"{source}: key '{key}.value' must be a non-empty string or an integer, got {value!r}")

    if allowed is not None and setting not in allowed:
        raise CatalogError(
            f"{source}: key '{key}.setting' is {setting!r}, not a known logical setting ({', '.join(sorted(allowed))})"
        )
    if setting == REGISTRATION_SETTING and off_value is None:
        raise CatalogError(
            f"{source}: key '{key}.offValue' is required for {REGISTRATION_SETTING}: the value that keeps the agent "
            "off for registration `pckid` (it would consume the platform manifest PCKIDRetrievalTool needs)"
        )
    if setting != REGISTRATION_SETTING and off_value is not None:
        raise CatalogError(f"{source}: key '{key}.offValue' is only for {REGISTRATION_SETTING}")
    for field, text in (
        ("setting", setting),
        ("attribute", attribute),
        ("displayName", display_name),
        *(("aliases", a) for a in aliases),
    ):
        if _FACTORY_RESET.search(text):
            raise CatalogError(
                f"{source}: key '{key}.{field}' is {text!r}: SGX Factory Reset must never be in a table "
                "(it is one-shot and forces SGX re-registration)"
            )
    return BiosSetting(
        setting=setting,
        attribute=attribute,
        display_name=display_name,
        value=value,
        aliases=tuple(aliases),
        off_value=off_value,
    )


def _require_mapping(value: Any, source: str, key: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise CatalogError(f"{source}: key '{key}' must be a mapping, got {type(value).__name__}")
    return value


def _require_str(entry: Mapping[str, Any], name: str, source: str, prefix: str | None = None) -> str:
    key = f"{prefix}.{name}" if prefix else name
    value = entry.get(name)
    if not isinstance(value, str) or not value.strip():
        raise CatalogError(f"{source}: key '{key}' must be a non-empty string, got {value!r}")
    return value


def _reject_unknown_keys(entry: Mapping[Any, Any], allowed: frozenset[str], source: str, key: str) -> None:
    unknown = sorted(str(k) for k in entry if k not in allowed)
    if unknown:
        raise CatalogError(f"{source}: key '{key}' has unknown field(s) {unknown} (allowed: {sorted(allowed)})")
