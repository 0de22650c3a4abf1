"""The Kubernetes target: vLLM and the attested gateway in one Confidential Containers pod (= one TD).

With `workload.target: kubernetes` the workload goes to an existing cluster that runs Confidential
Containers with Kata's TDX runtime class and the NVIDIA GPU operator in CC mode (docs/kubernetes.md).
This module has three layers, each usable on its own:

* `kubernetes_target_from_mapping(doc, path)`: the `workload.kubernetes` stack config block, parsed
  into a frozen `KubernetesTarget` in the style of components/config.py (every error: key path,
  problem, fix; unknown keys get a did-you-mean); `args_from_workload` builds the component's
  arguments from the stack's validated `workload`.
* `render_manifests(args)`: pure; the Namespace, Deployment and Service as plain Kubernetes dicts,
  exactly what the component creates (tests validate them offline with kubernetes-validate).
* `KubernetesWorkload`: the ComponentResource that creates those objects with pulumi_kubernetes and
  exports `endpoint` and `pins`.

What binds the workload to the TD (details and sources in docs/kubernetes.md):

* The pod carries Kata init data (`io.katacontainers.config.hypervisor.cc_init_data`: base64 of a
  gzip'd TOML with `version = "0.1.0"`, `algorithm = "sha384"` and a `[data]` string map). Kata puts
  the digest of that TOML, hashed with `algorithm` and fitted to 48 bytes, into the TD's
  MRCONFIGID, and the guest components (Kata agent + attestation agent) refuse to start the pod
  when the TOML they received does not hash to that launch value. Our TOML's `[data]` holds the workload manifest (canonical JSON) and
  its SHA-384, so `pins.mrconfigid` = SHA-384(TOML bytes) proves the manifest claim, and the
  (optional, required outside `dev`) agent policy in the same TOML is what makes the guest enforce it.
* MRTD and RTMR0-2 come from the configured `referenceValues`: the cluster's Kata guest image
  (firmware, kernel, command line, rootfs) defines the TD, not this program.
* RTMR3 is not pinned: in a Kata guest it is extended by the CoCo guest components (attestation
  agent runtime events), in an order and with content this program neither controls nor computes.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pulumi
from tdxattest.core.quote import TD_ATTR_DEBUG
from tdxattest.core.workload import IMAGE_BY_DIGEST, WorkloadManifest, image_digest, model_sha256, refused_vllm_arg

from .config import DEV_STACK, ConfigError, KnownAnswer, _join, _Reader
from .paths import REPO_ROOT

# --------------------------------------------------------------------------------------------
# Constants (sources in docs/kubernetes.md)

# NVIDIA's runtime class for confidential GPU pods on Intel TDX, installed by the kata-deploy chart.
# `kata-qemu-nvidia-gpu` (no suffix) is the non-confidential class: it does not start the GPU in CC mode.
DEFAULT_RUNTIME_CLASS = "kata-qemu-nvidia-gpu-tdx"
# The extended resource the NVIDIA Kata sandbox device plugin advertises for a passthrough GPU
# (P_GPU_ALIAS can rename it per model; `nvidia.com/gpu` is the name of the non-Kata device plugin).
DEFAULT_GPU_RESOURCE = "nvidia.com/pgpu"
NON_CONFIDENTIAL_RUNTIME_CLASSES = frozenset(
    {"runc", "kata", "kata-qemu", "kata-clh", "kata-fc", "kata-qemu-nvidia-gpu", "kata-qemu-coco-dev"}
)

INITDATA_ANNOTATION = "io.katacontainers.config.hypervisor.cc_init_data"
INITDATA_VERSION = "0.1.0"
INITDATA_ALGORITHM = "sha384"
INITDATA_MANIFEST_KEY = "tdx-vllm-workload.json"
INITDATA_DIGEST_KEY = "tdx-vllm-workload.sha384"
INITDATA_POLICY_KEY = "policy.rego"  # the Kata agent policy the guest enforces

MANIFEST_ANNOTATION = "tdx-vllm.io/workload-manifest-sha384"
PINS_PROFILE = "kubernetes-kata-tdx"
RTMR3_REASON = (
    "Kata guest: RTMR3 is extended by the Confidential Containers guest components (attestation "
    "agent runtime events) in an order this program does not control; the workload manifest is "
    "bound through MRCONFIGID (init data) instead"
)

VLLM_PORT = 8000
GATEWAY_PORT = 8443
MODEL_DIR = "/models/model"
DEFAULT_MODEL_URL = "https://huggingface.co/{id}/resolve/{revision}/{path}"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_RESOURCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_MEMORY = re.compile(r"^[1-9][0-9]*(Ki|Mi|Gi|Ti)$")
_CPU = re.compile(r"^([1-9][0-9]*|[1-9][0-9]*m|[0-9]+\.[0-9]+)$")
_HEX48 = re.compile(r"^[0-9a-f]{96}$")
_HEX8 = re.compile(r"^[0-9a-f]{16}$")
SERVICE_TYPES: tuple[str, ...] = ("ClusterIP", "NodePort", "LoadBalancer")
REFERENCE_REGISTERS: tuple[str, ...] = ("mrtd", "rtmr0", "rtmr1", "rtmr2")


class KubernetesWorkloadError(ValueError):
    """Arguments that cannot be rendered into a safe pod (each message names the fix)."""


# --------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class ReferenceValues:
    """The Kata guest's expected registers (lowercase hex): they become the pins."""

    mrtd: str
    rtmr0: str
    rtmr1: str
    rtmr2: str
    td_attributes: str | None = None  # the quote's TD_ATTRIBUTES bytes (16 hex), when known


