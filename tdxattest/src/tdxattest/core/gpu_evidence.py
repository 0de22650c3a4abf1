"""NVIDIA Hopper GPU attestation evidence: SPDM 1.1 GET_MEASUREMENTS request + MEASUREMENTS response,
signed by the GPU's attestation key (ECDSA P-384, SHA-384), whose certificate chains to the NVIDIA
Device Identity CA.

    evidence = verify_gpu_evidence(report_bytes_or_hex, chain_pem, root_pem, expected_nonce=None)

Checks (each failure a named `GpuEvidenceError`): the report parses (`gpu.report_malformed`), the
chain has a signing leaf and a root (`gpu.chain_too_short`), the leaf carries the FWID extension
(`gpu.leaf_missing_fwid`), each link is signed by the next and valid now (`gpu.chain_invalid`),
the chain ends at the pinned root (`gpu.untrusted_root`), the signature over request ||
response-without-signature verifies under the leaf key (`gpu.signature_invalid`), and the nonce is
the one we sent (`gpu.nonce_mismatch`), and the FWID the GPU put in the signed opaque data is its
certificate's (`gpu.fwid_mismatch`). The policy over verified evidence (CC mode, VBIOS and driver
pins, reference measurements) is `tdxattest.core.gpu_policy`. Not done here: RIMs, OCSP, NRAS.

Layout: request = 0x11 0xE0 param1 param2 | nonce[32] | slot (37 bytes). Response = 0x11 0x60 param1
param2 | number of blocks u8 | record length u24 | record | nonce[32] | opaque length u16 | opaque |
signature[96]. Record = blocks of index u8, spec u8, size u16, then (DMTF) value type u8, value
size u16, value. Lengths are walked, never taken from the end: one capture has a trailing byte.
Opaque data = fields of type u16, size u16, value (NVIDIA's OpaqueData layout, as its local verifier
and trustee's `deps/verifier/src/nvidia/report.rs` read it): 3 is the driver version (NUL-terminated
ASCII), 6 the VBIOS version (8 bytes: a little-endian u32 printed as four bytes, then the OEM byte:
009f0096 01 -> 96.00.9f.00.01), 20 the FWID.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tdxattest.core.certs import ecdsa_valid, first_break, raw_extension

if TYPE_CHECKING:  # cryptography is imported inside the functions that use it (CLI start-up time)
    from cryptography import x509

FWID_OID = "2.23.133.5.4.1"  # TCG DICE TcbInfo (carries the FWID)
# SHA-256 of the DER of "CN=NVIDIA Device Identity CA, O=NVIDIA" (P-384, valid to 9999-12-31), the
# root every Hopper attestation chain ends at (NVIDIA's nvtrust verifier ships the same certificate).
# With no root given, a chain's own last certificate is the root if it has this fingerprint.
NVIDIA_DEVICE_ROOT_SHA256 = "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"
REQUEST_LEN = 37
SIGNATURE_LEN = 96
OPAQUE_DRIVER_VERSION = 3
OPAQUE_VBIOS_VERSION = 6
OPAQUE_FWID = 20


class GpuEvidenceError(Exception):
    def __init__(self, check: str, expected: str, seen: str):
        self.check, self.expected, self.seen = check, expected, seen
        super().__init__(f"{check}: expected {expected}, seen {seen}")


@dataclass(frozen=True)
class MeasurementBlock:
    index: int
    spec: int
    value_type: int
    value: bytes


@dataclass(frozen=True)
class GpuReport:
    request: bytes
    response_signed: bytes  # the response without its signature
    nonce: bytes  # the requester's nonce (from the request)
    responder_nonce: bytes
    measurements: tuple[MeasurementBlock, ...]
    opaque: bytes
    signature: bytes
    trailing: int
    opaque_fields: Mapping[int, bytes]  # `opaque` by field type, parsed once (parse_opaque)

    def measurement_dict(self) -> dict[int, str]:
        return {b.index: b.value.hex() for b in self.measurements}

    @property
    def driver_version(self) -> str | None:
        raw = self.opaque_fields.get(OPAQUE_DRIVER_VERSION)
        return None if raw is None else raw.split(b"\0", 1)[0].decode("ascii", "replace")

    @property
    def vbios_version(self) -> str | None:
        raw = self.opaque_fields.get(OPAQUE_VBIOS_VERSION)
        if raw is None or len(raw) < 5:
            return None
        return f"{raw[3]:02x}.{raw[2]:02x}.{raw[1]:02x}.{raw[0]:02x}.{raw[4]:02x}"

    @property
    def fwid(self) -> bytes | None:
        return self.opaque_fields.get(OPAQUE_FWID)


def parse_opaque(opaque: bytes) -> dict[int, bytes]:
    """The opaque data's fields by type (the first of a repeated type). Linear; raises on a field
    that runs past the end."""
    fields: dict[int, bytes] = {}
    p = 0
    while p < len(opaque):
        if p + 4 > len(opaque):
            raise GpuEvidenceError("gpu.report_malformed", "an opaque field header", f"{len(opaque) - p} bytes")
        kind, size = struct.unpack_from("<HH", opaque, p)
        if p + 4 + size > len(opaque):
            raise GpuEvidenceError(
                "gpu.report_malformed", f"a {size}-byte opaque field {kind}", f"{len(opaque) - p - 4} bytes"
            )
        fields.setdefault(kind, opaque[p + 4 : p + 4 + size])
        p += 4 + size
    return fields


def normalise_version(text: str) -> str:
    """VBIOS and driver versions compare case-insensitively (NVIDIA prints 96.00.9F.00.01, the report
    decodes to 96.00.9f.00.01)."""
    return text.strip().lower()


def _hex_or_bytes(data: bytes | str) -> bytes:
    if isinstance(data, str):
        data = data.encode()
    s = data.strip()
    try:
        return bytes.fromhex(s.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return bytes(data)


def parse_gpu_report(data: bytes | str) -> GpuReport:
    raw = _hex_or_bytes(data)

    def need(pos: int, n: int, what: str) -> None:
        if pos + n > len(raw):
            raise GpuEvidenceError("gpu.report_malformed", f"{what} at offset {pos}", f"{len(raw)} bytes in all")

    need(0, REQUEST_LEN, "a 37-byte GET_MEASUREMENTS request")
    if raw[0] != 0x11 or raw[1] != 0xE0:
        raise GpuEvidenceError("gpu.report_malformed", "SPDM 1.1 GET_MEASUREMENTS (11 e0)", raw[:2].hex())
    request = raw[:REQUEST_LEN]
    nonce = request[4:36]
    pos = REQUEST_LEN
    need(pos, 8, "the MEASUREMENTS response header")
    if raw[pos] != 0x11 or raw[pos + 1] != 0x60:
        raise GpuEvidenceError("gpu.report_malformed", "SPDM 1.1 MEASUREMENTS (11 60)", raw[pos : pos + 2].hex())
    count = raw[pos + 4]
    rec_len = int.from_bytes(raw[pos + 5 : pos + 8], "little")
    rpos = pos + 8
    need(rpos, rec_len, f"a {rec_len}-byte measurement record")
    blocks = []
    indices: set[int] = set()
    p, end = rpos, rpos + rec_len
    while p < end:
        if p + 4 > end:
            raise GpuEvidenceError("gpu.report_malformed", "a measurement block header", f"{end - p} bytes")
        index, spec, size = struct.unpack_from("<BBH", raw, p)
        if p + 4 + size > end or size < 3:
            raise GpuEvidenceError("gpu.report_malformed", f"a {size}-byte measurement block", f"{end - p - 4} bytes")
        vtype, vsize = struct.unpack_from("<BH", raw, p + 4)
        if vsize != size - 3:
            raise GpuEvidenceError(
                "gpu.report_malformed", f"block {index}'s value filling its {size - 3} bytes", f"{vsize} bytes"
            )
        if index in indices:
            raise GpuEvidenceError("gpu.report_malformed", "one measurement block per index", f"block {index} twice")
        indices.add(index)
        blocks.append(MeasurementBlock(index, spec, vtype, raw[p + 7 : p + 7 + vsize]))
        p += 4 + size
    if len(blocks) != count:
        raise GpuEvidenceError("gpu.report_malformed", f"{count} measurement blocks", str(len(blocks)))
    p = end
    need(p, 34, "responder nonce and opaque length")
    responder_nonce = raw[p : p + 32]
    (olen,) = struct.unpack_from("<H", raw, p + 32)
    need(p + 34, olen + SIGNATURE_LEN, f"{olen} bytes of opaque data and a 96-byte signature")
    opaque = raw[p + 34 : p + 34 + olen]
    fields = parse_opaque(opaque)  # malformed opaque data is a malformed report, refused here
    sig_at = p + 34 + olen
    return GpuReport(
        request=request,
        response_signed=raw[REQUEST_LEN:sig_at],
        nonce=nonce,
        responder_nonce=responder_nonce,
        measurements=tuple(blocks),
        opaque=opaque,
        signature=raw[sig_at : sig_at + SIGNATURE_LEN],
        trailing=len(raw) - sig_at - SIGNATURE_LEN,
        opaque_fields=fields,
    )


def device_identity(chain_pem: bytes | str) -> bytes:
    """SHA-256 over the DER of every certificate of a device chain: the same device, however its
    PEM is laid out (line lengths, blank lines)."""
    return _identity(_load_certs(chain_pem))


def _identity(certs: list[x509.Certificate] | tuple[x509.Certificate, ...]) -> bytes:
    import hashlib

    from cryptography.hazmat.primitives.serialization import Encoding

    h = hashlib.sha256()
    for cert in certs:
        h.update(cert.public_bytes(Encoding.DER))
    return h.digest()


def _load_certs(pem: bytes | str) -> list[x509.Certificate]:
    from cryptography import x509

    if isinstance(pem, str):
        pem = pem.encode()
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise GpuEvidenceError("gpu.chain_invalid", "a PEM certificate chain", str(exc)) from None


def _fwid(cert: x509.Certificate) -> bytes | None:
    raw = raw_extension(cert, FWID_OID)
    return None if raw is None else raw[-48:]


def _leaf_fwid(leaf: x509.Certificate) -> bytes:
    fwid = _fwid(leaf)
    if fwid is None:
        raise GpuEvidenceError(
            "gpu.leaf_missing_fwid",
            f"FWID extension {FWID_OID} in the signing certificate",
            leaf.subject.rfc4514_string(),
        )
    return fwid


@dataclass(frozen=True)
class GpuEvidence:
    report: GpuReport
    fwid: bytes
    leaf_subject: str
    chain: tuple[x509.Certificate, ...] = ()  # leaf first, the root last (for OCSP)

    @property
    def device(self) -> bytes:
        """The device's identity (`device_identity` of its verified chain)."""
        return _identity(self.chain)

    def as_dict(self) -> dict[str, Any]:
        return {
            "nonce": self.report.nonce.hex(),
            "fwid": self.fwid.hex(),
            "leaf": self.leaf_subject,
            "driver_version": self.report.driver_version,
            "vbios_version": self.report.vbios_version,
            "measurements": {str(k): v for k, v in self.report.measurement_dict().items()},
            "trailing_bytes": self.report.trailing,
        }


