"""The Trust Domain definition: the QEMU command line and the systemd unit that runs it, rendered
from typed inputs. Pure and deterministic (same inputs, same bytes), so the rendered text can be a
Pulumi input (a changed pin re-launches the TD) and the unit tests can pin every policy bit.

Why QEMU + systemd and not libvirt: docs/trust-domain.md. In short, RTMR0 depends on the exact
virtual hardware (ACPI tables), so the definition must be one reviewed text with nothing added by
a management layer; a systemd unit running one QEMU command is that, and needs nothing on the host
beyond QEMU with TDX.

TD policy: DEBUG (TD_ATTRIBUTES bit 0) is never set (no `debug`, no `attributes` property is ever
rendered) and SEPT_VE_DISABLE (bit 28) is set explicitly. `assert_no_debug` re-checks the rendered
argv; `render_unit` calls it, so a definition that could launch a debuggable TD is never written.

The boot artifacts and the VM shape come from the TD boot manifest (components/catalog/td_manifest.py),
the same `BootManifest` the `pins` are computed from (components/render/pins.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from components.config.model import HOST_NAME  # the TD is named after its host
from guest_agent import CONFIG_FW_CFG

DEFAULT_QEMU = "/usr/bin/qemu-system-x86_64"
TD_ROOT = "/var/lib/tdx-vllm/td"
# The dev stack's TD without TDX (`workload.td.tdx: false`): TCG, one thread for all vCPUs. Not KVM:
# KVM without TDX adds nothing a dev VM needs and fails in nested or sandboxed hosts (an MSR QEMU
# cannot set aborts it at start); multi-threaded TCG races the kernel's int3 code patching now and
# then (tests/slow/test_guest_image.py). Slow, and only ever a functional stand-in for a TD.
NO_TDX_ACCEL = "tcg,thread=single"
GPU_MMIO64_MB = 262144  # 256 GiB of 64-bit MMIO for Hopper BARs (NVIDIA launch_vm.sh)
QGS_VSOCK_CID = 2  # the host, as seen from QEMU's vsock client
# virtio-blk serials the guest image's initramfs looks for (guest/image/initramfs/init).
ROOT_DISK_SERIAL = "tdx-vllm-root"
DATA_DISK_SERIAL = "tdx-vllm-data"

_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
# An argument systemd's ExecStart= splits as one word without quoting.
_PLAIN_ARG = re.compile(r"^[A-Za-z0-9_@%+=:,./\-]+$")


class DefinitionError(ValueError):
    """The inputs cannot make a safe TD definition; the message names the input and the fix."""


# ---------------------------------------------------------------------------------------------
# the definition


@dataclass(frozen=True)
class TdDefinition:
    """Everything that shapes the TD as QEMU starts it. Paths are on the host."""

    name: str  # the host's name in the stack: names the unit and the directory
    firmware: str  # TDVF (-bios)
    kernel: str  # -kernel (direct boot)
    initrd: str | None  # -initrd, None when the manifest says `initrd: {used: false}`
    cmdline: str  # -append, exactly the manifest's `cmdline.value` (RTMR2)
    vcpus: int
    memory_mib: int
    gpus: tuple[str, ...]  # PCI BDFs passed through with vfio-pci (iommufd)
    agent_config: str  # the file served as fw_cfg opt/tdx-vllm/agent.json
    serial_log: str  # -serial file:...; the agent's status lines land here
    gateway_port: int  # host TCP port forwarded to the same port in the TD
    qgs_port: int = 4050  # QGS on the host's vsock (DcapServices)
    qemu: str = DEFAULT_QEMU
    after_units: tuple[str, ...] = field(default=())  # e.g. the QGS unit: start the TD after it
    rootfs: str | None = None  # read-only root disk (virtio serial tdx-vllm-root)
    data_disk: str | None = None  # scratch disk the guest encrypts with a fresh key (serial tdx-vllm-data)
    tdx: bool = True  # False: the dev stack's plain VM under TCG (no TD, no measurements; NO_TDX_ACCEL)

    def __post_init__(self) -> None:
        if not HOST_NAME.fullmatch(self.name):
            raise DefinitionError(f"TD name `{self.name}`: use 1-32 lowercase letters, digits and dashes")
        for label, value in (("vcpus", self.vcpus), ("memory_mib", self.memory_mib)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise DefinitionError(f"{label} must be a positive integer, not {value!r}")
        for label, port in (("gateway_port", self.gateway_port), ("qgs_port", self.qgs_port)):
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise DefinitionError(f"{label} must be a TCP/vsock port (1..65535), not {port!r}")
        for bdf in self.gpus:
            if not _BDF.fullmatch(bdf):
                raise DefinitionError(f"GPU `{bdf}` is not a PCI address like 0000:b8:00.0")
        if len(set(self.gpus)) != len(self.gpus):
            raise DefinitionError(f"GPU list {list(self.gpus)} names a device twice")
        for label, file in (
            ("firmware", self.firmware),
            ("kernel", self.kernel),
            ("initrd", self.initrd),
            ("agent_config", self.agent_config),
            ("serial_log", self.serial_log),
            ("qemu", self.qemu),
            ("rootfs", self.rootfs),
            ("data_disk", self.data_disk),
        ):
            if file is not None and (not file.startswith("/") or "," in file or not _PLAIN_ARG.fullmatch(file)):
                raise DefinitionError(f"{label} path `{file}` must be absolute, without commas, spaces or quotes")

    @property
    def unit_name(self) -> str:
        return unit_name(self.name)


def unit_name(name: str) -> str:
    return f"tdx-vllm-td-{name}.service"


def td_dir(name: str) -> str:
    return f"{TD_ROOT}/{name}"


def tdx_guest_object(qgs_port: int) -> str:
    """The `tdx-guest` object: quote generation through QGS on the host's vsock, SEPT_VE_DISABLE on,
    and no `debug`/`attributes` (QEMU then never sets TD_ATTRIBUTES bit 0)."""
    return json.dumps(
        {
            "qom-type": "tdx-guest",
            "id": "tdx",
            "quote-generation-socket": {"type": "vsock", "cid": str(QGS_VSOCK_CID), "port": str(qgs_port)},
            "sept-ve-disable": True,
        },
        separators=(",", ":"),
    )


def _machine_argv(d: TdDefinition) -> list[str]:
    if not d.tdx:
        return [
            "-accel",
            NO_TDX_ACCEL,
            "-cpu",
            "max",
            "-smp",
            str(d.vcpus),
            "-m",
            f"{d.memory_mib}M",
            "-machine",
            "q35,hpet=off",
        ]
    return [
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-smp",
        str(d.vcpus),
        "-m",
        f"{d.memory_mib}M",
        "-object",
        f"memory-backend-ram,id=mem0,size={d.memory_mib}M",
        "-object",
        tdx_guest_object(d.qgs_port),
        "-machine",
        "q35,kernel_irqchip=split,confidential-guest-support=tdx,memory-backend=mem0,hpet=off",
    ]


def qemu_argv(d: TdDefinition) -> list[str]:
    """The QEMU command line, one list element per argument (the order is part of the definition)."""
    argv = [
        d.qemu,
        "-name",
        f"tdx-vllm-{d.name},process=tdx-vllm-{d.name}",
        *_machine_argv(d),
        "-bios",
        d.firmware,
        "-kernel",
        d.kernel,
    ]
    if d.initrd is not None:
        argv += ["-initrd", d.initrd]
    argv += [
        "-append",
        d.cmdline,
        "-nodefaults",
        "-nographic",
        "-no-reboot",  # a TD cannot reset: a guest reboot ends QEMU and systemd starts a fresh TD
        "-serial",
        f"file:{d.serial_log}",
        # User-mode networking: outbound NAT (model download) and one inbound forward, the gateway.
        "-netdev",
        f"user,id=net0,hostfwd=tcp::{d.gateway_port}-:{d.gateway_port}",
        "-device",
        "virtio-net-pci,netdev=net0,romfile=",
        "-fw_cfg",
        f"name={CONFIG_FW_CFG},file={d.agent_config}",
    ]
    if d.rootfs is not None:
        argv += [
            "-drive",
            f"file={d.rootfs},if=none,id=root,format=raw,readonly=on",
            "-device",
            f"virtio-blk-pci,drive=root,serial={ROOT_DISK_SERIAL}",
        ]
    if d.data_disk is not None:
        argv += [
            "-drive",
            f"file={d.data_disk},if=none,id=data,format=raw",
            "-device",
            f"virtio-blk-pci,drive=data,serial={DATA_DISK_SERIAL}",
        ]
    for i, bdf in enumerate(d.gpus):
        port = i + 1
        argv += [
            "-object",
            f"iommufd,id=iommufd{i}",
            "-device",
            f"pcie-root-port,port={port},chassis={port},id=pci.{port},bus=pcie.0",
            "-device",
            f"vfio-pci,host={bdf},bus=pci.{port},iommufd=iommufd{i}",
        ]
    if d.gpus:
        argv += ["-fw_cfg", f"name=opt/ovmf/X-PciMmio64Mb,string={GPU_MMIO64_MB}"]
    if d.tdx:
        assert_no_debug(argv)
    return argv


def assert_no_debug(argv: list[str]) -> None:
    """Refuse any argv whose tdx-guest object could set DEBUG or clear SEPT_VE_DISABLE."""
    objects = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-object" and "tdx-guest" in argv[i + 1]]
    if len(objects) != 1:
        raise DefinitionError(f"expected exactly one tdx-guest object, found {len(objects)}")
    try:
        obj = json.loads(objects[0])
    except json.JSONDecodeError:
        raise DefinitionError("the tdx-guest object must be rendered as JSON") from None
    if "debug" in obj or "attributes" in obj:
        raise DefinitionError("the tdx-guest object sets `debug` or raw `attributes`: a TD must never be debuggable")
    if obj.get("sept-ve-disable") is not True:
        raise DefinitionError("the tdx-guest object must set sept-ve-disable (TD_ATTRIBUTES bit 28)")
    if "confidential-guest-support=tdx" not in " ".join(argv):
        raise DefinitionError("-machine must name confidential-guest-support=tdx")


def _systemd_word(arg: str) -> str:
    """One ExecStart= word: plain, or single-quoted; `%` and `$` escaped (systemd expands both)."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if arg and _PLAIN_ARG.fullmatch(arg):
        return escaped
    if "'" in arg or "\\" in arg or "\n" in arg:
        raise DefinitionError(f"argument {arg!r} cannot be written in a systemd unit (quote, backslash or newline)")
    return f"'{escaped}'"


