"""The X.509 rules every verifier here shares (cryptography is imported only when they run).

Every key in the chains we accept — Intel's PCS chains, NVIDIA's device and RIM chains — is ECDSA,
so a signature under any other key type is simply not a valid signature: `ecdsa_valid` says False
instead of letting the library raise TypeError. Every chain is walked the same way, leaf to root,
each link issued and signed by the next and valid at the verification time: `first_break` finds the
first link that is not, and each caller names it in its own terms. And the extensions we read
(Intel's SGX extension, the TCG DICE FWID) have no parser in cryptography: `raw_extension` hands
back their DER.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes


def ecdsa_valid(
    key: CertificatePublicKeyTypes, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm | None
) -> bool:
    """True when `signature` (DER ECDSA) over `data` verifies under `key`; False for a bad signature,
    a key that is not EC, or no hash algorithm."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key, ec.EllipticCurvePublicKey) or algorithm is None:
        return False
    try:
        key.verify(signature, data, ec.ECDSA(algorithm))
    except InvalidSignature:
        return False
    return True


def signature_hash(signed: object) -> hashes.HashAlgorithm | None:
    """The hash algorithm of a certificate's, CRL's or OCSP response's signature; None when
    cryptography does not know it (an unknown OID from the network is a bad signature, not a crash)."""
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        algorithm = signed.signature_hash_algorithm  # type: ignore[attr-defined]
    except (UnsupportedAlgorithm, ValueError):
        return None
    return algorithm  # type: ignore[no-any-return]


def _is_ca(cert: x509.Certificate) -> bool:
    from cryptography import x509

    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError):
        return False


@dataclass(frozen=True)
class ChainBreak:
    # "signature": not issued or signed by the next; "ca": the next is not a CA (basicConstraints);
    # "validity": not valid at the time
    kind: str
    cert: x509.Certificate
    issuer: x509.Certificate

    def expected(self, now: float) -> str:
        """What the verifier wanted of this link, for the refusal's `expected`."""
        import time

        subject = self.cert.subject.rfc4514_string()
        if self.kind == "validity":
            return f"{subject} valid at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now))}"
        return f"{subject} issued and signed by the CA {self.issuer.subject.rfc4514_string()}"

    @property
    def problem(self) -> str:
        """What was seen instead, for the refusal's `seen`."""
        if self.kind == "ca":
            return f"{self.issuer.subject.rfc4514_string()} is not a CA (basicConstraints)"
        if self.kind == "signature":
            return f"issuer {self.cert.issuer.rfc4514_string()}, or a signature that does not verify"
        return f"valid {self.validity}"

    @property
    def validity(self) -> str:
        return (
            f"{self.cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} .. {self.cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
        )


def first_break(certs: list[x509.Certificate], root: x509.Certificate, now: float) -> ChainBreak | None:
    """The first link of `certs` (leaf first; the root last, or given apart) that is not issued and
    ECDSA-signed by the next one (the last by `root`), whose issuer is not a CA, or that is not
    valid at `now`; None when none is."""
    for cert, issuer in zip(certs, [*certs[1:], root], strict=True):
        if cert.issuer != issuer.subject or not ecdsa_valid(
            issuer.public_key(), cert.signature, cert.tbs_certificate_bytes, signature_hash(cert)
        ):
            return ChainBreak("signature", cert, issuer)
        if not _is_ca(issuer):
            return ChainBreak("ca", cert, issuer)
        if not cert.not_valid_before_utc.timestamp() <= now <= cert.not_valid_after_utc.timestamp():
            return ChainBreak("validity", cert, issuer)
    return None


def raw_extension(cert: x509.Certificate, oid: str) -> bytes | None:
    """The DER value of the extension `oid`, or None when the certificate has none."""
    from cryptography import x509

    try:
        value = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid)).value
    except x509.ExtensionNotFound:
        return None
    if not isinstance(value, x509.UnrecognizedExtension):
        # Only reachable for an OID cryptography knows how to parse, which none of ours is.
        raise TypeError(f"extension {oid} as raw DER, not {type(value).__name__}")
    return value.value
