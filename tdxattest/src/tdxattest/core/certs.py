"""Two X.509 rules every verifier here shares (cryptography is imported only when they run).

Every key in the chains we accept — Intel's PCS chains and NVIDIA's device chains — is ECDSA, so a
signature under any other key type is simply not a valid signature: `ecdsa_valid` says False
instead of letting the library raise TypeError. And the extensions we read (Intel's SGX extension,
the TCG DICE FWID) have no parser in cryptography: `raw_extension` hands back their DER.
"""

from __future__ import annotations

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
