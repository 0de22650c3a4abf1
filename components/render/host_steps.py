"""What each host step runs: its script (components/scripts/host/) and its desired values, rendered
from the typed config and the catalog's pins. Pure; the ComponentResources (components/resources/)
and the harness tests both call these, so the harness runs exactly what `pulumi up` runs."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from components.catalog.bios import VendorTable, load_vendor_table
from components.catalog.dcap import DcapPackages, dcap_packages
from components.catalog.gpu import GpuAdminTools, GpuSku, gpu_admin_tools, gpu_sku
from components.catalog.host_tools import host_tool_packages
from components.config.model import (
    BmcConfig,
    DcapConfig,
    GpuConfig,
    HostConfig,
    PlatformConfig,
    SshConfig,
    StackConfig,
)
from components.paths import REPO_ROOT
from components.render.steps import Step

HOST_TOOLS_STEP = Step("host-tools", "host_tools.sh")
PREFLIGHT_STEP = Step("preflight", "preflight.sh", mode="check")
BIOS_VERIFY_STEP = Step("bios-verify", "bios_verify.sh", mode="check")
KERNEL_STEP = Step("kernel", "kernel.sh")
GPU_STEP = Step("gpu-cc", "gpu_cc.sh", helpers=("vbios_version.py",))
DCAP_STEP = Step("dcap", "dcap.sh", helpers=("json_config.py",))


def host_tools_params(packages: tuple[str, ...]) -> dict[str, str]:
    """`packages`: catalog.host_tools.host_tool_packages()."""
    return {"TDX_PACKAGES": " ".join(packages)}


def preflight_params(
    gpu: GpuConfig | None, sku: GpuSku | None, tee_io: bool, tee_io_bios: tuple[str, ...], os: str = ""
) -> dict[str, str]:
    """`sku`: the pins of `gpu.model` (catalog.gpu.gpu_sku); `os`: `platform.os` (ubuntu-26.04)."""
    return {
        "TDX_OS": os,
        "TDX_GPU_COUNT": str(gpu.count if gpu else 0),
        "TDX_GPU_DEVICE_IDS": " ".join(sku.pci_device_ids) if sku else "",
        "TDX_TEE_IO": "true" if tee_io else "false",
        "TDX_TEE_IO_BIOS": " ".join(tee_io_bios),
    }


# bios_verify.sh names each check; these are the vendor-table settings a provider must change.
_ASK = {
    "TME": ("tme", "tme_mt"),
    "TME_MT": ("tme_mt",),
    "SGX": ("sgx",),
    "TDX": ("tdx",),
    "SEAM_LOADER": ("seam_loader",),
    "KEY_SPLIT": ("key_split",),
}


def bios_verify_params(table: VendorTable) -> dict[str, str]:
    """`TDX_BIOS_ASK_<CHECK>` = the BIOS change (display name = value) that fixes each MSR check."""
    by_setting = {s.setting: s for settings in table.phases.values() for s in settings}
    params = {"TDX_BIOS_VENDOR": table.vendor}
    for check, candidates in _ASK.items():
        found = next((by_setting[c] for c in candidates if c in by_setting), None)
        if found is not None:
            params[f"TDX_BIOS_ASK_{check}"] = f"{found.display_name} = {found.value}"
    return params


def project_python() -> str:
    """The interpreter for project CLIs run by local.Command, relative so state is portable."""
    return ".venv/bin/python" if (REPO_ROOT / ".venv" / "bin" / "python").exists() else "python3"


def ssh_check_command(ssh: SshConfig, key_path: str) -> str:
    """The first-contact probe (components/probe/ssh.py): the pinned host key, from this machine."""
    args = ["-m", "components", "ssh-check", "--address", ssh.address, "--port", str(ssh.port)]
    args += ["--host-key", ssh.host_key, "--key-path", key_path]
    return " ".join([project_python(), *map(shlex.quote, args)])


def redfish_command(bmc: BmcConfig, phase: int, timeout_s: int, config_key: str, registration: str) -> str:
    args = [
        "-m",
        "components.bmc.redfish",
        "apply",
        "--vendor",
        bmc.vendor,
        "--phase",
        str(phase),
        "--registration",
        registration,
        "--endpoint",
        bmc.endpoint,
        "--timeout",
        str(timeout_s),
        "--config-key",
        config_key,
    ]
    if bmc.system:
        args += ["--system", bmc.system]
    if bmc.tls_fingerprint:
        args += ["--tls-fingerprint", bmc.tls_fingerprint]
    elif bmc.ca_file:
        args += ["--ca-file", bmc.ca_file]
    return " ".join([project_python(), *map(shlex.quote, args)])


def kernel_params(platform: PlatformConfig, restore_on_destroy: bool = False) -> dict[str, str]:
    return {
        "TDX_KERNEL_ARGS": " ".join(platform.kernel_args),
        "TDX_MODULE_VERSIONS": " ".join(m.version for m in platform.tdx_modules),
        "TDX_MODULE_BUILDS": " ".join(f"{m.version}={m.build}" for m in platform.tdx_modules if m.build is not None),
        "TDX_RESTORE_ON_DESTROY": "true" if restore_on_destroy else "false",
    }


def gpu_params(gpu: GpuConfig, sku: GpuSku, tools: GpuAdminTools) -> dict[str, str]:
    return {
        "TDX_GPU_MODE": gpu.mode,
        "TDX_GPU_COUNT": str(gpu.count),
        "TDX_GPU_DEVICE_IDS": " ".join(sku.pci_device_ids),
        "TDX_GPU_VBIOS": sku.vbios,
        "TDX_GPU_DRIVER": sku.driver,
        "TDX_TOOLS_PACKAGE": tools.package,
        "TDX_TOOLS_VERSION": tools.version,
        "TDX_TOOLS_WHEEL": tools.wheel,
        "TDX_TOOLS_SHA256": tools.sha256,
    }


def dcap_params(dcap: DcapConfig, packages: DcapPackages) -> dict[str, str]:
    """Desired values, without the API key (added as a secret by the component)."""
    local = dcap.pccs_url is None
    roles = ["qgs", "qpl"] + (["pccs"] if local else [])
    if dcap.registration in ("mpa", "pckid"):
        roles.append(dcap.registration)
    return {
        "TDX_PCCS_LOCAL": "true" if local else "false",
        "TDX_PCCS_PORT": str(dcap.pccs_port),
        "TDX_PCCS_URL": dcap.pccs_url or f"https://localhost:{dcap.pccs_port}/sgx/certification/v4/",
        "TDX_USE_SECURE_CERT": "true" if dcap.use_secure_cert else "false",
        "TDX_QGS_PORT": str(dcap.qgs_port),
        "TDX_REGISTRATION": dcap.registration,
        "TDX_PACKAGES": " ".join(packages.packages[r] for r in roles if r in packages.packages),
        "TDX_SERVICE_PCCS": packages.services["pccs"],
        "TDX_SERVICE_QGS": packages.services["qgs"],
        "TDX_APT_URI": packages.apt.uri if packages.apt else "",
        "TDX_APT_COMPONENTS": packages.apt.components if packages.apt else "",
        "TDX_APT_KEY_URL": packages.apt.key_url if packages.apt else "",
        "TDX_APT_KEY_SHA256": packages.apt.key_sha256 if packages.apt else "",
    }


def summarize(
    tools: Mapping[str, Any],
    preflight: Mapping[str, Any],
    bios: Mapping[str, Any],
    bios_version: str | None,
    kernel: Mapping[str, Any],
    gpu: Mapping[str, Any] | None,
    dcap: Mapping[str, Any],
) -> dict[str, Any]:
    """The per-host facts exported as a stack output (observed values, not the desired ones)."""
    steps = [tools, preflight, bios, kernel, dcap] + ([gpu] if gpu is not None else [])
    return {
        "cpu": preflight.get("cpu_model_name"),
        "cpuGeneration": preflight.get("cpu_generation"),
        "productionSilicon": preflight.get("production_silicon"),
        "os": preflight.get("os"),
        "kernel": preflight.get("kernel"),
        "kernelCmdline": kernel.get("cmdline"),
        "tdxModuleVersion": kernel.get("tdx_module_version") or None,
        "biosVersion": bios_version,
        "tdxPrivateKeyIds": bios.get("tdx_private_keyids"),
        "teeIo": (preflight.get("tee_io") or {}).get("enabled", False),
        "gpus": [
            {"bdf": g.get("bdf"), "vbios": g.get("vbios"), "ccMode": g.get("cc_mode"), "ppcieMode": g.get("ppcie_mode")}
            for g in (gpu or {}).get("gpus", [])
        ],
        "gpuAdminTools": (gpu or {}).get("tools_version"),
        "hostPackages": tools.get("packages"),
        "pccs": {"url": dcap.get("pccs_url"), "httpStatus": dcap.get("pccs_http_status")},
        "registration": dcap.get("registration_status"),
        # Every step's verify passed: a failed one fails `pulumi up` before outputs are written.
        "ready": all(s.get("ok") is True for s in steps),
    }


@dataclass(frozen=True)
class HostCheck:
    """One host step as `python -m components status` reads it: the step, the name of the Pulumi
    resource that runs it (for `pulumi up --target`), and the desired values `pulumi up` gives it."""

    step: Step
    resource: str
    params: Mapping[str, str] = field(repr=False)  # the PCCS API key is among them: never printed


def host_checks(stack: StackConfig, host: HostConfig) -> tuple[HostCheck, ...]:
    """The read-only checks of `host`'s steps, in the order `pulumi up` runs them, with the same
    params functions the components use (components/resources/), so `status` judges the host
    against exactly what `up` would apply."""
    if stack.dcap is None:
        return ()
    name = host.name
    table = load_vendor_table(host.bmc.vendor if host.bmc else "intel")
    tee_io_bios = tuple(s.attribute for s in table.tee_io)
    sku = gpu_sku(host.gpu.model) if host.gpu else None
    checks = [
        HostCheck(HOST_TOOLS_STEP, f"{name}-tools-install", host_tools_params(host_tool_packages())),
        HostCheck(
            PREFLIGHT_STEP,
            f"{name}-preflight-check",
            preflight_params(host.gpu, sku, stack.tee_io, tee_io_bios, stack.platform.os),
        ),
        HostCheck(BIOS_VERIFY_STEP, f"{name}-bios-verify", bios_verify_params(table)),
        HostCheck(KERNEL_STEP, f"{name}-kernel-cmdline", kernel_params(stack.platform, stack.restore_on_destroy)),
    ]
    if host.gpu is not None and sku is not None:
        checks.append(HostCheck(GPU_STEP, f"{name}-gpu-mode", gpu_params(host.gpu, sku, gpu_admin_tools())))
    dcap = {**dcap_params(stack.dcap, dcap_packages()), "TDX_PCCS_API_KEY": stack.dcap.pccs_api_key.value}
    checks.append(HostCheck(DCAP_STEP, f"{name}-dcap-services", dcap))
    return tuple(checks)
