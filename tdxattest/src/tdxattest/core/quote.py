"""A full reader for TDX DCAP quotes (v4 and v5): header, TD report body (1.0 and 1.5),
signature data, QE report and the PEM PCK chain, plus the FMSPC from the PCK leaf.

Parsing is NOT verification: nothing here checks a signature, a certificate or a TCB level.
`tdxattest.verify` verifies with dcap-qvl and takes the fields it reports from the verified
result; this module serves display, error reports on refused quotes and collateral look-ups
(FMSPC, CA type).

Layout (little-endian): 48-byte header (u16 version, u16 attestation key type, u32 TEE type,
u16 QE SVN, u16 PCE SVN, 16-byte QE vendor id, 20-byte user data). v4: the TD report body at 48.
v5: u16 body type (2 = TD report 1.0 / 584 B, 3 = TD report 1.5 / 648 B) and u32 body size at 48,
body at 54. Then u32 signature-data length, 64-byte quote signature, 64-byte attestation key,
certification data (type 6 = QE report certification data: 384-byte QE report, 64-byte QE report
signature, u16 + QE auth data, then inner certification data type 5 = PEM PCK chain).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tdxattest.core.errors import InputError, show_bytes

HEADER_SIZE = 48
TEE_TYPE_TDX = 0x81
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
TD_REPORT10_SIZE = 584
TD_REPORT15_SIZE = 648
V5_BODY_TYPES = {2: TD_REPORT10_SIZE, 3: TD_REPORT15_SIZE}
QE_REPORT_SIZE = 384
CERT_TYPE_QE_REPORT = 6
CERT_TYPE_PCK_CHAIN = 5
SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
FMSPC_OID = "1.2.840.113741.1.13.1.4"

# TD_ATTRIBUTES bits (64-bit little-endian value).
TD_ATTR_DEBUG = 1 << 0
TD_ATTR_SEPT_VE_DISABLE = 1 << 28
TD_ATTR_PKS = 1 << 30
TD_ATTR_KL = 1 << 31
TD_ATTR_PERFMON = 1 << 63

# TD report body offsets (relative to the body).
_BODY_FIELDS = (
    ("tee_tcb_svn", 0, 16),
    ("mrseam", 16, 48),
    ("mrsignerseam", 64, 48),
    ("seam_attributes", 112, 8),
    ("td_attributes", 120, 8),
    ("xfam", 128, 8),
    ("mrtd", 136, 48),
    ("mrconfigid", 184, 48),
    ("mrowner", 232, 48),
    ("mrownerconfig", 280, 48),
    ("rtmr0", 328, 48),
    ("rtmr1", 376, 48),
    ("rtmr2", 424, 48),
    ("rtmr3", 472, 48),
    ("report_data", 520, 64),
)


def decode_td_attributes(attrs: bytes) -> dict[str, str | bool]:
    """TD_ATTRIBUTES (8 bytes as in the quote) decoded: the named bits and the raw value."""
    value = int.from_bytes(attrs, "little")
    return {
        "hex": attrs.hex(),
        "debug": bool(value & TD_ATTR_DEBUG),
        "sept_ve_disable": bool(value & TD_ATTR_SEPT_VE_DISABLE),
        "pks": bool(value & TD_ATTR_PKS),
        "kl": bool(value & TD_ATTR_KL),
        "perfmon": bool(value & TD_ATTR_PERFMON),
    }


@dataclass(frozen=True)
class TdReport:
    """The TD report body; every field raw bytes. TD report 1.5 adds tee_tcb_svn2 and mr_servicetd."""

    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_servicetd: bytes | None = None

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)

    @property
    def debug(self) -> bool:
        return bool(int.from_bytes(self.td_attributes, "little") & TD_ATTR_DEBUG)

    @property
    def sept_ve_disable(self) -> bool:
        return bool(int.from_bytes(self.td_attributes, "little") & TD_ATTR_SEPT_VE_DISABLE)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name).hex() for name, _, _ in _BODY_FIELDS}
        out["td_attributes_decoded"] = decode_td_attributes(self.td_attributes)
        if self.tee_tcb_svn2 is not None:
            out["tee_tcb_svn2"] = self.tee_tcb_svn2.hex()
            out["mr_servicetd"] = self.mr_servicetd.hex() if self.mr_servicetd is not None else None
        return out


@dataclass(frozen=True)
class QuoteHeader:
    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class Quote:
    header: QuoteHeader
    body_type: int  # 2 = TD report 1.0, 3 = TD report 1.5 (v4 is always 2)
    body_offset: int
    report: TdReport
    signed_length: int  # bytes covered by the quote signature (header + body [+ v5 descriptor])
    signature: bytes
    attestation_key: bytes
    cert_data_type: int
    qe_report: bytes | None
    qe_report_signature: bytes | None
    qe_auth_data: bytes | None
    pck_cert_type: int | None
    pck_chain_pem: bytes | None
    length: int  # bytes the quote declares; anything after this is trailing data
    trailing: int = 0
    _fmspc: list[str | None] = field(default_factory=list, compare=False, repr=False)

    def pck_leaf_der(self) -> bytes | None:
        """The first certificate (the PCK leaf) of the PEM chain as DER."""
        if not self.pck_chain_pem:
            return None
        b64 = _first_cert_b64(self.pck_chain_pem, 0, len(self.pck_chain_pem))
        return _b64_der(b64) if b64 is not None else None

    def pck_chain_ders(self) -> list[bytes]:
        """The certificates of the PEM PCK chain as DER, leaf first (at most MAX_PCK_CHAIN_CERTS)."""
        if not self.pck_chain_pem:
            return []
        return [_b64_der(b64) for b64 in pem_cert_bodies(self.pck_chain_pem)]

    def fmspc(self) -> str | None:
        """FMSPC (upper-case hex) from the PCK leaf's SGX extension, or None when not present."""
        if not self._fmspc:
            ders = self.pck_chain_ders()
            self._fmspc.append(pck_fmspc(ders[0]) if ders else None)
        return self._fmspc[0]

    def pck_ca(self) -> str | None:
        """ "platform" or "processor": which PCK CA issued the leaf (the PCK CRL to fetch)."""
        ders = self.pck_chain_ders()
        if not ders:
            return None
        from cryptography import x509

        issuer = x509.load_der_x509_certificate(ders[0]).issuer.rfc4514_string()
        if "Platform" in issuer:
            return "platform"
        if "Processor" in issuer:
            return "processor"
        return None

    def collateral_key(self) -> tuple[str | None, str]:
        """(FMSPC, PCK CA): which collateral set verifies this quote (the platform CA by default)."""
        return self.fmspc(), self.pck_ca() or "platform"


