"""The TEST PKI's software quotes go through the real verifier (dcap-qvl + tdxattest.verify): accepted
only with the TEST root CA handed over explicitly, refused against Intel's root, and refused for the
same reasons a hardware quote would be (DEBUG, stale collateral, wrong REPORTDATA, tampering)."""

from __future__ import annotations

import dataclasses

import dcap_qvl
import pytest
from cryptography import x509

from tdxattest.channel.quote_source import QuoteSource
from tdxattest.core.policy import Policy
from tdxattest.core.quote import parse_quote, pck_tcb
from tdxattest.dcap.collateral import collateral_from_json_text
from tdxattest.dcap.verify import verify_quote
from tdxattest.testing.testpki import (
    LABEL,
    OUTDATED_ADVISORIES,
    OUTDATED_TEE_TCB_SVN,
    PCESVN,
    SGX_TCB_COMPONENTS,
    SoftwareQuoteProvider,
    TdIdentity,
    make_test_pki,
)

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
DAY = 86400
RD = bytes(range(64))
TD = TdIdentity(mrconfigid=b"\x11" * 48, mrowner=b"\x22" * 48, mrownerconfig=b"\x33" * 48, rtmr3=b"\x44" * 48)


@pytest.fixture(scope="module")
def pki():
    return make_test_pki(NOW)


@pytest.fixture(scope="module")
def quote(pki) -> bytes:
    return SoftwareQuoteProvider(pki, TD).quote(RD)


def dcap_verify(pki, quote: bytes, now: int = NOW, collateral: str | None = None):
    coll = dcap_qvl.QuoteCollateralV3.from_json(collateral or pki.collateral_json())
    return dcap_qvl.verify_with_root_ca(quote, coll, pki.root_ca_der, now)


def appraise(
    pki, quote: bytes, *, now: int = NOW, collateral: str | None = None, td: TdIdentity = TD, expected: bytes = RD
):
    return verify_quote(
        quote,
        collateral_from_json_text(collateral or pki.collateral_json()),
        now,
        Policy(pins=td.pins()),
        expected_report_data=expected,
        root_ca_der=pki.root_ca_der,
    )


def failures(verdict) -> list[str]:
    return [f.check for f in verdict.failures]


def test_dcap_qvl_accepts_with_the_test_root(pki, quote) -> None:
    result = dcap_verify(pki, quote)
    assert result.status == "UpToDate" and list(result.advisory_ids) == []


def test_verify_quote_accepts_with_pins_and_reports_what_was_put_in(pki, quote) -> None:
    verdict = appraise(pki, quote)
    assert verdict.accepted, verdict.failures
    assert verdict.tcb_status == "UpToDate" and verdict.fmspc == pki.fmspc and verdict.report_verified
    assert {c.check: c.outcome for c in verdict.checks}["pin.mrtd"] == "pass"
    report = verdict.report
    for f in dataclasses.fields(TD):
        assert getattr(report, f.name) == getattr(TD, f.name), f.name
    assert report.report_data == RD and not report.debug and report.sept_ve_disable


def test_refused_against_intels_root(pki, quote) -> None:
    with pytest.raises(ValueError):
        dcap_qvl.verify(quote, dcap_qvl.QuoteCollateralV3.from_json(pki.collateral_json()), NOW)
    verdict = verify_quote(quote, collateral_from_json_text(pki.collateral_json()), NOW)  # no root_ca_der
    assert not verdict.accepted and not verdict.report_verified


def test_refused_against_another_test_root(pki, quote) -> None:
    other = make_test_pki(NOW)
    with pytest.raises(ValueError):
        dcap_qvl.verify_with_root_ca(
            quote, dcap_qvl.QuoteCollateralV3.from_json(pki.collateral_json()), other.root_ca_der, NOW
        )


def test_debug_td_refused(pki) -> None:
    debug_td = TD.debug()
    assert debug_td.td_attributes[0] & 1 and not TD.td_attributes[0] & 1
    verdict = appraise(pki, pki.quote(RD, debug_td), td=debug_td)
    assert not verdict.accepted and failures(verdict) == ["td.debug_enabled"]


def test_stale_collateral_refused(pki, quote) -> None:
    verdict = appraise(pki, quote, collateral=pki.collateral_json(next_update=NOW - 1))
    assert not verdict.accepted and failures(verdict) == ["collateral.expired"]


def test_everything_expired_after_validity_refused(pki, quote) -> None:
    verdict = appraise(pki, quote, now=pki.next_update + DAY)
    assert failures(verdict) == ["collateral.expired"]


def test_collateral_from_the_future_refused(pki, quote) -> None:
    verdict = appraise(pki, quote, now=pki.issued_at - 1)
    assert failures(verdict) == ["collateral.not_yet_valid"]


def test_wrong_report_data_refused(pki, quote) -> None:
    verdict = appraise(pki, quote, expected=bytes(64))
    assert not verdict.accepted and failures(verdict) == ["binding.report_data_mismatch"]


