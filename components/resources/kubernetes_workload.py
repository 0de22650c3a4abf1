"""KubernetesWorkload: vLLM and the attested gateway in one Confidential Containers pod (= one TD) of
an existing cluster, with pulumi_kubernetes. What it creates is exactly `render_manifests(args)`
(components/render/kubernetes.py); the binding of the workload to the TD is described there and in
docs/kubernetes.md."""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi_command import local

from components.config.reader import ConfigErrors
from components.probe.kube import Kubeconfig, load_kubeconfig, read_cluster
from components.render.host_steps import project_python
from components.render.kubernetes import (
    ROLLOUT_TIMEOUT_S,
    KubernetesWorkloadArgs,
    cluster_problems,
    endpoint_for,
    expected_pins,
    render_manifests,
    rollout_command,
)

__all__ = ["KubernetesWorkload", "KubernetesWorkloadArgs", "connect"]


def connect(args: KubernetesWorkloadArgs, path: str = "workload") -> Kubeconfig:
    """The kubeconfig the provider gets, once the cluster it selects was read and has what the
    target needs. Raises ClusterReadError (unreadable kubeconfig, unreachable or refusing API
    server) or ConfigErrors (what the cluster lacks), each with its fix; nothing is registered."""
    t = args.target
    kubeconfig = load_kubeconfig(t.kubeconfig, t.context, f"{path}.kubernetes.kubeconfig")
    problems = cluster_problems(t, read_cluster(kubeconfig, t.runtime_class_name), path)
    if problems:
        raise ConfigErrors(problems)
    return kubeconfig


def cluster_provider(name: str, cluster: Kubeconfig, parent: pulumi.Resource) -> pulumi.ProviderResource:
    """Always an explicit provider: the default one follows whatever kubeconfig the shell has, and a
    stack that later names its kubeconfig would get a new provider, i.e. every object replaced (the
    TD restarted). The kubeconfig text (credentials) stays a secret in the state; clusterIdentifier
    makes a changed kubeconfig (a new path, rotated credentials) an update of the provider, and only
    another API server a replacement."""
    import pulumi_kubernetes as k8s

    return k8s.Provider(
        name,
        kubeconfig=pulumi.Output.secret(cluster.text),
        context=cluster.context,
        cluster_identifier=cluster.server,
        opts=pulumi.ResourceOptions(parent=parent),
    )


class KubernetesWorkload(pulumi.ComponentResource):
    """Namespace (optional), Deployment (one Kata TDX pod: model fetcher, vLLM, gateway) and Service."""

    endpoint: pulumi.Output[str]
    pins: pulumi.Output[dict]

    def __init__(
        self,
        name: str,
        args: KubernetesWorkloadArgs,
        cluster: Kubeconfig,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("tdx-vllm:workload:KubernetesWorkload", name, {}, opts)
        import pulumi_kubernetes as k8s

        objects = render_manifests(args)  # raises before any resource is registered
        t = args.target
        provider = cluster_provider(f"{name}-provider", cluster, self)
        by_kind = {o["kind"]: o for o in objects}

        def child(**kw: Any) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, provider=provider, **kw)

        after: list[pulumi.Resource] = []
        self.namespace = None
        if "Namespace" in by_kind:
            ns = by_kind["Namespace"]
            self.namespace = k8s.core.v1.Namespace(f"{name}-namespace", metadata=ns["metadata"], opts=child())
            after.append(self.namespace)
        dep = by_kind["Deployment"]
        # `pulumi up` waits for the rollout, i.e. the known-answer readiness probe: loading a large
        # model into a TD can take a while, hence the long timeouts (= progressDeadlineSeconds).
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=dep["metadata"],
            spec=dep["spec"],
            opts=child(
                depends_on=after,
                delete_before_replace=True,
                custom_timeouts=pulumi.CustomTimeouts(create=f"{ROLLOUT_TIMEOUT_S}s", update=f"{ROLLOUT_TIMEOUT_S}s"),
            ),
        )
        svc = by_kind["Service"]
        self.service = k8s.core.v1.Service(
            f"{name}-service",
            metadata=svc["metadata"],
            spec=svc["spec"],
            opts=child(depends_on=after, delete_before_replace=True),
        )

        # pulumi-kubernetes can report an updated Deployment ready from the previous rollout's status
        # (components/probe/kube.py says how); this waits for the template just applied, every replica
        # Ready, reading the cluster with the same kubeconfig, which it gets on stdin (a secret).
        wait = f"{ROLLOUT_TIMEOUT_S + 120}s"  # its own deadline first, with its message
        self.rollout = local.Command(
            f"{name}-rollout",
            create=rollout_command(t, dep, project_python()),
            stdin=pulumi.Output.secret(cluster.text),
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[self.deployment],
                custom_timeouts=pulumi.CustomTimeouts(create=wait, update=wait),
            ),
        )

        def endpoint(status: Any) -> str:
            ingress = ((status or {}).get("load_balancer") or (status or {}).get("loadBalancer") or {}).get("ingress")
            return endpoint_for(t, ingress if t.service_type == "LoadBalancer" else None)

        # Through the rollout check: known only once the applied template's pod passed the known-answer
        # readiness probe, so `endpoints` and `ready` wait for that, not for the Service.
        self.endpoint = pulumi.Output.all(self.rollout.stdout, self.service.status).apply(lambda a: endpoint(a[1]))
        self.pins = pulumi.Output.from_input(expected_pins(args).to_json())
        self.register_outputs({"endpoint": self.endpoint, "pins": self.pins})
