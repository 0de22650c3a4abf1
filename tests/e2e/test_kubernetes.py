"""End to end: `workload.target: kubernetes` with the real engine, the real pulumi-kubernetes provider
and a real control plane (tests/support/kube/cluster.py: etcd, kube-apiserver, controller-manager,
scheduler; kwok plays the kubelet of one fake TDX GPU node).

The stack is a Kubernetes-only stack (no hosts), with the verifying proxy in the same cluster
(`proxy.kubernetes`) in front of the workload's Service. The tests run in file order and build on
each other:

- with no Kata TDX RuntimeClass in the cluster, `up` fails with our error naming
  `workload.kubernetes.runtimeClassName`, and nothing was created;
- with it (tests/fixtures/kube/, as kata-deploy defines it), `up` creates the Namespace, the Deployment
  (runtime class, init data, known-answer probe) and the Service; the API server admitted each, the
  provider awaited the rollout (the pod is scheduled on the TDX node and Ready), and `endpoints` and
  `pins` are exported; the kubeconfig is a secret in the state;
- a second `up` changes nothing;
- `status` reads the proxy in the cluster, and names a retiring set left behind;
- the proxy's Deployment, Service, TLS Secret and pins ConfigMap exist, on the current pins only;
- a model revision rolls the Deployment (a new pod template) and changes `pins.mrconfigid`, and the
  proxy rolls over around it: it accepts the new pins beside the old before the pod changes, and
  drops the old only after the new pod is Ready (watched in the cluster while `up` runs);
- another kubeconfig file for the same cluster updates the provider and replaces nothing; a
  LoadBalancer Service that never gets an address does not hold `up`;
- `destroy` removes every object.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.probe.kube_proxy import PINS_ANNOTATION
from components.render.kubernetes import (
    GUEST_KERNEL_PARAMS,
    INITDATA_ANNOTATION,
    KERNEL_PARAMS_ANNOTATION,
    ROLLOUT_TIMEOUT_S,
    TEMPLATE_ANNOTATION,
    decode_initdata_annotation,
    mrconfigid,
    render_manifests,
)
from tests.support.engine import Engine, changed_steps, engine_unavailable, up_events
from tests.support.kube.cluster import ApiError, KubeCluster, self_signed_pem, start_cluster
from tests.support.paths import FIXTURES
from tests.support.stacks import GATEWAY, KATA_SHAPE, POLICY, WL_IMAGE, WL_REV, make_args, target_doc

KUBE_FIXTURES = FIXTURES / "kube"
STACK = "k8s"
NAMESPACE, NAME = "tdx-vllm", "vllm"
NEXT_REV = "89abcdef0123456789abcdef0123456789abcdef"
PROXY_NS, PROXY = "tdx-vllm-proxy", "tdx-vllm-proxy-kubernetes"
PROXY_HOST = f"{PROXY}.{PROXY_NS}.svc.cluster.local"
# kwok marks a pod Ready this long after it was bound (in a real cluster: after the known-answer
# probe passed), so that an `up` which did not await the rollout would end with it not Ready.
POD_READY_DELAY_MS = 4000

_reason = engine_unavailable()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

pytestmark = pytest.mark.kube


def fixture_doc(name: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((KUBE_FIXTURES / name).read_text()) if d]
    assert len(docs) == 1, name
    return docs[0]


NODE = fixture_doc("node-tdx-gpu.yaml")
RUNTIME_CLASS = fixture_doc("runtimeclass-kata-qemu-nvidia-gpu-tdx.yaml")


def stack_config(kubeconfig: Path, policy: Path, revision: str = WL_REV) -> dict[str, Any]:
    workload = {
        "target": "kubernetes",
        "image": WL_IMAGE,
        "model": {
            "id": "Qwen/Qwen2.5-0.5B-Instruct",
            "revision": revision,
            "files": {"model.safetensors": "aa" * 32, "config.json": "bb" * 32},
        },
        "modelSource": "https://huggingface.co/{id}/resolve/{revision}",
        "vllmArgs": ["--max-model-len", "4096"],
        "knownAnswer": {"prompt": "The capital of France is", "expect": " Paris"},
        "kubernetes": target_doc(agentPolicyFile=str(policy), kubeconfig=str(kubeconfig)),
    }
    return {"tdx-vllm:workload": workload}


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, KubeCluster]]:
    root = tmp_path_factory.mktemp("kubernetes")
    with start_cluster(root / "cluster", [NODE], pod_ready_delay_ms=POD_READY_DELAY_MS) as cluster:
        eng = Engine(root / "engine")
        policy = root / "agent-policy.rego"
        policy.write_text(POLICY)
        eng.pulumi("stack", "init", stack=STACK)
        write_config(eng, stack_config(cluster.kubeconfig, policy))
        # The verifying proxy in the same cluster, in front of the workload's Service.
        cert, key = self_signed_pem(PROXY_HOST)
        eng.config_set(
            STACK,
            {
                "proxy.kubernetes.image": GATEWAY,
                "proxy.kubernetes.kubeconfig": str(cluster.kubeconfig),
                "proxy.pccsUrl": "https://pccs.example.net:8081/sgx/certification/v4/",
                "proxy.tls.certificate": cert,
            },
            secret={"proxy.tls.privateKey": key},
        )
        yield eng, cluster
        # Whatever a failed test left: the cluster goes with the fixture, the state with the temp dir.


def write_config(eng: Engine, config: dict[str, Any]) -> None:
    """Replace the keys of `config`, keep the others (the proxy's, set with `pulumi config`)."""
    path = eng.project / "stacks" / f"Pulumi.{STACK}.yaml"
    doc = yaml.safe_load(path.read_text()) or {}
    doc["config"] = {**(doc.get("config") or {}), **config}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def k8s_urns(eng: Engine) -> list[str]:
    resources = eng.state(STACK)["checkpoint"].get("latest", {}).get("resources") or []
    return [r["urn"] for r in resources if r["type"].startswith("kubernetes:")]


def deployment(cluster: KubeCluster) -> dict[str, Any]:
    return cluster.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{NAME}")


def pods(cluster: KubeCluster) -> list[dict[str, Any]]:
    return cluster.get(f"/api/v1/namespaces/{NAMESPACE}/pods")["items"]


def test_a_cluster_without_the_tdx_runtime_class_gets_no_object(kube) -> None:
    eng, cluster = kube
    out = eng.up(STACK, "up without runtime class", False).stdout
    assert "workload.kubernetes.runtimeClassName: the cluster at " + cluster.server in out, out[-3000:]
    assert "has no RuntimeClass `kata-qemu-nvidia-gpu-tdx`" in out and "fix: install Kata Containers" in out
    assert "Traceback" not in out
    assert not cluster.exists(f"/api/v1/namespaces/{NAMESPACE}")
    assert k8s_urns(eng) == []


def test_up_creates_the_documented_objects_and_awaits_the_rollout(kube) -> None:
    eng, cluster = kube
    cluster.create("/apis/node.k8s.io/v1/runtimeclasses", RUNTIME_CLASS)
    eng.up(STACK, "first up", timeout=600)

    ns = cluster.get(f"/api/v1/namespaces/{NAMESPACE}")
    assert ns["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tdx-vllm"
    dep = deployment(cluster)
    spec = dep["spec"]["template"]["spec"]
    assert spec["runtimeClassName"] == RUNTIME_CLASS["metadata"]["name"]
    assert dep["spec"]["progressDeadlineSeconds"] == ROLLOUT_TIMEOUT_S
    gateway = next(c for c in spec["containers"] if c["name"] == "gateway")
    assert gateway["readinessProbe"]["exec"]["command"][:2] == ["python3", "-c"]
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    toml_text = decode_initdata_annotation(annotations[INITDATA_ANNOTATION])
    # The provider returned only after the rollout: the Deployment was complete when `up` ended.
    assert dep["status"].get("readyReplicas") == 1 and dep["status"].get("updatedReplicas") == 1, dep["status"]
    (pod,) = pods(cluster)
    assert pod["spec"]["nodeName"] == NODE["metadata"]["name"]
    # The RuntimeClass admission plugin added the class's overhead (as the API server canonicalised
    # its quantities) and node selector to the pod.
    stored = cluster.get(f"/apis/node.k8s.io/v1/runtimeclasses/{RUNTIME_CLASS['metadata']['name']}")
    assert pod["spec"]["overhead"] == stored["overhead"]["podFixed"]
    for k, v in RUNTIME_CLASS["scheduling"]["nodeSelector"].items():
        assert pod["spec"]["nodeSelector"][k] == v
    svc = cluster.get(f"/api/v1/namespaces/{NAMESPACE}/services/{NAME}")
    assert svc["spec"]["ports"][0]["targetPort"] == "https" and svc["spec"]["type"] == "ClusterIP"

    outputs = eng.outputs(STACK)
    assert outputs["endpoints"] == {"kubernetes": f"https://{NAME}.{NAMESPACE}.svc.cluster.local:8443"}
    pins = outputs["pins"]
    assert pins["target"] == "kubernetes" and pins["mrconfigid"] == mrconfigid(toml_text)
    assert pins["gatewayImage"] == GATEWAY and outputs["ready"] is True
    # What the pins say of the TD: its shape (RTMR0), the kernel parameter the pod adds (RTMR2), and
    # plainly that the GPU is not attested on this target.
    assert annotations[KERNEL_PARAMS_ANNOTATION] == GUEST_KERNEL_PARAMS
    assert pins["tdShape"] == KATA_SHAPE and GUEST_KERNEL_PARAMS in pins["reasons"]["kernelParams"]
    assert pins["reasons"]["gpu"].startswith("not attested on this target") and "gpu" not in pins

    # The provider's kubeconfig (a client key) is a secret in the state, never plain.
    state_text = json.dumps(eng.state(STACK))
    client_key = yaml.safe_load(cluster.kubeconfig.read_text())["users"][0]["user"]["client-key-data"]
    assert client_key not in state_text
    providers = [
        r for r in eng.state(STACK)["checkpoint"]["latest"]["resources"] if r["type"] == "pulumi:providers:kubernetes"
    ]
    assert len(providers) == 2  # the workload's and the proxy's (the same cluster here)
    for provider in providers:
        assert (
            provider["inputs"]["kubeconfig"]["4dabf18193072939515e22adb298388d"] == "1b47061264138c4ac30d75fd1eb44270"
        )
        assert provider["inputs"]["clusterIdentifier"] == cluster.server

    # The verifying proxy, in the cluster, in front of the workload's Service: the current pins only
    # (retiring = current), TLS from a Secret whose key is nowhere plain in the state.
    assert outputs["proxies"] == {"kubernetes": f"https://{PROXY_HOST}:8443"}
    proxy = cluster.get(f"/apis/apps/v1/namespaces/{PROXY_NS}/deployments/{PROXY}")
    command = proxy["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:4] == ["python3", "-m", "tdxattest", "proxy"]
    assert command[command.index("--upstream") + 1] == outputs["endpoints"]["kubernetes"]
    assert "--retiring-pins" in command and "--tls-key" in command
    assert proxy["status"].get("readyReplicas") == 1
    assert proxy_pins(cluster) == (canonical(pins), canonical(pins))
    tls_key = cluster.get(f"/api/v1/namespaces/{PROXY_NS}/secrets/tdx-vllm-proxy-tls")["data"]["tls.key"]
    assert tls_key not in state_text and base64.b64decode(tls_key).decode() not in state_text
    assert cluster.exists(f"/api/v1/namespaces/{PROXY_NS}/services/{PROXY}")


def canonical(pins: dict[str, Any]) -> str:
    """The pins document as the proxy reads it (components/render/proxy.py, pins_document)."""
    return json.dumps(pins, sort_keys=True, separators=(",", ":")) + "\n"


def proxy_pins(cluster: KubeCluster) -> tuple[str, str]:
    """(pins.json, retiring.json) of the proxy's pins ConfigMap."""
    data = cluster.get(f"/api/v1/namespaces/{PROXY_NS}/configmaps/{PROXY}-pins")["data"]
    return data["pins.json"], data["retiring.json"]


def test_the_pod_meets_pod_security_restricted(kube) -> None:
    """The pod as rendered, through the API server's validation and admission (RuntimeClass,
    ServiceAccount, Pod Security) in dry-run, in a namespace that enforces `restricted`."""
    _, cluster = kube
    ns = "pss-restricted"
    cluster.create(
        "/api/v1/namespaces",
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
        },
    )
    cluster.wait(
        "the default ServiceAccount", lambda: cluster.exists(f"/api/v1/namespaces/{ns}/serviceaccounts/default")
    )
    template = next(o for o in render_manifests(make_args()) if o["kind"] == "Deployment")["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**template["metadata"], "name": "vllm-dry-run", "namespace": ns},
        "spec": template["spec"],
    }
    admitted = cluster.create(f"/api/v1/namespaces/{ns}/pods", pod, dry_run=True)
    assert admitted["spec"]["overhead"] and admitted["spec"]["securityContext"]["runAsUser"] == 1000
    assert not cluster.exists(f"/api/v1/namespaces/{ns}/pods/vllm-dry-run")  # dry run: nothing stored
    # The check is real: the same pod with one container allowed to escalate is refused.
    bad = copy.deepcopy(pod)
    bad["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    with pytest.raises(ApiError) as refused:
        cluster.create(f"/api/v1/namespaces/{ns}/pods", bad, dry_run=True)
    assert refused.value.status == 403 and 'violates PodSecurity "restricted:latest"' in str(refused.value)


def test_a_second_up_changes_nothing(kube) -> None:
    eng, cluster = kube
    generation = deployment(cluster)["metadata"]["generation"]
    assert changed_steps(eng.preview_json(STACK)) == {}
    ops, summary = up_events(eng.up(STACK, "converged up", True, "--json").stdout)
    assert ops == {} and set(summary["resourceChanges"]) == {"same"}, summary
    assert deployment(cluster)["metadata"]["generation"] == generation


def test_status_reads_the_proxy_in_the_cluster(kube) -> None:
    """`python -m components status` reads the proxy through its kubeconfig: in sync on the current
    pins; a retiring set left behind (a rollover that did not finish) is named, with the fix."""
    eng, cluster = kube
    _, doc = eng.status(STACK)
    proxy = doc["hosts"]["proxy"]
    assert proxy["address"] == cluster.server and proxy["inSync"] is True, proxy
    assert [(s["resource"], s["state"]) for s in proxy["steps"]] == [("proxy-kubernetes-retire", "in_sync")]
    path = f"/api/v1/namespaces/{PROXY_NS}/configmaps/{PROXY}-pins"
    original = cluster.get(path)
    left = copy.deepcopy(original)
    left["data"]["retiring.json"] = '{"mrtd":"00"}\n'
    cluster.request("PUT", path, left)
    try:
        rc, doc = eng.status(STACK)
        (step,) = doc["hosts"]["proxy"]["steps"]
        assert rc != 0 and step["state"] == "drifted"
        assert step["problems"][0].startswith("retiring.json: expected nothing retiring (the current pins again)")
        assert step["problems"][0].endswith(
            "fix: pulumi up (the accept and retire phases rewrite the pins and restart the proxy)"
        )
    finally:
        current = cluster.get(path)
        current["data"] = original["data"]
        cluster.request("PUT", path, current)


def test_a_model_revision_rolls_the_deployment_and_changes_mrconfigid(kube) -> None:
    eng, cluster = kube
    before = eng.outputs(STACK)["pins"]
    old_pod = pods(cluster)[0]["metadata"]["name"]
    policy = Path(
        yaml.safe_load((eng.project / "stacks" / f"Pulumi.{STACK}.yaml").read_text())["config"]["tdx-vllm:workload"][
            "kubernetes"
        ]["agentPolicyFile"]
    )
    write_config(eng, stack_config(cluster.kubeconfig, policy, NEXT_REV))
    # While `up` runs: what the proxy accepts (its ConfigMap, and the pins its pods were started on)
    # next to the workload's template and readiness, every 0.1 s.
    seen: list[tuple[tuple[str, str], str, str | None, int]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with contextlib.suppress(ApiError, OSError):
                proxy_annotations = cluster.get(f"/apis/apps/v1/namespaces/{PROXY_NS}/deployments/{PROXY}")["spec"][
                    "template"
                ]["metadata"].get("annotations", {})
                dep = deployment(cluster)
                template = dep["spec"]["template"]["metadata"]["annotations"][TEMPLATE_ANNOTATION]
                ready = (
                    dep["status"].get("readyReplicas", 0)
                    if dep["status"].get("observedGeneration") == dep["metadata"]["generation"]
                    else 0
                )
                seen.append((proxy_pins(cluster), template, proxy_annotations.get(PINS_ANNOTATION), ready))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        ops, _ = up_events(eng.up(STACK, "model revision", True, "--json", timeout=600).stdout)
    finally:
        stop.set()
        watcher.join(10)
    # The Deployment rolls, and the rollout check runs again for the new template; the proxy's two
    # phases run (their pins changed); nothing else.
    assert ops == {
        "workload-deployment": "update",
        "workload-rollout": "update",
        "proxy-kubernetes-accept": "update",
        "proxy-kubernetes-retire": "update",
    }, ops
    after = eng.outputs(STACK)["pins"]
    old_doc, new_doc = canonical(before), canonical(after)
    # The rollover, as the cluster saw it: the proxy took the new pins with the old ones retiring
    # before the workload's template changed; the old ones went only after the new pod was Ready.
    states = [s[0] for s in seen]
    assert states[0] == (old_doc, old_doc) and states[-1] == (new_doc, new_doc), states[:1] + states[-1:]
    first_new_template = next(i for i, s in enumerate(seen) if s[1] != seen[0][1])
    assert seen[first_new_template][0] == (new_doc, old_doc)
    retired = next(i for i, s in enumerate(seen) if s[0] == (new_doc, new_doc))
    assert any(s[3] == 1 and s[1] != seen[0][1] for s in seen[first_new_template:retired]), "retired before Ready"
    assert [s[0] for s in seen] == sorted(
        states, key=[(old_doc, old_doc), (new_doc, old_doc), (new_doc, new_doc)].index
    )
    # The proxy's pods restarted on each state (the annotation names the data they were started on).
    assert len({s[2] for s in seen[first_new_template:]}) >= 2
    assert after["mrconfigid"] != before["mrconfigid"] and after["model"]["revision"] == NEXT_REV
    dep = deployment(cluster)
    toml_text = decode_initdata_annotation(dep["spec"]["template"]["metadata"]["annotations"][INITDATA_ANNOTATION])
    assert mrconfigid(toml_text) == after["mrconfigid"] and NEXT_REV in toml_text
    # `up` ended only once the new template's pod was Ready (kwok delays that by POD_READY_DELAY_MS).
    # pulumi-kubernetes' own await alone ended before it in three runs of three
    # (components/probe/kube.py, kube-rollout).
    status = dep["status"]
    assert status.get("readyReplicas") == 1 and status["observedGeneration"] == dep["metadata"]["generation"], status
    current = cluster.wait(
        "the old pod gone", lambda: [p for p in pods(cluster) if not p["metadata"].get("deletionTimestamp")], 60
    )
    assert [p["metadata"]["name"] for p in current] != [old_pod]


def test_a_new_kubeconfig_updates_the_provider_and_a_load_balancer_is_not_awaited(kube) -> None:
    """The same cluster through another kubeconfig file: the provider is updated, nothing replaced
    (clusterIdentifier), so no TD restarts. And a LoadBalancer Service on a cluster with no load
    balancer (like bare metal without one) does not hold `up` for the provider's 10 minutes."""
    eng, cluster = kube
    # An operator's own kubeconfig: other file, other context name, same API server.
    doc = yaml.safe_load(cluster.kubeconfig.read_text())
    doc["contexts"][0]["name"] = doc["current-context"] = "ops"
    moved = cluster.root / "elsewhere" / "kubeconfig"
    moved.parent.mkdir()
    moved.write_text(yaml.safe_dump(doc))
    config = yaml.safe_load((eng.project / "stacks" / f"Pulumi.{STACK}.yaml").read_text())["config"]
    k8s = config["tdx-vllm:workload"]["kubernetes"]
    k8s["kubeconfig"], k8s["context"] = str(moved), "ops"
    k8s["service"] = {"type": "LoadBalancer", "port": 8443}
    write_config(eng, config)
    pod = pods(cluster)[0]["metadata"]["uid"]
    ops, _ = up_events(eng.up(STACK, "new kubeconfig, load balancer", True, "--json", timeout=300).stdout)
    # The rollout check runs again (its kubeconfig and context changed) and finds the pod as it was.
    assert ops == {"workload-provider": "update", "workload-service": "update", "workload-rollout": "update"}, ops
    assert pods(cluster)[0]["metadata"]["uid"] == pod  # the TD was not restarted
    svc = cluster.get(f"/api/v1/namespaces/{NAMESPACE}/services/{NAME}")
    assert svc["spec"]["type"] == "LoadBalancer" and not svc["status"]["loadBalancer"].get("ingress")
    assert eng.outputs(STACK)["endpoints"] == {"kubernetes": f"https://{NAME}.{NAMESPACE}.svc.cluster.local:8443"}


def test_destroy_removes_every_object(kube) -> None:
    eng, cluster = kube
    eng.pulumi("destroy", "--yes", "--skip-preview", stack=STACK, timeout=600)
    assert k8s_urns(eng) == []
    assert not cluster.exists(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{NAME}")
    cluster.wait("the namespace gone", lambda: not cluster.exists(f"/api/v1/namespaces/{NAMESPACE}"), 120)
    # The proxy's namespace, with its Deployment, Service, TLS Secret and the phases' ConfigMap.
    cluster.wait("the proxy's namespace gone", lambda: not cluster.exists(f"/api/v1/namespaces/{PROXY_NS}"), 120)
