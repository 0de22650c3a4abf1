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
    DEFAULT_NVSWITCH_RESOURCE,
    DEFAULT_RUNTIME_CLASS,
    GATEWAY_PORT,
    KATA_DEFAULT_MEMORY_MIB,
    KATA_DEFAULT_VCPUS,
    KUBERNETES_GPU_COUNTS,
    PPCIE_NVSWITCHES,
    KataShape,
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
    "nvswitchResource",
    "kataDefaultMemoryMiB",
    "kataDefaultVcpus",
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
_REFERENCE_KEYS = REFERENCE_REGISTERS + ("tdAttributes", "shape")
_SHAPE_KEYS = ("memoryMiB", "vcpus", "gpus")
_SHAPE_FIX = (
    "set the TD size the registers were measured for, as `python -m components kubernetes` prints it "
    "(`tdShape`): RTMR0 covers the TD's ACPI tables, which depend on its memory, vCPUs and GPUs"
)
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
    if gpu_count not in KUBERNETES_GPU_COUNTS:
        r.error(
            join(path, "gpuCount"),
            f"{gpu_count} GPUs in one TD: NVIDIA supports one passthrough GPU per Kata TD, or all eight "
            f"with their {PPCIE_NVSWITCHES} NVSwitches in protected PCIe (PPCIe) mode",
            "set 1, or 8 on an HGX node in PPCIe mode (and tensorParallelSize to match)",
        )
    gpu_resource = _resource(r, m.get("gpuResource", DEFAULT_GPU_RESOURCE), join(path, "gpuResource"), "P_GPU_ALIAS")
    nvswitch_resource = _resource(
        r, m.get("nvswitchResource", DEFAULT_NVSWITCH_RESOURCE), join(path, "nvswitchResource"), "NVSWITCH_ALIAS"
    )
    kata_memory = r.integer(
        m.get("kataDefaultMemoryMiB"), join(path, "kataDefaultMemoryMiB"), KATA_DEFAULT_MEMORY_MIB, 256, 1 << 22
    )
    kata_vcpus = r.integer(m.get("kataDefaultVcpus"), join(path, "kataDefaultVcpus"), KATA_DEFAULT_VCPUS, 1, 1024)

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
    assert namespace and name and runtime_class and gateway_image and gpu_resource and nvswitch_resource
    assert memory and cpu and refs
    target = KubernetesTarget(
        namespace=namespace,
        name=name,
        create_namespace=create_ns,
        runtime_class_name=runtime_class,
        gateway_image=gateway_image,
        gpu_count=gpu_count,
        gpu_resource=gpu_resource,
        nvswitch_resource=nvswitch_resource,
        kata_default_memory_mib=kata_memory,
        kata_default_vcpus=kata_vcpus,
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
    )
    shape, measured = target.td_shape(), refs.shape
    if shape != measured:
        r.error(
            join(path, "referenceValues.shape"),
            f"the reference values were measured for a TD of {measured.memory_mib} MiB, {measured.vcpus} vCPUs "
            f"and {measured.gpus} GPUs, but memory, cpu and gpuCount give {shape.memory_mib} MiB, {shape.vcpus} "
            f"vCPUs and {shape.gpus} GPUs; RTMR0 (the TD's ACPI tables) differs between the two",
            "measure rtmr0 (and the rest) again from a test pod of this size and set shape to "
            f"{{memoryMiB: {shape.memory_mib}, vcpus: {shape.vcpus}, gpus: {shape.gpus}}}, "
            "or change memory, cpu and gpuCount back",
        )
        return None, r.errors
    return target, []


def _resource(r: Reader, value: Any, path: str, alias: str) -> str | None:
    text = r.string(value, path, "use an extended resource name such as `nvidia.com/pgpu`")
    if text is not None and not _RESOURCE_NAME.fullmatch(text):
        r.error(
            path,
            f"`{text}` is not an extended resource name",
            f"use the name the NVIDIA Kata sandbox device plugin advertises (its default, or your {alias})",
        )
        return None
    return text


def _shape(r: Reader, value: Any, path: str) -> KataShape | None:
    if value is None:
        r.error(path, "missing", _SHAPE_FIX)
        return None
    before = len(r.errors)
    m = r.obj(value, path, _SHAPE_KEYS)
    memory = r.integer(r.required(m, "memoryMiB", path, _SHAPE_FIX), join(path, "memoryMiB"), 0, 256, 1 << 24)
    vcpus = r.integer(r.required(m, "vcpus", path, _SHAPE_FIX), join(path, "vcpus"), 0, 1, 4096)
    gpus = r.integer(r.required(m, "gpus", path, _SHAPE_FIX), join(path, "gpus"), 0, 0, 8)
    if len(r.errors) > before:
        return None
    return KataShape(memory_mib=memory, vcpus=vcpus, gpus=gpus)


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
    shape = _shape(r, m.get("shape"), join(path, "shape"))
    if len(r.errors) > before or shape is None:
        return None
    return ReferenceValues(td_attributes=attrs, shape=shape, **found)
