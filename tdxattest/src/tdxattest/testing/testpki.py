"""A software TDX quote source signed by a TEST PKI -- NOT Intel, for tests and dev stacks only.

The attested-channel gateway and its verifier must be exercised end to end where there is no TDX
hardware (unit tests, CI, the dev stack). Mocking the verifier would test nothing, so this module
produces *real-format* TDX v4 quotes and dcap-qvl `QuoteCollateralV3` collateral that the real
verifier (dcap-qvl plus `tdxattest.verify`) accepts -- but only when it is explicitly handed
`TestPki.root_ca_der` as the trust anchor. Against Intel's root (plain `dcap_qvl.verify`) every
quote from here is refused, and every certificate names itself "TEST ... NOT INTEL".

What is built, all ECDSA P-256 as Intel does:

    TEST root CA --+-- TEST PCK Platform CA -- TEST PCK leaf (Intel SGX extension: PPID, TCB, FMSPC...)
                   +-- TEST TCB signing cert  (signs the TDX TCB info and the TD_QE identity JSON)
    root CA CRL (by the root), PCK CRL (by the PCK CA); optionally revoking named certificates.

A quote is header + 584-byte TD report body signed by a software "attestation key", followed by
QE certification data (type 6): a QE report signed by the PCK leaf key whose REPORTDATA binds the
attestation key, and the PEM chain (type 5). The QE part does not depend on the TD, so it is built
once per PKI; a quote then costs one ECDSA signature.

    pki = make_test_pki(now)
    quote = SoftwareQuoteProvider(pki).quote(report_data)
    dcap_qvl.verify_with_root_ca(quote, QuoteCollateralV3.from_json(pki.collateral_json()),
                                 pki.root_ca_der, now)
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tdxattest.core.pins import RegisterPin, StackPins
from tdxattest.core.policy import PIN_FIELDS, Pin, Pins
from tdxattest.core.quote import (
    INTEL_QE_VENDOR_ID,
    SGX_EXTENSION_OID,
    TD_ATTR_DEBUG,
    TD_ATTR_SEPT_VE_DISABLE,
    TEE_TYPE_TDX,
)
from tdxattest.testing.der import integer as _int
from tdxattest.testing.der import oid as _oid
from tdxattest.testing.der import seq as _seq
from tdxattest.testing.der import tlv as _tlv

LABEL = "software-test-pki"
ROOT_CA_NAME = "tdxattest TEST Root CA - NOT INTEL, tests and dev stacks only"
_ORG = "tdxattest TEST PKI - NOT INTEL"
DEFAULT_FMSPC = "90C06F000000"
PCE_ID = "0000"
# A platform TCB shaped like a current Intel one (SPR/EMR-like): 16 SGX components + PCESVN.
SGX_TCB_COMPONENTS = (3, 3, 2, 2, 4, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0)
PCESVN = 13
TDX_TCB_COMPONENTS = (5, 1, 3) + (0,) * 13
# One TDX late-microcode SVN lower than current: a TD reporting this matches the OutOfDate level.
OUTDATED_TEE_TCB_SVN = bytes((5, 1, 2) + (0,) * 13)
OUTDATED_ADVISORIES = ("INTEL-SA-TEST-0001",)
QE_ISVPRODID = 2
QE_ISVSVN = 4
# Deliberately not Intel's TD_QE MRSIGNER: nothing signed here should look like Intel's.
QE_MRSIGNER = hashlib.sha256(b"tdxattest TEST QE signer - NOT INTEL").digest()
QE_MRENCLAVE = hashlib.sha256(b"tdxattest TEST QE enclave - NOT INTEL").digest()
QE_ATTRIBUTES = bytes.fromhex("1500000000000000e700000000000000")
REVOCABLE = frozenset({"pck_leaf", "pck_ca", "tcb_signing"})

_SIGNED_LENGTH = 48 + 584


def _h384(tag: str) -> bytes:
    return hashlib.sha384(f"tdxattest TEST TD {tag}".encode()).digest()


@dataclass(frozen=True)
class TdIdentity:
    """What the software TD "measures". Defaults: a plausible production (non-DEBUG) TD on the
    TDX module 1.x that the TEST TCB info rates UpToDate."""

    mrtd: bytes = _h384("mrtd")
    rtmr0: bytes = _h384("rtmr0")
    rtmr1: bytes = _h384("rtmr1")
    rtmr2: bytes = _h384("rtmr2")
    rtmr3: bytes = bytes(48)
    mrseam: bytes = _h384("mrseam")
    td_attributes: bytes = TD_ATTR_SEPT_VE_DISABLE.to_bytes(8, "little")
    xfam: bytes = bytes.fromhex("e702060000000000")
    mrconfigid: bytes = bytes(48)
    mrowner: bytes = bytes(48)
    mrownerconfig: bytes = bytes(48)
    tee_tcb_svn: bytes = bytes(TDX_TCB_COMPONENTS)

    def __post_init__(self) -> None:
        sizes = {"td_attributes": 8, "xfam": 8, "tee_tcb_svn": 16}
        for name in (
            "mrtd",
            "rtmr0",
            "rtmr1",
            "rtmr2",
            "rtmr3",
            "mrseam",
            "td_attributes",
            "xfam",
            "mrconfigid",
            "mrowner",
            "mrownerconfig",
            "tee_tcb_svn",
        ):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != sizes.get(name, 48):
                raise ValueError(f"TdIdentity.{name}: expected {sizes.get(name, 48)} bytes, got {value!r:.40}")

    def debug(self) -> TdIdentity:
        """The same TD with TD_ATTRIBUTES.DEBUG set (which every verifier must refuse)."""
        attrs = int.from_bytes(self.td_attributes, "little") | TD_ATTR_DEBUG
        return replace(self, td_attributes=attrs.to_bytes(8, "little"))

    def pins(self) -> Pins:
        """Policy pins accepting exactly this TD."""
        return Pins(**{name: Pin((getattr(self, name),)) for name in PIN_FIELDS})

    def stack_pins(self) -> StackPins:
        """A stack's `pins` (docs/pins.md) accepting exactly this TD: its MRTD, RTMRs and TD attributes."""
        return StackPins(
            mrtd=RegisterPin(self.mrtd.hex()),
            rtmr0=RegisterPin(self.rtmr0.hex()),
            rtmr1=RegisterPin(self.rtmr1.hex()),
            rtmr2=RegisterPin(self.rtmr2.hex()),
            rtmr3=RegisterPin(self.rtmr3.hex()),
            td_attributes=RegisterPin(self.td_attributes.hex()),
        )

    def body(self, report_data: bytes) -> bytes:
        """The 584-byte TD report body (TD report 1.0; MRSIGNERSEAM and SEAM_ATTRIBUTES zero, as
        for Intel's own TDX module)."""
        return b"".join(
            (
                self.tee_tcb_svn,
                self.mrseam,
                bytes(48),
                bytes(8),
                self.td_attributes,
                self.xfam,
                self.mrtd,
                self.mrconfigid,
                self.mrowner,
                self.mrownerconfig,
                self.rtmr0,
                self.rtmr1,
                self.rtmr2,
                self.rtmr3,
                report_data,
            )
        )


