"""TdxHost: one host from "reachable over SSH" to "ready for a Trust Domain":
Preflight -> BiosSettings -> KernelSettings -> (GpuConfidentialMode, DcapServices)."""

from __future__ import annotations

from typing import Any, Mapping

import pulumi

from .bios import BiosSettings
from .bios_tables import load_vendor_table
from .config import HostConfig, StackConfig
from .dcap import DcapServices
from .gpu import GpuConfidentialMode
from .kernel import KernelSettings
from .preflight import Preflight
from .remote_step import Connection


def summarize(
    preflight: Mapping[str, Any],
    bios: Mapping[str, Any],
    bios_version: str | None,
    kernel: Mapping[str, Any],
    gpu: Mapping[str, Any] | None,
    dcap: Mapping[str, Any],
) -> dict[str, Any]:
    """The per-host facts exported as a stack output (observed values, not the desired ones)."""
    steps = [preflight, bios, kernel, dcap] + ([gpu] if gpu is not None else [])
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
        "pccs": {"url": dcap.get("pccs_url"), "httpStatus": dcap.get("pccs_http_status")},
        "registration": dcap.get("registration_status"),
        # Every step's verify passed: a failed one fails `pulumi up` before outputs are written.
        "ready": all(s.get("ok") is True for s in steps),
    }


class TdxHost(pulumi.ComponentResource):
    facts: pulumi.Output[dict[str, Any]]
    ready: pulumi.Output[bool]

    def __init__(self, host: HostConfig, stack: StackConfig, opts: pulumi.ResourceOptions | None = None):
        name = host.name
        super().__init__("tdx-vllm:host:TdxHost", name, {}, opts)
        conn = Connection(host.ssh)
        vendor = host.bmc.vendor if host.bmc else "intel"
        tee_io_bios = tuple(s.attribute for s in load_vendor_table(vendor).tee_io)
        child = pulumi.ResourceOptions(parent=self)

        self.preflight = Preflight(f"{name}-preflight", conn, host.gpu, stack.tee_io, tee_io_bios, opts=child)
        self.bios = BiosSettings(
            f"{name}-bios",
            conn,
            host.bmc,
            stack.reboot_timeout_s,
            f"hosts[{stack.hosts.index(host)}].bmc",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.preflight]),
        )
        self.kernel = KernelSettings(
            f"{name}-kernel",
            conn,
            stack.platform,
            stack.reboot_timeout_s,
            stack.restore_on_destroy,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.bios]),
        )
        after_kernel = pulumi.ResourceOptions(parent=self, depends_on=[self.kernel])
        self.gpu = GpuConfidentialMode(f"{name}-gpu", conn, host.gpu, opts=after_kernel) if host.gpu else None
        self.dcap = DcapServices(f"{name}-dcap", conn, stack.dcap, opts=after_kernel)

        self.facts = pulumi.Output.all(
            self.preflight.facts,
            self.bios.facts,
            self.bios.bios_version,
            self.kernel.facts,
            self.gpu.facts if self.gpu else None,
            self.dcap.facts,
        ).apply(lambda a: summarize(*a))
        self.ready = self.facts.apply(lambda f: bool(f["ready"]))
        self.register_outputs({"facts": self.facts, "ready": self.ready})
