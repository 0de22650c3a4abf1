"""HostTools: the Debian packages the later host steps call (msr-tools, pciutils, python3-pip, curl,
openssl; firmware/host-tools.yaml), installed before preflight so a fresh server works."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

from components.render.host_steps import HOST_TOOLS_STEP, host_tools_params
from components.resources.command import Connection, facts_of, host_step


@dataclass(frozen=True)
class HostToolsArgs:
    conn: Connection
    packages: tuple[str, ...]  # catalog.host_tools.host_tool_packages(): "name" or "name=version"


class HostTools(pulumi.ComponentResource):
    facts: pulumi.Output[Mapping[str, Any]]

    def __init__(self, name: str, args: HostToolsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tdx-vllm:host:HostTools", name, {}, opts)
        self.command = host_step(
            f"{name}-install",
            HOST_TOOLS_STEP,
            args.conn,
            host_tools_params(args.packages),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.facts = facts_of(self.command)
        self.register_outputs({"facts": self.facts})
