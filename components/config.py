"""Typed stack configuration: parse once, validate everything, report every error at once.

The same `parse_stack` runs in two places:

* offline, `python -m components.config stacks/Pulumi.<stack>.yaml`, where secrets are still
  `{secure: ...}` ciphertext markers in the YAML;
* at the start of `pulumi preview/up` (`load_from_pulumi`), where Pulumi has decrypted them and we
  learn which leaves were secret from the stack file itself.

Either way a secret given in plain text is an error: a key such as `hosts[0].ssh.privateKey` that
reached the stack file unencrypted is already leaked to whoever reads the repository.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping
from urllib.parse import urlsplit

import yaml

PROJECT = "tdx-vllm"
from .paths import FIRMWARE_DIR, REPO_ROOT, display_path
from .pinfile import load_pin_yaml

GpuMode = Literal["on", "ppcie", "devtools"]
GPU_MODES: tuple[str, ...] = ("on", "ppcie", "devtools")
REGISTRATION_METHODS: tuple[str, ...] = ("mpa", "pckid", "none")
SUPPORTED_OS: tuple[str, ...] = ("ubuntu-25.10", "ubuntu-26.04", "ubuntu-24.04")
HOST_KEY_TYPES: tuple[str, ...] = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
# Kernel arguments every TDX host needs; `platform.extraKernelArgs` adds to these.
BASE_KERNEL_ARGS: tuple[str, ...] = ("nohibernate", "kvm_intel.tdx=1", "intel_iommu=on")


# --------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class Secret:
    """A value that must stay a Pulumi secret. `repr` never shows it."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret(***)"


@dataclass(frozen=True)
class SshConfig:
    address: str
    port: int
    user: str
    host_key: str
    private_key: Secret


@dataclass(frozen=True)
class BmcConfig:
    endpoint: str
    vendor: str
    username: Secret
    password: Secret
    tls_fingerprint: str | None
    ca_file: str | None
    system: str | None


@dataclass(frozen=True)
class GpuConfig:
    model: str
    count: int
    mode: GpuMode


@dataclass(frozen=True)
class HostConfig:
    name: str
    ssh: SshConfig
    bmc: BmcConfig | None
    gpu: GpuConfig | None


@dataclass(frozen=True)
class PlatformConfig:
    os: str
    extra_kernel_args: tuple[str, ...]
    tdx_module: str | None

    @property
    def kernel_args(self) -> tuple[str, ...]:
        return BASE_KERNEL_ARGS + tuple(a for a in self.extra_kernel_args if a not in BASE_KERNEL_ARGS)


@dataclass(frozen=True)
class DcapConfig:
    pccs_api_key: Secret
    registration: str
    pccs_port: int
    qgs_port: int
    pccs_url: str | None  # an external PCCS; None = run PCCS on each host
    use_secure_cert: bool


@dataclass(frozen=True)
class PromotionConfig:
    from_stack: str  # `organization/<project>/<stack>` or a bare stack name of this project


@dataclass(frozen=True)
class KnownAnswer:
    """The readiness check on both targets: the greedy completion of `prompt` (at most `max_tokens`)
    must begin with `expect` (guest_agent/knownanswer.py)."""

    prompt: str
    expect: str
    max_tokens: int = 16


@dataclass(frozen=True)
class TdShape:
    vcpus: int
    memory_mib: int
    artifact_source: str  # https://... base URL, or an absolute directory on the host
    ready_timeout_s: int
    data_disk_gib: int = 0  # scratch disk for the model (encrypted in the TD with a fresh key); 0: TD memory


@dataclass(frozen=True)
class WorkloadConfig:
    """What the TDs serve (`workload:`). The measured part is `manifest(tp)` (tdxattest.workload)."""

    target: str  # "host" (the TD runs vLLM itself)
    image: str  # <repository>@sha256:<64 hex>
    model_id: str
    model_revision: str  # a commit id (40 hex)
    model_files: tuple[tuple[str, str], ...]  # sorted (relative path, sha256)
    model_source: str  # where the TD fetches the files (verified there)
    vllm_args: tuple[str, ...]
    gateway_port: int
    known_answer: KnownAnswer
    td: TdShape | None  # host target: the TD shape (None for kubernetes)
    boot: Any = None  # host target: the TD boot manifest, read once (td_definition.BootManifest)
    kubernetes: Any = None  # kubernetes target: components.kubernetes_workload.KubernetesTarget

    @property
    def boot_manifest(self) -> Path | None:
        """The TD boot manifest's path (firmware/td/); None for kubernetes."""
        return self.boot.path if self.boot is not None else None

    def manifest_mapping(self, tensor_parallel_size: int) -> dict[str, Any]:
        return {
            "image": self.image,
            "model": {"id": self.model_id, "revision": self.model_revision, "files": dict(self.model_files)},
            "vllmArgs": list(self.vllm_args),
            "tensorParallelSize": tensor_parallel_size,
        }

    def manifest(self, tensor_parallel_size: int):
        """The workload manifest measured into RTMR3 (tdxattest.workload.WorkloadManifest)."""
        from tdxattest.core.workload import manifest_from_mapping

        return manifest_from_mapping(self.manifest_mapping(tensor_parallel_size))


@dataclass(frozen=True)
class StackConfig:
    stack: str
    hosts: tuple[HostConfig, ...]
    platform: PlatformConfig
    dcap: DcapConfig | None  # None only in a stack without hosts (a kubernetes-only workload)
    tee_io: bool
    restore_on_destroy: bool
    reboot_timeout_s: int
    promotion: PromotionConfig | None = None
    workload: WorkloadConfig | None = None

    @property
    def tensor_parallel_size(self) -> int:
        """GPUs per TD: every host's `gpu.count` (validation makes them equal when a workload is set)."""
        if self.workload is not None and self.workload.kubernetes is not None:
            return self.workload.kubernetes.gpu_count
        counts = {h.gpu.count for h in self.hosts if h.gpu}
        return counts.pop() if len(counts) == 1 else 0


