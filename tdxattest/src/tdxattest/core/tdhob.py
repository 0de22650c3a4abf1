"""The TD HOB that QEMU hands the firmware, rebuilt offline so its RTMR0 digest can be pinned.

QEMU writes a HOB list into the firmware's TD_HOB section: a PHIT header, then one resource
descriptor per RAM range, sorted by address; the firmware measures it into RTMR0 (event
"TdxTable"). The ranges come from the guest RAM size and the firmware's own TDVF metadata:

* the TD_HOB and TempMem sections are accepted memory (resource type 0, system memory);
* every other part of low RAM is unaccepted (type 7), split around the accepted ranges;
* q35 puts at most 2 GiB below 4 GiB once RAM reaches 0xB0000000 (2.75 GiB); the rest is one more
  unaccepted range starting at 4 GiB.

The 8-byte end-of-list HOB is not part of the measured bytes, though PHIT's EfiEndOfHobList counts
it. Pure: metadata and RAM size in, bytes out.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from tdxattest.core.errors import InputError
from tdxattest.core.tdvf import TD_HOB, TEMP_MEM, TdvfMetadata

MIB = 1 << 20
GIB = 1 << 30
Q35_LOWMEM_SPLIT_THRESHOLD = 0xB0000000
Q35_LOWMEM_SPLIT = 0x80000000
FOUR_GIB = 1 << 32

HOB_TYPE_HANDOFF = 0x0001
HOB_TYPE_RESOURCE_DESCRIPTOR = 0x0003
HOB_HANDOFF_VERSION = 9
END_OF_HOB_LIST_SIZE = 8

RESOURCE_SYSTEM_MEMORY = 0
RESOURCE_MEMORY_UNACCEPTED = 7
RESOURCE_ATTRIBUTES = 0x7  # present | initialized | tested

_PHIT = struct.Struct("<HHIII5Q")  # header(type, length, reserved), version, boot mode, 5 addresses
_RESOURCE = struct.Struct("<HHI16sIIQQ")  # header, owner GUID, type, attributes, start, length


@dataclass(frozen=True)
class RamRange:
    start: int
    length: int
    resource_type: int

    @property
    def accepted(self) -> bool:
        return self.resource_type == RESOURCE_SYSTEM_MEMORY


def below_4g_ram(ram_bytes: int) -> int:
    """RAM q35 maps below 4 GiB."""
    limit = Q35_LOWMEM_SPLIT if ram_bytes >= Q35_LOWMEM_SPLIT_THRESHOLD else Q35_LOWMEM_SPLIT_THRESHOLD
    return min(ram_bytes, limit)


def ram_ranges(meta: TdvfMetadata, ram_bytes: int) -> tuple[RamRange, ...]:
    """The resource descriptors QEMU emits, in address order."""
    hobs = meta.of_type(TD_HOB)
    if len(hobs) != 1:
        raise InputError(
            "exactly one TD_HOB section in the TDVF metadata", str(len(hobs)), offset=meta.descriptor_offset
        )
    accepted = sorted(
        (s.memory_address, s.memory_data_size) for s in meta.sections if s.section_type in (TD_HOB, TEMP_MEM)
    )
    low = below_4g_ram(ram_bytes)
    ranges: list[RamRange] = []
    cursor = 0
    for start, length in accepted:
        if start < cursor:
            raise InputError(
                "TD_HOB/TempMem sections that do not overlap",
                f"a section at 0x{start:x} inside the previous one",
                offset=meta.descriptor_offset,
            )
        if start + length > low:
            raise InputError(
                f"TD_HOB/TempMem sections inside guest RAM below 4 GiB (0x{low:x} bytes)",
                f"a section ending at 0x{start + length:x}",
                offset=meta.descriptor_offset,
            )
        if start > cursor:
            ranges.append(RamRange(cursor, start - cursor, RESOURCE_MEMORY_UNACCEPTED))
        ranges.append(RamRange(start, length, RESOURCE_SYSTEM_MEMORY))
        cursor = start + length
    if low > cursor:
        ranges.append(RamRange(cursor, low - cursor, RESOURCE_MEMORY_UNACCEPTED))
    if ram_bytes > low:
        ranges.append(RamRange(FOUR_GIB, ram_bytes - low, RESOURCE_MEMORY_UNACCEPTED))
    return tuple(ranges)


def build_td_hob(meta: TdvfMetadata, ram_bytes: int) -> bytes:
    """The measured TD HOB bytes (PHIT + resource descriptors, without the end-of-list HOB)."""
    if ram_bytes <= 0 or ram_bytes % 4096:
        raise ValueError(f"guest RAM must be a positive multiple of 4 KiB, not {ram_bytes}")
    ranges = ram_ranges(meta, ram_bytes)  # raises InputError unless there is exactly one TD_HOB section
    (hob,) = meta.of_type(TD_HOB)
    body = b"".join(
        _RESOURCE.pack(
            HOB_TYPE_RESOURCE_DESCRIPTOR,
            _RESOURCE.size,
            0,
            bytes(16),
            r.resource_type,
            RESOURCE_ATTRIBUTES,
            r.start,
            r.length,
        )
        for r in ranges
    )
    end_of_list = hob.memory_address + _PHIT.size + len(body) + END_OF_HOB_LIST_SIZE
    phit = _PHIT.pack(HOB_TYPE_HANDOFF, _PHIT.size, 0, HOB_HANDOFF_VERSION, 0, 0, 0, 0, 0, end_of_list)
    return phit + body


def td_hob_digest(meta: TdvfMetadata, ram_bytes: int) -> bytes:
    return hashlib.sha384(build_td_hob(meta, ram_bytes)).digest()
