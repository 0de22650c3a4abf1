"""KernelSettings: the TDX kernel command line (GRUB drop-in), a reboot when the running kernel
lacks it, and a wait that checks KVM's TDX support initialised (and the TDX module pin)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

from components.config.model import PlatformConfig
from components.render.host_steps import KERNEL_STEP, kernel_params
from components.resources.command import Connection, facts_of, host_step, reboot_and_wait


@dataclass(frozen=True)
class KernelSettingsArgs:
    conn: Connection
    platform: PlatformConfig
    reboot_timeout_s: int
    restore_on_destroy: bool


class KernelSettings(pulumi.ComponentResource):
    facts: pulumi.Output[Mapping[str, Any]]

    def __init__(self, name: str, args: KernelSettingsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tdx-vllm:host:KernelSettings", name, {}, opts)
        params = kernel_params(args.platform, args.restore_on_destroy)
        self.configure = host_step(
            f"{name}-cmdline", KERNEL_STEP, args.conn, params, removable=True, opts=pulumi.ResourceOptions(parent=self)
        )
        boot = reboot_and_wait(
            name,
            KERNEL_STEP,
            args.conn,
            params,
            after=[self.configure],
            parent=self,
            timeout_s=args.reboot_timeout_s,
        )
        self.reboot, self.wait = boot.reboot, boot.wait
        self.facts = facts_of(self.wait)
        self.register_outputs({"facts": self.facts})
