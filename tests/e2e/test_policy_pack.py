"""End to end: the policy pack in policy/ under the real CLI (`pulumi preview --policy-pack`).

The project is a tiny inline one, not the real program: the real program's config validation
already refuses the cases the pack exists for (devtools outside dev, an unpinned host key) before
any resource is registered, so only a program that registers such resources exercises the pack.
It registers what the real program registers (`command:remote:Command` with the rendered step
script on stdin, `command:local:Command` with BMC credentials in `environment`, a `pins` stack
output with `tdAttributes`) plus a component carrying `image` and `tdAttributes` props (stand-ins
for future workload/TD resources; component inputs are analyzed like any resource's).

How the CLI runs a Python policy pack here: CLI v3.274 finds the `python` language host and
calls its RunPlugin with the pack directory in `info.programDirectory`, leaving the deprecated
`program` field empty. Our language host (built from sdk/v3 v3.68.0, tools/pulumi-toolchain)
reads only `program`, so it runs `$PULUMI_PYTHON_CMD "" <engine address>` in the project directory,
i.e. the *project's* __main__.py, and the pack "fails to start". The `virtualenv` option of
PulumiPolicy.yaml is not read by that host either. The test therefore sets PULUMI_PYTHON_CMD to a
small wrapper that turns exactly that call (empty first argument) into `python -u <pack dir>`;
every other call goes to the venv's python unchanged. With a current language host no wrapper is
needed. The project has no `virtualenv` option (with one, the old host runs the venv's python
directly and the wrapper is bypassed). Nothing is downloaded: PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION,
the command provider from bin/ on PATH, pulumi-policy from the repository's venv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import REPO

PULUMI = REPO / "bin" / "pulumi"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PACK = REPO / "policy"
PROJECT = "policy-e2e"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG0O8eKjk+Eb5AtmKKsSv//f+M2wjuXqWH5+HbC1h9NS"
DIGEST = "sha256:" + "ab" * 32

if not PULUMI.exists():
    pytest.skip(f"{PULUMI} is missing: build the toolchain with tools/build-pulumi.sh", allow_module_level=True)
_python = VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable)
if subprocess.run([str(_python), "-c", "import pulumi_policy, pulumi_command"], capture_output=True).returncode:
    pytest.skip(
        f"{_python} lacks pulumi-policy or pulumi-command (pip install -r policy/requirements.txt)",
        allow_module_level=True,
    )
if not (REPO / "bin" / "pulumi-resource-command").exists():
    pytest.skip("bin/pulumi-resource-command is missing: tools/install-command-provider.sh", allow_module_level=True)

# `variant` picks what the program registers: `bad` breaks every rule, `good` none of them.
PROGRAM = (
    r"""
import pulumi
from pulumi_command import local, remote

cfg = pulumi.Config()
bad = cfg.require("variant") == "bad"
mode = cfg.get("gpuMode") or "on"

step = f"#!/usr/bin/env bash\nTDX_STEP=gpu-cc\nTDX_GPU_COUNT=1\nTDX_GPU_MODE={mode}\ntdx_main\n"
key = cfg.require("privateKey") if bad else cfg.require_secret("privateKey")
remote.Command("gpu-mode", create="bash -s", stdin=step,
               connection=remote.ConnectionArgs(host="192.0.2.10", user="root", private_key=key,
                                                host_key=None if bad else cfg.require("hostKey")))
dcap = "TDX_STEP=dcap\nTDX_PCCS_API_KEY=" + cfg.require("apiKey") + "\n"
remote.Command("dcap", create="bash -s", stdin=dcap if bad else pulumi.Output.secret(dcap),
               connection=remote.ConnectionArgs(host="192.0.2.10", user="root",
                                                private_key=cfg.require_secret("privateKey"),
                                                host_key=cfg.require("hostKey")))
password = cfg.require("bmcPassword") if bad else cfg.require_secret("bmcPassword")
local.Command("bios-phase1", create="true",
              environment={"TDXGPU_BMC_PASSWORD": password, "TDXGPU_BMC_ADDRESS": "192.0.2.20"})
