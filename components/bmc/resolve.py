"""Map a vendor table phase onto the attributes one BIOS exposes, and check BMC endpoint and
certificate pin syntax. Pure: no network, so every rule is unit-tested without a BMC."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from components.catalog.bios import BiosSetting, Scalar

# AMI adds a form-id suffix to duplicated/hidden attributes (`LimitCPUPAto46bits_F319`). Older
# Supermicro BMCs append `#3C38`-style ids. Upper-case hex only, so ordinary words such as `_Feed`
# are not mistaken for a suffix.
_VENDOR_SUFFIX = re.compile(r"(?:_F[0-9A-F]{3,4}|#[0-9A-F]{4})$")

_NOT_FOUND_FIX = (
    "BIOS too old or attribute hidden until the previous phase is applied; "
    "update BIOS or check the vendor table {table}"
)


class BiosError(RuntimeError):
    """Anything that stops a BIOS phase. The message is one line, carries a fix, and never the password."""


class BiosSettingsMissing(BiosError):
    """Every setting that failed to resolve is simply not listed by the BIOS (yet): reading the BIOS
    again later may find it, unlike a wrong value or an ambiguous name."""


# ---------------------------------------------------------------------------------------------
# Pure part
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedSetting:
    setting: str
    attribute: str
    value: Scalar
    matched_by: str  # "name", "suffix" or "displayName"


def strip_vendor_suffix(name: str) -> str:
    return _VENDOR_SUFFIX.sub("", name)


def normalise_display_name(text: str) -> str:
    # Boards differ in spacing ("Multi-Tenant(TME-MT)" vs "Multi-Tenant (TME-MT)") and case only.
    return "".join(text.split()).casefold()


def resolve_attributes(
    settings: Sequence[BiosSetting],
    current_attributes: Mapping[str, Any],
    registry_entries: Sequence[Mapping[str, Any]] | None,
    *,
    vendor: str = "<vendor>",
) -> dict[str, Scalar]:
    """Map a table phase onto this BIOS: {AttributeName as the BIOS spells it: desired value}."""
    return {
        r.attribute: r.value for r in resolve_settings(settings, current_attributes, registry_entries, vendor=vendor)
    }


def resolve_settings(
    settings: Sequence[BiosSetting],
    current_attributes: Mapping[str, Any],
    registry_entries: Sequence[Mapping[str, Any]] | None,
    *,
    vendor: str = "<vendor>",
) -> tuple[ResolvedSetting, ...]:
    """Resolve every setting, or raise one BiosError that lists every setting that failed.

    Order per setting: exact AttributeName present in the current attributes; then the name with
    a vendor suffix stripped on both sides; then the registry DisplayName. A candidate must be
    present in the current attributes: a registry entry alone cannot be PATCHed.
    """
    registry = _index_registry(registry_entries)
    table = _table_ref(vendor)
    resolved: list[ResolvedSetting] = []
    problems: list[_Unresolved] = []
    for item in settings:
        try:
            resolved.append(_resolve_one(item, current_attributes, registry, registry_entries, table))
        except _Unresolved as exc:
            problems.append(exc)

    claimed: dict[str, str] = {}
    for r in resolved:
        other = claimed.setdefault(r.attribute, r.setting)
        if other != r.setting:
            problems.append(
                _Unresolved(
                    f"settings '{other}' and '{r.setting}' both resolve to attribute '{r.attribute}'",
                    f"correct the names in {table}",
                )
            )

    if problems:
        # One line: every problem, then each distinct fix once.
        fixes = list(dict.fromkeys(p.fix for p in problems))
        error = BiosSettingsMissing if all(p.missing for p in problems) else BiosError
        raise error("; ".join(p.problem for p in problems) + "; fix: " + "; ".join(fixes))
    return tuple(resolved)


def diff(desired: Mapping[str, Scalar], current: Mapping[str, Any]) -> dict[str, Scalar]:
    """What must change: the desired attributes whose current value differs (or is absent)."""
    return {name: value for name, value in desired.items() if name not in current or current[name] != value}


class _Unresolved(Exception):
    def __init__(self, problem: str, fix: str, *, missing: bool = False) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix
        self.missing = missing  # the attribute is not listed at all


def _table_ref(vendor: str) -> str:
    return f"firmware/bios/{vendor}.yaml"


def _index_registry(entries: Sequence[Mapping[str, Any]] | None) -> dict[str, Mapping[str, Any]]:
    if not entries:
        return {}
    return {
        e["AttributeName"]: e for e in entries if isinstance(e, Mapping) and isinstance(e.get("AttributeName"), str)
    }


def _resolve_one(
    item: BiosSetting,
    current: Mapping[str, Any],
    registry: Mapping[str, Mapping[str, Any]],
    registry_entries: Sequence[Mapping[str, Any]] | None,
    table: str,
) -> ResolvedSetting:
    attribute, how = _find_attribute(item, current, registry, registry_entries, table)
    entry = registry.get(attribute)
    value = _coerce_value(item.value, entry, current.get(attribute))
    # An attribute already at its value needs no write, so a lock on it does not matter: AMI greys out
    # TME once TDX is on, and a re-run of phase 1 must still pass.
    if entry is not None and current.get(attribute) != value:
        value = _check_against_registry(item, attribute, value, entry, table)
    return ResolvedSetting(setting=item.setting, attribute=attribute, value=value, matched_by=how)


def _find_attribute(
    item: BiosSetting,
    current: Mapping[str, Any],
    registry: Mapping[str, Mapping[str, Any]],
    registry_entries: Sequence[Mapping[str, Any]] | None,
    table: str,
) -> tuple[str, str]:
    if item.attribute in current:
        return item.attribute, "name"

    stem = strip_vendor_suffix(item.attribute)
    by_suffix = [name for name in current if strip_vendor_suffix(name) == stem]
    picked = _prefer_usable(by_suffix, registry)
    if len(picked) == 1:
        return picked[0], "suffix"
    if len(picked) > 1:
        raise _Unresolved(
            f"setting '{item.setting}': attribute '{item.attribute}' matches several BIOS attributes {sorted(picked)}",
            f"name the right one in {table}",
        )

    wanted = {normalise_display_name(n) for n in (item.display_name, *item.aliases)}
    by_display = [
        name
        for name, entry in registry.items()
        if isinstance(entry.get("DisplayName"), str) and normalise_display_name(entry["DisplayName"]) in wanted
    ]
    present = _prefer_usable([n for n in by_display if n in current], registry)
    if len(present) == 1:
        return present[0], "displayName"
    if len(present) > 1:
        raise _Unresolved(
            f"setting '{item.setting}': display name '{item.display_name}' matches several BIOS attributes "
            f"{sorted(present)}",
            f"name the right one in {table}",
        )

    hint = ""
    if by_display:
        hint = f" (the registry lists it as '{by_display[0]}', but the BIOS does not expose it yet)"
    elif registry_entries is None:
        hint = " (the BMC serves no attribute registry, so display names could not be tried)"
    raise _Unresolved(
        f"BIOS setting '{item.setting}' not found: tried attribute '{item.attribute}' (also without a "
        f"_Fxxxx/#xxxx suffix) and display name '{item.display_name}'{hint}",
        _NOT_FOUND_FIX.format(table=table),
        missing=True,
    )


def _prefer_usable(candidates: list[str], registry: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Among duplicates, AMI's hidden or read-only copies are the ones not to write."""
    if len(candidates) <= 1:
        return candidates
    usable = [c for c in candidates if not _is_locked(registry.get(c)) and not _flag(registry.get(c), "Hidden")]
    return usable or candidates