# --------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class ConfigError:
    path: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}; fix: {self.fix}"


class ConfigErrors(Exception):
    def __init__(self, errors: Iterable[ConfigError]):
        self.errors = tuple(errors)
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.errors)
        lines = [f"stack configuration has {n} error{'s' if n != 1 else ''}:"]
        lines += [f"  - {e}" for e in self.errors]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Secret markers: how each input source tells us a leaf was encrypted


class _Encrypted:
    """A `{secure: ...}` leaf seen in a stack file before decryption."""

    def __repr__(self) -> str:
        return "<encrypted>"

    def __deepcopy__(self, memo: dict) -> "_Encrypted":
        return self


ENCRYPTED = _Encrypted()


# --------------------------------------------------------------------------------------------
# The validator: a small walker that records errors instead of raising


class _Reader:
    def __init__(self, stack: str, secret_paths: frozenset[str] | None):
        self.stack = stack
        # None: secret leaves are visible as ENCRYPTED markers (offline mode).
        self.secret_paths = secret_paths
        self.errors: list[ConfigError] = []

    def error(self, path: str, problem: str, fix: str) -> None:
        self.errors.append(ConfigError(path, problem, fix))

    # -- structure -----------------------------------------------------------------------

    def obj(self, value: Any, path: str, allowed: Iterable[str]) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping) or _is_secure_marker(value):
            self.error(path, f"expected a mapping, got {_kind(value)}", "write it as `key: value` lines")
            return {}
        allowed = tuple(allowed)
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
                hint = f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(allowed)}"
                self.error(_join(path, key), "unknown key", f"remove it or rename it ({hint})")
        return value

    def required(self, m: Mapping[str, Any], key: str, path: str, what: str) -> Any:
        if key not in m or m[key] is None:
            self.error(_join(path, key), "required", what)
            return None
        return m[key]

    # -- scalars -------------------------------------------------------------------------

    def string(self, value: Any, path: str, fix: str) -> str | None:
        if value is None:
            return None
        if isinstance(value, _Encrypted) or _is_secure_marker(value):
            self.error(path, "is a secret but this key is not secret", "set it with plain `pulumi config set --path`")
            return None
        if not isinstance(value, str) or not value.strip():
            self.error(path, f"expected a non-empty string, got {_kind(value)}", fix)
            return None
        return value.strip()

    def integer(self, value: Any, path: str, default: int, lo: int, hi: int) -> int:
        if value is None:
            return default
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)  # `pulumi config set --path` stores numbers as strings
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.error(path, f"expected an integer in {lo}..{hi}, got {value!r}", f"set a number between {lo} and {hi}")
            return default
        return value

    def boolean(self, value: Any, path: str, default: bool) -> bool:
        if value is None:
            return default
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            self.error(path, f"expected true or false, got {value!r}", "write `true` or `false`")
            return default
        return value

    def choice(self, value: Any, path: str, choices: tuple[str, ...], default: str | None = None) -> str | None:
        if value is None:
            return default
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            self.error(path, f"`{value}` is not one of {', '.join(choices)}", f"use one of {', '.join(choices)}{hint}")
            return None
        return str(value)

    def secret(self, value: Any, path: str, how: str) -> Secret | None:
        """A leaf that must arrive encrypted. `how` is the `pulumi config set` hint."""
        if value is None:
            return None
        set_hint = f"`pulumi config set --secret --path '{path}' ...`{how}"
        if self.secret_paths is None:
            if isinstance(value, _Encrypted) or _is_secure_marker(value):
                return Secret("<encrypted>")
            self.error(path, "given in plain text; secrets must be Pulumi secrets", f"remove it and run {set_hint}")
            return None
        if path not in self.secret_paths:
            self.error(path, "given in plain text; secrets must be Pulumi secrets", f"remove it and run {set_hint}")
            return None
        if not isinstance(value, str) or not value:
            self.error(path, f"expected a non-empty secret string, got {_kind(value)}", f"run {set_hint}")
            return None
        return Secret(value)


def _is_secure_marker(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {"secure"}


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _kind(value: Any) -> str:
    if _is_secure_marker(value) or isinstance(value, _Encrypted):
        return "a secret"
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        int: "a number",
        bool: "a boolean",
        type(None): "nothing",
    }.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------------------------
# Field checks (pure)

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$", re.I
)
HOST_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
_KERNEL_ARG = re.compile(r"^[A-Za-z0-9_.\-]+(=[A-Za-z0-9_.,:/+\-]+)?$")
_TDX_MODULE = re.compile(r"^\d+\.\d+\.\d+$")


def is_valid_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(value)) and not re.fullmatch(r"[\d.]+", value)


def host_key_problem(value: str) -> str | None:
    """Why `value` is not an authorized_keys-style public key, or None."""
    import base64
    import struct

    parts = value.split()
    if len(parts) < 2:
        return "expected `<type> <base64>` as in known_hosts (without the host name)"
    kind, blob = parts[0], parts[1]
    if kind not in HOST_KEY_TYPES:
        return f"unknown key type `{kind}` (expected one of {', '.join(HOST_KEY_TYPES)})"
    try:
        raw = base64.b64decode(blob, validate=True)
        (n,) = struct.unpack(">I", raw[:4])
        inner = raw[4 : 4 + n].decode()
    except Exception:
        return "the key data is not valid base64 SSH wire format"
    if inner != kind:
        return f"the key data says `{inner}` but the type says `{kind}`"
    return None


def normalise_fingerprint(value: str) -> str:
    return value.replace(":", "").strip().lower()


def url_problem(value: str, schemes: tuple[str, ...]) -> str | None:
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in schemes:
        return f"scheme must be {' or '.join(schemes)}, got `{parts.scheme or 'none'}`"
    if not parts.hostname or not is_valid_address(parts.hostname):
        return f"`{parts.hostname or ''}` is not a valid host name or IP address"
    if port is not None and not 0 < port < 65536:
        return f"port {port} out of range"
    return None