@pytest.mark.parametrize("offset", [30, 48 + 136, 48 + 520 + 63])  # header user data, MRTD, REPORTDATA
def test_tampered_quote_refused(pki, quote, offset: int) -> None:
    tampered = bytearray(quote)
    tampered[offset] ^= 0x01
    verdict = appraise(pki, bytes(tampered))
    assert not verdict.accepted and failures(verdict) == ["quote.signature_invalid"]


def test_revoked_pck_refused() -> None:
    pki = make_test_pki(NOW, revoke=["pck_leaf"])
    verdict = appraise(pki, pki.quote(RD, TD))
    assert failures(verdict) == ["pck.revoked"]


def test_outdated_tee_tcb_and_other_statuses() -> None:
    pki = make_test_pki(NOW, tcb_status="SWHardeningNeeded", advisory_ids=["INTEL-SA-TEST-0002"])
    result = dcap_verify(pki, pki.quote(RD))
    assert result.status == "SWHardeningNeeded" and list(result.advisory_ids) == ["INTEL-SA-TEST-0002"]
    old = dataclasses.replace(TdIdentity(), tee_tcb_svn=OUTDATED_TEE_TCB_SVN)
    result = dcap_verify(pki, pki.quote(RD, old))
    assert result.status == "OutOfDate" and tuple(result.advisory_ids) == OUTDATED_ADVISORIES


def test_our_parser_reads_the_quote(pki, quote) -> None:
    parsed = parse_quote(quote)
    assert parsed.header.version == 4 and parsed.header.att_key_type == 2 and parsed.header.tee_type == 0x81
    assert parsed.header.qe_vendor_id.hex() == "939a7233f79c4ca9940a0db3957f0607"
    assert parsed.fmspc() == pki.fmspc and parsed.pck_ca() == "platform"
    assert parsed.cert_data_type == 6 and parsed.pck_cert_type == 5 and parsed.trailing == 0
    assert parsed.pck_chain_ders() == [pki.pck_leaf_der, pki.pck_ca_der, pki.root_ca_der]
    assert pck_tcb(pki.pck_leaf_der) == (SGX_TCB_COMPONENTS, PCESVN)
    assert parsed.report.mrtd == TD.mrtd and parsed.report.report_data == RD
    assert parse_quote(make_test_pki(NOW, fmspc="00806f050000").quote(RD)).fmspc() == "00806F050000"


def test_every_certificate_says_test_not_intel(pki) -> None:
    root = x509.load_der_x509_certificate(pki.root_ca_der)
    assert "TEST Root CA - NOT INTEL" in root.subject.rfc4514_string()
    for der in (pki.root_ca_der, pki.pck_ca_der, pki.pck_leaf_der, pki.tcb_signing_der):
        subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        assert "TEST" in subject and "NOT INTEL" in subject and "Intel Corporation" not in subject


def test_provider_is_a_labelled_quote_source(pki) -> None:
    provider: QuoteSource = SoftwareQuoteProvider(pki)
    assert provider.label == LABEL == "software-test-pki"
    assert dcap_verify(pki, provider.quote(RD)).status == "UpToDate"
    with pytest.raises(ValueError):
        provider.quote(b"short")


def test_td_identity_checks_sizes_and_defaults_are_production_like() -> None:
    td = TdIdentity()
    assert not td.td_attributes[0] & 1 and int.from_bytes(td.td_attributes, "little") & (1 << 28)
    with pytest.raises(ValueError):
        TdIdentity(mrtd=b"\0" * 32)


@pytest.mark.parametrize(
    "revoke, check, needle",
    [
        # issue 17: a revoked TCB Signing certificate was reported as `pck.revoked`
        ("tcb_signing", "collateral.signer_revoked", "the TCB Signing certificate (serial "),
        ("pck_ca", "pck.ca_revoked", "the PCK CA certificate (serial "),
        ("pck_leaf", "pck.revoked", "the PCK leaf certificate (serial "),
    ],
)
def test_a_revocation_names_the_certificate_it_revokes(revoke, check, needle) -> None:
    pki = make_test_pki(NOW, revoke=[revoke])
    verdict = appraise(pki, pki.quote(RD, TD))
    assert failures(verdict) == [check]
    assert verdict.failures[0].seen.startswith(needle) and "is on the" in verdict.failures[0].seen


def test_a_td_attribute_refusal_still_reports_the_derived_tcb_status() -> None:
    # dcap-qvl raises on SEPT_VE_DISABLE = 0 before it reports a TCB status; the TCB info still gives one.
    pki = make_test_pki(NOW, tcb_status="SWHardeningNeeded", advisory_ids=["INTEL-SA-TEST-0002"])
    td = dataclasses.replace(TD, td_attributes=bytes(8))
    verdict = appraise(pki, pki.quote(RD, td), td=td)
    assert failures(verdict) == ["td.sept_ve_disable_missing"] and verdict.tcb_status is None
    derived = next(c for c in verdict.checks if c.check == "tcb.status_derived")
    assert derived.outcome == "not_checked" and derived.seen == "SWHardeningNeeded (INTEL-SA-TEST-0002)"
    assert "not a verified status" in (derived.reason or "")
