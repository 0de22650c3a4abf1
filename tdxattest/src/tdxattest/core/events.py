"""The events OVMF and the Linux EFI stub measure on a QEMU direct-kernel boot, as digests.

Event type numbers and names follow the TCG PC Client spec. Digest rules that are easy to get wrong:

* EV_EFI_ACTION strings are hashed as ASCII without a NUL;
* EV_EFI_VARIABLE_DRIVER_CONFIG digests cover the whole UEFI_VARIABLE_DATA (GUID, name length in
  characters, data length, UTF-16LE name without NUL, data), EV_EFI_VARIABLE_BOOT digests cover the
  variable data only;
* the kernel command line is hashed as UTF-16LE plus a UTF-16 NUL, and OVMF appends
  " initrd=initrd" when QEMU was given an initrd.

Pure.
"""

from __future__ import annotations

import hashlib
import struct
import uuid

# --- event types (TCG PC Client Platform Firmware Profile) ------------------------------------
EV_PREBOOT_CERT = 0x0
EV_POST_CODE = 0x1
EV_NO_ACTION = 0x3
EV_SEPARATOR = 0x4
EV_ACTION = 0x5
EV_EVENT_TAG = 0x6
EV_S_CRTM_CONTENTS = 0x7
EV_S_CRTM_VERSION = 0x8
EV_CPU_MICROCODE = 0x9
EV_PLATFORM_CONFIG_FLAGS = 0xA
EV_TABLE_OF_DEVICES = 0xB
EV_COMPACT_HASH = 0xC
EV_IPL = 0xD
EV_IPL_PARTITION_DATA = 0xE
EV_NONHOST_CODE = 0xF
EV_NONHOST_CONFIG = 0x10
EV_NONHOST_INFO = 0x11
EV_OMIT_BOOT_DEVICE_EVENTS = 0x12
EV_EFI_EVENT_BASE = 0x80000000
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_VARIABLE_BOOT = 0x80000002
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_BOOT_SERVICES_DRIVER = 0x80000004
EV_EFI_RUNTIME_SERVICES_DRIVER = 0x80000005
EV_EFI_GPT_EVENT = 0x80000006
EV_EFI_ACTION = 0x80000007
EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
EV_EFI_HANDOFF_TABLES = 0x80000009
EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000000A
EV_EFI_HANDOFF_TABLES2 = 0x8000000B
EV_EFI_VARIABLE_BOOT2 = 0x8000000C
EV_EFI_GPT_EVENT2 = 0x8000000D
EV_EFI_HCRTM_EVENT = 0x80000010
EV_EFI_VARIABLE_AUTHORITY = 0x800000E0
EV_EFI_SPDM_FIRMWARE_BLOB = 0x800000E1
EV_EFI_SPDM_FIRMWARE_CONFIG = 0x800000E2
DSTACK_RUNTIME_EVENT = 0x08000001  # dstack's RTMR3 workload events

_NAMES = {v: k for k, v in dict(globals()).items() if k.startswith(("EV_", "DSTACK_")) and isinstance(v, int)}


def event_type_name(event_type: int) -> str:
    return _NAMES.get(event_type, f"0x{event_type:x}")


# --- digests ------------------------------------------------------------------------------------
def sha384(data: bytes) -> bytes:
    return hashlib.sha384(data).digest()


SEPARATOR_DATA = b"\x00\x00\x00\x00"
SEPARATOR = sha384(SEPARATOR_DATA)

CALLING_EFI_APPLICATION = "Calling EFI Application from Boot Option"
EXIT_BOOT_SERVICES_INVOCATION = "Exit Boot Services Invocation"
EXIT_BOOT_SERVICES_SUCCESS = "Exit Boot Services Returned with Success"


def efi_action(text: str) -> bytes:
    return sha384(text.encode("ascii"))


EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")