image = "vllm/vllm-openai:latest" if bad else "vllm/vllm-openai@"""
    + DIGEST
    + r""""
attrs = "0100001000000000" if bad else "0000001000000000"
pulumi.ComponentResource("e2e:test:Workload", "workload",
                         {"containers": [{"name": "vllm", "image": image}], "td": {"tdAttributes": attrs}})
pulumi.export("pins", {"schema": 1, "tdAttributes": attrs})
"""
)

WRAPPER = """#!/bin/sh
# RunPlugin of the old python language host: `python "" <engine>` in the project dir -> run the pack.
if [ "$#" -ge 1 ] && [ -z "$1" ]; then shift; exec "{python}" -u "{pack}" "$@"; fi
exec "{python}" "$@"
"""

POLICY_NAMES = (
    "no-gpu-devtools-outside-dev",
    "no-debug-td",
    "no-debug-td-outputs",
    "images-by-digest",
    "host-keys-pinned",
    "secrets-never-plain",
)


class Cli:
    def __init__(self, root: Path):
        self.project = root / "project"
        backend, home = root / "backend", root / "home"
        for d in (self.project, backend, home):
            d.mkdir(parents=True)
        (self.project / "Pulumi.yaml").write_text(f"name: {PROJECT}\nruntime: python\n")
        (self.project / "__main__.py").write_text(PROGRAM)
        wrapper = root / "python-for-policy"
        wrapper.write_text(WRAPPER.format(python=_python, pack=PACK))
        wrapper.chmod(0o755)
        self.env = {
            **os.environ,
            "PATH": os.pathsep.join([str(_python.parent), str(REPO / "bin"), os.environ.get("PATH", "")]),
            "PULUMI_HOME": str(home),
            "PULUMI_BACKEND_URL": f"file://{backend}",
            "PULUMI_CONFIG_PASSPHRASE": "policy-e2e-passphrase",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_PYTHON_CMD": str(wrapper),
        }
        self.env.pop("PULUMI_ACCESS_TOKEN", None)
        self.timings: list[tuple[str, float]] = []

    def run(self, *args: str, stack: str) -> subprocess.CompletedProcess:
        t = time.monotonic()
        p = subprocess.run(
            [str(PULUMI), *args, "--stack", stack, "--non-interactive", "--color", "never"],
            cwd=self.project,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=180,
        )
        self.timings.append((f"{args[0]} {stack}", time.monotonic() - t))
        return p

    def stack(self, stack: str, variant: str, gpu_mode: str) -> None:
        assert self.run("stack", "init", stack=stack).returncode == 0
        p = self.run(
            "config",
            "set-all",
            "--plaintext",
            f"variant={variant}",
            "--plaintext",
            f"gpuMode={gpu_mode}",
            "--plaintext",
            f"hostKey={HOST_KEY}",
            "--plaintext",
            "bmcPassword=bmc-pw-plain-1234",
            "--plaintext",
            "privateKey=not-a-real-key-e2e",
            "--secret",
            "apiKey=pcs-key-e2e-0000",
            stack=stack,
        )
        assert p.returncode == 0, p.stdout
        if variant == "good":  # the credentials as secrets
            for key, value in (("bmcPassword", "bmc-pw-secret-1234"), ("privateKey", "not-a-real-key-e2e")):
                assert self.run("config", "set", "--secret", key, value, stack=stack).returncode == 0

    def preview(self, stack: str) -> subprocess.CompletedProcess:
        return self.run("preview", "--policy-pack", str(PACK), stack=stack)


