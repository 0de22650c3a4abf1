"""Collateral fetch from a server that behaves like Intel's PCS: no `sgx/certification/v4/rootcacrl`
path, so the root CA CRL comes from a CRL distribution point. Both stand-ins listen on 127.0.0.1
only (started and stopped here) and serve the real raw Intel collateral from
tests/fixtures/tdx-quotes/raw; the distribution point is redirected to loopback through
`fetch_collateral(root_crl_url=...)` / `CollateralCache(root_crl_url=...)` / `--root-crl-url`.
The production default (the Intel root certificate's own distribution point) is checked with
`_http_get` replaced, so nothing here leaves the machine."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import pytest

from tdxattest.cli import main
from tdxattest.dcap import fetch as fetch_mod
from tdxattest.dcap.cache import CollateralCache
from tdxattest.dcap.collateral import CollateralError, verify_collateral
from tdxattest.dcap.collateral import parse_iso_ts as ts
from tdxattest.dcap.fetch import fetch_collateral
from tests.support.loopback_http import LoopbackHttpServer
from tests.support.paths import QUOTES

RAW = QUOTES / "raw"


FMSPC = "00806F050000"
GCP_QUOTE = QUOTES / "quotes" / "gcp-cos113-v4-00806f.bin"
INTEL_ROOT_CRL_DP = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
ROOT_CRL = RAW / "common" / "intel_root_ca_crl_2025-03.der"


NOW_OK = ts("2025-11-01T00:00:00Z")  # inside the 2025-10 set's window


def _pem(path: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_der_x509_certificate(path.read_bytes()).public_bytes(Encoding.PEM).decode()


class Server(LoopbackHttpServer):
    """`routes` maps a path (query included) to (status, body, headers); anything else is a 404."""

    def __init__(self, routes: dict) -> None:
        super().__init__()
        self.routes = routes

    def answer(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        return self.routes.get(path, (404, b"", {}))


def _pcs_routes(with_rootcacrl: bool = False) -> dict:
    """Intel PCS v4 for FMSPC 00806F050000 (the 2025-10 set): TCB info, QE identity, PCK CRL; the
    root CA CRL path only when `with_rootcacrl` (i.e. a PCCS)."""
    root = _pem(RAW / "intel-sgx-root-ca.der")
    signing = urllib.parse.quote(_pem(RAW / "common" / "tcb_signing_cert_2025.der") + root, safe="")
    crl_chain = urllib.parse.quote(_pem(RAW / "common" / "pck_platform_ca.der") + root, safe="")
    d = RAW / "automata-2025-10"
    routes = {
        f"/tdx/certification/v4/tcb?fmspc={FMSPC}": (
            200,
            (d / "tcb_info_00806f050000.json").read_bytes(),
            {"TCB-Info-Issuer-Chain": signing},
        ),
        "/tdx/certification/v4/qe/identity": (
            200,
            (d / "qe_identity_td_qe.json").read_bytes(),
            {"SGX-Enclave-Identity-Issuer-Chain": signing},
        ),
        "/sgx/certification/v4/pckcrl?ca=platform&encoding=der": (
            200,
            (d / "pck_platform_crl.der").read_bytes(),
            {"SGX-PCK-CRL-Issuer-Chain": crl_chain},
        ),
    }
    if with_rootcacrl:
        routes["/sgx/certification/v4/rootcacrl"] = (200, ROOT_CRL.read_bytes().hex().encode(), {})
    return routes


@pytest.fixture()
def pcs():
    with Server(_pcs_routes()) as server:
        yield server


@pytest.fixture()
def crl_host():
    """The distribution point's stand-in: serves the Intel root CA CRL (DER) at /IntelSGXRootCA.der."""
    with Server({"/IntelSGXRootCA.der": (200, ROOT_CRL.read_bytes(), {"Content-Type": "application/pkix-crl"})}) as s:
        yield s


