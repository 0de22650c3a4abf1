"""Collateral fetch, cache and refresh against a local PCCS stand-in (127.0.0.1 only, stopped at the
end) serving the real raw Intel collateral from tests/fixtures/tdx-quotes/raw: a valid set, an
expired set and PCCS errors."""

from __future__ import annotations

import json
import os
import stat
import urllib.parse
from pathlib import Path

import pytest

from tdxattest.cli import main
from tdxattest.dcap.cache import CollateralCache
from tdxattest.dcap.collateral import CollateralError
from tdxattest.dcap.collateral import parse_iso_ts as ts
from tdxattest.dcap.verify import verify_quote
from tests.support.loopback_http import LoopbackHttpServer
from tests.support.paths import QUOTES

RAW = QUOTES / "raw"


FMSPC = "00806F050000"
GCP_QUOTE = QUOTES / "quotes" / "gcp-cos113-v4-00806f.bin"


NOW_OK = ts("2025-11-01T00:00:00Z")  # inside the 2025-10 set's window (earliest nextUpdate 2025-11-12T10:45:32Z)


def _pem(path: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    data = path.read_bytes()
    if data.startswith(b"-----"):
        return data.decode()
    return x509.load_der_x509_certificate(data).public_bytes(Encoding.PEM).decode()


def _sets() -> dict:
    root = _pem(RAW / "intel-sgx-root-ca.der")
    platform_ca = _pem(RAW / "common" / "pck_platform_ca.der")
    return {
        "2025-10": {
            "tcb": RAW / "automata-2025-10" / "tcb_info_00806f050000.json",
            "qe": RAW / "automata-2025-10" / "qe_identity_td_qe.json",
            "pckcrl": RAW / "automata-2025-10" / "pck_platform_crl.der",
            "rootcrl": RAW / "common" / "intel_root_ca_crl_2025-03.der",
            "signing_chain": _pem(RAW / "common" / "tcb_signing_cert_2025.der") + root,
            "crl_chain": platform_ca + root,
        },
        "2025-01": {
            "tcb": RAW / "zkdcap-2025-01" / "tcb_info_00806f050000.json",
            "qe": RAW / "zkdcap-2025-01" / "qe_identity_td_qe.json",
            "pckcrl": RAW / "zkdcap-2025-01" / "pck_platform_crl.der",
            "rootcrl": RAW / "zkdcap-2025-01" / "intel_root_ca_crl.der",
            "signing_chain": _pem(RAW / "zkdcap-2025-01" / "tcb_signing_cert.pem") + root,
            "crl_chain": platform_ca + root,
        },
    }


class FakePccs(LoopbackHttpServer):
    """A PCCS stand-in: `mode` is a set name ("2025-10", "2025-01") or "error"."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = "2025-10"
        self.sets = _sets()

    def answer(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        if self.mode == "error":
            return 503, b"", {"Error-Code": "ServiceUnavailable", "Error-Message": "PCS unreachable"}
        s = self.sets[self.mode]
        url = urllib.parse.urlsplit(path)
        q = urllib.parse.parse_qs(url.query)
        enc = lambda pem: urllib.parse.quote(pem, safe="")  # noqa: E731
        if url.path == "/tdx/certification/v4/tcb" and q.get("fmspc") == [FMSPC]:
            return 200, s["tcb"].read_bytes(), {"TCB-Info-Issuer-Chain": enc(s["signing_chain"])}
        if url.path == "/tdx/certification/v4/qe/identity":
            return 200, s["qe"].read_bytes(), {"SGX-Enclave-Identity-Issuer-Chain": enc(s["signing_chain"])}
        if url.path == "/sgx/certification/v4/pckcrl" and q.get("ca") == ["platform"]:
            return 200, s["pckcrl"].read_bytes(), {"SGX-PCK-CRL-Issuer-Chain": enc(s["crl_chain"])}
        if url.path == "/sgx/certification/v4/rootcacrl":
            return 200, s["rootcrl"].read_bytes().hex().encode(), {}  # PCCS serves it as hex
        return 404, b"", {}


@pytest.fixture()
def pccs():
    with FakePccs() as server:
        yield server


def test_fetch_stores_raw_bytes_private_and_verifies_quote(pccs: FakePccs, tmp_path: Path) -> None:
    cache = CollateralCache(str(tmp_path / "cache"))
    coll, status = cache.get(pccs.url, FMSPC, "platform", NOW_OK)
    assert status["source"] == "fetched" and status["earliest_next_update"] == "2025-11-12T10:45:32Z"
    assert len(pccs.requests) == 4
    entry = Path(status["cache_dir"])
    assert stat.S_IMODE(os.stat(tmp_path / "cache").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(entry).st_mode) == 0o700
    for f in entry.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    # Exactly the bytes the server sent.
    assert (entry / "tcb_info.body").read_bytes() == pccs.sets["2025-10"]["tcb"].read_bytes()
    assert (entry / "qe_identity.body").read_bytes() == pccs.sets["2025-10"]["qe"].read_bytes()
    assert (entry / "pck_crl.body").read_bytes() == pccs.sets["2025-10"]["pckcrl"].read_bytes()
    # Assembled collateral equals the stored fixture set field for field (signed texts byte-exact).
    fixture = json.loads((QUOTES / "collateral" / "automata-2025-10-00806f.json").read_text())
    assert json.loads(coll.dcap.to_json()) == json.loads(
        __import__("dcap_qvl").QuoteCollateralV3.from_json(json.dumps(fixture)).to_json()
    )
    verdict = verify_quote(GCP_QUOTE.read_bytes(), coll, NOW_OK)
    assert verdict.accepted and verdict.tcb_status == "UpToDate"


def test_cache_hit_refresh_margin_and_stale(pccs: FakePccs, tmp_path: Path) -> None:
    cache = CollateralCache(str(tmp_path))
    cache.get(pccs.url, FMSPC, "platform", NOW_OK)
    n = len(pccs.requests)
    _, status = cache.get(pccs.url, FMSPC, "platform", NOW_OK + 3600)
    assert status["source"] == "cache" and len(pccs.requests) == n  # fresh: no request
    # Within 7 days of the earliest nextUpdate: refresh is attempted.
    inside_margin = ts("2025-11-06T00:00:00Z")
    _, status = cache.get(pccs.url, FMSPC, "platform", inside_margin)
    assert status["source"] == "fetched" and len(pccs.requests) > n
    # PCCS down: the cached set is still valid, used with a warning.
    pccs.mode = "error"
    _, status = cache.get(pccs.url, FMSPC, "platform", inside_margin)
    assert status["source"] == "cache" and "refresh failed" in status["warning"] and "HTTP 503" in status["warning"]
    # Past the earliest nextUpdate, PCCS down: stale and cannot be refreshed.
    with pytest.raises(CollateralError) as err:
        cache.get(pccs.url, FMSPC, "platform", ts("2025-11-12T10:45:33Z"))
    assert err.value.check == "collateral.stale"
    assert "nextUpdate 2025-11-12T10:45:32Z" in err.value.seen and "HTTP 503" in err.value.seen


def test_expired_set_is_refused(pccs: FakePccs, tmp_path: Path) -> None:
    pccs.mode = "2025-01"
    with pytest.raises(CollateralError) as err:
        CollateralCache(str(tmp_path)).get(pccs.url, FMSPC, "platform", NOW_OK)
    assert err.value.check == "collateral.stale" and "collateral.expired" in err.value.seen
    assert not any((tmp_path / f"{FMSPC}-platform").glob("*.body"))  # nothing unverified is cached
    # The same set at its own time is fine (and verifies the GCP quote, like the fixture case).
    _, status = CollateralCache(str(tmp_path)).get(pccs.url, FMSPC, "platform", ts("2025-01-21T13:44:20Z"))
    assert status["tcb_evaluation_data_number"] == 17


def test_pccs_error_with_empty_cache(pccs: FakePccs, tmp_path: Path) -> None:
    pccs.mode = "error"
    with pytest.raises(CollateralError) as err:
        CollateralCache(str(tmp_path)).get(pccs.url, FMSPC, "platform", NOW_OK)
    assert err.value.check == "collateral.stale" and "nothing cached" in err.value.seen
    assert "PCS unreachable" in err.value.seen


def test_tampered_cache_is_reverified_and_refetched(pccs: FakePccs, tmp_path: Path) -> None:
    cache = CollateralCache(str(tmp_path))
    _, status = cache.get(pccs.url, FMSPC, "platform", NOW_OK)
    body = Path(status["cache_dir"]) / "tcb_info.body"
    body.write_bytes(body.read_bytes().replace(b'"UpToDate"', b'"OutOfDate"', 1))
    pccs.mode = "error"
    with pytest.raises(CollateralError) as err:
        cache.get(pccs.url, FMSPC, "platform", NOW_OK)
    assert "collateral.tcb_info_signature_invalid" in err.value.seen
    pccs.mode = "2025-10"
    _, status = cache.get(pccs.url, FMSPC, "platform", NOW_OK)
    assert status["source"] == "fetched"
    assert body.read_bytes() == pccs.sets["2025-10"]["tcb"].read_bytes()


def test_cli_fetch_and_verify_with_pccs(pccs: FakePccs, tmp_path: Path, capsys) -> None:
    cache = str(tmp_path / "c")
    rc = main(
        [
            "collateral",
            "fetch",
            "--pccs",
            pccs.url,
            "--quote",
            str(GCP_QUOTE),
            "--cache-dir",
            cache,
            "--at",
            "2025-11-01T00:00:00Z",
            "--json",
            "--out",
            str(tmp_path / "coll.json"),
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"] and out["fmspc"] == FMSPC and out["source"] == "fetched"
    assert stat.S_IMODE(os.stat(tmp_path / "coll.json").st_mode) == 0o600
    rc = main(
        [
            "verify",
            "--quote",
            str(GCP_QUOTE),
            "--pccs",
            pccs.url,
            "--cache-dir",
            cache,
            "--at",
            "2025-11-01T00:00:00Z",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["accepted"] and out["collateral"]["source"] == "cache"
    rc = main(
        [
            "verify",
            "--quote",
            str(GCP_QUOTE),
            "--collateral",
            str(tmp_path / "coll.json"),
            "--at",
            "2025-11-01T00:00:00Z",
        ]
    )
    assert rc == 0
    capsys.readouterr()
    pccs.mode = "error"
    rc = main(
        [
            "collateral",
            "fetch",
            "--pccs",
            pccs.url,
            "--fmspc",
            FMSPC,
            "--cache-dir",
            str(tmp_path / "empty"),
            "--at",
            "2025-11-01T00:00:00Z",
        ]
    )
    assert rc == 1 and "collateral.stale" in capsys.readouterr().err
    rc = main(
        [
            "verify",
            "--quote",
            str(GCP_QUOTE),
            "--pccs",
            pccs.url,
            "--cache-dir",
            cache,
            "--at",
            "2025-12-01T00:00:00Z",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and out["failures"][0]["check"] == "collateral.stale"
    assert main(["collateral", "fetch", "--pccs", pccs.url, "--fmspc", "xyz"]) == 2


def test_the_proxy_keeps_verified_collateral_until_the_cache_would_refresh(
    pccs: FakePccs, tmp_path: Path, monkeypatch
) -> None:
    # The proxy attests every upstream connection: one verified set serves them until its earliest
    # nextUpdate minus the refresh margin; then the cache is asked (and refreshes) again.
    from tdxattest.dcap.appraise import Appraiser, collateral_source

    appraiser = Appraiser(collateral_source(None, pccs.url, str(tmp_path)))
    quote = GCP_QUOTE.read_bytes()
    gets: list[int] = []
    real_get = CollateralCache.get

    def counting_get(self, *args, **kwargs):
        gets.append(args[3])
        return real_get(self, *args, **kwargs)

    monkeypatch.setattr(CollateralCache, "get", counting_get)

    def collateral_at(now: int):
        return appraiser.collateral.collateral_for(quote, now)[0]

    first = collateral_at(NOW_OK)
    assert collateral_at(NOW_OK + 3600) is first
    assert gets == [NOW_OK]
    inside_margin = ts("2025-11-06T00:00:00Z")  # within the 7-day margin of the earliest nextUpdate
    assert collateral_at(inside_margin) is not first
    assert collateral_at(NOW_OK - 60) is not None  # earlier than verified: asked again
    assert gets == [NOW_OK, inside_margin, NOW_OK - 60]
