"""DcapServices: Intel DCAP on the host (PCCS with the Intel PCS API key, QPL config, QGS on vsock
4050, platform registration), verified by PCCS answering."""

from __future__ import annotations

from typing import Any, Mapping

import pulumi

from .config import DcapConfig
from .firmware import DcapPackages, dcap_packages
from .remote_step import Connection, facts_of, host_step
from .steps import Step

DCAP_STEP = Step("dcap", "dcap.sh", helpers=("json_config.py",))


def dcap_params(dcap: DcapConfig, packages: DcapPackages) -> dict[str, str]:
    """Desired values, without the API key (added as a secret by the component)."""
    local = dcap.pccs_url is None
    roles = ["qgs", "qpl"] + (["pccs"] if local else [])
    if dcap.registration in ("mpa", "pckid"):
        roles.append(dcap.registration)
    return {
        "TDX_PCCS_LOCAL": "true" if local else "false",
        "TDX_PCCS_PORT": str(dcap.pccs_port),
        "TDX_PCCS_URL": dcap.pccs_url or f"https://localhost:{dcap.pccs_port}/sgx/certification/v4/",
        "TDX_USE_SECURE_CERT": "true" if dcap.use_secure_cert else "false",
        "TDX_QGS_PORT": str(dcap.qgs_port),
        "TDX_REGISTRATION": dcap.registration,
        "TDX_PACKAGES": " ".join(packages.packages[r] for r in roles if r in packages.packages),
        "TDX_SERVICE_PCCS": packages.services["pccs"],
        "TDX_SERVICE_QGS": packages.services["qgs"],
    }


class DcapServices(pulumi.ComponentResource):
    facts: pulumi.Output[Mapping[str, Any]]

    def __init__(self, name: str, conn: Connection, dcap: DcapConfig, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tdx-vllm:host:DcapServices", name, {}, opts)
        params: dict[str, pulumi.Input[str]] = dict(dcap_params(dcap, dcap_packages()))
        params["TDX_PCCS_API_KEY"] = pulumi.Output.secret(dcap.pccs_api_key.value)
        self.command = host_step(
            f"{name}-services",
            DCAP_STEP,
            conn,
            params,
            secret=True,
            removable=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.facts = facts_of(self.command)
        self.register_outputs({"facts": self.facts})