def known_gpu_models(firmware_dir: Path = FIRMWARE_DIR) -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in (firmware_dir / "gpu").glob("*.yaml") if p.stem != "gpu-admin-tools"))


def known_bios_vendors(firmware_dir: Path = FIRMWARE_DIR) -> tuple[str, ...]:
    from .bios_tables import list_vendors

    return tuple(list_vendors(firmware_dir))


def known_tdx_modules(firmware_dir: Path = FIRMWARE_DIR) -> tuple[str, ...]:
    data = load_pin_yaml((firmware_dir / "tdx-module.yaml").read_text()) or {}
    return tuple(sorted((data.get("releases") or {}).keys()))


# --------------------------------------------------------------------------------------------
# The schema


_TOP_KEYS = (
    "hosts",
    "gpu",
    "platform",
    "dcap",
    "teeIo",
    "restoreOnDestroy",
    "rebootTimeoutSeconds",
    "promotion",
    "workload",
)


def parse_stack(
    raw: Mapping[str, Any], stack: str, *, secret_paths: Iterable[str] | None = None, firmware_dir: Path = FIRMWARE_DIR
) -> StackConfig:
    """Validate `raw` (config keys without the project prefix) and build a StackConfig.

    `secret_paths`: the key paths Pulumi decrypted (runtime); None means the values still carry
    `{secure: ...}` markers (offline). Raises ConfigErrors listing every problem found.
    """
    r = _Reader(stack, frozenset(secret_paths) if secret_paths is not None else None)
    top = r.obj(raw, "", _TOP_KEYS + tuple(k for k in raw if k.startswith("_")))

    gpu_models = known_gpu_models(firmware_dir)
    default_gpu = _gpu(r, top.get("gpu"), "gpu", gpu_models) if top.get("gpu") is not None else None
    platform = _platform(r, top.get("platform"), "platform", firmware_dir)
    # A workload on Kubernetes runs in the cluster's TDs: such a stack may have no hosts (and then
    # needs no DCAP block). Otherwise at least one host is required.
    wl_raw = top.get("workload")
    k8s_only = isinstance(wl_raw, Mapping) and wl_raw.get("target") == "kubernetes" and top.get("hosts") in (None, [])
    if k8s_only:
        hosts: tuple[HostConfig, ...] = ()
        dcap = _dcap(r, top["dcap"], "dcap") if top.get("dcap") is not None else None
    else:
        dcap = _dcap(
            r, r.required(top, "dcap", "", "add a `dcap:` block with at least `pccsApiKey` (a secret)"), "dcap"
        )
        hosts = _hosts(r, top.get("hosts"), "hosts", gpu_models, known_bios_vendors(firmware_dir), default_gpu)
    tee_io = r.boolean(top.get("teeIo"), "teeIo", False)
    restore = r.boolean(top.get("restoreOnDestroy"), "restoreOnDestroy", False)
    reboot_timeout = r.integer(top.get("rebootTimeoutSeconds"), "rebootTimeoutSeconds", 1800, 60, 7200)
    promotion = _promotion(r, top.get("promotion"), "promotion") if top.get("promotion") is not None else None
    workload = (
        _workload(r, top.get("workload"), "workload", hosts, top.get("hosts"), firmware_dir)
        if top.get("workload") is not None
        else None
    )

    if r.errors:
        raise ConfigErrors(r.errors)
    assert platform is not None and (dcap is not None or not hosts)
    return StackConfig(
        stack=stack,
        hosts=hosts,
        platform=platform,
        dcap=dcap,
        tee_io=tee_io,
        restore_on_destroy=restore,
        reboot_timeout_s=reboot_timeout,
        promotion=promotion,
        workload=workload,
    )


_STACK_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")


def _promotion(r: _Reader, value: Any, path: str) -> PromotionConfig | None:
    m = r.obj(value, path, ("fromStack",))
    fix = f"set `fromStack: organization/{PROJECT}/staging` (file backend) or a bare stack name such as `staging`"
    ref = r.string(r.required(m, "fromStack", path, fix), _join(path, "fromStack"), fix)
    if ref is None:
        return None
    parts = ref.split("/")
    if len(parts) not in (1, 3) or not all(_STACK_NAME.match(p) for p in parts):
        r.error(_join(path, "fromStack"), f"`{ref}` is not a stack reference", fix)
        return None
    if parts[-1] == r.stack and (len(parts) == 1 or parts[1] == PROJECT):
        r.error(
            _join(path, "fromStack"),
            f"`{ref}` is this stack (`{r.stack}`): a stack cannot promote from itself",
            "name the stack whose attested pins this one deploys, e.g. `staging` for `prod`",
        )
        return None
    return PromotionConfig(from_stack=ref)


WORKLOAD_TARGETS: tuple[str, ...] = ("host", "kubernetes")
WORKLOAD_KEYS = ("target", "image", "model", "modelSource", "vllmArgs", "gateway", "knownAnswer", "td", "kubernetes")
# The TD boot manifests in <firmware>/td/: `dev` boots the dev image (serial autologin, software
# quotes allowed), every other stack the prod image, so staging and prod share their pins.
DEV_STACK = "dev"
TD_BOOT_MANIFEST = "ovmf-debian-trixie.yaml"
TD_BOOT_MANIFEST_DEV = "ovmf-debian-trixie-dev.yaml"


def td_boot_manifest(stack: str, firmware_dir: Path = FIRMWARE_DIR) -> Path:
    """The TD boot manifest a stack's TDs launch and its pins are computed from."""
    return firmware_dir / "td" / (TD_BOOT_MANIFEST_DEV if stack == DEV_STACK else TD_BOOT_MANIFEST)


