"""NVIDIA Hopper evidence in tests/fixtures/gpu-evidence: two valid reports verify to the NVIDIA
device root, three broken chains are refused with named failures."""

from __future__ import annotations

import json

import pytest

from tdxattest.core.gpu_evidence import GpuEvidenceError, parse_gpu_report, verify_gpu_chain, verify_gpu_evidence
from tests.support.builders import certificate
from tests.support.nvml_standin import FIXTURE_NONCE as NONCE1
from tests.support.nvml_standin import GPU_FIXTURES as GPU


def rd(name: str) -> bytes:
    return (GPU / name).read_bytes()


ROOT = "nvidia_device_root.pem"
NONCE2 = bytes.fromhex("87d8e24ab336adafe228d49e83d745f6dba4ae505372b6a5704820856b343fec")
FWID1 = "f5c384aebb579217a2c66b17ed0f28e6a9b8d639041acd7b4721cec004f7275494ba94bb5cdfdb3055ee051762b1f75d"


def test_report1_verifies_and_matches_trustee_claims() -> None:
    ev = verify_gpu_evidence(
        rd("hopperAttestationReport.txt"), rd("hopper_cert_chain_case1.txt"), rd(ROOT), expected_nonce=NONCE1
    )
    claims = json.loads(rd("hopperAttestationReport-claims.txt"))
    assert ev.report.nonce == NONCE1 and ev.fwid.hex() == FWID1 == claims["config"]["fwid"]
    assert {str(k): v for k, v in ev.report.measurement_dict().items()} == claims["measurements"]
    assert len(ev.report.measurements) == 64 and ev.report.trailing == 0
    d = ev.as_dict()
    assert d["nonce"] == NONCE1.hex() and len(d["measurements"]) == 64


def test_coco_report_with_trailing_byte_verifies() -> None:
    ev = verify_gpu_evidence(
        rd("hopper_coco_report1.txt"), rd("hopper_coco_certs1.txt"), rd(ROOT), expected_nonce=NONCE2
    )
    assert ev.report.trailing == 1 and ev.report.nonce == NONCE2


@pytest.mark.parametrize(
    "chain,check",
    [
        ("hopper_cert_chain_case2.txt", "gpu.chain_too_short"),  # root only
        ("hopper_cert_chain_case3.txt", "gpu.chain_invalid"),  # intermediate missing
        ("hopper_cert_chain_case4.txt", "gpu.leaf_missing_fwid"),  # signing leaf missing
    ],
)
def test_broken_chains_are_refused(chain: str, check: str) -> None:
    with pytest.raises(GpuEvidenceError) as err:
        verify_gpu_evidence(rd("hopperAttestationReport.txt"), rd(chain), rd(ROOT))
    assert err.value.check == check


def test_wrong_nonce_wrong_chain_and_tampered_report() -> None:
    with pytest.raises(GpuEvidenceError) as err:
        verify_gpu_evidence(
            rd("hopperAttestationReport.txt"), rd("hopper_cert_chain_case1.txt"), rd(ROOT), expected_nonce=NONCE2
        )
    assert err.value.check == "gpu.nonce_mismatch"
    # The other device's (valid) chain does not sign this report.
    with pytest.raises(GpuEvidenceError) as err:
        verify_gpu_evidence(rd("hopperAttestationReport.txt"), rd("hopper_coco_certs1.txt"), rd(ROOT))
    assert err.value.check == "gpu.signature_invalid"
    raw = bytearray(bytes.fromhex(rd("hopperAttestationReport.txt").decode().strip()))
    raw[200] ^= 1  # inside the measurement record
    with pytest.raises(GpuEvidenceError) as err:
        verify_gpu_evidence(bytes(raw), rd("hopper_cert_chain_case1.txt"), rd(ROOT))
    assert err.value.check == "gpu.signature_invalid"
    with pytest.raises(GpuEvidenceError) as err:
        parse_gpu_report(bytes(raw[:500]))
    assert err.value.check == "gpu.report_malformed"


def test_chain_must_end_at_pinned_root() -> None:
    with pytest.raises(GpuEvidenceError) as err:
        verify_gpu_chain(rd("hopper_cert_chain_case1.txt"), rd("hopper_signing_cert.pem"))
    assert err.value.check == "gpu.untrusted_root"
    certs = verify_gpu_chain(rd("hopper_cert_chain_case1.txt"), rd(ROOT))
    assert len(certs) == 5
    with pytest.raises(GpuEvidenceError) as err:  # 1970: before every notBefore
        verify_gpu_chain(rd("hopper_cert_chain_case1.txt"), rd(ROOT), now=0)
    assert err.value.check == "gpu.chain_invalid"


