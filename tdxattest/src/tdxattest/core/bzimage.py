"""The Linux setup-header patch QEMU applies to a `-kernel` bzImage before the firmware sees it.

With direct kernel boot, QEMU (x86_load_linux) writes loader fields into the kernel's setup
header and hands the patched image to OVMF over fw_cfg; OVMF measures *that* image (its
Authenticode hash) into RTMR1. So the kernel digest depends on the initrd size and the guest RAM
(through the initrd load address) as well as the kernel file.

Fields (protocol = u16 at 0x206 when "HdrS" is at 0x202, else 0):

* type_of_loader (0x210) = 0xB0 for protocol >= 0x200;
* loadflags (0x211) |= CAN_USE_HEAP and heap_end_ptr (0x224) = cmdline - real - 0x200 for >= 0x201;
* cmd_line_ptr (0x228) = cmdline address for >= 0x202 (older: 0xA33F magic at 0x20, offset at 0x22);
* vid_mode (0x1FA) when the command line has `vga=`;
* ramdisk_image (0x218) and ramdisk_size (0x21C) when an initrd is given, the image placed at
  `(initrd_max - size) & ~0xfff` below the top of low RAM minus QEMU's ACPI area.

Pure.
"""

from __future__ import annotations

import re
import struct

from tdxattest.core.authenticode import pe_layout
from tdxattest.core.errors import InputError
from tdxattest.core.tdhob import below_4g_ram

HDRS_MAGIC = 0x53726448  # "HdrS"
LOADED_HIGH = 0x01
CAN_USE_HEAP = 0x80
XLF_CAN_BE_LOADED_ABOVE_4G = 0x02
QEMU_LOADER_TYPE = 0xB0
DEFAULT_ACPI_DATA_SIZE = 0x28000  # QEMU pc/q35 machines since 2.x
DEFAULT_INITRD_MAX = 0x37FFFFFF
HEADER_MIN = 0x260


def boot_protocol(kernel: bytes) -> int:
    if len(kernel) < HEADER_MIN:
        raise InputError(f"a Linux kernel image of at least {HEADER_MIN} bytes", f"{len(kernel)} bytes", offset=0)
    (magic,) = struct.unpack_from("<I", kernel, 0x202)
    return struct.unpack_from("<H", kernel, 0x206)[0] if magic == HDRS_MAGIC else 0


def _c_strtol(text: str) -> int:
    """C strtol(text, NULL, 0) on the leading part of `text` (0 when nothing parses)."""
    m = re.match(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if not m:
        return 0
    digits = m.group(2)
    value = int(digits, 16) if digits[:2].lower() == "0x" else int(digits, 8) if digits.startswith("0") else int(digits)
    return -value if m.group(1) == "-" else value


def _vga_mode(cmdline: str) -> int | None:
    at = cmdline.find("vga=")
    if at < 0:
        return None
    mode = cmdline[at + 4 :]
    for word, value in (("normal", 0xFFFF), ("ext", 0xFFFE), ("ask", 0xFFFD)):
        if mode.startswith(word):
            return value
    return _c_strtol(mode) & 0xFFFF


def qemu_patch_kernel(
    kernel: bytes,
    *,
    ram_bytes: int,
    initrd_size: int | None = None,
    cmdline: str = "",
    acpi_data_size: int = DEFAULT_ACPI_DATA_SIZE,
) -> bytes:
    """The kernel image as OVMF receives it from QEMU's fw_cfg (setup header patched)."""
    protocol = boot_protocol(kernel)
    header = bytearray(kernel[:HEADER_MIN])
    cmdline_size = (len(cmdline.encode()) + 16) & ~15
    if protocol < 0x200 or not header[0x211] & LOADED_HIGH:
        real_addr, cmdline_addr = 0x90000, 0x9A000 - cmdline_size
    elif protocol < 0x202:
        real_addr, cmdline_addr = 0x90000, 0x9A000 - cmdline_size
    else:
        real_addr, cmdline_addr = 0x10000, 0x20000

    if protocol >= 0x20C and struct.unpack_from("<H", header, 0x236)[0] & XLF_CAN_BE_LOADED_ABOVE_4G:
        initrd_max = 0xFFFFFFFF
    elif protocol >= 0x203:
        initrd_max = struct.unpack_from("<I", header, 0x22C)[0] or DEFAULT_INITRD_MAX
    else:
        initrd_max = DEFAULT_INITRD_MAX
    low = below_4g_ram(ram_bytes)
    if initrd_max >= low - acpi_data_size:
        initrd_max = low - acpi_data_size - 1

    if protocol >= 0x202:
        struct.pack_into("<I", header, 0x228, cmdline_addr)
    else:
        struct.pack_into("<HH", header, 0x20, 0xA33F, (cmdline_addr - real_addr) & 0xFFFF)
    vga = _vga_mode(cmdline)
    if vga is not None:
        struct.pack_into("<H", header, 0x1FA, vga)
    if protocol >= 0x200:
        header[0x210] = QEMU_LOADER_TYPE
    if protocol >= 0x201:
        header[0x211] |= CAN_USE_HEAP
        struct.pack_into("<H", header, 0x224, (cmdline_addr - real_addr - 0x200) & 0xFFFF)
    if initrd_size is not None:
        if protocol < 0x200:
            raise InputError(
                "a Linux boot protocol >= 2.00 to load an initrd ('HdrS' at 0x202)",
                f"protocol 0x{protocol:x}",
                offset=0x202,
            )
        if initrd_size >= initrd_max:
            raise InputError(
                f"an initrd smaller than {initrd_max} bytes for {ram_bytes} bytes of RAM",
                f"{initrd_size} bytes",
                offset=None,
            )
        initrd_addr = (initrd_max - initrd_size) & ~0xFFF
        struct.pack_into("<II", header, 0x218, initrd_addr, initrd_size)
    return bytes(header) + kernel[HEADER_MIN:]


def check_efi_kernel(data: bytes) -> bytes:
    """`data`, if it is a bzImage with an EFI stub (a PE/COFF image): checked before it is hashed.
    Raises InputError naming the offset that is not."""
    pe_layout(data)
    boot_protocol(data)
    return data
