"""Channel binding: REPORTDATA = SHA-512(domain tag || SHA-256(TLS SPKI DER) || client nonce), and
with GPUs, SHA-512(GPU tag || SHA-256(TLS SPKI DER) || client nonce || GPU evidence digest).

The TD puts this in its quote's REPORTDATA; the verifying proxy recomputes it from the TLS peer's
SubjectPublicKeyInfo and the nonce it sent, and compares in constant time. The domain tags keep
this hash from being confused with any other use of REPORTDATA, and a GPU-less binding from being
read as one with GPUs. The GPUs sign their reports over `gpu_nonce(...)`, derived from the same TLS
key and client nonce, so a report made for one connection fails on any other; the quote binds the
digest of the served evidence (`core.gpu_policy.EvidenceDoc.digest`), so a report cannot be swapped
for another GPU's. The nonce is variable-length, but every other part has a fixed length, so the
concatenations are unambiguous.
"""

from __future__ import annotations

import hashlib

from tdxattest.core.errors import InputError

DOMAIN_TAG = b"tdxattest/tls-binding/v1\x00"
GPU_TAG = b"tdxattest/tls-gpu-binding/v1\x00"
GPU_NONCE_TAG = b"tdxattest/gpu-nonce/v1\x00"
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


def expected_report_data(spki: bytes, nonce: bytes, tag: bytes = DOMAIN_TAG, gpu_digest: bytes | None = None) -> bytes:
    """The 64-byte REPORTDATA binding a TLS key (SPKI DER), a client nonce and, with GPUs, the
    digest of the GPU evidence served with the quote."""
    return report_data_for_key_hash(hashlib.sha256(spki).digest(), nonce, tag, gpu_digest)


def report_data_for_key_hash(
    spki_sha256: bytes, nonce: bytes, tag: bytes = DOMAIN_TAG, gpu_digest: bytes | None = None
) -> bytes:
    """`expected_report_data` from the key's SHA-256 (what an offline check of a recorded
    attestation has: its `tls_spki_sha256`)."""
    _check_nonce(nonce)
    if len(spki_sha256) != 32:
        raise InputError("a SHA-256 of the TLS key of 32 bytes", f"{len(spki_sha256)} bytes")
    if gpu_digest is None:
        return hashlib.sha512(tag + spki_sha256 + nonce).digest()
    if tag != DOMAIN_TAG:
        raise InputError("no other tag with a GPU digest (the GPU binding has its own)", repr(tag)[:80])
    if len(gpu_digest) != 32:
        raise InputError("a GPU evidence digest of 32 bytes", f"{len(gpu_digest)} bytes")
    return hashlib.sha512(GPU_TAG + spki_sha256 + nonce + gpu_digest).digest()


def gpu_nonce(spki_sha256: bytes, nonce: bytes) -> bytes:
    """The 32-byte nonce the TD's GPUs sign their reports over, for one TLS key and client nonce."""
    _check_nonce(nonce)
    return hashlib.sha256(GPU_NONCE_TAG + spki_sha256 + nonce).digest()


# Per-response binding (`x-attestation: required`): the gateway quotes over the request it served,
# REPORTDATA = SHA-512(RESPONSE_TAG || SHA-256(request body) || response id). A different tag from
# the TLS binding, so a quote made for one purpose can never be replayed as the other.
# With GPUs the response also carries `x-tdx-gpu-evidence` (the evidence over
# response_gpu_nonce(...)) and the quote binds its digest after the response id.
RESPONSE_TAG = b"tdxattest/response-binding/v1\x00"
RESPONSE_GPU_TAG = b"tdxattest/response-gpu-binding/v1\x00"
RESPONSE_GPU_NONCE_TAG = b"tdxattest/response-gpu-nonce/v1\x00"
MAX_RESPONSE_ID = 128


def _response_parts(request_body_sha256: bytes, response_id: str) -> bytes:
    if len(request_body_sha256) != 32:
        raise InputError("a SHA-256 digest of 32 bytes", f"{len(request_body_sha256)} bytes")
    rid = response_id.encode("ascii", "strict") if response_id.isascii() and response_id.isprintable() else b""
    if not 0 < len(rid) <= MAX_RESPONSE_ID:
        raise InputError(f"a printable ASCII response id of 1..{MAX_RESPONSE_ID} characters", repr(response_id)[:80])
    return request_body_sha256 + rid


def response_report_data(request_body_sha256: bytes, response_id: str, gpu_digest: bytes | None = None) -> bytes:
    """The 64-byte REPORTDATA binding one request body (its SHA-256) to the response id the TD gave
    it, and with GPUs, to the digest of the GPU evidence made for that response."""
    parts = _response_parts(request_body_sha256, response_id)
    if gpu_digest is None:
        return hashlib.sha512(RESPONSE_TAG + parts).digest()
    if len(gpu_digest) != 32:
        raise InputError("a GPU evidence digest of 32 bytes", f"{len(gpu_digest)} bytes")
    return hashlib.sha512(RESPONSE_GPU_TAG + parts + gpu_digest).digest()


def response_gpu_nonce(request_body_sha256: bytes, response_id: str) -> bytes:
    """The 32-byte nonce the GPUs sign over for one response."""
    return hashlib.sha256(RESPONSE_GPU_NONCE_TAG + _response_parts(request_body_sha256, response_id)).digest()
