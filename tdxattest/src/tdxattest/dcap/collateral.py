"""DCAP collateral: the model (the raw bytes as a PCCS or Intel PCS serves them, and the parsed set
dcap-qvl verifies quotes with) and its own signature checks.

Signed JSON is never re-serialised: the signed `tcbInfo`/`enclaveIdentity` text is cut out of the
stored body at use time (`signed_body`), so a set kept on disk verifies byte for byte.

`verify_collateral` checks, with the `cryptography` package and independently of dcap-qvl: the
issuer chains up to the pinned Intel SGX Root CA (DER SHA-256 below), certificate validity, the
root CRL (signed by the root; it must not list the chain's CAs), the PCK CRL (signed by its CA),
the TCB info and QE identity signatures over their exact bytes, their ids (TDX / TD_QE), the FMSPC,
and every piece's issue/next-update window. Failures raise `CollateralError` with a named check.
Fetching is `tdxattest.dcap.fetch`, the on-disk cache `tdxattest.dcap.cache`.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tdxattest.core.certs import ecdsa_valid, first_break, signature_hash
from tdxattest.core.errors import InputError

if TYPE_CHECKING:  # imported inside the functions that use them (CLI start-up time)
    import dcap_qvl
    from cryptography import x509

INTEL_SGX_ROOT_CA_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"

FILES = (
    "tcb_info.body",
    "tcb_info.chain",
    "qe_identity.body",
    "qe_identity.chain",
    "pck_crl.body",
    "pck_crl.chain",
    "root_ca_crl.body",
)


class CollateralError(Exception):
    """Collateral cannot be used: `check` names the failure, with what was expected and seen, and
    (where there is one) the fix."""

    def __init__(self, check: str, expected: str, seen: str, fix: str | None = None):
        self.check, self.expected, self.seen, self.fix = check, expected, seen, fix
        super().__init__(f"{check}: expected {expected}, seen {seen}" + (f"; fix: {fix}" if fix else ""))


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso_ts(text: str) -> int:
    """Seconds since the epoch of an ISO 8601 time as PCS and our status dicts write it."""
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def signed_body(body: bytes, key: str) -> tuple[str, str]:
    """(exact signed text of `key`'s object, signature hex) from a PCS response body."""
    text = body.decode("utf-8")
    marker = f'"{key}"'
    i = text.find(marker)
    if i < 0:
        raise CollateralError("collateral.malformed", f'a JSON body with "{key}"', text[:60])
    j = text.index(":", i + len(marker)) + 1
    while text[j] in " \t\r\n":
        j += 1
    try:
        _, end = json.JSONDecoder().raw_decode(text, j)
        signature = json.loads(text)["signature"]
    except (ValueError, KeyError) as exc:
        raise CollateralError("collateral.malformed", f'a JSON body with "{key}" and "signature"', str(exc)) from None
    return text[j:end], signature


def _crl_der(body: bytes) -> bytes:
    """A CRL body as DER, whether the server sent DER, PEM or hex."""
    data = body.strip()
    if data[:1] == b"\x30":
        return body
    if data.startswith(b"-----BEGIN"):
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        return x509.load_pem_x509_crl(data).public_bytes(Encoding.DER)
    try:
        return bytes.fromhex(data.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise CollateralError("collateral.malformed", "a CRL (DER, PEM or hex)", data[:32].hex()) from None


def chain_pem(header_value: bytes) -> str:
    return urllib.parse.unquote(header_value.decode("ascii").strip())


@dataclass(frozen=True)
class RawCollateral:
    """The collateral exactly as served."""

    tcb_info_body: bytes
    tcb_info_chain: bytes  # header value as received (URL-encoded PEM)
    qe_identity_body: bytes
    qe_identity_chain: bytes
    pck_crl_body: bytes
    pck_crl_chain: bytes
    root_ca_crl_body: bytes

    def files(self) -> dict[str, bytes]:
        return dict(
            zip(
                FILES,
                (
                    self.tcb_info_body,
                    self.tcb_info_chain,
                    self.qe_identity_body,
                    self.qe_identity_chain,
                    self.pck_crl_body,
                    self.pck_crl_chain,
                    self.root_ca_crl_body,
                ),
                strict=False,
            )
        )

    def to_dcap_json(self) -> str:
        """dcap-qvl QuoteCollateralV3 JSON (signed texts kept byte-exact)."""
        tcb, tcb_sig = signed_body(self.tcb_info_body, "tcbInfo")
        qe, qe_sig = signed_body(self.qe_identity_body, "enclaveIdentity")
        return json.dumps(
            {
                "pck_crl_issuer_chain": chain_pem(self.pck_crl_chain),
                "root_ca_crl": _crl_der(self.root_ca_crl_body).hex(),
                "pck_crl": _crl_der(self.pck_crl_body).hex(),
                "tcb_info_issuer_chain": chain_pem(self.tcb_info_chain),
                "tcb_info": tcb,
                "tcb_info_signature": tcb_sig,
                "qe_identity_issuer_chain": chain_pem(self.qe_identity_chain),
                "qe_identity": qe,
                "qe_identity_signature": qe_sig,
            }
        )


@dataclass(frozen=True)
class TcbLevel:
    """One `tcbLevels` entry of the signed TCB info, pre-digested for the level match."""

    sgx: tuple[int, ...]  # 16 sgxtcbcomponents SVNs
    pcesvn: int
    tdx: tuple[int, ...]  # 16 tdxtcbcomponents SVNs
    tdx_from2: tuple[int, ...]  # tdx[2:] (compared when the TDX module version is judged separately)
    status: str | None
    advisories: tuple[str, ...]  # sorted
    date: int | None  # tcbDate as unix time; None when absent / unparsable (then the level is not used)


def _parse_tcb_levels(tcb_info: dict[str, Any]) -> tuple[TcbLevel | None, ...] | None:
    """The TCB info's levels in Intel's order (newest first). A level without 16 + 16 components is
    None (matching stops there: ask dcap-qvl); None for the whole when the structure is unusable."""
    out: list[TcbLevel | None] = []
    try:
        for level in tcb_info.get("tcbLevels", []):
            t = level.get("tcb", {})
            sgx = tuple(c.get("svn", 0) for c in t.get("sgxtcbcomponents", []))
            tdx = tuple(c.get("svn", 0) for c in t.get("tdxtcbcomponents", []))
            if len(sgx) != 16 or len(tdx) != 16:
                out.append(None)
                continue
            try:
                date = parse_iso_ts(level["tcbDate"])
            except (KeyError, TypeError, ValueError, AttributeError):
                date = None
            out.append(
                TcbLevel(
                    sgx,
                    t.get("pcesvn", 0),
                    tdx,
                    tdx[2:],
                    level.get("tcbStatus"),
                    tuple(sorted(level.get("advisoryIDs") or [])),
                    date,
                )
            )
    except (AttributeError, TypeError, ValueError):
        return None
    return tuple(out)


@dataclass
class Collateral:
    """A dcap-qvl QuoteCollateralV3 plus the facts we read from its signed TCB info (cached).

    `tcb_info` is the JSON of the very text dcap-qvl verifies with every quote; treat it as read-only
    (the digested `tcbLevels` are computed once per Collateral and re-derived only if the attribute is
    replaced)."""

    dcap: dcap_qvl.QuoteCollateralV3
    tcb_info: dict[str, Any]
    source: str | None = None
    text: str = ""  # the dcap-qvl JSON it was read from (what `collateral fetch --out` writes)
    _levels: tuple[TcbLevel | None, ...] | None = field(default=None, init=False, repr=False, compare=False)
    _levels_of: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def fmspc(self) -> str | None:
        v = self.tcb_info.get("fmspc")
        return v.upper() if isinstance(v, str) else None

    @property
    def evaluation_data_number(self) -> int | None:
        return self.tcb_info.get("tcbEvaluationDataNumber")

    def tcb_levels(self) -> tuple[TcbLevel | None, ...] | None:
        """The parsed `tcbLevels` (a pure function of `tcb_info`, computed once per object)."""
        if self._levels_of is not self.tcb_info:
            self._levels = _parse_tcb_levels(self.tcb_info)
            self._levels_of = self.tcb_info
        return self._levels


def collateral_from_json_text(text: str, source: str | None = None) -> Collateral:
    import dcap_qvl

    try:
        doc = json.loads(text)
        dcap = dcap_qvl.QuoteCollateralV3.from_json(text)
        tcb_info = json.loads(doc["tcb_info"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(
            "collateral JSON in dcap-qvl QuoteCollateralV3 form", " ".join(str(exc).split())[:200], file=source
        ) from None
    return Collateral(dcap=dcap, tcb_info=tcb_info, source=source, text=text)


def load_collateral(path: str) -> Collateral:
    from tdxattest.core.files import read_bytes

    data = read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError("collateral JSON in UTF-8", str(exc), file=path) from None
    return collateral_from_json_text(text, path)


# --- verification (cryptography) -----------------------------------------------------------------


def load_chain(pem: str, what: str) -> list[x509.Certificate]:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as exc:
        raise CollateralError("collateral.chain_invalid", f"a PEM {what} issuer chain", str(exc)) from None
    return certs


def _check_chain(certs: list[x509.Certificate], what: str, now: int, root_sha256: str) -> x509.Certificate:
    """Verify leaf->...->root; the last cert must be the pinned root. Returns the root cert."""
    from cryptography.hazmat.primitives.serialization import Encoding

    if not certs:
        raise CollateralError("collateral.chain_invalid", f"a non-empty {what} issuer chain", "no certificates")
    root = certs[-1]
    digest = hashlib.sha256(root.public_bytes(Encoding.DER)).hexdigest()
    if digest != root_sha256:
        raise CollateralError(
            "collateral.chain_untrusted_root",
            f"{what} chain ending at the Intel SGX Root CA (DER SHA-256 {root_sha256[:16]}...)",
            f"{root.subject.rfc4514_string()} (SHA-256 {digest[:16]}...)",
        )
    broken = first_break(certs, root, now)
    if broken is not None:
        check = "collateral.expired" if broken.kind == "validity" else "collateral.chain_invalid"
        raise CollateralError(check, broken.expected(now), broken.problem)
    return root


def _check_window(what: str, issue: int, next_update: int, now: int) -> None:
    if now < issue:
        raise CollateralError("collateral.not_yet_valid", f"{what} issued by {iso(now)}", f"issued {iso(issue)}")
    if now > next_update:
        raise CollateralError("collateral.expired", f"{what} valid at {iso(now)}", f"nextUpdate {iso(next_update)}")


def _crl_window(what: str, crl: x509.CertificateRevocationList) -> tuple[int, int]:
    """(lastUpdate, nextUpdate) of a CRL as unix times."""
    next_update = crl.next_update_utc
    if next_update is None:  # optional in X.509; without it there is no window to check the CRL against
        raise CollateralError("collateral.crl_invalid", f"a {what} with a nextUpdate", "none")
    return int(crl.last_update_utc.timestamp()), int(next_update.timestamp())


def _crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    return ecdsa_valid(issuer.public_key(), crl.signature, crl.tbs_certlist_bytes, signature_hash(crl))


@dataclass(frozen=True)
class CollateralStatus:
    fmspc: str
    tcb_evaluation_data_number: int
    earliest_next_update: int
    next_updates: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "fmspc": self.fmspc,
            "tcb_evaluation_data_number": self.tcb_evaluation_data_number,
            "earliest_next_update": iso(self.earliest_next_update),
            "next_updates": {k: iso(v) for k, v in self.next_updates.items()},
        }


def verify_collateral(
    raw: RawCollateral, now: int, fmspc: str | None = None, root_sha256: str = INTEL_SGX_ROOT_CA_SHA256
) -> CollateralStatus:
    """Verify every piece of `raw` at `now`. Raises CollateralError naming the first failed check."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    def raw_sig(hexsig: str) -> bytes:
        b = bytes.fromhex(hexsig)
        return encode_dss_signature(int.from_bytes(b[:32], "big"), int.from_bytes(b[32:], "big"))

    nexts: dict[str, int] = {}
    # TCB info
    tcb_text, tcb_sig = signed_body(raw.tcb_info_body, "tcbInfo")
    tcb_chain = load_chain(chain_pem(raw.tcb_info_chain), "TCB info")
    root = _check_chain(tcb_chain, "TCB info", now, root_sha256)
    if not ecdsa_valid(tcb_chain[0].public_key(), raw_sig(tcb_sig), tcb_text.encode(), hashes.SHA256()):
        raise CollateralError(
            "collateral.tcb_info_signature_invalid",
            "TCB info signed by the TCB Signing key",
            "signature does not verify over the stored bytes",
        )
    tcb = json.loads(tcb_text)
    if tcb.get("id") != "TDX":
        raise CollateralError("collateral.wrong_type", "TCB info id TDX", repr(tcb.get("id")))
    if fmspc and tcb.get("fmspc", "").upper() != fmspc.upper():
        raise CollateralError("collateral.fmspc_mismatch", f"TCB info for FMSPC {fmspc.upper()}", str(tcb.get("fmspc")))
    _check_window("TCB info", parse_iso_ts(tcb["issueDate"]), parse_iso_ts(tcb["nextUpdate"]), now)
    nexts["tcb_info"] = parse_iso_ts(tcb["nextUpdate"])
    # QE identity
    qe_text, qe_sig = signed_body(raw.qe_identity_body, "enclaveIdentity")
    qe_chain = load_chain(chain_pem(raw.qe_identity_chain), "QE identity")
    _check_chain(qe_chain, "QE identity", now, root_sha256)
    if not ecdsa_valid(qe_chain[0].public_key(), raw_sig(qe_sig), qe_text.encode(), hashes.SHA256()):
        raise CollateralError(
            "collateral.qe_identity_signature_invalid",
            "QE identity signed by the TCB Signing key",
            "signature does not verify over the stored bytes",
        )
    qe = json.loads(qe_text)
    if qe.get("id") != "TD_QE":
        raise CollateralError("collateral.wrong_type", "QE identity id TD_QE", repr(qe.get("id")))
    _check_window("QE identity", parse_iso_ts(qe["issueDate"]), parse_iso_ts(qe["nextUpdate"]), now)
    nexts["qe_identity"] = parse_iso_ts(qe["nextUpdate"])
    # Root CA CRL
    try:
        root_crl = x509.load_der_x509_crl(_crl_der(raw.root_ca_crl_body))
    except ValueError as exc:
        raise CollateralError("collateral.crl_invalid", "a DER root CA CRL", str(exc)) from None
    if not _crl_signed_by(root_crl, root):
        raise CollateralError(
            "collateral.crl_invalid", "root CA CRL signed by the Intel SGX Root CA", "signature does not verify"
        )
    issue, next_update = _crl_window("root CA CRL", root_crl)
    _check_window("root CA CRL", issue, next_update, now)
    nexts["root_ca_crl"] = next_update
    # PCK CRL
    crl_chain = load_chain(chain_pem(raw.pck_crl_chain), "PCK CRL")
    _check_chain(crl_chain, "PCK CRL", now, root_sha256)
    try:
        pck_crl = x509.load_der_x509_crl(_crl_der(raw.pck_crl_body))
    except ValueError as exc:
        raise CollateralError("collateral.crl_invalid", "a DER PCK CRL", str(exc)) from None
    if pck_crl.issuer != crl_chain[0].subject or not _crl_signed_by(pck_crl, crl_chain[0]):
        raise CollateralError(
            "collateral.crl_invalid",
            f"PCK CRL signed by {crl_chain[0].subject.rfc4514_string()}",
            pck_crl.issuer.rfc4514_string(),
        )
    issue, next_update = _crl_window("PCK CRL", pck_crl)
    _check_window("PCK CRL", issue, next_update, now)
    nexts["pck_crl"] = next_update
    for cert in tcb_chain[:-1] + qe_chain[:-1] + crl_chain[:-1]:
        if root_crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            raise CollateralError(
                "collateral.revoked", f"{cert.subject.rfc4514_string()} not revoked", "listed in the root CA CRL"
            )
    return CollateralStatus(
        fmspc=str(tcb["fmspc"]).upper(),
        tcb_evaluation_data_number=int(tcb["tcbEvaluationDataNumber"]),
        earliest_next_update=min(nexts.values()),
        next_updates=nexts,
    )
