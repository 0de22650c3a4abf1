"""tdx-vllm: read and validate the stack config, provision one TdxHost per host, export facts."""
import sys

import pulumi

from components.config import ConfigErrors, load_from_pulumi
from components.host import TdxHost

try:
    stack = load_from_pulumi()
except ConfigErrors as exc:
    # One message with every problem, before any resource is registered.
    print(exc.render(), file=sys.stderr)
    raise SystemExit(1) from None

hosts = [TdxHost(host, stack) for host in stack.hosts]

pulumi.export("hosts", {cfg.name: h.facts for cfg, h in zip(stack.hosts, hosts)})
pulumi.export("ready", pulumi.Output.all(*[h.ready for h in hosts]).apply(all))