_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def _workload(
    r: _Reader, value: Any, path: str, hosts: tuple[HostConfig, ...], raw_hosts: Any, firmware_dir: Path
) -> WorkloadConfig | None:
    from tdxattest.core.workload import IMAGE_BY_DIGEST

    from .td_definition import DefinitionError, load_boot_manifest

    before = len(r.errors)
    m = r.obj(value, path, WORKLOAD_KEYS)
    if not m:
        return None
    target = r.choice(m.get("target", "host"), _join(path, "target"), WORKLOAD_TARGETS)
    k8s = None
    if target == "kubernetes":
        # The cluster's Kata TDX guest is the TD (components/kubernetes_workload.py, docs/kubernetes.md).
        from .kubernetes_workload import kubernetes_target_from_mapping

        k8s, errors = kubernetes_target_from_mapping(m.get("kubernetes"), _join(path, "kubernetes"), stack=r.stack)
        r.errors.extend(errors)
        if m.get("td") is not None:
            r.error(
                _join(path, "td"),
                "the TD shape is not ours to set with `target: kubernetes` (Kata sizes the TD from the pod's limits)",
                "remove `td:`; set `kubernetes.cpu`/`kubernetes.memory` instead",
            )
    elif m.get("kubernetes") is not None:
        r.error(
            _join(path, "kubernetes"),
            "only used with `target: kubernetes`",
            "set `target: kubernetes`, or remove the block to run the workload in a TD on each host",
        )

    fix_image = (
        "pin the image by digest: `<repository>@sha256:<64 hex>` (`podman pull IMAGE && podman image "
        "inspect --format '{{index .RepoDigests 0}}' IMAGE`); a tag can move"
    )
    image = r.string(r.required(m, "image", path, fix_image), _join(path, "image"), fix_image)
    if image is not None and not IMAGE_BY_DIGEST.match(image):
        r.error(_join(path, "image"), f"`{image}` is not an image reference by digest", fix_image)

    model_path = _join(path, "model")
    mm = r.obj(
        r.required(m, "model", path, "add `model: {id, revision, files}`"), model_path, ("id", "revision", "files")
    )
    fix_id = "the model's repository id, e.g. `Qwen/Qwen2.5-0.5B-Instruct`"
    model_id = r.string(r.required(mm, "id", model_path, fix_id), _join(model_path, "id"), fix_id) if mm else None
    if model_id is not None and not _MODEL_ID.match(model_id):
        r.error(_join(model_path, "id"), f"`{model_id}` is not a model id like `org/name`", fix_id)
    fix_rev = (
        "the model repository's commit id (40 hex, from `git ls-remote` or the hub's commit list); a branch can move"
    )
    revision = (
        r.string(r.required(mm, "revision", model_path, fix_rev), _join(model_path, "revision"), fix_rev)
        if mm
        else None
    )
    if revision is not None and not _COMMIT.match(revision):
        r.error(_join(model_path, "revision"), f"`{revision}` is not a commit id", fix_rev)
    files = _model_files(
        r,
        r.required(
            mm,
            "files",
            model_path,
            "list every file the model needs with its sha256 (`sha256sum` in the downloaded snapshot)",
        )
        if mm
        else None,
        _join(model_path, "files"),
    )

    fix_src = (
        "set the URL the TD downloads the model files from (`<modelSource>/<path>`; `{id}` and `{revision}` "
        "expand), e.g. `https://huggingface.co/{id}/resolve/{revision}`"
    )
    source = r.string(r.required(m, "modelSource", path, fix_src), _join(path, "modelSource"), fix_src)
    if source is not None:
        problem = url_problem(source, ("https", "http"))
        if problem:
            r.error(_join(path, "modelSource"), problem, fix_src + " (the TD checks every file's sha256)")

    args = _vllm_args(r, m.get("vllmArgs"), _join(path, "vllmArgs"))
    gw = r.obj(m.get("gateway"), _join(path, "gateway"), ("port",))
    gateway_port = r.integer(gw.get("port"), _join(path, "gateway.port"), 8443, 1, 65535)

    ka_path = _join(path, "knownAnswer")
    fix_ka = (
        "add `knownAnswer: {prompt: ..., expect: ...}`: a prompt whose greedy answer you know, so a TD that "
        "serves garbage (vLLM under CC, vllm #57224) is caught before it is declared ready"
    )
    ka = r.obj(r.required(m, "knownAnswer", path, fix_ka), ka_path, ("prompt", "expect"))
    # Validated as non-empty strings but kept verbatim: leading spaces matter in a completion.
    prompt = (
        ka.get("prompt")
        if ka and r.string(r.required(ka, "prompt", ka_path, fix_ka), _join(ka_path, "prompt"), fix_ka)
        else None
    )
    expect = (
        ka.get("expect")
        if ka and r.string(r.required(ka, "expect", ka_path, fix_ka), _join(ka_path, "expect"), fix_ka)
        else None
    )

    if target == "kubernetes":
        return _kubernetes_workload(
            r, before, path, k8s, image, model_id, revision, files, source, args, gateway_port, prompt, expect
        )
    boot = None
    try:
        boot = load_boot_manifest(td_boot_manifest(r.stack, firmware_dir))
    except DefinitionError as exc:
        r.error(path, f"the TD boot manifest is unusable: {exc}", "fix the manifest in firmware/td/")
    td = _td_shape(r, m.get("td"), _join(path, "td"), boot)
    if boot is not None and not boot.launchable:
        r.error(
            path,
            f"the TD boot manifest {display_path(boot.path)} cannot launch a TD yet ({'; '.join(boot.gaps)})",
            "pin the guest kernel, initrd and command line in that manifest (docs/trust-domain.md), "
            "or remove `workload` until the guest image is built",
        )

    # One workload per stack: every host runs the same TD shape, so every host needs GPUs, the
    # same number of them (tensorParallelSize is measured), and single-GPU CC mode.
    raw_list = raw_hosts if isinstance(raw_hosts, list) else []
    counts: dict[int, str] = {}
    for h in hosts:
        i = next((n for n, item in enumerate(raw_list) if isinstance(item, Mapping) and item.get("name") == h.name), 0)
        if h.gpu is None:
            r.error(
                f"hosts[{i}].gpu",
                f"host `{h.name}` has no GPUs but `workload` is set",
                "give the host a `gpu:` block (or the stack a default `gpu:`), or remove it from this stack",
            )
            continue
        if h.gpu.mode == "ppcie":
            r.error(
                f"hosts[{i}].gpu.mode",
                "a workload with `ppcie` (8 GPUs + NVSwitches in one TD) is not yet "
                "supported: the TD definition does not pass the NVSwitches through",
                "use `mode: on`",
            )
        counts.setdefault(h.gpu.count, h.name)
    if len(counts) > 1:
        shown = ", ".join(f"`{name}` has {count}" for count, name in sorted(counts.items()))
        r.error(
            "hosts",
            f"hosts with a workload must have the same GPU count (tensorParallelSize is measured into "
            f"RTMR3 and the stack pins one RTMR3): {shown}",
            "give every host the same `gpu.count`",
        )

    if len(r.errors) > before or boot is None or td is None:
        return None
    wl = WorkloadConfig(
        target=str(target),
        image=image,
        model_id=model_id,
        model_revision=revision,  # type: ignore[arg-type]
        model_files=files,
        model_source=source,
        vllm_args=args,
        gateway_port=gateway_port,  # type: ignore[arg-type]
        known_answer=KnownAnswer(prompt=prompt, expect=expect),
        td=td,  # type: ignore[arg-type]
        boot=boot,
    )
    from tdxattest.core.errors import InputError

    try:
        wl.manifest(max(counts) if counts else 1)
    except InputError as exc:  # the manifest library's rules (kept in step with the checks above)
        r.error(path, f"not a valid workload manifest: {exc}", "correct the value named")
        return None
    return wl