@dataclass(frozen=True)
class KubernetesTarget:
    namespace: str
    gateway_image: str  # runs `python -m tdxattest gateway`; by digest only
    reference_values: ReferenceValues
    name: str = "vllm"  # Deployment/Service name and label
    create_namespace: bool = True
    runtime_class_name: str = DEFAULT_RUNTIME_CLASS
    gpu_count: int = 1  # GPUs in the one TD; must equal tensorParallelSize
    gpu_resource: str = DEFAULT_GPU_RESOURCE
    memory: str = "64Gi"  # vLLM container limit: Kata sizes the TD's RAM from limits
    cpu: str = "8"
    model_cache_size: str | None = None  # sizeLimit of the in-TD (memory-backed) model volume
    service_type: str = "ClusterIP"
    service_port: int = GATEWAY_PORT
    node_port: int | None = None
    kubeconfig: str | None = None  # a kubeconfig file path; None = the ambient one
    context: str | None = None
    agent_policy_file: str | None = None
    agent_policy: str | None = field(default=None, repr=False)  # the Rego text, read at parse time


@dataclass(frozen=True)
class ModelSource:
    """Where the in-TD fetcher downloads each manifest file; placeholders {id}, {revision}, {path}.
    Only integrity matters (every file is checked against its pinned SHA-256 inside the TD)."""

    url_template: str = DEFAULT_MODEL_URL


@dataclass(frozen=True)
class KubernetesWorkloadArgs:
    manifest: WorkloadManifest
    target: KubernetesTarget
    known_answer: KnownAnswer
    model_source: ModelSource = ModelSource()


# --------------------------------------------------------------------------------------------
# Config parsing (pure; errors in components/config.py's style)

_TARGET_KEYS = (
    "namespace",
    "name",
    "createNamespace",
    "runtimeClassName",
    "gatewayImage",
    "gpuCount",
    "gpuResource",
    "memory",
    "cpu",
    "modelCacheSize",
    "service",
    "kubeconfig",
    "context",
    "agentPolicyFile",
    "referenceValues",
)
_SERVICE_KEYS = ("type", "port", "nodePort")
_REFERENCE_KEYS = REFERENCE_REGISTERS + ("tdAttributes",)
_REFERENCE_FIX = (
    "copy the Kata guest's reference values for this kata-deploy release (what your Trustee/RVPS "
    "holds for the runtime class, or `mr_td`/`rt_mr0..2` of a first quote from a test pod)"
)


