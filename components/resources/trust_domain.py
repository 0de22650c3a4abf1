"""TrustDomain: one attested vLLM TD per host, after the host is ready (kernel, GPU CC mode, DCAP).

Three remote steps (components/scripts/host/td_*.sh, check/apply/verify like every host step; their
values are rendered by components/render/trust_domain.py):

  td-stage   the pinned TD boot artifacts (TDVF, kernel, initrd of the TD boot manifest) under
             /var/lib/tdx-vllm/td/<host>/, fetched from `workload.td.artifactSource` and checked
             against their sha256 ON THE HOST (a wrong file is refused, naming it, both digests);
  td-launch  the guest agent's config and the systemd unit `tdx-vllm-td-<host>.service` running the
             rendered QEMU command (components/render/td_definition.py), GPUs bound to vfio-pci,
             enabled and started. Any change of its input (a pinned artifact, the manifest, the unit)
             REPLACES it: the old TD is stopped first (delete_before_replace), then the new one starts;
  td-wait    read-only: waits (bounded) until the guest agent reports `ready` on the serial console
             with the expected manifest digest and RTMR3, or fails with the agent's refusal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi

from components.catalog.dcap import dcap_packages
from components.config.model import HostConfig, StackConfig, WorkloadConfig
from components.render.td_definition import DEFAULT_QEMU
from components.render.trust_domain import (
    LAUNCH_STEP,
    STAGE_STEP,
    WAIT_STEP,
    definition,
    endpoint_url,
    launch_params,
    select_gpus,
    stage_params,
    wait_params,
)
from components.resources.command import Connection, facts_of, host_step
from tdxattest.core.workload import WorkloadManifest

STAGE_TIMEOUT_S = 1800


@dataclass(frozen=True)
class TrustDomainArgs:
    stack: str
    host: HostConfig
    workload: WorkloadConfig
    manifest: WorkloadManifest
    gpu_count: int
    preflight_facts: pulumi.Input[Mapping[str, Any]]  # GPUs come from the preflight facts
    qgs_port: int = 4050
    qgs_service: str | None = "qgsd"
    qemu: str = DEFAULT_QEMU


class TrustDomain(pulumi.ComponentResource):
    facts: pulumi.Output[Mapping[str, Any]]
    endpoint: pulumi.Output[str | None]
    ready: pulumi.Output[bool]
    summary: pulumi.Output[dict[str, Any]]  # the `td` entry of the host's `hosts` output

    def __init__(self, name: str, args: TrustDomainArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tdx-vllm:td:TrustDomain", name, {}, opts)
        host, wl = args.host, args.workload
        conn = Connection(host.ssh)
        boot, td = wl.boot, wl.td
        if boot is None or td is None:
            raise ValueError(f"{name}: a TrustDomain needs a host-target workload (a TD boot manifest and shape)")
        self.stage = host_step(
            f"{name}-stage",
            STAGE_STEP,
            conn,
            stage_params(host.name, boot, td.artifact_source),
            removable=True,
            timeout_s=STAGE_TIMEOUT_S,
            opts=pulumi.ResourceOptions(parent=self),
        )

        defn = pulumi.Output.from_input(args.preflight_facts).apply(
            lambda facts: definition(
                host.name,
                boot,
                wl,
                select_gpus(facts, args.gpu_count),
                qgs_port=args.qgs_port,
                qgs_service=args.qgs_service,
                qemu=args.qemu,
            )
        )
        params = pulumi.Output.all(defn, self.stage.urn).apply(
            lambda a: launch_params(a[0], boot, wl, args.manifest, args.stack, stage_urn=a[1])
        )
        # A changed launch input (artifact pin, manifest, unit, agent config) replaces the TD: the
        # old one is stopped and its unit removed first, then the new one is written and started.
        self.launch = host_step(
            f"{name}-launch",
            LAUNCH_STEP,
            conn,
            params,
            removable=True,
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[self.stage], replace_on_changes=["stdin"], delete_before_replace=True
            ),
        )
        launch_digest = self.launch.stdin.apply(lambda s: hashlib.sha256((s or "").encode()).hexdigest())
        wait_inputs = pulumi.Output.all(defn, launch_digest).apply(
            lambda a: wait_params(a[0], args.manifest, td.ready_timeout_s, a[1])
        )
        self.wait = host_step(
            f"{name}-wait",
            WAIT_STEP,
            conn,
            wait_inputs,
            timeout_s=td.ready_timeout_s + 120,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.launch]),
        )
        self.facts = facts_of(self.wait)
        self.ready = self.facts.apply(lambda f: f.get("ok") is True and f.get("state") == "ready")
        url = endpoint_url(host.ssh.address, wl.gateway_port)
        self.endpoint = self.ready.apply(lambda ok: url if ok else None)
        self.summary = self.facts.apply(lambda f: td_summary(f, td.tdx, url))
        self.register_outputs({"facts": self.facts, "endpoint": self.endpoint, "ready": self.ready})


def td_summary(facts: Mapping[str, Any], tdx: bool, url: str) -> dict[str, Any]:
    """What an operator reads first about a host's TD: whether it is a TD at all (`tdx: false` is the
    dev stack's VM with TEST quotes), the agent's state, where it serves and how it quotes."""
    ready = facts.get("ok") is True and facts.get("state") == "ready"
    return {
        "tdx": tdx,
        "state": facts.get("state"),
        "endpoint": url if ready else None,
        "quoteSource": facts.get("quote_source"),
        "rtmr3": facts.get("rtmr3"),
    }


def trust_domains(
    stack: StackConfig,
    hosts: Sequence[Any],
    manifest: WorkloadManifest | None,
    *,
    qgs_service: str | None = None,
    qemu: str = DEFAULT_QEMU,
    after: Sequence[pulumi.Resource] = (),
) -> dict[str, TrustDomain]:
    """One TrustDomain per host when the stack has a `workload` (else none), each a child of its
    TdxHost, after the host's kernel, GPU and DCAP steps (and `after`: the verifying proxy's accept steps)."""
    if stack.workload is None or manifest is None:
        return {}
    if stack.dcap is None:
        raise ValueError("a stack with hosts has a `dcap:` block (the config requires it)")
    if qgs_service is None:
        qgs_service = dcap_packages().services.get("qgs")
    out: dict[str, TrustDomain] = {}
    for cfg, host in zip(stack.hosts, hosts):
        ready = [host.kernel, host.dcap, *([host.gpu] if host.gpu is not None else []), *after]
        out[cfg.name] = TrustDomain(
            f"{cfg.name}-td",
            TrustDomainArgs(
                stack=stack.stack,
                host=cfg,
                workload=stack.workload,
                manifest=manifest,
                gpu_count=cfg.gpu.count if cfg.gpu else 0,
                preflight_facts=host.preflight.facts,
                qgs_port=stack.dcap.qgs_port,
                qgs_service=qgs_service,
                qemu=qemu,
            ),
            opts=pulumi.ResourceOptions(parent=host, depends_on=ready),
        )
    return out
