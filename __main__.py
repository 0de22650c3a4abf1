"""tdx-vllm: read and validate the stack config, provision one TdxHost per host, export facts."""

import sys

import pulumi

from components.catalog.gpu import gpu_pins_for
from components.catalog.pinfile import CatalogError
from components.catalog.td_manifest import td_boot_manifest
from components.config.reader import ConfigErrors
from components.config.stack import load_from_pulumi
from components.render.kubernetes import args_from_workload
from components.render.kubernetes import expected_pins as kubernetes_pins
from components.render.pins import expected_pins, without_tdx, workload_pins
from components.render.promotion import promotable_pins, refusal_from_outputs
from components.render.trust_domain import workload_manifest
from components.resources.host import TdxHost, TdxHostArgs
from guest_agent import DEV_STACK

try:
    stack = load_from_pulumi()
except ConfigErrors as exc:
    # One message with every problem, before any resource is registered.
    print(exc.render(), file=sys.stderr)
    raise SystemExit(1) from None

# Expected measurements (docs/pins.md). On hosts: computed offline from the pinned TD boot artifacts
# (the dev example may lack the artifact files: their registers are then null with the reason), and
# with a workload RTMR3 too (the replay of the guest agent's events). On Kubernetes: the cluster's
# Kata guest reference values, MRCONFIGID from the init data (components/render/kubernetes.py).
workload = stack.workload
gpu_skus, gpu_tools = gpu_pins_for(h.gpu.model for h in stack.hosts if h.gpu)
# The manifest carries the GPU pins of the stack's GPU models: measured into RTMR3 with the rest.
manifest = workload_manifest(workload, stack.tensor_parallel_size, gpu_skus.values()) if workload is not None else None
k8s_args = None
if workload is not None and manifest is not None and workload.kubernetes is not None:
    k8s_args = args_from_workload(workload, manifest)
    pins = kubernetes_pins(k8s_args)
else:
    try:
        # Outside dev every pinned file must be here. A stack that launches no TD (hosts only) does
        # not measure the guest image at all: RTMR1/RTMR2 are null with the reason.
        pins = expected_pins(
            workload.boot if workload is not None and workload.boot is not None else td_boot_manifest(stack.stack),
            require_artifacts=stack.stack != DEV_STACK,
            require_guest=workload is not None,
        )
    except CatalogError as exc:
        print(f"pins: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if manifest is not None:
        # The CC mode clients expect of the GPUs: devtools only where a (dev) host sets it.
        modes = {h.gpu.mode for h in stack.hosts if h.gpu}
        pins = workload_pins(pins, manifest, next((m for m in ("devtools", "ppcie") if m in modes), "on"))
        if workload is not None and workload.td is not None and not workload.td.tdx:
            pins = without_tdx(pins)  # the dev stack's VM: TEST quotes, no boot measurements

# What another stack may promote from this one (components/render/promotion.py); exported below only
# when every host step verified.
promotable = promotable_pins(pins, gpu_skus, gpu_tools, stack.platform.tdx_module)

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
if k8s_args is not None:
    from components.resources.kubernetes_workload import KubernetesWorkload

    cluster = KubernetesWorkload("workload", k8s_args, opts=host_opts)
    endpoints["kubernetes"] = cluster.endpoint
    # Known once the Deployment's rollout finished: its pod passed the known-answer readiness check.
    waits.append(cluster.endpoint.apply(bool))
elif workload is not None:
    from components.resources.trust_domain import trust_domains

    tds = trust_domains(stack, hosts, manifest)
    endpoints.update({name: td.endpoint for name, td in tds.items()})
    td_summaries.update({name: td.summary for name, td in tds.items()})
    waits += [td.ready for td in tds.values()]


def _with_td(facts: pulumi.Output, summary: pulumi.Output | None) -> pulumi.Output:
    # Each host's facts, with its TD's summary under `td` (tdx: false marks the dev stack's VM).
    if summary is None:
        return facts
    return pulumi.Output.all(facts, summary).apply(lambda a: {**a[0], "td": a[1]})


pulumi.export("hosts", {cfg.name: _with_td(h.facts, td_summaries.get(cfg.name)) for cfg, h in zip(stack.hosts, hosts)})
pulumi.export("pins", pins.to_json())
if endpoints:
    pulumi.export("endpoints", endpoints)
ready = pulumi.Output.all(*waits).apply(all)
pulumi.export("ready", ready)
pulumi.export("promotable", ready.apply(lambda ok: promotable if ok else None))
