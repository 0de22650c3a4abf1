"""GPU evidence straight from the driver's NVML library: the agent's default evidence collector.

NVIDIA's own collectors (nvattest, the nvtrust Python SDK) are not Debian packages, so the guest
image cannot carry them pinned; `libnvidia-ml.so.1` ships with every driver. For each GPU this asks
NVML for the SPDM attestation report over our nonce and for the device's attestation certificate
chain, and prints them in the format `guest_agent.gpu` reads (its module docstring):

    python3 -m guest_agent.nvml --nonce <64 hex>     # evidence JSON on stdout
    python3 -m guest_agent.nvml --set-ready          # after verification: GPUs accept work

It collects only: the agent verifies the evidence itself (tdxattest.gpu_evidence) and only then
runs `--set-ready` (in CC mode a GPU refuses work until then). Each runs as its own process so a
hung driver call is bounded by the agent's timeout. The library is `libnvidia-ml.so.1` from the
driver; `$TDX_VLLM_NVML_LIBRARY` replaces it for tests (the host cannot set the agent's
environment: the unit file is in the measured image). The struct layouts are NVML's (nvml.h, API 12 /
driver R550+); tests/guest_agent/test_nvml.py pins their sizes and offsets.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
from dataclasses import dataclass

LIBRARY = "libnvidia-ml.so.1"
LIBRARY_ENV = "TDX_VLLM_NVML_LIBRARY"
NONCE_SIZE = 0x20  # NVML_CC_GPU_CEC_NONCE_SIZE
REPORT_SIZE = 0x2000  # NVML_CC_GPU_ATTESTATION_REPORT_SIZE
CEC_REPORT_SIZE = 0x1000  # NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE
CERT_CHAIN_SIZE = 0x1000  # NVML_GPU_CERT_CHAIN_SIZE
ATTESTATION_CERT_CHAIN_SIZE = 0x1400  # NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE
VBIOS_BUFFER = 32  # NVML_DEVICE_VBIOS_VERSION_BUFFER_SIZE
DRIVER_BUFFER = 80  # NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE
CC_FEATURE_ENABLED = 1  # NVML_CC_SYSTEM_FEATURE_ENABLED
ACCEPTING_CLIENT_REQUESTS = 1  # NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE
CC_ENVIRONMENTS = {0: "unavailable", 1: "sim", 2: "prod"}  # NVML_CC_SYSTEM_ENVIRONMENT_*


class GpuCertificate(ctypes.Structure):  # nvmlConfComputeGpuCertificate_t
    _fields_ = [
        ("certChainSize", ctypes.c_uint),
        ("attestationCertChainSize", ctypes.c_uint),
        ("certChain", ctypes.c_ubyte * CERT_CHAIN_SIZE),
        ("attestationCertChain", ctypes.c_ubyte * ATTESTATION_CERT_CHAIN_SIZE),
    ]


class GpuAttestationReport(ctypes.Structure):  # nvmlConfComputeGpuAttestationReport_t
    _fields_ = [
        ("isCecAttestationReportPresent", ctypes.c_uint),
        ("attestationReportSize", ctypes.c_uint),
        ("cecAttestationReportSize", ctypes.c_uint),
        ("nonce", ctypes.c_ubyte * NONCE_SIZE),  # in: the verifier's nonce
        ("attestationReport", ctypes.c_ubyte * REPORT_SIZE),
        ("cecAttestationReport", ctypes.c_ubyte * CEC_REPORT_SIZE),
    ]


class ConfComputeSystemState(ctypes.Structure):  # nvmlConfComputeSystemState_t
    _fields_ = [("environment", ctypes.c_uint), ("ccFeature", ctypes.c_uint), ("devToolsMode", ctypes.c_uint)]


class NvmlError(RuntimeError):
    """An NVML call failed; the message names the call and NVML's own error string."""


@dataclass(frozen=True)
class CcState:
    environment: str  # prod | sim | unavailable
    enabled: bool  # CC feature on in the driver
    devtools: bool  # CC devtools mode (no protection of GPU memory from the host)

    def as_dict(self) -> dict:
        return {"environment": self.environment, "enabled": self.enabled, "devtools": self.devtools}


