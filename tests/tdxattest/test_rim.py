"""NVIDIA RIMs: a real signed VBIOS RIM (tests/fixtures/gpu-evidence/rim) verifies to the pinned
CoRIM root and refuses every tampering; TEST RIMs give the reference values of the TEST GPU's
report, through the on-disk store and a RIM service on loopback."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tdxattest.cli import main
from tdxattest.core.gpu_evidence import parse_gpu_report
from tdxattest.core.gpu_policy import CcState, EvidenceDoc, GpuItem, GpuPolicy, evaluate_gpus
from tdxattest.core.rim import MAX_RIM_BYTES, RimError, rim_ids, verify_rim
from tdxattest.dcap.rim_store import RimStore
from tdxattest.testing.testgpu import TestGpu
from tdxattest.testing.testrim import TestRimSigner
from tests.support.loopback_http import LoopbackHttpServer
from tests.support.nvml_standin import GPU_FIXTURES

RIM = (GPU_FIXTURES / "rim" / "vbios-96.00.74.00.1C.xml").read_bytes()
SIGNED_AT = datetime(2024, 6, 1, tzinfo=UTC).timestamp()  # inside the signer's validity (2023-12-05..2025-12-04)
REPORT1 = (GPU_FIXTURES / "hopperAttestationReport.txt").read_text().strip()
CLAIMS = json.loads((GPU_FIXTURES / "hopperAttestationReport-claims.txt").read_text())["measurements"]


def test_nvidias_vbios_rim_verifies_and_numbers_blocks_from_one() -> None:
    rim = verify_rim(RIM, SIGNED_AT)
    assert (rim.version, rim.product) == ("96.00.74.00.1C", "GH100")
    assert rim.signer.startswith("CN=HCC RIM L4 Signer,O=NVIDIA Corporation")
    assert sorted(rim.measurements) == [1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13]  # RIM index + 1; inactive left out
    # Blocks that do not depend on the VBIOS version equal report 1's (another VBIOS of the same GPU).
    for block in (4, 5, 6, 7, 10):
        assert CLAIMS[str(block)] in [v.hex() for v in rim.measurements[block]]
    assert len(rim.measurements[13]) == 4  # "alternatives": any of four values
    assert datetime.fromtimestamp(rim.not_after, UTC).date().isoformat() == "2025-12-04"


@pytest.mark.parametrize(
    ("mutate", "check"),
    [
        (lambda x: x.replace(b"b558fdac9af53b91", b"b558fdac9af53b92", 1), "gpu.rim_signature_invalid"),
        (lambda x: x.replace(b'index="7" active="False"', b'index="7" active="True"', 1), "gpu.rim_signature_invalid"),
        (lambda x: x.replace(b"96.00.74.00.1C", b"96.00.74.00.1D", 1), "gpu.rim_signature_invalid"),
        (lambda x: x[: x.index(b"<ds:Signature")] + b"</SoftwareIdentity>", "gpu.rim_chain_invalid"),
        (lambda x: x[:-40], "gpu.rim_malformed"),
        (lambda x: x + b" " * MAX_RIM_BYTES, "gpu.rim_malformed"),
        (
            lambda x: (
                b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
                + x.replace(b'name="GH100"', b'name="&b;"', 1)
            ),
            "gpu.rim_signature_invalid",
        ),
    ],
)
def test_a_touched_rim_is_refused(mutate, check: str) -> None:
    with pytest.raises(RimError) as info:
        verify_rim(mutate(RIM), SIGNED_AT)
    assert info.value.check == check


def test_an_expired_signer_or_another_root_is_refused() -> None:
    with pytest.raises(RimError, match="valid at") as info:
        verify_rim(RIM, time.time())
    assert info.value.check == "gpu.rim_chain_invalid" and "fetch a current RIM" in info.value.seen
    with pytest.raises(RimError) as other:
        verify_rim(RIM, SIGNED_AT, TestRimSigner.create().root_pem)
    assert other.value.check == "gpu.rim_untrusted_root"


def test_rim_ids_come_from_the_signed_opaque_data() -> None:
    # The ids NVIDIA's RIM service serves for NVIDIA's own sample report (nvtrust's verifier forms them so).
    assert rim_ids(parse_gpu_report(REPORT1)) == (
        "NV_GPU_DRIVER_GH100_550.90.07",
        "NV_GPU_VBIOS_1010_0200_882_96009F0001",
    )


# -- reference values from (TEST) RIMs -----------------------------------------------------------

DRIVER_ID, VBIOS_ID = rim_ids(parse_gpu_report(REPORT1))
VBIOS_BLOCKS = {1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13}  # the real VBIOS RIM's active blocks


@pytest.fixture(scope="module")
def signer() -> TestRimSigner:
    return TestRimSigner.create()


@pytest.fixture(scope="module")
def gpu() -> TestGpu:
    return TestGpu.create(REPORT1)


def rims_for(signer: TestRimSigner, *, driver: str = "550.90.07", vbios: str = "96.00.9F.00.01", overlap: bool = False):
    blocks = {int(k): bytes.fromhex(v) for k, v in CLAIMS.items() if set(v) != {"0"}}
    vb = {b: [v] for b, v in blocks.items() if b in VBIOS_BLOCKS}
    dr = {b: [v] for b, v in blocks.items() if b not in VBIOS_BLOCKS or (overlap and b == 10)}
    return {
        DRIVER_ID: signer.rim(version=driver, measurements=dr),
        VBIOS_ID: signer.rim(version=vbios, measurements=vb, inactive={8: bytes(48)}),
    }


def evaluate(gpu: TestGpu, store: RimStore, report_gpu: TestGpu | None = None):
    nonce = os.urandom(32)
    served = report_gpu or gpu
    doc = EvidenceDoc(nonce, CcState("prod", True, False), (GpuItem(served.report(nonce), gpu.chain_pem),))
    policy = GpuPolicy(required=True, vbios=("96.00.9F.00.01",), driver=("550.90.07",), root_pem=gpu.root_pem)
    now = time.time()
    return evaluate_gpus(doc, nonce, policy, now, lambda report: store.reference(report, now))


def store_with(tmp_path: Path, signer: TestRimSigner, rims: dict[str, bytes]) -> RimStore:
    store = RimStore(str(tmp_path), None, signer.root_pem)
    for rim_id, xml in rims.items():
        store.put(rim_id, xml, time.time())
    return store


def test_rims_give_the_reference_values(tmp_path: Path, signer: TestRimSigner, gpu: TestGpu) -> None:
    store = store_with(tmp_path, signer, rims_for(signer))
    verdict = evaluate(gpu, store)
    assert verdict.accepted, verdict.failures
    check = next(c for c in verdict.checks if c.check == "gpu.measurement_mismatch")
    assert check.outcome == "pass" and DRIVER_ID in check.expected and VBIOS_ID in check.expected
    for rim_id in (DRIVER_ID, VBIOS_ID):
        assert stat.S_IMODE((tmp_path / "rim" / f"{rim_id}.xml").stat().st_mode) == 0o600
    changed = evaluate(gpu, store, gpu.with_measurement(10, bytes(48)))
    assert [f.check for f in changed.failures] == ["gpu.measurement_mismatch"]
    assert "NVIDIA RIMs" in (changed.failures[0].detail or "")


@pytest.mark.parametrize(
    ("kw", "check"),
    [
        ({"driver": "550.163.01"}, "gpu.rim_version_mismatch"),
        ({"vbios": "96.00.74.00.1C"}, "gpu.rim_version_mismatch"),
        ({"overlap": True}, "gpu.rim_conflict"),
    ],
)
def test_rims_for_other_versions_or_overlapping_are_refused(tmp_path, signer, gpu, kw, check) -> None:
    verdict = evaluate(gpu, store_with(tmp_path, signer, rims_for(signer, **kw)))
    assert [f.check for f in verdict.failures] == [check]


def test_a_missing_rim_is_refused_offline_naming_the_import(
    tmp_path: Path, signer: TestRimSigner, gpu: TestGpu
) -> None:
    verdict = evaluate(gpu, RimStore(str(tmp_path), None, signer.root_pem))
    (failure,) = verdict.failures
    assert failure.check == "gpu.rim_missing" and f"collateral rim --id {DRIVER_ID}" in failure.expected


class RimService(LoopbackHttpServer):
    """NVIDIA's RIM service API on loopback: GET /v1/rim/<id> -> {"id", "rim": base64}."""

    def __init__(self, rims: dict[str, bytes]):
        super().__init__()
        self.rims = rims

    def answer(self, path: str):
        rim_id = path.removeprefix("/v1/rim/")
        if rim_id not in self.rims:
            return 404, b'{"error": "RIM Not Found"}', {"content-type": "application/json"}
        body = json.dumps({"id": rim_id, "rim": base64.b64encode(self.rims[rim_id]).decode()}).encode()
        return 200, body, {"content-type": "application/json"}


