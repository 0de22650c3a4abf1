"""MRTD: the running SHA-384 the TDX module keeps while the host builds the TD's initial memory.

Every TDH.MEM.PAGE.ADD feeds one 128-byte block ("MEM.PAGE.ADD", GPA); every TDH.MR.EXTEND feeds a
128-byte block ("MR.EXTEND", GPA) followed by the 256 measured bytes. Sections are processed in
TDVF metadata order (not GPA order), pages from the lowest GPA up.

The only host-dependent input is the page-add order:

* ``single``: per page, PAGE.ADD then its 16 MR.EXTENDs (upstream KVM >= 6.16 with QEMU >= 10.1,
  QEMU 9.x stacks, td-shim tools);
* ``two-pass``: per section, every PAGE.ADD first, then every MR.EXTEND (Intel's QEMU 8.2 TDX
  trees, Canonical's tdx-noble QEMU 8.2.2).

Both are computed; the deployment picks one. Pure: bytes in, digests out.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from tdxattest.core.tdvf import PAGE, TdvfMetadata, TdvfSection

SINGLE = "single"
TWO_PASS = "two-pass"
ORDERS = (SINGLE, TWO_PASS)

CHUNK = 256
CHUNKS_PER_PAGE = PAGE // CHUNK

_PAGE_ADD = struct.Struct("<12s4xQ104x")  # 128 bytes: "MEM.PAGE.ADD", pad, GPA, zeros
_MR_EXTEND = struct.Struct("<9s7xQ104x")  # 128 bytes: "MR.EXTEND", pad, GPA, zeros


@dataclass(frozen=True)
class MrtdResult:
    single: bytes
    two_pass: bytes
    selected: str

    @property
    def value(self) -> bytes:
        return self.single if self.selected == SINGLE else self.two_pass

    def as_dict(self) -> dict[str, str]:
        return {
            SINGLE: self.single.hex(),
            TWO_PASS: self.two_pass.hex(),
            "selected": self.selected,
            "value": self.value.hex(),
        }


def check_order(order: str) -> str:
    if order not in ORDERS:
        raise ValueError(f"page-add order must be one of {', '.join(ORDERS)}, not {order!r}")
    return order


def _page_add(gpa: int) -> bytes:
    return _PAGE_ADD.pack(b"MEM.PAGE.ADD", gpa)


def _section_bytes(fw: bytes, section: TdvfSection) -> bytes:
    """The section's measured contents, zero-filled from RawDataSize to MemoryDataSize."""
    raw = fw[section.data_offset : section.data_offset + section.raw_data_size]
    if section.raw_data_size < section.memory_data_size:
        raw = bytes(raw) + bytes(section.memory_data_size - section.raw_data_size)
    return raw


def _extend_page(data: memoryview, page: int, gpa: int) -> bytes:
    """The 16 MR.EXTEND records (header + 256 bytes each) for one 4 KiB page."""
    base = page * PAGE
    pieces: list[bytes | memoryview] = []  # slices of `data` stay views: no copy per chunk
    pack = _MR_EXTEND.pack
    for c in range(CHUNKS_PER_PAGE):
        off = c * CHUNK
        pieces.append(pack(b"MR.EXTEND", gpa + off))
        pieces.append(data[base + off : base + off + CHUNK])
    return b"".join(pieces)


def compute_mrtd(fw: bytes, meta: TdvfMetadata, order: str = SINGLE) -> bytes:
    """MRTD (48 bytes) of the firmware image for one page-add order."""
    check_order(order)
    h = hashlib.sha384()
    update = h.update
    for s in meta.sections:
        pages = s.memory_data_size // PAGE
        add = s.page_added
        data = memoryview(_section_bytes(fw, s)) if s.measured else None
        if order == SINGLE:
            for p in range(pages):
                gpa = s.memory_address + p * PAGE
                if add:
                    update(_page_add(gpa))
                if data is not None:
                    update(_extend_page(data, p, gpa))
        else:
            if add:
                update(b"".join(_page_add(s.memory_address + p * PAGE) for p in range(pages)))
            if data is not None:
                for p in range(pages):
                    update(_extend_page(data, p, s.memory_address + p * PAGE))
    return h.digest()


def compute_mrtd_both(fw: bytes, meta: TdvfMetadata, selected: str = SINGLE) -> MrtdResult:
    return MrtdResult(
        single=compute_mrtd(fw, meta, SINGLE), two_pass=compute_mrtd(fw, meta, TWO_PASS), selected=check_order(selected)
    )