def _kubernetes_workload(
    r: _Reader,
    before: int,
    path: str,
    k8s: Any,
    image: Any,
    model_id: Any,
    revision: Any,
    files: tuple[tuple[str, str], ...],
    source: Any,
    args: tuple[str, ...],
    gateway_port: int,
    prompt: Any,
    expect: Any,
) -> WorkloadConfig | None:
    """The rest of `workload` for `target: kubernetes`: the manifest's tensorParallelSize is the
    pod's GPU count, and the Kubernetes target's own rules (components/kubernetes_workload.py)."""
    if isinstance(source, str) and not source.startswith("https://"):
        r.error(
            _join(path, "modelSource"),
            f"`{source}` is not https: the pod fetches the model over the cluster's network, outside the TD",
            "serve the model files over https (every file's sha256 is checked too)",
        )
    if len(r.errors) > before or k8s is None:
        return None
    wl = WorkloadConfig(
        target="kubernetes",
        image=image,
        model_id=model_id,
        model_revision=revision,
        model_files=files,
        model_source=source,
        vllm_args=args,
        gateway_port=gateway_port,
        known_answer=KnownAnswer(prompt=prompt, expect=expect),
        td=None,
        kubernetes=k8s,
    )
    from tdxattest.core.errors import InputError

    # The Kubernetes target's own render checks (kubernetes_workload.workload_problems) hold by now:
    # images by digest and vLLM arguments are checked above, gpuCount is the manifest's tensor
    # parallel size by construction, and model.files is required.
    try:
        wl.manifest(k8s.gpu_count)
    except InputError as exc:
        r.error(path, f"not a valid workload manifest: {exc}", "correct the value named")
        return None
    return wl


def _model_files(r: _Reader, value: Any, path: str) -> tuple[tuple[str, str], ...]:
    fix = "map each file's path in the model snapshot to its sha256, e.g. `model.safetensors: <64 hex>`"
    if value is None:
        return ()
    if not isinstance(value, Mapping) or not value or _is_secure_marker(value):
        r.error(path, f"expected a non-empty mapping of file path to sha256, got {_kind(value)}", fix)
        return ()
    out = []
    for name, sha in value.items():
        fp = f"{path}[{name!r}]" if not re.fullmatch(r"[A-Za-z0-9_.\-/]+", str(name)) else _join(path, name)
        parts = str(name).split("/")
        if (
            not isinstance(name, str)
            or not name
            or name.startswith("/")
            or "\\" in name
            or any(p in ("", ".", "..") for p in parts)
        ):
            r.error(
                fp,
                f"`{name}` is not a relative path inside the model directory",
                "use the path as in the snapshot, without `..`, `.`, empty or absolute parts",
            )
            continue
        if not isinstance(sha, str) or not _SHA256_HEX.match(sha.strip().lower()):
            r.error(fp, f"expected a sha256 (64 hex digits), got {sha!r}", "use the `sha256sum` of the file")
            continue
        out.append((name, sha.strip().lower()))
    return tuple(sorted(out))


def _vllm_args(r: _Reader, value: Any, path: str) -> tuple[str, ...]:
    from tdxattest.core.workload import refused_vllm_arg

    if value is None:
        return ()
    if not isinstance(value, list):
        r.error(
            path,
            f"expected a list of arguments, got {_kind(value)}",
            'write it as a YAML list: `[--max-model-len, "8192"]`',
        )
        return ()
    out = []
    for i, arg in enumerate(value):
        if isinstance(arg, (int, float)) and not isinstance(arg, bool):
            arg = str(arg)
        if not isinstance(arg, str) or not arg:
            r.error(f"{path}[{i}]", f"expected a string, got {_kind(arg)}", "quote the argument")
            continue
        reason = refused_vllm_arg(arg)
        if reason is not None:
            r.error(f"{path}[{i}]", f"refused: {reason}", "remove it")
            continue
        out.append(arg)
    return tuple(out)


