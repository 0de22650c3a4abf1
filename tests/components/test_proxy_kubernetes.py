"""`proxy.kubernetes` (components/config/proxy.py), its objects (components/render/proxy_kubernetes.py),
the phase rule (components/probe/kube_proxy.py) and the component in the program under mocks. The
phases run against a real API server, with the rollover order seen from the cluster, in
tests/e2e/test_kubernetes.py."""

from __future__ import annotations

import kubernetes_validate
import pytest

from components.probe.kube_proxy import PINS_KEY, RETIRING_KEY, pins_data, pins_digest
from components.render.proxy_kubernetes import cluster_instances, pins_command, pins_stdin, proxy_objects, proxy_url
from tests.components.test_proxy import CERT, PCCS, errors, parse, raw_stack

IMAGE = "ghcr.io/example/tdx-vllm-gateway@sha256:" + "cd" * 32
CLUSTER = {"image": IMAGE, "kubeconfig": "/etc/clients/kubeconfig", "context": "clients"}
TLS = {"certificate": CERT, "privateKey": "TLS-KEY"}
SECRETS = {"proxy.tls.privateKey"}


def cluster_stack(**over: object) -> dict:
    raw = raw_stack(kubernetes=dict(CLUSTER), tls=dict(TLS), **over)
    del raw["proxy"]["ssh"]
    return raw


def test_a_proxy_in_a_cluster() -> None:
    p = parse(cluster_stack(), SECRETS).proxy
    assert p is not None and p.ssh is None and p.kubernetes is not None
    c = p.kubernetes
    assert (c.image, c.namespace, c.name, c.kubeconfig, c.context, c.service_type) == (
        IMAGE,
        "tdx-vllm-proxy",
        "tdx-vllm-proxy",
        "/etc/clients/kubeconfig",
        "clients",
        "ClusterIP",
    )
    assert (p.python, p.listen_host, p.listen_port, p.pccs_url) == ("python3", "0.0.0.0", 8443, PCCS)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"tls": None}, "proxy.tls: required with `proxy.kubernetes`"),
        ({"listen": "127.0.0.1:8080"}, "proxy.listen: not used with `proxy.kubernetes`"),
        ({"ssh": {"address": "192.0.2.50"}}, "proxy.ssh: not used with `proxy.kubernetes`"),
        ({"kubernetes": {**CLUSTER, "image": "ghcr.io/x/gw:latest"}}, "proxy.kubernetes.image: `ghcr.io/x/gw:latest`"),
        ({"kubernetes": {**CLUSTER, "name": "Proxy"}}, "proxy.kubernetes.name: `Proxy` is not a DNS label"),
        ({"kubernetes": {**CLUSTER, "serviceType": "NodePort"}}, "proxy.kubernetes.serviceType: `NodePort`"),
        ({"kubernetes": {"kubeconfig": "/k"}}, "proxy.kubernetes.image: required"),
    ],
)
def test_cluster_proxy_errors_name_the_key(change: dict, said: str) -> None:
    raw = cluster_stack()
    for key, value in change.items():
        if value is None:
            raw["proxy"].pop(key)
        else:
            raw["proxy"][key] = value
    found = errors(raw, SECRETS)
    assert any(e.startswith(said) for e in found), found


def k8s_only(tmp_path) -> dict:
    from tests.support.stacks import POLICY, target_doc, workload

    policy = tmp_path / "agent-policy.rego"
    policy.write_text(POLICY)
    wl = workload()
    del wl["td"], wl["cudaVersion"]
    wl["target"] = "kubernetes"
    wl["kubernetes"] = target_doc(agentPolicyFile=str(policy))
    return {"workload": wl}


