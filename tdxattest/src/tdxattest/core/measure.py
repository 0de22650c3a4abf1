"""Expected TD measurements for a QEMU direct-kernel boot of an OVMF/TDVF firmware, from the boot
artifacts (pure: bytes and numbers in, frozen results out; file reading is in `loaders`).

* MRTD: from the firmware alone, both page-add orders (`mrtd`).
* RTMR0: OVMF's configuration events. Template "ovmf-direct" (OVMF before edk2-stable202505, as
  in the event logs of real TDs booted from the trixie-layout firmware): TD HOB ("TdxTable"),
  CFV ("Fv(...)"), the five Secure Boot variables (empty: Secure Boot off), a separator, the three
  QEMU ACPI blobs (etc/table-loader, etc/acpi/rsdp, etc/acpi/tables), BootOrder and Boot0000
  (UiApp). Some OVMF builds put the separator that ends the pre-boot phase at the end of RTMR0
  instead of into RTMR1 (`separator="rtmr0"`).
* RTMR1: the QEMU-patched kernel's Authenticode hash, "Calling EFI Application from Boot Option",
  the separator (default placement), and the two ExitBootServices actions.
* RTMR2: what the Linux EFI stub measures: the load options (command line + " initrd=initrd")
  and the initrd.
* RTMR3: never touched by firmware or kernel; the workload's own events (not computed here).

An event whose input was not given has `digest=None`, and its register's value is None.
"""

from __future__ import annotations

from dataclasses import dataclass

from tdxattest.core import events as ev
from tdxattest.core.authenticode import authenticode_digest
from tdxattest.core.bzimage import DEFAULT_ACPI_DATA_SIZE, qemu_patch_kernel
from tdxattest.core.errors import InputError
from tdxattest.core.mrtd import SINGLE, MrtdResult, compute_mrtd_both
from tdxattest.core.rtmr import Event, Register
from tdxattest.core.tdhob import td_hob_digest
from tdxattest.core.tdvf import TdvfMetadata, cfv_bytes, parse_tdvf

SEPARATOR_PLACEMENTS = ("rtmr1", "rtmr0")
TEMPLATE = "ovmf-direct"


@dataclass(frozen=True)
class AcpiDigests:
    """SHA-384 of QEMU's fw_cfg ACPI blobs, captured from a reference TD of the same VM shape."""

    table_loader: bytes
    rsdp: bytes
    tables: bytes

    def as_dict(self) -> dict[str, str]:
        return {"table_loader": self.table_loader.hex(), "rsdp": self.rsdp.hex(), "tables": self.tables.hex()}


@dataclass(frozen=True)
class InitrdInfo:
    size: int
    sha384: bytes


@dataclass(frozen=True)
class BootInputs:
    firmware: bytes
    page_add_order: str = SINGLE
    memory_bytes: int | None = None
    vcpus: int | None = None
    kernel: bytes | None = None
    initrd: InitrdInfo | None = None
    cmdline: str | None = None
    acpi: AcpiDigests | None = None
    separator: str = "rtmr1"
    acpi_data_size: int = DEFAULT_ACPI_DATA_SIZE


@dataclass(frozen=True)
class Measurements:
    tdvf: TdvfMetadata
    mrtd: MrtdResult
    cfv_sha384: bytes
    td_hob_sha384: bytes | None
    kernel_authenticode: bytes | None
    rtmr0: Register
    rtmr1: Register
    rtmr2: Register
    reasons: dict[str, str]  # register -> why it is not computed

    def registers(self) -> dict[str, Register]:
        return {"rtmr0": self.rtmr0, "rtmr1": self.rtmr1, "rtmr2": self.rtmr2}


def rtmr0_register(
    td_hob: bytes | None, cfv: bytes | None, acpi: AcpiDigests | None, separator: str = "rtmr1"
) -> Register:
    events = [
        Event("td-hob", ev.EV_EFI_HANDOFF_TABLES2, td_hob, "TdxTable"),
        Event("cfv", ev.EV_EFI_PLATFORM_FIRMWARE_BLOB2, cfv, "Fv(...) variable store"),
    ]
    events += [
        Event(name, ev.EV_EFI_VARIABLE_DRIVER_CONFIG, ev.variable_driver_config(guid, name), "empty")
        for name, guid in ev.SECURE_BOOT_VARIABLES
    ]
    events.append(Event("separator", ev.EV_SEPARATOR, ev.SEPARATOR))
    events += [
        Event(
            "acpi-table-loader", ev.EV_PLATFORM_CONFIG_FLAGS, acpi.table_loader if acpi else None, "etc/table-loader"
        ),
        Event("acpi-rsdp", ev.EV_PLATFORM_CONFIG_FLAGS, acpi.rsdp if acpi else None, "etc/acpi/rsdp"),
        Event("acpi-tables", ev.EV_PLATFORM_CONFIG_FLAGS, acpi.tables if acpi else None, "etc/acpi/tables"),
        Event("BootOrder", ev.EV_EFI_VARIABLE_BOOT, ev.variable_boot(ev.BOOT_ORDER_DEFAULT), "0000"),
        Event("Boot0000", ev.EV_EFI_VARIABLE_BOOT, ev.variable_boot(ev.uiapp_load_option()), "UiApp"),
    ]
    if separator == "rtmr0":
        events.append(Event("separator-end", ev.EV_SEPARATOR, ev.SEPARATOR))
    return Register("rtmr0", tuple(events))


