"""`measure`: expected MRTD and RTMR0-2 from the TD boot artifacts, computed offline."""

from __future__ import annotations

import argparse
import json
import sys

MIB = 1 << 20


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Compute the measurements a QEMU direct-boot TD will report, from the boot artifacts. "
        "MRTD needs only the firmware; RTMR1 the kernel and the memory size; RTMR2 the command "
        "line (and initrd); RTMR0 the memory size and the QEMU ACPI blobs of the same VM shape."
    )
    p.add_argument("--firmware", required=True, metavar="OVMF.fd", help="TDVF/OVMF image (the one given to -bios)")
    p.add_argument(
        "--page-add-order",
        choices=("single", "two-pass"),
        default="single",
        help="how the host adds pages (single: upstream KVM/QEMU >= 10.1; two-pass: QEMU 8.2 TDX "
        "trees); both MRTDs are printed, this one is marked (default: single)",
    )
    p.add_argument("--kernel", metavar="K", help="bzImage given to -kernel (a PE image with the EFI stub)")
    p.add_argument("--initrd", metavar="I", help="initrd given to -initrd")
    p.add_argument("--cmdline", metavar="TEXT", help="command line given to -append (may be empty)")
    p.add_argument("--vcpus", type=int, metavar="N", help="vCPUs (recorded; they shape the ACPI blobs)")
    p.add_argument(
        "--memory-mib",
        type=int,
        metavar="M",
        help="guest RAM in MiB (-m); shapes the TD HOB and the kernel header QEMU patches",
    )
    p.add_argument(
        "--acpi-tables",
        metavar="F",
        help="QEMU ACPI blobs of a reference TD: a directory with table-loader, rsdp and tables "
        "(or /sys/firmware/qemu_fw_cfg/by_name's etc/... layout), or a JSON file with their "
        "SHA-384 digests {table_loader, rsdp, tables}",
    )
    p.add_argument(
        "--separator",
        choices=("rtmr1", "rtmr0"),
        default="rtmr1",
        help="where this OVMF build measures the end-of-pre-boot separator (default: rtmr1)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tdxattest.cli import UsageError
    from tdxattest.core.files import hash_file
    from tdxattest.core.loaders import load_acpi, load_firmware, load_initrd, load_kernel
    from tdxattest.core.measure import BootInputs, compute

    if args.memory_mib is not None and args.memory_mib <= 0:
        raise UsageError(f"--memory-mib: expected a positive number of MiB, seen {args.memory_mib}")
    if args.vcpus is not None and args.vcpus <= 0:
        raise UsageError(f"--vcpus: expected a positive count, seen {args.vcpus}")
    if args.kernel and args.memory_mib is None:
        raise UsageError(
            "--kernel: expected --memory-mib too (QEMU patches the kernel header with an initrd "
            "address that depends on the guest RAM)"
        )

    firmware, meta = load_firmware(args.firmware)
    kernel = load_kernel(args.kernel) if args.kernel else None
    initrd = load_initrd(args.initrd) if args.initrd else None
    acpi = load_acpi(args.acpi_tables) if args.acpi_tables else None
    memory = args.memory_mib * MIB if args.memory_mib else None
    result = compute(
        BootInputs(
            firmware=firmware,
            page_add_order=args.page_add_order,
            memory_bytes=memory,
            vcpus=args.vcpus,
            kernel=kernel,
            initrd=initrd,
            cmdline=args.cmdline,
            acpi=acpi,
            separator=args.separator,
        ),
        meta,
        sources={"firmware": args.firmware, "kernel": args.kernel or "kernel"},
    )

    fw_hashes = hash_file(args.firmware)
    out: dict = {
        "firmware": {
            "file": args.firmware,
            "size": fw_hashes.size,
            "sha256": fw_hashes.sha256,
            "sha384": fw_hashes.sha384,
            "descriptor_offset": meta.descriptor_offset,
            "located_by": meta.located_by,
            "sections": [s.as_dict() for s in meta.sections],
            "cfv_sha384": result.cfv_sha384.hex(),
        },
        "inputs": {
            "memory_mib": args.memory_mib,
            "vcpus": args.vcpus,
            "cmdline": args.cmdline,
            "separator": args.separator,
            "template": "ovmf-direct",
        },
        "mrtd": result.mrtd.as_dict(),
    }
    if result.td_hob_sha384 is not None:
        out["firmware"]["td_hob_sha384"] = result.td_hob_sha384.hex()
    if kernel is not None:
        h = hash_file(args.kernel)
        out["inputs"]["kernel"] = {
            "file": args.kernel,
            "size": h.size,
            "sha256": h.sha256,
            "authenticode_sha384_patched": result.kernel_authenticode.hex() if result.kernel_authenticode else None,
        }
    if initrd is not None:
        out["inputs"]["initrd"] = {"file": args.initrd, "size": initrd.size, "sha384": initrd.sha384.hex()}
    if acpi is not None:
        out["inputs"]["acpi"] = {"source": args.acpi_tables, **acpi.as_dict()}
    for name, reg in result.registers().items():
        if reg.value is not None:
            out[name] = reg.as_dict()
    if result.reasons:
        out["not_computed"] = dict(result.reasons)

    if args.json:
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_text(out)
    return 0


def _print_text(out: dict) -> None:
    mrtd = out["mrtd"]
    print(f"firmware  {out['firmware']['file']}  sha256 {out['firmware']['sha256']}")
    for order in ("single", "two-pass"):
        mark = "  <- selected" if mrtd["selected"] == order else ""
        print(f"MRTD {order:<9} {mrtd[order]}{mark}")
    for name in ("rtmr0", "rtmr1", "rtmr2"):
        if name in out:
            print(f"{name.upper():<14} {out[name]['value']}")
            for e in out[name]["events"]:
                print(f"    {e['digest']}  {e['event']}")
        else:
            print(f"{name.upper():<14} not computed: {out['not_computed'][name]}")