def _td_shape(r: _Reader, value: Any, path: str, boot: Any) -> TdShape | None:
    """`workload.td`; `boot` is the TD boot manifest (td_definition.BootManifest), None when
    unusable (reported by the caller)."""
    m = r.obj(value, path, ("vcpus", "memoryMiB", "artifactSource", "readyTimeoutSeconds", "dataDiskGiB"))
    want = {"vcpus": boot.vcpus, "memoryMiB": boot.memory_mib} if boot is not None else {}
    shape = {}
    for key, lo, hi in (("vcpus", 1, 512), ("memoryMiB", 1024, 4 * 1024 * 1024)):
        shape[key] = r.integer(m.get(key), _join(path, key), want.get(key, lo), lo, hi)
        if m.get(key) is not None and want and shape[key] != want[key]:
            r.error(
                _join(path, key),
                f"{shape[key]} differs from `vm.{key}: {want[key]}` in the TD boot manifest "
                f"{display_path(boot.path)} (RTMR0 and RTMR1 are computed for that VM shape)",
                f"set {want[key]}, or change `vm.{key}` in the manifest and capture its ACPI digests again",
            )
    fix_src = (
        "set where the host fetches the TD boot artifacts (the manifest's `file` names under it): "
        "an `https://` base URL, or an absolute directory on the host"
    )
    source = r.string(r.required(m, "artifactSource", path, fix_src), _join(path, "artifactSource"), fix_src)
    if source is not None and not source.startswith("/"):
        problem = url_problem(source, ("https", "http"))
        if problem:
            r.error(_join(path, "artifactSource"), problem, fix_src + " (the host checks every file's sha256)")
    if source is not None and re.search(r"[\s'\"\\]", source):
        r.error(_join(path, "artifactSource"), "contains spaces, quotes or backslashes", fix_src)
    timeout = r.integer(m.get("readyTimeoutSeconds"), _join(path, "readyTimeoutSeconds"), 3600, 60, 86400)
    data_disk = r.integer(m.get("dataDiskGiB"), _join(path, "dataDiskGiB"), 0, 0, 65536)
    if source is None:
        return None
    return TdShape(
        vcpus=shape["vcpus"],
        memory_mib=shape["memoryMiB"],
        artifact_source=source.rstrip("/") or "/",
        ready_timeout_s=timeout,
        data_disk_gib=data_disk,
    )


def _hosts(
    r: _Reader,
    value: Any,
    path: str,
    gpu_models: tuple[str, ...],
    vendors: tuple[str, ...],
    default_gpu: GpuConfig | None,
) -> tuple[HostConfig, ...]:
    if value is None or value == []:
        r.error(path, "required: at least one host", "add a `hosts:` list (see stacks/Pulumi.dev.yaml)")
        return ()
    if not isinstance(value, list):
        r.error(path, f"expected a list of hosts, got {_kind(value)}", "write `hosts:` as a YAML list (`- name: ...`)")
        return ()
    hosts: list[HostConfig] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(value):
        hp = f"{path}[{i}]"
        m = r.obj(item, hp, ("name", "ssh", "bmc", "gpu"))
        name = r.string(
            r.required(m, "name", hp, "give the host a short name, e.g. `gpu-a`"),
            _join(hp, "name"),
            "use lowercase letters, digits and dashes",
        )
        if name is not None:
            if not HOST_NAME.match(name):
                r.error(
                    _join(hp, "name"),
                    f"`{name}` is not a valid host name",
                    "use 1-32 lowercase letters, digits and dashes (it names Pulumi resources)",
                )
            elif name in seen:
                r.error(
                    _join(hp, "name"),
                    f"duplicate host name `{name}` (also hosts[{seen[name]}])",
                    "give every host a unique name",
                )
            else:
                seen[name] = i
        ssh = _ssh(
            r, r.required(m, "ssh", hp, "add an `ssh:` block with address, hostKey and privateKey"), _join(hp, "ssh")
        )
        bmc = _bmc(r, m.get("bmc"), _join(hp, "bmc"), vendors) if m.get("bmc") is not None else None
        gpu = _gpu(r, m.get("gpu"), _join(hp, "gpu"), gpu_models) if m.get("gpu") is not None else default_gpu
        if ssh is not None and name is not None:
            hosts.append(HostConfig(name=name, ssh=ssh, bmc=bmc, gpu=gpu))
    return tuple(hosts)


def _ssh(r: _Reader, value: Any, path: str) -> SshConfig | None:
    if value is None:
        return None
    m = r.obj(value, path, ("address", "port", "user", "hostKey", "privateKey"))
    address = r.string(
        r.required(m, "address", path, "set the host's IP address or DNS name"),
        _join(path, "address"),
        "set the host's IP address or DNS name",
    )
    if address is not None and not is_valid_address(address):
        r.error(
            _join(path, "address"),
            f"`{address}` is not a valid IP address or host name",
            "use an IPv4/IPv6 address or a DNS name such as gpu-a.example.net",
        )
    port = r.integer(m.get("port"), _join(path, "port"), 22, 1, 65535)
    user = r.string(m.get("user", "root"), _join(path, "user"), "set the SSH user (root or a sudoer)") or "root"
    host_key = None
    if "hostKey" not in m or m["hostKey"] is None:
        r.error(
            _join(path, "hostKey"),
            "required: the host key must be pinned (no trust on first use)",
            "copy it from the console (`cat /etc/ssh/ssh_host_ed25519_key.pub`) or `ssh-keyscan -t ed25519 HOST`"
            " and set `hostKey: ssh-ed25519 AAAA...`",
        )
    else:
        host_key = r.string(m["hostKey"], _join(path, "hostKey"), "set `ssh-ed25519 AAAA...`")
        problem = host_key_problem(host_key) if host_key else None
        if problem:
            r.error(_join(path, "hostKey"), problem, "paste the public host key as `ssh-ed25519 AAAA...`")
    private_key = r.secret(
        r.required(
            m,
            "privateKey",
            path,
            f"run `pulumi config set --secret --path '{_join(path, 'privateKey')}' < ~/.ssh/id_ed25519`",
        ),
        _join(path, "privateKey"),
        " < ~/.ssh/id_ed25519",
    )
    if address is None or host_key is None or private_key is None:
        return None
    return SshConfig(
        address=address, port=port, user=user, host_key=" ".join(host_key.split()[:2]), private_key=private_key
    )


