"""Parse the TDVF metadata of a TD firmware image (OVMF/TDVF or td-shim): where the descriptor is,
and its section table. Pure: takes bytes, returns frozen dataclasses, raises `InputError` with the
offset of the first thing that is wrong.

Layout (all integers little-endian, GUIDs in the mixed-endian EFI byte order):

* OVMF "GUIDed footer table": ends 0x20 bytes before the end of the image with the footer GUID;
  the u16 before that GUID is the table's total length. Entries are walked backwards, each laid
  out as `[data][u16 length][GUID]` with `length` counting data + 18. The entry with the TDX
  metadata-offset GUID holds, in its last 4 data bytes, `off`: the descriptor is at `len - off`,
  preceded by the 16-byte TDVF metadata GUID.
* td-shim images without that table: the u32 at `len - 0x20` is the file offset of the metadata
  GUID, and the descriptor follows it.
* Descriptor: "TDVF", u32 length (= 16 + 32 * n), u32 version (= 1), u32 n; then n sections of
  32 bytes: u32 DataOffset, u32 RawDataSize, u64 MemoryAddress, u64 MemoryDataSize, u32 Type,
  u32 Attributes.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from typing import Any

from tdxattest.core.errors import InputError, show_bytes

FOOTER_GUID = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d")
TDX_METADATA_OFFSET_GUID = uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2")
TDVF_METADATA_GUID = uuid.UUID("e9eaf9f3-168e-44d5-a8eb-7f4d8738f6ae")

PAGE = 4096
FOOTER_END_GAP = 0x20  # the footer table ends this many bytes before the end of the image
ENTRY_TRAILER = 18  # u16 length + 16-byte GUID

# Section types
BFV, CFV, TD_HOB, TEMP_MEM, PERM_MEM, PAYLOAD, PAYLOAD_PARAM, TD_INFO = range(8)
SECTION_TYPE_NAMES = ("BFV", "CFV", "TD_HOB", "TempMem", "PermMem", "Payload", "PayloadParam", "TD_INFO")

# Section attributes
ATTR_MR_EXTEND = 0x1  # measure the contents (TDH.MR.EXTEND)
ATTR_PAGE_AUG = 0x2  # added with TDH.MEM.PAGE.AUG: no PAGE.ADD, no MRTD contribution
KNOWN_ATTRS = ATTR_MR_EXTEND | ATTR_PAGE_AUG

DESCRIPTOR_SIZE = 16
SECTION_SIZE = 32


@dataclass(frozen=True)
class TdvfSection:
    index: int
    data_offset: int
    raw_data_size: int
    memory_address: int
    memory_data_size: int
    section_type: int
    attributes: int

    @property
    def type_name(self) -> str:
        return SECTION_TYPE_NAMES[self.section_type]

    @property
    def measured(self) -> bool:
        return bool(self.attributes & ATTR_MR_EXTEND)

    @property
    def page_added(self) -> bool:
        return not self.attributes & ATTR_PAGE_AUG

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "type": self.type_name,
            "data_offset": self.data_offset,
            "raw_data_size": self.raw_data_size,
            "memory_address": self.memory_address,
            "memory_data_size": self.memory_data_size,
            "attributes": self.attributes,
        }


@dataclass(frozen=True)
class TdvfMetadata:
    descriptor_offset: int
    version: int
    sections: tuple[TdvfSection, ...]
    located_by: str  # "ovmf-footer-table" or "td-shim-offset"

    def of_type(self, section_type: int) -> tuple[TdvfSection, ...]:
        return tuple(s for s in self.sections if s.section_type == section_type)


def _guid_at(data: bytes, offset: int) -> uuid.UUID:
    return uuid.UUID(bytes_le=bytes(data[offset : offset + 16]))


def _find_descriptor_via_footer(fw: bytes) -> int | None:
    """Descriptor offset from the OVMF footer table, None when there is no footer GUID."""
    size = len(fw)
    end = size - FOOTER_END_GAP
    if end - ENTRY_TRAILER < 0 or _guid_at(fw, end - 16) != FOOTER_GUID:
        return None
    (total,) = struct.unpack_from("<H", fw, end - ENTRY_TRAILER)
    if total < ENTRY_TRAILER or total > end:
        raise InputError(
            f"a GUIDed footer table length between {ENTRY_TRAILER} and {end}", str(total), offset=end - ENTRY_TRAILER
        )
    start = end - total
    pos = end - ENTRY_TRAILER
    seen_guids = []
    while pos > start:
        if pos - ENTRY_TRAILER < start:
            raise InputError(
                f"a complete footer table entry (18-byte length + GUID) after offset {start}",
                f"{pos - start} bytes",
                offset=pos - ENTRY_TRAILER,
            )
        guid = _guid_at(fw, pos - 16)
        (length,) = struct.unpack_from("<H", fw, pos - ENTRY_TRAILER)
        if length < ENTRY_TRAILER or pos - length < start:
            raise InputError(
                f"a footer table entry length between {ENTRY_TRAILER} and {pos - start}",
                str(length),
                offset=pos - ENTRY_TRAILER,
            )
        data_start, data_end = pos - length, pos - ENTRY_TRAILER
        if guid == TDX_METADATA_OFFSET_GUID:
            if data_end - data_start < 4:
                raise InputError(
                    "a 4-byte TDX metadata offset in its footer table entry",
                    f"{data_end - data_start} bytes",
                    offset=data_start,
                )
            off: int = struct.unpack_from("<I", fw, data_end - 4)[0]
            if off > size or size - off < 16:
                raise InputError(
                    f"a TDX metadata offset between 16 and {size} (counted from the end of the image)",
                    str(off),
                    offset=data_end - 4,
                )
            return size - off
        seen_guids.append(str(guid))
        pos -= length
    raise InputError(
        f"a footer table entry with the TDX metadata offset GUID {TDX_METADATA_OFFSET_GUID} "
        "(this firmware has no TDX support)",
        "only " + (", ".join(seen_guids) or "no entries"),
        offset=start,
    )


def _find_descriptor_via_tdshim(fw: bytes) -> int | None:
    size = len(fw)
    if size < FOOTER_END_GAP + 4:
        return None
    guid_off: int = struct.unpack_from("<I", fw, size - FOOTER_END_GAP)[0]
    if guid_off + 16 + DESCRIPTOR_SIZE > size:
        return None
    if _guid_at(fw, guid_off) != TDVF_METADATA_GUID:
        return None
    return guid_off + 16


def locate_descriptor(fw: bytes) -> tuple[int, str]:
    """(descriptor offset, how it was found). Raises `InputError` when the image has no TDVF metadata."""
    size = len(fw)
    if size < FOOTER_END_GAP + ENTRY_TRAILER + DESCRIPTOR_SIZE:
        raise InputError("a firmware image with TDVF metadata (at least 66 bytes)", f"{size} bytes", offset=0)
    off = _find_descriptor_via_footer(fw)
    if off is not None:
        return off, "ovmf-footer-table"
    off = _find_descriptor_via_tdshim(fw)
    if off is not None:
        return off, "td-shim-offset"
    where = size - FOOTER_END_GAP - 16
    raise InputError(
        f"TDVF metadata: the OVMF footer GUID {FOOTER_GUID} here, or a td-shim metadata "
        f"offset at 0x{size - FOOTER_END_GAP:x} pointing to the TDVF metadata GUID",
        show_bytes(fw[where : where + 16]) + " (not a TDX firmware image)",
        offset=where,
    )


def parse_tdvf(fw: bytes) -> TdvfMetadata:
    """Parse and check the TDVF descriptor and sections of a firmware image."""
    size = len(fw)
    desc, located_by = locate_descriptor(fw)
    if desc < 16 or _guid_at(fw, desc - 16) != TDVF_METADATA_GUID:
        raise InputError(
            f"the TDVF metadata GUID {TDVF_METADATA_GUID} before the descriptor",
            show_bytes(fw[max(desc - 16, 0) : desc]),
            offset=max(desc - 16, 0),
        )
    if desc + DESCRIPTOR_SIZE > size:
        raise InputError(
            f"a {DESCRIPTOR_SIZE}-byte TDVF descriptor", f"{size - desc} bytes before the end of the file", offset=desc
        )
    signature = fw[desc : desc + 4]
    if signature != b"TDVF":
        raise InputError("descriptor signature 'TDVF'", show_bytes(signature), offset=desc)
    length, version, count = struct.unpack_from("<III", fw, desc + 4)
    if version != 1:
        raise InputError("TDVF descriptor version 1", str(version), offset=desc + 8)
    if length != DESCRIPTOR_SIZE + SECTION_SIZE * count:
        raise InputError(
            f"descriptor length 16 + 32 * {count} sections = {DESCRIPTOR_SIZE + SECTION_SIZE * count}",
            str(length),
            offset=desc + 4,
        )
    if desc + length > size:
        raise InputError(
            f"{count} section entries ({length} bytes) inside the file (truncated descriptor)",
            f"{size - desc} bytes before the end of the file",
            offset=desc,
        )
    sections = []
    for i in range(count):
        at = desc + DESCRIPTOR_SIZE + SECTION_SIZE * i
        data_offset, raw_size, gpa, mem_size, stype, attrs = struct.unpack_from("<IIQQII", fw, at)
        if stype >= len(SECTION_TYPE_NAMES):
            raise InputError(
                f"section {i} type 0..{len(SECTION_TYPE_NAMES) - 1} ({', '.join(SECTION_TYPE_NAMES)})",
                f"unknown section type {stype}",
                offset=at + 24,
            )
        if attrs & ~KNOWN_ATTRS:
            raise InputError(
                f"section {i} attributes within 0x{KNOWN_ATTRS:x} (MR.EXTEND, PAGE.AUG)", f"0x{attrs:x}", offset=at + 28
            )
        if gpa % PAGE or mem_size % PAGE:
            raise InputError(
                f"section {i} memory address and size aligned to 4 KiB",
                f"address 0x{gpa:x}, size 0x{mem_size:x}",
                offset=at + 8,
            )
        if mem_size < raw_size:
            raise InputError(f"section {i} memory size >= raw data size {raw_size}", str(mem_size), offset=at + 16)
        if data_offset + raw_size > size:
            raise InputError(
                f"section {i} raw data (0x{data_offset:x} + 0x{raw_size:x}) inside the {size}-byte file",
                f"end at 0x{data_offset + raw_size:x}",
                offset=at,
            )
        if stype == BFV and not attrs & ATTR_MR_EXTEND:
            raise InputError(
                f"section {i} (BFV, firmware code) with the MR.EXTEND attribute",
                f"attributes 0x{attrs:x}",
                offset=at + 28,
            )
        sections.append(TdvfSection(i, data_offset, raw_size, gpa, mem_size, stype, attrs))
    return TdvfMetadata(descriptor_offset=desc, version=version, sections=tuple(sections), located_by=located_by)


def cfv_bytes(fw: bytes, meta: TdvfMetadata) -> bytes:
    """The configuration firmware volume (UEFI variable store) as shipped in the image."""
    cfvs = meta.of_type(CFV)
    if len(cfvs) != 1:
        raise InputError("exactly one CFV (variable store) section", f"{len(cfvs)}", offset=meta.descriptor_offset)
    s = cfvs[0]
    return fw[s.data_offset : s.data_offset + s.raw_data_size]
