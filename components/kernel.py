"""KernelSettings: the TDX kernel command line (GRUB drop-in), a reboot when the running kernel
lacks it, and a wait that checks KVM's TDX support initialised (and the TDX module pin)."""

from __future__ import annotations

from typing import Any, Mapping

import pulumi

from .config import PlatformConfig
from .remote_step import Connection, facts_of, host_step, reboot_and_wait
from .steps import Step

KERNEL_STEP = Step("kernel", "kernel.sh")


def kernel_params(platform: PlatformConfig, restore_on_destroy: bool = False) -> dict[str, str]:
    return {
        "TDX_KERNEL_ARGS": " ".join(platform.kernel_args),
        "TDX_MODULE_VERSION": platform.tdx_module or "",
        "TDX_RESTORE_ON_DESTROY": "true" if restore_on_destroy else "false",
    }


class KernelSettings(pulumi.ComponentResource):
    facts: pulumi.Output[Mapping[str, Any]]

    def __init__(
        self,
        name: str,
        conn: Connection,
        platform: PlatformConfig,
        timeout_s: int,
        restore_on_destroy: bool,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("tdx-vllm:host:KernelSettings", name, {}, opts)
        params = kernel_params(platform, restore_on_destroy)
        self.configure = host_step(
            f"{name}-cmdline", KERNEL_STEP, conn, params, removable=True, opts=pulumi.ResourceOptions(parent=self)
        )
        boot = reboot_and_wait(
            name, KERNEL_STEP, conn, params, after=[self.configure], parent=self, timeout_s=timeout_s
        )
        self.reboot, self.wait = boot.reboot, boot.wait
        self.facts = facts_of(self.wait)
        self.register_outputs({"facts": self.facts})
