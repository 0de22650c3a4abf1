"""`workload.target: kubernetes` in a stack: config validation and __main__.py under Pulumi mocks
(the component itself is tested in test_kubernetes_workload.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from components.config.reader import ConfigErrors
from components.config.stack import parse_stack
from components.render.kubernetes import INITDATA_ANNOTATION
from tests.support.pulumi_mocks import RecordingMocks, decrypted, run_program
from tests.support.stacks import GATEWAY, POLICY, good, target_doc, workload
from tests.support.stacks import KATA_MRTD as MRTD


@pytest.fixture(autouse=True, scope="module")
def policy_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kata") / "agent-policy.rego"
    path.write_text(POLICY)
    global POLICY_FILE
    POLICY_FILE = str(path)
    return path


POLICY_FILE = ""


def k8s_workload(**kube: Any) -> dict:
    wl = workload()
    del wl["td"], wl["cudaVersion"]
    wl["target"] = "kubernetes"
    wl["kubernetes"] = target_doc(**{"agentPolicyFile": POLICY_FILE, **kube})
    return wl


def k8s_only(**kube: Any) -> dict:
    return {"workload": k8s_workload(**kube)}


def errors(raw: dict, stack: str = "staging") -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        parse_stack(raw, stack)
    return [str(e) for e in info.value.errors]


def test_a_kubernetes_only_stack_needs_no_hosts_and_no_dcap() -> None:
    cfg = parse_stack(k8s_only(), "staging")
    assert cfg.hosts == () and cfg.dcap is None
    wl = cfg.workload
    assert wl is not None and wl.kubernetes is not None
    assert wl.target == "kubernetes" and wl.td is None and wl.kubernetes.gateway_image == GATEWAY
    assert cfg.tensor_parallel_size == wl.kubernetes.gpu_count == 1


def test_hosts_and_a_kubernetes_workload_can_share_a_stack() -> None:
    raw = good()
    raw["workload"] = k8s_workload()
    cfg = parse_stack(raw, "staging")
    assert [h.name for h in cfg.hosts] == ["gpu-a", "gpu-b"] and cfg.workload is not None
    assert cfg.workload.kubernetes is not None


def test_kubernetes_errors_are_reported_with_the_others() -> None:
    raw = k8s_only(gpuCount=2)
    raw["workload"]["td"] = {"vcpus": 4}
    raw["workload"]["modelSource"] = "http://models.example.net/"
    raw["workload"]["kubernetes"]["referenceValues"]["mrtd"] = "12"
    seen = errors(raw)
    paths = sorted(e.split(":")[0] for e in seen)
    assert paths == [
        "workload.kubernetes.gpuCount",
        "workload.kubernetes.referenceValues.mrtd",
        "workload.modelSource",
        "workload.td",
    ], seen


def test_cuda_version_is_not_ours_to_check_on_kubernetes() -> None:
    # the Kata guest's driver is the GPU operator's: refused rather than silently unchecked
    raw = k8s_only()
    raw["workload"]["cudaVersion"] = "12.4"
    assert errors(raw) == [
        "workload.cudaVersion: only checked with `target: host`: on Kubernetes the Kata guest's driver is the "
        "GPU operator's, not our guest image's; fix: remove `cudaVersion`"
    ]


def test_tensor_parallel_size_follows_the_pod_gpu_count() -> None:
    shape = {"memoryMiB": 8192 + 65536 + 1024, "vcpus": 9, "gpus": 8}
    raw = k8s_only(gpuCount=8)
    raw["workload"]["kubernetes"]["referenceValues"]["shape"] = shape
    cfg = parse_stack(raw, "staging")
    assert cfg.workload is not None
    assert cfg.workload.manifest(cfg.tensor_parallel_size).tensor_parallel_size == 8


@pytest.mark.parametrize("count", [2, 3, 4, 5, 6, 7])
def test_only_the_gpu_counts_nvidia_supports_in_one_td(count: int) -> None:
    seen = errors(k8s_only(gpuCount=count))
    assert seen == [
        f"workload.kubernetes.gpuCount: {count} GPUs in one TD: NVIDIA supports one passthrough GPU per Kata TD, "
        "or all eight with their 4 NVSwitches in protected PCIe (PPCIe) mode; fix: set 1, or 8 on an HGX node in "
        "PPCIe mode (and tensorParallelSize to match)"
    ]


def test_reference_values_are_tied_to_the_td_shape() -> None:
    """RTMR0 covers the TD's ACPI tables, which Kata sizes from the pod's limits: a changed `memory`
    must not leave pins measured for another size in force."""
    seen = errors(k8s_only(memory="96Gi"))
    assert seen == [
        "workload.kubernetes.referenceValues.shape: the reference values were measured for a TD of 74752 MiB, "
        "9 vCPUs and 1 GPUs, but memory, cpu and gpuCount give 107520 MiB, 9 vCPUs and 1 GPUs; RTMR0 (the TD's "
        "ACPI tables) differs between the two; fix: measure rtmr0 (and the rest) again from a test pod of this "
        "size and set shape to {memoryMiB: 107520, vcpus: 9, gpus: 1}, or change memory, cpu and gpuCount back"
    ]
    missing = k8s_only()
    del missing["workload"]["kubernetes"]["referenceValues"]["shape"]
    (only,) = errors(missing)
    assert only.startswith("workload.kubernetes.referenceValues.shape: missing; fix: set the TD size")


def test_the_kubernetes_block_needs_the_kubernetes_target() -> None:
    raw = good()
    raw["workload"] = workload()
    raw["workload"]["kubernetes"] = target_doc()
    assert any(e.startswith("workload.kubernetes: only used with `target: kubernetes`") for e in errors(raw))


def test_outside_dev_an_agent_policy_is_required() -> None:
    raw = k8s_only()
    del raw["workload"]["kubernetes"]["agentPolicyFile"]
    assert any(
        e.startswith("workload.kubernetes.agentPolicyFile: required outside the `dev` stack")
        for e in errors(raw, "prod")
    )
    dev = parse_stack(raw, "dev").workload
    assert dev is not None and dev.kubernetes is not None and dev.kubernetes.agent_policy is None
    for empty in (None, ""):  # `agentPolicyFile:` left empty is missing too
        raw["workload"]["kubernetes"]["agentPolicyFile"] = empty
        assert any(
            e.startswith("workload.kubernetes.agentPolicyFile: required outside the `dev` stack")
            for e in errors(raw, "prod")
        ), empty


def test_the_program_deploys_to_kubernetes_under_mocks(monkeypatch) -> None:
    # The cluster read (components/probe/kube.py) needs an API server: tests/e2e/test_kubernetes.py
    # runs it against a real one; here the program gets the kubeconfig it would have read.
    from components.probe.kube import Kubeconfig
    from components.resources import kubernetes_workload

    kubeconfig = Kubeconfig(Path("/tmp/kubeconfig"), "apiVersion: v1\n", "e2e", "https://192.0.2.10:6443")
    monkeypatch.setattr(kubernetes_workload, "connect", lambda args: kubeconfig)
    mocks = RecordingMocks()
    exported, seen = run_program(
        mocks, decrypted(k8s_only()), set(), monkeypatch, stack="staging", resolve=("endpoints", "ready", "promotable")
    )
    kinds = sorted(typ for typ, _ in mocks.created)
    assert "kubernetes:apps/v1:Deployment" in kinds and "kubernetes:core/v1:Service" in kinds
    # No host, no TD of ours: the one command is the rollout check on this machine.
    assert not [t for t in kinds if t.startswith(("command:remote", "tdx-vllm:host", "tdx-vllm:td"))]
    assert kinds.count("command:local:Command") == 1
    endpoints, ready, promotable = seen["endpoints"], seen["ready"], seen["promotable"]
    assert endpoints == {"kubernetes": "https://vllm.tdx-vllm.svc.cluster.local:8443"} and ready is True
    pins = exported["pins"]
    assert pins["target"] == "kubernetes" and pins["mrtd"] == MRTD and pins["rtmr3"] is None
    assert pins["imageDigest"] == "sha256:" + "ab" * 32 and len(pins["modelSha256"]) == 64
    assert promotable["td"]["mrtd"] == MRTD and promotable["workload"]["imageDigest"] == pins["imageDigest"]
    assert pins["initData"]["annotation"] == INITDATA_ANNOTATION and pins["agentPolicySha384"]
