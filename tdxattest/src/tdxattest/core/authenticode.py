"""PE/COFF Authenticode image hash, the way the firmware measures an EFI application it loads
(edk2's image measurement: the same byte ranges as Authenticode signing).

Hashed, in order:

1. the headers up to SizeOfHeaders, leaving out the 4-byte CheckSum and the 8-byte Certificate
   Table data-directory entry;
2. each section's raw data, in PointerToRawData order (sections with no raw data skipped);
3. whatever follows the last section, minus the certificate table (Size of the security
   directory) at the end of the file.

Pure: bytes in, digest out; `InputError` with the offset when the file is not a PE image.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from tdxattest.core.errors import InputError, show_bytes

PE32_MAGIC = 0x10B
PE32PLUS_MAGIC = 0x20B
SECURITY_DIRECTORY_INDEX = 4
SECTION_HEADER_SIZE = 40


@dataclass(frozen=True)
class PeLayout:
    pe_offset: int
    optional_header: int
    magic: int
    checksum_offset: int
    certificate_entry_offset: int | None  # None when the image has no security directory entry
    size_of_headers: int
    certificate_size: int
    sections: tuple[tuple[int, int], ...]  # (PointerToRawData, SizeOfRawData), file order


def _u16(data: bytes, off: int, what: str) -> int:
    if off + 2 > len(data):
        raise InputError(what, "end of file", offset=off)
    value: int = struct.unpack_from("<H", data, off)[0]
    return value


def _u32(data: bytes, off: int, what: str) -> int:
    if off + 4 > len(data):
        raise InputError(what, "end of file", offset=off)
    value: int = struct.unpack_from("<I", data, off)[0]
    return value


def pe_layout(pe: bytes) -> PeLayout:
    if pe[:2] != b"MZ":
        raise InputError("'MZ' (a PE/COFF image, e.g. a Linux bzImage with its EFI stub)", show_bytes(pe[:4]), offset=0)
    e_lfanew = _u32(pe, 0x3C, "the PE header offset (e_lfanew)")
    if pe[e_lfanew : e_lfanew + 4] != b"PE\x00\x00":
        raise InputError(
            "PE signature 'PE\\0\\0' at e_lfanew (a PE/COFF image)",
            show_bytes(pe[e_lfanew : e_lfanew + 4]),
            offset=e_lfanew,
        )
    coff = e_lfanew + 4
    sections_count = _u16(pe, coff + 2, "the COFF header")
    size_of_optional = _u16(pe, coff + 16, "the COFF header")
    opt = coff + 20
    magic = _u16(pe, opt, "the optional header magic")
    if magic == PE32_MAGIC:
        rva_count_off, directories = opt + 92, opt + 96
    elif magic == PE32PLUS_MAGIC:
        rva_count_off, directories = opt + 108, opt + 112
    else:
        raise InputError("optional header magic 0x10b (PE32) or 0x20b (PE32+)", f"0x{magic:x}", offset=opt)
    size_of_headers = _u32(pe, opt + 60, "SizeOfHeaders")
    rva_count = _u32(pe, rva_count_off, "NumberOfRvaAndSizes")
    if size_of_headers > len(pe):
        raise InputError(f"SizeOfHeaders within the {len(pe)}-byte file", str(size_of_headers), offset=opt + 60)
    cert_entry = None
    cert_size = 0
    if rva_count > SECURITY_DIRECTORY_INDEX:
        cert_entry = directories + 8 * SECURITY_DIRECTORY_INDEX
        if cert_entry + 8 > size_of_headers:
            raise InputError(
                f"the certificate table entry inside the headers ({size_of_headers} bytes)",
                f"it ends at {cert_entry + 8}",
                offset=cert_entry,
            )
        cert_size = _u32(pe, cert_entry + 4, "the certificate table size")
    table = opt + size_of_optional
    sections = []
    for i in range(sections_count):
        at = table + i * SECTION_HEADER_SIZE
        raw_size = _u32(pe, at + 16, f"section header {i}")
        raw_ptr = _u32(pe, at + 20, f"section header {i}")
        if raw_size and raw_ptr + raw_size > len(pe):
            raise InputError(
                f"section {i} raw data (0x{raw_ptr:x} + 0x{raw_size:x}) inside the {len(pe)}-byte file",
                f"end at 0x{raw_ptr + raw_size:x}",
                offset=at + 16,
            )
        sections.append((raw_ptr, raw_size))
    return PeLayout(e_lfanew, opt, magic, opt + 64, cert_entry, size_of_headers, cert_size, tuple(sections))


def authenticode_digest(pe: bytes, algorithm: str = "sha384") -> bytes:
    """Authenticode hash of a PE/COFF image (SHA-384 by default, as TDX firmware measures)."""
    layout = pe_layout(pe)
    view = memoryview(pe)
    h = hashlib.new(algorithm)
    h.update(view[: layout.checksum_offset])
    if layout.certificate_entry_offset is None:
        h.update(view[layout.checksum_offset + 4 : layout.size_of_headers])
    else:
        h.update(view[layout.checksum_offset + 4 : layout.certificate_entry_offset])
        h.update(view[layout.certificate_entry_offset + 8 : layout.size_of_headers])
    hashed = layout.size_of_headers
    for ptr, size in sorted(s for s in layout.sections if s[1]):
        h.update(view[ptr : ptr + size])
        hashed += size
    trailing_end = len(pe) - layout.certificate_size
    if trailing_end > hashed:
        h.update(view[hashed:trailing_end])
    return h.digest()