def _violations(out: str) -> dict[str, list[str]]:
    """policy name -> the lines under its `[mandatory]` entry in the CLI's Policies section."""
    found: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        s = line.strip()
        if s.startswith("- [mandatory]") or s.startswith("- [advisory]"):
            current = s.split("]", 1)[1].split()[0]
            found.setdefault(current, [])
            if "[advisory]" in s:
                current = f"advisory:{current}"
                found.setdefault(current, [])
        elif current and s and not s.startswith("- ") and line.startswith("      "):
            found[current].append(s)
        elif not line.startswith("      "):
            current = None
    return found


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    c = Cli(tmp_path_factory.mktemp("policy"))
    c.stack("prod", "bad", "devtools")
    c.stack("dev", "good", "devtools")
    c.stack("staging", "good", "on")
    yield c
    print("\npulumi timings (s): " + ", ".join(f"{n} {t:.1f}" for n, t in c.timings))


def test_violating_prod_stack_is_refused_with_every_policy(cli: Cli) -> None:
    p = cli.preview("prod")
    assert p.returncode != 0, p.stdout
    assert "Loading policy packs...: done" in p.stdout, p.stdout
    v = _violations(p.stdout)
    for name in POLICY_NAMES:
        assert name in v, f"{name} not reported:\n{p.stdout}"
    assert not [k for k in v if k.startswith("advisory:")], p.stdout
    text = "\n".join(f"{k}: {m}" for k, ms in v.items() for m in ms)
    assert "TDX_GPU_MODE=devtools in stack `prod`" in text
    assert "connection.hostKey is not set" in text
    assert "containers[0].image = 'vllm/vllm-openai:latest' is not pinned by digest" in text
    assert "td.tdAttributes = 0100001000000000 has DEBUG" in text
    assert "pins.tdAttributes = 0100001000000000 has DEBUG" in text  # the stack output
    # pulumi_command's SDK wraps the whole `connection` in a secret (command.py: Output.secret(connection)),
    # so a plain `private_key` still arrives secret: the rule matters for other SDKs (unit-tested).
    assert "connection.privateKey" not in text
    assert "environment.TDXGPU_BMC_PASSWORD is plain text" in text
    assert "stdin assigns TDX_PCCS_API_KEY but stdin is not secret" in text
    assert "environment.TDXGPU_BMC_ADDRESS" not in text  # not a credential
    # the pack never prints a credential's value
    for needle in ("bmc-pw-plain-1234", "not-a-real-key-e2e", "pcs-key-e2e-0000"):
        assert needle not in p.stdout


def test_devtools_in_dev_and_compliant_stacks_pass(cli: Cli) -> None:
    for stack in ("dev", "staging"):
        p = cli.preview(stack)
        assert p.returncode == 0, p.stdout
        assert "Loading policy packs...: done" in p.stdout, p.stdout
        assert "[mandatory]" not in p.stdout and "[advisory]" not in p.stdout, p.stdout


def test_real_program_dev_stack_passes(tmp_path: Path) -> None:
    """The real program (tracked files, as tests/e2e/test_program.py copies them) with the dev
    example stack: every resource and the `pins` output pass the pack."""
    cli = Cli(tmp_path)
    shutil.rmtree(cli.project)
    cli.project.mkdir()
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for rel in filter(None, tracked.decode().split("\0")):
        src, dst = REPO / rel, cli.project / rel
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    (cli.project / ".venv").symlink_to(REPO / ".venv")  # Pulumi.yaml names `virtualenv: .venv`
    (cli.project / "bin").symlink_to(REPO / "bin")  # and `plugins`: the command provider in bin/
    cli.env["PULUMI_CONFIG_PASSPHRASE"] = "dev-only-passphrase"  # the dev example's (README)
    cli.env["TDX_VLLM_ARTIFACT_DIR"] = str(tmp_path / "no-artifacts")  # dev tolerates missing artifacts
    assert cli.run("stack", "init", stack="dev").returncode == 0
    p = cli.preview("dev")
    assert p.returncode == 0, p.stdout
    assert "Loading policy packs...: done" in p.stdout, p.stdout
    assert "[mandatory]" not in p.stdout and "[advisory]" not in p.stdout, p.stdout
    assert "command:remote:Command" in p.stdout and "tdAttributes" in p.stdout
