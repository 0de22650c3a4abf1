"""components/probe/kube.py without a cluster: the kubeconfig reader and the rollout rule (the
cluster reads themselves run against a real API server in tests/e2e/test_kubernetes.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from components.probe.kube import ClusterReadError, load_kubeconfig, parse_kubeconfig, rollout_state

KEY = "tdx-vllm.io/pod-template-sha256"
SECRET = "c2VjcmV0LWtleS1tYXRlcmlhbA=="


def kubeconfig(**over: Any) -> dict[str, Any]:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"client-key-data": SECRET}}],
        "contexts": [{"name": "prod", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "prod",
    }
    doc.update(over)
    return doc


def test_the_context_and_its_server() -> None:
    kc = parse_kubeconfig(Path("k"), yaml.safe_dump(kubeconfig()), None, "here", "key")
    assert (kc.context, kc.server) == ("prod", "https://10.0.0.1:6443")
    with pytest.raises(ClusterReadError, match=r"has no context `staging` \(contexts: prod\); fix: set the context"):
        parse_kubeconfig(Path("k"), yaml.safe_dump(kubeconfig()), "staging", "here", "key")
    broken = kubeconfig(clusters=[{"name": "c", "cluster": {}}])
    with pytest.raises(ClusterReadError, match="which has no server; fix: repair the kubeconfig"):
        parse_kubeconfig(Path("k"), yaml.safe_dump(broken), None, "here", "key")


def test_a_broken_kubeconfig_is_named_without_its_contents(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(f"users:\n- user: {{client-key-data: {SECRET}\n  : [\n")
    with pytest.raises(ClusterReadError) as info:
        load_kubeconfig(str(path), None, "workload.kubernetes.kubeconfig")
    assert str(info.value).startswith(f"the kubeconfig workload.kubernetes.kubeconfig ({path}) is not YAML (line ")
    assert SECRET not in str(info.value)
    with pytest.raises(ClusterReadError, match=r"cannot read the kubeconfig .*: No such file or directory; fix: set"):
        load_kubeconfig(str(tmp_path / "missing"), None, "workload.kubernetes.kubeconfig")


def deployment(annotation: str = "new", generation: int = 2, observed: int = 2, **status: Any) -> dict[str, Any]:
    counts = {"replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": 1, "template": {"metadata": {"annotations": {KEY: annotation}}}},
        "status": {"observedGeneration": observed, **counts, **status},
    }


def test_the_rollout_is_done_only_for_the_applied_template_seen_by_the_controller() -> None:
    assert rollout_state(deployment(), KEY, "new") == (
        True,
        "replicas 1/1, updatedReplicas 1/1, readyReplicas 1/1, availableReplicas 1/1",
    )
    # What pulumi-kubernetes' own await can take for done: the new spec, the previous status.
    done, seen = rollout_state(deployment(observed=1), KEY, "new")
    assert not done and seen == "the controller has not seen generation 2 yet (observed 1)"
    done, seen = rollout_state(deployment("old"), KEY, "new")
    assert not done and "'old', not 'new'" in seen
    # Recreate: the old pod is gone, the new one not Ready yet.
    done, seen = rollout_state(deployment(readyReplicas=0, availableReplicas=0), KEY, "new")
    assert not done and "readyReplicas 0/1" in seen
    # Two pods (an old one terminating) is not done either.
    assert not rollout_state(deployment(replicas=2), KEY, "new")[0]


def test_a_rollout_past_its_deadline_fails_at_once() -> None:
    stuck = deployment(readyReplicas=0)
    stuck["status"]["conditions"] = [
        {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": "RS vllm-1 has timed out",
        }
    ]
    with pytest.raises(ClusterReadError, match="the rollout failed: RS vllm-1 has timed out"):
        rollout_state(stuck, KEY, "new")


def test_an_unreachable_api_server_is_named_with_its_fix(tmp_path: Path) -> None:
    from components.probe.kube import read_cluster
    from tests.support.kube.cluster import free_port

    server = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    doc = kubeconfig(clusters=[{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}])
    doc["users"] = [{"name": "u", "user": {"token": "not-a-real-token"}}]
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(doc))
    kc = load_kubeconfig(str(path), None, "workload.kubernetes.kubeconfig")
    with pytest.raises(ClusterReadError) as info:
        read_cluster(kc, "kata-qemu-nvidia-gpu-tdx")
    message = str(info.value)
    assert message.startswith(f"cannot reach the API server {server} (context `prod` of {path}): ")
    assert message.endswith("fix: check that the cluster is up and the kubeconfig points at it")
    assert "not-a-real-token" not in message
