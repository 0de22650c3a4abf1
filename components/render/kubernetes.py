"""The Kubernetes target: vLLM and the attested gateway in one Confidential Containers pod (= one TD).

With `workload.target: kubernetes` the workload goes to an existing cluster that runs Confidential
Containers with Kata's TDX runtime class and the NVIDIA GPU operator in CC mode (docs/kubernetes.md).
The stack config's `workload.kubernetes` block is parsed by components/config/kubernetes.py;
`args_from_workload` builds the render arguments from the validated `workload`. Here, pure:
`render_manifests(args)` gives the Namespace, Deployment and Service as plain Kubernetes dicts,
exactly what `KubernetesWorkload` (components/resources/kubernetes_workload.py) creates (tests
validate them offline with kubernetes-validate), and `expected_pins(args)` the `pins`.

What binds the workload to the TD (details and sources in docs/kubernetes.md):

* The pod carries Kata init data (`io.katacontainers.config.hypervisor.cc_init_data`: base64 of a
  gzip'd TOML with `version = "0.1.0"`, `algorithm = "sha384"` and a `[data]` string map). Kata puts
  the digest of that TOML, hashed with `algorithm` and fitted to 48 bytes, into the TD's
  MRCONFIGID, and the guest components (Kata agent + attestation agent) refuse to start the pod
  when the TOML they received does not hash to that launch value. Our TOML's `[data]` holds the
  workload manifest (canonical JSON) and its SHA-384, so `pins.mrconfigid` = SHA-384(TOML bytes)
  proves the manifest claim, and the (optional, required outside `dev`) agent policy in the same TOML
  is what makes the guest enforce it.
* MRTD and RTMR0-2 come from the configured `referenceValues`: the cluster's Kata guest image
  (firmware, kernel, command line, rootfs) defines the TD, not this program.
* RTMR3 is not pinned: in a Kata guest it is extended by the CoCo guest components (attestation
  agent runtime events), in an order and with content this program neither controls nor computes.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.config.model import (
    FETCH_MEMORY_LIMIT,
    GATEWAY_MEMORY_LIMIT,
    GATEWAY_PORT,
    PPCIE_NVSWITCHES,
    KnownAnswer,
    KubernetesTarget,
    WorkloadConfig,
)
from components.config.reader import ConfigError, join
from components.probe.kube import ClusterFacts
from guest_agent.pod import known_answer, model_fetch
from guest_agent.server import VLLM_ENV
from tdxattest.core.pins import KubernetesDetail, RegisterPin, StackPins
from tdxattest.core.workload import IMAGE_BY_DIGEST, WorkloadManifest, image_digest, model_sha256, refused_vllm_args

# --------------------------------------------------------------------------------------------
# Constants (sources in docs/kubernetes.md)

INITDATA_ANNOTATION = "io.katacontainers.config.hypervisor.cc_init_data"
INITDATA_VERSION = "0.1.0"
INITDATA_ALGORITHM = "sha384"
INITDATA_MANIFEST_KEY = "tdx-vllm-workload.json"
INITDATA_DIGEST_KEY = "tdx-vllm-workload.sha384"
INITDATA_POLICY_KEY = "policy.rego"  # the Kata agent policy the guest enforces

MANIFEST_ANNOTATION = "tdx-vllm.io/workload-manifest-sha384"
# SHA-256 of the pod template's canonical JSON (without this annotation): what `kube-rollout`
# (components/probe/kube.py) waits to see running, so that any change to the template is awaited.
TEMPLATE_ANNOTATION = "tdx-vllm.io/pod-template-sha256"
# Kata appends these to the guest kernel command line (replacing a parameter of the same name);
# `kernel_params` is among the annotations its CoCo runtime classes accept (enable_annotations).
KERNEL_PARAMS_ANNOTATION = "io.katacontainers.config.hypervisor.kernel_params"
# The Kata agent serves CoCo's api-server-rest attestation endpoint only when asked to (default:
# `resource`); the gateway gets its quotes there (`--quote-source aa`, docs/channel.md). The
# command line is measured into RTMR2, so the reference values must be taken with it.
GUEST_KERNEL_PARAMS = "agent.guest_components_rest_api=attestation"
GPU_NOTE = (
    "not attested on this target: NVIDIA's guest components (NVRC) set the GPUs ready inside the TD, and "
    "no GPU evidence is bound to the quote, so a client checks the TD and the workload, not the GPU"
)
PINS_PROFILE = "kubernetes-kata-tdx"
RTMR3_REASON = (
    "Kata guest: RTMR3 is extended by the Confidential Containers guest components (attestation "
    "agent runtime events) in an order this program does not control; the workload manifest is "
    "bound through MRCONFIGID (init data) instead"
)

VLLM_PORT = 8000
# Who the containers run as. Explicit, because with guest pull the node never sees the image's
# config: the agent policy genpolicy writes must name the same uid, gid and groups the agent will
# use (docs/kubernetes.md, Agent policy). Not root, so the pod meets Pod Security `restricted`.
RUN_AS_UID = 1000
RUN_AS_GID = 1000
# vLLM, Triton and Hugging Face write caches under $HOME; the images' HOME (/root) is not writable
# by RUN_AS_UID, so HOME is a memory-backed volume inside the TD.
HOME_DIR = "/home/tdx-vllm"
# How long a rollout may take: loading a large model into a TD can take a while. The provider
# awaits the Deployment that long (custom timeouts), and the Deployment's own progress deadline is
# the same, so the controller does not mark it failed while `pulumi up` still waits.
ROLLOUT_TIMEOUT_S = 45 * 60
# pulumi-kubernetes awaits a LoadBalancer Service until it has an ingress address, which a bare-metal
# cluster without a load-balancer implementation never gives: `up` would fail after 10 minutes.
SKIP_AWAIT_ANNOTATION = "pulumi.com/skipAwait"
POD_PROGRAMS = Path(model_fetch.__file__).parent
MODEL_DIR = "/models/model"
DEFAULT_MODEL_SOURCE = "https://huggingface.co/{id}/resolve/{revision}"


class KubernetesWorkloadError(ValueError):
    """Arguments that cannot be rendered into a safe pod (each message names the fix)."""


# --------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class ModelSource:
    """Where the in-TD fetcher downloads each manifest file: `<base>/<path>`, {id} and {revision}
    expanded in `base` (the host target's `modelSource` rule, guest_agent/pod/model_fetch.py). Only
    integrity matters: every file is checked against its pinned SHA-256 inside the TD."""

    base: str = DEFAULT_MODEL_SOURCE


@dataclass(frozen=True)
class KubernetesWorkloadArgs:
    manifest: WorkloadManifest
    target: KubernetesTarget
    known_answer: KnownAnswer
    model_source: ModelSource = ModelSource()


def workload_problems(
    manifest: WorkloadManifest, target: KubernetesTarget, path: str = "workload"
) -> list[ConfigError]:
    """What makes this manifest + target unrenderable (the checks `render_manifests` enforces), as
    ConfigErrors for config.py to report together with the others."""
    errors: list[ConfigError] = []
    kpath = join(path, "kubernetes")
    for where, image in ((join(path, "image"), manifest.image), (join(kpath, "gatewayImage"), target.gateway_image)):
        if not IMAGE_BY_DIGEST.fullmatch(image):
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
                join(kpath, "gpuCount"),
                f"{target.gpu_count} GPUs but tensorParallelSize is {manifest.tensor_parallel_size}",
                "give the TD exactly tensorParallelSize GPUs (one pod = one TD)",
            )
        )
    for i, reason in refused_vllm_args(manifest.vllm_args):
        errors.append(ConfigError(f"{join(path, 'vllmArgs')}[{i}]", f"refused: {reason}", "remove it"))
    if not manifest.model_files:
        errors.append(
            ConfigError(
                join(path, "model.files"),
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
# The in-pod programs: whole files of the guest agent's, standard library only (they run in the
# gateway image), passed as `python3 -c <text>` (guest_agent/pod/).


@functools.cache
def pod_program(name: str) -> str:
    """The text of guest_agent/pod/<name>.py."""
    return (POD_PROGRAMS / f"{name}.py").read_text()


def model_fetch_command(args: KubernetesWorkloadArgs) -> list[str]:
    """The init container: every manifest file into the memory-backed (TD-private) model volume,
    each checked against its SHA-256 there; a mismatch fails it, so vLLM never starts on
    unverified bytes."""
    m = args.manifest
    return [
        "python3",
        "-c",
        pod_program("model_fetch"),
        args.model_source.base,
        m.model_id,
        m.model_revision,
        MODEL_DIR,
    ]


def known_answer_command(
    model_id: str, check: KnownAnswer, url: str = f"https://127.0.0.1:{GATEWAY_PORT}"
) -> list[str]:
    """The readiness probe: a quote from the gateway (a fresh nonce) and the known-answer prompt
    through it to vLLM, with the guest agent's own request and rule."""
    body = json.dumps(known_answer.request_body(check.prompt, check.max_tokens, model_id), sort_keys=True)
    return ["python3", "-c", pod_program("known_answer"), url, check.expect, body]


# --------------------------------------------------------------------------------------------
# Rendering (pure)


def _labels(target: KubernetesTarget) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tdx-vllm",
        "app.kubernetes.io/instance": target.name,
        "app.kubernetes.io/component": "attested-inference",
    }


