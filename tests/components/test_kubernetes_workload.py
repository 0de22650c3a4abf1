"""The Kubernetes target: config parsing and every error, the rendered manifests validated offline
against the Kubernetes 1.37 schema, the init data annotation, the in-pod scripts run for real on
loopback, and the component under Pulumi mocks."""

from __future__ import annotations

import asyncio
import base64
import copy
import gzip
import hashlib
import json
import subprocess
import sys
import time
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import kubernetes_validate
import pulumi
import pytest

from components.config.kubernetes import kubernetes_target_from_mapping
from components.config.model import DEFAULT_GPU_RESOURCE, DEFAULT_RUNTIME_CLASS, KnownAnswer
from components.config.reader import ENCRYPTED, ConfigError
from components.probe.kube import Kubeconfig
from components.render.kubernetes import (
    INITDATA_ANNOTATION,
    INITDATA_DIGEST_KEY,
    INITDATA_MANIFEST_KEY,
    INITDATA_POLICY_KEY,
    SKIP_AWAIT_ANNOTATION,
    TEMPLATE_ANNOTATION,
    KubernetesWorkloadArgs,
    KubernetesWorkloadError,
    decode_initdata_annotation,
    expected_pins,
    known_answer_command,
    pod_program,
    render_manifests,
    template_digest,
    workload_problems,
)
from tdxattest.core.policy import pins_from_stack_output
from tdxattest.core.workload import CPU_OFFLOAD_VLLM_FLAGS, manifest_from_mapping
from tests.support.loopback_http import LoopbackFileServer
from tests.support.pulumi_mocks import Recorder
from tests.support.pulumi_mocks import check as _assert
from tests.support.stacks import (
    GATEWAY,
    KATA_MRTD,
    KATA_RTMR0,
    KATA_RTMR1,
    KATA_RTMR2,
    KATA_SHAPE,
    POLICY,
    WL_IMAGE,
    WL_REV,
    make_args,
    manifest_doc,
    target,
    target_doc,
)

K8S_VERSION = "1.37"
MRTD, RTMR0, RTMR1, RTMR2 = KATA_MRTD, KATA_RTMR0, KATA_RTMR1, KATA_RTMR2


def errors_of(doc: Any, **kw: Any) -> list[ConfigError]:
    t, errors = kubernetes_target_from_mapping(doc, **kw)
    assert t is None and errors
    for e in errors:  # every error names the key, the problem and the fix
        assert e.path.startswith("workload.kubernetes") and e.problem and e.fix
    return errors


def one_error(doc: Any, path: str, **kw: Any) -> ConfigError:
    errors = errors_of(doc, **kw)
    assert [e.path for e in errors] == [path], errors
    return errors[0]


def by_kind(objs: list[dict]) -> dict[str, dict]:
    return {o["kind"]: o for o in objs}


def pod_spec(objs: list[dict]) -> dict:
    return by_kind(objs)["Deployment"]["spec"]["template"]["spec"]


def containers(objs: list[dict]) -> dict[str, dict]:
    spec = pod_spec(objs)
    return {c["name"]: c for c in spec["containers"] + spec["initContainers"]}


# ---------------------------------------------------------------------------------------------
# Config


def test_minimal_target_takes_the_documented_defaults():
    t = target()
    assert t.runtime_class_name == DEFAULT_RUNTIME_CLASS == "kata-qemu-nvidia-gpu-tdx"
    assert t.gpu_resource == DEFAULT_GPU_RESOURCE == "nvidia.com/pgpu"
    assert (t.namespace, t.name, t.create_namespace, t.gpu_count) == ("tdx-vllm", "vllm", True, 1)
    assert (t.service_type, t.service_port, t.node_port) == ("ClusterIP", 8443, None)
    assert t.kubeconfig is None and t.context is None and t.agent_policy is None
    assert t.reference_values.mrtd == MRTD and t.reference_values.td_attributes is None


