"""KubernetesVerifyingProxy: `tdxattest proxy` for the stack's clients in a cluster of theirs
(`proxy.kubernetes`), one Deployment and Service per TD, deployed from this stack's `pins`
(components/render/proxy_kubernetes.py).

The same interface as the systemd target's VerifyingProxy (components/resources/proxy.py): the TDs,
or the Kubernetes workload, depend on `accepted`; `retire_after` runs the retire phase after their
readiness. The phases are local commands (`python -m components kube-proxy-pins`) that own the pins
ConfigMaps, so one `up` can hold the two pin states.
"""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
from pulumi_command import local

from components.probe.kube import Kubeconfig
from components.probe.kube_proxy import Phase
from components.render.host_steps import project_python
from components.render.proxy import ProxyInstance
from components.render.proxy_kubernetes import (
    cluster_of,
    namespace_object,
    pins_command,
    pins_stdin,
    proxy_objects,
    proxy_url,
    tls_secret_name,
)
from components.resources.command import facts_of
from components.resources.kubernetes_workload import cluster_provider
from components.resources.proxy import VerifyingProxyArgs


class KubernetesVerifyingProxy(pulumi.ComponentResource):
    urls: pulumi.Output[dict[str, str]]  # TD -> the proxy's in-cluster URL (the `proxies` output)
    accepted: list[local.Command]  # the accept phase, one per TD: the TDs change after these
    ready: pulumi.Output[bool]  # every proxy on the current pins only (set by `retire_after`)

    def __init__(
        self, name: str, args: VerifyingProxyArgs, cluster: Kubeconfig, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("tdx-vllm:proxy:KubernetesVerifyingProxy", name, {}, opts)
        import pulumi_kubernetes as k8s

        self._name, self._args = name, args
        proxy = args.proxy
        c = cluster_of(proxy)
        assert proxy.tls is not None, "the config requires proxy.tls with proxy.kubernetes"
        provider = cluster_provider(f"{name}-provider", cluster, self)

        def child(after: Sequence[pulumi.Resource] = ()) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, provider=provider, depends_on=list(after))

        ns = namespace_object(c)
        self.namespace = k8s.core.v1.Namespace(f"{name}-namespace", metadata=ns["metadata"], opts=child())
        tls = k8s.core.v1.Secret(
            f"{name}-tls",
            metadata={"name": tls_secret_name(c), "namespace": c.namespace},
            type="kubernetes.io/tls",
            string_data=pulumi.Output.secret(
                {"tls.crt": proxy.tls.certificate, "tls.key": proxy.tls.private_key.value}
            ),
            opts=child([self.namespace]),
        )
        # The phases read the cluster with the same kubeconfig, on stdin with the pins (a secret).
        self._stdin = pulumi.Output.secret(pins_stdin(cluster.text, args.pins))
        self._python = project_python()
        self.accepted = [self._phase(inst, "accept", [self.namespace]) for inst in args.instances]
        self.deployments: list[pulumi.Resource] = []
        for inst, accept in zip(args.instances, self.accepted):
            dep, svc = proxy_objects(proxy, inst)
            self.deployments.append(
                k8s.apps.v1.Deployment(
                    f"{name}-{inst.td}-deployment",
                    metadata=dep["metadata"],
                    spec=dep["spec"],
                    opts=child([accept, tls]),
                )
            )
            k8s.core.v1.Service(
                f"{name}-{inst.td}-service", metadata=svc["metadata"], spec=svc["spec"], opts=child([self.namespace])
            )
        self.urls = pulumi.Output.from_input({i.td: proxy_url(c, i) for i in args.instances})

    def _phase(self, inst: ProxyInstance, phase: Phase, after: Sequence[pulumi.Resource]) -> local.Command:
        return local.Command(
            f"{self._name}-{inst.td}-{phase}",
            create=pins_command(self._args.proxy, inst, phase, self._python),
            stdin=self._stdin,
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(after)),
        )

    def retire_after(self, resources: Sequence[pulumi.Resource]) -> list[local.Command]:
        """The retire phase, once `resources` (every TD's readiness) are done; registers the outputs."""
        after = [*self.accepted, *self.deployments, *resources]
        retired = [self._phase(inst, "retire", after) for inst in self._args.instances]
        facts = [facts_of(c) for c in retired]
        self.ready = pulumi.Output.all(*facts).apply(lambda fs: all(f.get("ok") is True for f in fs))
        self.register_outputs({"urls": self.urls, "ready": self.ready})
        return retired
