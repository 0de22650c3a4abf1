"""Build the stand-in libnvidia-ml.so.1 (nvml_standin.c) for tests of the NVML collector."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.paths import GPU_EVIDENCE, REPO

SOURCE = Path(__file__).with_name("nvml_standin.c")


def missing_compiler() -> str | None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        return "no C compiler (apt-get install gcc libc6-dev) to build the NVML stand-in library"
    return None


def build(dest: Path) -> Path:
    """Compile the stand-in into `dest`; the library's path."""
    dest.mkdir(parents=True, exist_ok=True)
    lib = dest / "libnvidia-ml.so.1"
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc is not None, missing_compiler()
    subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(lib), str(SOURCE)],
        check=True,
        capture_output=True,
        text=True,
    )
    return lib


@pytest.fixture(scope="session")
def standin_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled stand-in (once per session); skips where there is no C compiler."""
    reason = missing_compiler()
    if reason:
        pytest.skip(reason)
    return build(tmp_path_factory.mktemp("nvml-standin"))


GPU_FIXTURES = GPU_EVIDENCE
# The nonce hopperAttestationReport.txt was made over: the only one its report verifies for.
FIXTURE_NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")


@pytest.fixture
def nvml_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, standin_lib: Path) -> Path:
    """The stand-in NVML serving one H100: the fixture's report (over the fixture nonce) and chain
    (case 1), CC on, prod. Subprocesses inherit it (`python -m guest_agent.nvml`). Returns the
    stand-in's state directory (nonce-<i>.bin, ready)."""
    report = tmp_path / "report.bin"
    report.write_bytes(bytes.fromhex((GPU_FIXTURES / "hopperAttestationReport.txt").read_text().strip()))
    state = tmp_path / "gpu-state"
    state.mkdir()
    from guest_agent.nvml import LIBRARY_ENV

    for key, value in {
        LIBRARY_ENV: str(standin_lib),
        "NVML_STANDIN_REPORT": str(report),
        "NVML_STANDIN_CHAIN": str(GPU_FIXTURES / "hopper_cert_chain_case1.txt"),
        "NVML_STANDIN_STATE": str(state),
        "PYTHONPATH": str(REPO),
    }.items():
        monkeypatch.setenv(key, value)
    return state
