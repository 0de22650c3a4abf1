"""tdx-vllm: read and validate the stack config, provision one TdxHost per host, export facts."""
import sys

import pulumi

from components.config import ConfigErrors, load_from_pulumi
from components.host import TdxHost
from components.measurements import DEFAULT_MANIFEST, PinError, default_artifact_dir, expected_pins

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

hosts = [TdxHost(host, stack) for host in stack.hosts]

pulumi.export("hosts", {cfg.name: h.facts for cfg, h in zip(stack.hosts, hosts)})
pulumi.export("pins", pins)
pulumi.export("ready", pulumi.Output.all(*[h.ready for h in hosts]).apply(all))