def test_the_store_fetches_missing_rims_once_and_keeps_them(
    tmp_path: Path, signer: TestRimSigner, gpu: TestGpu
) -> None:
    with RimService(rims_for(signer)) as service:
        store = RimStore(str(tmp_path), service.url.rstrip("/"), signer.root_pem)
        assert evaluate(gpu, store).accepted
        assert evaluate(gpu, store).accepted
        assert sorted(service.requests) == sorted(f"/v1/rim/{i}" for i in (DRIVER_ID, VBIOS_ID))
    # Offline afterwards: the cache on disk is enough (a new store, nothing in memory).
    assert evaluate(gpu, RimStore(str(tmp_path), None, signer.root_pem)).accepted


def test_a_tampered_rim_from_the_service_is_not_kept(tmp_path: Path, signer: TestRimSigner) -> None:
    rims = rims_for(signer)
    rims[DRIVER_ID] = rims[DRIVER_ID].replace(b'Hash0="', b'Hash0="00', 1)[:-1] + rims[DRIVER_ID][-1:]
    with RimService(rims) as service:
        store = RimStore(str(tmp_path), service.url.rstrip("/"), signer.root_pem)
        with pytest.raises(RimError) as tampered:
            store.lookup(DRIVER_ID, time.time())
        assert tampered.value.check == "gpu.rim_signature_invalid"
        with pytest.raises(RimError) as missing:
            store.lookup("NV_GPU_DRIVER_GH100_1.2.3", time.time())
    assert missing.value.check == "gpu.rim_missing" and "HTTP 404" in missing.value.seen
    assert not (tmp_path / "rim" / f"{DRIVER_ID}.xml").exists()
    with pytest.raises(RimError, match="a RIM id"):
        store.lookup("../../etc/passwd", time.time())