def fetch_cli(pccs: str, cache_dir: Path, root_crl_url: str) -> int:
    """`tdxattest collateral fetch --json` as of 2025-11-01 with a root CRL from `root_crl_url`."""
    argv = ["collateral", "fetch", "--pccs", pccs, "--fmspc", FMSPC, "--cache-dir", str(cache_dir)]
    return main([*argv, "--at", "2025-11-01T00:00:00Z", "--root-crl-url", root_crl_url, "--json"])


def test_pcs_without_rootcacrl_takes_root_crl_from_distribution_point(pcs: Server, crl_host: Server) -> None:
    raw = fetch_collateral(pcs.url, FMSPC, "platform", root_crl_url=crl_host.url + "IntelSGXRootCA.der")
    assert "/sgx/certification/v4/rootcacrl" in pcs.requests  # tried first, 404 like Intel's PCS
    assert crl_host.requests == ["/IntelSGXRootCA.der"]
    assert raw.root_ca_crl_body == ROOT_CRL.read_bytes()  # stored byte for byte as served (DER)
    status = verify_collateral(raw, NOW_OK, FMSPC)
    assert status.next_updates["root_ca_crl"] > NOW_OK
    # The assembled set is the fixture set, field for field, and verifies the GCP quote.
    import dcap_qvl

    from tdxattest.dcap.collateral import collateral_from_json_text
    from tdxattest.dcap.verify import verify_quote

    coll = collateral_from_json_text(raw.to_dcap_json())
    fixture = (QUOTES / "collateral" / "automata-2025-10-00806f.json").read_text()
    assert json.loads(coll.dcap.to_json()) == json.loads(dcap_qvl.QuoteCollateralV3.from_json(fixture).to_json())
    verdict = verify_quote(GCP_QUOTE.read_bytes(), coll, NOW_OK)
    assert verdict.accepted and verdict.tcb_status == "UpToDate"


def test_cache_and_cli_use_the_root_crl_url(pcs: Server, crl_host: Server, tmp_path: Path, capsys) -> None:
    url = crl_host.url + "IntelSGXRootCA.der"
    cache = CollateralCache(str(tmp_path / "c"), root_crl_url=url)
    _, status = cache.get(pcs.url, FMSPC, "platform", NOW_OK)
    assert status["source"] == "fetched"
    assert (Path(status["cache_dir"]) / "root_ca_crl.body").read_bytes() == ROOT_CRL.read_bytes()
    rc = fetch_cli(pcs.url, tmp_path / "cli", url)
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"] and out["source"] == "fetched" and len(crl_host.requests) == 2


def test_distribution_point_failure_fails_closed_with_one_clear_message(
    pcs: Server, crl_host: Server, tmp_path: Path, capsys
) -> None:
    url = crl_host.url + "IntelSGXRootCA.der"
    crl_host.routes["/IntelSGXRootCA.der"] = (503, b"", {"Error-Message": "CRL host down"})
    with pytest.raises(CollateralError) as err:
        fetch_collateral(pcs.url, FMSPC, "platform", root_crl_url=url)
    e = err.value
    assert e.check == "collateral.fetch_failed"
    # expected: both places the root CRL may come from
    assert "Intel SGX Root CA CRL" in e.expected and "sgx/certification/v4/rootcacrl" in e.expected
    assert url in e.expected
    # seen: what each answered
    assert "rootcacrl: HTTP 404" in e.seen and f"{url}: HTTP 503 CRL host down" in e.seen
    # the fix, and all of it in the one message
    assert e.fix and url in e.fix and "--root-crl-url" in e.fix and "rootcacrl" in e.fix
    assert str(e) == f"{e.check}: expected {e.expected}, seen {e.seen}; fix: {e.fix}"
    # Through the cache: stale, nothing written, the same explanation carried along.
    with pytest.raises(CollateralError) as err:
        CollateralCache(str(tmp_path), root_crl_url=url).get(pcs.url, FMSPC, "platform", NOW_OK)
    assert err.value.check == "collateral.stale" and "nothing cached" in err.value.seen
    assert "HTTP 503 CRL host down" in err.value.seen and "fix: make" in err.value.seen
    assert not (tmp_path / f"{FMSPC}-platform").exists()
    # The CLI: exit 1, the fix on stderr and in the JSON.
    rc = fetch_cli(pcs.url, tmp_path / "cli", url)
    captured = capsys.readouterr()
    assert rc == 1 and "collateral.stale" in captured.err and "fix: make" in captured.err
    assert json.loads(captured.out)["failure"]["check"] == "collateral.stale"


