"""GpuConfidentialMode: every GPU of the pinned SKU in the CC mode the stack asks for (`on`,
`ppcie`, or `devtools` in dev only), set with the pinned gpu-admin-tools after the VBIOS is
checked against the pin in firmware/gpu/<sku>.yaml."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

from components.catalog.gpu import gpu_admin_tools, gpu_sku
from components.config.model import GpuConfig
from components.render.host_steps import GPU_STEP, gpu_params
from components.resources.command import Connection, facts_of, host_step


@dataclass(frozen=True)
class GpuConfidentialModeArgs:
    conn: Connection
    gpu: GpuConfig


class GpuConfidentialMode(pulumi.ComponentResource):
    facts: pulumi.Output[Mapping[str, Any]]

    def __init__(self, name: str, args: GpuConfidentialModeArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tdx-vllm:host:GpuConfidentialMode", name, {}, opts)
        params = gpu_params(args.gpu, gpu_sku(args.gpu.model), gpu_admin_tools())
        self.command = host_step(
            f"{name}-mode", GPU_STEP, args.conn, params, removable=True, opts=pulumi.ResourceOptions(parent=self)
        )
        self.facts = facts_of(self.command)
        self.register_outputs({"facts": self.facts})