def _pinned_root(certs: list[x509.Certificate]) -> x509.Certificate:
    """The chain's last certificate, if it is the NVIDIA Device Identity CA by fingerprint."""
    from cryptography.hazmat.primitives import hashes

    last = certs[-1]
    seen = last.fingerprint(hashes.SHA256()).hex()
    if seen != NVIDIA_DEVICE_ROOT_SHA256:
        raise GpuEvidenceError(
            "gpu.untrusted_root",
            f"chain ending at the NVIDIA Device Identity CA (DER SHA-256 {NVIDIA_DEVICE_ROOT_SHA256})",
            f"{last.subject.rfc4514_string()} (DER SHA-256 {seen})",
        )
    return last


def verify_gpu_chain(
    chain_pem: bytes | str, root_pem: bytes | str | None, now: float | None = None
) -> list[x509.Certificate]:
    """Verify leaf -> ... -> NVIDIA device root; returns the certificates (leaf first). `root_pem`
    None: the root is pinned by fingerprint (NVIDIA_DEVICE_ROOT_SHA256)."""
    import time

    now = time.time() if now is None else now
    certs = _load_certs(chain_pem)
    if len(certs) < 2:
        raise GpuEvidenceError(
            "gpu.chain_too_short", "at least the signing certificate and the root CA", f"{len(certs)} certificate(s)"
        )
    if root_pem is None:
        root = _pinned_root(certs)
    else:
        roots = _load_certs(root_pem)
        if len(roots) != 1:
            raise GpuEvidenceError("gpu.untrusted_root", "one pinned root certificate", f"{len(roots)}")
        root = roots[0]
        if certs[-1] != root:
            raise GpuEvidenceError(
                "gpu.untrusted_root",
                f"chain ending at {root.subject.rfc4514_string()}",
                certs[-1].subject.rfc4514_string(),
            )
    _leaf_fwid(certs[0])
    broken = first_break(certs, root, now)
    if broken is not None:
        raise GpuEvidenceError("gpu.chain_invalid", broken.expected(now), broken.problem)
    return certs