def kubernetes_target_from_mapping(
    doc: Any, path: str = "workload.kubernetes", *, stack: str | None = None, base_dir: Path = REPO_ROOT
) -> tuple[KubernetesTarget | None, list[ConfigError]]:
    """Parse the `workload.kubernetes` block. Returns (target or None, every error found).

    `stack`: when given and not `dev`, an agent policy is required (without one the untrusted host
    can exec into the TD or add containers to it). `base_dir`: where relative file paths resolve."""
    r = _Reader(stack or "", None)
    if doc is None:
        r.error(
            path,
            "required for `target: kubernetes`",
            "add the block with at least `gatewayImage` and `referenceValues` (docs/kubernetes.md)",
        )
        return None, r.errors
    m = r.obj(doc, path, _TARGET_KEYS)
    if not m:
        if isinstance(doc, Mapping):
            r.required(m, "gatewayImage", path, "set the gateway image by digest")
        return None, r.errors

    namespace = _label(r, m.get("namespace", "tdx-vllm"), _join(path, "namespace"), "a namespace")
    name = _label(r, m.get("name", "vllm"), _join(path, "name"), "the Deployment/Service name", max_len=40)
    create_ns = r.boolean(m.get("createNamespace"), _join(path, "createNamespace"), True)

    rc_path = _join(path, "runtimeClassName")
    runtime_class = r.string(
        m.get("runtimeClassName", DEFAULT_RUNTIME_CLASS), rc_path, f"use `{DEFAULT_RUNTIME_CLASS}`"
    )
    if runtime_class is not None:
        if not _DNS_SUBDOMAIN.match(runtime_class):
            r.error(rc_path, f"`{runtime_class}` is not a valid RuntimeClass name", f"use `{DEFAULT_RUNTIME_CLASS}`")
            runtime_class = None
        elif runtime_class in NON_CONFIDENTIAL_RUNTIME_CLASSES or "tdx" not in runtime_class:
            r.error(
                rc_path,
                f"`{runtime_class}` is not a Kata TDX runtime class: the pod would not run in a TD "
                "(or the GPU would not be in CC mode)",
                f"use `{DEFAULT_RUNTIME_CLASS}` (NVIDIA kata-deploy) or your cluster's Kata TDX class",
            )
            runtime_class = None

    gi_path = _join(path, "gatewayImage")
    gateway_image = r.string(
        r.required(
            m,
            "gatewayImage",
            path,
            "set the image that runs `python -m tdxattest gateway`, by digest: `REPOSITORY@sha256:<64 hex>`",
        ),
        gi_path,
        "set `REPOSITORY@sha256:<64 hex>`",
    )
    if gateway_image is not None and not IMAGE_BY_DIGEST.match(gateway_image):
        r.error(
            gi_path,
            f"`{gateway_image}` is not an image pinned by digest (a tag can move)",
            "use `REPOSITORY@sha256:<64 lowercase hex>` (`crane digest IMAGE:TAG` or "
            "`podman inspect --format '{{.Digest}}'`)",
        )
        gateway_image = None

    gpu_count = r.integer(m.get("gpuCount"), _join(path, "gpuCount"), 1, 1, 8)
    gr_path = _join(path, "gpuResource")
    gpu_resource = r.string(m.get("gpuResource", DEFAULT_GPU_RESOURCE), gr_path, f"use `{DEFAULT_GPU_RESOURCE}`")
    if gpu_resource is not None and not _RESOURCE_NAME.match(gpu_resource):
        r.error(
            gr_path,
            f"`{gpu_resource}` is not an extended resource name",
            f"use `{DEFAULT_GPU_RESOURCE}` (NVIDIA Kata sandbox device plugin) or the P_GPU_ALIAS name",
        )
        gpu_resource = None

    memory = _quantity(r, m.get("memory", "64Gi"), _join(path, "memory"), _MEMORY, "a memory size such as `64Gi`")
    cpu = _quantity(r, m.get("cpu", "8"), _join(path, "cpu"), _CPU, "a CPU count such as `8` or `7500m`")
    cache = (
        _quantity(
            r,
            m.get("modelCacheSize"),
            _join(path, "modelCacheSize"),
            _MEMORY,
            "a size such as `20Gi` (at least the model's files)",
        )
        if m.get("modelCacheSize") is not None
        else None
    )

    service_type, service_port, node_port = _service(r, m.get("service"), _join(path, "service"))

    kubeconfig = r.string(
        m.get("kubeconfig"),
        _join(path, "kubeconfig"),
        "set the path of a kubeconfig file (or leave it out to use $KUBECONFIG)",
    )
    context = r.string(m.get("context"), _join(path, "context"), "set a context name from the kubeconfig")

    policy_file, policy = _agent_policy(r, m.get("agentPolicyFile"), _join(path, "agentPolicyFile"), base_dir)
    # A null or empty value counts as missing (the parse errors of a bad value are already reported).
    if policy_file is None and m.get("agentPolicyFile") in (None, "") and stack is not None and stack != DEV_STACK:
        r.error(
            _join(path, "agentPolicyFile"),
            f"required outside the `dev` stack (this is `{stack}`): without an agent policy in the init data "
            "the untrusted host can exec into the TD or start other containers in it",
            "generate one with Kata's `genpolicy` from `python -m components.kubernetes_workload` output "
            "(docs/kubernetes.md) and set `agentPolicyFile: policy/kata/<name>.rego`",
        )

    refs = _reference_values(r, r.required(m, "referenceValues", path, _REFERENCE_FIX), _join(path, "referenceValues"))

    if r.errors:
        return None, r.errors
    assert namespace and name and runtime_class and gateway_image and gpu_resource and memory and cpu and refs
    return KubernetesTarget(
        namespace=namespace,
        name=name,
        create_namespace=create_ns,
        runtime_class_name=runtime_class,
        gateway_image=gateway_image,
        gpu_count=gpu_count,
        gpu_resource=gpu_resource,
        memory=memory,
        cpu=cpu,
        model_cache_size=cache,
        service_type=service_type,
        service_port=service_port,
        node_port=node_port,
        kubeconfig=kubeconfig,
        context=context,
        agent_policy_file=policy_file,
        agent_policy=policy,
        reference_values=refs,
    ), []


