"""tdx-vllm: read and validate the stack config, provision one TdxHost per host, export facts."""
import sys

import pulumi

from components.config import ConfigErrors, load_from_pulumi
from components.host import TdxHost
from components.measurements import DEFAULT_MANIFEST, PinError, default_artifact_dir, expected_pins
from components.promotion import promotable_pins, refusal_from_outputs

try:
    stack = load_from_pulumi()
except ConfigErrors as exc:
    # One message with every problem, before any resource is registered.
    print(exc.render(), file=sys.stderr)
    raise SystemExit(1) from None

# Expected measurements, computed offline from the pinned TD boot artifacts (docs/pins.md). The dev
# example may lack the artifact files: their registers are then null with the reason.
try:
    pins = expected_pins(DEFAULT_MANIFEST, default_artifact_dir(), require_artifacts=stack.stack != "dev")
except PinError as exc:
    print(f"pins: {exc}", file=sys.stderr)
    raise SystemExit(1) from None
# With a workload, RTMR3 is pinned too: the replay of the guest agent's events (docs/pins.md).
if stack.workload is not None:
    from components.trust_domain import workload_pins
    pins = workload_pins(pins, stack.workload.manifest(stack.tensor_parallel_size))

# What another stack may promote from this one (components/promotion.py); exported below only when
# every host step verified.
promotable = promotable_pins(pins, [h.gpu.model for h in stack.hosts if h.gpu], stack.platform.tdx_module)

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

hosts = [TdxHost(host, stack, opts=host_opts) for host in stack.hosts]
# One TrustDomain per host, only when the stack has a `workload` (components/trust_domain.py).
tds = {}
if stack.workload is not None:
    from components.trust_domain import trust_domains
    tds = trust_domains(stack, hosts)

pulumi.export("hosts", {cfg.name: h.facts for cfg, h in zip(stack.hosts, hosts)})
pulumi.export("pins", pins)
if tds:
    pulumi.export("endpoints", {name: td.endpoint for name, td in tds.items()})
ready = pulumi.Output.all(*[h.ready for h in hosts], *[td.ready for td in tds.values()]).apply(all)
pulumi.export("ready", ready)
pulumi.export("promotable", ready.apply(lambda ok: promotable if ok else None))