def _bmc(r: _Reader, value: Any, path: str, vendors: tuple[str, ...]) -> BmcConfig | None:
    before = len(r.errors)
    m = r.obj(value, path, ("endpoint", "vendor", "username", "password", "tlsFingerprint", "caFile", "system"))
    endpoint = r.string(
        r.required(m, "endpoint", path, "set `endpoint: https://BMC-ADDRESS`"),
        _join(path, "endpoint"),
        "set `endpoint: https://BMC-ADDRESS`",
    )
    if endpoint is not None:
        problem = url_problem(endpoint, ("https",))
        if problem:
            r.error(
                _join(path, "endpoint"),
                problem,
                "use `https://BMC-ADDRESS[:PORT]` (plain http would expose the BMC password)",
            )
    vendor = r.choice(
        r.required(m, "vendor", path, f"set one of: {', '.join(vendors)}"), _join(path, "vendor"), vendors
    )
    username = r.secret(r.required(m, "username", path, "set the BMC user as a secret"), _join(path, "username"), "")
    password = r.secret(
        r.required(m, "password", path, "set the BMC password as a secret"), _join(path, "password"), ""
    )
    fingerprint = r.string(
        m.get("tlsFingerprint"), _join(path, "tlsFingerprint"), "set the SHA-256 of the BMC certificate"
    )
    if fingerprint is not None:
        fingerprint = normalise_fingerprint(fingerprint)
        if not _FINGERPRINT.match(fingerprint):
            r.error(
                _join(path, "tlsFingerprint"),
                "expected a SHA-256 fingerprint (64 hex digits, colons allowed)",
                "run `openssl s_client -connect BMC:443 </dev/null | openssl x509 -noout -fingerprint -sha256`",
            )
    ca_file = r.string(
        m.get("caFile"), _join(path, "caFile"), "set the path of the CA bundle that signs the BMC certificate"
    )
    if fingerprint is None and ca_file is None:
        r.error(
            path,
            "the BMC's TLS certificate is not pinned",
            "set `tlsFingerprint` (SHA-256 of the BMC certificate) or `caFile` (a CA bundle)",
        )
    system = r.string(m.get("system"), _join(path, "system"), "set the Redfish system path, e.g. /redfish/v1/Systems/1")
    if system is not None and not system.startswith("/redfish/v1/Systems/"):
        r.error(
            _join(path, "system"),
            f"`{system}` is not a Redfish system path",
            "use the full path, e.g. /redfish/v1/Systems/System.Embedded.1 (a bare id is not accepted)",
        )
    if len(r.errors) > before:
        return None
    return BmcConfig(
        endpoint=endpoint,
        vendor=vendor,
        username=username,
        password=password,  # type: ignore[arg-type]
        tls_fingerprint=fingerprint,
        ca_file=ca_file,
        system=system,
    )


def _gpu(r: _Reader, value: Any, path: str, models: tuple[str, ...]) -> GpuConfig | None:
    m = r.obj(value, path, ("model", "count", "mode"))
    model = r.choice(r.required(m, "model", path, f"set one of: {', '.join(models)}"), _join(path, "model"), models)
    count = r.integer(m.get("count"), _join(path, "count"), 1, 1, 16)
    mode = r.choice(m.get("mode", "on"), _join(path, "mode"), GPU_MODES)
    if mode == "devtools" and r.stack != DEV_STACK:
        r.error(
            _join(path, "mode"),
            f"`devtools` unblocks GPU debugging and is refused outside the `dev` stack (this is `{r.stack}`)",
            "use `on` (one GPU per TD) or `ppcie` (8 Hopper GPUs + NVSwitch)",
        )
    if mode == "ppcie" and count != 8:
        r.error(
            _join(path, "count"),
            f"PPCIe needs all 8 Hopper GPUs in one TD, got {count}",
            "set `count: 8`, or use `mode: on` for single-GPU TDs",
        )
    if model is None or mode is None:
        return None
    return GpuConfig(model=model, count=count, mode=mode)  # type: ignore[arg-type]


def _platform(r: _Reader, value: Any, path: str, firmware_dir: Path) -> PlatformConfig | None:
    m = r.obj(value, path, ("os", "extraKernelArgs", "tdxModule"))
    os_name = r.choice(m.get("os", "ubuntu-26.04"), _join(path, "os"), SUPPORTED_OS) or "ubuntu-26.04"
    args_value = m.get("extraKernelArgs") or []
    extra: list[str] = []
    if not isinstance(args_value, list):
        r.error(
            _join(path, "extraKernelArgs"),
            f"expected a list, got {_kind(args_value)}",
            "write it as a YAML list: `[modprobe.blacklist=nouveau]`",
        )
    else:
        for i, arg in enumerate(args_value):
            ap = f"{_join(path, 'extraKernelArgs')}[{i}]"
            if not isinstance(arg, str) or not _KERNEL_ARG.match(arg):
                r.error(
                    ap,
                    f"`{arg}` is not a single kernel argument",
                    "use `name` or `name=value` without spaces or quotes",
                )
            elif arg.startswith("kvm_intel.tdx=") and arg != "kvm_intel.tdx=1":
                r.error(ap, f"`{arg}` would turn TDX off", "remove it; `kvm_intel.tdx=1` is always set")
            else:
                extra.append(arg)
    tdx_module = r.string(m.get("tdxModule"), _join(path, "tdxModule"), "set a version such as 1.5.34")
    if tdx_module is not None:
        known = known_tdx_modules(firmware_dir)
        if not _TDX_MODULE.match(tdx_module) or tdx_module not in known:
            r.error(
                _join(path, "tdxModule"),
                f"`{tdx_module}` is not a pinned TDX module release",
                f"use one of {', '.join(known)} or add the release to firmware/tdx-module.yaml",
            )
    return PlatformConfig(os=os_name, extra_kernel_args=tuple(extra), tdx_module=tdx_module)


