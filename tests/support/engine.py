"""The real Pulumi engine on a copy of the project: the CLI and language host built from Go modules
(tools/build-pulumi.sh), a file backend in a temp dir, and the helpers the e2e tests read its
output with."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.support.hosts.nshost import unavailable_reason
from tests.support.paths import ARTIFACTS, REPO

PCCS_API_KEY = "pcs-key-e2e-7c41d9a2b58f03e6"
EXTRA_ARG = "modprobe.blacklist=nouveau,nvidia"  # the stacks' extra kernel argument


PULUMI = REPO / "bin" / "pulumi"


VENV = REPO / ".venv"


PROJECT = "tdx-vllm"


PASSPHRASE = "e2e-program-passphrase"


# Tools whose calls mean "the host was changed" (calls.log of the fake host).
APPLY_TOOLS = {"update-grub", "systemd-run", "reboot", "apt-get", "systemctl", "PCKIDRetrievalTool"}
READ_ONLY_SYSTEMCTL = {"is-active", "is-enabled", "is-failed", "status", "show"}


def session_pids(sid: int) -> list[int]:
    """Live processes of session `sid` (zombies excluded)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields: state ppid pgrp session ...
            pids.append(int(stat.parent.name))
    return pids


def kill_session(sid: int) -> None:
    for pid in session_pids(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Engine:
    """The copied project, backend and env; runs the CLI."""

    def __init__(self, root: Path):
        self.root = root
        self.project = root / "project"
        self.backend = root / "backend"
        self.firmware = root / "firmware"
        for d in (self.project, self.backend, root / "home"):
            d.mkdir(parents=True)
        tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        for rel in filter(None, tracked.decode().split("\0")):
            src, dst = REPO / rel, self.project / rel
            if rel.startswith("tests/") or not (src.is_file() or src.is_symlink()):
                continue  # the program never reads the tests (most of the bytes: fixtures); or deleted here
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst, follow_symlinks=False)
        (self.project / ".venv").symlink_to(VENV)
        (self.project / "bin").symlink_to(REPO / "bin")  # Pulumi.yaml's `plugins`: the command provider
        shutil.copytree(REPO / "firmware", self.firmware)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "TDX_VLLM_"))}
        self.env.update(
            {
                "PATH": os.pathsep.join([str(REPO / "bin"), str(VENV / "bin"), os.environ.get("PATH", "")]),
                "PULUMI_HOME": str(root / "home"),
                "PULUMI_BACKEND_URL": f"file://{self.backend}",
                "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
                "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
                "PULUMI_SKIP_UPDATE_CHECK": "true",
                "PULUMI_PYTHON_CMD": str(VENV / "bin" / "python"),
                "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "true",
                "TDX_VLLM_FIRMWARE_DIR": str(self.firmware),
                "TDX_VLLM_ARTIFACT_DIR": str(ARTIFACTS),
            }
        )
        self.timings: list[tuple[str, float]] = []

    def pulumi(
        self, *args: str, stack: str, ok: bool = True, timeout: float = 240, label: str | None = None
    ) -> subprocess.CompletedProcess:
        cmd = [str(PULUMI), *args, "--stack", stack, "--non-interactive", "--color", "never"]
        t = time.monotonic()
        p = subprocess.run(
            cmd,
            cwd=self.project,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        if label:
            self.timings.append((label, time.monotonic() - t))
        if ok and p.returncode != 0:
            raise AssertionError(f"pulumi {' '.join(args[:3])} failed ({p.returncode}):\n{p.stdout[-12000:]}")
        if not ok and p.returncode == 0:
            raise AssertionError(f"pulumi {' '.join(args[:3])} unexpectedly succeeded:\n{p.stdout[-12000:]}")
        return p

    def up(
        self, stack: str, label: str, ok: bool = True, *extra: str, timeout: float = 240
    ) -> subprocess.CompletedProcess:
        return self.pulumi("up", "--yes", "--skip-preview", *extra, stack=stack, ok=ok, label=label, timeout=timeout)

    def up_killed_when(self, stack: str, condition: Callable[[], bool], timeout: float = 120) -> subprocess.Popen:
        """`pulumi up` in its own process group, SIGKILLed (the whole group) once `condition()` holds."""
        cmd = [str(PULUMI), "up", "--yes", "--skip-preview", "--stack", stack, "--non-interactive", "--color", "never"]
        log = open(self.root / f"killed-up-{stack}.log", "wb")
        proc = subprocess.Popen(
            cmd, cwd=self.project, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + timeout
            while not condition():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"the condition never held while `up` ran:\n"
                        f"{(self.root / f'killed-up-{stack}.log').read_text()[-6000:]}"
                    )
                time.sleep(0.05)
        finally:
            # The engine starts its plugins (language host, provider) in process groups of their
            # own, so kill the whole session (start_new_session: its id is the CLI's pid).
            kill_session(proc.pid)
            proc.wait(30)
            log.close()
            deadline = time.monotonic() + 10
            while session_pids(proc.pid) and time.monotonic() < deadline:
                kill_session(proc.pid)
                time.sleep(0.05)
            assert not session_pids(proc.pid), f"processes of the killed `up` left: {session_pids(proc.pid)}"
        return proc

    def preview_json(self, stack: str) -> dict:
        p = self.pulumi("preview", "--json", stack=stack)
        return json.loads(p.stdout[p.stdout.index("{") :])

    def outputs(self, stack: str) -> dict:
        return json.loads(self.pulumi("stack", "output", "--json", "--show-secrets", stack=stack).stdout)

    def status(self, stack: str, *extra: str) -> tuple[int, dict]:
        """`python -m components status --stack S --json` in the project, as an operator runs it."""
        rc, out = self.status_text(stack, "--json", *extra)
        return rc, json.loads(out)

    def status_text(self, stack: str, *extra: str) -> tuple[int, str]:
        """`python -m components status --stack S [extra]`: its exit status and what it printed."""
        cmd = [str(VENV / "bin" / "python"), "-m", "components", "status", "--stack", stack, *extra]
        p = subprocess.run(cmd, cwd=self.project, env=self.env, capture_output=True, text=True, timeout=240)
        assert p.returncode in (0, 1, 3, 4), f"status could not read {stack} ({p.returncode}):\n{p.stderr}"
        return p.returncode, p.stdout

    def state(self, stack: str) -> dict:
        return json.loads((self.backend / ".pulumi" / "stacks" / PROJECT / f"{stack}.json").read_text())

    def config_set(self, stack: str, plain: Mapping[str, str], *, secret: Mapping[str, str] | None = None) -> None:
        """`pulumi config set-all --path` of dotted keys (`hosts[0].ssh.address`)."""
        args = ["config", "set-all", "--path"]
        for k, v in plain.items():
            args += ["--plaintext", f"{k}={v}"]
        for k, v in (secret or {}).items():
            args += ["--secret", f"{k}={v}"]
        self.pulumi(*args, stack=stack)

    def pin_fake_wheel(self, sha256: str) -> None:
        """Pin the harness's fake gpu-admin-tools wheel in this engine's firmware copy (same package,
        version and file name as the real pin; only the sha256 differs)."""
        tools = self.firmware / "gpu" / "gpu-admin-tools.yaml"
        tools.write_text(tools.read_text().replace(yaml.safe_load(tools.read_text())["sha256"], sha256))

    def new_stack(self, stack: str, host: Any, name: str) -> None:
        self.pulumi("stack", "init", stack=stack)
        self.config_set(stack, host_stack_config(host, name), secret=host_stack_secrets(host))


def host_stack_config(host: Any, name: str, *, gpu: bool = True) -> dict[str, str]:
    """The plain config of a one-host stack on a harness host, as the staging template has it."""
    config = {
        "platform.os": "ubuntu-24.04",
        "platform.extraKernelArgs[0]": EXTRA_ARG,
        "platform.tdxModule": host.profile.tdx_module_version,
        "dcap.registration": "mpa",
        "dcap.useSecureCert": "false",  # what the staging template says for a per-host PCCS
        "hosts[0].name": name,
        "hosts[0].ssh.address": host.address,
        "hosts[0].ssh.port": "22",
        "hosts[0].ssh.user": "root",
        "hosts[0].ssh.hostKey": host.host_key,
        "teeIo": "false",
        "rebootTimeoutSeconds": "60",
    }
    if gpu:
        config.update({"gpu.model": "h100-sxm", "gpu.count": "1", "gpu.mode": "on"})
    return config


def host_stack_secrets(host: Any) -> dict[str, str]:
    return {"hosts[0].ssh.privateKey": host.client_private_key, "dcap.pccsApiKey": PCCS_API_KEY}


def changed_steps(doc: dict) -> dict[str, str]:
    """{resource name: op} of every step that is not `same` in a `pulumi preview --json` document."""
    return {s["urn"].rsplit("::", 1)[-1]: s["op"] for s in doc.get("steps", []) if s.get("op") != "same"}


def up_events(stdout: str) -> tuple[dict[str, str], dict]:
    """`pulumi up --json` prints engine events, one JSON object a line: ({resource name: op} of
    every step that is not `same`, the summary event)."""
    ops: dict[str, str] = {}
    summary: dict = {}
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        if "resourcePreEvent" in event:
            meta = event["resourcePreEvent"]["metadata"]
            if meta["op"] != "same":
                ops[meta["urn"].rsplit("::", 1)[-1]] = meta["op"]
        summary = event.get("summaryEvent", summary)
    assert summary, f"no summary event in:\n{stdout[-4000:]}"
    return ops, summary


def apply_calls(host: Any, since: int = 0) -> list[dict]:
    """The calls since `since` that can change the host (`systemctl is-active` and its kind cannot)."""
    return [c for c in host.calls()[since:] if _may_change(c)]


def _may_change(call: dict) -> bool:
    if call["tool"] == "systemctl" and call["argv"] and call["argv"][0] in READ_ONLY_SYSTEMCTL:
        return False
    return call["tool"] in APPLY_TOOLS


def engine_unavailable() -> str | None:
    """Why the e2e tier cannot run here (the tests skip with it), or None."""
    if not PULUMI.exists():
        return f"{PULUMI} is missing: build the toolchain with tools/build-pulumi.sh"
    if not (VENV / "bin" / "python").exists():
        return f"{VENV} is missing: tools/setup-venv.sh"
    return unavailable_reason()
