"""The agent's config: a JSON document the host delivers as QEMU fw_cfg `opt/tdx-vllm/agent.json`.

Parsing is pure and strict: an unknown key is an error (a typo must not silently fall back to a
default), and every error is an `InputError` naming the key, what was expected and what was seen.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tdxattest.core.errors import InputError
from tdxattest.core.workload import WorkloadManifest, manifest_from_mapping, refused_vllm_args

from . import CONFIG_FW_CFG, DEV_STACK

DEFAULT_CONFIG_PATH = f"/sys/firmware/qemu_fw_cfg/by_name/{CONFIG_FW_CFG}/raw"
SERVERS = ("vllm", "standin")
# The built-in collector (guest_agent/nvml.py, NVML from the driver); {python} is the agent's own
# interpreter, {nonce} the fresh nonce in hex.
NVML_COLLECTOR = ("{python}", "-m", "guest_agent.nvml", "--nonce", "{nonce}")

_STACK = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class ModelSource:
    source: str  # base URL; each manifest file is fetched from <source>/<path>; {id}, {revision} expand
    dir: str = "/var/lib/tdx-vllm/model"


@dataclass(frozen=True)
class KnownAnswer:
    prompt: str
    expect: str
    max_tokens: int = 16
    timeout_s: float = 300.0


@dataclass(frozen=True)
class GpuConfig:
    evidence_command: tuple[str, ...] = NVML_COLLECTOR  # "{nonce}" is replaced by the hex nonce
    # The NVIDIA Device Identity CA: None = the root each GPU's chain ends at, accepted only if its
    # fingerprint is the one pinned in tdxattest.gpu_evidence; a PEM file (dev stack only) replaces it.
    root_ca: str | None = None
    vbios: tuple[str, ...] = ()  # accepted VBIOS versions; empty = not pinned
    driver: str | None = None  # required driver version; None = not pinned


@dataclass(frozen=True)
class AgentConfig:
    stack: str
    workload: WorkloadManifest
    model: ModelSource
    known_answer: KnownAnswer
    server: str = "vllm"
    server_port: int = 8000
    gateway_port: int = 8443
    gateway_listen: str = "0.0.0.0"
    gpu: GpuConfig = GpuConfig()
    state_dir: str = "/run/tdx-vllm"
    server_start_timeout_s: float = 1800.0  # vLLM loads and compiles for minutes on a big model
    podman: str = "podman"

    @property
    def dev(self) -> bool:
        return self.stack == DEV_STACK


def _keys(where: str, doc: Any, allowed: set[str], required: set[str]) -> Mapping:
    if not isinstance(doc, Mapping):
        raise InputError(f"{where} as a JSON object", type(doc).__name__)
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise InputError(f"{where} keys among {sorted(allowed)}", f"unknown key {unknown[0]!r}")
    missing = sorted(required - set(doc))
    if missing:
        raise InputError(f"{where}.{missing[0]}", "the key missing")
    return doc


def _str(key: str, value: Any, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise InputError(f"{key} as a {'' if empty else 'non-empty '}string", repr(value)[:120])
    return value


def _nonblank(key: str, value: Any) -> str:
    """A string with something besides whitespace (a prefix check against blank passes anything)."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{key} as a string that is not blank", repr(value)[:120])
    return value


def _num(key: str, value: Any, lo: float, hi: float, integer: bool = True) -> Any:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not lo <= value <= hi:
        raise InputError(f"{key} as {'an integer' if integer else 'a number'} in {lo}..{hi}", repr(value)[:60])
    return value


def _port(key: str, value: Any) -> int:
    # 0 is allowed for nothing: the host and the known-answer check must know the port in advance.
    return _num(key, value, 1, 65535)


def check_vllm_args(args: tuple[str, ...]) -> None:
    """Refuse vLLM arguments the deployment owns or that break under confidential computing."""
    for i, reason in refused_vllm_args(args):
        raise InputError(f"workload.vllmArgs without it ({reason})", repr(args[i]))