def test_a_kubernetes_workload_takes_only_a_proxy_in_a_cluster(tmp_path) -> None:
    raw = k8s_only(tmp_path)
    raw["proxy"] = {"ssh": {"address": "192.0.2.50", "hostKey": "x"}, "pccsUrl": PCCS}
    assert errors(raw, SECRETS)[0].startswith(
        "proxy: a proxy on a host cannot reach the Kubernetes workload's in-cluster Service"
    )
    raw["proxy"] = {"kubernetes": dict(CLUSTER), "tls": dict(TLS), "pccsUrl": PCCS}
    assert parse(raw, SECRETS).proxy.kubernetes is not None


def test_each_tds_proxy_is_a_restricted_deployment_and_a_service() -> None:
    p = parse(cluster_stack(), SECRETS).proxy
    (inst,) = cluster_instances(p, [("gpu-a", "https://192.0.2.10:8443")])
    dep, svc = proxy_objects(p, inst)
    for obj in (dep, svc):
        kubernetes_validate.validate(obj, "1.37", strict=True)
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    argv = container["command"]
    assert argv[:4] == ["python3", "-m", "tdxattest", "proxy"]
    assert argv[argv.index("--upstream") + 1] == "https://192.0.2.10:8443"
    assert argv[argv.index("--pins") + 1] == "/etc/tdx-vllm/proxy/gpu-a/pins.json"
    assert argv[argv.index("--retiring-pins") + 1] == "/etc/tdx-vllm/proxy/gpu-a/retiring.json"
    assert argv[argv.index("--listen") + 1] == "0.0.0.0:8443" and argv[argv.index("--pccs") + 1] == PCCS
    # The pins (the phases' ConfigMap) and the TLS pair, one directory, as the command names them.
    (config,) = [v for v in pod["volumes"] if v["name"] == "config"]
    sources = config["projected"]["sources"]
    assert sources[0] == {"configMap": {"name": "tdx-vllm-proxy-gpu-a-pins"}}
    assert sources[1]["secret"]["name"] == "tdx-vllm-proxy-tls"
    assert pod["securityContext"]["runAsNonRoot"] is True and container["securityContext"]["readOnlyRootFilesystem"]
    assert container["env"] == [{"name": "HOME", "value": "/var/cache/tdx-vllm/proxy"}]  # writable: an emptyDir
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {
        "/var/cache/tdx-vllm/proxy",
        "/var/log/tdx-vllm/proxy",
    }
    assert svc["spec"]["ports"][0]["port"] == 8443 and svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert proxy_url(p.kubernetes, inst) == "https://tdx-vllm-proxy-gpu-a.tdx-vllm-proxy.svc.cluster.local:8443"


def test_the_phase_command_carries_no_secret() -> None:
    p = parse(cluster_stack(), SECRETS).proxy
    (inst,) = cluster_instances(p, [("gpu-a", "https://192.0.2.10:8443")])
    command = pins_command(p, inst, "accept", ".venv/bin/python")
    assert command.startswith(
        ".venv/bin/python -m components kube-proxy-pins --phase accept --namespace tdx-vllm-proxy"
    )
    assert "--configmap tdx-vllm-proxy-gpu-a-pins --deployment tdx-vllm-proxy-gpu-a" in command
    assert command.endswith("--context clients")
    stdin = pins_stdin("KUBECONFIG-TEXT", {"mrtd": "ab"})
    assert "KUBECONFIG-TEXT" in stdin and "KUBECONFIG" not in command


A, B, C = '{"mrtd":"aa"}\n', '{"mrtd":"bb"}\n', '{"mrtd":"cc"}\n'


def test_the_phases_keep_the_deployed_pins_until_the_tds_are_ready() -> None:
    # First up: no ConfigMap, nothing retires.
    assert pins_data("accept", None, A) == {PINS_KEY: A, RETIRING_KEY: A}
    # A pin change: the deployed pins retire while the TDs change, then go.
    accepted = pins_data("accept", {PINS_KEY: A, RETIRING_KEY: A}, B)
    assert accepted == {PINS_KEY: B, RETIRING_KEY: A}
    assert pins_data("retire", accepted, B) == {PINS_KEY: B, RETIRING_KEY: B}
    # An accept that runs again with the same pins changes nothing (a converged stack).
    assert pins_data("accept", {PINS_KEY: B, RETIRING_KEY: B}, B) == {PINS_KEY: B, RETIRING_KEY: B}
    # One retiring slot, as on a host: an interrupted rollover then another change keeps the last
    # deployed pins retiring.
    assert pins_data("accept", accepted, C) == {PINS_KEY: C, RETIRING_KEY: B}
    assert pins_digest({PINS_KEY: B, RETIRING_KEY: A}) != pins_digest({PINS_KEY: B, RETIRING_KEY: B})


