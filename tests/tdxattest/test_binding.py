"""REPORTDATA channel binding: SHA-512(tag || SHA-256(SPKI) || nonce)."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tdxattest.channel.binding import DOMAIN_TAG, expected_report_data, spki_der
from tdxattest.core.errors import InputError
from tdxattest.core.policy import DEFAULT_POLICY, QuoteFacts, evaluate
from tests.support.builders import report


@pytest.fixture(scope="module")
def spki() -> bytes:
    return spki_der(ec.generate_private_key(ec.SECP256R1()).public_key())


def test_layout_is_tag_sha256spki_nonce(spki: bytes) -> None:
    nonce = bytes(range(32))
    want = hashlib.sha512(DOMAIN_TAG + hashlib.sha256(spki).digest() + nonce).digest()
    assert expected_report_data(spki, nonce) == want and len(want) == 64


def test_every_input_changes_the_binding(spki: bytes) -> None:
    nonce = b"n" * 32
    rd = expected_report_data(spki, nonce)
    other_key = spki_der(ec.generate_private_key(ec.SECP256R1()).public_key())
    assert expected_report_data(spki, b"m" * 32) != rd
    assert expected_report_data(other_key, nonce) != rd
    assert expected_report_data(spki, nonce, tag=b"other-tag\0") != rd


def test_spki_from_certificate_bytes(spki: bytes) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "td")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    want = spki_der(key.public_key())
    assert spki_der(cert.public_bytes(Encoding.PEM)) == spki_der(cert.public_bytes(Encoding.DER)) == want


@pytest.mark.parametrize("n", [0, 15, 65])
def test_nonce_length_is_checked(spki: bytes, n: int) -> None:
    with pytest.raises(InputError):
        expected_report_data(spki, b"x" * n)


def test_binding_through_the_policy(spki: bytes) -> None:
    nonce = b"\x07" * 32
    rd = expected_report_data(spki, nonce)
    facts = QuoteFacts("UpToDate", (), report(report_data=rd))
    assert evaluate(facts, DEFAULT_POLICY, 0, expected_report_data(spki, nonce)).accepted
    v = evaluate(facts, DEFAULT_POLICY, 0, expected_report_data(spki, b"\x08" * 32))
    assert [f.check for f in v.failures] == ["binding.report_data_mismatch"]