def _body_location(data: bytes) -> tuple[int, int, int]:
    """(body type, body offset, body size) after checking the header."""
    if len(data) < HEADER_SIZE:
        raise InputError(f"a TDX quote header ({HEADER_SIZE} bytes)", f"{len(data)} bytes", offset=0)
    version, key_type, tee_type = struct.unpack_from("<HHI", data, 0)
    if version not in (4, 5):
        raise InputError("quote version 4 or 5", str(version), offset=0)
    if tee_type != TEE_TYPE_TDX:
        raise InputError(f"TEE type 0x{TEE_TYPE_TDX:x} (TDX)", f"0x{tee_type:x}", offset=4)
    if key_type != 2:
        raise InputError("attestation key type 2 (ECDSA-P256)", str(key_type), offset=2)
    if version == 4:
        return 2, HEADER_SIZE, TD_REPORT10_SIZE
    _need(data, HEADER_SIZE, 6, "a v5 quote body descriptor (6 bytes)")
    body_type, size = struct.unpack_from("<HI", data, HEADER_SIZE)
    if body_type not in V5_BODY_TYPES:
        raise InputError("quote body type 2 or 3 (TD report 1.0 / 1.5)", str(body_type), offset=HEADER_SIZE)
    if size != V5_BODY_TYPES[body_type]:
        raise InputError(
            f"body size {V5_BODY_TYPES[body_type]} for body type {body_type}", str(size), offset=HEADER_SIZE + 2
        )
    return body_type, HEADER_SIZE + 6, size


def read_td_report(data: bytes) -> TdReport:
    """Only the TD report body: the measurement registers without the signature data (the fast path on
    the exact bytes dcap-qvl has just verified, and the reader for event-log replay)."""
    _, body, size = _body_location(data)
    if body + size > len(data):
        _need(data, body, size, f"a {size}-byte TD report body")
    return _td_report(data, body, size)


# The body fields in order, contiguous from offset 0 (checked at import): one struct call reads them all.
_BODY_NAMES = tuple(name for name, _, _ in _BODY_FIELDS)
_BODY10 = struct.Struct("<" + "".join(f"{n}s" for _, _, n in _BODY_FIELDS))
_BODY15 = struct.Struct(_BODY10.format + "16s48s")
assert all(off == sum(n for _, _, n in _BODY_FIELDS[:i]) for i, (_, off, _) in enumerate(_BODY_FIELDS))
assert _BODY10.size == TD_REPORT10_SIZE and _BODY15.size == TD_REPORT15_SIZE
_NAMES = _BODY_NAMES + ("tee_tcb_svn2", "mr_servicetd")