# --- DER by hand (only what the SGX extension needs: tdxattest.testing.der) --------------------


def _entry(suffix: str, value: bytes) -> bytes:
    return _seq(_oid(f"{SGX_EXTENSION_OID}.{suffix}"), value)


def sgx_extension(
    *,
    ppid: bytes,
    fmspc: bytes,
    platform_instance_id: bytes,
    components: tuple[int, ...] = SGX_TCB_COMPONENTS,
    pcesvn: int = PCESVN,
) -> bytes:
    """DER of the Intel SGX extension of a (Scalable, SGX type 1) PCK certificate."""
    tcb = [_entry(f"2.{i}", _int(svn)) for i, svn in enumerate(components, 1)]
    tcb += [_entry("2.17", _int(pcesvn)), _entry("2.18", _tlv(0x04, bytes(components)))]
    flags = [_entry(f"7.{i}", _tlv(0x01, b"\x00")) for i in (1, 2, 3)]
    return _seq(
        _entry("1", _tlv(0x04, ppid)),
        _entry("2", _seq(*tcb)),
        _entry("3", _tlv(0x04, bytes.fromhex(PCE_ID))),
        _entry("4", _tlv(0x04, fmspc)),
        _entry("5", _tlv(0x0A, b"\x01")),
        _entry("6", _tlv(0x04, platform_instance_id)),
        _entry("7", _seq(*flags)),
    )


