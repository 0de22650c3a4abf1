"""Loaders of the TD's boot artifacts, ACPI digests, event logs and quotes: read a file
(`tdxattest.core.files`), hand its bytes to a pure parser, and name the file in any `InputError`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from tdxattest.core.bzimage import check_efi_kernel
from tdxattest.core.dstack import looks_like_dstack, parse_dstack_attestation
from tdxattest.core.errors import InputError
from tdxattest.core.eventlog import LogEvent, parse_tcg2_log
from tdxattest.core.files import hash_file, parse_file, read_bytes
from tdxattest.core.measure import AcpiDigests, InitrdInfo
from tdxattest.core.quote import TdReport, read_td_report
from tdxattest.core.tdvf import TdvfMetadata, parse_tdvf


def load_firmware(path: str | Path) -> tuple[bytes, TdvfMetadata]:
    data = read_bytes(path)
    try:
        return data, parse_tdvf(data)
    except InputError as exc:
        raise exc.with_file(str(path)) from None


def load_kernel(path: str | Path) -> bytes:
    """A bzImage with an EFI stub (a PE/COFF image); checked before it is hashed."""
    return parse_file(path, check_efi_kernel)


def load_initrd(path: str | Path) -> InitrdInfo:
    h = hash_file(path)
    return InitrdInfo(size=h.size, sha384=bytes.fromhex(h.sha384))


ACPI_BLOBS = {  # field -> file names tried, relative to the directory given
    "table_loader": ("table-loader", "etc/table-loader", "etc/table-loader/raw"),
    "rsdp": ("rsdp", "etc/acpi/rsdp", "etc/acpi/rsdp/raw"),
    "tables": ("tables", "etc/acpi/tables", "etc/acpi/tables/raw"),
}
ACPI_JSON_KEYS = {"table_loader": ("table_loader", "tableLoader"), "rsdp": ("rsdp",), "tables": ("tables",)}


def _hex48(value: object, file: str, key: str) -> bytes:
    try:
        raw = bytes.fromhex(str(value))
    except ValueError:
        raw = b""
    if len(raw) != 48:
        raise InputError(f"`{key}`: a SHA-384 digest (96 hex digits)", repr(value)[:60], file=file)
    return raw


def load_acpi(path: str | Path) -> AcpiDigests:
    """QEMU's ACPI blobs, as captured from a reference TD of the same VM shape. Either a directory
    with the three fw_cfg files (`table-loader`, `rsdp`, `tables`, or the `etc/...` layout of
    /sys/firmware/qemu_fw_cfg/by_name), or a JSON file with their SHA-384 digests
    (`{"table_loader": hex, "rsdp": hex, "tables": hex}`)."""
    p = Path(path)
    if p.is_dir():
        out = {}
        for field, names in ACPI_BLOBS.items():
            for name in names:
                if (p / name).is_file():
                    out[field] = hashlib.sha384(read_bytes(p / name)).digest()
                    break
            else:
                raise InputError(f"one of {', '.join(names)} in the ACPI blob directory", "none of them", file=str(p))
        return AcpiDigests(**out)
    text = read_bytes(p)
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(
            "a directory of QEMU ACPI blobs or a JSON file of their SHA-384 digests",
            f"invalid JSON ({exc})",
            offset=getattr(exc, "pos", None),
            file=str(p),
        ) from None
    if not isinstance(doc, dict):
        raise InputError("a JSON object with table_loader, rsdp and tables", type(doc).__name__, file=str(p))
    out = {}
    for field, keys in ACPI_JSON_KEYS.items():
        key = next((k for k in keys if k in doc), None)
        if key is None:
            raise InputError(
                f"key `{keys[0]}` (SHA-384 of etc/{'table-loader' if field == 'table_loader' else 'acpi/' + field})",
                "no such key",
                file=str(p),
            )
        out[field] = _hex48(doc[key], str(p), key)
    return AcpiDigests(**out)


@dataclass(frozen=True)
class EventSource:
    format: str  # "tcg2" or "dstack"
    events: tuple[LogEvent, ...]
    names: tuple[str, ...] | None = None  # dstack event names
    quote: bytes | None = None  # a quote carried in the same file (dstack)


def load_event_source(path: str | Path, fmt: str = "auto") -> EventSource:
    data = read_bytes(path)
    try:
        if fmt == "dstack" or (fmt == "auto" and looks_like_dstack(data)):
            att = parse_dstack_attestation(data)
            return EventSource("dstack", att.events, att.names, att.quote)
        log = parse_tcg2_log(data)
        return EventSource("tcg2", log.events)
    except InputError as exc:
        raise exc.with_file(str(path)) from None


def load_td_report(path: str | Path) -> TdReport:
    return parse_file(path, read_td_report)