def _td_report(data: bytes, body: int, size: int) -> TdReport:
    # Equal to TdReport(**fields) (which has no validation or __post_init__), built without the
    # frozen dataclass __init__'s per-field object.__setattr__: this runs on every verification.
    if size == TD_REPORT15_SIZE:
        values = _BODY15.unpack_from(data, body)
    else:
        values = _BODY10.unpack_from(data, body) + (None, None)
    report = object.__new__(TdReport)
    report.__dict__.update(zip(_NAMES, values, strict=False))
    return report


def parse_quote(data: bytes) -> Quote:
    """Parse a TDX quote (v4/v5). Raises InputError with the offset on anything malformed."""
    data = bytes(data)
    body_type, body, size = _body_location(data)
    version, key_type, tee_type, qe_svn, pce_svn = struct.unpack_from("<HHIHH", data, 0)
    header = QuoteHeader(version, key_type, tee_type, qe_svn, pce_svn, data[12:28], data[28:48])
    _need(data, body, size, f"a {size}-byte TD report body")
    report = _td_report(data, body, size)

    pos = body + size
    signed_length = pos
    _need(data, pos, 4, "the signature-data length (u32)")
    (sig_len,) = struct.unpack_from("<I", data, pos)
    pos += 4
    _need(data, pos, sig_len, f"{sig_len} bytes of signature data")
    end = pos + sig_len
    _need(data, pos, 134, "quote signature, attestation key and certification-data header")
    signature = data[pos : pos + 64]
    att_key = data[pos + 64 : pos + 128]
    cert_type, cert_size = struct.unpack_from("<HI", data, pos + 128)
    cpos = pos + 134
    if cpos + cert_size > end:
        raise InputError(
            f"{cert_size} bytes of certification data within the signature data",
            f"{end - cpos} bytes",
            offset=pos + 130,
        )
    qe_report = qe_sig = auth = pem = None
    inner_type = None
    if cert_type == CERT_TYPE_QE_REPORT:
        _need(data, cpos, QE_REPORT_SIZE + 64 + 2, "QE report, its signature and the auth-data length")
        qe_report = data[cpos : cpos + QE_REPORT_SIZE]
        qe_sig = data[cpos + QE_REPORT_SIZE : cpos + QE_REPORT_SIZE + 64]
        apos = cpos + QE_REPORT_SIZE + 64
        (auth_len,) = struct.unpack_from("<H", data, apos)
        _need(data, apos + 2, auth_len + 6, f"{auth_len} bytes of QE auth data and the inner certification header")
        auth = data[apos + 2 : apos + 2 + auth_len]
        ipos = apos + 2 + auth_len
        inner_type, inner_size = struct.unpack_from("<HI", data, ipos)
        _need(data, ipos + 6, inner_size, f"{inner_size} bytes of inner certification data")
        inner = data[ipos + 6 : ipos + 6 + inner_size]
        if inner_type == CERT_TYPE_PCK_CHAIN:
            pem = inner
    elif cert_type == CERT_TYPE_PCK_CHAIN:
        pem = data[cpos : cpos + cert_size]
    return Quote(
        header=header,
        body_type=body_type,
        body_offset=body,
        report=report,
        signed_length=signed_length,
        signature=signature,
        attestation_key=att_key,
        cert_data_type=cert_type,
        qe_report=qe_report,
        qe_report_signature=qe_sig,
        qe_auth_data=auth,
        pck_cert_type=inner_type,
        pck_chain_pem=pem,
        length=end,
        trailing=len(data) - end,
    )


_PEM_BEGIN, _PEM_END = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"


# A PCK chain is leaf, intermediate, root; a few more leave room for cross-signing, and the bound
# keeps a hostile chain from costing more than its bytes.
MAX_PCK_CHAIN_CERTS = 8


