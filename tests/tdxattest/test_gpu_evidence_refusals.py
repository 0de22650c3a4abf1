"""Hostile and edge-case NVIDIA Hopper evidence (issue 17, item 9): every refusal of
`tdxattest.core.gpu_evidence` asserted with its check name and its expected/seen text, one header
field or bound broken at a time, the exact boundaries (a structure that just fits is accepted, one
byte short is refused), the caller's root and `now` reaching the chain check, and the values parsed
from the recorded sample (measurement blocks, responder nonce, opaque fields, `as_dict`).

Hostile reports are either the recorded `hopperAttestationReport.txt` with bytes edited, or small
reports built field by field (`_report`) so that one structure can be made to lie about its size.
Reports whose signature must verify are signed by a throwaway P-384 chain (`_Pki`), built once."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from tdxattest.core.gpu_evidence import (
    GpuEvidenceError,
    MeasurementBlock,
    device_identity,
    normalise_version,
    parse_gpu_report,
    parse_opaque,
    verify_gpu_chain,
    verify_gpu_evidence,
)
from tests.support.builders import CERT_NOT_AFTER, CERT_NOT_BEFORE, certificate
from tests.support.nvml_standin import FIXTURE_NONCE as NONCE1
from tests.support.nvml_standin import GPU_FIXTURES as GPU

MALFORMED = "gpu.report_malformed"
NONCE2 = bytes.fromhex("87d8e24ab336adafe228d49e83d745f6dba4ae505372b6a5704820856b343fec")
FWID1 = "f5c384aebb579217a2c66b17ed0f28e6a9b8d639041acd7b4721cec004f7275494ba94bb5cdfdb3055ee051762b1f75d"
RESPONDER_NONCE1 = "b4b8a06aaaa35542839388e159d447a5d6f6194998fd86513e2d591ccf640985"
# Subjects of the recorded chain (case 1), as rfc4514_string prints them.
LEAF1 = "CN=GH100 A01 GSP FMC LF,O=NVIDIA Corporation,C=US,2.5.4.5=53C22BA15E5D68088282DA074ED9FB37AA585771"
BROM1 = "CN=GH100 A01 GSP BROM,O=NVIDIA Corporation,C=US,2.5.4.5=41431D480FE5E87274"
NVIDIA_ROOT = "O=NVIDIA,CN=NVIDIA Device Identity CA"
# Offsets in the recorded report: request, MEASUREMENTS header, 64 blocks of 55 bytes (0x0dc0),
# responder nonce and opaque length at 3565, 422 opaque bytes, the signature at 4021.
RECORD_END = 37 + 8 + 0x0DC0
SIGNATURE_AT = 4021


def rd(name: str) -> bytes:
    return (GPU / name).read_bytes()


def _recorded() -> bytearray:
    return bytearray(bytes.fromhex(rd("hopperAttestationReport.txt").decode().strip()))


def _refusal(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, str, str]:
    with pytest.raises(GpuEvidenceError) as err:
        call(*args, **kwargs)
    e = err.value
    assert str(e) == f"{e.check}: expected {e.expected}, seen {e.seen}"
    return e.check, e.expected, e.seen


# --- reports built field by field -----------------------------------------------------------------


def _block(
    index: int, value: bytes, *, spec: int = 1, vtype: int = 1, size: int | None = None, vsize: int | None = None
) -> bytes:
    """One measurement block: index, spec, size u16, then the DMTF value type, value size u16, value."""
    size = len(value) + 3 if size is None else size
    vsize = len(value) if vsize is None else vsize
    return struct.pack("<BBHBH", index, spec, size, vtype, vsize) + value


def _field(kind: int, value: bytes, *, size: int | None = None) -> bytes:
    return struct.pack("<HH", kind, len(value) if size is None else size) + value


def _request(nonce: bytes = NONCE1) -> bytes:
    return bytes([0x11, 0xE0, 0x01, 0xFF]) + nonce + b"\0"


def _unsigned(
    record: bytes,
    count: int,
    *,
    opaque: bytes = b"",
    responder_nonce: bytes = bytes(range(32)),
    rec_len: int | None = None,
    nonce: bytes = NONCE1,
) -> bytes:
    """Request || response up to (not including) the signature."""
    rec_len = len(record) if rec_len is None else rec_len
    header = bytes([0x11, 0x60, 0, 0, count]) + rec_len.to_bytes(3, "little")
    return _request(nonce) + header + record + responder_nonce + struct.pack("<H", len(opaque)) + opaque


def _report(record: bytes, count: int, *, signature: bytes = bytes(range(96)), **kw: Any) -> bytes:
    return _unsigned(record, count, **kw) + signature


BLOCK_A = _block(1, bytes(range(48)))
BLOCK_B = _block(2, bytes(range(48, 96)))
TWO_BLOCKS = BLOCK_A + BLOCK_B
AFTER_TWO = 37 + 8 + len(TWO_BLOCKS)  # where the responder nonce of a two-block report starts


# --- a throwaway P-384 chain that signs reports ---------------------------------------------------

NOT_BEFORE, NOT_AFTER = CERT_NOT_BEFORE, CERT_NOT_AFTER


@dataclass(frozen=True)
class _Pki:
    leaf_key: ec.EllipticCurvePrivateKey
    chain: bytes  # leaf, root
    root: bytes
    fwid: bytes

    def sign(self, unsigned: bytes) -> bytes:
        r, s = decode_dss_signature(self.leaf_key.sign(unsigned, ec.ECDSA(hashes.SHA384())))
        return unsigned + r.to_bytes(48, "big") + s.to_bytes(48, "big")


@pytest.fixture(scope="module")
def pki() -> _Pki:
    root_key = ec.generate_private_key(ec.SECP384R1())
    leaf_key = ec.generate_private_key(ec.SECP384R1())
    fwid = bytes(range(100, 148))
    root = certificate("test root", root_key, "test root", root_key, ca=True)
    leaf = certificate("test leaf", leaf_key, "test root", root_key, ca=False, fwid=fwid)
    root_pem = root.public_bytes(Encoding.PEM)
    return _Pki(leaf_key, leaf.public_bytes(Encoding.PEM) + root_pem, root_pem, fwid)


# --- the recorded sample parses to its known values -------------------------------------------------


def test_recorded_report_parses_to_its_known_layout() -> None:
    raw = bytes(_recorded())
    r = parse_gpu_report(raw)
    assert r.request == raw[:37] and r.request[:4].hex() == "11e001ff" and r.nonce == NONCE1
    assert r.response_signed == raw[37:SIGNATURE_AT]
    assert r.responder_nonce.hex() == RESPONDER_NONCE1
    assert [b.index for b in r.measurements] == list(range(1, 65))
    assert {(b.spec, b.value_type, len(b.value)) for b in r.measurements} == {(1, 1, 48)}
    first = 37 + 8
    assert r.measurements[0] == MeasurementBlock(1, 1, 1, raw[first + 7 : first + 55])
    assert len(r.opaque) == 422 and r.opaque == raw[RECORD_END + 34 : SIGNATURE_AT]
    assert sorted(r.opaque_fields) == [3, 4, 6, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]
    assert r.fwid is not None and r.fwid.hex() == FWID1
    assert r.driver_version == "550.90.07" and r.vbios_version == "96.00.9f.00.01"
    assert r.signature == raw[SIGNATURE_AT:] and len(r.signature) == 96 and r.trailing == 0


def test_recorded_report_parses_the_same_from_hex_text_and_from_bytes() -> None:
    raw = bytes(_recorded())
    assert (
        parse_gpu_report(raw)
        == parse_gpu_report(raw.hex().upper())
        == parse_gpu_report(rd("hopperAttestationReport.txt"))
    )


def test_verified_evidence_carries_the_leaf_and_the_whole_chain() -> None:
    chain = rd("hopper_cert_chain_case1.txt")
    ev = verify_gpu_evidence(rd("hopperAttestationReport.txt"), chain, rd("nvidia_device_root.pem"), NONCE1)
    assert ev.leaf_subject == LEAF1
    assert [c.subject.rfc4514_string() for c in ev.chain][::4] == [LEAF1, NVIDIA_ROOT] and len(ev.chain) == 5
    assert ev.device == device_identity(chain)
    claims_measurements = {str(b.index): b.value.hex() for b in ev.report.measurements}
    assert ev.as_dict() == {
        "nonce": NONCE1.hex(),
        "fwid": FWID1,
        "leaf": LEAF1,
        "driver_version": "550.90.07",
        "vbios_version": "96.00.9f.00.01",
        "measurements": claims_measurements,
        "trailing_bytes": 0,
    }


def test_device_identity_is_the_digest_of_every_certificate_whatever_the_pem_layout() -> None:
    chain = rd("hopper_cert_chain_case1.txt")
    ders = [c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(chain)]
    want = hashlib.sha256(b"".join(ders)).digest()
    assert device_identity(chain) == want
    assert device_identity(chain.decode().replace("\n-----BEGIN", "\n\n\n-----BEGIN")) == want
    assert device_identity(rd("hopper_coco_certs1.txt")) != want


def test_versions_compare_lower_case_and_trimmed() -> None:
    assert normalise_version(" 96.00.9F.00.01\n") == "96.00.9f.00.01"


# --- truncation: each `need` bound, exactly at its edge ---------------------------------------------


def test_a_report_one_byte_short_of_the_request_is_refused_at_offset_0() -> None:
    assert _refusal(parse_gpu_report, bytes(_recorded()[:36])) == (
        MALFORMED,
        "a 37-byte GET_MEASUREMENTS request at offset 0",
        "36 bytes in all",
    )


@pytest.mark.parametrize("length", [37, 44])
def test_a_report_without_a_whole_measurements_header_is_refused_at_offset_37(length: int) -> None:
    # 37: the whole request is accepted and the refusal names what comes next
    assert _refusal(parse_gpu_report, bytes(_recorded()[:length])) == (
        MALFORMED,
        "the MEASUREMENTS response header at offset 37",
        f"{length} bytes in all",
    )


def test_an_empty_record_after_a_whole_header_is_refused_for_the_missing_nonce() -> None:
    # 8 header bytes are enough: the refusal moves on to the responder nonce
    raw = _request() + bytes([0x11, 0x60, 0, 0, 0, 0, 0, 0])
    assert _refusal(parse_gpu_report, raw) == (
        MALFORMED,
        "responder nonce and opaque length at offset 45",
        "45 bytes in all",
    )


def test_a_record_longer_than_the_report_is_refused() -> None:
    raw = _request() + bytes([0x11, 0x60, 0, 0, 1]) + (10).to_bytes(3, "little") + bytes(5)
    assert _refusal(parse_gpu_report, raw) == (
        MALFORMED,
        "a 10-byte measurement record at offset 45",
        "50 bytes in all",
    )


def test_a_report_cut_inside_the_responder_nonce_is_refused() -> None:
    raw = _report(TWO_BLOCKS, 2)[: AFTER_TWO + 33]
    assert _refusal(parse_gpu_report, raw) == (
        MALFORMED,
        f"responder nonce and opaque length at offset {AFTER_TWO}",
        f"{AFTER_TWO + 33} bytes in all",
    )


def test_a_report_ending_at_its_opaque_length_is_refused_for_the_signature() -> None:
    raw = _unsigned(TWO_BLOCKS, 2)
    assert len(raw) == AFTER_TWO + 34
    assert _refusal(parse_gpu_report, raw) == (
        MALFORMED,
        f"0 bytes of opaque data and a 96-byte signature at offset {AFTER_TWO + 34}",
        f"{AFTER_TWO + 34} bytes in all",
    )


def test_a_signature_one_byte_short_is_refused_and_the_exact_length_accepted() -> None:
    raw = bytes(_recorded())
    assert _refusal(parse_gpu_report, raw[:-1]) == (
        MALFORMED,
        f"422 bytes of opaque data and a 96-byte signature at offset {RECORD_END + 34}",
        f"{len(raw) - 1} bytes in all",
    )
    assert parse_gpu_report(raw).trailing == 0
    assert parse_gpu_report(raw + b"\0\0").trailing == 2


# --- the SPDM headers: each byte on its own, the bytes seen reported --------------------------------


@pytest.mark.parametrize(
    "offset, value, expected, seen",
    [
        (0, 0x10, "SPDM 1.1 GET_MEASUREMENTS (11 e0)", "10e0"),
        (1, 0x84, "SPDM 1.1 GET_MEASUREMENTS (11 e0)", "1184"),
        (37, 0x12, "SPDM 1.1 MEASUREMENTS (11 60)", "1260"),
        (38, 0xE0, "SPDM 1.1 MEASUREMENTS (11 60)", "11e0"),
    ],
)
def test_a_wrong_spdm_header_byte_is_refused_with_the_two_bytes_seen(
    offset: int, value: int, expected: str, seen: str
) -> None:
    raw = _recorded()
    raw[offset] = value
    assert _refusal(parse_gpu_report, bytes(raw)) == (MALFORMED, expected, seen)


# --- the measurement record -------------------------------------------------------------------------


@pytest.mark.parametrize("leftover", [1, 3])
def test_a_record_ending_inside_a_block_header_is_refused(leftover: int) -> None:
    record = TWO_BLOCKS + bytes([3, 1, 0])[:leftover]
    raw = _report(record, 3)
    assert _refusal(parse_gpu_report, raw) == (MALFORMED, "a measurement block header", f"{leftover} bytes")


def test_a_record_ending_right_after_a_block_header_is_refused_for_the_block() -> None:
    # Four bytes are a whole header; what is missing is the block it announces.
    record = BLOCK_A + struct.pack("<BBH", 2, 1, 3)
    assert _refusal(parse_gpu_report, _report(record, 2)) == (MALFORMED, "a 3-byte measurement block", "0 bytes")


def test_a_block_one_byte_longer_than_the_record_is_refused() -> None:
    record = BLOCK_A + _block(2, bytes(48), size=52)  # 51 bytes follow its header
    assert _refusal(parse_gpu_report, _report(record, 2)) == (MALFORMED, "a 52-byte measurement block", "51 bytes")


def test_a_block_too_small_for_its_value_header_is_refused() -> None:
    record = BLOCK_A + _block(2, b"", size=2, vsize=0)[:6]  # header, then the two bytes it claims
    assert _refusal(parse_gpu_report, _report(record, 2)) == (MALFORMED, "a 2-byte measurement block", "2 bytes")


def test_a_block_with_an_empty_value_is_the_smallest_accepted() -> None:
    r = parse_gpu_report(_report(BLOCK_A + _block(9, b"", spec=1, vtype=0), 2))
    assert r.measurements[1] == MeasurementBlock(9, 1, 0, b"")
    assert r.measurement_dict() == {1: bytes(range(48)).hex(), 9: ""}


def test_block_header_bytes_are_read_unsigned() -> None:
    value = bytes(range(0x90, 0xA0))
    r = parse_gpu_report(_report(_block(0xC8, value, spec=0x81, vtype=0x82), 1))
    assert r.measurements == (MeasurementBlock(0xC8, 0x81, 0x82, value),)


def test_a_block_whose_value_does_not_fill_it_is_refused() -> None:
    record = BLOCK_A + _block(5, bytes(48), vsize=47)
    assert _refusal(parse_gpu_report, _report(record, 2)) == (
        MALFORMED,
        "block 5's value filling its 48 bytes",
        "47 bytes",
    )


def test_a_repeated_measurement_index_is_refused() -> None:
    record = _block(7, bytes(48)) + _block(7, bytes(range(48)))
    assert _refusal(parse_gpu_report, _report(record, 2)) == (
        MALFORMED,
        "one measurement block per index",
        "block 7 twice",
    )


@pytest.mark.parametrize("count", [1, 3])
def test_a_block_count_that_disagrees_with_the_record_is_refused(count: int) -> None:
    assert _refusal(parse_gpu_report, _report(TWO_BLOCKS, count)) == (MALFORMED, f"{count} measurement blocks", "2")


def test_the_recorded_block_count_byte_is_checked() -> None:
    raw = _recorded()
    raw[37 + 4] = 63
    assert _refusal(parse_gpu_report, bytes(raw)) == (MALFORMED, "63 measurement blocks", "64")


# --- the opaque data ----------------------------------------------------------------------------------


def test_an_opaque_length_above_32767_is_read_unsigned() -> None:
    opaque = _field(3, b"580.95.05\0".ljust(0x8000 - 4, b"\0"))
    signature = bytes(range(96, 192))
    r = parse_gpu_report(_report(TWO_BLOCKS, 2, opaque=opaque, signature=signature))
    assert len(r.opaque) == 0x8000 and r.driver_version == "580.95.05"
    assert r.signature == signature and r.trailing == 0


def test_opaque_fields_by_type_the_first_of_a_repeated_type_kept() -> None:
    opaque = _field(3, b"550.90.07\0") + _field(0x8001, b"x") + _field(3, b"other\0") + _field(6, b"")
    assert parse_opaque(opaque) == {3: b"550.90.07\0", 0x8001: b"x", 6: b""}
    assert parse_opaque(b"") == {}


def test_a_zero_length_opaque_field_at_the_very_end_is_accepted() -> None:
    assert parse_opaque(_field(3, b"ab") + _field(20, b"")) == {3: b"ab", 20: b""}


@pytest.mark.parametrize("leftover", [1, 3])
def test_an_opaque_field_header_cut_short_is_refused(leftover: int) -> None:
    opaque = _field(3, b"ab") + bytes([20, 0, 4])[:leftover]
    assert _refusal(parse_opaque, opaque) == (MALFORMED, "an opaque field header", f"{leftover} bytes")


def test_an_opaque_field_one_byte_longer_than_the_data_is_refused() -> None:
    opaque = _field(3, b"ab") + _field(20, b"wxyz", size=5)
    assert _refusal(parse_opaque, opaque) == (MALFORMED, "a 5-byte opaque field 20", "4 bytes")


def test_malformed_opaque_data_is_a_malformed_report() -> None:
    opaque = _field(20, b"wxyz", size=0xFFFF)
    assert _refusal(parse_gpu_report, _report(TWO_BLOCKS, 2, opaque=opaque)) == (
        MALFORMED,
        "a 65535-byte opaque field 20",
        "4 bytes",
    )


# --- the chain: the caller's root and `now` --------------------------------------------------------


def test_a_chain_verified_against_another_root_is_refused_naming_both(pki: _Pki) -> None:
    assert _refusal(verify_gpu_chain, rd("hopper_cert_chain_case1.txt"), pki.root) == (
        "gpu.untrusted_root",
        "chain ending at CN=test root",
        NVIDIA_ROOT,
    )
    assert _refusal(verify_gpu_chain, pki.chain, rd("nvidia_device_root.pem")) == (
        "gpu.untrusted_root",
        f"chain ending at {NVIDIA_ROOT}",
        "CN=test root",
    )
    assert _refusal(verify_gpu_chain, pki.chain, None)[0] == "gpu.untrusted_root"


def test_the_pinned_root_must_be_exactly_onecertificate() -> None:
    two = rd("nvidia_device_root.pem") + rd("hopper_signing_cert.pem")
    assert _refusal(verify_gpu_chain, rd("hopper_cert_chain_case1.txt"), two) == (
        "gpu.untrusted_root",
        "one pinned root certificate",
        "2",
    )


def test_a_root_alone_is_too_short_a_chain() -> None:
    assert _refusal(verify_gpu_chain, rd("hopper_cert_chain_case2.txt"), rd("nvidia_device_root.pem")) == (
        "gpu.chain_too_short",
        "at least the signing certificate and the root CA",
        "1 certificate(s)",
    )


def test_a_chain_whose_first_certificate_has_no_fwid_is_refused_naming_it() -> None:
    assert _refusal(verify_gpu_chain, rd("hopper_cert_chain_case4.txt"), rd("nvidia_device_root.pem")) == (
        "gpu.leaf_missing_fwid",
        "FWID extension 2.23.133.5.4.1 in the signing certificate",
        BROM1,
    )


def test_a_chain_missing_an_intermediate_is_refused_at_the_broken_link() -> None:
    assert _refusal(verify_gpu_chain, rd("hopper_cert_chain_case3.txt"), rd("nvidia_device_root.pem")) == (
        "gpu.chain_invalid",
        f"{BROM1} issued and signed by the CA O=NVIDIA Corporation,CN=NVIDIA GH100 Identity",
        "issuer C=US,O=NVIDIA Corporation,CN=NVIDIA GH100 Provisioner ICA 1, or a signature that does not verify",
    )


def test_the_callers_now_is_the_time_the_chain_is_checked_at() -> None:
    assert _refusal(verify_gpu_chain, rd("hopper_cert_chain_case1.txt"), rd("nvidia_device_root.pem"), now=0) == (
        "gpu.chain_invalid",
        f"{LEAF1} valid at 1970-01-01T00:00:00Z",
        "valid 2020-10-17T00:00:00Z .. 9999-12-31T23:59:59Z",
    )


def test_a_now_after_the_leafs_expiry_is_refused_and_its_last_second_accepted(pki: _Pki) -> None:
    last = NOT_AFTER.timestamp()
    assert len(verify_gpu_chain(pki.chain, pki.root, now=last)) == 2
    assert _refusal(verify_gpu_chain, pki.chain, pki.root, now=last + 1) == (
        "gpu.chain_invalid",
        "CN=test leaf valid at 2034-01-01T00:00:01Z",
        "valid 2024-01-01T00:00:00Z .. 2034-01-01T00:00:00Z",
    )


def test_chains_and_roots_are_accepted_as_text() -> None:
    certs = verify_gpu_chain(rd("hopper_cert_chain_case1.txt").decode(), rd("nvidia_device_root.pem").decode())
    assert certs == x509.load_pem_x509_certificates(rd("hopper_cert_chain_case1.txt"))
    assert certs[0].subject.rfc4514_string() == LEAF1 and certs[-1].subject.rfc4514_string() == NVIDIA_ROOT


@pytest.mark.parametrize("which", ["chain", "root"])
def test_pem_that_does_not_parse_is_refused_as_an_invalid_chain(which: str) -> None:
    chain, root = rd("hopper_cert_chain_case1.txt"), rd("nvidia_device_root.pem")
    bad = "-----BEGIN CERTIFICATE-----\nnot base64\n"
    args = (bad, root) if which == "chain" else (chain, bad)
    check, expected, seen = _refusal(verify_gpu_chain, *args)
    assert (check, expected) == ("gpu.chain_invalid", "a PEM certificate chain")
    assert seen.startswith("Unable to load PEM file")


# --- the signature, the nonce and the FWID --------------------------------------------------------


def test_a_report_not_signed_by_the_leaf_is_refused() -> None:
    assert _refusal(
        verify_gpu_evidence,
        rd("hopperAttestationReport.txt"),
        rd("hopper_coco_certs1.txt"),
        rd("nvidia_device_root.pem"),
    ) == ("gpu.signature_invalid", "report signed by the leaf's key (ECDSA P-384/SHA-384)", "signature does not verify")


def test_a_nonce_mismatch_names_both_nonces() -> None:
    got = _refusal(
        verify_gpu_evidence,
        rd("hopperAttestationReport.txt"),
        rd("hopper_cert_chain_case1.txt"),
        rd("nvidia_device_root.pem"),
        expected_nonce=NONCE2,
    )
    assert got == ("gpu.nonce_mismatch", NONCE2.hex(), NONCE1.hex())


def test_a_report_signed_by_a_test_leaf_verifies_under_the_callers_root(pki: _Pki) -> None:
    opaque = _field(3, b"580.95.05\0") + _field(20, pki.fwid)
    report = pki.sign(_unsigned(TWO_BLOCKS, 2, opaque=opaque))
    ev = verify_gpu_evidence(report, pki.chain, pki.root, NONCE1, now=NOT_BEFORE.timestamp())
    assert ev.fwid == pki.fwid and ev.leaf_subject == "CN=test leaf" and ev.report.driver_version == "580.95.05"
    assert ev.as_dict()["vbios_version"] is None and ev.as_dict()["measurements"] == {
        "1": bytes(range(48)).hex(),
        "2": bytes(range(48, 96)).hex(),
    }
    # the caller's `now` reaches the chain check from verify_gpu_evidence too
    check, expected, _ = _refusal(
        verify_gpu_evidence, report, pki.chain, pki.root, NONCE1, now=NOT_AFTER.timestamp() + 1
    )
    assert (check, expected) == ("gpu.chain_invalid", "CN=test leaf valid at 2034-01-01T00:00:01Z")
    # and so does the caller's root
    assert _refusal(verify_gpu_evidence, report, pki.chain, rd("nvidia_device_root.pem"))[0] == "gpu.untrusted_root"


def test_a_signed_fwid_that_is_not_the_certificates_is_refused(pki: _Pki) -> None:
    other = bytes(48)
    report = pki.sign(_unsigned(TWO_BLOCKS, 2, opaque=_field(20, other)))
    assert _refusal(verify_gpu_evidence, report, pki.chain, pki.root, now=NOT_BEFORE.timestamp()) == (
        "gpu.fwid_mismatch",
        f"the signing certificate's FWID {pki.fwid.hex()}",
        other.hex(),
    )


def test_a_report_without_a_signed_fwid_is_refused(pki: _Pki) -> None:
    report = pki.sign(_unsigned(TWO_BLOCKS, 2, opaque=_field(3, b"580.95.05\0")))
    assert _refusal(verify_gpu_evidence, report, pki.chain, pki.root, now=NOT_BEFORE.timestamp()) == (
        "gpu.fwid_mismatch",
        f"the signing certificate's FWID {pki.fwid.hex()}",
        "no FWID field (20) in the signed opaque data",
    )