def config_from_mapping(doc: Any) -> AgentConfig:
    top = _keys(
        "config",
        doc,
        {
            "stack",
            "workload",
            "model",
            "gateway",
            "knownAnswer",
            "server",
            "serverPort",
            "gpu",
            "stateDir",
            "serverStartTimeoutSeconds",
            "podman",
        },
        {"stack", "workload", "model", "knownAnswer"},
    )
    stack = _str("config.stack", top["stack"])
    if not _STACK.fullmatch(stack):
        raise InputError("config.stack as a stack name (lowercase letters, digits, '-')", repr(stack))
    workload = manifest_from_mapping(top["workload"])  # its errors already name workload.<key>
    check_vllm_args(workload.vllm_args)

    server = top.get("server", "vllm")
    if server not in SERVERS:
        raise InputError(f"config.server among {list(SERVERS)}", repr(server))
    if server == "standin" and stack != DEV_STACK:
        raise InputError(
            f"config.server 'vllm' on stack {stack!r} (the stand-in echoes prompts; it is for the "
            f"{DEV_STACK!r} stack only)",
            "'standin'",
        )

    m = _keys("config.model", top["model"], {"source", "dir"}, {"source"})
    source = _str("config.model.source", m["source"])
    scheme = source.split(":", 1)[0].lower()
    if scheme not in ("https", "http", "file"):
        raise InputError("config.model.source as an https://, http:// or file:// URL", repr(source))
    model_dir = _str("config.model.dir", m.get("dir", ModelSource.dir))
    if not model_dir.startswith("/"):
        raise InputError("config.model.dir as an absolute path", repr(model_dir))

    g = _keys("config.gateway", top.get("gateway", {}), {"port", "listen"}, set())
    gateway_port = _port("config.gateway.port", g.get("port", AgentConfig.gateway_port))
    gateway_listen = _str("config.gateway.listen", g.get("listen", AgentConfig.gateway_listen))
    server_port = _port("config.serverPort", top.get("serverPort", AgentConfig.server_port))
    if server_port == gateway_port:
        raise InputError("config.serverPort different from config.gateway.port", str(server_port))

    k = _keys(
        "config.knownAnswer",
        top["knownAnswer"],
        {"prompt", "expect", "maxTokens", "timeoutSeconds"},
        {"prompt", "expect"},
    )
    known = KnownAnswer(
        prompt=_str("config.knownAnswer.prompt", k["prompt"]),
        expect=_nonblank("config.knownAnswer.expect", k["expect"]),
        max_tokens=_num("config.knownAnswer.maxTokens", k.get("maxTokens", KnownAnswer.max_tokens), 1, 4096),
        timeout_s=float(
            _num(
                "config.knownAnswer.timeoutSeconds",
                k.get("timeoutSeconds", KnownAnswer.timeout_s),
                1,
                3600,
                integer=False,
            )
        ),
    )

    gp = _keys("config.gpu", top.get("gpu", {}), {"evidenceCommand", "rootCa", "vbios", "driver"}, set())
    # The host writes this config and is not trusted: what the agent runs as root and the root of
    # trust for GPU evidence come from the (measured) image, except in the dev stack.
    if stack != DEV_STACK:
        for key, present in (
            ("config.gpu.evidenceCommand", "evidenceCommand" in gp),
            ("config.gpu.rootCa", "rootCa" in gp),
            # The GPU pins come from the measured manifest (workload.gpu): a host-written pin could
            # switch the VBIOS and driver checks off without changing RTMR3.
            ("config.gpu.vbios", "vbios" in gp),
            ("config.gpu.driver", "driver" in gp),
            ("config.podman", "podman" in top),
        ):
            if present:
                raise InputError(
                    f"{key} only in the dev stack (outside it the image fixes the command and the "
                    "NVIDIA root, and the measured workload manifest the GPU pins: the host's config "
                    "must not choose what runs as root in the TD or what its GPUs are checked against)",
                    f"set, with stack {stack!r}",
                )
    command = gp.get("evidenceCommand", list(NVML_COLLECTOR))
    if not isinstance(command, list) or not command or not all(isinstance(a, str) and a for a in command):
        raise InputError("config.gpu.evidenceCommand as a non-empty list of strings", repr(command)[:120])
    if not any("{nonce}" in a for a in command):
        raise InputError(
            "config.gpu.evidenceCommand with a {nonce} argument (evidence must carry our fresh nonce)",
            repr(command)[:120],
        )
    vbios = gp.get("vbios", [])
    if not isinstance(vbios, list) or not all(isinstance(v, str) and v for v in vbios):
        raise InputError("config.gpu.vbios as a list of version strings", repr(vbios)[:120])
    driver = gp.get("driver")
    if driver is not None:
        _str("config.gpu.driver", driver)
    root_ca = gp.get("rootCa")
    if root_ca is not None and not _str("config.gpu.rootCa", root_ca).startswith("/"):
        raise InputError("config.gpu.rootCa as an absolute path to a PEM file", repr(root_ca))
    gpu = GpuConfig(evidence_command=tuple(command), root_ca=root_ca, vbios=tuple(vbios), driver=driver)

    state_dir = _str("config.stateDir", top.get("stateDir", AgentConfig.state_dir))
    if not state_dir.startswith("/"):
        raise InputError("config.stateDir as an absolute path", repr(state_dir))
    return AgentConfig(
        stack=stack,
        workload=workload,
        model=ModelSource(source, model_dir),
        known_answer=known,
        server=server,
        server_port=server_port,
        gateway_port=gateway_port,
        gateway_listen=gateway_listen,
        gpu=gpu,
        state_dir=state_dir,
        server_start_timeout_s=float(
            _num(
                "config.serverStartTimeoutSeconds",
                top.get("serverStartTimeoutSeconds", AgentConfig.server_start_timeout_s),
                1,
                86400,
                integer=False,
            )
        ),
        podman=_str("config.podman", top.get("podman", AgentConfig.podman)),
    )


def load_config(path: str | Path) -> AgentConfig:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(
            "a readable agent config (the host passes it as fw_cfg opt/tdx-vllm/agent.json; or give --config FILE)",
            exc.strerror or str(exc),
            file=str(path),
        ) from None
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise InputError("JSON", str(exc), file=str(path)) from None
    try:
        return config_from_mapping(doc)
    except InputError as exc:
        raise exc.with_file(str(path)) from None