def pem_cert_bodies(data: bytes, limit: int = MAX_PCK_CHAIN_CERTS) -> list[bytes]:
    """The base64 text of each PEM certificate in `data`, in order, at most `limit`: one forward
    scan with `find`, so its cost is linear in len(data) whatever the bytes are. (A lazy regex from
    each BEGIN to the next END was quadratic on a chain of BEGIN lines without an END: 15 s for a
    256 KiB quote, on the proxy's event loop.)"""
    bodies: list[bytes] = []
    pos = 0
    while len(bodies) < limit:
        i = data.find(_PEM_BEGIN, pos)
        if i < 0:
            break
        j = data.find(_PEM_END, i + len(_PEM_BEGIN))
        if j < 0:
            break  # no END after this BEGIN: none after a later BEGIN either
        # A BEGIN inside this span starts the certificate that the END closes (what a PEM reader does).
        k = data.rfind(_PEM_BEGIN, i, j)
        bodies.append(data[k + len(_PEM_BEGIN) : j])
        pos = j + len(_PEM_END)
    return bodies


def _first_cert_b64(data: bytes, start: int, stop: int) -> bytes | None:
    """The base64 text (line breaks included) of the first PEM certificate in data[start:stop]."""
    i = data.find(_PEM_BEGIN, start, stop)
    if i < 0:
        return None
    j = data.find(_PEM_END, i + 1, stop)
    if j < 0:
        return None
    return data[i + len(_PEM_BEGIN) : j]


def _b64_der(b64: bytes) -> bytes:
    """DER of one PEM body. Strict: a PEM body is base64 and line breaks only, and the chain is read
    before it is verified, so anything else is unusable input (never a binascii traceback)."""
    import base64
    import binascii

    try:
        return base64.b64decode(b"".join(b64.split()), validate=True)
    except binascii.Error as exc:
        raise InputError("base64 certificate text in the quote's PEM PCK chain", str(exc)[:80]) from None


def _certification_data(data: bytes) -> tuple[int, int, int] | None:
    """(type, start, size) of a quote's outer certification data, by the same layout walk as
    `parse_quote` but without building a `Quote` (the fast path for a quote dcap-qvl has just
    verified). None when its lengths do not fit."""
    _, body, size = _body_location(data)
    pos = body + size
    n = len(data)
    if pos + 4 > n:
        return None
    (sig_len,) = struct.unpack_from("<I", data, pos)
    pos += 4
    end = pos + sig_len
    if end > n or sig_len < 134:
        return None
    cert_type, cert_size = struct.unpack_from("<HI", data, pos + 128)
    cpos = pos + 134
    if cpos + cert_size > end:
        return None
    return cert_type, cpos, cert_size


def _pck_chain_span(data: bytes) -> tuple[int, int] | None:
    """(start, stop) of the PEM PCK chain inside a quote; None when it carries none or its lengths
    do not fit."""
    cert = _certification_data(data)
    if cert is None:
        return None
    cert_type, cpos, cert_size = cert
    n = len(data)
    if cert_type == CERT_TYPE_PCK_CHAIN:
        return cpos, cpos + cert_size
    if cert_type != CERT_TYPE_QE_REPORT:
        return None
    apos = cpos + QE_REPORT_SIZE + 64
    if apos + 2 > n:
        return None
    (auth_len,) = struct.unpack_from("<H", data, apos)
    ipos = apos + 2 + auth_len
    if ipos + 6 > n:
        return None
    inner_type, inner_size = struct.unpack_from("<HI", data, ipos)
    if inner_type != CERT_TYPE_PCK_CHAIN or ipos + 6 + inner_size > n:
        return None
    return ipos + 6, ipos + 6 + inner_size


QE_REPORT_ISV_SVN = 258  # offset of the ISV SVN (u16) in the QE's SGX report body


def quote_qe_isv_svn(data: bytes) -> int | None:
    """The QE report's ISV SVN (the quoting enclave's own security version), equal to
    `parse_quote(data).qe_report[258:260]`, without a full parse; None without a QE report."""
    cert = _certification_data(data)
    if cert is None or cert[0] != CERT_TYPE_QE_REPORT or cert[2] < QE_REPORT_SIZE:
        return None
    return int(struct.unpack_from("<H", data, cert[1] + QE_REPORT_ISV_SVN)[0])


def quote_pck_tcb(data: bytes) -> tuple[tuple[int, ...], int] | None:
    """(CPUSVN components, PCESVN) of the quote's PCK leaf -- equal to
    `pck_tcb(parse_quote(data).pck_leaf_der())` -- without a full parse. Raises InputError for a
    header/body our reader refuses; None when there is no PEM chain or no SGX TCB extension."""
    span = _pck_chain_span(data)
    if span is None:
        return None
    b64 = _first_cert_b64(data, *span)
    return _pck_tcb_b64(b64) if b64 is not None else None


