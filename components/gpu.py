"""GpuConfidentialMode: every GPU of the pinned SKU in the CC mode the stack asks for (`on`,
`ppcie`, or `devtools` in dev only), set with the pinned gpu-admin-tools after the VBIOS is
checked against the pin in firmware/gpu/<sku>.yaml."""

from __future__ import annotations

from typing import Any, Mapping

import pulumi

from .config import GpuConfig
from .firmware import GpuAdminTools, GpuSku, gpu_admin_tools, gpu_sku
from .remote_step import Connection, facts_of, host_step
from .steps import Step

GPU_STEP = Step("gpu-cc", "gpu_cc.sh", helpers=("vbios_version.py",))


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


class GpuConfidentialMode(pulumi.ComponentResource):
    facts: pulumi.Output[Mapping[str, Any]]

    def __init__(self, name: str, conn: Connection, gpu: GpuConfig, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tdx-vllm:host:GpuConfidentialMode", name, {}, opts)
        params = gpu_params(gpu, gpu_sku(gpu.model), gpu_admin_tools())
        self.command = host_step(
            f"{name}-mode", GPU_STEP, conn, params, removable=True, opts=pulumi.ResourceOptions(parent=self)
        )
        self.facts = facts_of(self.command)
        self.register_outputs({"facts": self.facts})
