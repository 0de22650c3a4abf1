"""GPU attestation: collect evidence over a fresh nonce, verify it to the NVIDIA root, check the
pinned VBIOS/driver, and only then set the GPUs ready (`python3 -m guest_agent.nvml --set-ready`,
NVML's nvmlSystemSetConfComputeGpusReadyState).

In CC mode a GPU refuses work until its ready state is set, so setting it only after our own
verification means an unattested GPU never sees a prompt.

Evidence format read from the collect command (by default our NVML collector, guest_agent/nvml.py;
nvattest's `collect-evidence` JSON has the same shape): a JSON list, or an object holding the list
under "evidences", "evidence_list" or "gpus"; each item has "evidence" (the SPDM GET_MEASUREMENTS
request+response, hex or base64) and "certificate" (the device chain, PEM or base64 of PEM), and
optionally "vbios_version" / "driver_version". Versions missing from the evidence are read from
nvidia-smi. An object also carries "cc" ({"environment", "enabled", "devtools"}, the driver's
confidential-computing state; only a dev collector may leave it out): CC must be on, and outside
dev neither devtools nor a non-prod environment is accepted.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tdxattest.core.gpu_evidence import GpuEvidenceError, normalise_version, verify_gpu_evidence

from .config import AgentConfig
from .system import Refused, System

COLLECT_TIMEOUT_S = 300.0
SMI_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class GpuItem:
    report: bytes
    chain_pem: bytes
    vbios: str | None
    driver: str | None


@dataclass(frozen=True)
class GpuResult:
    skipped: str | None  # why the step did not run (dev stand-in only)
    evidence_path: Path | None  # JSON the gateway serves as gpu_evidence
    gpus: tuple[dict, ...] = ()


def _decode_blob(value: Any, what: str, pem: bool) -> bytes:
    if not isinstance(value, str) or not value.strip():
        raise Refused("gpu", f"{what} as a string in the evidence, seen {type(value).__name__}")
    text = value.strip()
    if pem and text.startswith("-----BEGIN"):
        return text.encode()
    if not pem:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Refused("gpu", f"{what} as {'PEM or base64' if pem else 'hex or base64'}, seen {text[:40]!r}") from None


def load_evidence_output(text: str) -> Any:
    """The collect command's output as JSON (parsed once; the checks below take the document)."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise Refused("gpu", f"JSON evidence from the collect command, seen {text.strip()[:80]!r} ({exc})") from None


def check_cc_state(doc: Any, dev: bool) -> dict | None:
    """The driver's CC state from the collect command's output, if it reports one; refused when CC
    is off, or (outside dev) in devtools mode or a non-prod environment. Pure."""
    cc = doc.get("cc") if isinstance(doc, dict) else None
    if cc is None:
        if not dev:
            raise Refused(
                "gpu", "the driver's CC state ('cc') in the evidence (guest_agent.nvml reports it), seen none"
            )
        return None
    if not isinstance(cc, dict) or not {"environment", "enabled", "devtools"} <= set(cc):
        raise Refused("gpu", f"'cc' as {{environment, enabled, devtools}} in the evidence, seen {json.dumps(cc)[:120]}")
    if cc["enabled"] is not True:
        raise Refused(
            "gpu",
            "the driver's confidential computing on (GPU CC mode 'on'), seen it off; set the GPU's CC "
            "mode on the host (gpu.mode) and restart the TD",
        )
    if not dev and cc["devtools"] is not False:
        raise Refused(
            "gpu",
            "CC devtools mode off outside the dev stack (devtools leaves GPU memory open to the "
            "host), seen it on; set gpu.mode 'on' on the host",
        )
    if not dev and cc["environment"] != "prod":
        raise Refused("gpu", f"CC environment 'prod', seen {cc['environment']!r}")
    return cc


def evidence_items(doc: Any) -> list[GpuItem]:
    """The GPU items in the collect command's output (format in the module docstring). Pure."""
    items = doc
    if isinstance(doc, dict):
        items = next((doc[k] for k in ("evidences", "evidence_list", "gpus") if k in doc), None)
    if not isinstance(items, list) or not items:
        raise Refused(
            "gpu",
            "a non-empty list of GPU evidence (under 'evidences', 'evidence_list' or 'gpus'), "
            f"seen {json.dumps(doc)[:120]}",
        )
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise Refused("gpu", f"GPU {i} evidence as an object, seen {type(item).__name__}")
        out.append(
            GpuItem(
                report=_decode_blob(item.get("evidence"), f"GPU {i} 'evidence'", pem=False),
                chain_pem=_decode_blob(item.get("certificate"), f"GPU {i} 'certificate'", pem=True),
                vbios=item.get("vbios_version"),
                driver=item.get("driver_version"),
            )
        )
    return out