def rtmr1_register(kernel_digest: bytes | None, separator: str = "rtmr1") -> Register:
    events = [
        Event("kernel", ev.EV_EFI_BOOT_SERVICES_APPLICATION, kernel_digest, "Authenticode of the QEMU-patched kernel"),
        Event(
            "calling-efi-application",
            ev.EV_EFI_ACTION,
            ev.efi_action(ev.CALLING_EFI_APPLICATION),
            ev.CALLING_EFI_APPLICATION,
        ),
    ]
    if separator == "rtmr1":
        events.append(Event("separator", ev.EV_SEPARATOR, ev.SEPARATOR))
    events += [
        Event(
            "exit-boot-services",
            ev.EV_EFI_ACTION,
            ev.efi_action(ev.EXIT_BOOT_SERVICES_INVOCATION),
            ev.EXIT_BOOT_SERVICES_INVOCATION,
        ),
        Event(
            "exit-boot-services-success",
            ev.EV_EFI_ACTION,
            ev.efi_action(ev.EXIT_BOOT_SERVICES_SUCCESS),
            ev.EXIT_BOOT_SERVICES_SUCCESS,
        ),
    ]
    return Register("rtmr1", tuple(events))


def rtmr2_register(cmdline: str | None, initrd: InitrdInfo | None) -> Register:
    if cmdline is None:
        load_options = None
        digest = None
    else:
        load_options = ev.measured_cmdline(cmdline, initrd is not None)
        digest = ev.cmdline_digest(load_options)
    events = [
        Event(
            "cmdline",
            ev.EV_EVENT_TAG,
            digest,
            "LoadOptions: " + repr(load_options) if load_options is not None else "LoadOptions",
        )
    ]
    if initrd is not None:
        events.append(Event("initrd", ev.EV_EVENT_TAG, initrd.sha384, f"{initrd.size} bytes"))
    return Register("rtmr2", tuple(events))


def kernel_measurement(
    kernel: bytes,
    memory_bytes: int,
    initrd: InitrdInfo | None,
    cmdline: str,
    acpi_data_size: int = DEFAULT_ACPI_DATA_SIZE,
) -> bytes:
    """RTMR1's kernel event digest: Authenticode SHA-384 of the kernel as QEMU patches it."""
    patched = qemu_patch_kernel(
        kernel,
        ram_bytes=memory_bytes,
        initrd_size=initrd.size if initrd else None,
        cmdline=cmdline,
        acpi_data_size=acpi_data_size,
    )
    return authenticode_digest(patched)


def compute(
    inputs: BootInputs, meta: TdvfMetadata | None = None, sources: dict[str, str] | None = None
) -> Measurements:
    """All registers the inputs allow. `sources` ({"firmware": name, "kernel": name}) only labels
    an `InputError` with the file it is about."""
    sources = sources or {}
    try:
        return _compute(inputs, meta)
    except _Labelled as exc:
        err = exc.args[1]
        raise (err.with_file(sources[exc.args[0]]) if exc.args[0] in sources else err) from None


class _Labelled(Exception):
    """(role, InputError) while computing: which input the error is about."""


def _compute(inputs: BootInputs, meta: TdvfMetadata | None) -> Measurements:
    if inputs.separator not in SEPARATOR_PLACEMENTS:
        raise ValueError(f"separator placement must be one of {SEPARATOR_PLACEMENTS}, not {inputs.separator!r}")
    fw = inputs.firmware
    try:
        meta = meta or parse_tdvf(fw)
        mrtd = compute_mrtd_both(fw, meta, inputs.page_add_order)
        cfv = ev.sha384(cfv_bytes(fw, meta))
        hob = td_hob_digest(meta, inputs.memory_bytes) if inputs.memory_bytes else None
    except InputError as exc:
        raise _Labelled("firmware", exc) from None
    reasons: dict[str, str] = {}

    missing0 = [
        what
        for what, have in (
            ("the guest memory size", hob is not None),
            ("the QEMU ACPI blobs or their digests", inputs.acpi is not None),
        )
        if not have
    ]
    if missing0:
        reasons["rtmr0"] = "needs " + " and ".join(missing0)
    rtmr0 = rtmr0_register(hob, cfv, inputs.acpi, inputs.separator)

    kernel_digest = None
    if inputs.kernel is not None and inputs.memory_bytes:
        try:
            kernel_digest = kernel_measurement(
                inputs.kernel, inputs.memory_bytes, inputs.initrd, inputs.cmdline or "", inputs.acpi_data_size
            )
        except InputError as exc:
            raise _Labelled("kernel", exc) from None
    elif inputs.kernel is not None:
        reasons["rtmr1"] = "needs the guest memory size (QEMU patches the kernel header with the initrd address)"
    else:
        reasons["rtmr1"] = "needs the kernel"
    rtmr1 = rtmr1_register(kernel_digest, inputs.separator)

    if inputs.cmdline is None:
        reasons["rtmr2"] = "needs the kernel command line"
    rtmr2 = rtmr2_register(inputs.cmdline, inputs.initrd)
    return Measurements(
        tdvf=meta,
        mrtd=mrtd,
        cfv_sha384=cfv,
        td_hob_sha384=hob,
        kernel_authenticode=kernel_digest,
        rtmr0=rtmr0,
        rtmr1=rtmr1,
        rtmr2=rtmr2,
        reasons=reasons,
    )