def _flag(entry: Mapping[str, Any] | None, key: str) -> bool:
    return bool(entry and entry.get(key) is True)


def _is_locked(entry: Mapping[str, Any] | None) -> bool:
    return _flag(entry, "ReadOnly") or _flag(entry, "Immutable")


def _coerce_value(value: Scalar, entry: Mapping[str, Any] | None, current: Any) -> Scalar:
    """Match the BIOS's type, so "1" vs 1 neither fails the PATCH nor makes the diff never converge."""
    kind = entry.get("Type") if entry else None
    if kind is None and current is not None:
        kind = {bool: "Boolean", int: "Integer", str: "String"}.get(type(current))
    if kind == "Integer" and isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    if kind in ("Enumeration", "String") and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if kind == "Boolean" and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return value


def _check_against_registry(
    item: BiosSetting, attribute: str, value: Scalar, entry: Mapping[str, Any], table: str
) -> Scalar:
    if _is_locked(entry):
        raise _Unresolved(
            f"BIOS setting '{item.setting}': attribute '{attribute}' is read-only in the attribute registry",
            "it is usually greyed out until the previous phase is applied, or locked by a BIOS policy; "
            f"apply the earlier phase or check {table}",
        )
    allowed = _allowed_values(entry)
    if allowed and value not in allowed:
        by_display = {
            normalise_display_name(str(v.get("ValueDisplayName"))): v["ValueName"]
            for v in entry.get("Value") or []
            if isinstance(v, Mapping) and "ValueName" in v and v.get("ValueDisplayName") is not None
        }
        mapped = by_display.get(normalise_display_name(str(value)))
        if mapped is not None:
            return mapped
        raise _Unresolved(
            f"BIOS setting '{item.setting}': value {value!r} is not allowed for attribute '{attribute}' "
            f"(allowed: {', '.join(map(repr, allowed))})",
            f"correct the value in {table}",
        )
    low, high = entry.get("LowerBound"), entry.get("UpperBound")
    if isinstance(value, int) and not isinstance(value, bool):
        if (isinstance(low, int) and value < low) or (isinstance(high, int) and value > high):
            raise _Unresolved(
                f"BIOS setting '{item.setting}': value {value} for attribute '{attribute}' is outside [{low}, {high}]",
                f"correct the value in {table}",
            )
    return value