def exec_start(argv: list[str]) -> str:
    """ExecStart= with one option (and its value) per line, continued with backslashes."""
    lines, i = [_systemd_word(argv[0])], 1
    while i < len(argv):
        if argv[i].startswith("-") and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            lines.append(f"{_systemd_word(argv[i])} {_systemd_word(argv[i + 1])}")
            i += 2
        else:
            lines.append(_systemd_word(argv[i]))
            i += 1
    return "ExecStart=" + " \\\n    ".join(lines)


def render_unit(d: TdDefinition, pins: Mapping[str, str]) -> str:
    """The systemd unit. `pins` (artifact sha256, manifest digest, expected RTMR3) are written as
    comments: the unit text changes whenever a pin does, so a changed pin re-launches the TD even
    when the staged file names stay the same."""
    after = " ".join(("network-online.target",) + tuple(d.after_units))
    pin_lines = "".join(f"# pin {k}: {v}\n" for k, v in sorted(pins.items()))
    no_tdx = (
        ""
        if d.tdx
        else "# NO TDX (dev stack, workload.td.tdx: false): a plain VM under TCG with software TEST quotes.\n"
    )
    return (
        f"# Managed by tdx-vllm (Pulumi): the Trust Domain of host `{d.name}`. Do not edit: `pulumi up`\n"
        "# rewrites this file and restarts the TD when it differs.\n"
        f"{no_tdx}"
        f"{pin_lines}"
        "[Unit]\n"
        f"Description=tdx-vllm Trust Domain {d.name} (attested vLLM)\n"
        f"After={after}\n"
        "Wants=network-online.target\n"
        "StartLimitIntervalSec=600\n"
        "StartLimitBurst=3\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"{exec_start(qemu_argv(d))}\n"
        "Restart=always\n"
        "RestartSec=10\n"
        "TimeoutStopSec=60\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def agent_config(
    stack: str,
    manifest: Mapping[str, Any],
    model_source: str,
    gateway_port: int,
    known_answer: Mapping[str, str],
    server: str = "vllm",
) -> str:
    """The guest agent's config (fw_cfg opt/tdx-vllm/agent.json) in the agent's schema
    (docs/guest-agent.md: unknown keys are errors there), canonical JSON. The host hands it to the
    TD, so the agent trusts none of it: it extends RTMR3 with the SHA-384 of the manifest's canonical
    bytes, so a host that changes the manifest (its GPU pins included) changes RTMR3 and fails
    attestation."""
    doc: dict[str, Any] = {
        "stack": stack,
        "workload": dict(manifest),
        "model": {"source": model_source},
        "knownAnswer": dict(known_answer),
        "gateway": {"port": gateway_port},
    }
    if server != "vllm":  # the dev stand-in; the agent refuses it on any other stack too
        doc["server"] = server
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n"
