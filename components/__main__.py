"""`python -m components <verb>`: the commands of the Pulumi side, one entry point with an explicit
registry (the client's is `tdxattest`). Only the chosen verb's module is imported; each verb module
has `main(argv) -> int`. `python -m components.config FILE` stays as the short form of `check`."""

from __future__ import annotations

import importlib
import sys

# verb -> (module, summary)
VERBS: dict[str, tuple[str, str]] = {
    "check": ("components.config.stack", "check a stack file offline, every error at once"),
    "firmware": ("components.catalog.firmware_fetch", "fetch the pinned TD firmware from its Debian package"),
    "guest-image": ("components.catalog.guest_image", "pin a built TD guest image in firmware/td/, or check a build"),
    "kubernetes": ("components.render.kubernetes", "print the objects the Kubernetes target creates (for genpolicy)"),
    "kube-rollout": ("components.probe.kube", "wait until a Deployment runs this template, all Ready (`up` runs it)"),
    "kube-proxy-pins": (
        "components.probe.kube_proxy",
        "one pin-rollover phase of the proxy in a cluster (`up` runs it)",
    ),
    "pins": ("components.render.stack_pins", "print a stack's `pins` offline (--events: with the expected event log)"),
    "redfish": ("components.bmc.redfish", "apply or check one BIOS phase over Redfish (what BiosSettings runs)"),
    "status": ("components.status.command", "is the stack ready now: the last up, every host step's check, every TD"),
    "ssh-check": ("components.probe.ssh", "one SSH handshake: the host answers with the pinned key (before any step)"),
}


def usage() -> str:
    lines = ["usage: python -m components VERB [ARGS...]", "", "verbs:"]
    lines += [f"  {verb:<12} {summary}" for verb, (_, summary) in VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    entry = VERBS.get(argv[0])
    if entry is None:
        print(f"error: unknown verb {argv[0]!r}\n{usage()}", file=sys.stderr)
        return 2
    code: int = importlib.import_module(entry[0]).main(argv[1:])
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
