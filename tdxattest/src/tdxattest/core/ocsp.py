"""OCSP status of the NVIDIA device chain's CA certificates (RFC 6960), checked from DER responses.

NVIDIA's responder serves the intermediate certificates of a GPU's chain (the BROM certificate, the
provisioner ICA, the GH100 Identity CA) and not the per-GPU leaf, whose status is its issuers'. So
`checked_pairs(chain)` is every (certificate, issuer) below the root except the leaf.

    der = ocsp_request(cert, issuer)                    # what to POST to the responder
    status = check_response(resp_der, cert, issuer, now) # OcspError naming the check, or GOOD's times

A response counts only when it is successful, about this certificate (serial, issuer name and key
hashes), signed by the issuer or by a responder certificate the issuer signed for OCSP signing, and
current (thisUpdate <= now < nextUpdate). Pure: no I/O (dcap.ocsp_cache fetches and keeps them).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tdxattest.core.certs import ecdsa_valid, signature_hash
from tdxattest.core.gpu_evidence import GpuEvidenceError

if TYPE_CHECKING:
    from cryptography import x509

MAX_RESPONSE_BYTES = 64 * 1024


class OcspError(GpuEvidenceError):
    """A status that cannot be had or is not GOOD: a refusal named `gpu.ocsp_*` / `gpu.cert_revoked`."""


@dataclass(frozen=True)
class OcspStatus:
    subject: str
    this_update: float
    next_update: float


def checked_pairs(chain: list[x509.Certificate]) -> list[tuple[x509.Certificate, x509.Certificate]]:
    """(certificate, issuer) for each certificate between the leaf and the root."""
    return list(itertools.pairwise(chain[1:]))


def ocsp_request(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp

    req = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA256()).build()
    return req.public_bytes(serialization.Encoding.DER)


def _signed_by(resp, key) -> bool:  # type: ignore[no-untyped-def]
    return ecdsa_valid(key, resp.signature, resp.tbs_response_bytes, signature_hash(resp))


def check_response(der: bytes, cert: x509.Certificate, issuer: x509.Certificate, now: float) -> OcspStatus:
    from cryptography.x509 import ExtendedKeyUsage, ExtendedKeyUsageOID, ExtensionNotFound, ocsp

    subject = cert.subject.rfc4514_string()
    if len(der) > MAX_RESPONSE_BYTES:
        raise OcspError("gpu.ocsp_invalid", f"an OCSP response of at most {MAX_RESPONSE_BYTES} bytes", f"{len(der)}")
    try:
        resp = ocsp.load_der_ocsp_response(der)
    except ValueError as exc:
        raise OcspError("gpu.ocsp_invalid", f"a DER OCSP response for {subject}", str(exc)[:120]) from None
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OcspError("gpu.ocsp_invalid", f"a successful OCSP response for {subject}", resp.response_status.name)
    single = next(iter(resp.responses), None)
    if single is None or single.serial_number != cert.serial_number:
        raise OcspError("gpu.ocsp_invalid", f"a status for serial {cert.serial_number}", "another certificate")
    probe = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, single.hash_algorithm).build()
    if (single.issuer_name_hash, single.issuer_key_hash) != (probe.issuer_name_hash, probe.issuer_key_hash):
        raise OcspError("gpu.ocsp_invalid", f"a status about {subject} under its issuer", "another issuer")
    signer_ok = _signed_by(resp, issuer.public_key())
    if not signer_ok:
        # A delegated responder: its certificate is in the response, issued by the issuer for OCSP.
        for responder in resp.certificates:
            try:
                eku = responder.extensions.get_extension_for_class(ExtendedKeyUsage).value
            except (ExtensionNotFound, ValueError):  # not a (well-formed) responder certificate
                continue
            if (
                ExtendedKeyUsageOID.OCSP_SIGNING in eku
                and responder.issuer == issuer.subject
                and ecdsa_valid(
                    issuer.public_key(),
                    responder.signature,
                    responder.tbs_certificate_bytes,
                    signature_hash(responder),
                )
                and responder.not_valid_before_utc.timestamp() <= now <= responder.not_valid_after_utc.timestamp()
                and _signed_by(resp, responder.public_key())
            ):
                signer_ok = True
                break
    if not signer_ok:
        raise OcspError(
            "gpu.ocsp_invalid",
            f"a response signed by {issuer.subject.rfc4514_string()} or its OCSP responder",
            "a signature by neither",
        )
    this_update = single.this_update_utc.timestamp()
    next_update = single.next_update_utc.timestamp() if single.next_update_utc else this_update
    if not this_update <= now < next_update:
        raise OcspError(
            "gpu.ocsp_stale",
            f"a status current at {int(now)} for {subject}",
            f"thisUpdate {int(this_update)} .. nextUpdate {int(next_update)}",
        )
    if single.certificate_status != ocsp.OCSPCertStatus.GOOD:
        reason = single.revocation_reason.name if single.revocation_reason else "no reason given"
        raise OcspError(
            "gpu.cert_revoked", f"{subject} in good standing", f"{single.certificate_status.name} ({reason})"
        )
    return OcspStatus(subject, this_update, next_update)
