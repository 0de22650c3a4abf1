"""BiosSettings: the BIOS settings TDX needs, in the vendor table's phases (ordered by what
unlocks what: memory encryption first, TDX and SGX after it), applied over Redfish from the machine
running Pulumi (components/bmc/redfish.py, as a local command), then verified from the host's MSRs.
Hosts without BMC access (rented) get the verification only: a missing setting fails with the exact
BIOS change to ask the provider for."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi_command import local

from components.catalog.bios import VendorTable
from components.config.model import BmcConfig
from components.render.host_steps import BIOS_VERIFY_STEP, bios_verify_params, redfish_command
from components.resources.command import Connection, facts_of, host_step


@dataclass(frozen=True)
class BiosSettingsArgs:
    conn: Connection
    bmc: BmcConfig | None  # None: a rented host, verified from its MSRs only
    table: VendorTable  # the BMC vendor's table (Intel's reference table for a rented host)
    timeout_s: int  # per phase: PATCH, reset and the host back
    config_key: str  # e.g. `hosts[0].bmc`, named in the Redfish errors
    registration: str  # dcap.registration: sets the BIOS registration agent on (mpa) or off (pckid)


class BiosSettings(pulumi.ComponentResource):
    facts: pulumi.Output[Mapping[str, Any]]
    bios_version: pulumi.Output[str | None]

    def __init__(self, name: str, args: BiosSettingsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tdx-vllm:host:BiosSettings", name, {}, opts)
        bmc, table = args.bmc, args.table
        self.phases: list[local.Command] = []
        if bmc is not None:
            previous: list[pulumi.Resource] = []
            for phase in table.phase_numbers:
                cmd = local.Command(
                    f"{name}-phase{phase}",
                    create=redfish_command(bmc, phase, args.timeout_s, args.config_key, args.registration),
                    environment={
                        "TDXGPU_BMC_USERNAME": bmc.username,
                        "TDXGPU_BMC_PASSWORD": pulumi.Output.secret(bmc.password.value),
                        # A changed vendor table re-runs the phase.
                        "TDXGPU_BIOS_TABLE_SHA256": table.sha256,
                    },
                    add_previous_output_in_env=False,
                    opts=pulumi.ResourceOptions(parent=self, depends_on=previous),
                )
                self.phases.append(cmd)
                previous = [cmd]
        # The host may still be booting after the last BMC reset: dial until it answers.
        self.verify = host_step(
            f"{name}-verify",
            BIOS_VERIFY_STEP,
            args.conn,
            bios_verify_params(table),
            wait_for_boot=bmc is not None,
            timeout_s=args.timeout_s,
            opts=pulumi.ResourceOptions(parent=self, depends_on=self.phases[-1:]),
        )
        self.facts = facts_of(self.verify)
        self.bios_version = (
            facts_of(self.phases[-1]).apply(lambda f: f.get("bios_version"))
            if self.phases
            else pulumi.Output.from_input(None)
        )
        self.register_outputs({"facts": self.facts, "biosVersion": self.bios_version})