def test_the_pinned_root_fingerprint_is_the_fixture_root() -> None:
    # With no root given, the chain's own last certificate is the root if its DER SHA-256 is the pin.
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from tdxattest.core.gpu_evidence import NVIDIA_DEVICE_ROOT_SHA256

    der = x509.load_pem_x509_certificate(rd(ROOT)).public_bytes(Encoding.DER)
    assert hashlib.sha256(der).hexdigest() == NVIDIA_DEVICE_ROOT_SHA256
    ev = verify_gpu_evidence(
        rd("hopperAttestationReport.txt"), rd("hopper_cert_chain_case1.txt"), None, expected_nonce=NONCE1
    )
    assert ev.fwid.hex() == FWID1


def test_a_chain_ending_elsewhere_is_refused_without_a_root_file() -> None:
    # chain case 1 without its root: it ends at an intermediate
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    certs = x509.load_pem_x509_certificates(rd("hopper_cert_chain_case1.txt"))[:-1]
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in certs)
    with pytest.raises(GpuEvidenceError) as err:
        verify_gpu_evidence(rd("hopperAttestationReport.txt"), pem, None)
    assert err.value.check == "gpu.untrusted_root"
    assert "NVIDIA Device Identity CA (DER SHA-256 102bf659" in err.value.expected
    assert "(DER SHA-256 " in err.value.seen and "102bf659" not in err.value.seen


def test_a_signing_certificate_with_a_non_ec_key_is_a_refused_signature_not_a_crash() -> None:
    # An RSA leaf under a genuine ECDSA CA: the chain verifies, the report cannot be an ECDSA
    # P-384 signature under that key, so it is `gpu.signature_invalid` (it was a TypeError).
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import Encoding

    root_key = ec.generate_private_key(ec.SECP384R1())
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    root = certificate("test root", root_key, "test root", root_key, ca=True)
    leaf = certificate("rsa leaf", leaf_key, "test root", root_key, ca=False, fwid=bytes(range(48)))
    chain = leaf.public_bytes(Encoding.PEM) + root.public_bytes(Encoding.PEM)
    assert [c.subject for c in verify_gpu_chain(chain, root.public_bytes(Encoding.PEM))] == [leaf.subject, root.subject]
    with pytest.raises(GpuEvidenceError) as err:
        verify_gpu_evidence(rd("hopperAttestationReport.txt"), chain, root.public_bytes(Encoding.PEM))
    assert err.value.check == "gpu.signature_invalid"


def test_a_certificate_signed_by_a_non_ec_issuer_breaks_the_chain_by_name() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import Encoding

    root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf_key = ec.generate_private_key(ec.SECP384R1())
    root = certificate("rsa root", root_key, "rsa root", root_key, ca=True)
    leaf = certificate("ec leaf", leaf_key, "rsa root", root_key, ca=False, fwid=bytes(range(48)))
    chain = leaf.public_bytes(Encoding.PEM) + root.public_bytes(Encoding.PEM)
    with pytest.raises(GpuEvidenceError) as err:
        verify_gpu_chain(chain, root.public_bytes(Encoding.PEM))
    assert err.value.check == "gpu.chain_invalid"


# --- issue 17 (mutation testing): each header byte and each bound on its own, and the caller's root
# and time reach the chain check --------------------------------------------------------------------


def _report_bytes() -> bytearray:
    return bytearray(bytes.fromhex(rd("hopperAttestationReport.txt").decode().strip()))


@pytest.mark.parametrize("offset, value", [(0, 0x10), (1, 0xE1), (37, 0x10), (38, 0x61)])
def test_each_spdm_header_byte_is_checked_on_its_own(offset: int, value: int) -> None:
    raw = _report_bytes()
    raw[offset] = value
    with pytest.raises(GpuEvidenceError) as err:
        parse_gpu_report(bytes(raw))
    assert err.value.check == "gpu.report_malformed" and "SPDM 1.1" in str(err.value)


@pytest.mark.parametrize("size", [2, 0xFFFF], ids=["below-its-own-header", "past-the-record"])
def test_a_measurement_block_size_out_of_bounds_is_refused(size: int) -> None:
    import struct

    raw = _report_bytes()
    first_block = 37 + 8  # request, MEASUREMENTS header, then the blocks
    struct.pack_into("<H", raw, first_block + 2, size)
    with pytest.raises(GpuEvidenceError, match="-byte measurement block") as err:
        parse_gpu_report(bytes(raw))
    assert err.value.check == "gpu.report_malformed"


def test_verify_gpu_evidence_checks_the_chain_against_the_callers_root_and_time() -> None:
    report, chain = rd("hopperAttestationReport.txt"), rd("hopper_cert_chain_case1.txt")
    with pytest.raises(GpuEvidenceError) as err:
        verify_gpu_evidence(report, chain, rd("hopper_signing_cert.pem"), expected_nonce=NONCE1)
    assert err.value.check == "gpu.untrusted_root"
    with pytest.raises(GpuEvidenceError) as err:
        verify_gpu_evidence(report, chain, rd(ROOT), expected_nonce=NONCE1, now=0)
    assert err.value.check == "gpu.chain_invalid"
