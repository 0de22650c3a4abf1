"""TdxHost: one host from "reachable over SSH" to "ready for a Trust Domain":
ssh-check -> HostTools -> Preflight -> BiosSettings -> KernelSettings -> (GpuConfidentialMode, DcapServices)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi_command import local

from components.catalog.bios import load_vendor_table
from components.catalog.host_tools import host_tool_packages
from components.config.model import HostConfig, StackConfig
from components.render.host_steps import ssh_check_command, summarize
from components.resources.bios import BiosSettings, BiosSettingsArgs
from components.resources.command import Connection, stage_scripts
from components.resources.dcap import DcapServices, DcapServicesArgs
from components.resources.gpu import GpuConfidentialMode, GpuConfidentialModeArgs
from components.resources.host_tools import HostTools, HostToolsArgs
from components.resources.kernel import KernelSettings, KernelSettingsArgs
from components.resources.preflight import Preflight, PreflightArgs


@dataclass(frozen=True)
class TdxHostArgs:
    host: HostConfig
    stack: StackConfig  # the stack-wide settings: platform, DCAP, TEE-IO, reboot timeout


class TdxHost(pulumi.ComponentResource):
    facts: pulumi.Output[dict[str, Any]]
    ready: pulumi.Output[bool]

    def __init__(self, name: str, args: TdxHostArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tdx-vllm:host:TdxHost", name, {}, opts)
        host, stack = args.host, args.stack
        if stack.dcap is None:
            raise ValueError(f"{name}: a host needs the stack's `dcap:` block")
        conn = Connection(host.ssh)
        table = load_vendor_table(host.bmc.vendor if host.bmc else "intel")
        tee_io_bios = tuple(s.attribute for s in table.tee_io)
        child = pulumi.ResourceOptions(parent=self)

        # One handshake from here first: a wrong pinned key or a closed port fails at once, with the
        # fix, instead of after the provider's dial retries (components/probe/ssh.py).
        self.ssh_check = local.Command(
            f"{name}-ssh-check",
            create=ssh_check_command(host.ssh, f"hosts[{stack.hosts.index(host)}].ssh.hostKey"),
            add_previous_output_in_env=False,
            opts=child,
        )
        # The host step scripts, staged once: every step's stdin names its files by digest.
        conn = stage_scripts(f"{name}-scripts", conn, pulumi.ResourceOptions(parent=self, depends_on=[self.ssh_check]))
        self.tools = HostTools(
            f"{name}-tools",
            HostToolsArgs(conn, host_tool_packages()),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.ssh_check]),
        )
        self.preflight = Preflight(
            f"{name}-preflight",
            PreflightArgs(conn, host.gpu, stack.tee_io, tee_io_bios, stack.platform.os),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.tools]),
        )
        self.bios = BiosSettings(
            f"{name}-bios",
            BiosSettingsArgs(
                conn,
                host.bmc,
                table,
                stack.reboot_timeout_s,
                f"hosts[{stack.hosts.index(host)}].bmc",
                stack.dcap.registration,
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.preflight]),
        )
        self.kernel = KernelSettings(
            f"{name}-kernel",
            KernelSettingsArgs(conn, stack.platform, stack.reboot_timeout_s, stack.restore_on_destroy),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.bios]),
        )
        after_kernel = pulumi.ResourceOptions(parent=self, depends_on=[self.kernel])
        self.gpu = (
            GpuConfidentialMode(f"{name}-gpu", GpuConfidentialModeArgs(conn, host.gpu), opts=after_kernel)
            if host.gpu
            else None
        )
        self.dcap = DcapServices(f"{name}-dcap", DcapServicesArgs(conn, stack.dcap), opts=after_kernel)

        self.facts = pulumi.Output.all(
            self.tools.facts,
            self.preflight.facts,
            self.bios.facts,
            self.bios.bios_version,
            self.kernel.facts,
            self.gpu.facts if self.gpu else None,
            self.dcap.facts,
        ).apply(lambda a: summarize(*a))
        self.ready = self.facts.apply(lambda f: bool(f["ready"]))
        self.register_outputs({"facts": self.facts, "ready": self.ready})
