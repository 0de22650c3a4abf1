"""tdx-vllm: read and validate the stack config, provision one TdxHost per host, export facts."""

import sys
from typing import Any

import pulumi

from components.catalog.pinfile import CatalogError
from components.config.reader import ConfigErrors
from components.config.stack import load_from_pulumi
from components.render.promotion import promotable_pins, refusal_from_outputs
from components.render.stack_pins import pins_output, stack_measurements
from components.resources.host import TdxHost, TdxHostArgs
from components.resources.sdk_patches import install as install_sdk_patches

# The SDK's end-of-program wait is quadratic in its outputs, and it blocks on a debug log line per
# registration: at 64 hosts these were most of the program's time (components/resources/sdk_patches.py).
install_sdk_patches()

try:
    stack = load_from_pulumi()
except ConfigErrors as exc:
    # One message with every problem, before any resource is registered.
    print(exc.render(), file=sys.stderr)
    raise SystemExit(1) from None

# Expected measurements (docs/pins.md), computed offline (components/render/stack_pins.py).
try:
    measured = stack_measurements(stack)
except CatalogError as exc:
    print(f"pins: {exc}", file=sys.stderr)
    raise SystemExit(1) from None
pins, manifest, k8s_args = measured.pins, measured.manifest, measured.kubernetes
gpu_skus, gpu_tools = measured.gpu_skus, measured.gpu_tools
workload = stack.workload

# What another stack may promote from this one (components/render/promotion.py); exported below only
# when every host step verified.
promotable = promotable_pins(pins, gpu_skus, gpu_tools)

# Promotion (docs/decisions.md, Promotion): read the promoting stack's `promotable` output and refuse
# to deploy anything it did not attest. The check runs in an apply on the StackReference's outputs
# (known at preview too); every TdxHost depends on its result, so on a refusal no host resource is
# registered, and the program fails with the refusal as its only error, in `preview` and in `up`.
host_opts = None
if stack.promotion is not None:
    source = stack.promotion.from_stack
    reference = pulumi.StackReference(source)

    def _gate(outputs: dict) -> pulumi.Resource:
        message = refusal_from_outputs(source, stack.stack, outputs, promotable)
        if message is not None:
            raise pulumi.RunError(message)
        return reference

    gate = reference.outputs.apply(_gate)
    host_opts = pulumi.ResourceOptions(depends_on=[gate])
    pulumi.export("promotedFrom", pulumi.Output.unsecret(gate.apply(lambda _: source)))

hosts = [TdxHost(host.name, TdxHostArgs(host, stack), opts=host_opts) for host in stack.hosts]
# The workload: one TrustDomain per host (components/resources/trust_domain.py), or vLLM + the
# attested gateway in a Confidential Containers cluster (components/resources/kubernetes_workload.py).
endpoints: dict = {}
td_summaries: dict = {}
waits = [h.ready for h in hosts]


def _verifying_proxy(served: list[tuple[str, str, int]], upstreams: list[tuple[str, str]]) -> Any:
    """The stack's verifying proxy (`proxy:`), on a host (systemd, `served`: TD, gateway address and
    port) or in a cluster (`proxy.kubernetes`, `upstreams`: TD, URL). Either takes the new pins before
    the TDs change (`accepted`) and drops the old ones after they report ready (`retire_after`)."""
    assert stack.proxy is not None
    args_pins = pins_output(pins)
    if stack.proxy.kubernetes is None:
        from components.render.proxy import proxy_instances
        from components.resources.proxy import VerifyingProxy, VerifyingProxyArgs

        return VerifyingProxy("proxy", VerifyingProxyArgs(stack.proxy, proxy_instances(stack.proxy, served), args_pins))
    from components.probe.kube import ClusterReadError, load_kubeconfig
    from components.render.proxy_kubernetes import cluster_instances
    from components.resources.proxy import VerifyingProxyArgs
    from components.resources.proxy_kubernetes import KubernetesVerifyingProxy

    c = stack.proxy.kubernetes
    try:
        kubeconfig = load_kubeconfig(c.kubeconfig, c.context, "proxy.kubernetes.kubeconfig")
    except ClusterReadError as exc:
        print(f"proxy.kubernetes: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    instances = cluster_instances(stack.proxy, upstreams)
    return KubernetesVerifyingProxy("proxy", VerifyingProxyArgs(stack.proxy, instances, args_pins), kubeconfig)


if k8s_args is not None:
    from components.probe.kube import ClusterReadError
    from components.render.kubernetes import endpoint_for
    from components.resources.kubernetes_workload import KubernetesWorkload, connect

    # The cluster is read first: one that cannot run a TDX pod gets no object at all.
    try:
        kubeconfig = connect(k8s_args)
    except ClusterReadError as exc:
        print(f"workload.kubernetes: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except ConfigErrors as exc:
        print(exc.render(), file=sys.stderr)
        raise SystemExit(1) from None
    # The proxy (config: only in a cluster, proxy.kubernetes) takes the new pins before the pod
    # rolls, and drops the old ones once the new pod passed its rollout check; its upstream is the
    # workload's in-cluster Service.
    proxy = None
    if stack.proxy is not None:
        proxy = _verifying_proxy([], [("kubernetes", endpoint_for(k8s_args.target))])
    workload_opts = pulumi.ResourceOptions.merge(
        host_opts or pulumi.ResourceOptions(), pulumi.ResourceOptions(depends_on=proxy.accepted if proxy else [])
    )
    cluster = KubernetesWorkload("workload", k8s_args, kubeconfig, opts=workload_opts)
    endpoints["kubernetes"] = cluster.endpoint
    # Known once the Deployment's rollout finished: its pod passed the known-answer readiness check.
    waits.append(cluster.endpoint.apply(bool))
    if proxy is not None:
        proxy.retire_after([cluster.rollout])
        pulumi.export("proxies", proxy.urls)
        waits.append(proxy.ready)
elif workload is not None:
    from components.resources.trust_domain import trust_domains

    # The verifying proxy (components/resources/proxy.py) takes new pins before any TD changes, and
    # drops the old ones only after every TD reports ready: a pin rollover never refuses the live TD.
    proxy = None
    if stack.proxy is not None:
        from components.render.trust_domain import endpoint_url

        served = [(h.name, h.ssh.address, workload.gateway_port) for h in stack.hosts]
        proxy = _verifying_proxy(served, [(td, endpoint_url(address, port)) for td, address, port in served])
    tds = trust_domains(stack, hosts, manifest, after=proxy.accepted if proxy is not None else ())
    endpoints.update({name: td.endpoint for name, td in tds.items()})
    td_summaries.update({name: td.summary for name, td in tds.items()})
    waits += [td.ready for td in tds.values()]
    if proxy is not None:
        proxy.retire_after([td.wait for td in tds.values()])
        pulumi.export("proxies", proxy.urls)
        waits.append(proxy.ready)


def _with_td(facts: pulumi.Output, summary: pulumi.Output | None) -> pulumi.Output:
    # Each host's facts, with its TD's summary under `td` (tdx: false marks the dev stack's VM).
    if summary is None:
        return facts
    return pulumi.Output.all(facts, summary).apply(lambda a: {**a[0], "td": a[1]})


pulumi.export("hosts", {cfg.name: _with_td(h.facts, td_summaries.get(cfg.name)) for cfg, h in zip(stack.hosts, hosts)})
pulumi.export("pins", pins_output(pins))
if endpoints:
    pulumi.export("endpoints", endpoints)
ready = pulumi.Output.all(*waits).apply(all)
pulumi.export("ready", ready)
pulumi.export("promotable", ready.apply(lambda ok: promotable if ok else None))
