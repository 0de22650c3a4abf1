"""Channel binding: REPORTDATA = SHA-512(domain tag || SHA-256(TLS SPKI DER) || client nonce).

The TD puts this in its quote's REPORTDATA; the verifying proxy recomputes it from the TLS peer's
SubjectPublicKeyInfo and the nonce it sent, and compares in constant time. The domain tag keeps
this hash from being confused with any other use of REPORTDATA.
"""

from __future__ import annotations

import hashlib

from tdxattest.core.errors import InputError

DOMAIN_TAG = b"tdxattest/tls-binding/v1\x00"
MIN_NONCE = 16
MAX_NONCE = 64


def spki_der(key_or_cert) -> bytes:
    """SubjectPublicKeyInfo DER of a `cryptography` certificate, public key, or PEM/DER cert bytes."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    if isinstance(key_or_cert, (bytes, bytearray)):
        data = bytes(key_or_cert)
        key_or_cert = (
            x509.load_pem_x509_certificate(data)
            if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_certificate(data)
        )
    if isinstance(key_or_cert, x509.Certificate):
        key_or_cert = key_or_cert.public_key()
    return key_or_cert.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _check_nonce(nonce: bytes) -> None:
    if not MIN_NONCE <= len(nonce) <= MAX_NONCE:
        raise InputError(f"a nonce of {MIN_NONCE}..{MAX_NONCE} bytes", f"{len(nonce)} bytes")


def expected_report_data(spki: bytes, nonce: bytes, tag: bytes = DOMAIN_TAG) -> bytes:
    """The 64-byte REPORTDATA binding a TLS key (SPKI DER) and a client nonce."""
    _check_nonce(nonce)
    return hashlib.sha512(tag + hashlib.sha256(spki).digest() + nonce).digest()


# Per-response binding (`x-attestation: required`): the gateway quotes over the request it served,
# REPORTDATA = SHA-512(RESPONSE_TAG || SHA-256(request body) || response id). A different tag from
# the TLS binding, so a quote made for one purpose can never be replayed as the other.
RESPONSE_TAG = b"tdxattest/response-binding/v1\x00"
MAX_RESPONSE_ID = 128


def response_report_data(request_body_sha256: bytes, response_id: str) -> bytes:
    """The 64-byte REPORTDATA binding one request body (its SHA-256) to the response id the TD gave it."""
    if len(request_body_sha256) != 32:
        raise InputError("a SHA-256 digest of 32 bytes", f"{len(request_body_sha256)} bytes")
    rid = response_id.encode("ascii", "strict") if response_id.isascii() else b""
    if not 0 < len(rid) <= MAX_RESPONSE_ID:
        raise InputError(f"a printable ASCII response id of 1..{MAX_RESPONSE_ID} characters", repr(response_id)[:80])
    return hashlib.sha512(RESPONSE_TAG + request_body_sha256 + rid).digest()
