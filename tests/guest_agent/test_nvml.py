"""guest_agent.nvml: the NVML evidence collector, against a stand-in libnvidia-ml.so.1 compiled from
tests/nvml_standin/nvml_standin.c that serves a real Hopper GPU's report and certificate chain."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys

import pytest

from guest_agent import nvml
from guest_agent.gpu import evidence_items, load_evidence_output, verify_items
from tests.support.nvml_standin import FIXTURE_NONCE as NONCE1
from tests.support.paths import REPO


def test_struct_layouts_are_nvmls():
    # sizeof/offsetof of NVIDIA's nvml.h (CUDA 12.4, NVML API 12; Debian libnvidia-ml-dev
    # 12.4.127~12.4.1-2), printed by a C program compiled against that header. A wrong layout would
    # hand the driver a nonce at the wrong offset or read a truncated report.
    assert ctypes.sizeof(nvml.GpuCertificate) == 9224
    assert [
        getattr(nvml.GpuCertificate, f).offset
        for f in ("certChainSize", "attestationCertChainSize", "certChain", "attestationCertChain")
    ] == [0, 4, 8, 4104]
    assert ctypes.sizeof(nvml.GpuAttestationReport) == 12332
    assert [
        getattr(nvml.GpuAttestationReport, f).offset
        for f in (
            "isCecAttestationReportPresent",
            "attestationReportSize",
            "cecAttestationReportSize",
            "nonce",
            "attestationReport",
            "cecAttestationReport",
        )
    ] == [0, 4, 8, 12, 44, 8236]
    assert ctypes.sizeof(nvml.ConfComputeSystemState) == 12


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "guest_agent.nvml", *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def test_collector_output_verifies_to_the_nvidia_root(nvml_gpu, monkeypatch):
    monkeypatch.setenv("NVML_STANDIN_GPUS", "2")
    done = run_cli("--nonce", NONCE1.hex())
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["cc"] == {"environment": "prod", "enabled": True, "devtools": False}
    assert [g["index"] for g in doc["evidences"]] == [0, 1]
    # the nonce went into the struct where the driver reads it, for every GPU
    assert (nvml_gpu / "nonce-0.bin").read_bytes() == NONCE1 and (nvml_gpu / "nonce-1.bin").read_bytes() == NONCE1
    items = evidence_items(load_evidence_output(done.stdout))
    facts = verify_items(items, None, NONCE1, 2, ("96.00.9F.00.01",), ("550.90.07",))
    assert [f["fwid"][:8] for f in facts] == ["f5c384ae", "f5c384ae"]
    assert not (nvml_gpu / "ready").exists()  # collecting never sets the GPUs ready


def test_set_ready_reads_the_state_back(nvml_gpu):
    done = run_cli("--set-ready")
    assert (done.returncode, json.loads(done.stdout)) == (0, {"ready": True})
    assert (nvml_gpu / "ready").read_text() == "1"


@pytest.mark.parametrize(
    "call",
    [
        "nvmlInit_v2",
        "nvmlDeviceGetConfComputeGpuAttestationReport",
        "nvmlDeviceGetConfComputeGpuCertificate",
        "nvmlSystemSetConfComputeGpusReadyState",
    ],
)
def test_a_failing_driver_call_is_named(nvml_gpu, monkeypatch, call):
    monkeypatch.setenv("NVML_STANDIN_FAIL", call)
    done = run_cli("--set-ready") if "Ready" in call else run_cli("--nonce", NONCE1.hex())
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == f"guest_agent.nvml: {call} returned 999 (Unknown Error)"


def test_no_driver_and_bad_nonce(tmp_path, monkeypatch):
    monkeypatch.setenv(nvml.LIBRARY_ENV, str(tmp_path / "absent" / "libnvidia-ml.so.1"))
    done = run_cli("--nonce", NONCE1.hex())
    assert done.returncode == 1 and "cannot load" in done.stderr and "NVIDIA driver installed" in done.stderr
    with pytest.raises(ValueError, match="nonce of 32 bytes, seen 3"):
        nvml.collect(object(), b"abc")  # type: ignore[arg-type]
