"""The client package as a client gets it: `pip install ./tdxattest` into a fresh virtual environment
with no Pulumi (offline, from the wheels tools/test.sh keeps in .venv/wheelhouse), then the
`tdxattest` command verifies a real quote, and every verb a client runs answers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import QUOTES, REPO

WHEELS = REPO / ".venv" / "wheelhouse"
CASE = "phala-v4-uptodate"


def run(*cmd: str | Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only `pip install ./tdxattest` (built from a copy: setuptools writes its
    build files next to the sources)."""
    if not WHEELS.is_dir():
        pytest.fail(f"{WHEELS} is missing: tools/test.sh downloads the client's wheels there before the tests")
    root = tmp_path_factory.mktemp("client")
    source = root / "tdxattest"
    shutil.copytree(REPO / "tdxattest", source, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    venv = root / "venv"
    made = run(sys.executable, "-m", "venv", venv)
    assert made.returncode == 0, made.stderr
    installed = run(venv / "bin" / "pip", "install", "--no-index", "--find-links", WHEELS, source)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv


def test_the_client_has_no_pulumi(client: Path) -> None:
    listed = run(client / "bin" / "pip", "list", "--format", "json")
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "tdxattest" in names and "dcap-qvl" in names
    assert not {n for n in names if n.startswith("pulumi")}, names


def test_the_installed_command_verifies_a_real_quote(client: Path) -> None:
    case = next(c for c in json.loads((QUOTES / "manifest.json").read_text())["cases"] if c["id"] == CASE)
    args = ["verify", "--quote", QUOTES / case["quote_file"], "--collateral", QUOTES / case["collateral_file"]]
    args += ["--at", case["verify_at"], "--json"]
    for command in ([client / "bin" / "tdxattest"], [client / "bin" / "python", "-m", "tdxattest"]):
        done = run(*command, *args, cwd=client)  # not the repository: nothing of it on the path
        assert done.returncode == 0, done.stderr
        verdict = json.loads(done.stdout)
        assert verdict["accepted"] is True and verdict["tcb_status"] == case["dcap_qvl_0_7_0"]["status"]


@pytest.mark.parametrize("verb", ["verify", "measure", "proxy", "collateral", "eventlog", "gateway"])
def test_every_verb_is_in_the_installed_package(client: Path, verb: str) -> None:
    done = run(client / "bin" / "tdxattest", verb, "--help", cwd=client)
    assert done.returncode == 0 and done.stdout.startswith(f"usage: tdxattest {verb}"), done.stderr
