"""The Trust Domain's three host steps (components/scripts/host/td_*.sh), rendered: the staging of
the pinned boot artifacts, the launch (the rendered QEMU unit and the guest agent's config) and the
wait for the agent's report. Pure; the TrustDomain component and the harness tests call these, so
the harness runs exactly what `pulumi up` runs."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from components.catalog.gpu import GpuSku
from components.catalog.td_manifest import BootManifest
from components.config.model import TdShape, WorkloadConfig
from components.render.steps import Step
from components.render.td_definition import DEFAULT_QEMU, TdDefinition, agent_config, render_unit, td_dir, unit_name
from guest_agent import REPORT_PREFIX
from tdxattest.core.workload import WorkloadManifest, expected_rtmr3, gpu_pins

STAGE_STEP = Step("td-stage", "td_stage.sh")
LAUNCH_STEP = Step("td-launch", "td_launch.sh")
WAIT_STEP = Step("td-wait", "td_wait.sh", mode="check")
WAIT_POLL_S = 5


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
        "TDX_UNIT": unit_name(name),
        "TDX_TD_DIR": td_dir(name),
        "TDX_ARTIFACT_SOURCE": artifact_source,
        "TDX_ARTIFACTS": artifact_lines(boot),
    }


def _shape(workload: WorkloadConfig) -> TdShape:
    if workload.td is None:
        raise ValueError("a Trust Domain needs a host-target workload (`workload.td`)")
    return workload.td


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
    if not boot.launchable or boot.kernel is None or boot.cmdline is None:
        raise ValueError(f"{boot.path}: cannot launch a TD: {'; '.join(boot.gaps)}")
    td = _shape(workload)
    d = td_dir(name)
    return TdDefinition(
        name=name,
        firmware=f"{d}/{boot.firmware.staged_name}",
        kernel=f"{d}/{boot.kernel.staged_name}",
        initrd=f"{d}/{boot.initrd.staged_name}" if boot.initrd is not None else None,
        cmdline=boot.cmdline,
        vcpus=td.vcpus,
        memory_mib=td.memory_mib,
        gpus=tuple(gpus),
        agent_config=f"{d}/agent.json",
        serial_log=f"{d}/serial.log",
        gateway_port=workload.gateway_port,
        qgs_port=qgs_port,
        qemu=qemu,
        after_units=(f"{qgs_service}.service",) if qgs_service else (),
        rootfs=f"{d}/{boot.rootfs.staged_name}" if boot.rootfs is not None else None,
        data_disk=f"{d}/data.img" if td.data_disk_gib > 0 else None,
        tdx=td.tdx,
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
    stage_urn: str = "",
) -> dict[str, str]:
    agent = agent_config(
        stack,
        manifest.as_dict(),
        workload.model_source,
        workload.gateway_port,
        {"prompt": workload.known_answer.prompt, "expect": workload.known_answer.expect},
        workload.server,
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
        "TDX_DATA_DISK_GIB": str(_shape(workload).data_disk_gib),
        "TDX_TD_TDX": "true" if defn.tdx else "false",
        # A staged file changed since td-stage checked it: the refusal names how to stage it again
        # (td-stage runs only when its own inputs change, so a plain `pulumi up` would not).
        "TDX_STAGE_URN": stage_urn,
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


def workload_manifest(workload: WorkloadConfig, tensor_parallel_size: int, skus: Iterable[GpuSku]) -> WorkloadManifest:
    """The manifest the TDs measure into RTMR3, with the GPU pins of the stack's GPU models (the
    VBIOS and guest driver of every `firmware/gpu/<sku>.yaml` its hosts use): the agent checks its
    GPUs' evidence against these measured values, never against the host-written config."""
    skus = list(skus)
    pins = gpu_pins((s.vbios for s in skus), (s.driver for s in skus)) if skus else None
    return workload.manifest(tensor_parallel_size, pins)
