"""Pulumi mocks for the program and its components: resources recorded instead of created, and the
whole program (`__main__.py`) run under them with a decrypted stack config."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

import pulumi
import pytest

from components.config.reader import ENCRYPTED
from tests.support.paths import REPO

SECRETS = {
    "hosts[0].ssh.privateKey": "PRIVATE-KEY-0",
    "hosts[0].bmc.password": "BMC-PASSWORD",
    "hosts[1].ssh.privateKey": "PRIVATE-KEY-1",
    "dcap.pccsApiKey": "PCS-API-KEY",
}


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
                facts.update(cmdline="ro nohibernate kvm_intel.tdx=1", tdx_module_version="1.5.16")
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


class Recorder:
    """A transformation on TdxHost (inherited by every child) that records each resource's inputs
    and options as the program built them, secrets still wrapped."""

    def __init__(self):
        self.resources: dict[str, pulumi.ResourceTransformationArgs] = {}

    def __call__(self, args: pulumi.ResourceTransformationArgs):
        self.resources[args.name] = args
        return None

    def deps(self, name: str) -> set[str]:
        # The programs pass depends_on as a list of resources (never a single one, an Output or an awaitable).
        depends_on = cast("Sequence[pulumi.Resource]", self.resources[name].opts.depends_on or [])
        return {d._name for d in depends_on}

    def parent(self, name: str) -> str:
        parent = self.resources[name].opts.parent
        assert parent is not None
        return parent._name


def build_host(cfg: Any, host_index: int = 0) -> tuple[Any, Recorder]:
    """The TdxHost of `cfg.hosts[host_index]`, as the program builds it, and its Recorder."""
    from components.resources.host import TdxHost, TdxHostArgs

    rec = Recorder()
    host = TdxHost(
        cfg.hosts[host_index].name,
        TdxHostArgs(cfg.hosts[host_index], cfg),
        opts=pulumi.ResourceOptions(transformations=[rec]),
    )
    return host, rec


def check(condition: bool) -> None:
    """An assert usable as the body of an `Output.apply` callback (a lambda cannot hold `assert`)."""
    assert condition


def runtime_config(raw: dict, secret_top: set[str]) -> None:
    pulumi.runtime.set_all_config(
        {f"tdx-vllm:{k}": json.dumps(v) for k, v in raw.items()}, secret_keys=[f"tdx-vllm:{k}" for k in secret_top]
    )


def decrypted(raw: dict) -> dict:
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

    pulumi.runtime.set_mocks(mocks, project="tdx-vllm", stack=stack, preview=preview)
    runtime_config(raw, secret_top)
    exported: dict[str, Any] = {}
    monkeypatch.setattr(pulumi, "export", lambda name, value: exported.__setitem__(name, value))
    resolved: dict[str, Any] = {}

    @pulumi.runtime.test
    def program():
        runpy.run_path(str(REPO / "__main__.py"), run_name="__main__")
        if resolve:
            return pulumi.Output.all(*(exported[n] for n in resolve)).apply(
                lambda values: resolved.update(zip(resolve, values))
            )

    program()
    return exported, resolved
