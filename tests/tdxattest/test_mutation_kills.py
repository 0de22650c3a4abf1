"""Tests that kill the mutants mutation testing left alive in the verifier and the channel (issue 17,
item 9): each asserts a refusal, a bound or a reported outcome that no other test held."""

from __future__ import annotations

import pytest

from tdxattest.channel.binding import MAX_RESPONSE_ID, response_gpu_nonce, response_report_data
from tdxattest.channel.proxy import check_listen
from tdxattest.core.checks import Findings
from tdxattest.core.errors import InputError

BODY = bytes(32)


def test_a_failed_check_is_reported_as_fail_and_a_passed_one_as_pass() -> None:
    # `"pass" if ok or True` survived: a refused check could read "pass" in the verdict and the audit.
    findings = Findings()
    findings("pin.mrtd", False, "aa", "bb")
    findings("pin.rtmr3", True, "cc", "cc")
    outcomes = {c.check: c.outcome for c in findings.checks}
    assert outcomes == {"pin.mrtd": "fail", "pin.rtmr3": "pass"}
    assert [f.check for f in findings.failures] == ["pin.mrtd"]


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "::", "proxy.example.net", "127.0.0.1.nip.io"])
def test_the_plaintext_listener_refuses_anything_but_loopback(host: str) -> None:
    with pytest.raises(InputError, match="--listen on a loopback address"):
        check_listen(host)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
def test_the_plaintext_listener_takes_loopback(host: str) -> None:
    check_listen(host)


@pytest.mark.parametrize(
    "response_id",
    ["", "x" * (MAX_RESPONSE_ID + 1), "r\u00e9ponse", "resp\nid", "resp\x00"],
    ids=["empty", "too-long", "non-ascii", "newline", "nul"],
)
def test_a_response_id_outside_its_bounds_is_refused(response_id: str) -> None:
    for derive in (response_report_data, response_gpu_nonce):
        with pytest.raises(InputError, match="printable ASCII response id"):
            derive(BODY, response_id)


def test_response_ids_at_the_bounds_are_taken() -> None:
    for rid in ("r", "x" * MAX_RESPONSE_ID):
        assert len(response_report_data(BODY, rid)) == 64 and len(response_gpu_nonce(BODY, rid)) == 32
    assert response_report_data(BODY, "a") != response_report_data(BODY, "b")


class _CountingCache:
    """A stand-in for CollateralCache that counts what the memo asks of it."""

    margin = 100

    def __init__(self, collateral, earliest_next_update: int, warning: bool = False) -> None:
        self.collateral, self.next_update, self.warning, self.calls = collateral, earliest_next_update, warning, 0

    def get(self, base_url, fmspc, ca, now):
        from tdxattest.dcap.collateral import iso

        self.calls += 1
        status = {"earliest_next_update": iso(self.next_update), "fmspc": fmspc}
        if self.warning:
            status["warning"] = "refresh failed; the cached set is still valid"
        return self.collateral, status


def test_the_collateral_memo_keeps_a_set_until_its_next_update_less_the_margin(pki) -> None:
    from tdxattest.dcap.appraise import CachedCollateral
    from tdxattest.dcap.collateral import collateral_from_json_text

    quote = pki.quote(bytes(64))
    cache = _CountingCache(collateral_from_json_text(pki.collateral_json()), earliest_next_update=10_000)
    memo = CachedCollateral(None, cache)  # type: ignore[arg-type]
    assert memo.collateral_for(quote, 1_000)[1].get("source") != "memory" and cache.calls == 1
    assert memo.collateral_for(quote, 9_899)[1]["source"] == "memory" and cache.calls == 1
    # From nextUpdate - margin on, the cache decides again (it refreshes there).
    assert memo.collateral_for(quote, 9_900)[1].get("source") != "memory" and cache.calls == 2
    # A time before the one it was kept at is not served from memory either.
    assert memo.collateral_for(quote, 500)[1].get("source") != "memory" and cache.calls == 3


def test_a_set_served_after_a_failed_refresh_is_not_kept(pki) -> None:
    from tdxattest.dcap.appraise import CachedCollateral
    from tdxattest.dcap.collateral import collateral_from_json_text

    quote = pki.quote(bytes(64))
    cache = _CountingCache(collateral_from_json_text(pki.collateral_json()), 10_000, warning=True)
    memo = CachedCollateral(None, cache)  # type: ignore[arg-type]
    memo.collateral_for(quote, 1_000)
    memo.collateral_for(quote, 1_001)
    assert cache.calls == 2  # retried on the next appraisal, not kept in memory


def test_a_refused_listen_address_is_named_in_the_error() -> None:
    with pytest.raises(InputError) as info:
        check_listen("0.0.0.0")
    assert info.value.seen == "0.0.0.0"
    assert info.value.expected.startswith("--listen on a loopback address (127.0.0.1, ::1, localhost)")
