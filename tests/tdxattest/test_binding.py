"""REPORTDATA channel binding: SHA-512(tag || SHA-256(SPKI) || nonce), its GPU and per-response forms,
and the nonces the GPUs sign over. The layouts are the wire format a client must reproduce, so the
tests spell the tags out as bytes rather than importing them."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tdxattest.channel.binding import (
    DOMAIN_TAG,
    expected_report_data,
    gpu_nonce,
    report_data_for_key_hash,
    response_gpu_nonce,
    response_report_data,
    spki_der,
)
from tdxattest.core.errors import InputError
from tdxattest.core.policy import DEFAULT_POLICY, QuoteFacts, evaluate
from tests.support.builders import certificate, report


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
    from cryptography.hazmat.primitives.serialization import Encoding

    key = ec.generate_private_key(ec.SECP256R1())
    cert = certificate("td", key, "td", key, ca=False)
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


KEY_HASH = hashlib.sha256(b"spki").digest()
NONCE = bytes(range(32))
GPU_DIGEST = hashlib.sha256(b"gpu evidence").digest()
BODY_SHA = hashlib.sha256(b'{"prompt": "hi"}').digest()


def _refusal(call, *args, **kwargs) -> InputError:
    with pytest.raises(InputError) as caught:
        call(*args, **kwargs)
    return caught.value


def test_the_gpu_binding_layout_is_gpu_tag_keyhash_nonce_digest(spki: bytes) -> None:
    want = hashlib.sha512(
        b"tdxattest/tls-gpu-binding/v1\x00" + hashlib.sha256(spki).digest() + NONCE + GPU_DIGEST
    ).digest()
    assert expected_report_data(spki, NONCE, gpu_digest=GPU_DIGEST) == want
    assert report_data_for_key_hash(hashlib.sha256(spki).digest(), NONCE, gpu_digest=GPU_DIGEST) == want
    # With and without GPUs never collide: the GPU form has its own tag.
    assert expected_report_data(spki, NONCE) != want


def test_the_key_hash_form_matches_the_spki_form(spki: bytes) -> None:
    want = hashlib.sha512(b"tdxattest/tls-binding/v1\x00" + KEY_HASH + NONCE).digest()
    assert report_data_for_key_hash(KEY_HASH, NONCE) == want
    assert report_data_for_key_hash(hashlib.sha256(spki).digest(), NONCE) == expected_report_data(spki, NONCE)


def test_the_gpu_nonce_layout_is_tag_keyhash_nonce() -> None:
    want = hashlib.sha256(b"tdxattest/gpu-nonce/v1\x00" + KEY_HASH + NONCE).digest()
    assert gpu_nonce(KEY_HASH, NONCE) == want and len(want) == 32
    assert gpu_nonce(KEY_HASH, NONCE[::-1]) != want


@pytest.mark.parametrize("n", [16, 64])
def test_nonces_at_the_bounds_are_taken(spki: bytes, n: int) -> None:
    nonce = b"\x01" * n
    assert (
        expected_report_data(spki, nonce) == hashlib.sha512(DOMAIN_TAG + hashlib.sha256(spki).digest() + nonce).digest()
    )
    assert len(gpu_nonce(KEY_HASH, nonce)) == 32


@pytest.mark.parametrize("n", [15, 65])
def test_a_nonce_outside_the_bounds_is_refused_with_its_length(n: int) -> None:
    for call in (report_data_for_key_hash, gpu_nonce):
        err = _refusal(call, KEY_HASH, b"x" * n)
        assert (err.expected, err.seen) == ("a nonce of 16..64 bytes", f"{n} bytes")


@pytest.mark.parametrize("n", [31, 33])
def test_a_key_hash_of_the_wrong_length_is_refused(n: int) -> None:
    err = _refusal(report_data_for_key_hash, b"k" * n, NONCE)
    assert (err.expected, err.seen) == ("a SHA-256 of the TLS key of 32 bytes", f"{n} bytes")


@pytest.mark.parametrize("n", [0, 31, 33])
def test_a_gpu_digest_of_the_wrong_length_is_refused(spki: bytes, n: int) -> None:
    err = _refusal(expected_report_data, spki, NONCE, gpu_digest=b"d" * n)
    assert (err.expected, err.seen) == ("a GPU evidence digest of 32 bytes", f"{n} bytes")
    err = _refusal(response_report_data, BODY_SHA, "resp-1", gpu_digest=b"d" * n)
    assert (err.expected, err.seen) == ("a GPU evidence digest of 32 bytes", f"{n} bytes")


def test_a_gpu_digest_with_another_tag_is_refused() -> None:
    # The GPU binding has its own tag; taking a caller's tag with a digest would let one binding
    # be read as another.
    err = _refusal(report_data_for_key_hash, KEY_HASH, NONCE, b"other\x00", GPU_DIGEST)
    assert err.expected == "no other tag with a GPU digest (the GPU binding has its own)"
    assert err.seen == repr(b"other\x00")
    long_tag = b"t" * 100
    assert _refusal(report_data_for_key_hash, KEY_HASH, NONCE, long_tag, GPU_DIGEST).seen == repr(long_tag)[:80]


def test_a_pem_certificate_with_leading_whitespace_is_read_as_pem() -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    key = ec.generate_private_key(ec.SECP256R1())
    cert = certificate("td", key, "td", key, ca=False)
    assert spki_der(b"\n  " + cert.public_bytes(Encoding.PEM)) == spki_der(key.public_key())


def test_the_response_binding_layouts() -> None:
    rid = "chatcmpl-42"
    assert (
        response_report_data(BODY_SHA, rid)
        == hashlib.sha512(b"tdxattest/response-binding/v1\x00" + BODY_SHA + rid.encode()).digest()
    )
    assert (
        response_report_data(BODY_SHA, rid, GPU_DIGEST)
        == hashlib.sha512(b"tdxattest/response-gpu-binding/v1\x00" + BODY_SHA + rid.encode() + GPU_DIGEST).digest()
    )
    assert (
        response_gpu_nonce(BODY_SHA, rid)
        == hashlib.sha256(b"tdxattest/response-gpu-nonce/v1\x00" + BODY_SHA + rid.encode()).digest()
    )


@pytest.mark.parametrize("n", [0, 31, 33])
def test_a_request_body_digest_of_the_wrong_length_is_refused(n: int) -> None:
    for call in (response_report_data, response_gpu_nonce):
        err = _refusal(call, b"b" * n, "resp-1")
        assert (err.expected, err.seen) == ("a SHA-256 digest of 32 bytes", f"{n} bytes")


def test_a_refused_response_id_is_shown_shortened() -> None:
    long_id = "x" * 200
    err = _refusal(response_report_data, BODY_SHA, long_id)
    assert err.expected == "a printable ASCII response id of 1..128 characters"
    assert err.seen == repr(long_id)[:80] and len(err.seen) == 80