class Nvml:
    """The handful of NVML calls attestation needs, on one loaded library."""

    def __init__(self, library: str = LIBRARY):
        try:
            self.lib = ctypes.CDLL(library)
        except OSError as exc:
            raise NvmlError(f"cannot load {library} (is the NVIDIA driver installed in the image?): {exc}") from None
        self.lib.nvmlErrorString.restype = ctypes.c_char_p
        self.lib.nvmlErrorString.argtypes = [ctypes.c_int]

    def _call(self, name: str, *args) -> None:
        rc = getattr(self.lib, name)(*args)
        if rc != 0:
            text = (self.lib.nvmlErrorString(rc) or b"?").decode(errors="replace")
            raise NvmlError(f"{name} returned {rc} ({text})")

    def __enter__(self) -> Nvml:
        self._call("nvmlInit_v2")
        return self

    def __exit__(self, *exc) -> None:
        self.lib.nvmlShutdown()

    def device_count(self) -> int:
        n = ctypes.c_uint()
        self._call("nvmlDeviceGetCount_v2", ctypes.byref(n))
        return n.value

    def handle(self, index: int) -> ctypes.c_void_p:
        h = ctypes.c_void_p()
        self._call("nvmlDeviceGetHandleByIndex_v2", ctypes.c_uint(index), ctypes.byref(h))
        return h

    def driver_version(self) -> str:
        buf = ctypes.create_string_buffer(DRIVER_BUFFER)
        self._call("nvmlSystemGetDriverVersion", buf, ctypes.c_uint(DRIVER_BUFFER))
        return buf.value.decode()

    def cc_state(self) -> CcState:
        s = ConfComputeSystemState()
        self._call("nvmlSystemGetConfComputeState", ctypes.byref(s))
        return CcState(
            environment=CC_ENVIRONMENTS.get(s.environment, str(s.environment)),
            enabled=s.ccFeature == CC_FEATURE_ENABLED,
            devtools=s.devToolsMode != 0,
        )

    def vbios_version(self, handle: ctypes.c_void_p) -> str:
        buf = ctypes.create_string_buffer(VBIOS_BUFFER)
        self._call("nvmlDeviceGetVbiosVersion", handle, buf, ctypes.c_uint(VBIOS_BUFFER))
        return buf.value.decode()

    def attestation_chain(self, handle: ctypes.c_void_p) -> bytes:
        cert = GpuCertificate()
        self._call("nvmlDeviceGetConfComputeGpuCertificate", handle, ctypes.byref(cert))
        size = cert.attestationCertChainSize
        if not 0 < size <= ATTESTATION_CERT_CHAIN_SIZE:
            raise NvmlError(
                f"nvmlDeviceGetConfComputeGpuCertificate: attestation chain size {size} outside "
                f"1..{ATTESTATION_CERT_CHAIN_SIZE}"
            )
        return bytes(cert.attestationCertChain[:size])

    def ready(self) -> bool:
        state = ctypes.c_uint()
        self._call("nvmlSystemGetConfComputeGpusReadyState", ctypes.byref(state))
        return state.value == ACCEPTING_CLIENT_REQUESTS

    def set_ready(self) -> None:
        self._call("nvmlSystemSetConfComputeGpusReadyState", ctypes.c_uint(ACCEPTING_CLIENT_REQUESTS))

    def attestation_report(self, handle: ctypes.c_void_p, nonce: bytes) -> bytes:
        report = GpuAttestationReport()
        ctypes.memmove(report.nonce, nonce, NONCE_SIZE)
        self._call("nvmlDeviceGetConfComputeGpuAttestationReport", handle, ctypes.byref(report))
        size = report.attestationReportSize
        if not 0 < size <= REPORT_SIZE:
            raise NvmlError(
                f"nvmlDeviceGetConfComputeGpuAttestationReport: report size {size} outside 1..{REPORT_SIZE}"
            )
        return bytes(report.attestationReport[:size])


def collect(nvml: Nvml, nonce: bytes) -> dict:
    """Evidence for every GPU NVML sees, over `nonce` (32 bytes)."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce of {NONCE_SIZE} bytes, seen {len(nonce)}")
    cc = nvml.cc_state()  # first: with CC off the report calls fail less clearly than this reads
    driver = nvml.driver_version()
    gpus = []
    for i in range(nvml.device_count()):
        h = nvml.handle(i)
        gpus.append(
            {
                "index": i,
                "evidence": nvml.attestation_report(h, nonce).hex(),
                "certificate": nvml.attestation_chain(h).decode("ascii", errors="strict"),
                "vbios_version": nvml.vbios_version(h),
                "driver_version": driver,
            }
        )
    return {"collector": "guest_agent.nvml", "cc": cc.as_dict(), "evidences": gpus}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m guest_agent.nvml", description=__doc__.split("\n\n")[0])
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--nonce", help="collect evidence over this nonce: 32 bytes as 64 hex digits")
    what.add_argument("--set-ready", action="store_true", help="set the GPUs ready (accepting work), then read it back")
    ap.add_argument("--library", default=os.environ.get(LIBRARY_ENV) or LIBRARY)
    args = ap.parse_args(argv)
    try:
        with Nvml(args.library) as nvml:
            if args.set_ready:
                nvml.set_ready()
                doc: dict = {"ready": nvml.ready()}
            else:
                doc = collect(nvml, bytes.fromhex(args.nonce))
    except (NvmlError, ValueError, UnicodeDecodeError) as exc:
        print(f"guest_agent.nvml: {exc}", file=sys.stderr)
        return 1
    json.dump(doc, sys.stdout)
    sys.stdout.write("\n")
    return 0 if doc.get("ready", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
