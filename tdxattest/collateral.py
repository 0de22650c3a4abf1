"""DCAP collateral: fetch from a PCCS or Intel PCS (API v4), cache the raw bytes on disk exactly as
signed, re-verify on every use, refresh before the earliest `nextUpdate`.

Endpoints under the base URL (a PCCS, or Intel's PCS base `.../` whose paths start `sgx/`/`tdx/`):

    tdx/certification/v4/tcb?fmspc=F           body {"tcbInfo":...,"signature":...}; header TCB-Info-Issuer-Chain
    tdx/certification/v4/qe/identity           body {"enclaveIdentity":...}; header SGX-Enclave-Identity-Issuer-Chain
    sgx/certification/v4/pckcrl?ca=C&encoding=der   CRL (DER, PEM or hex); header SGX-PCK-CRL-Issuer-Chain
    sgx/certification/v4/rootcacrl             Root CA CRL (DER or hex); if absent (Intel PCS), the CRL
                                               distribution point named in the Intel root certificate
                                               (or `root_crl_url`, a mirror; the tests' loopback seam)

Cache layout: `<dir>/<FMSPC>-<ca>/` (0700) holding the response bodies and the issuer-chain header
values byte for byte (0600) plus `meta.json`. Signed JSON is never re-serialised: the signed
`tcbInfo`/`enclaveIdentity` text is cut out of the stored body at use time.

`verify_collateral` checks, with the `cryptography` package and independently of dcap-qvl: the
issuer chains up to the pinned Intel SGX Root CA (DER SHA-256 below), certificate validity, the
root CRL (signed by the root; it must not list the chain's CAs), the PCK CRL (signed by its CA),
the TCB info and QE identity signatures over their exact bytes, their ids (TDX / TD_QE), the FMSPC,
and every piece's issue/next-update window. Failures raise `CollateralError` with a named check.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

INTEL_SGX_ROOT_CA_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
DEFAULT_REFRESH_MARGIN = 7 * 86400
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "tdxattest", "collateral")
HTTP_TIMEOUT = 15

TCB_CHAIN_HEADERS = ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain")
QE_CHAIN_HEADERS = ("SGX-Enclave-Identity-Issuer-Chain", "Enclave-Identity-Issuer-Chain")
CRL_CHAIN_HEADERS = ("SGX-PCK-CRL-Issuer-Chain",)

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


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def _chain_pem(header_value: bytes) -> str:
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
            )
        )

    def to_dcap_json(self) -> str:
        """dcap-qvl QuoteCollateralV3 JSON (signed texts kept byte-exact)."""
        tcb, tcb_sig = signed_body(self.tcb_info_body, "tcbInfo")
        qe, qe_sig = signed_body(self.qe_identity_body, "enclaveIdentity")
        return json.dumps(
            {
                "pck_crl_issuer_chain": _chain_pem(self.pck_crl_chain),
                "root_ca_crl": _crl_der(self.root_ca_crl_body).hex(),
                "pck_crl": _crl_der(self.pck_crl_body).hex(),
                "tcb_info_issuer_chain": _chain_pem(self.tcb_info_chain),
                "tcb_info": tcb,
                "tcb_info_signature": tcb_sig,
                "qe_identity_issuer_chain": _chain_pem(self.qe_identity_chain),
                "qe_identity": qe,
                "qe_identity_signature": qe_sig,
            }
        )


# --- verification (cryptography) -----------------------------------------------------------------


def _load_chain(pem: str, what: str) -> list:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as exc:
        raise CollateralError("collateral.chain_invalid", f"a PEM {what} issuer chain", str(exc)) from None
    return certs


def _verify_sig(pub, signature: bytes, data: bytes, algorithm) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        pub.verify(signature, data, ec.ECDSA(algorithm))
        return True
    except InvalidSignature:
        return False


def _check_chain(certs: list, what: str, now: int, root_sha256: str) -> Any:
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
    for cert, issuer in zip(certs, certs[1:] + [root]):
        if cert.issuer != issuer.subject or not _verify_sig(
            issuer.public_key(), cert.signature, cert.tbs_certificate_bytes, cert.signature_hash_algorithm
        ):
            raise CollateralError(
                "collateral.chain_invalid",
                f"{cert.subject.rfc4514_string()} signed by {issuer.subject.rfc4514_string()}",
                "bad signature or issuer",
            )
        if not cert.not_valid_before_utc.timestamp() <= now <= cert.not_valid_after_utc.timestamp():
            raise CollateralError(
                "collateral.expired",
                f"{cert.subject.rfc4514_string()} valid at {_iso(now)}",
                f"valid {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} .. "
                f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
            )
    return root


def _check_window(what: str, issue: int, next_update: int, now: int) -> None:
    if now < issue:
        raise CollateralError("collateral.not_yet_valid", f"{what} issued by {_iso(now)}", f"issued {_iso(issue)}")
    if now > next_update:
        raise CollateralError("collateral.expired", f"{what} valid at {_iso(now)}", f"nextUpdate {_iso(next_update)}")


@dataclass(frozen=True)
class CollateralStatus:
    fmspc: str
    tcb_evaluation_data_number: int
    earliest_next_update: int
    next_updates: dict

    def as_dict(self) -> dict:
        return {
            "fmspc": self.fmspc,
            "tcb_evaluation_data_number": self.tcb_evaluation_data_number,
            "earliest_next_update": _iso(self.earliest_next_update),
            "next_updates": {k: _iso(v) for k, v in self.next_updates.items()},
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
    tcb_chain = _load_chain(_chain_pem(raw.tcb_info_chain), "TCB info")
    root = _check_chain(tcb_chain, "TCB info", now, root_sha256)
    if not _verify_sig(tcb_chain[0].public_key(), raw_sig(tcb_sig), tcb_text.encode(), hashes.SHA256()):
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
    qe_chain = _load_chain(_chain_pem(raw.qe_identity_chain), "QE identity")
    _check_chain(qe_chain, "QE identity", now, root_sha256)
    if not _verify_sig(qe_chain[0].public_key(), raw_sig(qe_sig), qe_text.encode(), hashes.SHA256()):
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
    if not root_crl.is_signature_valid(root.public_key()):
        raise CollateralError(
            "collateral.crl_invalid", "root CA CRL signed by the Intel SGX Root CA", "signature does not verify"
        )
    _check_window(
        "root CA CRL", int(root_crl.last_update_utc.timestamp()), int(root_crl.next_update_utc.timestamp()), now
    )
    nexts["root_ca_crl"] = int(root_crl.next_update_utc.timestamp())
    # PCK CRL
    crl_chain = _load_chain(_chain_pem(raw.pck_crl_chain), "PCK CRL")
    _check_chain(crl_chain, "PCK CRL", now, root_sha256)
    try:
        pck_crl = x509.load_der_x509_crl(_crl_der(raw.pck_crl_body))
    except ValueError as exc:
        raise CollateralError("collateral.crl_invalid", "a DER PCK CRL", str(exc)) from None
    if pck_crl.issuer != crl_chain[0].subject or not pck_crl.is_signature_valid(crl_chain[0].public_key()):
        raise CollateralError(
            "collateral.crl_invalid",
            f"PCK CRL signed by {crl_chain[0].subject.rfc4514_string()}",
            pck_crl.issuer.rfc4514_string(),
        )
    _check_window("PCK CRL", int(pck_crl.last_update_utc.timestamp()), int(pck_crl.next_update_utc.timestamp()), now)
    nexts["pck_crl"] = int(pck_crl.next_update_utc.timestamp())
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


# --- fetching ------------------------------------------------------------------------------------


def _http_get(url: str) -> tuple[bytes, Any]:
    import urllib.error
    import urllib.request

    host = urllib.parse.urlsplit(url).hostname or ""
    handlers = [urllib.request.ProxyHandler({})] if host in ("127.0.0.1", "localhost", "::1") else []
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(urllib.request.Request(url, headers={"Accept": "*/*"}), timeout=HTTP_TIMEOUT) as resp:
            return resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        detail = exc.headers.get("Error-Message") or exc.headers.get("Error-Code") or exc.reason
        raise CollateralError("collateral.fetch_failed", f"HTTP 200 from {url}", f"HTTP {exc.code} {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CollateralError("collateral.fetch_failed", f"a response from {url}", str(reason)) from None


def _header(headers: Any, names: tuple[str, ...], url: str) -> bytes:
    for n in names:
        v = headers.get(n)
        if v:
            return v.encode("ascii")
    raise CollateralError("collateral.fetch_failed", f"header {names[0]} in the response from {url}", "missing")


def fetch_collateral(base_url: str, fmspc: str, ca: str = "platform", root_crl_url: str | None = None) -> RawCollateral:
    """Fetch one collateral set (PCS/PCCS API v4). Raises CollateralError on any HTTP failure.

    The root CA CRL comes from the server's `sgx/certification/v4/rootcacrl` (a PCCS); when that
    fails (Intel's PCS has no such path) from `root_crl_url` if given, else from the CRL
    distribution point named in the Intel root certificate of the PCK CRL issuer chain
    (https://certificates.trustedservices.intel.com/IntelSGXRootCA.der). `root_crl_url` is for a
    mirror of that CRL (air-gapped sites) and is the tests' seam to keep every request on loopback;
    whatever it serves is verified like any root CRL (signed by the pinned Intel SGX Root CA)."""
    base = base_url.rstrip("/") + "/"
    if ca not in ("platform", "processor"):
        raise CollateralError("collateral.fetch_failed", "PCK CA platform or processor", repr(ca))
    u_tcb = urllib.parse.urljoin(base, f"tdx/certification/v4/tcb?fmspc={fmspc.upper()}")
    tcb_body, h = _http_get(u_tcb)
    tcb_chain = _header(h, TCB_CHAIN_HEADERS, u_tcb)
    u_qe = urllib.parse.urljoin(base, "tdx/certification/v4/qe/identity")
    qe_body, h = _http_get(u_qe)
    qe_chain = _header(h, QE_CHAIN_HEADERS, u_qe)
    u_crl = urllib.parse.urljoin(base, f"sgx/certification/v4/pckcrl?ca={ca}&encoding=der")
    crl_body, h = _http_get(u_crl)
    crl_chain = _header(h, CRL_CHAIN_HEADERS, u_crl)
    u_root = urllib.parse.urljoin(base, "sgx/certification/v4/rootcacrl")
    try:
        root_body, _ = _http_get(u_root)
    except CollateralError as first:
        root_body = _root_crl_from_distribution_point(_chain_pem(crl_chain), first, u_root, root_crl_url)
    return RawCollateral(tcb_body, tcb_chain, qe_body, qe_chain, crl_body, crl_chain, root_body)


def _root_crl_from_distribution_point(
    chain_pem: str, first: CollateralError, tried: str, url: str | None = None
) -> bytes:
    """Intel PCS has no rootcacrl endpoint: fetch the root CA CRL from `url`, else from the CRL
    distribution point of the chain's root. Fails closed with both attempts in one message."""
    from cryptography import x509

    where = "root_crl_url"
    if url is None:
        certs = _load_chain(chain_pem, "PCK CRL")
        try:
            dps = certs[-1].extensions.get_extension_for_class(x509.CRLDistributionPoints).value
            url = next(
                n.value for dp in dps for n in (dp.full_name or []) if isinstance(n, x509.UniformResourceIdentifier)
            )
        except (x509.ExtensionNotFound, StopIteration):
            raise first from None
        where = "the Intel root certificate's CRL distribution point"
    try:
        body, _ = _http_get(url)
    except CollateralError as second:
        raise CollateralError(
            "collateral.fetch_failed",
            f"the Intel SGX Root CA CRL from {tried} (PCCS) or from {url} ({where})",
            f"{tried}: {first.seen}; {url}: {second.seen}",
            fix=f"make {url} reachable from this host, or pass a root CRL mirror (root_crl_url / "
            "collateral fetch --root-crl-url), or use a PCCS that serves sgx/certification/v4/rootcacrl",
        ) from None
    return body


# --- the on-disk cache ---------------------------------------------------------------------------


def _write_private(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"  # the proxy's executor threads share a pid
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class CollateralCache:
    """Raw collateral per (FMSPC, PCK CA) on disk; verified on every `get`."""

    def __init__(
        self,
        directory: str | None = None,
        refresh_margin: int = DEFAULT_REFRESH_MARGIN,
        root_sha256: str = INTEL_SGX_ROOT_CA_SHA256,
        root_crl_url: str | None = None,
    ):
        self.dir = directory or DEFAULT_CACHE_DIR
        self.margin = refresh_margin
        self.root_sha256 = root_sha256
        self.root_crl_url = root_crl_url  # see fetch_collateral; None = the root cert's distribution point

    def _entry(self, fmspc: str, ca: str) -> str:
        if not fmspc or not all(c in "0123456789ABCDEFabcdef" for c in fmspc) or len(fmspc) != 12:
            raise CollateralError("collateral.fetch_failed", "an FMSPC of 12 hex digits", repr(fmspc))
        return os.path.join(self.dir, f"{fmspc.upper()}-{ca}")

    def load(self, fmspc: str, ca: str = "platform") -> RawCollateral | None:
        d = self._entry(fmspc, ca)
        try:
            parts = []
            for name in FILES:
                with open(os.path.join(d, name), "rb") as fh:
                    parts.append(fh.read())
        except FileNotFoundError:
            return None
        return RawCollateral(*parts)

    def store(self, fmspc: str, ca: str, raw: RawCollateral, meta: dict) -> str:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)
        d = self._entry(fmspc, ca)
        os.makedirs(d, mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)
        for name, data in raw.files().items():
            _write_private(os.path.join(d, name), data)
        _write_private(os.path.join(d, "meta.json"), json.dumps(meta, indent=2).encode())
        return d

    def get(self, base_url: str | None, fmspc: str | None, ca: str, now: int, force_refresh: bool = False):
        """(verification.Collateral, status dict) valid at `now`. Uses the cache when it verifies and
        `now` is before its earliest nextUpdate minus the refresh margin; otherwise fetches. When
        fetching fails, a cached set still valid at `now` is used and the status says so; when
        none is, raises CollateralError("collateral.stale", ...)."""
        from .verify import collateral_from_json_text

        if fmspc is None:
            raise CollateralError("collateral.fetch_failed", "an FMSPC (from the quote's PCK certificate)", "none")
        cached = self.load(fmspc, ca)
        cached_status = None
        cached_error = None
        if cached is not None:
            try:
                cached_status = verify_collateral(cached, now, fmspc, self.root_sha256)
            except CollateralError as exc:
                cached_error = exc
        status: dict = {"fmspc": fmspc.upper(), "ca": ca, "cache_dir": self._entry(fmspc, ca)}
        fresh = cached_status is not None and now < cached_status.earliest_next_update - self.margin
        if fresh and not force_refresh:
            status.update(source="cache", **cached_status.as_dict())
            return collateral_from_json_text(cached.to_dcap_json(), status["cache_dir"]), status
        fetch_error = None
        if base_url:
            try:
                raw = fetch_collateral(base_url, fmspc, ca, root_crl_url=self.root_crl_url)
                new_status = verify_collateral(raw, now, fmspc, self.root_sha256)
                if (
                    cached_status is not None
                    and new_status.tcb_evaluation_data_number < cached_status.tcb_evaluation_data_number
                ):
                    raise CollateralError(
                        "collateral.rollback",
                        f"tcbEvaluationDataNumber >= {cached_status.tcb_evaluation_data_number}",
                        str(new_status.tcb_evaluation_data_number),
                    )
                self.store(fmspc, ca, raw, {"fetched_at": _iso(now), "url": base_url, **new_status.as_dict()})
                status.update(source="fetched", **new_status.as_dict())
                return collateral_from_json_text(raw.to_dcap_json(), status["cache_dir"]), status
            except CollateralError as exc:
                fetch_error = exc
        if cached_status is not None:
            status.update(
                source="cache",
                **cached_status.as_dict(),
                warning=f"refresh failed ({fetch_error}); cached collateral valid until "
                f"{_iso(cached_status.earliest_next_update)}"
                if fetch_error
                else None,
            )
            return collateral_from_json_text(cached.to_dcap_json(), status["cache_dir"]), status
        why = []
        if cached_error is not None:
            why.append(f"cached: {cached_error}")
        elif cached is None:
            why.append("nothing cached")
        if fetch_error is not None:
            why.append(f"refresh: {fetch_error}")
        elif not base_url:
            why.append("no PCCS URL to refresh from")
        raise CollateralError(
            "collateral.stale", f"collateral for FMSPC {fmspc.upper()} valid at {_iso(now)}", "; ".join(why)
        )