# --- certificates, CRLs, signatures ----------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    start: datetime,
    end: datetime,
    *,
    ca_pathlen: int | None,
    extra: x509.ExtensionType | None = None,
) -> x509.Certificate:
    ca = ca_pathlen is not None
    pub = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer else _name(subject))
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=ca_pathlen), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=not ca,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if extra is not None:
        builder = builder.add_extension(extra, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _crl(
    issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey, start: datetime, end: datetime, revoked: Iterable[int]
) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(start)
        .next_update(end)
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(start).build()
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _raw_sig(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA-P256-SHA256 as Intel encodes it in quotes and collateral: r || s, 32 bytes each."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _raw_pub(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]


def _pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(doc: dict) -> str:
    # Compact like Intel's PCS: the signature covers these exact bytes.
    return json.dumps(doc, separators=(",", ":"))


# --- the PKI ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestPki:
    """A TEST PKI and everything signed by it. Build with `make_test_pki`."""

    __test__ = False  # a library class, not a pytest test class

    root_ca_der: bytes
    pck_ca_der: bytes
    pck_leaf_der: bytes
    tcb_signing_der: bytes
    root_ca_crl_der: bytes
    pck_crl_der: bytes
    fmspc: str
    tcb_status: str
    advisory_ids: tuple[str, ...]
    issued_at: int
    next_update: int
    _tcb_key: ec.EllipticCurvePrivateKey = field(repr=False, compare=False)
    _att_key: ec.EllipticCurvePrivateKey = field(repr=False, compare=False)
    _header: bytes = field(repr=False)
    # Signature data minus the quote signature: (u32 length, attestation key + QE certification
    # data). Neither depends on the TD, so both are built once and every quote reuses them.
    _sig_data: tuple[bytes, bytes] = field(repr=False)
    _chains: tuple[str, str] = field(repr=False)  # (TCB signing chain, PCK CRL issuer chain), PEM
    _collateral: str = field(repr=False)

    def collateral_json(self, *, next_update: int | None = None) -> str:
        """dcap-qvl `QuoteCollateralV3` JSON. `next_update` (unix time) overrides the TCB info's and
        QE identity's nextUpdate, e.g. to a past time to produce stale collateral; CRLs and
        certificates keep their own validity."""
        if next_update is None:
            return self._collateral
        return _collateral_json(self, next_update)

    def quote(self, report_data: bytes, td: TdIdentity = TdIdentity()) -> bytes:
        """A TDX v4 quote of `td` carrying `report_data` (64 bytes)."""
        if len(report_data) != 64:
            raise ValueError(f"REPORTDATA must be 64 bytes, got {len(report_data)}")
        signed = self._header + td.body(bytes(report_data))
        length, rest = self._sig_data
        return signed + length + _raw_sig(self._att_key, signed) + rest


def _tcb_info(pki_fmspc: str, tcb_status: str, advisories: tuple[str, ...], issued: int, next_update: int) -> dict:
    tcb_date = _iso(issued - issued % 86400)

    def level(tdx: tuple[int, ...], status: str, ids: tuple[str, ...]) -> dict:
        out = {
            "tcb": {
                "sgxtcbcomponents": [{"svn": s} for s in SGX_TCB_COMPONENTS],
                "pcesvn": PCESVN,
                "tdxtcbcomponents": [{"svn": s} for s in tdx],
            },
            "tcbDate": tcb_date,
            "tcbStatus": status,
        }
        if ids:
            out["advisoryIDs"] = list(ids)
        return out

    zeros48 = "00" * 48
    module = {"mrsigner": zeros48, "attributes": "0000000000000000", "attributesMask": "FFFFFFFFFFFFFFFF"}
    return {
        "id": "TDX",
        "version": 3,
        "issueDate": _iso(issued),
        "nextUpdate": _iso(next_update),
        "fmspc": pki_fmspc,
        "pceId": PCE_ID,
        "tcbType": 0,
        "tcbEvaluationDataNumber": 1,
        "tdxModule": module,
        "tdxModuleIdentities": [
            dict(
                id="TDX_01",
                **module,
                tcbLevels=[{"tcb": {"isvsvn": TDX_TCB_COMPONENTS[0]}, "tcbDate": tcb_date, "tcbStatus": "UpToDate"}],
            )
        ],
        "tcbLevels": [
            level(TDX_TCB_COMPONENTS, tcb_status, advisories),
            level(tuple(OUTDATED_TEE_TCB_SVN), "OutOfDate", OUTDATED_ADVISORIES),
        ],
    }


def _qe_identity(issued: int, next_update: int) -> dict:
    return {
        "id": "TD_QE",
        "version": 2,
        "issueDate": _iso(issued),
        "nextUpdate": _iso(next_update),
        "tcbEvaluationDataNumber": 1,
        "miscselect": "00000000",
        "miscselectMask": "FFFFFFFF",
        "attributes": "11000000000000000000000000000000",
        "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": QE_MRSIGNER.hex().upper(),
        "isvprodid": QE_ISVPRODID,
        "tcbLevels": [
            {"tcb": {"isvsvn": QE_ISVSVN}, "tcbDate": _iso(issued - issued % 86400), "tcbStatus": "UpToDate"}
        ],
    }


def _collateral_json(pki: TestPki, next_update: int) -> str:
    issued = min(pki.issued_at, next_update - 86400)
    tcb_info = _json(_tcb_info(pki.fmspc, pki.tcb_status, pki.advisory_ids, issued, next_update))
    qe_identity = _json(_qe_identity(issued, next_update))
    tcb_chain, pck_chain = pki._chains
    return _json(
        {
            "pck_crl_issuer_chain": pck_chain,
            "root_ca_crl": pki.root_ca_crl_der.hex(),
            "pck_crl": pki.pck_crl_der.hex(),
            "tcb_info_issuer_chain": tcb_chain,
            "tcb_info": tcb_info,
            "tcb_info_signature": _raw_sig(pki._tcb_key, tcb_info.encode()).hex(),
            "qe_identity_issuer_chain": tcb_chain,
            "qe_identity": qe_identity,
            "qe_identity_signature": _raw_sig(pki._tcb_key, qe_identity.encode()).hex(),
        }
    )


def make_test_pki(
    now: int,
    *,
    validity_days: int = 30,
    fmspc: str = DEFAULT_FMSPC,
    tcb_status: str = "UpToDate",
    advisory_ids: Iterable[str] = (),
    revoke: Iterable[str] = (),
) -> TestPki:
    """A fresh TEST PKI valid from an hour before `now` (clock skew) for `validity_days` after it.

    `tcb_status` / `advisory_ids` rate the platform's current TCB level (a TD reporting
    `OUTDATED_TEE_TCB_SVN` always matches an OutOfDate level). `revoke` names certificates to list
    in the CRLs: "pck_leaf" (PCK CRL), "pck_ca" and "tcb_signing" (root CA CRL)."""
    revoke = frozenset(revoke)
    if revoke - REVOCABLE:
        raise ValueError(f"revoke: expected names among {sorted(REVOCABLE)}, got {sorted(revoke - REVOCABLE)}")
    fmspc_raw = bytes.fromhex(fmspc)
    if len(fmspc_raw) != 6:
        raise ValueError(f"fmspc: expected 6 bytes of hex, got {fmspc!r}")
    issued = int(now) - 3600
    expires = int(now) + validity_days * 86400
    start = datetime.fromtimestamp(issued, UTC)
    end = datetime.fromtimestamp(expires, UTC)
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(5)]
    root_key, pck_ca_key, leaf_key, tcb_key, att_key = keys

    root = _cert(ROOT_CA_NAME, root_key, None, root_key, start, end + timedelta(days=1), ca_pathlen=1)
    pck_ca = _cert("tdxattest TEST PCK Platform CA - NOT INTEL", pck_ca_key, root, root_key, start, end, ca_pathlen=0)
    ppid = hashlib.sha256(fmspc_raw + _raw_pub(leaf_key)).digest()[:16]
    ext = x509.UnrecognizedExtension(
        x509.ObjectIdentifier(SGX_EXTENSION_OID),
        sgx_extension(ppid=ppid, fmspc=fmspc_raw, platform_instance_id=ppid[::-1]),
    )
    leaf = _cert(
        "tdxattest TEST PCK Certificate - NOT INTEL",
        leaf_key,
        pck_ca,
        pck_ca_key,
        start,
        end,
        ca_pathlen=None,
        extra=ext,
    )
    tcb = _cert("tdxattest TEST TCB Signing - NOT INTEL", tcb_key, root, root_key, start, end, ca_pathlen=None)
    root_crl = _crl(
        root,
        root_key,
        start,
        end,
        [c.serial_number for name, c in (("pck_ca", pck_ca), ("tcb_signing", tcb)) if name in revoke],
    )
    pck_crl = _crl(pck_ca, pck_ca_key, start, end, [leaf.serial_number] if "pck_leaf" in revoke else [])

    # The QE report binds the attestation key: REPORTDATA[0:32] = SHA-256(attestation key || QE auth data).
    att_pub = _raw_pub(att_key)
    auth_data = bytes(range(32))
    qe_report = struct.pack(
        "<16sI28s16s32s32s32s96sHH60s64s",
        bytes(SGX_TCB_COMPONENTS),
        0,
        bytes(28),
        QE_ATTRIBUTES,
        QE_MRENCLAVE,
        bytes(32),
        QE_MRSIGNER,
        bytes(96),
        QE_ISVPRODID,
        QE_ISVSVN,
        bytes(60),
        hashlib.sha256(att_pub + auth_data).digest() + bytes(32),
    )
    chain = _pem(leaf, pck_ca, root).encode()
    qe_cert_data = (
        qe_report
        + _raw_sig(leaf_key, qe_report)
        + struct.pack("<H", len(auth_data))
        + auth_data
        + struct.pack("<HI", 5, len(chain))
        + chain
    )
    after_sig = att_pub + struct.pack("<HI", 6, len(qe_cert_data)) + qe_cert_data
    sig_data = (struct.pack("<I", 64 + len(after_sig)), after_sig)
    header = struct.pack(
        "<HHIHH16s20s", 4, 2, TEE_TYPE_TDX, QE_ISVSVN, PCESVN, INTEL_QE_VENDOR_ID, b"tdxattest-TEST-PKI\0\0"
    )

    der = serialization.Encoding.DER
    pki = TestPki(
        root_ca_der=root.public_bytes(der),
        pck_ca_der=pck_ca.public_bytes(der),
        pck_leaf_der=leaf.public_bytes(der),
        tcb_signing_der=tcb.public_bytes(der),
        root_ca_crl_der=root_crl,
        pck_crl_der=pck_crl,
        fmspc=fmspc_raw.hex().upper(),
        tcb_status=tcb_status,
        advisory_ids=tuple(advisory_ids),
        issued_at=issued,
        next_update=expires,
        _tcb_key=tcb_key,
        _att_key=att_key,
        _header=header,
        _sig_data=sig_data,
        _chains=(_pem(tcb, root), _pem(pck_ca, root)),
        _collateral="",
    )
    return replace(pki, _collateral=_collateral_json(pki, expires))


class SoftwareQuoteProvider:
    """A `tdxattest.quote_source.QuoteSource` that signs with a TEST PKI: NOT TDX hardware.

    Its `label` travels into gateway responses and verdicts so nobody mistakes these quotes for
    hardware evidence; only a verifier handed `pki.root_ca_der` accepts them."""

    label = LABEL

    def __init__(self, pki: TestPki, td: TdIdentity = TdIdentity()) -> None:
        self.pki = pki
        self.td = td

    def quote(self, report_data: bytes) -> bytes:
        return self.pki.quote(report_data, self.td)

    def test_pki(self) -> dict[str, str]:
        """The TEST root and collateral, served with every attestation answer: a client of the dev
        stack's TD without TDX (`tdxattest proxy --accept-dev-test-root`) has no other way to get
        a root made fresh inside the TD, and taking it from the answer costs nothing, since anyone
        can make this PKI anyway."""
        return {"root_ca": base64.b64encode(self.pki.root_ca_der).decode(), "collateral": self.pki.collateral_json()}