def _label(r: _Reader, value: Any, path: str, what: str, max_len: int = 63) -> str | None:
    text = r.string(value, path, f"set {what}: lowercase letters, digits and dashes")
    if text is not None and (not _DNS_LABEL.match(text) or len(text) > max_len):
        r.error(
            path,
            f"`{text}` is not a valid name (RFC 1123 label, at most {max_len} characters)",
            "use lowercase letters, digits and dashes, starting and ending with a letter or digit",
        )
        return None
    return text


def _quantity(r: _Reader, value: Any, path: str, pattern: re.Pattern, what: str) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = r.string(value, path, f"set {what}")
    if text is not None and not pattern.match(text):
        r.error(path, f"`{text}` is not {what}", f"write {what}")
        return None
    return text


def _service(r: _Reader, value: Any, path: str) -> tuple[str, int, int | None]:
    m = r.obj(value, path, _SERVICE_KEYS)
    stype = r.choice(m.get("type", "ClusterIP"), _join(path, "type"), SERVICE_TYPES) or "ClusterIP"
    port = r.integer(m.get("port"), _join(path, "port"), GATEWAY_PORT, 1, 65535)
    node_port = None
    if m.get("nodePort") is not None:
        if stype != "NodePort":
            r.error(
                _join(path, "nodePort"),
                f"only used with `type: NodePort` (this is `{stype}`)",
                "remove it, or set `type: NodePort`",
            )
        else:
            node_port = r.integer(m.get("nodePort"), _join(path, "nodePort"), 0, 30000, 32767) or None
    return stype, port, node_port


def _agent_policy(r: _Reader, value: Any, path: str, base_dir: Path) -> tuple[str | None, str | None]:
    text = r.string(value, path, "set the path of a Rego file (Kata agent policy)")
    if text is None:
        return None, None
    file = Path(text) if Path(text).is_absolute() else base_dir / text
    try:
        rego = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        r.error(
            path,
            f"cannot read `{text}` ({getattr(exc, 'strerror', None) or exc})",
            "give a readable UTF-8 Rego file, relative to the repository root or absolute",
        )
        return None, None
    if "package agent_policy" not in rego:
        r.error(
            path,
            f"`{text}` is not a Kata agent policy (no `package agent_policy`)",
            "generate it with Kata's `genpolicy` (docs/kubernetes.md)",
        )
        return None, None
    return text, rego