def verify_gpu_evidence(
    report: bytes | str,
    chain_pem: bytes | str,
    root_pem: bytes | str | None,
    expected_nonce: bytes | None = None,
    now: float | None = None,
) -> GpuEvidence:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    parsed = parse_gpu_report(report)
    certs = verify_gpu_chain(chain_pem, root_pem, now)
    sig = encode_dss_signature(
        int.from_bytes(parsed.signature[:48], "big"), int.from_bytes(parsed.signature[48:], "big")
    )
    if not ecdsa_valid(certs[0].public_key(), sig, parsed.request + parsed.response_signed, hashes.SHA384()):
        raise GpuEvidenceError(
            "gpu.signature_invalid",
            "report signed by the leaf's key (ECDSA P-384/SHA-384)",
            "signature does not verify",
        )
    if expected_nonce is not None and not hmac.compare_digest(parsed.nonce, expected_nonce):
        raise GpuEvidenceError("gpu.nonce_mismatch", expected_nonce.hex(), parsed.nonce.hex())
    fwid = _leaf_fwid(certs[0])
    signed_fwid = parsed.fwid
    if signed_fwid != fwid:
        seen = signed_fwid.hex() if signed_fwid is not None else "no FWID field (20) in the signed opaque data"
        raise GpuEvidenceError("gpu.fwid_mismatch", f"the signing certificate's FWID {fwid.hex()}", seen)
    return GpuEvidence(report=parsed, fwid=fwid, leaf_subject=certs[0].subject.rfc4514_string(), chain=tuple(certs))