def test_the_program_puts_the_proxy_around_the_kubernetes_workload(monkeypatch, tmp_path) -> None:
    from pathlib import Path

    from components.probe import kube
    from components.probe.kube import Kubeconfig
    from components.resources import kubernetes_workload
    from tests.support.pulumi_mocks import RecordingMocks, run_program

    kubeconfig = Kubeconfig(Path("/k"), "apiVersion: v1\n", "clients", "https://192.0.2.10:6443")
    monkeypatch.setattr(kubernetes_workload, "connect", lambda args: kubeconfig)
    monkeypatch.setattr(kube, "load_kubeconfig", lambda *a: kubeconfig)
    # No stack file says which leaves are secret: every leaf under `proxy` is one here.
    import components.config.stack as stack_module

    leaves = stack_module._secret_leaves
    monkeypatch.setattr(stack_module, "_secret_leaves", lambda raw, top, _file: leaves(raw, top, tmp_path / "none"))
    raw = k8s_only(tmp_path)
    raw["proxy"] = {"kubernetes": dict(CLUSTER), "tls": dict(TLS), "pccsUrl": PCCS}
    mocks = RecordingMocks()
    _, seen = run_program(mocks, raw, {"proxy"}, monkeypatch, stack="staging", resolve=("proxies",))
    assert seen["proxies"] == {"kubernetes": "https://tdx-vllm-proxy-kubernetes.tdx-vllm-proxy.svc.cluster.local:8443"}
    created = [name for _, name in mocks.created]
    for name in ("proxy-kubernetes-accept", "proxy-kubernetes-deployment", "proxy-kubernetes-retire", "proxy-tls"):
        assert name in created, created
    # The workload rolls after the accept phase; the retire phase runs after the workload's rollout check.
    assert created.index("proxy-kubernetes-accept") < created.index("workload-deployment")
    assert created.index("workload-rollout") < created.index("proxy-kubernetes-retire")
    assert "TLS-KEY" not in repr(seen)


def test_status_names_what_differs_from_serving_the_current_pins_only() -> None:
    from components.probe.kube_proxy import PINS_ANNOTATION, state_problems

    def dep(annotation: str | None, ready: int = 1) -> dict:
        annotations = {PINS_ANNOTATION: annotation} if annotation else {}
        return {
            "spec": {"replicas": 1, "template": {"metadata": {"annotations": annotations}}},
            "status": {"readyReplicas": ready},
        }

    steady = {PINS_KEY: B, RETIRING_KEY: B}
    where = "tdx-vllm-proxy/tdx-vllm-proxy-gpu-a"
    assert state_problems(B, {"data": steady, "deployment": dep(pins_digest(steady))}, where) == []
    assert state_problems(B, {"data": steady, "deployment": dep(None)}, where) == []  # never restarted
    assert state_problems(B, {"data": None, "deployment": None}, where)[0].startswith(
        f"{where}: expected the pins ConfigMap, seen none"
    )
    stale = state_problems(
        C, {"data": {PINS_KEY: B, RETIRING_KEY: A}, "deployment": dep(pins_digest(steady), 0)}, where
    )
    assert [p.split(":")[0] for p in stale] == ["pins.json", "retiring.json", "pods", "pods"], stale
    assert stale[3].startswith("pods: expected 1 Ready, seen 0; fix: kubectl -n tdx-vllm-proxy describe pod")
