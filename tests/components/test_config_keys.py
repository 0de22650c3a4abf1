"""Every config key reaches what enforces it (issue 16: `platform.os` was validated and then read by
nothing, so a stack for 26.04 ended `ready` on a 24.04 host).

The audit: the keys the schema accepts are taken from the parser itself (every `Reader.obj` call
names the keys its mapping allows), for a stack that sets every host-side key. Each key then gets
another valid value, the program runs under Pulumi mocks, and what the resources were given (every
input of every resource, secrets included) must differ from the unchanged run. A key whose change
reaches no resource is read by nothing. A key that only shapes validation must be listed in
VALIDATION_ONLY with the reason; a new key fails this test until it is in one of the two tables.
The `workload` keys are audited the same way by their own renderers' tests
(tests/components/test_trust_domain.py, test_kubernetes_workload.py) and the journey.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from components.config import reader as reader_module
from components.config.stack import parse_stack
from tests.support.pulumi_mocks import Mocks, decrypted, run_program
from tests.support.stacks import FPR, good

OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIGiUN+5BOTUiTQUNdOiPF71nwVddFtHZ+ltq3hgaUL6"

# key path -> (another valid value, other keys to set with it for the value to be valid)
ALTERNATIVES: dict[str, tuple[Any, dict[str, Any]]] = {
    "platform.os": ("ubuntu-24.04", {}),
    "platform.extraKernelArgs": (["modprobe.blacklist=nouveau", "iommu=pt"], {}),
    "platform.tdxModule": ("1.5.13", {}),
    "gpu.model": ("h200-sxm", {}),
    "gpu.count": (2, {}),
    "gpu.mode": ("ppcie", {"gpu.count": 8}),
    "dcap.pccsApiKey": ("OTHER-PCS-KEY", {}),
    "dcap.registration": ("pckid", {}),
    "dcap.pccsPort": (8082, {}),
    "dcap.qgsPort": (4051, {}),
    "dcap.useSecureCert": (True, {}),
    "dcap.pccsUrl": ("https://pccs.example.net:8081/sgx/certification/v4/", {"dcap.useSecureCert": True}),
    # The stack-wide `ssh:` defaults reach a host that does not set its own.
    "ssh.port": (2222, {"hosts[0].ssh.port": None}),
    "ssh.user": ("admin", {"hosts[0].ssh.user": None}),
    "ssh.privateKey": ("PRIVATE-KEY-FLEET-OTHER", {"hosts[0].ssh.privateKey": None}),
    "hosts[0].name": ("gpu-z", {}),
    "hosts[0].ssh.address": ("192.0.2.99", {}),
    "hosts[0].ssh.port": (2222, {}),
    "hosts[0].ssh.user": ("admin", {}),
    "hosts[0].ssh.hostKey": (OTHER_KEY, {}),
    "hosts[0].ssh.privateKey": ("PRIVATE-KEY-OTHER", {}),
    "hosts[0].bmc.endpoint": ("https://192.0.2.111", {}),
    "hosts[0].bmc.vendor": ("intel", {}),
    "hosts[0].bmc.username": ("admin", {}),
    "hosts[0].bmc.password": ("OTHER-PASSWORD", {}),
    "hosts[0].bmc.tlsFingerprint": ("aa" * 32, {}),
    "hosts[0].bmc.caFile": ("/etc/ssl/bmc-ca.pem", {"hosts[0].bmc.tlsFingerprint": None}),
    "hosts[0].bmc.system": ("/redfish/v1/Systems/2", {}),
    "hosts[0].gpu": ({"model": "h200-sxm", "count": 1, "mode": "on"}, {}),
    "teeIo": (True, {}),
    "restoreOnDestroy": (True, {}),
    "rebootTimeoutSeconds": (900, {}),
}

# Keys that only shape validation, each with where its effect shows instead.
VALIDATION_ONLY: dict[str, str] = {
    "promotion": "the promotion gate reads another stack's outputs (tests/components/test_promotion.py)",
    "workload": "audited by the workload renderers' own tests and the journey (docstring)",
    "proxy": "audited by tests/components/test_proxy.py (every key reaches the rendered step) and the journey",
}


SECRET_LEAVES = {
    "dcap.pccsApiKey",
    "ssh.privateKey",
    "hosts[0].ssh.privateKey",
    "hosts[0].bmc.password",
    "hosts[1].ssh.privateKey",
}


def _parse(raw: dict) -> None:
    parse_stack(raw, "audit", secret_paths=SECRET_LEAVES)


def _set(raw: dict, path: str, value: Any) -> None:
    """Set `a.b[0].c` in `raw` (None deletes)."""
    parts: list[Any] = []
    for piece in path.split("."):
        name, _, rest = piece.partition("[")
        parts.append(name)
        if rest:
            parts.append(int(rest.rstrip("]")))
    node: Any = raw
    for key in parts[:-1]:
        node = node[key]
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def full_stack() -> dict:
    """good() with every optional host-side key set to its default-equal value."""
    raw = decrypted(good())
    raw["dcap"].update(pccsPort=8081, qgsPort=4050, useSecureCert=False)
    raw["hosts"][0]["ssh"].update(port=22, user="root")
    raw["hosts"][0]["bmc"].update(system="/redfish/v1/Systems/System.Embedded.1", tlsFingerprint=FPR)
    raw.update(teeIo=False, restoreOnDestroy=False, rebootTimeoutSeconds=1800)
    raw["ssh"] = {"port": 22, "user": "root", "privateKey": "PRIVATE-KEY-FLEET"}
    return raw


def accepted_keys(raw: dict, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Every key path the parser accepts for `raw` (from the `allowed` of each mapping it reads)."""
    seen: set[str] = set()
    original = reader_module.Reader.obj

    def recording(self, value, path, allowed):
        allowed = tuple(allowed)
        seen.update(reader_module.join(path, k) for k in allowed)
        return original(self, value, path, allowed)

    monkeypatch.setattr(reader_module.Reader, "obj", recording)
    _parse(raw)
    monkeypatch.setattr(reader_module.Reader, "obj", original)
    # the top-level keys the stack reads one by one (not through one `obj`)
    seen.update(k for k in raw)
    return {k for k in seen if not k.startswith("hosts[1]")}  # hosts[1] has the same keys as hosts[0]