def _dcap(r: _Reader, value: Any, path: str) -> DcapConfig | None:
    if value is None:
        return None
    m = r.obj(value, path, ("pccsApiKey", "registration", "pccsPort", "qgsPort", "pccsUrl", "useSecureCert"))
    key = r.secret(
        r.required(
            m,
            "pccsApiKey",
            path,
            "run `pulumi config set --secret --path 'dcap.pccsApiKey' KEY` with your Intel PCS subscription key",
        ),
        _join(path, "pccsApiKey"),
        " KEY",
    )
    registration = r.choice(m.get("registration", "mpa"), _join(path, "registration"), REGISTRATION_METHODS) or "mpa"
    pccs_port = r.integer(m.get("pccsPort"), _join(path, "pccsPort"), 8081, 1, 65535)
    qgs_port = r.integer(m.get("qgsPort"), _join(path, "qgsPort"), 4050, 1, 65535)
    pccs_url = r.string(m.get("pccsUrl"), _join(path, "pccsUrl"), "set `https://PCCS:8081/sgx/certification/v4/`")
    if pccs_url is not None:
        problem = url_problem(pccs_url, ("https",))
        if problem:
            r.error(_join(path, "pccsUrl"), problem, "use `https://PCCS-HOST:8081/sgx/certification/v4/`")
    # A per-host PCCS listens on loopback only and serves Intel-signed collateral with the
    # self-signed certificate its package generates: verification is off by default there. A
    # shared PCCS crosses the network: its certificate must verify outside `dev`.
    secure = r.boolean(m.get("useSecureCert"), _join(path, "useSecureCert"), pccs_url is not None)
    if not secure and pccs_url is not None and r.stack != DEV_STACK:
        r.error(
            _join(path, "useSecureCert"),
            f"TLS verification of the shared PCCS at dcap.pccsUrl may only be off in `dev` (this is `{r.stack}`)",
            "give the PCCS a certificate the hosts trust and set `useSecureCert: true`",
        )
    if key is None:
        return None
    return DcapConfig(
        pccs_api_key=key,
        registration=registration,
        pccs_port=pccs_port,
        qgs_port=qgs_port,
        pccs_url=pccs_url,
        use_secure_cert=secure,
    )


# --------------------------------------------------------------------------------------------
# Input sources


def stack_from_filename(path: Path) -> str:
    m = re.fullmatch(r"Pulumi\.(.+)\.yaml", path.name)
    if not m:
        raise ValueError(f"{path}: expected a stack file named Pulumi.<stack>.yaml")
    return m.group(1)


def read_stack_file(path: Path) -> Mapping[str, Any]:
    """The stack file's `config:` with the project prefix removed and secure leaves as ENCRYPTED."""
    doc = yaml.safe_load(path.read_text()) or {}
    config = doc.get("config") or {}
    out: dict[str, Any] = {}
    for key, value in config.items():
        ns, _, name = str(key).partition(":")
        if ns != PROJECT or not name:
            out[f"_{key}"] = value  # other namespaces (e.g. pulumi:*) are not ours to check
            continue
        out[name] = _mark_encrypted(value)
    return out


def _mark_encrypted(value: Any) -> Any:
    if _is_secure_marker(value):
        return ENCRYPTED
    if isinstance(value, Mapping):
        return {k: _mark_encrypted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mark_encrypted(v) for v in value]
    return value


def secret_paths_of(value: Any, prefix: str = "") -> set[str]:
    """Key paths (as used in error messages) of every ENCRYPTED leaf."""
    if value is ENCRYPTED:
        return {prefix}
    paths: set[str] = set()
    if isinstance(value, Mapping):
        for k, v in value.items():
            paths |= secret_paths_of(v, _join(prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            paths |= secret_paths_of(v, f"{prefix}[{i}]")
    return paths


def load_stack_file(path: Path, firmware_dir: Path = FIRMWARE_DIR) -> StackConfig:
    raw = read_stack_file(path)
    return parse_stack(
        {k: v for k, v in raw.items() if not k.startswith("_")}, stack_from_filename(path), firmware_dir=firmware_dir
    )


def load_from_pulumi(stack_file_dir: Path = REPO_ROOT / "stacks") -> StackConfig:
    """Read the running stack's decrypted config and validate it (used by __main__.py)."""
    import json

    import pulumi
    from pulumi.runtime import config as rt_config

    stack = pulumi.get_stack()
    config = pulumi.Config(PROJECT)
    raw: dict[str, Any] = {}
    secret_top: set[str] = set()
    for key in _TOP_KEYS:
        text = config.get(key)
        if text is None:
            continue
        try:
            raw[key] = json.loads(text)
        except json.JSONDecodeError:
            raw[key] = text
        if rt_config.is_config_secret(f"{PROJECT}:{key}"):
            secret_top.add(key)
    # Pulumi tells us only which top-level keys hold secrets; the stack file says which leaves.
    stack_file = stack_file_dir / f"Pulumi.{stack}.yaml"
    if stack_file.exists():
        leaves = secret_paths_of({k: v for k, v in read_stack_file(stack_file).items() if not k.startswith("_")})
    else:
        leaves = {p for p in _all_leaf_paths(raw) if p.split(".")[0].split("[")[0] in secret_top}
    return parse_stack(raw, stack, secret_paths=leaves)


def _all_leaf_paths(value: Any, prefix: str = "") -> set[str]:
    if isinstance(value, Mapping):
        return set().union(*(_all_leaf_paths(v, _join(prefix, k)) for k, v in value.items())) if value else set()
    if isinstance(value, list):
        return set().union(*(_all_leaf_paths(v, f"{prefix}[{i}]") for i, v in enumerate(value))) if value else set()
    return {prefix}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m components.config stacks/Pulumi.<stack>.yaml", file=sys.stderr)
        return 2
    path = Path(args[0])
    try:
        cfg = load_stack_file(path)
    except ConfigErrors as exc:
        print(f"{path}: {exc.render()}", file=sys.stderr)
        return 1
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"{path}: cannot read the stack file: {exc}", file=sys.stderr)
        return 1
    print(f"{path}: valid ({len(cfg.hosts)} host{'s' if len(cfg.hosts) != 1 else ''}, stack `{cfg.stack}`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