def test_full_target(tmp_path: Path):
    (tmp_path / "policy.rego").write_text(POLICY)
    t, errors = kubernetes_target_from_mapping(
        target_doc(
            namespace="inference",
            name="qwen",
            createNamespace="false",
            runtimeClassName="my-kata-qemu-tdx",
            gpuCount="8",
            gpuResource="nvidia.com/GH100_H100_SXM5_80GB",
            memory="128Gi",
            cpu=16,
            modelCacheSize="20Gi",
            service={"type": "NodePort", "port": 443, "nodePort": 31443},
            kubeconfig="~/.kube/prod",
            context="prod",
            agentPolicyFile="policy.rego",
            referenceValues={
                "mrtd": MRTD.upper(),
                "rtmr0": "0x" + RTMR0,
                "rtmr1": RTMR1,
                "rtmr2": RTMR2,
                "tdAttributes": "0000001000000000",
                "shape": {"memoryMiB": 8192 + 131072 + 1024, "vcpus": 17, "gpus": 8},
            },
        ),
        stack="staging",
        base_dir=tmp_path,
    )
    assert errors == [] and t is not None
    assert (t.namespace, t.name, t.create_namespace, t.runtime_class_name) == (
        "inference",
        "qwen",
        False,
        "my-kata-qemu-tdx",
    )
    assert (t.gpu_count, t.gpu_resource, t.memory, t.cpu, t.model_cache_size) == (
        8,
        "nvidia.com/GH100_H100_SXM5_80GB",
        "128Gi",
        "16",
        "20Gi",
    )
    assert (t.service_type, t.service_port, t.node_port, t.kubeconfig, t.context) == (
        "NodePort",
        443,
        31443,
        "~/.kube/prod",
        "prod",
    )
    assert t.agent_policy == POLICY and t.agent_policy_file == "policy.rego"
    assert t.reference_values.mrtd == MRTD and t.reference_values.rtmr0 == RTMR0
    assert t.reference_values.td_attributes == "0000001000000000"


def test_missing_or_malformed_block():
    assert one_error(None, "workload.kubernetes").problem.startswith("required")
    assert "mapping" in one_error(["x"], "workload.kubernetes").problem
    errors = errors_of({})
    assert [e.path for e in errors] == ["workload.kubernetes.gatewayImage"]


def test_unknown_keys_get_did_you_mean():
    e = one_error(target_doc(gatewayImg=GATEWAY), "workload.kubernetes.gatewayImg")
    assert e.problem == "unknown key" and "did you mean `gatewayImage`?" in e.fix
    e = one_error(
        target_doc(
            referenceValues={
                "mrtd": MRTD,
                "rtmr0": RTMR0,
                "rtmr1": RTMR1,
                "rtmr2": RTMR2,
                "rtmr4": RTMR2,
                "shape": KATA_SHAPE,
            }
        ),
        "workload.kubernetes.referenceValues.rtmr4",
    )
    assert "known keys" in e.fix or "did you mean" in e.fix
    e = one_error(target_doc(service={"typ": "ClusterIP"}), "workload.kubernetes.service.typ")
    assert "did you mean `type`?" in e.fix


@pytest.mark.parametrize(
    "key,value,path,needle",
    [
        ("namespace", "Bad_NS", "namespace", "not a valid name"),
        ("name", "x" * 41, "name", "at most 40"),
        ("runtimeClassName", "kata-qemu-nvidia-gpu", "runtimeClassName", "not a Kata TDX runtime class"),
        ("runtimeClassName", "kata-qemu-snp", "runtimeClassName", "not a Kata TDX runtime class"),
        ("runtimeClassName", "Kata TDX", "runtimeClassName", "not a valid RuntimeClass name"),
        ("gatewayImage", "ghcr.io/example/gw:latest", "gatewayImage", "not an image pinned by digest"),
        ("gatewayImage", "ghcr.io/example/gw@sha256:ABC", "gatewayImage", "not an image pinned by digest"),
        ("gpuCount", 0, "gpuCount", "integer in 1..8"),
        ("gpuCount", 9, "gpuCount", "integer in 1..8"),
        ("gpuResource", "gpu", "gpuResource", "not an extended resource name"),
        ("memory", "64GB", "memory", "not a memory size"),
        ("cpu", "eight", "cpu", "not a CPU count"),
        ("modelCacheSize", "lots", "modelCacheSize", "not a size"),
        ("kubeconfig", ENCRYPTED, "kubeconfig", "is a secret"),
        ("context", 7, "context", "non-empty string"),
        ("createNamespace", "yes", "createNamespace", "true or false"),
    ],
)
def test_each_field_error(key, value, path, needle):
    e = one_error(target_doc(**{key: value}), f"workload.kubernetes.{path}")
    assert needle in e.problem, e


def test_gateway_image_required():
    doc = target_doc()
    del doc["gatewayImage"]
    e = one_error(doc, "workload.kubernetes.gatewayImage")
    assert e.problem == "required" and "sha256" in e.fix


@pytest.mark.parametrize(
    "service,path,needle",
    [
        ({"type": "Loadbalancer"}, "service.type", "not one of"),
        ({"port": 70000}, "service.port", "integer in 1..65535"),
        ({"type": "ClusterIP", "nodePort": 31000}, "service.nodePort", "only used with `type: NodePort`"),
        ({"type": "NodePort", "nodePort": 80}, "service.nodePort", "integer in 30000..32767"),
        ("ClusterIP", "service", "expected a mapping"),
    ],
)
def test_service_errors(service, path, needle):
    e = one_error(target_doc(service=service), f"workload.kubernetes.{path}")
    assert needle in e.problem
    if service == {"type": "Loadbalancer"}:
        assert "did you mean `LoadBalancer`?" in e.fix


