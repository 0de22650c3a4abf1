"""Print the VBIOS version of an NVIDIA GPU from its PCI expansion ROM image.

Runs on the host (no NVIDIA driver is loaded there in CC setups, so nvidia-smi cannot answer).
The version lives in the ROM's BIT table: token 'i' holds micro, minor, chip, major, patch bytes,
printed by NVIDIA tools as MAJOR.CHIP.MINOR.MICRO.PATCH in upper-case hex, e.g. 96.00.9F.00.01.
Usage: vbios_version ROMFILE  (or a PCI device directory, whose `rom` is enabled while read).
"""
from __future__ import annotations

import struct
import sys
from pathlib import Path

BIT_SIGNATURE = b"\xff\xb8BIT\x00"
ROM_SIGNATURE = b"\x55\xaa"


class RomError(ValueError):
    pass


def parse_vbios_version(rom: bytes) -> str:
    at = rom.find(BIT_SIGNATURE)
    if at < 0:
        raise RomError("no BIT table in the ROM image (not an NVIDIA VBIOS?)")
    # BIT offsets are relative to the start of the PCI ROM image that holds the table.
    base = max((i for i in range(0, at + 1, 512) if rom[i:i + 2] == ROM_SIGNATURE), default=0)
    if len(rom) < at + 12:
        raise RomError(f"BIT header truncated at offset {at}")
    header_size, token_size, token_count = rom[at + 8], rom[at + 9], rom[at + 10]
    if token_size < 6:
        raise RomError(f"BIT token size {token_size} at offset {at + 9} is smaller than 6")
    for n in range(token_count):
        tok = at + header_size + n * token_size
        if len(rom) < tok + 6:
            raise RomError(f"BIT token {n} truncated at offset {tok}")
        token_id, _version, size, offset = struct.unpack_from("<BBHH", rom, tok)
        if token_id != ord("i"):
            continue
        start = base + offset
        if size < 5 or len(rom) < start + 5:
            raise RomError(f"BIT 'i' data truncated at offset {start}")
        micro, minor, chip, major, patch = rom[start:start + 5]
        return f"{major:02X}.{chip:02X}.{minor:02X}.{micro:02X}.{patch:02X}"
    raise RomError("the BIT table has no 'i' (version) token")


def read_rom(path: Path) -> bytes:
    if path.is_dir():
        rom = path / "rom"
        # The kernel exposes the ROM only while "1" is written to it.
        rom.write_text("1")
        try:
            return rom.read_bytes()
        finally:
            rom.write_text("0")
    return path.read_bytes()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: vbios_version ROMFILE|PCI_DEVICE_DIR", file=sys.stderr)
        return 2
    try:
        print(parse_vbios_version(read_rom(Path(argv[0]))))
    except (OSError, RomError) as exc:
        print(f"unreadable: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
