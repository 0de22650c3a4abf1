"""The resource graph under Pulumi mocks: order, secrets, which steps a changed pin re-runs."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pulumi
import pytest

from components.config.stack import parse_stack
from tests.support.pulumi_mocks import (
    SECRETS,
    Mocks,
    RecordingMocks,
    build_host,
    decrypted,
    run_program,
    runtime_config,
)
from tests.support.pulumi_mocks import check as _assert
from tests.support.stacks import HOST_KEY, good


def stack_config(stack: str = "staging", **platform: Any):
    raw = good()
    raw["platform"].update(platform)
    return parse_stack(decrypted(raw), stack, secret_paths=set(SECRETS))


@pytest.fixture(autouse=True)
def mocks():
    pulumi.runtime.set_mocks(Mocks(), project="tdx-vllm", stack="staging", preview=False)
    yield


build = build_host


@pulumi.runtime.test
def test_order_follows_the_pipeline():
    host, rec = build(stack_config())
    assert rec.deps("gpu-a-preflight") == {"gpu-a-tools"}
    assert rec.deps("gpu-a-bios") == {"gpu-a-preflight"}
    assert rec.deps("gpu-a-kernel") == {"gpu-a-bios"}
    assert rec.deps("gpu-a-gpu") == {"gpu-a-kernel"} and rec.deps("gpu-a-dcap") == {"gpu-a-kernel"}
    # the Dell table's three phases, in order, each after the previous one's reset
    assert rec.deps("gpu-a-bios-phase2") == {"gpu-a-bios-phase1"}
    assert rec.deps("gpu-a-bios-phase3") == {"gpu-a-bios-phase2"}
    assert rec.deps("gpu-a-bios-verify") == {"gpu-a-bios-phase3", "gpu-a-scripts"}  # every step: after the scripts
    assert rec.deps("gpu-a-scripts") == {"gpu-a-ssh-check"}
    assert "--registration mpa" in rec.resources["gpu-a-bios-phase1"].props["create"]
    assert rec.deps("gpu-a-kernel-reboot") == {"gpu-a-kernel-cmdline", "gpu-a-scripts"}
    assert rec.deps("gpu-a-kernel-wait") == {"gpu-a-kernel-reboot", "gpu-a-scripts"}
    assert rec.parent("gpu-a-kernel-wait") == "gpu-a-kernel" and rec.parent("gpu-a-kernel") == "gpu-a"
    return host.ready.apply(lambda ready: _assert(ready is True))


@pulumi.runtime.test
def test_host_without_bmc_only_verifies_bios_from_the_host():
    _, rec = build(stack_config(), host_index=1)
    assert not any("phase" in n for n in rec.resources)
    conn = pulumi.Output.from_input(rec.resources["gpu-b-bios-verify"].props["connection"])
    return conn.apply(lambda c: _assert(c["dial_error_limit"] == 10 and c["host"] == "gpu-b.example.net"))


@pulumi.runtime.test
def test_connections_pin_the_host_key_and_wait_dials_without_limit():
    _, rec = build(stack_config())
    remote_cmds = {n: a for n, a in rec.resources.items() if a.type_ == "command:remote:Command"}
    assert set(remote_cmds) == {
        "gpu-a-scripts",
        "gpu-a-tools-install",
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
    assert with_delete == {"gpu-a-scripts", "gpu-a-kernel-cmdline", "gpu-a-gpu-mode", "gpu-a-dcap-services"}

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
        flags.append(pulumi.Output.from_input(env["TDXGPU_BMC_PASSWORD"]).is_secret())
        assert env["TDXGPU_BMC_USERNAME"] == "root"  # plain config: a user name is not a secret
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
    base = stack_config(tdxModule="1.5.16")
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
        assert facts["tdxModuleVersion"] == "1.5.16" and facts["biosVersion"] == "2.7.1"
        assert facts["gpus"] == [{"bdf": "0000:b8:00.0", "vbios": "96.00.9F.00.01", "ccMode": "on", "ppcieMode": "off"}]
        assert facts["teeIo"] is False and facts["productionSilicon"] is True
        for secret in SECRETS.values():
            assert secret not in json.dumps(facts)

    return host.facts.apply(check)


def test_program_validation_reads_secret_leaves_from_the_stack_file(tmp_path):
    """`pulumi up` runs the same validation: Pulumi says which top-level keys are secret, the stack
    file says which leaves were `secure:`."""
    import yaml

    from components.config.reader import ConfigErrors
    from components.config.stack import load_from_pulumi
    from tests.support.stacks import replace_encrypted

    raw = good()
    file_form = replace_encrypted(raw, {"secure": "v1:abc"})
    (tmp_path / "Pulumi.staging.yaml").write_text(
        yaml.safe_dump({"config": {f"tdx-vllm:{k}": v for k, v in file_form.items()}})
    )
    runtime_config(decrypted(raw), {"hosts", "dcap"})
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
    from components.config.reader import ConfigErrors
    from components.config.stack import load_from_pulumi

    runtime_config(decrypted(good()), {"hosts"})  # dcap's API key arrived as plain config
    with pytest.raises(ConfigErrors) as info:
        load_from_pulumi(tmp_path)
    assert [e.path for e in info.value.errors] == ["dcap.pccsApiKey"]


def test_the_program_builds_every_host_with_the_dev_stack_file(monkeypatch):
    """__main__.py end to end under mocks, with the secret leaves the dev stack file declares."""
    mocks = RecordingMocks()
    run_program(mocks, decrypted(good()), {"hosts", "dcap"}, monkeypatch, stack="dev")
    hosts = [name for typ, name in mocks.created if typ == "tdx-vllm:host:TdxHost"]
    assert hosts == ["gpu-a", "gpu-b"]
    commands = [name for typ, name in mocks.created if typ.startswith("command:")]
    # gpu-a: the ssh-check + the scripts + 8 remote + 3 BIOS phases (Dell); gpu-b (no BMC): the
    # ssh-check + the scripts + 8 remote
    assert len(commands) == 13 + 10


@pulumi.runtime.test
def test_status_checks_run_the_same_script_and_values_as_up():
    # `python -m components status` renders each host step itself (no Pulumi run); it must judge the
    # host against exactly what `pulumi up` applies: same step, same desired values, secrets included.
    from components.render.host_steps import host_checks
    from components.render.steps import render

    cfg = stack_config()
    _, rec = build(cfg)
    checks = host_checks(cfg, cfg.hosts[0])
    assert [c.resource for c in checks] == [
        "gpu-a-tools-install",
        "gpu-a-preflight-check",
        "gpu-a-bios-verify",
        "gpu-a-kernel-cmdline",
        "gpu-a-gpu-mode",
        "gpu-a-dcap-services",
    ]
    stdins = {c.resource: pulumi.Output.from_input(rec.resources[c.resource].props["stdin"]) for c in checks}

    def compare(up: dict[str, str]) -> None:
        for c in checks:
            assert up[c.resource] == render(c.step, c.params, "run").stdin, c.resource

    return pulumi.Output.all(**stdins).apply(compare)