def _allowed_values(entry: Mapping[str, Any]) -> list[Any]:
    values = entry.get("Value")
    if not isinstance(values, list):
        return []
    return [v["ValueName"] for v in values if isinstance(v, Mapping) and "ValueName" in v]


def normalise_fingerprint(text: str) -> str:
    """SHA-256 of the certificate (DER), hex, colons and case ignored."""
    cleaned = re.sub(r"[\s:]", "", text or "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", cleaned):
        raise BiosError(
            "bmc.tlsFingerprint must be the SHA-256 of the BMC certificate (DER) as 64 hex digits, "
            "colons allowed; fix: compute it with `openssl x509 -noout -fingerprint -sha256`"
        )
    return cleaned


def format_fingerprint(hex_digest: str) -> str:
    return ":".join(hex_digest[i : i + 2] for i in range(0, len(hex_digest), 2)).upper()


def base_url(endpoint: str, *, allow_insecure_http: bool = False, config_key: str = "hosts[i].bmc") -> str:
    """Validate a BMC endpoint and return scheme://host[:port] (a trailing /redfish/v1 is accepted)."""
    parts = urlsplit((endpoint or "").strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise BiosError(f"BMC endpoint {endpoint!r} is not an https:// URL; fix: set {config_key}.endpoint")
    if parts.username is not None or parts.password is not None:
        # Credentials in a URL end up in exception texts and logs.
        raise BiosError(
            f"BMC endpoint for {parts.hostname} contains credentials; fix: remove them from "
            f"{config_key}.endpoint and use {config_key}.username/password"
        )
    if parts.scheme == "http" and not allow_insecure_http:
        raise BiosError(
            f"BMC endpoint {parts.scheme}://{parts.netloc} is plain http, which would send the "
            f"credentials in clear text; fix: use https:// in {config_key}.endpoint"
        )
    if parts.path.rstrip("/") not in ("", "/redfish/v1") or parts.query or parts.fragment:
        raise BiosError(f"BMC endpoint {endpoint!r} must be scheme://host[:port]; fix: {config_key}.endpoint")
    try:
        _ = parts.port  # urlsplit parses the port only when asked
    except ValueError:
        raise BiosError(f"BMC endpoint {endpoint!r} has an invalid port; fix: {config_key}.endpoint") from None
    return f"{parts.scheme}://{parts.netloc}"


def system_identity(system_path: str | None) -> str | None:
    """Accept a full path or a bare id: sushy would turn a bare id into /redfish/<id>, which 404s."""
    if not system_path:
        return None
    path = system_path.strip()
    return path if path.startswith("/") else f"/redfish/v1/Systems/{path}"


# ---------------------------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BiosPhaseResult:
    vendor: str
    phase: int
    endpoint: str
    system: str
    bios_version: str | None
    changed: bool
    reset: bool
    resolved: dict[str, str] = field(default_factory=dict)  # logical setting -> AttributeName
    applied: dict[str, Scalar] = field(default_factory=dict)  # what this run PATCHed
    attributes: dict[str, Any] = field(default_factory=dict)  # observed values of the phase's attributes
    pending: dict[str, Scalar] = field(default_factory=dict)  # desired values not yet in effect
    reset_type: str | None = None
    job: str | None = None  # the BMC's configuration job that applied the change (Dell iDRAC), by URI

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