def _yaml_number(r: _Reader, value: Any, path: str) -> bool:
    """Hex made only of digits (or digits and one `e`) reaches us as a YAML number, its leading
    zeros lost: say so instead of a confusing length error."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        r.error(
            path,
            f"YAML read this hex value as the number {value!r}",
            "quote it: `'0000001000000000'` (hex made of digits loses its leading zeros as a number)",
        )
        return True
    return False


def _reference_values(r: _Reader, value: Any, path: str) -> ReferenceValues | None:
    if value is None:
        return None
    before = len(r.errors)
    m = r.obj(value, path, _REFERENCE_KEYS)
    found: dict[str, str] = {}
    for key in REFERENCE_REGISTERS:
        kp = _join(path, key)
        if _yaml_number(r, m.get(key), kp):
            continue
        text = r.string(r.required(m, key, path, _REFERENCE_FIX), kp, "write 96 hex digits (48 bytes)")
        if text is None:
            continue
        text = text.lower().removeprefix("0x")
        if not _HEX48.match(text):
            r.error(kp, f"expected 48 bytes as 96 hex digits, got {len(text)} characters", _REFERENCE_FIX)
        elif text == "0" * 96:
            r.error(kp, "all zeros: this is not a measurement", _REFERENCE_FIX)
        else:
            found[key] = text
    attrs = None
    if m.get("tdAttributes") is not None and not _yaml_number(r, m["tdAttributes"], _join(path, "tdAttributes")):
        ap = _join(path, "tdAttributes")
        attrs = r.string(m["tdAttributes"], ap, "write 16 hex digits")
        if attrs is not None:
            attrs = attrs.lower()
            if not _HEX8.match(attrs):
                r.error(
                    ap,
                    f"`{attrs}` is not 8 bytes as 16 hex digits",
                    "copy `td_attributes` from a quote, e.g. 0000001000000000",
                )
            elif int.from_bytes(bytes.fromhex(attrs), "little") & TD_ATTR_DEBUG:
                r.error(
                    ap,
                    f"{attrs} has DEBUG (bit 0) set: a debuggable TD exposes its memory to the host",
                    "pin a production guest (bit 0 clear)",
                )
    if len(r.errors) > before:
        return None
    return ReferenceValues(td_attributes=attrs, **found)


def workload_problems(
    manifest: WorkloadManifest, target: KubernetesTarget, path: str = "workload"
) -> list[ConfigError]:
    """What makes this manifest + target unrenderable (the checks `render_manifests` enforces), as
    ConfigErrors for config.py to report together with the others."""
    errors: list[ConfigError] = []
    kpath = _join(path, "kubernetes")
    for where, image in ((_join(path, "image"), manifest.image), (_join(kpath, "gatewayImage"), target.gateway_image)):
        if not IMAGE_BY_DIGEST.match(image):
            errors.append(
                ConfigError(
                    where,
                    f"`{image}` is not an image pinned by digest (a tag can move)",
                    "use `REPOSITORY@sha256:<64 lowercase hex>`",
                )
            )
    if target.gpu_count != manifest.tensor_parallel_size:
        errors.append(
            ConfigError(
                _join(kpath, "gpuCount"),
                f"{target.gpu_count} GPUs but tensorParallelSize is {manifest.tensor_parallel_size}",
                "give the TD exactly tensorParallelSize GPUs (one pod = one TD)",
            )
        )
    for i, arg in enumerate(manifest.vllm_args):
        reason = refused_vllm_arg(arg)
        if reason is not None:
            errors.append(ConfigError(f"{_join(path, 'vllmArgs')}[{i}]", f"refused: {reason}", "remove it"))
    if not manifest.model_files:
        errors.append(
            ConfigError(
                _join(path, "model.files"),
                "empty: nothing to verify inside the TD",
                "list every model file with its sha256",
            )
        )
    return errors


# --------------------------------------------------------------------------------------------
# Init data (Kata / CoCo initdata spec)


def _toml_string(value: str) -> str:
    # JSON string escapes (\" \\ \b \f \n \r \t \uXXXX; ensure_ascii) are all valid TOML basic-string escapes.
    return json.dumps(value, ensure_ascii=True)


def initdata_toml(manifest: WorkloadManifest, agent_policy: str | None = None) -> str:
    """The init data TOML: exactly these bytes are hashed into MRCONFIGID."""
    data = {
        INITDATA_DIGEST_KEY: manifest.digest().hex(),
        INITDATA_MANIFEST_KEY: manifest.canonical_bytes().decode("ascii"),
    }
    if agent_policy is not None:
        data[INITDATA_POLICY_KEY] = agent_policy
    lines = [
        f"version = {_toml_string(INITDATA_VERSION)}",
        f"algorithm = {_toml_string(INITDATA_ALGORITHM)}",
        "",
        "[data]",
    ]
    lines += [f"{_toml_string(k)} = {_toml_string(v)}" for k, v in sorted(data.items())]
    return "\n".join(lines) + "\n"


def initdata_annotation_value(toml_text: str) -> str:
    """base64(gzip(TOML)), as `cat initdata.toml | gzip | base64 -w0`. mtime=0 keeps it
    deterministic, so an unchanged workload never shows a diff (or restarts the pod)."""
    return base64.b64encode(gzip.compress(toml_text.encode("utf-8"), compresslevel=9, mtime=0)).decode("ascii")


def decode_initdata_annotation(value: str) -> str:
    return gzip.decompress(base64.b64decode(value, validate=True)).decode("utf-8")


def mrconfigid(toml_text: str) -> str:
    """MRCONFIGID for this init data: SHA-384 of the TOML bytes (48 bytes, no padding needed)."""
    return hashlib.sha384(toml_text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# In-pod scripts (Python standard library only: they run in the gateway image)

# Downloads every manifest file into the memory-backed (TD-private) model volume and checks its
# SHA-256 there; any mismatch fails the init container, so vLLM never starts on unverified bytes.
MODEL_FETCH_SCRIPT = r"""
import hashlib, json, os, sys, urllib.parse, urllib.request
template, model_id, revision, root = sys.argv[1:5]
files = json.loads(os.environ["TDX_VLLM_MODEL_FILES"])
def digest(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
for rel, want in sorted(files.items()):
    dest = os.path.join(root, rel)
    if os.path.exists(dest) and digest(dest) == want:
        continue
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    url = template.format(id=model_id, revision=revision, path=urllib.parse.quote(rel))
    h, tmp = hashlib.sha256(), dest + ".part"
    with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
        for block in iter(lambda: resp.read(1 << 20), b""):
            h.update(block)
            out.write(block)
    if h.hexdigest() != want:
        os.unlink(tmp)
        sys.exit(f"model file {rel}: sha256 {h.hexdigest()} != pinned {want} (from {url})")
    os.replace(tmp, dest)
    print(json.dumps({"verified": rel, "sha256": want}), flush=True)
print(json.dumps({"model": model_id, "revision": revision, "files": len(files)}), flush=True)
""".strip()

# Readiness: the gateway must produce a quote (a fresh nonce) and answer the known-answer prompt
# (greedy, the guest agent's own request: guest_agent.knownanswer.request_body) through itself to
# vLLM. TLS is not verified: this runs inside the pod (the TD) against the gateway's own loopback
# port, whose certificate is a fresh self-signed one.
KNOWN_ANSWER_SCRIPT = r"""
import json, os, ssl, sys, urllib.request
url, expect, body = sys.argv[1], sys.argv[2], sys.argv[3].encode()
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
with urllib.request.urlopen(f"{url}/.well-known/tdx-attestation?nonce={os.urandom(32).hex()}", timeout=20, context=ctx) as r:
    if not json.load(r).get("quote"):
        sys.exit("gateway returned no quote")
req = urllib.request.Request(f"{url}/v1/completions", data=body, headers={"content-type": "application/json"})
with urllib.request.urlopen(req, timeout=50, context=ctx) as r:
    text = json.load(r)["choices"][0]["text"]
if not text.startswith(expect):
    sys.exit(f"known-answer check failed: {text!r} does not begin with {expect!r}")
""".strip()


def known_answer_command(
    model_id: str, check: KnownAnswer, url: str = f"https://127.0.0.1:{GATEWAY_PORT}"
) -> list[str]:
    from guest_agent.knownanswer import request_body

    body = json.dumps(request_body(check, model_id), sort_keys=True)  # type: ignore[arg-type]  # same fields
    return ["python3", "-c", KNOWN_ANSWER_SCRIPT, url, check.expect, body]


# --------------------------------------------------------------------------------------------
# Rendering (pure)


def _labels(target: KubernetesTarget) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tdx-vllm",
        "app.kubernetes.io/instance": target.name,
        "app.kubernetes.io/component": "attested-inference",
    }


def check_args(args: KubernetesWorkloadArgs) -> None:
    problems = workload_problems(args.manifest, args.target)
    if problems:
        raise KubernetesWorkloadError("; ".join(str(p) for p in problems))


def vllm_args(manifest: WorkloadManifest) -> list[str]:
    return [
        "--model",
        MODEL_DIR,
        "--served-model-name",
        manifest.model_id,
        "--host",
        "127.0.0.1",
        "--port",
        str(VLLM_PORT),
        "--tensor-parallel-size",
        str(manifest.tensor_parallel_size),
        *manifest.vllm_args,
    ]


def render_manifests(args: KubernetesWorkloadArgs) -> list[dict[str, Any]]:
    """[Namespace (when created), Deployment, Service] as plain Kubernetes objects."""
    check_args(args)
    m, t = args.manifest, args.target
    labels = _labels(t)
    toml_text = initdata_toml(m, t.agent_policy)
    model_volume: dict[str, Any] = {"medium": "Memory"}
    if t.model_cache_size:
        model_volume["sizeLimit"] = t.model_cache_size
    no_escalation = {"allowPrivilegeEscalation": False}

    fetch = {
        "name": "model-fetch",
        "image": t.gateway_image,
        "imagePullPolicy": "IfNotPresent",
        "command": [
            "python3",
            "-c",
            MODEL_FETCH_SCRIPT,
            args.model_source.url_template,
            m.model_id,
            m.model_revision,
            MODEL_DIR,
        ],
        "env": [{"name": "TDX_VLLM_MODEL_FILES", "value": json.dumps(dict(m.model_files), sort_keys=True)}],
        "volumeMounts": [{"name": "model", "mountPath": "/models"}],
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "securityContext": no_escalation,
    }
    vllm = {
        "name": "vllm",
        "image": m.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": vllm_args(m),
        "env": [
            {"name": "VLLM_USE_V2_MODEL_RUNNER", "value": "0"},
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
            {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
            {"name": "DO_NOT_TRACK", "value": "1"},
        ],
        "resources": {
            "limits": {t.gpu_resource: str(t.gpu_count), "cpu": t.cpu, "memory": t.memory},
            "requests": {"cpu": t.cpu, "memory": t.memory},
        },
        "volumeMounts": [
            {"name": "model", "mountPath": "/models", "readOnly": True},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
        "securityContext": no_escalation,
    }
    gateway = {
        "name": "gateway",
        "image": t.gateway_image,
        "imagePullPolicy": "IfNotPresent",
        "command": [
            "python3",
            "-m",
            "tdxattest",
            "gateway",
            "--listen",
            f"0.0.0.0:{GATEWAY_PORT}",
            "--upstream",
            f"http://127.0.0.1:{VLLM_PORT}",
        ],
        "ports": [{"name": "https", "containerPort": GATEWAY_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "exec": {"command": known_answer_command(m.model_id, args.known_answer)},
            "initialDelaySeconds": 30,
            "periodSeconds": 30,
            "timeoutSeconds": 60,
            "failureThreshold": 3,
            "successThreshold": 1,
        },
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": no_escalation,
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": t.name, "namespace": t.namespace, "labels": labels},
        "spec": {
            "replicas": 1,  # one pod = one TD with its own GPUs and TLS key
            "strategy": {"type": "Recreate"},  # a rolling update would need a second set of CC GPUs
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        INITDATA_ANNOTATION: initdata_annotation_value(toml_text),
                        MANIFEST_ANNOTATION: m.digest().hex(),
                    },
                },
                "spec": {
                    "runtimeClassName": t.runtime_class_name,
                    "automountServiceAccountToken": False,  # nothing in the TD talks to the API server
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    "initContainers": [fetch],
                    "containers": [vllm, gateway],
                    "volumes": [
                        {"name": "model", "emptyDir": model_volume},
                        {"name": "shm", "emptyDir": {"medium": "Memory"}},
                    ],
                },
            },
        },
    }
    port: dict[str, Any] = {"name": "https", "port": t.service_port, "targetPort": "https", "protocol": "TCP"}
    if t.node_port is not None:
        port["nodePort"] = t.node_port
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": t.name, "namespace": t.namespace, "labels": labels},
        "spec": {"type": t.service_type, "selector": labels, "ports": [port]},
    }
    objects: list[dict[str, Any]] = []
    if t.create_namespace:
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": t.namespace, "labels": {"app.kubernetes.io/part-of": "tdx-vllm"}},
            }
        )
    return objects + [deployment, service]


def expected_pins(args: KubernetesWorkloadArgs) -> dict[str, Any]:
    """The `pins` output for this target (shape of docs/pins.md, read by `tdxattest proxy --pins`)."""
    m, t = args.manifest, args.target
    rv = t.reference_values
    toml_text = initdata_toml(m, t.agent_policy)
    reasons = {"rtmr3": RTMR3_REASON}
    pins: dict[str, Any] = {
        "schema": 1,
        "profile": PINS_PROFILE,
        "target": "kubernetes",
        "runtimeClassName": t.runtime_class_name,
        "mrtd": rv.mrtd,
        "rtmr0": rv.rtmr0,
        "rtmr1": rv.rtmr1,
        "rtmr2": rv.rtmr2,
        "rtmr3": None,
        "mrconfigid": mrconfigid(toml_text),
        "tdAttributes": rv.td_attributes,
        "reasons": reasons,
        "imageDigest": image_digest(m.image),
        "modelSha256": model_sha256(m),
        "image": m.image,
        "gatewayImage": t.gateway_image,
        "gatewayImageDigest": image_digest(t.gateway_image),
        "workloadManifest": m.digest().hex(),
        "model": {"id": m.model_id, "revision": m.model_revision, "files": dict(m.model_files)},
        "initData": {"annotation": INITDATA_ANNOTATION, "algorithm": INITDATA_ALGORITHM, "toml": toml_text},
        "agentPolicySha384": hashlib.sha384(t.agent_policy.encode()).hexdigest() if t.agent_policy else None,
    }
    if rv.td_attributes is None:
        reasons["tdAttributes"] = "referenceValues.tdAttributes not configured"
    if t.agent_policy is None:
        reasons["agentPolicy"] = (
            "no agent policy in the init data: the guest's default policy applies, so "
            "MRCONFIGID binds the manifest as a claim but nothing in the TD enforces it"
        )
    return pins


def endpoint_for(target: KubernetesTarget, ingress: list[Mapping[str, Any]] | None = None) -> str:
    """The gateway URL: the load balancer's address when there is one, else the in-cluster name."""
    for entry in ingress or []:
        host = entry.get("ip") or entry.get("hostname")
        if host:
            host = f"[{host}]" if ":" in host else host
            return f"https://{host}:{target.service_port}"
    return f"https://{target.name}.{target.namespace}.svc.cluster.local:{target.service_port}"


# --------------------------------------------------------------------------------------------
# The component


class KubernetesWorkload(pulumi.ComponentResource):
    """Namespace (optional), Deployment (one Kata TDX pod: model fetcher, vLLM, gateway) and Service."""

    endpoint: pulumi.Output[str]
    pins: pulumi.Output[dict]

    def __init__(self, name: str, args: KubernetesWorkloadArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tdx-vllm:workload:KubernetesWorkload", name, {}, opts)
        import pulumi_kubernetes as k8s

        objects = render_manifests(args)  # raises before any resource is registered
        t = args.target
        provider = None
        if t.kubeconfig is not None or t.context is not None:
            provider = k8s.Provider(
                f"{name}-provider", kubeconfig=t.kubeconfig, context=t.context, opts=pulumi.ResourceOptions(parent=self)
            )
        by_kind = {o["kind"]: o for o in objects}

        def child(**kw: Any) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, provider=provider, **kw)

        after: list[pulumi.Resource] = []
        self.namespace = None
        if "Namespace" in by_kind:
            ns = by_kind["Namespace"]
            self.namespace = k8s.core.v1.Namespace(f"{name}-namespace", metadata=ns["metadata"], opts=child())
            after.append(self.namespace)
        dep = by_kind["Deployment"]
        # `pulumi up` waits for the rollout, i.e. the known-answer readiness probe: loading a large
        # model into a TD can take a while, hence the long timeouts.
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=dep["metadata"],
            spec=dep["spec"],
            opts=child(
                depends_on=after,
                delete_before_replace=True,
                custom_timeouts=pulumi.CustomTimeouts(create="45m", update="45m"),
            ),
        )
        svc = by_kind["Service"]
        self.service = k8s.core.v1.Service(
            f"{name}-service",
            metadata=svc["metadata"],
            spec=svc["spec"],
            opts=child(depends_on=after, delete_before_replace=True),
        )

        def endpoint(status: Any) -> str:
            ingress = ((status or {}).get("load_balancer") or (status or {}).get("loadBalancer") or {}).get("ingress")
            return endpoint_for(t, ingress if t.service_type == "LoadBalancer" else None)

        # Through the Deployment's id: known only once its rollout finished, i.e. once the pod passed
        # the known-answer readiness probe, so `endpoints` and `ready` wait for that, not the Service.
        self.endpoint = pulumi.Output.all(self.deployment.id, self.service.status).apply(lambda a: endpoint(a[1]))
        self.pins = pulumi.Output.from_input(expected_pins(args))
        self.register_outputs({"endpoint": self.endpoint, "pins": self.pins})


