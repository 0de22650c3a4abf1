"""Preflight: read-only facts about a host, and a refusal with the fix when the hardware can
never run a confidential GPU TD (non-TDX CPU, pre-production silicon, missing GPUs, TEE-IO asked
for where the platform lacks it)."""

from __future__ import annotations

from typing import Any, Mapping

import pulumi

from .config import GpuConfig
from .firmware import gpu_sku
from .remote_step import Connection, facts_of, host_step
from .steps import Step

PREFLIGHT_STEP = Step("preflight", "preflight.sh", mode="check")


def preflight_params(gpu: GpuConfig | None, tee_io: bool, tee_io_bios: tuple[str, ...]) -> dict[str, str]:
    sku = gpu_sku(gpu.model) if gpu else None
    return {
        "TDX_GPU_COUNT": str(gpu.count if gpu else 0),
        "TDX_GPU_DEVICE_IDS": " ".join(sku.pci_device_ids) if sku else "",
        "TDX_TEE_IO": "true" if tee_io else "false",
        "TDX_TEE_IO_BIOS": " ".join(tee_io_bios),
    }


class Preflight(pulumi.ComponentResource):
    facts: pulumi.Output[Mapping[str, Any]]

    def __init__(
        self,
        name: str,
        conn: Connection,
        gpu: GpuConfig | None,
        tee_io: bool,
        tee_io_bios: tuple[str, ...],
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("tdx-vllm:host:Preflight", name, {}, opts)
        self.command = host_step(
            f"{name}-check",
            PREFLIGHT_STEP,
            conn,
            preflight_params(gpu, tee_io, tee_io_bios),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.facts = facts_of(self.command)
        self.register_outputs({"facts": self.facts})