def test_unreachable_distribution_point_fails_closed(pcs: Server) -> None:
    # A port nothing listens on (a just-closed loopback server).
    with Server({}) as gone:
        url = gone.url + "IntelSGXRootCA.der"
    with pytest.raises(CollateralError) as err:
        fetch_collateral(pcs.url, FMSPC, "platform", root_crl_url=url)
    assert err.value.check == "collateral.fetch_failed" and f"{url}: " in err.value.seen and err.value.fix


def test_wrong_crl_at_the_distribution_point_is_not_trusted(pcs: Server, crl_host: Server, tmp_path: Path) -> None:
    # A mirror serving another CRL (the PCK CRL, not signed by the root): fetched, then refused.
    pck_crl = (RAW / "automata-2025-10" / "pck_platform_crl.der").read_bytes()
    crl_host.routes["/IntelSGXRootCA.der"] = (200, pck_crl, {})
    url = crl_host.url + "IntelSGXRootCA.der"
    raw = fetch_collateral(pcs.url, FMSPC, "platform", root_crl_url=url)
    with pytest.raises(CollateralError) as err:
        verify_collateral(raw, NOW_OK, FMSPC)
    assert err.value.check == "collateral.crl_invalid"
    with pytest.raises(CollateralError) as err:
        CollateralCache(str(tmp_path), root_crl_url=url).get(pcs.url, FMSPC, "platform", NOW_OK)
    assert err.value.check == "collateral.stale" and "collateral.crl_invalid" in err.value.seen
    assert not (tmp_path / f"{FMSPC}-platform").exists()


def test_default_is_the_intel_root_certificates_distribution_point(pcs: Server, monkeypatch) -> None:
    """Without root_crl_url the URL is the one in the Intel root certificate (unchanged production
    behaviour); `_http_get` is wrapped so that request is answered locally, never sent."""
    real = fetch_mod._http_get
    seen: list[str] = []

    def fake(url: str):
        seen.append(url)
        if url == INTEL_ROOT_CRL_DP:
            return ROOT_CRL.read_bytes(), {}
        assert urllib.parse.urlsplit(url).hostname == "127.0.0.1", url
        return real(url)

    monkeypatch.setattr(fetch_mod, "_http_get", fake)
    raw = fetch_collateral(pcs.url, FMSPC, "platform")
    assert seen[-2:] == [pcs.url + "sgx/certification/v4/rootcacrl", INTEL_ROOT_CRL_DP]
    assert raw.root_ca_crl_body == ROOT_CRL.read_bytes()

    def down(url: str):
        if url == INTEL_ROOT_CRL_DP:
            raise CollateralError("collateral.fetch_failed", f"a response from {url}", "Name or service not known")
        return real(url)

    monkeypatch.setattr(fetch_mod, "_http_get", down)
    with pytest.raises(CollateralError) as err:
        fetch_collateral(pcs.url, FMSPC, "platform")
    assert INTEL_ROOT_CRL_DP in err.value.expected and "distribution point" in err.value.expected
    assert f"{INTEL_ROOT_CRL_DP}: Name or service not known" in err.value.seen
    assert err.value.fix is not None and INTEL_ROOT_CRL_DP in err.value.fix


def test_pccs_rootcacrl_is_preferred(crl_host: Server) -> None:
    with Server(_pcs_routes(with_rootcacrl=True)) as pccs:
        raw = fetch_collateral(pccs.url, FMSPC, "platform", root_crl_url=crl_host.url + "IntelSGXRootCA.der")
    assert crl_host.requests == []  # the PCCS served it; the distribution point is not asked
    assert raw.root_ca_crl_body == ROOT_CRL.read_bytes().hex().encode()
    verify_collateral(raw, NOW_OK, FMSPC)
