"""Profiles of fake TDX GPU hosts for tests/support/hosts/nshost.py.

A profile is the hardware and firmware a host has when it is brought up: CPU, MSR values (what the
BIOS settings show as), GPUs with their VBIOS and CC modes, the OS and kernel, what apt can
install. Tests that need a variant derive one with `dataclasses.replace` or the helpers below.

MSRs (read by preflight.sh / bios_verify.sh through `rdmsr -p 0 -0 ADDR`):
  0x982  IA32_TME_ACTIVATE: bit 1 TME enabled, bits 35:32 TME-MT KeyID bits
  0x1401 IA32_SEAMRR_PHYS_MASK: bit 11 SEAM range enabled (TDX + SEAM loader)
  0x87   IA32_MKTME_KEYID_PARTITIONING: bits 63:32 TDX private KeyIDs, 31:0 MKTME KeyIDs
  0xa0   SGX_AND_MCHECK_STATUS: 0 = healthy
  0xce   MSR_PLATFORM_INFO: bit 27 set on pre-production (sample) parts
  0x503  SGX debug unlock: 0 on production platforms
  0x8b   IA32_BIOS_SIGN_ID: microcode revision in bits 63:32 (MSB set = pre-production)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

H100_VBIOS = "96.00.9F.00.01"  # firmware/gpu/h100-sxm.yaml
DCAP_APT = (
    "sgx-dcap-pccs",
    "tdx-qgs",
    "libsgx-dcap-default-qpl",
    "libsgx-dcap-ql",
    "sgx-ra-service",
    "sgx-pck-id-retrieval-tool",
)

# firmware/host-tools.yaml: what the host-tools step installs. Most profiles have them already.
HOST_TOOLS_APT = ("msr-tools", "pciutils", "python3-pip", "curl", "openssl")

BASE_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi mmx fxsr sse "
    "sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc art arch_perfmon pebs bts rep_good nopl "
    "xtopology nonstop_tsc cpuid aperfmperf tsc_known_freq pni pclmulqdq dtes64 monitor ds_cpl vmx smx est "
    "tm2 ssse3 sdbg fma cx16 xtpr pdcm pcid dca sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes "
    "xsave avx f16c rdrand lahf_lm abm 3dnowprefetch cpuid_fault epb cat_l3 cat_l2 cdp_l3 intel_ppin cdp_l2 "
    "ssbd mba ibrs ibpb stibp ibrs_enhanced tpr_shadow flexpriority ept vpid ept_ad fsgsbase tsc_adjust bmi1 "
    "hle avx2 smep bmi2 erms invpcid rtm cqm rdt_a avx512f avx512dq rdseed adx smap avx512ifma clflushopt "
    "clwb intel_pt avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves cqm_llc cqm_occup_llc "
    "cqm_mbm_total cqm_mbm_local split_lock_detect user_shstk avx_vnni avx512_bf16 wbnoinvd dtherm ida arat "
    "pln pts hfi vnmi avx512vbmi umip pku ospke waitpkg avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni "
    "avx512_bitalg tme avx512_vpopcntdq la57 rdpid bus_lock_detect cldemote movdiri movdir64b enqcmd fsrm "
    "md_clear serialize tsxldtrk pconfig arch_lbr ibt amx_bf16 avx512_fp16 amx_tile amx_int8 flush_l1d "
    "arch_capabilities"
).split()
TDX_FLAGS = BASE_FLAGS + ["sgx", "sgx_lc", "tdx_host_platform"]

# A production Emerald Rapids host with TDX enabled in BIOS (TME, TME-MT with 6 KeyID bits, SEAM
# loader, 64 TDX KeyIDs after 63 MKTME ones).
PRODUCTION_MSRS: Mapping[int, int] = {
    0x982: (0x4 << 48) | (6 << 32) | 0b11,
    0x1401: 0x000003FFFE000C00,
    0x87: (64 << 32) | 63,
    0xA0: 0,
    0xCE: 0x000C0C3BF3810C00,
    0x503: 0,
    0x8B: 0x21000283 << 32,
}


@dataclass(frozen=True)
class Gpu:
    """A PCI device of NVIDIA's: a GPU (gpu-admin-tools name, PCI id, VBIOS, CC modes, bound
    driver) or an NVSwitch (kind="nvswitch")."""

    bdf: str = "0000:b8:00.0"
    device_id: str = "2330"
    vbios: str = H100_VBIOS
    cc_mode: str = "off"
    ppcie_mode: str = "off"
    driver: str | None = None  # the driver bound to it (sysfs `driver` link): None, "vfio-pci", "nvidia"
    name: str = "H100"  # as gpu-admin-tools names it (tests/fixtures/host/gpu)
    lspci_name: str = "GH100 [H100 SXM5 80GB]"
    kind: str = "gpu"


@dataclass(frozen=True)
class HostProfile:
    name: str
    hostname: str
    cpu_vendor: str = "GenuineIntel"
    cpu_family: int = 6
    cpu_model: int = 207
    cpu_model_name: str = "INTEL(R) XEON(R) PLATINUM 8580"
    cpu_stepping: int = 2
    cpu_flags: tuple[str, ...] = tuple(TDX_FLAGS)
    ncpus: int = 4
    msrs: Mapping[int, int] = field(default_factory=lambda: dict(PRODUCTION_MSRS))
    kernel_release: str = "7.1.0-generic"
    # Which kernel's TDX lines the boots log (tdxfake.KERNEL_LOGS, samples in tests/fixtures/host/kernel).
    kernel_flavour: str = "mainline-7.1"
    os_id: str = "ubuntu"
    os_version_id: str = "24.04"
    grub_cmdline_linux_default: str = "quiet splash"
    grub_cmdline_linux: str = ""
    root_uuid: str = "5f0b6c1e-2d7a-4c39-9a51-0f7e3b8d2c11"
    tdx_module_version: str = "1.5.16"  # what the flavour's sample logs ("Module version: 1.5.16")
    tdx_failure_log: str | None = None  # a sample whose failure the boot logs instead (rbp-clobber.dmesg)
    gpus: tuple[Gpu, ...] = (Gpu(),)
    nvidia_driver: str | None = None  # NVIDIA driver version loaded on the host (gpu_cc refuses it)
    iommu: bool = True
    apt_available: tuple[str, ...] = HOST_TOOLS_APT + DCAP_APT
    preinstalled: tuple[str, ...] = HOST_TOOLS_APT  # Debian packages installed when the host comes up
    apt_lists_empty: bool = False  # a fresh image: nothing installs before `apt-get update`
    mpa_auto_registration: bool = True
    sshd_restart_delay: float = 1.0  # seconds between the simulated power-off and sshd answering again

    def __post_init__(self) -> None:
        object.__setattr__(self, "msrs", MappingProxyType(dict(self.msrs)))  # read-only, like the rest

    def __hash__(self) -> int:
        return hash(self.name)

    @property
    def grub_prefix(self) -> str:
        return f"BOOT_IMAGE=/boot/vmlinuz-{self.kernel_release} root=UUID={self.root_uuid} ro"

    def with_msrs(self, **changes: int) -> dict[int, int]:
        """msrs with changes given as m0x982=... (helper for profile variants)."""
        out = dict(self.msrs)
        out.update({int(k[1:], 16): v for k, v in changes.items()})
        return out

    def replace(self, **changes) -> HostProfile:
        return dataclasses.replace(self, **changes)


TDX_READY = HostProfile(name="tdx_ready", hostname="tdx-ready")

TDX_OFF_IN_BIOS = HostProfile(
    name="tdx_off_in_bios",
    hostname="tdx-off",
    cpu_flags=tuple(f for f in TDX_FLAGS if f != "tdx_host_platform"),
    msrs={**PRODUCTION_MSRS, 0x982: 0, 0x1401: 0},
    # already booted with the TDX arguments, so the kernel log shows the failure from the start
    grub_cmdline_linux="nohibernate kvm_intel.tdx=1 intel_iommu=on",
)

NVSWITCH = Gpu(
    bdf="0000:05:00.0",
    device_id="22a3",
    name="NVSwitch_gen3",
    lspci_name="Device 22a3",
    kind="nvswitch",
    cc_mode="off",
    ppcie_mode="off",
    driver=None,
)

# Two GPUs (bound to vfio-pci) left in the wrong modes (one in devtools, both with PPCIe on) and an NVSwitch.
GPU_WRONG_MODE = HostProfile(
    name="gpu_wrong_mode",
    hostname="gpu-wrong-mode",
    gpus=(
        Gpu(bdf="0000:b8:00.0", cc_mode="devtools", ppcie_mode="on", driver="vfio-pci"),
        Gpu(bdf="0000:ba:00.0", cc_mode="off", ppcie_mode="on", driver="vfio-pci"),
        NVSWITCH,
    ),
)

WRONG_VBIOS = HostProfile(name="wrong_vbios", hostname="wrong-vbios", gpus=(Gpu(vbios="96.00.5E.00.02"),))

NVIDIA_LOADED = HostProfile(
    name="nvidia_loaded", hostname="nvidia-loaded", nvidia_driver="550.90.07", gpus=(Gpu(driver="nvidia"),)
)

PRE_PRODUCTION = HostProfile(
    name="pre_production",
    hostname="pre-production",
    msrs={**PRODUCTION_MSRS, 0xCE: PRODUCTION_MSRS[0xCE] | (1 << 27)},
)

# A new server as it leaves the factory and the installer: BIOS at defaults (no TME, TME-MT, SGX or
# TDX, so MSR 0x87 faults and there is no sgx CPU flag), Ubuntu server without msr-tools or
# python3-pip, apt lists not yet fetched.
FRESH = HostProfile(
    name="fresh",
    hostname="fresh",
    cpu_flags=tuple(f for f in BASE_FLAGS if f != "tme"),
    msrs={k: v for k, v in {**PRODUCTION_MSRS, 0x982: 0, 0x1401: 0}.items() if k != 0x87},
    preinstalled=("pciutils", "curl", "openssl"),
    apt_lists_empty=True,
)

PROFILES = {
    p.name: p for p in (FRESH, TDX_READY, TDX_OFF_IN_BIOS, GPU_WRONG_MODE, WRONG_VBIOS, NVIDIA_LOADED, PRE_PRODUCTION)
}