def test_reference_values_errors():
    doc = target_doc()
    del doc["referenceValues"]
    assert "Kata guest's reference values" in one_error(doc, "workload.kubernetes.referenceValues").fix
    rv = {"mrtd": MRTD, "rtmr0": RTMR0, "rtmr1": RTMR1, "shape": KATA_SHAPE}
    assert one_error(target_doc(referenceValues=rv), "workload.kubernetes.referenceValues.rtmr2").problem == "required"
    e = one_error(target_doc(referenceValues={**rv, "rtmr2": "ab" * 32}), "workload.kubernetes.referenceValues.rtmr2")
    assert "96 hex digits" in e.problem
    e = one_error(target_doc(referenceValues={**rv, "rtmr2": "0" * 96}), "workload.kubernetes.referenceValues.rtmr2")
    assert "all zeros" in e.problem
    e = one_error(
        target_doc(referenceValues={**rv, "rtmr2": RTMR2, "tdAttributes": "0100001000000000"}),
        "workload.kubernetes.referenceValues.tdAttributes",
    )
    assert "DEBUG" in e.problem
    e = one_error(
        target_doc(referenceValues={**rv, "rtmr2": RTMR2, "tdAttributes": "xyz"}),
        "workload.kubernetes.referenceValues.tdAttributes",
    )
    assert "16 hex digits" in e.problem


def test_hex_that_yaml_read_as_a_number_says_quote_it():
    rv = {"mrtd": int("1" * 96), "rtmr0": RTMR0, "rtmr1": RTMR1, "rtmr2": RTMR2, "tdAttributes": 1000000000}
    rv["shape"] = KATA_SHAPE
    errors = errors_of(target_doc(referenceValues=rv))
    assert [e.path for e in errors] == [
        "workload.kubernetes.referenceValues.mrtd",
        "workload.kubernetes.referenceValues.tdAttributes",
    ]
    assert all("as the number" in e.problem and "quote it" in e.fix for e in errors)