def verify_items(
    items: list[GpuItem],
    root_pem: bytes | None,
    nonce: bytes,
    expected_count: int,
    vbios_pins: tuple[str, ...],
    driver_pins: tuple[str, ...],
) -> list[dict]:
    """Verify every GPU's evidence and pins; the per-GPU facts for the gateway. Pure."""
    if len(items) != expected_count:
        raise Refused(
            "gpu",
            f"{expected_count} GPU(s) (the manifest's tensorParallelSize), evidence for "
            f"{len(items)}; attach the GPUs to the TD or fix tensorParallelSize",
        )
    facts = []
    for i, item in enumerate(items):
        try:
            ev = verify_gpu_evidence(item.report, item.chain_pem, root_pem, expected_nonce=nonce)
        except GpuEvidenceError as exc:
            raise Refused("gpu", f"GPU {i}: {exc}") from None
        # The versions the GPU signed (its report's opaque data) win over what NVML says.
        vbios = ev.report.vbios_version or item.vbios
        driver = ev.report.driver_version or item.driver
        if vbios_pins and normalise_version(vbios or "") not in {normalise_version(p) for p in vbios_pins}:
            raise Refused(
                "gpu",
                f"GPU {i}: VBIOS among {list(vbios_pins)}, seen {vbios!r}; flash the pinned "
                "VBIOS (firmware/gpu/*.yaml) or update the pin",
            )
        if driver_pins and normalise_version(driver or "") not in {normalise_version(p) for p in driver_pins}:
            raise Refused(
                "gpu",
                f"GPU {i}: driver among {list(driver_pins)}, seen {driver!r}; rebuild the guest image "
                "with the pinned driver or update the pin",
            )
        facts.append(
            {
                **ev.as_dict(),
                "vbios_version": vbios,
                "driver_version": driver,
                "evidence": item.report.hex(),
                "certificate": item.chain_pem.decode(),
            }
        )
    return facts


def _fill_versions(system: System, items: list[GpuItem]) -> list[GpuItem]:
    if all(i.vbios and i.driver for i in items):
        return items
    res = system.run(["nvidia-smi", "--query-gpu=vbios_version,driver_version", "--format=csv,noheader"], SMI_TIMEOUT_S)
    if res.returncode != 0:
        raise Refused("gpu", f"VBIOS/driver versions from nvidia-smi: {res.describe()}")
    rows = [[c.strip() for c in line.split(",")] for line in res.stdout.strip().splitlines() if line.strip()]
    if len(rows) != len(items) or any(len(r) != 2 for r in rows):
        raise Refused(
            "gpu", f"one 'vbios, driver' row per GPU ({len(items)}) from nvidia-smi, seen {res.stdout[:120]!r}"
        )
    return [GpuItem(i.report, i.chain_pem, i.vbios or r[0], i.driver or r[1]) for i, r in zip(items, rows)]


def gpu_pins(config: AgentConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(accepted VBIOS versions, accepted driver versions): the measured manifest's (workload.gpu,
    in RTMR3); the config's own pins only in the dev stack. Outside dev a manifest without GPU pins
    is refused: the checks would silently pass whatever VBIOS the host flashed."""
    pins = config.workload.gpu
    if pins is not None:
        return pins.vbios, pins.driver
    if not config.dev:
        raise Refused(
            "gpu",
            "GPU pins in the measured workload manifest (workload.gpu: the VBIOS and driver of "
            "firmware/gpu/<sku>.yaml), seen none; deploy with a gpu model on every host so `pulumi up` "
            "measures them",
        )
    return config.gpu.vbios, (config.gpu.driver,) if config.gpu.driver else ()


def attest_gpus(
    config: AgentConfig,
    system: System,
    state_dir: Path,
    make_nonce: Callable[[], bytes] = lambda: secrets.token_bytes(32),
) -> GpuResult:
    if config.dev and config.server == "standin":
        return GpuResult(skipped="dev stack with the stand-in server: no GPU is used", evidence_path=None)
    vbios_pins, driver_pins = gpu_pins(config)  # before anything runs: no pins, no GPU
    root_pem = None  # the chain's own root, pinned by fingerprint (tdxattest.gpu_evidence)
    if config.gpu.root_ca is not None:
        try:
            root_pem = system.path(config.gpu.root_ca).read_bytes()
        except OSError as exc:
            raise Refused(
                "gpu", f"the NVIDIA Device Identity root CA at {config.gpu.root_ca} ({exc.strerror})"
            ) from None
    nonce = make_nonce()
    argv = [a.replace("{nonce}", nonce.hex()).replace("{python}", system.python) for a in config.gpu.evidence_command]
    res = system.run(argv, COLLECT_TIMEOUT_S)
    if res.returncode != 0:
        raise Refused("gpu", f"GPU evidence: {res.describe()}")
    doc = load_evidence_output(res.stdout)
    cc = check_cc_state(doc, config.dev)
    items = _fill_versions(system, evidence_items(doc))
    facts = verify_items(items, root_pem, nonce, config.workload.tensor_parallel_size, vbios_pins, driver_pins)
    ready = system.run([system.python, "-m", "guest_agent.nvml", "--set-ready"], SMI_TIMEOUT_S)
    try:
        answer = json.loads(ready.stdout)
    except ValueError:
        answer = None
    if ready.returncode != 0 or answer != {"ready": True}:
        raise Refused(
            "gpu",
            f"GPUs ready (accepting work) after setting it, seen {ready.describe()} {ready.stdout.strip()[:120]!r}",
        )
    path = state_dir / "gpu-evidence.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "verified_by": "tdx-vllm guest agent (tdxattest.gpu_evidence)",
                "nonce": nonce.hex(),
                "cc": cc,
                "gpus": facts,
            },
            indent=1,
        )
    )
    return GpuResult(skipped=None, evidence_path=path, gpus=tuple(facts))
