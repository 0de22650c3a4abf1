"""The resource graph under Pulumi mocks: order, secrets, which steps a changed pin re-runs."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pulumi
import pytest

from components.config import ENCRYPTED, parse_stack

from .test_config import HOST_KEY, good

SECRETS = {
    "hosts[0].ssh.privateKey": "PRIVATE-KEY-0",
    "hosts[0].bmc.username": "bmc-admin",
    "hosts[0].bmc.password": "BMC-PASSWORD",
    "hosts[1].ssh.privateKey": "PRIVATE-KEY-1",
    "dcap.pccsApiKey": "PCS-API-KEY",
}


def stack_config(stack: str = "staging", **platform: Any):
    raw = good()
    raw["platform"].update(platform)
    return parse_stack(_decrypted(raw), stack, secret_paths=set(SECRETS))


class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        outs = dict(args.inputs)
        if args.typ == "command:remote:Command":
            facts: dict[str, Any] = {"step": args.name, "ok": True, "changed": False}
            if args.name.endswith("-reboot"):
                facts.update(boot_id="boot-1", rebooting=True)
            if args.name.endswith("-preflight-check"):
                facts.update(
                    cpu_model_name="Intel(R) Xeon(R) Platinum 8580",
                    production_silicon=True,
                    kernel="6.17.0-8-generic",
                    os="ubuntu-26.04",
                    tee_io={"enabled": False},
                )
            if args.name.endswith("-kernel-wait"):
                facts.update(cmdline="ro nohibernate kvm_intel.tdx=1", tdx_module_version="1.5.34")
            if args.name.endswith("-gpu-mode"):
                facts.update(
                    gpus=[{"bdf": "0000:b8:00.0", "vbios": "96.00.9F.00.01", "cc_mode": "on", "ppcie_mode": "off"}],
                    tools_version="2025.11.21",
                )
            outs.update(stdout=json.dumps(facts), stderr="")
        if args.typ == "command:local:Command":
            outs.update(stdout=json.dumps({"phase": 2, "bios_version": "2.7.1", "changed": False}), stderr="")
        return [f"{args.name}-id", outs]

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}


@pytest.fixture(autouse=True)
def mocks():
    pulumi.runtime.set_mocks(Mocks(), project="tdx-vllm", stack="staging", preview=False)
    yield


class Recorder:
    """A transformation on TdxHost (inherited by every child) that records each resource's inputs
    and options as the program built them, secrets still wrapped."""

    def __init__(self):
        self.resources: dict[str, pulumi.ResourceTransformationArgs] = {}

    def __call__(self, args: pulumi.ResourceTransformationArgs):
        self.resources[args.name] = args
        return None

    def deps(self, name: str) -> set[str]:
        return {d._name for d in (self.resources[name].opts.depends_on or [])}  # noqa: SLF001

    def parent(self, name: str) -> str:
        return self.resources[name].opts.parent._name  # noqa: SLF001


def build(cfg, host_index: int = 0):
    from components.host import TdxHost

    rec = Recorder()
    host = TdxHost(cfg.hosts[host_index], cfg, opts=pulumi.ResourceOptions(transformations=[rec]))
    return host, rec


@pulumi.runtime.test
def test_order_follows_the_pipeline():
    host, rec = build(stack_config())
    assert rec.deps("gpu-a-bios") == {"gpu-a-preflight"}
    assert rec.deps("gpu-a-kernel") == {"gpu-a-bios"}
    assert rec.deps("gpu-a-gpu") == {"gpu-a-kernel"} and rec.deps("gpu-a-dcap") == {"gpu-a-kernel"}
    assert rec.deps("gpu-a-bios-phase2") == {"gpu-a-bios-phase1"}
    assert rec.deps("gpu-a-bios-verify") == {"gpu-a-bios-phase2"}
    assert rec.deps("gpu-a-kernel-reboot") == {"gpu-a-kernel-cmdline"}
    assert rec.deps("gpu-a-kernel-wait") == {"gpu-a-kernel-reboot"}
    assert rec.parent("gpu-a-kernel-wait") == "gpu-a-kernel" and rec.parent("gpu-a-kernel") == "gpu-a"
    return host.ready.apply(lambda ready: _assert(ready is True))


def _assert(condition: bool) -> None:
    assert condition


@pulumi.runtime.test
def test_host_without_bmc_only_verifies_bios_from_the_host():
    host, rec = build(stack_config(), host_index=1)
    assert not any("phase" in n for n in rec.resources)
    conn = pulumi.Output.from_input(rec.resources["gpu-b-bios-verify"].props["connection"])
    return conn.apply(lambda c: _assert(c["dial_error_limit"] == 10 and c["host"] == "gpu-b.example.net"))


@pulumi.runtime.test
def test_connections_pin_the_host_key_and_wait_dials_without_limit():
    _, rec = build(stack_config())
    remote_cmds = {n: a for n, a in rec.resources.items() if a.type_ == "command:remote:Command"}
    assert set(remote_cmds) == {
        "gpu-a-preflight-check",
        "gpu-a-bios-verify",
        "gpu-a-kernel-cmdline",
        "gpu-a-kernel-reboot",
        "gpu-a-kernel-wait",
        "gpu-a-gpu-mode",
        "gpu-a-dcap-services",
    }
    assert rec.resources["gpu-a-kernel-wait"].opts.custom_timeouts.create == "1800s"
    # `pulumi destroy` undoes what these steps install; the others have nothing to remove.
    with_delete = {n for n, a in remote_cmds.items() if a.props.get("delete")}
    assert with_delete == {"gpu-a-kernel-cmdline", "gpu-a-gpu-mode", "gpu-a-dcap-services"}

    def check(conns):
        for name, conn in conns.items():
            assert conn["host_key"] == HOST_KEY and conn["host"] == "192.0.2.10", name
            assert conn["dial_error_limit"] == (
                -1 if name in ("gpu-a-kernel-reboot", "gpu-a-kernel-wait", "gpu-a-bios-verify") else 10
            ), name

    return pulumi.Output.all(
        **{n: pulumi.Output.from_input(a.props["connection"]) for n, a in remote_cmds.items()}
    ).apply(check)


@pulumi.runtime.test
def test_secrets_stay_secret_and_never_reach_plain_inputs():
    _, rec = build(stack_config())

    def inspect(values):
        secret_flags, plain = values
        assert all(secret_flags), secret_flags
        for text in plain:
            for secret in SECRETS.values():
                assert secret not in text
        return True

    remote = [a for a in rec.resources.values() if a.type_ == "command:remote:Command"]
    flags = [pulumi.Output.from_input(a.props["connection"]["private_key"]).is_secret() for a in remote]
    dcap = rec.resources["gpu-a-dcap-services"]
    flags.append(pulumi.Output.from_input(dcap.props["stdin"]).is_secret())
    for phase in ("gpu-a-bios-phase1", "gpu-a-bios-phase2"):
        env = rec.resources[phase].props["environment"]
        flags += [
            pulumi.Output.from_input(env["TDXGPU_BMC_PASSWORD"]).is_secret(),
            pulumi.Output.from_input(env["TDXGPU_BMC_USERNAME"]).is_secret(),
        ]
        assert "BMC-PASSWORD" not in rec.resources[phase].props["create"]
    assert dcap.props["logging"] == "none"
    # Everything a non-secret command is given, and every command line, is free of secrets.
    plain = [
        pulumi.Output.from_input(a.props["stdin"])
        for n, a in rec.resources.items()
        if a.type_ == "command:remote:Command" and n != "gpu-a-dcap-services"
    ]
    plain += [pulumi.Output.from_input(a.props["create"]) for a in rec.resources.values() if "create" in a.props]
    return pulumi.Output.all(pulumi.Output.all(*flags), pulumi.Output.all(*plain)).apply(inspect)


def _stdin_digests(cfg) -> pulumi.Output[dict[str, str]]:
    import hashlib

    _, rec = build(cfg)
    stdins = {
        n: pulumi.Output.from_input(a.props["stdin"])
        for n, a in rec.resources.items()
        if a.type_ == "command:remote:Command"
    }
    return pulumi.Output.all(**stdins).apply(
        lambda d: {n: hashlib.sha256(s.encode()).hexdigest() for n, s in d.items()}
    )


@pulumi.runtime.test
def test_changed_pin_reruns_exactly_the_affected_steps():
    base = stack_config(tdxModule="1.5.34")
    pinned = stack_config(tdxModule="1.5.20")
    gpu_changed = replace(
        base, hosts=(replace(base.hosts[0], gpu=replace(base.hosts[0].gpu, mode="devtools")), *base.hosts[1:])
    )

    def compare(digests):
        a, b, c = digests
        assert {n for n in a if a[n] != b[n]} == {"gpu-a-kernel-cmdline", "gpu-a-kernel-reboot", "gpu-a-kernel-wait"}
        assert {n for n in a if a[n] != c[n]} == {"gpu-a-gpu-mode"}

    return pulumi.Output.all(_stdin_digests(base), _stdin_digests(pinned), _stdin_digests(gpu_changed)).apply(compare)


@pulumi.runtime.test
def test_facts_output_summarises_observed_values():
    host, _ = build(stack_config())

    def check(facts):
        assert facts["ready"] is True
        assert facts["tdxModuleVersion"] == "1.5.34" and facts["biosVersion"] == "2.7.1"
        assert facts["gpus"] == [{"bdf": "0000:b8:00.0", "vbios": "96.00.9F.00.01", "ccMode": "on", "ppcieMode": "off"}]
        assert facts["teeIo"] is False and facts["productionSilicon"] is True
        for secret in SECRETS.values():
            assert secret not in json.dumps(facts)

    return host.facts.apply(check)


def _runtime_config(raw: dict, secret_top: set[str]) -> None:
    pulumi.runtime.set_all_config(
        {f"tdx-vllm:{k}": json.dumps(v) for k, v in raw.items()}, secret_keys=[f"tdx-vllm:{k}" for k in secret_top]
    )


def _decrypted(raw: dict) -> dict:
    """Stands in for Pulumi's decryption: each encrypted leaf gets its secret value."""

    def fill(value, path=""):
        if value is ENCRYPTED:
            return SECRETS[path]
        if isinstance(value, dict):
            return {k: fill(v, f"{path}.{k}" if path else k) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    return fill(raw)


def test_program_validation_reads_secret_leaves_from_the_stack_file(tmp_path):
    """`pulumi up` runs the same validation: Pulumi says which top-level keys are secret, the stack
    file says which leaves were `secure:`."""
    import yaml

    from components.config import ConfigErrors, load_from_pulumi

    from .test_config import replace_encrypted

    raw = good()
    file_form = replace_encrypted(raw, {"secure": "v1:abc"})
    (tmp_path / "Pulumi.staging.yaml").write_text(
        yaml.safe_dump({"config": {f"tdx-vllm:{k}": v for k, v in file_form.items()}})
    )
    _runtime_config(_decrypted(raw), {"hosts", "dcap"})
    cfg = load_from_pulumi(tmp_path)
    assert cfg.hosts[0].ssh.private_key.value == "PRIVATE-KEY-0" and cfg.dcap.pccs_api_key.value == "PCS-API-KEY"

    # The BMC password typed in plain text next to other secrets: only the stack file can tell.
    file_form["hosts"][0]["bmc"]["password"] = "BMC-PASSWORD"
    (tmp_path / "Pulumi.staging.yaml").write_text(
        yaml.safe_dump({"config": {f"tdx-vllm:{k}": v for k, v in file_form.items()}})
    )
    with pytest.raises(ConfigErrors) as info:
        load_from_pulumi(tmp_path)
    assert [e.path for e in info.value.errors] == ["hosts[0].bmc.password"]
    assert "BMC-PASSWORD" not in str(info.value)


def test_program_validation_without_a_stack_file_uses_secret_keys(tmp_path):
    from components.config import ConfigErrors, load_from_pulumi

    _runtime_config(_decrypted(good()), {"hosts"})  # dcap's API key arrived as plain config
    with pytest.raises(ConfigErrors) as info:
        load_from_pulumi(tmp_path)
    assert [e.path for e in info.value.errors] == ["dcap.pccsApiKey"]


class RecordingMocks(Mocks):
    def __init__(self):
        self.created: list[tuple[str, str]] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.created.append((args.typ, args.name))
        return super().new_resource(args)


def run_program(
    mocks: Mocks,
    raw: dict,
    secret_top: set[str],
    monkeypatch: pytest.MonkeyPatch,
    *,
    stack: str,
    preview: bool = False,
    resolve: tuple[str, ...] = (),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """__main__.py end to end under `mocks`, with `raw` as the stack config (secret leaves under the
    `secret_top` keys); waits for every registration it started. (exports, the resolved values of
    the exports named in `resolve`)."""
    import runpy
    from pathlib import Path

    pulumi.runtime.set_mocks(mocks, project="tdx-vllm", stack=stack, preview=preview)
    _runtime_config(raw, secret_top)
    exported: dict[str, Any] = {}
    monkeypatch.setattr(pulumi, "export", lambda name, value: exported.__setitem__(name, value))
    resolved: dict[str, Any] = {}

    @pulumi.runtime.test
    def program():
        runpy.run_path(str(Path(__file__).resolve().parents[2] / "__main__.py"), run_name="__main__")
        if resolve:
            return pulumi.Output.all(*(exported[n] for n in resolve)).apply(
                lambda values: resolved.update(zip(resolve, values))
            )

    program()
    return exported, resolved


def test_the_program_builds_every_host_with_the_dev_stack_file(monkeypatch):
    """__main__.py end to end under mocks, with the secret leaves the dev stack file declares."""
    mocks = RecordingMocks()
    run_program(mocks, _decrypted(good()), {"hosts", "dcap"}, monkeypatch, stack="dev")
    hosts = [name for typ, name in mocks.created if typ == "tdx-vllm:host:TdxHost"]
    assert hosts == ["gpu-a", "gpu-b"]
    commands = [name for typ, name in mocks.created if typ.startswith("command:")]
    assert len(commands) == 9 + 7  # gpu-a: 7 remote + 2 BIOS phases; gpu-b (no BMC): 7 remote
