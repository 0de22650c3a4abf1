"""The checks the peer verifiers make that ours lacked (issue 18, item 2), each on a real quote
(tests/fixtures/tdx-quotes, Phala v4 from TDX module 1.5.06): a pass, and the policy that makes it
fail, through dcap-qvl's verification and our policy as `verify` runs them."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from tdxattest.core.checks import Failure
from tdxattest.core.policy import DEFAULT_POLICY, Pin, Pins, Policy, evaluate, policy_from_mapping
from tdxattest.dcap.collateral import collateral_from_json_text, load_collateral
from tdxattest.dcap.verify import verify_quote
from tdxattest.testing.testpki import TestPki
from tests.support.builders import TCB_DATE, facts
from tests.support.paths import QUOTES

MANIFEST = json.loads((QUOTES / "manifest.json").read_text())
CASE = next(c for c in MANIFEST["cases"] if c["id"] == "phala-v4-uptodate")
QUOTE = (QUOTES / CASE["quote_file"]).read_bytes()
COLLATERAL = load_collateral(str(QUOTES / CASE["collateral_file"]))
# What the quote carries (tdxattest decode): QE report ISVSVN 6, PCK PCESVN 11, XFAM e702060000000000.
QE_SVN, PCE_SVN, XFAM = 6, 11, "e702060000000000"


def verdict(policy: Policy):
    return verify_quote(QUOTE, COLLATERAL, CASE["verify_at_unix"], policy)


def check(v, name: str):
    return next(c for c in v.checks if c.check == name)


def test_the_default_policy_accepts_the_real_quote_and_shows_each_new_check() -> None:
    v = verdict(DEFAULT_POLICY)
    assert v.accepted, v.failures
    outcomes = {c.check: (c.outcome, c.seen) for c in v.checks}
    assert outcomes["quote.qe_vendor_not_intel"] == ("pass", "939a7233f79c4ca9940a0db3957f0607")
    assert outcomes["tcb.qe_svn_too_low"] == ("not_checked", None)
    assert outcomes["tcb.pce_svn_too_low"] == ("not_checked", None)
    assert outcomes["td.xfam_not_allowed"] == ("pass", XFAM)  # within go-tdx-guest's xfamFixed0
    for name in ("mrconfigid", "mrowner", "mrownerconfig"):  # all zero unless a stack sets them
        assert outcomes[f"pin.{name}"] == ("pass", "00" * 48)


@pytest.mark.parametrize(
    "key,minimum,name,seen",
    [("min_qe_svn", QE_SVN, "tcb.qe_svn_too_low", QE_SVN), ("min_pce_svn", PCE_SVN, "tcb.pce_svn_too_low", PCE_SVN)],
)
def test_an_svn_minimum_takes_the_signed_value_and_refuses_one_above(
    key: str, minimum: int, name: str, seen: int
) -> None:
    at_minimum = verdict(policy_from_mapping({"tcb": {key: minimum}}))
    assert at_minimum.accepted and (check(at_minimum, name).outcome, check(at_minimum, name).seen) == ("pass", seen)
    above = verdict(policy_from_mapping({"tcb": {key: minimum + 1}}))
    assert above.failures == (Failure(name, f">= {minimum + 1}", seen),)


def test_an_xfam_mask_refuses_the_bits_outside_it() -> None:
    assert verdict(policy_from_mapping({"td": {"xfam_allowed_mask": XFAM}})).accepted
    assert verdict(policy_from_mapping({"td": {"xfam_allowed_mask": "ffffffff00000000"}})).accepted
    without_pkru = "e700060000000000"  # bit 9 (PKRU) cleared
    v = verdict(policy_from_mapping({"td": {"xfam_allowed_mask": without_pkru}}))
    expected = f"XFAM within mask {without_pkru}, bits 0 and 1 set"
    assert v.failures == (Failure("td.xfam_not_allowed", expected, XFAM, "bits 9 outside the mask"),)
    off = verdict(policy_from_mapping({"td": {"xfam_allowed_mask": None}}))
    assert off.accepted and check(off, "td.xfam_not_allowed").outcome == "not_checked"


@pytest.mark.parametrize(
    "xfam,detail",
    [
        ("e7db070000000000", "bits 16 outside the mask"),  # one bit above go-tdx-guest's xfamFixed0
        ("e4db060000000000", "bits 0, 1 (x87, SSE) not set"),
        ("e4db070000000000", "bits 16 outside the mask; bits 0, 1 (x87, SSE) not set"),
    ],
)
def test_the_default_mask_is_what_tdx_allows(xfam: str, detail: str) -> None:
    # A quote cannot be edited without breaking its signature, so the policy is driven with facts.
    v = evaluate(facts(xfam=bytes.fromhex(xfam)), DEFAULT_POLICY, TCB_DATE)
    assert v.failures == (
        Failure("td.xfam_not_allowed", "XFAM within mask e7db060000000000, bits 0 and 1 set", xfam, detail),
    )
    # Every real quote we hold is within it.
    for q in MANIFEST["quotes"].values():
        assert evaluate(facts(xfam=bytes.fromhex(q["xfam"])), DEFAULT_POLICY, TCB_DATE).accepted, q["xfam"]


@pytest.mark.parametrize("name", ["mrowner", "mrownerconfig", "mrconfigid"])
def test_an_owner_or_config_id_the_policy_sets_must_match(name: str) -> None:
    other = b"\x11" * 48
    v = verdict(dataclasses.replace(DEFAULT_POLICY, pins=dataclasses.replace(Pins(), **{name: Pin((other,))})))
    assert v.failures == (Failure(f"pin.{name}", other.hex(), "00" * 48),)
    # `null` in a policy file turns the check off; it is reported as not checked, never as a match.
    v = verdict(policy_from_mapping({"pins": {name: None}}))
    assert v.accepted and check(v, f"pin.{name}").outcome == "not_checked"


def test_a_quote_from_a_non_intel_qe_is_refused_twice_over(pki: TestPki) -> None:
    # dcap-qvl already refuses an unknown QE vendor; the policy holds the signed header to Intel's
    # id again, so a verifier without that rule (or facts from elsewhere) still refuses.
    header = bytearray(pki._header)
    header[12:28] = bytes(16)
    quote = dataclasses.replace(pki, _header=bytes(header)).quote(bytes(64))
    collateral = collateral_from_json_text(pki.collateral_json())
    now = int(time.time())
    v = verify_quote(quote, collateral, now, DEFAULT_POLICY, root_ca_der=pki.root_ca_der)
    assert [f.check for f in v.failures] == ["qe.identity_mismatch"] and "Unknown QE vendor ID" in v.failures[0].seen
    ours = evaluate(dataclasses.replace(facts(), qe_vendor_id=bytes(16)), DEFAULT_POLICY, TCB_DATE)
    assert ours.failures == (Failure("quote.qe_vendor_not_intel", "939a7233f79c4ca9940a0db3957f0607", "00" * 16),)
    lax = evaluate(dataclasses.replace(facts(), qe_vendor_id=bytes(16)), Policy(require_intel_qe_vendor=False), 0)
    assert lax.accepted and check(lax, "quote.qe_vendor_not_intel").outcome == "not_checked"


@pytest.mark.parametrize(
    "doc,expected",
    [
        ({"tcb": {"min_qe_svn": -1}}, "policy.tcb.min_qe_svn: an integer 0..65535 or null"),
        ({"tcb": {"min_pce_svn": "11"}}, "policy.tcb.min_pce_svn: an integer 0..65535 or null"),
        ({"tcb": {"min_pce_svn": True}}, "policy.tcb.min_pce_svn: an integer 0..65535 or null"),
        ({"tcb": {"require_intel_qe_vendor": "yes"}}, "policy.tcb.require_intel_qe_vendor: true or false"),
        ({"td": {"xfam_allowed_mask": "e7"}}, "policy.td.xfam_allowed_mask: 8 bytes of hex"),
        ({"pins": {"mrowner": "00"}}, "pins.mrowner: 48 bytes of hex"),
    ],
)
def test_a_bad_value_for_a_new_check_is_refused_naming_the_key(doc: dict, expected: str) -> None:
    from tdxattest.core.errors import InputError

    with pytest.raises(InputError) as info:
        policy_from_mapping(doc)
    assert info.value.expected == expected
