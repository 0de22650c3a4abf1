"""KubernetesWorkload: vLLM and the attested gateway in one Confidential Containers pod (= one TD) of
an existing cluster, with pulumi_kubernetes. What it creates is exactly `render_manifests(args)`
(components/render/kubernetes.py); the binding of the workload to the TD is described there and in
docs/kubernetes.md."""

from __future__ import annotations

from typing import Any

import pulumi

from components.render.kubernetes import KubernetesWorkloadArgs, endpoint_for, expected_pins, render_manifests

__all__ = ["KubernetesWorkload", "KubernetesWorkloadArgs"]


class KubernetesWorkload(pulumi.ComponentResource):
    """Namespace (optional), Deployment (one Kata TDX pod: model fetcher, vLLM, gateway) and Service."""

    endpoint: pulumi.Output[str]
    pins: pulumi.Output[dict]

    def __init__(self, name: str, args: KubernetesWorkloadArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tdx-vllm:workload:KubernetesWorkload", name, {}, opts)
        import pulumi_kubernetes as k8s

        objects = render_manifests(args)  # raises before any resource is registered
        t = args.target
        provider = None
        if t.kubeconfig is not None or t.context is not None:
            provider = k8s.Provider(
                f"{name}-provider", kubeconfig=t.kubeconfig, context=t.context, opts=pulumi.ResourceOptions(parent=self)
            )
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
        # model into a TD can take a while, hence the long timeouts.
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=dep["metadata"],
            spec=dep["spec"],
            opts=child(
                depends_on=after,
                delete_before_replace=True,
                custom_timeouts=pulumi.CustomTimeouts(create="45m", update="45m"),
            ),
        )
        svc = by_kind["Service"]
        self.service = k8s.core.v1.Service(
            f"{name}-service",
            metadata=svc["metadata"],
            spec=svc["spec"],
            opts=child(depends_on=after, delete_before_replace=True),
        )

        def endpoint(status: Any) -> str:
            ingress = ((status or {}).get("load_balancer") or (status or {}).get("loadBalancer") or {}).get("ingress")
            return endpoint_for(t, ingress if t.service_type == "LoadBalancer" else None)

        # Through the Deployment's id: known only once its rollout finished, i.e. once the pod passed
        # the known-answer readiness probe, so `endpoints` and `ready` wait for that, not the Service.
        self.endpoint = pulumi.Output.all(self.deployment.id, self.service.status).apply(lambda a: endpoint(a[1]))
        self.pins = pulumi.Output.from_input(expected_pins(args).to_json())
        self.register_outputs({"endpoint": self.endpoint, "pins": self.pins})