class InputRecorder(Mocks):
    def __init__(self) -> None:
        self.inputs: dict[str, Any] = {}

    def new_resource(self, args):
        self.inputs[f"{args.typ}::{args.name}"] = args.inputs
        return super().new_resource(args)


def rendered(raw: dict, monkeypatch: pytest.MonkeyPatch) -> str:
    mocks = InputRecorder()
    run_program(mocks, raw, {"hosts", "dcap", "ssh"}, monkeypatch, stack="audit")
    return json.dumps(mocks.inputs, sort_keys=True, default=str)


def test_every_config_key_reaches_a_resource_or_says_why_not(monkeypatch):
    base = full_stack()
    keys = accepted_keys(base, monkeypatch)
    # leaves and whole blocks we mutate; the mapping keys above them (hosts[0].bmc...) are covered by them
    containers = {k for k in keys if any(o.startswith((k + ".", k + "[")) for o in keys)}
    unknown = sorted(k for k in keys - containers if k not in ALTERNATIVES and k not in VALIDATION_ONLY)
    assert not unknown, f"keys with no audit entry (add them to ALTERNATIVES or VALIDATION_ONLY): {unknown}"
    reference = rendered(base, monkeypatch)
    read_by_nothing = []
    for key, (value, together) in ALTERNATIVES.items():
        raw = copy.deepcopy(base)
        for other, other_value in together.items():
            _set(raw, other, other_value)
        _set(raw, key, value)
        _parse(raw)  # the alternative is valid (a ConfigErrors here names the table's mistake)
        if rendered(raw, monkeypatch) == reference:
            read_by_nothing.append(key)
    assert not read_by_nothing, f"config keys whose change reaches no resource: {read_by_nothing}"