def test_cli_prints_the_manifests_for_genpolicy(tmp_path: Path):
    """The CLI reads a stack file exactly as `pulumi preview` does (components/config.py)."""
    import yaml

    from tests.support.stacks import workload as stack_workload

    workload = {**stack_workload(), "target": "kubernetes", "kubernetes": target_doc()}
    del workload["td"], workload["cudaVersion"]
    stack = tmp_path / "Pulumi.dev.yaml"
    stack.write_text(yaml.safe_dump({"config": {"tdx-vllm:workload": workload}}))
    done = subprocess.run(
        [sys.executable, "-m", "components.render.kubernetes", str(stack)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    assert [d["kind"] for d in yaml.safe_load_all(done.stdout)] == ["Namespace", "Deployment", "Service"]
    (tmp_path / "Pulumi.prod.yaml").write_text(stack.read_text())
    refused = subprocess.run(
        [sys.executable, "-m", "components.render.kubernetes", str(tmp_path / "Pulumi.prod.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert refused.returncode == 1 and "agentPolicyFile" in refused.stderr


def test_agent_policy_file(tmp_path: Path):
    e = one_error(target_doc(agentPolicyFile="missing.rego"), "workload.kubernetes.agentPolicyFile", base_dir=tmp_path)
    assert "cannot read" in e.problem
    (tmp_path / "not-policy.rego").write_text("package something_else\n")
    e = one_error(
        target_doc(agentPolicyFile="not-policy.rego"), "workload.kubernetes.agentPolicyFile", base_dir=tmp_path
    )
    assert "not a Kata agent policy" in e.problem
    # Outside dev, a policy is required: without one the host can exec into the TD.
    e = one_error(target_doc(), "workload.kubernetes.agentPolicyFile", stack="prod")
    assert "required outside the `dev` stack" in e.problem and "genpolicy" in e.fix
    t, errors = kubernetes_target_from_mapping(target_doc(), stack="dev")
    assert errors == [] and t is not None and t.agent_policy is None


def test_every_error_is_reported_at_once():
    doc = target_doc(namespace="BAD", gatewayImage="gw:latest", gpuCount=0, service={"type": "Ingress"}, bogus=1)
    paths = {e.path for e in errors_of(doc)}
    assert paths == {
        "workload.kubernetes.namespace",
        "workload.kubernetes.gatewayImage",
        "workload.kubernetes.gpuCount",
        "workload.kubernetes.service.type",
        "workload.kubernetes.bogus",
    }


def test_workload_problems_name_each_offending_input():
    m = manifest_from_mapping(
        manifest_doc(
            tensorParallelSize=2,
            vllmArgs=[
                "--cpu-offload-gb",
                "8",
                "--kv-offloading-size=16",
                "--host",
                "0.0.0.0",
                "--max-model-len",
                "4096",
            ],
        )
    )
    problems = workload_problems(m, target())
    assert [p.path for p in problems] == [
        "workload.kubernetes.gpuCount",
        "workload.vllmArgs[0]",
        "workload.vllmArgs[2]",
        "workload.vllmArgs[3]",
    ]
    assert "encrypted bounce buffers" in problems[1].problem and "gateway" in problems[3].problem
    with pytest.raises(KubernetesWorkloadError, match="gpuCount"):
        render_manifests(KubernetesWorkloadArgs(m, target(), KnownAnswer("p", "e")))
    assert workload_problems(manifest_from_mapping(manifest_doc()), target()) == []


def test_an_image_by_tag_is_refused():
    tagged = replace(manifest_from_mapping(manifest_doc()), image="docker.io/vllm/vllm-openai:latest")
    assert [p.path for p in workload_problems(tagged, target())] == ["workload.image"]
    with pytest.raises(KubernetesWorkloadError, match="pinned by digest"):
        render_manifests(make_args(tagged))
    with pytest.raises(KubernetesWorkloadError, match="gatewayImage"):
        render_manifests(replace(make_args(), target=replace(target(), gateway_image="ghcr.io/x/gw:1.0")))


# ---------------------------------------------------------------------------------------------
# Rendered manifests


VARIANTS = {
    "defaults": {},
    "nodeport-no-namespace": {"createNamespace": False, "service": {"type": "NodePort", "nodePort": 31443}},
    "loadbalancer-cache": {"service": {"type": "LoadBalancer", "port": 443}, "modelCacheSize": "40Gi"},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_manifests_validate_against_the_kubernetes_schema(variant):
    objs = render_manifests(make_args(**VARIANTS[variant]))
    kinds = [o["kind"] for o in objs]
    assert kinds == (
        ["Deployment", "Service"] if variant == "nodeport-no-namespace" else ["Namespace", "Deployment", "Service"]
    )
    for obj in objs:
        kubernetes_validate.validate(copy.deepcopy(obj), K8S_VERSION, strict=True)


def test_validation_is_real():
    """The schema check would catch a typo (strict: unknown fields are errors)."""
    dep = by_kind(render_manifests(make_args()))["Deployment"]
    dep["spec"]["template"]["spec"]["runtimeClass"] = "kata"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)


def test_one_pod_one_td_with_runtime_class_and_gpu_limits():
    eight = {"mrtd": MRTD, "rtmr0": RTMR0, "rtmr1": RTMR1, "rtmr2": RTMR2, "shape": {**KATA_SHAPE, "gpus": 8}}
    args = make_args(gpuCount=8, gpuResource="nvidia.com/gpu", referenceValues=eight)
    args = replace(args, manifest=replace(args.manifest, tensor_parallel_size=8))
    objs = render_manifests(args)
    dep = by_kind(objs)["Deployment"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    spec = pod_spec(objs)
    assert spec["runtimeClassName"] == "kata-qemu-nvidia-gpu-tdx"
    assert spec["automountServiceAccountToken"] is False
    assert [c["name"] for c in spec["containers"]] == ["vllm", "gateway"]
    c = containers(objs)
    # Eight GPUs: NVIDIA's protected PCIe mode, with the board's four NVSwitches in the same TD.
    assert c["vllm"]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert c["vllm"]["resources"]["limits"]["nvidia.com/nvswitch"] == "4"
    assert all("nvidia.com" not in k for k in c["gateway"]["resources"].get("limits", {}))
    # The model is on a disk emptyDir (CoCo's block-encrypted mode), not tmpfs: its pages would count
    # against the fetcher's memory limit. The fetcher refuses a host-shared mount (test_model_fetch).
    assert {v["name"]: v["emptyDir"] for v in spec["volumes"]}["model"] == {}
    one = containers(render_manifests(make_args()))["vllm"]["resources"]["limits"]
    assert "nvidia.com/nvswitch" not in one and one["nvidia.com/pgpu"] == "1"


def test_vllm_container_args_env_and_no_cpu_offload():
    objs = render_manifests(make_args())
    vllm = containers(objs)["vllm"]
    assert vllm["image"] == WL_IMAGE
    args = vllm["args"]
    assert args[:10] == [
        "--model",
        "/models/model",
        "--served-model-name",
        "Qwen/Qwen2.5-0.5B-Instruct",
        "--host",
        "127.0.0.1",
        "--port",
        "8000",
        "--tensor-parallel-size",
        "1",
    ]
    assert args[10:] == ["--max-model-len", "4096", "--gpu-memory-utilization=0.9"]
    assert not any(a.split("=")[0] in CPU_OFFLOAD_VLLM_FLAGS for a in args)
    env = {e["name"]: e["value"] for e in vllm["env"]}
    assert env["VLLM_USE_V2_MODEL_RUNNER"] == "0" and env["HF_HUB_OFFLINE"] == "1"
    assert "ports" not in vllm  # vLLM is reachable only on the pod's loopback, through the gateway


def test_gateway_container_and_known_answer_probe():
    objs = render_manifests(make_args())
    gw = containers(objs)["gateway"]
    assert gw["image"] == GATEWAY
    assert gw["command"] == [
        "python3",
        "-m",
        "tdxattest",
        "gateway",
        "--listen",
        "0.0.0.0:8443",
        "--upstream",
        "http://127.0.0.1:8000",
        "--quote-source",
        "aa",
    ]
    assert gw["ports"] == [{"name": "https", "containerPort": 8443, "protocol": "TCP"}]
    cmd = gw["readinessProbe"]["exec"]["command"]
    assert cmd[3:5] == ["https://127.0.0.1:8443", "Paris"]
    # the guest agent's own greedy request, field for field
    assert json.loads(cmd[5]) == {
        "model": "Qwen/Qwen2.5-0.5B-Instruct",
        "prompt": "The capital of France is",
        "max_tokens": 16,
        "temperature": 0,
        "top_p": 1,
        "seed": 0,
        "stream": False,
    }
    svc = by_kind(objs)["Service"]
    assert (
        svc["spec"]["ports"][0]["targetPort"] == "https"
        and svc["spec"]["selector"] == by_kind(objs)["Deployment"]["spec"]["selector"]["matchLabels"]
    )


def test_every_image_is_by_digest():
    for c in containers(render_manifests(make_args())).values():
        assert "@sha256:" in c["image"] and c["image"] in (WL_IMAGE, GATEWAY)


def test_init_data_annotation_carries_the_manifest_digest():
    args = make_args()
    objs = render_manifests(args)
    annotations = by_kind(objs)["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    raw = gzip.decompress(base64.b64decode(annotations[INITDATA_ANNOTATION], validate=True))
    doc = tomllib.loads(raw.decode())
    assert doc["version"] == "0.1.0" and doc["algorithm"] == "sha384"
    assert doc["data"][INITDATA_DIGEST_KEY] == args.manifest.digest().hex()
    assert doc["data"][INITDATA_MANIFEST_KEY].encode() == args.manifest.canonical_bytes()
    assert hashlib.sha384(doc["data"][INITDATA_MANIFEST_KEY].encode()).hexdigest() == doc["data"][INITDATA_DIGEST_KEY]
    assert INITDATA_POLICY_KEY not in doc["data"]
    # MRCONFIGID is the SHA-384 of exactly these TOML bytes.
    assert expected_pins(args).to_json()["mrconfigid"] == hashlib.sha384(raw).hexdigest()
    assert decode_initdata_annotation(annotations[INITDATA_ANNOTATION]) == raw.decode()
    # Deterministic (gzip mtime 0): an unchanged workload renders the same annotation, no pod restart.
    again = by_kind(render_manifests(make_args()))["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert again == annotations


def test_init_data_carries_the_agent_policy_and_changes_mrconfigid(tmp_path: Path):
    (tmp_path / "p.rego").write_text(POLICY + 'ExecProcessRequest if { input.process.Args[0] == "python3" }\n"""\n')
    t, errors = kubernetes_target_from_mapping(target_doc(agentPolicyFile="p.rego"), base_dir=tmp_path)
    assert errors == [] and t is not None and t.agent_policy is not None
    with_policy = replace(make_args(), target=t)
    objs = render_manifests(with_policy)
    toml_text = decode_initdata_annotation(
        by_kind(objs)["Deployment"]["spec"]["template"]["metadata"]["annotations"][INITDATA_ANNOTATION]
    )
    assert tomllib.loads(toml_text)["data"][INITDATA_POLICY_KEY] == t.agent_policy
    pins, plain = expected_pins(with_policy).to_json(), expected_pins(make_args()).to_json()
    assert pins["mrconfigid"] != plain["mrconfigid"]
    assert pins["agentPolicySha384"] == hashlib.sha384(t.agent_policy.encode()).hexdigest()
    plain_reasons, pins_reasons = plain["reasons"], pins["reasons"]
    assert isinstance(plain_reasons, dict) and isinstance(pins_reasons, dict)
    assert "agentPolicy" in plain_reasons and "agentPolicy" not in pins_reasons


def test_a_changed_manifest_changes_the_init_data_and_mrconfigid():
    a = make_args()
    b = replace(a, manifest=replace(a.manifest, vllm_args=("--max-model-len", "8192")))
    ann = [by_kind(render_manifests(x))["Deployment"]["spec"]["template"]["metadata"]["annotations"] for x in (a, b)]
    assert ann[0][INITDATA_ANNOTATION] != ann[1][INITDATA_ANNOTATION]
    assert expected_pins(a).to_json()["mrconfigid"] != expected_pins(b).to_json()["mrconfigid"]


def test_pins_are_readable_by_the_verifying_proxy():
    args = make_args(
        referenceValues={
            "mrtd": MRTD,
            "rtmr0": RTMR0,
            "rtmr1": RTMR1,
            "rtmr2": RTMR2,
            "tdAttributes": "0000001000000000",
            "shape": KATA_SHAPE,
        }
    )
    pins = expected_pins(args).to_json()
    assert (pins["mrtd"], pins["rtmr0"], pins["rtmr1"], pins["rtmr2"]) == (MRTD, RTMR0, RTMR1, RTMR2)
    assert pins["rtmr3"] is None and "MRCONFIGID" in pins["reasons"]["rtmr3"]
    assert pins["imageDigest"] == "sha256:" + "ab" * 32 and pins["workloadManifest"] == args.manifest.digest().hex()
    assert pins["model"]["files"] == {"config.json": "aa" * 32, "model.safetensors": "bb" * 32}
    parsed, keys = pins_from_stack_output(json.loads(json.dumps(pins)))
    assert {"mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrconfigid", "td_attributes"} == set(keys)
    assert parsed.mrconfigid.values == (bytes.fromhex(pins["mrconfigid"]),)
    assert parsed.rtmr3.values is None and "MRCONFIGID" in parsed.rtmr3.reason


# ---------------------------------------------------------------------------------------------
# The in-pod scripts, run for real on loopback


@pytest.fixture
def file_server(tmp_path: Path):
    root = tmp_path / "mirror"
    (root / "org" / "m" / WL_REV / "sub").mkdir(parents=True)
    files = {"config.json": b'{"a": 1}', "sub/weights.bin": b"\x00\x01" * 5000}
    for rel, data in files.items():
        (root / "org" / "m" / WL_REV / rel).write_bytes(data)
    with LoopbackFileServer(root) as server:
        yield server.url.rstrip("/"), {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


def _fetch(url: str, files: dict, dest: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", pod_program("model_fetch"), url + "/{id}/{revision}", "org/m", WL_REV, str(dest)],
        env={"TDX_VLLM_MODEL_FILES": json.dumps(files)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_model_fetch_verifies_every_file(file_server, tmp_path: Path):
    url, files = file_server
    done = _fetch(url, files, tmp_path / "model")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "model" / "sub" / "weights.bin").read_bytes() == b"\x00\x01" * 5000
    bad = dict(files, **{"config.json": "00" * 32})
    refused = _fetch(url, bad, tmp_path / "model2")
    assert refused.returncode != 0 and f"model file config.json: sha256 {'00' * 32}, seen" in refused.stderr
    assert not (tmp_path / "model2" / "config.json").exists()


# /proc/self/mountinfo lines (proc(5)) of a Kata container: its root, a block-encrypted emptyDir (a
# dm-crypt device the guest opened), a memory emptyDir, and an emptyDir of the `shared-fs` mode (a
# host directory over virtio-fs; Kata's shared mount source is `kataShared`).
KATA_MOUNTINFO = """\
1048 1036 0:112 / / rw,relatime - overlay overlay rw,lowerdir=/run/kata-containers/image/layers/1
1063 1048 253:1 / /models rw,relatime - ext4 /dev/mapper/encrypted_disk_Xy2a rw
1064 1048 0:121 / /dev/shm rw,relatime - tmpfs shm rw,size=65536k
1065 1048 0:33 /sandbox/volumes/home /home/tdx\\040vllm rw,relatime - virtiofs kataShared rw
"""


def test_model_fetch_refuses_a_volume_the_host_shares_in() -> None:
    from guest_agent.pod.model_fetch import FetchError, check_volume, mount_of

    assert mount_of("/models/model", KATA_MOUNTINFO) == ("/models", "ext4", "/dev/mapper/encrypted_disk_Xy2a")
    assert mount_of("/modelsx", KATA_MOUNTINFO)[0] == "/"  # a prefix of the name is not the mount
    assert mount_of("/home/tdx vllm/.cache", KATA_MOUNTINFO)[1] == "virtiofs"
    check_volume("/models/model", KATA_MOUNTINFO)
    check_volume("/dev/shm/model", KATA_MOUNTINFO)
    with pytest.raises(FetchError, match=r"on virtiofs \(kataShared at /home/tdx vllm\).*block-encrypted"):
        check_volume("/home/tdx vllm/model", KATA_MOUNTINFO)
    # This machine's own mount table: the temp dir is not host-shared.
    check_volume(str(Path("/tmp")), Path("/proc/self/mountinfo").read_text())


def test_known_answer_probe_against_the_real_gateway():
    """The probe command from the manifest, run against the real gateway (TEST-PKI quotes) in front of
    the stand-in vLLM: it passes when the answer begins with `expect` and fails otherwise."""
    from tdxattest.channel.gateway import Gateway, GatewayConfig
    from tdxattest.testing.standin import StandinConfig, StandinServer, known_answer
    from tdxattest.testing.testpki import SoftwareQuoteProvider, make_test_pki
    from tests.support.channel import LoopThread

    loop = LoopThread()
    standin = StandinServer(StandinConfig())
    runner = None
    try:
        loop.run(standin.start())
        gateway = Gateway(
            GatewayConfig(upstream=standin.url, host="127.0.0.1", port=0, event_log=None),
            SoftwareQuoteProvider(make_test_pki(int(time.time()))),
        )
        runner = loop.run(gateway.start())
        url = f"https://127.0.0.1:{gateway.port}"
        model = StandinConfig().model

        def probe(expect: str) -> subprocess.CompletedProcess:
            cmd = known_answer_command(model, KnownAnswer("Say OK", expect, 2), url)
            return subprocess.run([sys.executable, *cmd[1:]], capture_output=True, text=True, timeout=60)

        ok = probe(known_answer("Say OK", max_tokens=2))
        assert ok.returncode == 0, ok.stderr
        assert probe("Say").returncode == 0  # the agent's rule: the answer begins with `expect`
        for wrong_expect in ("Paris", "OK"):  # "OK" is in the answer "Say OK" but does not begin it
            wrong = probe(wrong_expect)
            assert wrong.returncode != 0 and "known-answer check failed" in wrong.stderr, wrong_expect
    finally:
        if runner is not None:  # the gateway is stopped also when an assertion failed
            loop.run(runner.cleanup())
        loop.run(standin.stop())
        loop.close()


# ---------------------------------------------------------------------------------------------
# The component under Pulumi mocks

LB_IP = "203.0.113.7"


class Mocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.created: dict[str, pulumi.runtime.MockResourceArgs] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.created[args.name] = args
        outs = dict(args.inputs)
        if args.typ == "kubernetes:core/v1:Service" and outs["spec"].get("type") == "LoadBalancer":
            outs["status"] = {"loadBalancer": {"ingress": [{"ip": LB_IP}]}}
        return [f"{args.name}-id", outs]

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}


@pytest.fixture
def mocks():
    m = Mocks()
    pulumi.runtime.set_mocks(m, project="tdx-vllm", stack="staging", preview=False)
    yield m


ENCRYPTED_SIG, SECRET_SIG = (
    "4dabf18193072939515e22adb298388d",
    "1b47061264138c4ac30d75fd1eb44270",
)  # Pulumi's secret marker
KUBECONFIG = Kubeconfig(
    path=Path("/tmp/kubeconfig"),
    text="apiVersion: v1\nkind: Config\n",
    context="prod",
    server="https://192.0.2.10:6443",
)


def build(args: KubernetesWorkloadArgs):
    from components.resources.kubernetes_workload import KubernetesWorkload

    rec = Recorder()
    wl = KubernetesWorkload("qwen", args, KUBECONFIG, opts=pulumi.ResourceOptions(transformations=[rec]))
    return wl, rec


@pulumi.runtime.test
def test_component_creates_the_expected_resources(mocks):
    args = make_args()
    wl, rec = build(args)

    def check(outs):
        endpoint, pins = outs
        created = {n: a.typ for n, a in mocks.created.items()}
        assert created == {
            "qwen": "tdx-vllm:workload:KubernetesWorkload",
            "qwen-provider": "pulumi:providers:kubernetes",
            "qwen-namespace": "kubernetes:core/v1:Namespace",
            "qwen-deployment": "kubernetes:apps/v1:Deployment",
            "qwen-service": "kubernetes:core/v1:Service",
            "qwen-rollout": "command:local:Command",
        }
        # The rollout check runs after the Deployment, gets the kubeconfig as a secret on stdin (never
        # on its command line), and waits for exactly the template that was applied.
        rollout = mocks.created["qwen-rollout"].inputs
        assert rec.resources["qwen-rollout"].opts.depends_on == [wl.deployment]
        assert rollout["stdin"] == {ENCRYPTED_SIG: SECRET_SIG, "value": KUBECONFIG.text}
        assert KUBECONFIG.text not in rollout["create"] and " kube-rollout " in rollout["create"]
        applied = mocks.created["qwen-deployment"].inputs["spec"]["template"]["metadata"]["annotations"]
        rendered = by_kind(render_manifests(args))["Deployment"]["spec"]["template"]
        assert applied[TEMPLATE_ANNOTATION] == template_digest(rendered)
        assert rollout["create"].split("--expect ")[1].split()[0] == applied[TEMPLATE_ANNOTATION]
        for name in ("qwen-namespace", "qwen-deployment", "qwen-service"):
            assert rec.resources[name].opts.parent is wl
        assert {d for d in rec.resources["qwen-deployment"].opts.depends_on} == {wl.namespace}
        assert rec.resources["qwen-deployment"].opts.custom_timeouts.create == "2700s"
        # What reached the engine is what render_manifests says (and what the schema accepted).
        dep = mocks.created["qwen-deployment"].inputs
        # The controller's progress deadline is the provider's await: neither gives up first.
        assert dep["spec"]["progressDeadlineSeconds"] == 2700
        rendered = by_kind(render_manifests(args))["Deployment"]
        assert dep["spec"]["template"]["spec"]["runtimeClassName"] == "kata-qemu-nvidia-gpu-tdx"
        assert json.loads(json.dumps(dep["spec"]["template"]["spec"]["containers"])) == json.loads(
            json.dumps(rendered["spec"]["template"]["spec"]["containers"])
        )
        vllm = dep["spec"]["template"]["spec"]["containers"][0]
        assert vllm["resources"]["limits"]["nvidia.com/pgpu"] == "1"
        assert not any(a.split("=")[0] in CPU_OFFLOAD_VLLM_FLAGS for a in vllm["args"])
        toml_text = decode_initdata_annotation(dep["spec"]["template"]["metadata"]["annotations"][INITDATA_ANNOTATION])
        assert tomllib.loads(toml_text)["data"][INITDATA_DIGEST_KEY] == args.manifest.digest().hex()
        images = [
            c["image"]
            for c in dep["spec"]["template"]["spec"]["containers"] + dep["spec"]["template"]["spec"]["initContainers"]
        ]
        assert all("@sha256:" in i for i in images)
        assert endpoint == "https://vllm.tdx-vllm.svc.cluster.local:8443"
        assert pins == expected_pins(args).to_json()
        assert pins["mrtd"] == MRTD and pins["rtmr3"] is None
        assert pins["mrconfigid"] == hashlib.sha384(toml_text.encode()).hexdigest()

    # `ready` and `endpoints` hang on the rollout check (the known-answer probe passed), not
    # only on the Service.
    depends = pulumi.Output.from_input(asyncio.ensure_future(wl.endpoint.resources()))
    return pulumi.Output.all(wl.endpoint, wl.pins, depends).apply(
        lambda a: (check(a[:2]), _assert({wl.rollout, wl.service} <= a[2]))
    )


@pulumi.runtime.test
def test_component_with_kubeconfig_and_load_balancer(mocks):
    wl, rec = build(
        make_args(
            kubeconfig="/tmp/kubeconfig",
            context="prod",
            createNamespace=False,
            service={"type": "LoadBalancer", "port": 443},
        )
    )

    def check(endpoint):
        provider = mocks.created["qwen-provider"]
        assert provider.typ == "pulumi:providers:kubernetes"
        assert provider.inputs["context"] == "prod" and provider.inputs["clusterIdentifier"] == KUBECONFIG.server
        # A secret: the mocks see the engine's secret wrapper around the kubeconfig's text.
        assert provider.inputs["kubeconfig"] == {ENCRYPTED_SIG: SECRET_SIG, "value": KUBECONFIG.text}
        svc = mocks.created["qwen-service"].inputs
        assert svc["metadata"]["annotations"] == {SKIP_AWAIT_ANNOTATION: "true"}
        assert "qwen-namespace" not in mocks.created
        assert rec.resources["qwen-deployment"].opts.provider is not None
        assert endpoint == f"https://{LB_IP}:443"

    return wl.endpoint.apply(check)


def test_component_refuses_a_tag_before_registering_anything(mocks):
    from components.resources.kubernetes_workload import KubernetesWorkload

    tagged = replace(manifest_from_mapping(manifest_doc()), image="docker.io/vllm/vllm-openai:v0.11.0")
    with pytest.raises(KubernetesWorkloadError, match="pinned by digest"):
        KubernetesWorkload("bad", make_args(tagged), KUBECONFIG)
    assert [n for n in mocks.created if n != "bad"] == []
