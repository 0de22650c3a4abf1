"""VerifyingProxy: `tdxattest proxy` for the stack's clients, one systemd unit per TD on the proxy host
named in `proxy.ssh`, deployed from this stack's `pins` (components/render/proxy.py).

A pin rollover runs in two phases of the same host step: `accept` (new pins, and the deployed
ones as retiring) before any TD changes, and `retire` (new pins only) after every TD reports ready.
The TrustDomains depend on the accept steps; `retire_after` makes the retire steps depend on the TDs.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi_command import local, remote

from components.config.model import VerifyingProxyConfig
from components.render.host_steps import ssh_check_command
from components.render.proxy import PROXY_STEP, Phase, ProxyInstance, instance_url, proxy_params
from components.resources.command import Connection, facts_of, host_step, stage_scripts


@dataclass(frozen=True)
class VerifyingProxyArgs:
    proxy: VerifyingProxyConfig
    instances: tuple[ProxyInstance, ...]
    pins: Mapping[str, Any]  # the `pins` output


class VerifyingProxy(pulumi.ComponentResource):
    urls: pulumi.Output[dict[str, str]]  # TD -> the proxy's URL for it (the `proxies` output)
    accepted: list[remote.Command]  # the accept phase, one step per TD: the TDs run after these
    ready: pulumi.Output[bool]  # every unit on the current pins only (set by `retire_after`)

    def __init__(self, name: str, args: VerifyingProxyArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tdx-vllm:proxy:VerifyingProxy", name, {}, opts)
        self._name, self._args = name, args
        # The tdxattest the proxy host must run: this checkout's (the program imports the same package).
        self._version: str = importlib.metadata.version("tdxattest")
        ssh = args.proxy.ssh
        assert ssh is not None, "a proxy host needs proxy.ssh (proxy.kubernetes: KubernetesVerifyingProxy)"
        self.ssh_check = local.Command(
            f"{name}-ssh-check",
            create=ssh_check_command(ssh, "proxy.ssh.hostKey"),
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(parent=self),
        )
        # Like a GPU host: one handshake first, then the step scripts staged once.
        self._conn = stage_scripts(
            f"{name}-scripts",
            Connection(ssh),
            pulumi.ResourceOptions(parent=self, depends_on=[self.ssh_check]),
        )
        self.accepted = [self._step(inst, "accept", []) for inst in args.instances]
        self.urls = pulumi.Output.from_input({i.td: instance_url(args.proxy, i) for i in args.instances})

    def retire_after(self, resources: Sequence[pulumi.Resource]) -> list[remote.Command]:
        """The retire phase, once `resources` (every TD's wait) are done; registers the outputs."""
        retired = [self._step(inst, "retire", [*self.accepted, *resources]) for inst in self._args.instances]
        facts = [facts_of(c) for c in retired]
        self.ready = pulumi.Output.all(*facts).apply(lambda fs: all(f.get("ok") is True for f in fs))
        self.register_outputs({"urls": self.urls, "ready": self.ready})
        return retired

    def _step(self, inst: ProxyInstance, phase: Phase, after: Sequence[pulumi.Resource]) -> remote.Command:
        args = self._args
        params = proxy_params(args.proxy, inst, args.pins, phase, self._version)
        tls = args.proxy.tls is not None
        values: dict[str, pulumi.Input[str]] = dict(params)
        if tls:
            values["TDX_PROXY_TLS_KEY"] = pulumi.Output.secret(params["TDX_PROXY_TLS_KEY"])
        return host_step(
            f"{self._name}-{inst.td}-{phase}",
            PROXY_STEP,
            self._conn,
            values,
            secret=tls,  # the TLS key travels in stdin: stored encrypted, no output shown
            removable=phase == "accept",  # one removal per unit: `pulumi destroy` of the accept step
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(after)),
        )
