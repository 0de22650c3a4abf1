"""Preflight: read-only facts about a host, and a refusal with the fix when the hardware can
never run a confidential GPU TD (non-TDX CPU, pre-production silicon, missing GPUs, TEE-IO asked
for where the platform lacks it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

from components.catalog.gpu import gpu_sku
from components.config.model import GpuConfig
from components.render.host_steps import PREFLIGHT_STEP, preflight_params
from components.resources.command import Connection, facts_of, host_step


@dataclass(frozen=True)
class PreflightArgs:
    conn: Connection
    gpu: GpuConfig | None
    tee_io: bool
    tee_io_bios: tuple[str, ...]  # the vendor table's TEE-IO BIOS attributes
    os: str = ""  # platform.os, e.g. ubuntu-26.04: the host must run it


class Preflight(pulumi.ComponentResource):
    facts: pulumi.Output[Mapping[str, Any]]

    def __init__(self, name: str, args: PreflightArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tdx-vllm:host:Preflight", name, {}, opts)
        sku = gpu_sku(args.gpu.model) if args.gpu else None
        params = preflight_params(args.gpu, sku, args.tee_io, args.tee_io_bios, args.os)
        self.command = host_step(
            f"{name}-check", PREFLIGHT_STEP, args.conn, params, opts=pulumi.ResourceOptions(parent=self)
        )
        self.facts = facts_of(self.command)
        self.register_outputs({"facts": self.facts})