def container_security() -> dict[str, Any]:
    """Pod Security `restricted` for a container: no privilege escalation, no capabilities."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def pod_security() -> dict[str, Any]:
    """Pod Security `restricted` for a pod, with the explicit ids guest pull needs (RUN_AS_UID)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_UID,
        "runAsGroup": RUN_AS_GID,
        "supplementalGroups": [RUN_AS_GID],
        "fsGroup": RUN_AS_GID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def service_object(
    name: str, namespace: str, labels: Mapping[str, str], service_type: str, port: Mapping[str, Any]
) -> dict[str, Any]:
    """A Service on `port`; a LoadBalancer one is not awaited (SKIP_AWAIT_ANNOTATION)."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if service_type == "LoadBalancer":
        meta["annotations"] = {SKIP_AWAIT_ANNOTATION: "true"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"type": service_type, "selector": dict(labels), "ports": [dict(port)]},
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
    # Not `medium: Memory`: tmpfs pages count against the memory limit of the container that writes
    # them, so a model over the fetcher's limit was OOM-killed, and all of it sat in TD RAM. With
    # CoCo's emptydir_mode = "block-encrypted" this is a block device that the guest encrypts and
    # authenticates (LUKS2 + dm-integrity, key made in the TD); the fetcher refuses a volume the host
    # shares in (model_fetch.check_volume).
    model_volume: dict[str, Any] = {}
    if t.model_cache_size:
        model_volume["sizeLimit"] = t.model_cache_size
    no_escalation = container_security()

    fetch = {
        "name": "model-fetch",
        "image": t.gateway_image,
        "imagePullPolicy": "IfNotPresent",
        "command": model_fetch_command(args),
        "env": [{"name": model_fetch.FILES_ENV, "value": json.dumps(dict(m.model_files), sort_keys=True)}],
        "volumeMounts": [{"name": "model", "mountPath": "/models"}],
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": FETCH_MEMORY_LIMIT}},
        "securityContext": no_escalation,
    }
    vllm = {
        "name": "vllm",
        "image": m.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": vllm_args(m),
        # The host target's environment (guest_agent.server.VLLM_ENV): one list for both targets.
        "env": [{"name": k, "value": v} for k, v in sorted({**VLLM_ENV, "HOME": HOME_DIR}.items())],
        "resources": {
            "limits": {t.gpu_resource: str(t.gpu_count), "cpu": t.cpu, "memory": t.memory}
            | ({t.nvswitch_resource: str(PPCIE_NVSWITCHES)} if t.gpu_count == 8 else {}),
            "requests": {"cpu": t.cpu, "memory": t.memory},
        },
        "volumeMounts": [
            {"name": "model", "mountPath": "/models", "readOnly": True},
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "home", "mountPath": HOME_DIR},
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
            # Kata gives containers no configfs-tsm: quotes come from the attestation agent.
            "--quote-source",
            "aa",
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
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": GATEWAY_MEMORY_LIMIT}},
        "securityContext": no_escalation,
    }
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": t.name, "namespace": t.namespace, "labels": labels},
        "spec": {
            "replicas": 1,  # one pod = one TD with its own GPUs and TLS key
            "progressDeadlineSeconds": ROLLOUT_TIMEOUT_S,
            "strategy": {"type": "Recreate"},  # a rolling update would need a second set of CC GPUs
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        INITDATA_ANNOTATION: initdata_annotation_value(toml_text),
                        KERNEL_PARAMS_ANNOTATION: GUEST_KERNEL_PARAMS,
                        MANIFEST_ANNOTATION: m.digest().hex(),
                    },
                },
                "spec": {
                    "runtimeClassName": t.runtime_class_name,
                    "automountServiceAccountToken": False,  # nothing in the TD talks to the API server
                    "enableServiceLinks": False,
                    "securityContext": pod_security(),
                    "terminationGracePeriodSeconds": 30,
                    "initContainers": [fetch],
                    "containers": [vllm, gateway],
                    "volumes": [
                        {"name": "model", "emptyDir": model_volume},
                        {"name": "shm", "emptyDir": {"medium": "Memory"}},
                        {"name": "home", "emptyDir": {"medium": "Memory"}},
                    ],
                },
            },
        },
    }
    template = deployment["spec"]["template"]
    template["metadata"]["annotations"][TEMPLATE_ANNOTATION] = template_digest(template)
    port: dict[str, Any] = {"name": "https", "port": t.service_port, "targetPort": "https", "protocol": "TCP"}
    if t.node_port is not None:
        port["nodePort"] = t.node_port
    service = service_object(t.name, t.namespace, labels, t.service_type, port)
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


def template_digest(template: Mapping[str, Any]) -> str:
    """SHA-256 of a pod template's canonical JSON, its own annotation left out."""
    meta = dict(template.get("metadata") or {})
    meta["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items() if k != TEMPLATE_ANNOTATION}
    doc = {**template, "metadata": meta}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def rollout_command(t: KubernetesTarget, deployment: Mapping[str, Any], python: str) -> str:
    """The local command that waits for the rollout of `deployment` as rendered (the kubeconfig comes
    on its stdin): `python -m components kube-rollout ...`."""
    argv = ["-m", "components", "kube-rollout", "--namespace", t.namespace, "--name", t.name]
    argv += ["--annotation", TEMPLATE_ANNOTATION]
    argv += ["--expect", deployment["spec"]["template"]["metadata"]["annotations"][TEMPLATE_ANNOTATION]]
    argv += ["--timeout", str(ROLLOUT_TIMEOUT_S)]
    if t.context is not None:
        argv += ["--context", t.context]
    return " ".join([python, *map(shlex.quote, argv)])


def expected_pins(args: KubernetesWorkloadArgs) -> StackPins:
    """The `pins` for this target (docs/pins.md, read by `tdxattest proxy --pins`): the Kata guest's
    reference values, and MRCONFIGID from the init data."""
    m, t = args.manifest, args.target
    rv = t.reference_values
    toml_text = initdata_toml(m, t.agent_policy)
    notes = {
        "gpu": GPU_NOTE,
        "kernelParams": (
            f"the pod adds `{GUEST_KERNEL_PARAMS}` to the Kata guest's kernel command line "
            f"({KERNEL_PARAMS_ANNOTATION}), so referenceValues.rtmr2 must be measured with it"
        ),
    }
    if t.agent_policy is None:
        notes["agentPolicy"] = (
            "no agent policy in the init data: the guest's default policy applies, so "
            "MRCONFIGID binds the manifest as a claim but nothing in the TD enforces it"
        )
    return StackPins(
        target="kubernetes",
        profile=PINS_PROFILE,
        mrtd=RegisterPin(rv.mrtd),
        rtmr0=RegisterPin(rv.rtmr0),
        rtmr1=RegisterPin(rv.rtmr1),
        rtmr2=RegisterPin(rv.rtmr2),
        rtmr3=RegisterPin(None, RTMR3_REASON),
        mrconfigid=RegisterPin(mrconfigid(toml_text)),
        td_attributes=RegisterPin(
            rv.td_attributes, None if rv.td_attributes is not None else "referenceValues.tdAttributes not configured"
        ),
        notes=notes,
        image_digest=image_digest(m.image),
        model_sha256=model_sha256(m),
        kubernetes=KubernetesDetail(
            runtime_class_name=t.runtime_class_name,
            image=m.image,
            gateway_image=t.gateway_image,
            gateway_image_digest=image_digest(t.gateway_image),
            workload_manifest=m.digest().hex(),
            model={"id": m.model_id, "revision": m.model_revision, "files": dict(m.model_files)},
            init_data={"annotation": INITDATA_ANNOTATION, "algorithm": INITDATA_ALGORITHM, "toml": toml_text},
            agent_policy_sha384=hashlib.sha384(t.agent_policy.encode()).hexdigest() if t.agent_policy else None,
            td_shape=t.td_shape().to_json(),
        ),
    )


def cluster_problems(target: KubernetesTarget, facts: ClusterFacts, path: str = "workload") -> list[ConfigError]:
    """What the cluster lacks for this target, read before any object is registered
    (components/probe/kube.py): a pod of a runtime class the cluster does not have would stay
    Pending until the rollout times out."""
    key = join(join(path, "kubernetes"), "runtimeClassName")
    rc = facts.runtime_class
    if rc is None:
        return [
            ConfigError(
                key,
                f"the cluster at {facts.server} (context `{facts.context}`) has no RuntimeClass "
                f"`{target.runtime_class_name}`, so the pod would never start in a TD",
                "install Kata Containers with its NVIDIA GPU TDX runtime classes (kata-deploy, docs/kubernetes.md), "
                "or set runtimeClassName to a TDX class that `kubectl get runtimeclass` lists",
            )
        ]
    return []


def endpoint_for(target: KubernetesTarget, ingress: list[Mapping[str, Any]] | None = None) -> str:
    """The gateway URL: the load balancer's address when there is one, else the in-cluster name."""
    for entry in ingress or []:
        host = entry.get("ip") or entry.get("hostname")
        if host:
            host = f"[{host}]" if ":" in host else host
            return f"https://{host}:{target.service_port}"
    return f"https://{target.name}.{target.namespace}.svc.cluster.local:{target.service_port}"


# --------------------------------------------------------------------------------------------
# From the stack config, and `python -m components kubernetes STACK_FILE`: print the rendered
# manifests (for genpolicy)


def args_from_workload(workload: WorkloadConfig, manifest: WorkloadManifest) -> KubernetesWorkloadArgs:
    """The component's arguments from the stack's validated `workload` (components/config): the
    same `modelSource` base URL as the host target (`<modelSource>/<path>`), the known-answer check."""
    if workload.kubernetes is None:
        raise KubernetesWorkloadError("the workload's target is not kubernetes")
    return KubernetesWorkloadArgs(
        manifest=manifest,
        target=workload.kubernetes,
        known_answer=workload.known_answer,
        model_source=ModelSource(base=workload.model_source),
    )


def main(argv: list[str] | None = None) -> int:
    """The same stack validation as `pulumi preview` (components/config, offline), then the
    objects this target would create, as YAML (for Kata's genpolicy)."""
    import sys

    import yaml

    from components.config.stack import load_for_command, stack_file_parser

    path = (
        stack_file_parser(
            "python -m components kubernetes",
            "Validate the stack as `pulumi preview` would, then print the objects the Kubernetes target "
            "creates, as YAML (the input of Kata's genpolicy).",
        )
        .parse_args(argv)
        .stack_file
    )
    stack = load_for_command(path)
    if stack is None:
        return 1
    if stack.workload is None or stack.workload.kubernetes is None:
        print(f"{path}: no `workload` with `target: kubernetes`", file=sys.stderr)
        return 1
    args = args_from_workload(stack.workload, stack.workload.manifest(stack.tensor_parallel_size))
    print(yaml.safe_dump_all(render_manifests(args), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
