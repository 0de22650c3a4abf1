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
    assert paths == ["workload.kubernetes.referenceValues.mrtd", "workload.modelSource", "workload.td"], seen


def test_cuda_version_is_not_ours_to_check_on_kubernetes() -> None:
    # the Kata guest's driver is the GPU operator's: refused rather than silently unchecked
    raw = k8s_only()
    raw["workload"]["cudaVersion"] = "12.4"
    assert errors(raw) == [
        "workload.cudaVersion: only checked with `target: host`: on Kubernetes the Kata guest's driver is the "
        "GPU operator's, not our guest image's; fix: remove `cudaVersion`"
    ]


def test_tensor_parallel_size_follows_the_pod_gpu_count() -> None:
    cfg = parse_stack(k8s_only(gpuCount=2), "staging")
    assert cfg.workload is not None
    assert cfg.workload.manifest(cfg.tensor_parallel_size).tensor_parallel_size == 2


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
    mocks = RecordingMocks()
    exported, seen = run_program(
        mocks, decrypted(k8s_only()), set(), monkeypatch, stack="staging", resolve=("endpoints", "ready", "promotable")
    )
    kinds = sorted(typ for typ, _ in mocks.created)
    assert "kubernetes:apps/v1:Deployment" in kinds and "kubernetes:core/v1:Service" in kinds
    assert not [t for t in kinds if t.startswith(("command:", "tdx-vllm:host", "tdx-vllm:td"))]
    endpoints, ready, promotable = seen["endpoints"], seen["ready"], seen["promotable"]
    assert endpoints == {"kubernetes": "https://vllm.tdx-vllm.svc.cluster.local:8443"} and ready is True
    pins = exported["pins"]
    assert pins["target"] == "kubernetes" and pins["mrtd"] == MRTD and pins["rtmr3"] is None
    assert pins["imageDigest"] == "sha256:" + "ab" * 32 and len(pins["modelSha256"]) == 64
    assert promotable["td"]["mrtd"] == MRTD and promotable["workload"]["imageDigest"] == pins["imageDigest"]
    assert pins["initData"]["annotation"] == INITDATA_ANNOTATION and pins["agentPolicySha384"]
