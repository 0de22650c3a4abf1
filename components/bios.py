"""BiosSettings: the BIOS settings TDX needs, in two phases (TME/TME-MT/SGX first, then TDX/SEAM
loader/key split), applied over Redfish from the machine running Pulumi, then verified from the
host's MSRs. Hosts without BMC access (rented) get the verification only: a missing setting fails
with the exact BIOS change to ask the provider for."""

from __future__ import annotations

import shlex
from typing import Any, Mapping

import pulumi
from pulumi_command import local

from .bios_tables import VendorTable, load_vendor_table
from .config import BmcConfig
from .firmware import file_digest
from .paths import FIRMWARE_DIR, REPO_ROOT
from .remote_step import Connection, facts_of, host_step
from .steps import Step

BIOS_VERIFY_STEP = Step("bios-verify", "bios_verify.sh", mode="check")
PHASES = (1, 2)

# bios_verify.sh names each check; these are the vendor-table settings a provider must change.
_ASK = {
    "TME": ("tme", "tme_mt"),
    "TME_MT": ("tme_mt",),
    "SGX": ("sgx",),
    "TDX": ("tdx",),
    "SEAM_LOADER": ("seam_loader",),
    "KEY_SPLIT": ("key_split",),
}


def bios_verify_params(table: VendorTable) -> dict[str, str]:
    """`TDX_BIOS_ASK_<CHECK>` = the BIOS change (display name = value) that fixes each MSR check."""
    by_setting = {s.setting: s for settings in table.phases.values() for s in settings}
    params = {"TDX_BIOS_VENDOR": table.vendor}
    for check, candidates in _ASK.items():
        found = next((by_setting[c] for c in candidates if c in by_setting), None)
        if found is not None:
            params[f"TDX_BIOS_ASK_{check}"] = f"{found.display_name} = {found.value}"
    return params


def project_python() -> str:
    """The interpreter for project CLIs run by local.Command, relative so state is portable."""
    return ".venv/bin/python" if (REPO_ROOT / ".venv" / "bin" / "python").exists() else "python3"


def redfish_command(bmc: BmcConfig, phase: int, timeout_s: int, config_key: str) -> str:
    args = [
        "-m",
        "components.redfish",
        "apply",
        "--vendor",
        bmc.vendor,
        "--phase",
        str(phase),
        "--endpoint",
        bmc.endpoint,
        "--timeout",
        str(timeout_s),
        "--config-key",
        config_key,
    ]
    if bmc.system:
        args += ["--system", bmc.system]
    if bmc.tls_fingerprint:
        args += ["--tls-fingerprint", bmc.tls_fingerprint]
    elif bmc.ca_file:
        args += ["--ca-file", bmc.ca_file]
    return " ".join([project_python(), *map(shlex.quote, args)])


class BiosSettings(pulumi.ComponentResource):
    facts: pulumi.Output[Mapping[str, Any]]

    def __init__(
        self,
        name: str,
        conn: Connection,
        bmc: BmcConfig | None,
        timeout_s: int,
        config_key: str,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("tdx-vllm:host:BiosSettings", name, {}, opts)
        vendor = bmc.vendor if bmc else "intel"
        table = load_vendor_table(vendor)
        self.phases: list[local.Command] = []
        if bmc is not None:
            digest = file_digest(FIRMWARE_DIR / "bios" / f"{vendor}.yaml")
            previous: list[pulumi.Resource] = []
            for phase in PHASES:
                cmd = local.Command(
                    f"{name}-phase{phase}",
                    create=redfish_command(bmc, phase, timeout_s, config_key),
                    environment={
                        "TDXGPU_BMC_USERNAME": pulumi.Output.secret(bmc.username.value),
                        "TDXGPU_BMC_PASSWORD": pulumi.Output.secret(bmc.password.value),
                        # A changed vendor table re-runs the phase.
                        "TDXGPU_BIOS_TABLE_SHA256": digest,
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
            conn,
            bios_verify_params(table),
            wait_for_boot=bmc is not None,
            timeout_s=timeout_s,
            opts=pulumi.ResourceOptions(parent=self, depends_on=self.phases[-1:]),
        )
        self.facts = facts_of(self.verify)
        self.bios_version = (
            facts_of(self.phases[-1]).apply(lambda f: f.get("bios_version"))
            if self.phases
            else pulumi.Output.from_input(None)
        )
        self.register_outputs({"facts": self.facts, "biosVersion": self.bios_version})
