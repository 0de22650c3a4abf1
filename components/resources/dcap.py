"""DcapServices: Intel DCAP on the host (PCCS with the Intel PCS API key, QPL config, QGS on vsock
4050, platform registration), verified by PCCS answering."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

from components.catalog.dcap import dcap_packages
from components.config.model import DcapConfig
from components.render.host_steps import DCAP_STEP, dcap_params
from components.resources.command import Connection, facts_of, host_step


@dataclass(frozen=True)
class DcapServicesArgs:
    conn: Connection
    dcap: DcapConfig


class DcapServices(pulumi.ComponentResource):
    facts: pulumi.Output[Mapping[str, Any]]

    def __init__(self, name: str, args: DcapServicesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tdx-vllm:host:DcapServices", name, {}, opts)
        params: dict[str, pulumi.Input[str]] = dict(dcap_params(args.dcap, dcap_packages()))
        # The API key reaches the host only inside the encrypted stdin (secret=True: no logging).
        params["TDX_PCCS_API_KEY"] = pulumi.Output.secret(args.dcap.pccs_api_key.value)
        self.command = host_step(
            f"{name}-services",
            DCAP_STEP,
            args.conn,
            params,
            secret=True,
            removable=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.facts = facts_of(self.command)
        self.register_outputs({"facts": self.facts})
