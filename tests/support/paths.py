"""Where the repository and the test data are. The data under tests/fixtures/ is public and lives
in the repository (each folder has a README with its provenance), so a plain clone runs every test."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
QUOTES = FIXTURES / "tdx-quotes"  # real TDX quotes, Intel-signed collateral, CCEL
MEASUREMENTS = FIXTURES / "measurements"  # Debian OVMF builds, event logs, published vectors
ARTIFACTS = MEASUREMENTS / "firmware"  # the TD boot artifact directory of the tests (Debian OVMF builds)
GPU_EVIDENCE = FIXTURES / "gpu-evidence"  # NVIDIA Hopper attestation reports and chains
HOST = FIXTURES / "host"  # what real hosts print and ship: kernel logs, DCAP files, BIOS rules, GPU tools