@functools.lru_cache(maxsize=256)
def _pck_tcb_b64(b64: bytes) -> tuple[tuple[int, ...], int] | None:
    """`pck_tcb` of a leaf given as its PEM base64 text: memoised on those (immutable) bytes, so a
    platform's repeated quotes skip the base64 decode and DER walk. Pure; no verification result."""
    try:
        der = _b64_der(b64)
    except ValueError:
        return None
    return pck_tcb(der)


def _need(data: bytes, pos: int, n: int, what: str) -> None:
    if pos + n > len(data):
        raise InputError(
            what, f"{max(0, len(data) - pos)} bytes (truncated quote): {show_bytes(data[pos:])}", offset=pos
        )


# --- the FMSPC inside the PCK leaf (a tiny DER walker; no third-party ASN.1 library) ------------


MAX_DER_LENGTH_BYTES = 4


def der_items(buf: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (tag, content) for each TLV in buf. A PCK leaf's SGX extension is read before its chain
    is verified (the FMSPC picks the collateral), so a TLV that does not fit is an InputError, never
    an IndexError; each step moves forward at least two bytes."""
    i, n = 0, len(buf)
    while i < n:
        if i + 2 > n:
            raise InputError("a DER tag and length in the SGX extension", f"{n - i} byte", offset=i)
        tag, length = buf[i], buf[i + 1]
        i += 2
        if length & 0x80:
            k = length & 0x7F
            if not 0 < k <= MAX_DER_LENGTH_BYTES or i + k > n:
                raise InputError("a DER long-form length of 1 to 4 bytes in the SGX extension", f"{k}", offset=i - 1)
            length = int.from_bytes(buf[i : i + k], "big")
            i += k
        if i + length > n:
            raise InputError(f"{length} bytes of DER content in the SGX extension", f"{n - i} bytes", offset=i)
        yield tag, buf[i : i + length]
        i += length


def oid_str(content: bytes) -> str:
    if not content:
        return ""
    parts = [content[0] // 40, content[0] % 40]
    value = 0
    for b in content[1:]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def pck_fmspc(leaf_der: bytes) -> str | None:
    """FMSPC (upper-case hex) of a PCK leaf certificate, from SGX extension OID ...13.1.4."""
    from cryptography import x509

    from tdxattest.core.certs import raw_extension

    raw = raw_extension(x509.load_der_x509_certificate(leaf_der), SGX_EXTENSION_OID)
    if raw is None:
        return None
    for tag, seq in der_items(raw):
        if tag != 0x30:
            continue
        for tag2, entry in der_items(seq):
            if tag2 != 0x30:
                continue
            items = list(der_items(entry))
            if len(items) == 2 and items[0][0] == 0x06 and oid_str(items[0][1]) == FMSPC_OID:
                return items[1][1].hex().upper()
    return None


# DER of OID 1.2.840.113741.1.13.1 (the SGX extension), as it appears in the extension list.
_SGX_EXT_OID_TLV = bytes.fromhex("06092a864886f84d010d01")


def sgx_extension(leaf_der: bytes) -> bytes | None:
    """The SGX extension's value (DER) from a certificate, found by its OID; no X.509 library."""
    i = leaf_der.find(_SGX_EXT_OID_TLV)
    if i < 0:
        return None
    rest = leaf_der[i + len(_SGX_EXT_OID_TLV) :]
    for tag, content in der_items(rest):
        if tag == 0x01:  # critical flag
            continue
        return content if tag == 0x04 else None
    return None


@functools.lru_cache(maxsize=256)
def pck_tcb(leaf_der: bytes) -> tuple[tuple[int, ...], int] | None:
    """(16 CPUSVN component SVNs, PCESVN) from a PCK leaf's SGX extension (OIDs ...13.1.2.1-17)."""
    raw = sgx_extension(leaf_der)
    if raw is None:
        return None
    tcb_oid = SGX_EXTENSION_OID + ".2"
    for _tag, seq in der_items(raw):
        for _tag2, entry in der_items(seq):
            items = list(der_items(entry))
            if len(items) != 2 or items[0][0] != 0x06 or oid_str(items[0][1]) != tcb_oid:
                continue
            comps: dict[int, int] = {}
            for _tag3, inner in der_items(items[1][1]):
                sub = list(der_items(inner))
                if len(sub) == 2 and sub[0][0] == 0x06 and sub[1][0] == 0x02:
                    comps[int(oid_str(sub[0][1]).rsplit(".", 1)[1])] = int.from_bytes(sub[1][1], "big")
            if all(i in comps for i in range(1, 18)):
                return tuple(comps[i] for i in range(1, 17)), comps[17]
    return None
