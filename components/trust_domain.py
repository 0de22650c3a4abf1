"""TrustDomain: one attested vLLM TD per host, after the host is ready (kernel, GPU CC mode, DCAP).

Three remote steps (components/scripts/td_*.sh, check/apply/verify like every host step):

  td-stage   the pinned TD boot artifacts (TDVF, kernel, initrd of the TD boot manifest) under
             /var/lib/tdx-vllm/td/<host>/, fetched from `workload.td.artifactSource` and checked
             against their sha256 ON THE HOST (a wrong file is refused, naming it, both digests);
  td-launch  the guest agent's config and the systemd unit `tdx-vllm-td-<host>.service` running the
             rendered QEMU command (components/td_definition.py), GPUs bound to vfio-pci, enabled
             and started. Any change of its input (a pinned artifact, the manifest, the unit)
             REPLACES it: the old TD is stopped first (delete_before_replace), then the new one starts;
  td-wait    read-only: waits (bounded) until the guest agent reports `ready` on the serial console
             with the expected manifest digest and RTMR3, or fails with the agent's refusal.

The pure helpers (`stage_params`, `launch_params`, `wait_params`, `workload_pins`, `endpoint_url`)
are what the unit and harness tests call, so the harness runs exactly what `pulumi up` runs.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pulumi
from tdxattest.core.workload import WorkloadManifest, expected_rtmr3, image_digest, model_sha256, rtmr3_events

from guest_agent import REPORT_PREFIX

from .config import HostConfig, StackConfig, WorkloadConfig
from .remote_step import Connection, facts_of, host_step
from .steps import Step
from .td_definition import DEFAULT_QEMU, BootManifest, TdDefinition, agent_config, render_unit, td_dir

STAGE_STEP = Step("td-stage", "td_stage.sh")
LAUNCH_STEP = Step("td-launch", "td_launch.sh")
WAIT_STEP = Step("td-wait", "td_wait.sh", mode="check")
STAGE_TIMEOUT_S = 1800
WAIT_POLL_S = 5


# ---------------------------------------------------------------------------------------------
# pure helpers


def workload_pins(pins: Mapping[str, Any], manifest: WorkloadManifest) -> dict[str, Any]:
    """`pins` with the workload: RTMR3 (the replay of the agent's events), its events, the image
    digest, the model hash and the manifest's SHA-384 (docs/pins.md)."""
    out = dict(pins)
    out["rtmr3"] = expected_rtmr3(manifest).hex()
    out["events"] = {**dict(pins.get("events") or {}), "rtmr3": rtmr3_events(manifest)}
    out["reasons"] = {k: v for k, v in dict(pins.get("reasons") or {}).items() if k != "rtmr3"}
    out["imageDigest"] = image_digest(manifest.image)
    out["modelSha256"] = model_sha256(manifest)
    out["workload"] = {
        "image": manifest.image,
        "modelId": manifest.model_id,
        "modelRevision": manifest.model_revision,
        "tensorParallelSize": manifest.tensor_parallel_size,
        "manifestSha384": manifest.digest().hex(),
    }
    return out


def endpoint_url(address: str, port: int) -> str:
    try:
        host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    except ValueError:
        host = address
    return f"https://{host}:{port}"


def select_gpus(preflight_facts: Mapping[str, Any], count: int) -> tuple[str, ...]:
    """The GPUs the TD gets: the first `count` GPUs of the pinned SKU preflight found, by PCI address."""
    bdfs = sorted({str(g.get("bdf")) for g in preflight_facts.get("gpus") or [] if g.get("bdf")})
    if len(bdfs) < count:
        raise ValueError(
            f"preflight found {len(bdfs)} GPU(s) of the pinned model ({', '.join(bdfs) or 'none'}), "
            f"the TD needs {count}: check gpu.count and lspci -d 10de: on the host"
        )
    return tuple(bdfs[:count])


def artifact_lines(boot: BootManifest) -> str:
    """`<staged name> <file> <sha256>` per artifact: what td_stage.sh fetches and td_launch.sh re-checks."""
    return "\n".join(f"{a.staged_name} {a.file} {a.sha256}" for a in boot.artifacts)


def stage_params(name: str, boot: BootManifest, artifact_source: str) -> dict[str, str]:
    return {
        "TDX_TD_NAME": name,
        "TDX_TD_DIR": td_dir(name),
        "TDX_ARTIFACT_SOURCE": artifact_source,
        "TDX_ARTIFACTS": artifact_lines(boot),
    }


def definition(
    name: str,
    boot: BootManifest,
    workload: WorkloadConfig,
    gpus: Sequence[str],
    *,
    qgs_port: int = 4050,
    qgs_service: str | None = "qgsd",
    qemu: str = DEFAULT_QEMU,
) -> TdDefinition:
    if not boot.launchable or boot.firmware is None or boot.kernel is None or boot.cmdline is None:
        raise ValueError(f"{boot.path}: cannot launch a TD: {'; '.join(boot.gaps)}")
    d = td_dir(name)
    return TdDefinition(
        name=name,
        firmware=f"{d}/{boot.firmware.staged_name}",
        kernel=f"{d}/{boot.kernel.staged_name}",
        initrd=f"{d}/{boot.initrd.staged_name}" if boot.initrd is not None else None,
        cmdline=boot.cmdline,
        vcpus=workload.td.vcpus,
        memory_mib=workload.td.memory_mib,
        gpus=tuple(gpus),
        agent_config=f"{d}/agent.json",
        serial_log=f"{d}/serial.log",
        gateway_port=workload.gateway_port,
        qgs_port=qgs_port,
        qemu=qemu,
        after_units=(f"{qgs_service}.service",) if qgs_service else (),
        rootfs=f"{d}/{boot.rootfs.staged_name}" if boot.rootfs is not None else None,
        data_disk=f"{d}/data.img" if workload.td.data_disk_gib > 0 else None,
    )


def unit_pins(boot: BootManifest, manifest: WorkloadManifest) -> dict[str, str]:
    pins = {f"{a.role} sha256": a.sha256 for a in boot.artifacts}
    pins["workload manifest sha384"] = manifest.digest().hex()
    pins["expected rtmr3"] = expected_rtmr3(manifest).hex()
    return pins


def launch_params(
    defn: TdDefinition,
    boot: BootManifest,
    workload: WorkloadConfig,
    manifest: WorkloadManifest,
    stack: str,
    gpu_pins: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    agent = agent_config(
        stack,
        manifest.as_dict(),
        workload.model_source,
        workload.gateway_port,
        {"prompt": workload.known_answer.prompt, "expect": workload.known_answer.expect},
        gpu_pins,
    )
    unit = render_unit(defn, unit_pins(boot, manifest))
    return {
        "TDX_TD_NAME": defn.name,
        "TDX_TD_DIR": td_dir(defn.name),
        "TDX_UNIT": defn.unit_name,
        "TDX_UNIT_TEXT": unit,
        "TDX_AGENT_CONFIG_PATH": defn.agent_config,
        "TDX_AGENT_CONFIG": agent,
        "TDX_ARTIFACTS": artifact_lines(boot),
        "TDX_QEMU": defn.qemu,
        "TDX_GPU_BDFS": " ".join(defn.gpus),
        "TDX_SERIAL_LOG": defn.serial_log,
        "TDX_GATEWAY_PORT": str(defn.gateway_port),
        "TDX_DATA_DISK": defn.data_disk or "",
        "TDX_DATA_DISK_GIB": str(workload.td.data_disk_gib),
    }


def wait_params(
    defn: TdDefinition, manifest: WorkloadManifest, timeout_s: int, launch_digest: str = ""
) -> dict[str, str]:
    return {
        "TDX_TD_NAME": defn.name,
        "TDX_UNIT": defn.unit_name,
        "TDX_SERIAL_LOG": defn.serial_log,
        "TDX_AGENT_PREFIX": REPORT_PREFIX,
        "TDX_EXPECTED_MANIFEST_SHA384": manifest.digest().hex(),
        "TDX_EXPECTED_RTMR3": expected_rtmr3(manifest).hex(),
        "TDX_TD_READY_TIMEOUT": str(timeout_s),
        "TDX_WAIT_POLL": str(WAIT_POLL_S),
        # The launch this wait belongs to: a re-launched TD is waited for again.
        "TDX_LAUNCH_DIGEST": launch_digest,
    }


# ---------------------------------------------------------------------------------------------
# the component


def gpu_pins(model: str | None) -> dict[str, Any] | None:
    """What the guest agent checks the GPU evidence against: the SKU's VBIOS and (guest) driver pins."""
    if not model:
        return None
    from .firmware import gpu_sku

    sku = gpu_sku(model)
    return {"vbios": [sku.vbios], "driver": sku.driver}


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
    endpoint: pulumi.Output[str]
    ready: pulumi.Output[bool]

    def __init__(self, name: str, args: TrustDomainArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tdx-vllm:td:TrustDomain", name, {}, opts)
        host, wl = args.host, args.workload
        conn = Connection(host.ssh)
        boot = wl.boot
        self.stage = host_step(
            f"{name}-stage",
            STAGE_STEP,
            conn,
            stage_params(host.name, boot, wl.td.artifact_source),
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
        pins = gpu_pins(host.gpu.model if host.gpu else None)
        params = defn.apply(lambda d: launch_params(d, boot, wl, args.manifest, args.stack, pins))
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
            lambda a: wait_params(a[0], args.manifest, wl.td.ready_timeout_s, a[1])
        )
        self.wait = host_step(
            f"{name}-wait",
            WAIT_STEP,
            conn,
            wait_inputs,
            timeout_s=wl.td.ready_timeout_s + 120,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.launch]),
        )
        self.facts = facts_of(self.wait)
        self.ready = self.facts.apply(lambda f: f.get("ok") is True and f.get("state") == "ready")
        url = endpoint_url(host.ssh.address, wl.gateway_port)
        self.endpoint = self.ready.apply(lambda ok: url if ok else None)
        self.register_outputs({"facts": self.facts, "endpoint": self.endpoint, "ready": self.ready})


def trust_domains(
    stack: StackConfig, hosts: Sequence[Any], *, qgs_service: str | None = None, qemu: str = DEFAULT_QEMU
) -> dict[str, TrustDomain]:
    """One TrustDomain per host when the stack has a `workload` (else none), each a child of its
    TdxHost, after the host's kernel, GPU and DCAP steps."""
    if stack.workload is None:
        return {}
    if qgs_service is None:
        from .firmware import dcap_packages

        qgs_service = dcap_packages().services.get("qgs")
    manifest = stack.workload.manifest(stack.tensor_parallel_size)
    out: dict[str, TrustDomain] = {}
    for cfg, host in zip(stack.hosts, hosts):
        after = [host.kernel, host.dcap] + ([host.gpu] if host.gpu is not None else [])
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
            opts=pulumi.ResourceOptions(parent=host, depends_on=after),
        )
    return out