# --------------------------------------------------------------------------------------------
# From the stack config, and `python -m components.kubernetes_workload STACK_FILE`: print the rendered
# manifests (for genpolicy)


def args_from_workload(workload: Any, manifest: WorkloadManifest) -> KubernetesWorkloadArgs:
    """The component's arguments from the stack's validated `workload` (components/config.py): the
    same `modelSource` base URL as the host target (`<modelSource>/<path>`), the known-answer check."""
    template = workload.model_source.rstrip("/") + "/{path}"
    return KubernetesWorkloadArgs(
        manifest=manifest,
        target=workload.kubernetes,
        known_answer=workload.known_answer,
        model_source=ModelSource(url_template=template),
    )


def main(argv: list[str] | None = None) -> int:
    """The same stack validation as `pulumi preview` (components/config.py, offline), then the
    objects this target would create, as YAML."""
    import sys

    import yaml

    from .config import ConfigErrors, load_stack_file

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(
            "usage: python -m components.kubernetes_workload stacks/Pulumi.<stack>.yaml  (prints YAML)", file=sys.stderr
        )
        return 2
    try:
        stack = load_stack_file(Path(argv[0]))
    except ConfigErrors as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    if stack.workload is None or stack.workload.kubernetes is None:
        print(f"{argv[0]}: no `workload` with `target: kubernetes`", file=sys.stderr)
        return 1
    args = args_from_workload(stack.workload, stack.workload.manifest(stack.tensor_parallel_size))
    print(yaml.safe_dump_all(render_manifests(args), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "DEFAULT_GPU_RESOURCE",
    "DEFAULT_RUNTIME_CLASS",
    "INITDATA_ANNOTATION",
    "KnownAnswer",
    "KubernetesTarget",
    "KubernetesWorkload",
    "KubernetesWorkloadArgs",
    "KubernetesWorkloadError",
    "ModelSource",
    "ReferenceValues",
    "args_from_workload",
    "decode_initdata_annotation",
    "endpoint_for",
    "expected_pins",
    "initdata_toml",
    "kubernetes_target_from_mapping",
    "mrconfigid",
    "render_manifests",
    "workload_problems",
]