def test_collateral_rim_imports_a_verified_rim(tmp_path: Path, capsys) -> None:
    path = GPU_FIXTURES / "rim" / "vbios-96.00.74.00.1C.xml"
    args = ["collateral", "rim", "--id", "NV_GPU_VBIOS_1010_0200_882_960074001C", "--file", str(path)]
    assert main([*args, "--cache-dir", str(tmp_path), "--at", "2024-06-01T00:00:00Z"]) == 0
    out = capsys.readouterr().out
    assert "GH100 96.00.74.00.1C, 12 active measurements" in out and "2025-12-04" in out
    assert (tmp_path / "rim" / "NV_GPU_VBIOS_1010_0200_882_960074001C.xml").read_bytes() == path.read_bytes()
    # Today its signer has expired: refused, nothing written.
    assert main([*args, "--cache-dir", str(tmp_path / "now")]) == 1
    assert "gpu.rim_chain_invalid" in capsys.readouterr().err
    assert not (tmp_path / "now" / "rim").exists()


def test_a_rim_for_another_gpu_family_is_refused(tmp_path: Path, signer: TestRimSigner, gpu: TestGpu) -> None:
    rims = rims_for(signer)
    blocks = {int(k): bytes.fromhex(v) for k, v in CLAIMS.items() if set(v) != {"0"} and int(k) not in VBIOS_BLOCKS}
    rims[DRIVER_ID] = signer.rim(version="550.90.07", measurements={b: [v] for b, v in blocks.items()}, product="GB100")
    verdict = evaluate(gpu, store_with(tmp_path, signer, rims))
    assert [f.check for f in verdict.failures] == ["gpu.rim_version_mismatch"]
    assert "GB100" in verdict.failures[0].seen


def test_a_rim_id_is_one_line_of_its_own_alphabet(tmp_path: Path) -> None:
    store = RimStore(str(tmp_path))
    for bad in ("NV_GPU_DRIVER_GH100_550.90.07\n", "NV_GPU_DRIVER_GH100_550.90.07/../x", "nv_gpu_driver"):
        with pytest.raises(RimError, match="a RIM id"):
            store.lookup(bad, time.time())
