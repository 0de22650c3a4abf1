"""The verifying proxy in a cluster of the client's (`proxy.kubernetes`), rendered: per TD a Deployment
that runs `tdxattest proxy` (the same command line as the systemd target's, components/render/proxy.py)
and a Service in front of it.

Pin rollover. The pins live in one ConfigMap per TD (`pins.json`, `retiring.json`), which two local
commands own, in the two phases of the systemd target (`python -m components kube-proxy-pins`,
components/probe/kube.py):

  accept  before the TDs change: `pins.json` becomes the new pins, the deployed ones (if they differ)
          `retiring.json`; then the proxy's pods restart on them (a pod-template annotation with their
          digest, set under its own field manager) and the command waits for that rollout.
  retire  after every TD reports ready: `retiring.json` becomes `pins.json` again, and the pods restart.

The proxy always runs with `--retiring-pins`: a retiring set equal to the current one accepts nothing
more. A pin set changes only through these commands, never through Pulumi's diff of the Deployment, so
one `up` holds the two states. Pure.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from components.config.model import PROXY_CLUSTER_PORT, ProxyCluster, VerifyingProxyConfig
from components.probe.kube_proxy import Phase
from components.render.kubernetes import container_security, pod_security, service_object
from components.render.proxy import ProxyInstance, pins_document, proxy_argv

PROXY_ROLLOUT_TIMEOUT_S = 600


def cluster_of(proxy: VerifyingProxyConfig) -> ProxyCluster:
    if proxy.kubernetes is None:
        raise ValueError("proxy.kubernetes is not set")
    return proxy.kubernetes


def cluster_instances(proxy: VerifyingProxyConfig, tds: Sequence[tuple[str, str]]) -> tuple[ProxyInstance, ...]:
    """One instance per TD (`(name, upstream URL)`), each on the pod port in its own pod."""
    return tuple(ProxyInstance(td, upstream, "0.0.0.0", PROXY_CLUSTER_PORT) for td, upstream in tds)


def object_name(c: ProxyCluster, inst: ProxyInstance) -> str:
    return f"{c.name}-{inst.td}"


def configmap_name(c: ProxyCluster, inst: ProxyInstance) -> str:
    return f"{c.name}-{inst.td}-pins"


def tls_secret_name(c: ProxyCluster) -> str:
    return f"{c.name}-tls"


def proxy_url(c: ProxyCluster, inst: ProxyInstance) -> str:
    """What the stack's clients in that cluster use (the `proxies` output)."""
    return f"https://{object_name(c, inst)}.{c.namespace}.svc.cluster.local:{PROXY_CLUSTER_PORT}"


def labels(c: ProxyCluster, inst: ProxyInstance) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tdx-vllm-proxy",
        "app.kubernetes.io/instance": object_name(c, inst),
        "app.kubernetes.io/part-of": "tdx-vllm",
    }


def namespace_object(c: ProxyCluster) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": c.namespace, "labels": {"app.kubernetes.io/part-of": "tdx-vllm"}},
    }


def proxy_objects(proxy: VerifyingProxyConfig, inst: ProxyInstance) -> list[dict[str, Any]]:
    """[Deployment, Service] of one TD's proxy."""
    c = cluster_of(proxy)
    pod_proxy = replace(proxy, python="python3")
    argv = proxy_argv(pod_proxy, inst, retiring=True)
    lab = labels(c, inst)
    container = {
        "name": "proxy",
        "image": c.image,
        "imagePullPolicy": "IfNotPresent",
        "command": argv,
        # The root filesystem is read-only: whatever tdxattest keeps under ~ goes to the cache volume.
        "env": [{"name": "HOME", "value": proxy.cache_dir}],
        "ports": [{"name": "https", "containerPort": PROXY_CLUSTER_PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": "https"}, "periodSeconds": 5},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": {**container_security(), "readOnlyRootFilesystem": True},
        "volumeMounts": [
            {"name": "config", "mountPath": inst.config_dir, "readOnly": True},
            {"name": "audit", "mountPath": proxy.audit_dir},
            {"name": "cache", "mountPath": proxy.cache_dir},
        ],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": object_name(c, inst), "namespace": c.namespace, "labels": lab},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": lab},
            "template": {
                "metadata": {"labels": lab},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security(),
                    "containers": [container],
                    "volumes": [
                        {
                            # The pins (owned by the phase commands) and the TLS pair, as one directory:
                            # the files proxy_argv names.
                            "name": "config",
                            "projected": {
                                "sources": [
                                    {"configMap": {"name": configmap_name(c, inst)}},
                                    {
                                        "secret": {
                                            "name": tls_secret_name(c),
                                            "items": [
                                                {"key": "tls.crt", "path": "tls.crt"},
                                                {"key": "tls.key", "path": "tls.key"},
                                            ],
                                        }
                                    },
                                ]
                            },
                        },
                        # The audit log and the collateral cache live as long as the pod: the audit
                        # log is also the pod's to ship (a log collector reads emptyDirs), see docs.
                        {"name": "audit", "emptyDir": {}},
                        {"name": "cache", "emptyDir": {}},
                    ],
                },
            },
        },
    }
    port = {"name": "https", "port": PROXY_CLUSTER_PORT, "targetPort": "https", "protocol": "TCP"}
    service = service_object(object_name(c, inst), c.namespace, lab, c.service_type, port)
    return [deployment, service]


def pins_command(proxy: VerifyingProxyConfig, inst: ProxyInstance, phase: Phase, python: str) -> str:
    """The local command of one phase (its stdin: `pins_stdin`)."""
    c = cluster_of(proxy)
    argv = ["-m", "components", "kube-proxy-pins", "--phase", phase, "--namespace", c.namespace]
    argv += ["--configmap", configmap_name(c, inst), "--deployment", object_name(c, inst)]
    argv += ["--timeout", str(PROXY_ROLLOUT_TIMEOUT_S)]
    if c.context is not None:
        argv += ["--context", c.context]
    return " ".join([python, *map(shlex.quote, argv)])


def pins_stdin(kubeconfig: str, pins: Mapping[str, object]) -> str:
    """What a phase command reads: the kubeconfig (credentials: never an argument) and the pins
    document, as the proxy reads it."""
    return json.dumps({"kubeconfig": kubeconfig, "pins": pins_document(pins)}, sort_keys=True)