# The Secure Boot configuration variables OVMF measures, in order, with their vendor GUIDs.
SECURE_BOOT_VARIABLES = (
    ("SecureBoot", EFI_GLOBAL_VARIABLE),
    ("PK", EFI_GLOBAL_VARIABLE),
    ("KEK", EFI_GLOBAL_VARIABLE),
    ("db", EFI_IMAGE_SECURITY_DATABASE),
    ("dbx", EFI_IMAGE_SECURITY_DATABASE),
)


def uefi_variable_data(vendor: uuid.UUID, name: str, data: bytes) -> bytes:
    """UEFI_VARIABLE_DATA: GUID, u64 name length in characters, u64 data length, UTF-16LE name, data."""
    return vendor.bytes_le + struct.pack("<QQ", len(name), len(data)) + name.encode("utf-16-le") + data


def variable_driver_config(vendor: uuid.UUID, name: str, data: bytes = b"") -> bytes:
    """Digest of an EV_EFI_VARIABLE_DRIVER_CONFIG event (the whole UEFI_VARIABLE_DATA)."""
    return sha384(uefi_variable_data(vendor, name, data))


def variable_boot(data: bytes) -> bytes:
    """Digest of an EV_EFI_VARIABLE_BOOT event (the variable's data only)."""
    return sha384(data)


# OVMF's default boot entries on a direct-kernel boot (no disk boot options): BootOrder = [0],
# Boot0000 = the firmware's UI application (UiApp), an EFI_LOAD_OPTION pointing into the DXE FV.
OVMF_DXE_FV_NAME = uuid.UUID("7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1")
UIAPP_FILE_GUID = uuid.UUID("462caa21-7614-4503-836e-8ab6f4662331")
LOAD_OPTION_ACTIVE = 0x1
LOAD_OPTION_HIDDEN = 0x8
LOAD_OPTION_CATEGORY_APP = 0x100


def _device_path_node(node_type: int, subtype: int, payload: bytes) -> bytes:
    return struct.pack("<BBH", node_type, subtype, 4 + len(payload)) + payload


def efi_load_option(description: str, device_path: bytes, attributes: int, optional: bytes = b"") -> bytes:
    """EFI_LOAD_OPTION: u32 attributes, u16 device-path length, UTF-16 description + NUL, path, data."""
    return (
        struct.pack("<IH", attributes, len(device_path))
        + (description + "\0").encode("utf-16-le")
        + device_path
        + optional
    )


def uiapp_load_option() -> bytes:
    path = (
        _device_path_node(0x04, 0x07, OVMF_DXE_FV_NAME.bytes_le)  # media: firmware volume
        + _device_path_node(0x04, 0x06, UIAPP_FILE_GUID.bytes_le)  # media: firmware file
        + _device_path_node(0x7F, 0xFF, b"")
    )  # end of the device path
    return efi_load_option("UiApp", path, LOAD_OPTION_ACTIVE | LOAD_OPTION_HIDDEN | LOAD_OPTION_CATEGORY_APP)


BOOT_ORDER_DEFAULT = b"\x00\x00"  # [Boot0000]

# --- Linux EFI stub (RTMR2) ---------------------------------------------------------------------
LINUX_EVENT_TAG_LOAD_OPTIONS = 0x8F3B22ED
LINUX_EVENT_TAG_INITRD = 0x8F3B22EC
OVMF_INITRD_SUFFIX = " initrd=initrd"


def measured_cmdline(cmdline: str, has_initrd: bool) -> str:
    """The load options OVMF hands the kernel: the QEMU -append string, plus ` initrd=initrd`."""
    return cmdline + OVMF_INITRD_SUFFIX if has_initrd else cmdline


def cmdline_digest(load_options: str) -> bytes:
    """Digest of the kernel's LoadOptions event: UTF-16LE text plus a UTF-16 NUL."""
    return sha384(load_options.encode("utf-16-le") + b"\x00\x00")


def dstack_runtime_event(event_type: int, name: str, payload: bytes) -> bytes:
    """Digest dstack extends into RTMR3 for a workload event."""
    return sha384(struct.pack("<I", event_type) + b":" + name.encode() + b":" + payload)
