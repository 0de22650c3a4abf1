"""The `workload.kubernetes` block of the stack config: the cluster, the Kata TDX runtime class, the
pod's shape and the Kata guest's reference values (they become the pins). Errors in the config's
style: key path, problem, fix; unknown keys get a did-you-mean. docs/kubernetes.md has the sources."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.config.model import (
    DEFAULT_GPU_RESOURCE,
    DEFAULT_RUNTIME_CLASS,
    GATEWAY_PORT,
    KubernetesTarget,
    ReferenceValues,
)
from components.config.reader import ConfigError, Reader, join
from components.paths import REPO_ROOT
from guest_agent import DEV_STACK
from tdxattest.core.quote import TD_ATTR_DEBUG
from tdxattest.core.workload import IMAGE_BY_DIGEST

NON_CONFIDENTIAL_RUNTIME_CLASSES = frozenset(
    {"runc", "kata", "kata-qemu", "kata-clh", "kata-fc", "kata-qemu-nvidia-gpu", "kata-qemu-coco-dev"}
)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_RESOURCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_MEMORY = re.compile(r"^[1-9][0-9]*(Ki|Mi|Gi|Ti)$")
_CPU = re.compile(r"^([1-9][0-9]*|[1-9][0-9]*m|[0-9]+\.[0-9]+)$")
_HEX48 = re.compile(r"^[0-9a-f]{96}$")
_HEX8 = re.compile(r"^[0-9a-f]{16}$")
SERVICE_TYPES: tuple[str, ...] = ("ClusterIP", "NodePort", "LoadBalancer")
REFERENCE_REGISTERS: tuple[str, ...] = ("mrtd", "rtmr0", "rtmr1", "rtmr2")

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
    r = Reader(stack or "", None)
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

    namespace = _label(r, m.get("namespace", "tdx-vllm"), join(path, "namespace"), "a namespace")
    name = _label(r, m.get("name", "vllm"), join(path, "name"), "the Deployment/Service name", max_len=40)
    create_ns = r.boolean(m.get("createNamespace"), join(path, "createNamespace"), True)

    rc_path = join(path, "runtimeClassName")
    runtime_class = r.string(
        m.get("runtimeClassName", DEFAULT_RUNTIME_CLASS), rc_path, f"use `{DEFAULT_RUNTIME_CLASS}`"
    )
    if runtime_class is not None:
        if not _DNS_SUBDOMAIN.fullmatch(runtime_class):
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

    gi_path = join(path, "gatewayImage")
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
    if gateway_image is not None and not IMAGE_BY_DIGEST.fullmatch(gateway_image):
        r.error(
            gi_path,
            f"`{gateway_image}` is not an image pinned by digest (a tag can move)",
            "use `REPOSITORY@sha256:<64 lowercase hex>` (`crane digest IMAGE:TAG` or "
            "`podman inspect --format '{{.Digest}}'`)",
        )
        gateway_image = None

    gpu_count = r.integer(m.get("gpuCount"), join(path, "gpuCount"), 1, 1, 8)
    gr_path = join(path, "gpuResource")
    gpu_resource = r.string(m.get("gpuResource", DEFAULT_GPU_RESOURCE), gr_path, f"use `{DEFAULT_GPU_RESOURCE}`")
    if gpu_resource is not None and not _RESOURCE_NAME.fullmatch(gpu_resource):
        r.error(
            gr_path,
            f"`{gpu_resource}` is not an extended resource name",
            f"use `{DEFAULT_GPU_RESOURCE}` (NVIDIA Kata sandbox device plugin) or the P_GPU_ALIAS name",
        )
        gpu_resource = None

    memory = _quantity(r, m.get("memory", "64Gi"), join(path, "memory"), _MEMORY, "a memory size such as `64Gi`")
    cpu = _quantity(r, m.get("cpu", "8"), join(path, "cpu"), _CPU, "a CPU count such as `8` or `7500m`")
    cache = (
        _quantity(
            r,
            m.get("modelCacheSize"),
            join(path, "modelCacheSize"),
            _MEMORY,
            "a size such as `20Gi` (at least the model's files)",
        )
        if m.get("modelCacheSize") is not None
        else None
    )

    service_type, service_port, node_port = _service(r, m.get("service"), join(path, "service"))

    kubeconfig = r.string(
        m.get("kubeconfig"),
        join(path, "kubeconfig"),
        "set the path of a kubeconfig file (or leave it out to use $KUBECONFIG)",
    )
    context = r.string(m.get("context"), join(path, "context"), "set a context name from the kubeconfig")

    policy_file, policy = _agent_policy(r, m.get("agentPolicyFile"), join(path, "agentPolicyFile"), base_dir)
    # A null or empty value counts as missing (the parse errors of a bad value are already reported).
    if policy_file is None and m.get("agentPolicyFile") in (None, "") and stack is not None and stack != DEV_STACK:
        r.error(
            join(path, "agentPolicyFile"),
            f"required outside the `dev` stack (this is `{stack}`): without an agent policy in the init data "
            "the untrusted host can exec into the TD or start other containers in it",
            "generate one with Kata's `genpolicy` from `python -m components kubernetes stacks/Pulumi.<stack>.yaml` "
            "(docs/kubernetes.md) and set `agentPolicyFile: policy/kata/<name>.rego`",
        )

    refs = _reference_values(r, r.required(m, "referenceValues", path, _REFERENCE_FIX), join(path, "referenceValues"))

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


def _label(r: Reader, value: Any, path: str, what: str, max_len: int = 63) -> str | None:
    text = r.string(value, path, f"set {what}: lowercase letters, digits and dashes")
    if text is not None and (not _DNS_LABEL.fullmatch(text) or len(text) > max_len):
        r.error(
            path,
            f"`{text}` is not a valid name (RFC 1123 label, at most {max_len} characters)",
            "use lowercase letters, digits and dashes, starting and ending with a letter or digit",
        )
        return None
    return text


def _quantity(r: Reader, value: Any, path: str, pattern: re.Pattern, what: str) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = r.string(value, path, f"set {what}")
    if text is not None and not pattern.match(text):
        r.error(path, f"`{text}` is not {what}", f"write {what}")
        return None
    return text


def _service(r: Reader, value: Any, path: str) -> tuple[str, int, int | None]:
    m = r.obj(value, path, _SERVICE_KEYS)
    stype = r.choice(m.get("type", "ClusterIP"), join(path, "type"), SERVICE_TYPES) or "ClusterIP"
    port = r.integer(m.get("port"), join(path, "port"), GATEWAY_PORT, 1, 65535)
    node_port = None
    if m.get("nodePort") is not None:
        if stype != "NodePort":
            r.error(
                join(path, "nodePort"),
                f"only used with `type: NodePort` (this is `{stype}`)",
                "remove it, or set `type: NodePort`",
            )
        else:
            node_port = r.integer(m.get("nodePort"), join(path, "nodePort"), 0, 30000, 32767) or None
    return stype, port, node_port


def _agent_policy(r: Reader, value: Any, path: str, base_dir: Path) -> tuple[str | None, str | None]:
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


def _yaml_number(r: Reader, value: Any, path: str) -> bool:
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


def _reference_values(r: Reader, value: Any, path: str) -> ReferenceValues | None:
    if value is None:
        return None
    before = len(r.errors)
    m = r.obj(value, path, _REFERENCE_KEYS)
    found: dict[str, str] = {}
    for key in REFERENCE_REGISTERS:
        kp = join(path, key)
        if _yaml_number(r, m.get(key), kp):
            continue
        text = r.string(r.required(m, key, path, _REFERENCE_FIX), kp, "write 96 hex digits (48 bytes)")
        if text is None:
            continue
        text = text.lower().removeprefix("0x")
        if not _HEX48.fullmatch(text):
            r.error(kp, f"expected 48 bytes as 96 hex digits, got {len(text)} characters", _REFERENCE_FIX)
        elif text == "0" * 96:
            r.error(kp, "all zeros: this is not a measurement", _REFERENCE_FIX)
        else:
            found[key] = text
    attrs = None
    if m.get("tdAttributes") is not None and not _yaml_number(r, m["tdAttributes"], join(path, "tdAttributes")):
        ap = join(path, "tdAttributes")
        attrs = r.string(m["tdAttributes"], ap, "write 16 hex digits")
        if attrs is not None:
            attrs = attrs.lower()
            if not _HEX8.fullmatch(attrs):
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
