"""Fetching one DCAP collateral set (PCS / PCCS API v4) over HTTPS.

Endpoints under the base URL (a PCCS, or Intel's PCS base `.../` whose paths start `sgx/`/`tdx/`):

    tdx/certification/v4/tcb?fmspc=F           body {"tcbInfo":...,"signature":...}; header TCB-Info-Issuer-Chain
    tdx/certification/v4/qe/identity           body {"enclaveIdentity":...}; header SGX-Enclave-Identity-Issuer-Chain
    sgx/certification/v4/pckcrl?ca=C&encoding=der   CRL (DER, PEM or hex); header SGX-PCK-CRL-Issuer-Chain
    sgx/certification/v4/rootcacrl             Root CA CRL (DER or hex); if absent (Intel PCS), the CRL
                                               distribution point named in the Intel root certificate
                                               (or `root_crl_url`, a mirror; the tests' loopback seam)

What is fetched is checked by `tdxattest.dcap.collateral.verify_collateral` before anyone uses it.
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING

from tdxattest.dcap.collateral import CollateralError, RawCollateral, chain_pem, load_chain

if TYPE_CHECKING:  # the type of urllib's response headers; nothing here builds one
    from email.message import Message

HTTP_TIMEOUT = 15
TCB_CHAIN_HEADERS = ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain")
QE_CHAIN_HEADERS = ("SGX-Enclave-Identity-Issuer-Chain", "Enclave-Identity-Issuer-Chain")
CRL_CHAIN_HEADERS = ("SGX-PCK-CRL-Issuer-Chain",)


def _http_get(url: str) -> tuple[bytes, Message]:
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


def _header(headers: Message, names: tuple[str, ...], url: str) -> bytes:
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
        root_body = _root_crl_from_distribution_point(chain_pem(crl_chain), first, u_root, root_crl_url)
    return RawCollateral(tcb_body, tcb_chain, qe_body, qe_chain, crl_body, crl_chain, root_body)


def _root_crl_from_distribution_point(
    chain_pem: str, first: CollateralError, tried: str, url: str | None = None
) -> bytes:
    """Intel PCS has no rootcacrl endpoint: fetch the root CA CRL from `url`, else from the CRL
    distribution point of the chain's root. Fails closed with both attempts in one message."""
    from cryptography import x509

    where = "root_crl_url"
    if url is None:
        certs = load_chain(chain_pem, "PCK CRL")
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
