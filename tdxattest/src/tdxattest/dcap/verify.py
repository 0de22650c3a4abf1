"""Quote verification: dcap-qvl (offline, caller's clock) + the pure policy in `tdxattest.policy`.

    verdict = verify_quote(quote_bytes, load_collateral(path), now, policy, expected_report_data)

dcap-qvl checks the PCK chain, CRLs, collateral signatures and validity, the QE report, the quote
signature, the TCB level and (hard-coded) DEBUG / SEPT_VE_DISABLE / MR_SERVICE_TD. Its errors are
one `ValueError("Verification failed: ...")`; `classify_error` maps them to our named failures.
The measured fields the policy compares are read from dcap-qvl's *verified* report, never from
an unverified parse.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from tdxattest.core.checks import CheckResult, Failure
from tdxattest.core.errors import InputError
from tdxattest.core.policy import (
    DEFAULT_POLICY,
    OUT_OF_DATE_STATUSES,
    Policy,
    QuoteFacts,
    Verdict,
    evaluate,
)
from tdxattest.core.quote import TdReport, parse_quote, quote_pck_tcb, quote_qe_isv_svn, read_td_report
from tdxattest.dcap.collateral import Collateral, TcbLevel, parse_iso_ts

# (failure name, substrings any of which identifies it) -- first match wins; order matters.
_ERROR_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("quote.malformed", ("Failed to decode quote", "Invalid TEE type", "Not enough data", "Unsupported quote")),
    ("quote.signature_invalid", ("ISV enclave report signature",)),
    ("qe.report_signature_invalid", ("Signature is invalid for qe_report",)),
    ("qe.report_binding_mismatch", ("QE report hash mismatch",)),
    ("collateral.tcb_info_signature_invalid", ("Signature is invalid for tcb_info",)),
    ("collateral.qe_identity_signature_invalid", ("Signature is invalid for qe_identity",)),
    ("collateral.expired", ("CrlExpired", "expired", "Expired")),
    ("collateral.not_yet_valid", ("in the future", "NotValidYet", "not yet valid")),
    ("collateral.fmspc_mismatch", ("Fmspc mismatch", "FMSPC mismatch")),
    ("collateral.wrong_type", ("Unsupported QE Identity", "non-TDX TCB info", "TCB info id", "Invalid TCB info id")),
    ("collateral.crl_invalid", ("root CA CRL", "InvalidCrlSignature", "CRL")),
    ("pck.revoked", ("Revoked", "revoked")),
    ("pck.chain_invalid", ("certificate chain", "Certificate", "UnknownIssuer", "BadSignature")),
    ("tcb.no_matching_level", ("No matching TCB level",)),
    ("td.debug_enabled", ("Debug mode",)),
    ("td.sept_ve_disable_missing", ("SEPT_VE_DISABLE",)),
    ("td.service_td_not_allowed", ("MR service TD",)),
    ("td.reserved_attributes", ("Reserved bits", "reserved")),
    ("qe.identity_mismatch", ("QE", "qe_identity", "MRSIGNER", "mrsigner")),
    ("tdx_module.mismatch", ("TDX module", "tdx_module", "SEAM")),
)

# What each dcap-qvl failure class expected, for the verdict's `expected` field.
_EXPECTED = {
    "quote.malformed": "a well-formed TDX quote v4/v5",
    "quote.signature_invalid": "quote signature valid under the attestation key",
    "qe.report_signature_invalid": "QE report signed by the PCK leaf",
    "qe.report_binding_mismatch": "QE report data = SHA-256(attestation key || QE auth data)",
    "collateral.tcb_info_signature_invalid": "TCB info signed by the Intel TCB Signing key",
    "collateral.qe_identity_signature_invalid": "QE identity signed by the Intel TCB Signing key",
    "collateral.expired": "collateral and certificates valid at the verification time",
    "collateral.not_yet_valid": "collateral issued before the verification time",
    "collateral.fmspc_mismatch": "TCB info for the quote's FMSPC",
    "collateral.wrong_type": "TDX collateral (TCB info id TDX, QE identity TD_QE)",
    "collateral.crl_invalid": "CRLs signed by the Intel root / PCK CA",
    "collateral.root_mismatch": "collateral whose chains end at the trusted root CA",
    "collateral.signer_revoked": "TCB info / QE identity signing certificate not revoked",
    "pck.ca_revoked": "PCK CA certificate not revoked",
    "pck.revoked": "PCK certificate not revoked",
    "pck.chain_invalid": "PCK chain to the Intel SGX Root CA",
    "tcb.no_matching_level": "a TCB level in the TCB info matching the platform",
    "td.debug_enabled": "DEBUG = 0",
    "td.sept_ve_disable_missing": "SEPT_VE_DISABLE = 1",
    "td.service_td_not_allowed": "MR_SERVICE_TD = 0",
    "td.reserved_attributes": "reserved TD attribute bits clear",
    "qe.identity_mismatch": "QE matches the TD_QE identity",
    "tdx_module.mismatch": "TDX module matches the TCB info's module identity",
    "verifier.error": "dcap-qvl verification to succeed",
}


def classify_error(message: str) -> str:
    """The named failure for a dcap-qvl error message ("verifier.error" when none fits)."""
    for name, needles in _ERROR_CLASSES:
        if any(n in message for n in needles):
            return name
    return "verifier.error"


def failure_from_error(
    exc: BaseException,
    quote: bytes | None = None,
    collateral: Collateral | None = None,
    root_ca_der: bytes | None = None,
) -> Failure:
    """The named failure for a dcap-qvl error. With the quote and collateral, two of dcap-qvl's
    messages are narrowed to what really happened: a root CA CRL that does not verify because the
    collateral belongs to another root, and which certificate a CRL revokes."""
    msg = str(exc)
    name = classify_error(msg)
    seen = " ".join(msg.removeprefix("Verification failed: ").split())
    if quote is not None and collateral is not None:
        try:
            name, seen = _narrowed(name, seen, quote, collateral, root_ca_der)
        except (ValueError, TypeError, IndexError):
            pass  # collateral too broken to say more: dcap-qvl's words stand
    return Failure(name, _EXPECTED.get(name, _EXPECTED["verifier.error"]), seen, "dcap-qvl")


def _narrowed(name: str, seen: str, quote: bytes, collateral: Collateral, root_ca_der: bytes | None) -> tuple[str, str]:
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from tdxattest.dcap.collateral import INTEL_SGX_ROOT_CA_SHA256

    dcap = collateral.dcap
    if name == "collateral.crl_invalid":
        trusted = hashlib.sha256(root_ca_der).hexdigest() if root_ca_der is not None else INTEL_SGX_ROOT_CA_SHA256
        chain = x509.load_pem_x509_certificates(dcap.tcb_info_issuer_chain.encode())
        ends = hashlib.sha256(chain[-1].public_bytes(serialization.Encoding.DER)).hexdigest()
        if ends != trusted:
            return "collateral.root_mismatch", (
                f"collateral chains ending at {chain[-1].subject.rfc4514_string()} (DER SHA-256 {ends[:16]}...), "
                f"not at the trusted root (DER SHA-256 {trusted[:16]}...); {seen}"
            )
        return name, seen
    if name == "pck.revoked":
        root_crl = x509.load_der_x509_crl(bytes(dcap.root_ca_crl))
        pck_crl = x509.load_der_x509_crl(bytes(dcap.pck_crl))
        for what, pem in (
            ("TCB Signing", dcap.tcb_info_issuer_chain),
            ("QE identity signing", dcap.qe_identity_issuer_chain),
        ):
            signer = x509.load_pem_x509_certificates(pem.encode())[0]
            if root_crl.get_revoked_certificate_by_serial_number(signer.serial_number) is not None:
                return "collateral.signer_revoked", (
                    f"the {what} certificate (serial {signer.serial_number:x}) is on the root CA CRL; {seen}"
                )
        ders = parse_quote(quote).pck_chain_ders()
        if len(ders) > 1:
            ca = x509.load_der_x509_certificate(ders[1])
            if root_crl.get_revoked_certificate_by_serial_number(ca.serial_number) is not None:
                return (
                    "pck.ca_revoked",
                    f"the PCK CA certificate (serial {ca.serial_number:x}) is on the root CA CRL; {seen}",
                )
        if ders:
            leaf = x509.load_der_x509_certificate(ders[0])
            if pck_crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None:
                return name, f"the PCK leaf certificate (serial {leaf.serial_number:x}) is on the PCK CRL; {seen}"
    return name, seen


# dcap-qvl checks the TD attributes after the collateral and the chains, and raises without a TCB
# status; the status the TCB info gives the platform is still worth reporting (not as verified).
_TD_ATTRIBUTE_REFUSALS = frozenset(
    {"td.debug_enabled", "td.sept_ve_disable_missing", "td.service_td_not_allowed", "td.reserved_attributes"}
)


def derived_tcb_check(failure: Failure, quote: bytes, collateral: Collateral) -> CheckResult | None:
    """`tcb.status_derived`: the TCB level the collateral's TCB info gives this platform, when
    dcap-qvl refused the TD's attributes before it reported a status."""
    if failure.check not in _TD_ATTRIBUTE_REFUSALS:
        return None
    try:
        level = _matched_level(quote, collateral)
    except (InputError, ValueError, KeyError, TypeError):
        return None
    if level is None or level.status is None:
        return None
    advisories = f" ({', '.join(level.advisories)})" if level.advisories else ""
    return CheckResult(
        "tcb.status_derived",
        "not_checked",
        seen=f"{level.status}{advisories}",
        reason=f"matched in the TCB info by our own level match; dcap-qvl stopped at {failure.check} before it "
        "reported a status, so this is not a verified status",
    )


def report_from_verified_json(report_json: dict[str, Any]) -> TdReport:
    """A TdReport from dcap-qvl's `VerifiedReport.to_json()["report"]`."""
    kind, r = next(iter(report_json.items()))
    if kind not in ("TD10", "TD15"):
        raise InputError("a TD report (TD10/TD15) in the verified result", kind)
    b = bytes.fromhex
    extra = {}
    if kind == "TD15":  # {"base": <TD 1.0 fields>, "tee_tcb_svn2", "mr_service_td"}
        extra = {"tee_tcb_svn2": b(r["tee_tcb_svn2"]), "mr_servicetd": b(r["mr_service_td"])}
        r = r["base"]
    return TdReport(
        tee_tcb_svn=b(r["tee_tcb_svn"]),
        mrseam=b(r["mr_seam"]),
        mrsignerseam=b(r["mr_signer_seam"]),
        seam_attributes=b(r["seam_attributes"]),
        td_attributes=b(r["td_attributes"]),
        xfam=b(r["xfam"]),
        mrtd=b(r["mr_td"]),
        mrconfigid=b(r["mr_config_id"]),
        mrowner=b(r["mr_owner"]),
        mrownerconfig=b(r["mr_owner_config"]),
        rtmr0=b(r["rt_mr0"]),
        rtmr1=b(r["rt_mr1"]),
        rtmr2=b(r["rt_mr2"]),
        rtmr3=b(r["rt_mr3"]),
        report_data=b(r["report_data"]),
        **extra,
    )


def _claims_tcb_date(claims: dict[str, Any]) -> int | None:
    """The TCB level date that the grace period counts from: the platform level's date, or the
    QE level's date when the QE is the part that is out of date and older."""
    dates = [claims.get("platform", {}).get("tcb_date_tag")]
    qe_level = (claims.get("qe") or {}).get("tcb_level") or {}
    if qe_level.get("tcbStatus") in OUT_OF_DATE_STATUSES and qe_level.get("tcbDate"):
        dates.append(parse_iso_ts(qe_level["tcbDate"]))
    dates = [d for d in dates if isinstance(d, int)]
    return min(dates) if dates else None


def _verified_report(quote: bytes, report_json: Callable[[], dict[str, Any]]) -> TdReport:
    # The measured fields come from the very bytes dcap-qvl has just verified (header and TD report
    # body are covered by the quote signature); reading them here avoids a JSON round trip. The
    # conformance tests check this equals dcap-qvl's own report for every fixture.
    try:
        return read_td_report(quote)
    except InputError:  # a body layout our reader does not know: take dcap-qvl's own report
        try:
            return report_from_verified_json(report_json())
        except (KeyError, StopIteration, InputError) as exc:
            raise ValueError(f"Unsupported quote body for appraisal: {exc}") from None


def _matched_level(quote: bytes, collateral: Collateral, tee_tcb_svn: bytes | None = None) -> TcbLevel | None:
    """The TCB level Intel's algorithm matches for this quote (PCK CPUSVN/PCESVN and TEE_TCB_SVN
    against the TCB info's levels, newest first), or None.

    Cheap by construction: the PCK leaf is located by offsets (no full quote parse), its SGX TCB
    extension is memoised on the leaf's bytes, and the TCB levels are digested once per Collateral."""
    tcb = quote_pck_tcb(quote)
    if tcb is None:
        return None
    levels = collateral.tcb_levels()
    if levels is None:
        return None
    cpusvn, pcesvn = tcb
    tee = tee_tcb_svn if tee_tcb_svn is not None else read_td_report(quote).tee_tcb_svn
    # With a TDX module version (TEE_TCB_SVN[1] > 0) the first two components are judged by
    # tdxModuleIdentities instead, so only components 2..15 are compared.
    skip = 2 if tee[1] > 0 else 0
    tee_part = tee[skip:16]
    ge = operator.ge
    for level in levels:
        if level is None:
            return None
        if (
            pcesvn >= level.pcesvn
            and all(map(ge, cpusvn, level.sgx))
            and all(map(ge, tee_part, level.tdx_from2 if skip else level.tdx))
        ):
            return level
    return None


def _tcb_date_from_tcb_info(
    quote: bytes, collateral: Collateral, status: str, advisories: tuple[str, ...], tee_tcb_svn: bytes | None = None
) -> int | None:
    """The matched level's date -- but only when that level's own status and advisories are exactly
    what dcap-qvl reported (dcap-qvl verified this quote and collateral in the same call before this
    runs); otherwise None (ask dcap-qvl)."""
    level = _matched_level(quote, collateral, tee_tcb_svn)
    if level is None or level.status != status or level.advisories != tuple(sorted(advisories)):
        return None
    return level.date


def _tcb_date(
    quote: bytes,
    collateral: Collateral,
    now: int,
    root_ca_der: bytes | None,
    status: str = "",
    advisories: tuple[str, ...] = (),
    tee_tcb_svn: bytes | None = None,
) -> int | None:
    """The matched TCB level's date (only asked for when a grace-period policy meets an OutOfDate
    quote). Read from the verified TCB info when our level match agrees with dcap-qvl's status and
    advisories; else from dcap-qvl's claims mode (a second run). None (the policy refuses) if both fail."""
    try:
        date = _tcb_date_from_tcb_info(quote, collateral, status, advisories, tee_tcb_svn)
    except (InputError, ValueError, KeyError, TypeError):
        date = None
    if date is not None:
        return date
    import dcap_qvl

    verifier = dcap_qvl.QuoteVerifier(root_ca_der) if root_ca_der is not None else dcap_qvl.QuoteVerifier()
    try:
        claims = json.loads(
            verifier.verify_with_policy(quote, collateral.dcap, now, dcap_qvl.QuotePolicy.claims_only(now)).to_json()
        )
    except ValueError:
        return None
    return _claims_tcb_date(claims)


def verified_facts(
    quote: bytes, collateral: Collateral, now: int, *, need_tcb_date: bool = False, root_ca_der: bytes | None = None
) -> QuoteFacts:
    """Run dcap-qvl. Returns the verified facts; raises ValueError (dcap-qvl's) on refusal.

    With `need_tcb_date` (a grace-period policy) an OutOfDate result costs one more dcap-qvl run
    (claims mode) to learn the matched TCB level's date; other statuses cost nothing extra."""
    import dcap_qvl

    quote = bytes(quote)
    now = int(now)
    if root_ca_der is not None:
        result = dcap_qvl.verify_with_root_ca(quote, collateral.dcap, root_ca_der, now)
    else:
        result = dcap_qvl.verify(quote, collateral.dcap, now)
    status = result.status
    advisories = tuple(result.advisory_ids or ())
    report = _verified_report(quote, lambda: json.loads(result.to_json())["report"])
    tcb_date = None
    if need_tcb_date and status in OUT_OF_DATE_STATUSES:
        tcb_date = _tcb_date(quote, collateral, now, root_ca_der, status, advisories, report.tee_tcb_svn)
    # The SVNs a minimum is held to come from what dcap-qvl has just verified: the QE report's ISV SVN
    # (signed by the PCK key) and the PCK leaf's PCESVN (the chain to Intel's root). The header's own
    # QE SVN and PCE SVN fields are 0 in every real quote we have (tests/fixtures/tdx-quotes), so a
    # minimum on them would hold nothing. The QE vendor id is read from the signed header.
    pck_tcb = quote_pck_tcb(quote)
    return QuoteFacts(
        tcb_status=status,
        advisory_ids=advisories,
        report=report,
        fmspc=collateral.fmspc,
        tcb_date=tcb_date,
        tcb_evaluation_data_number=collateral.evaluation_data_number,
        qe_svn=quote_qe_isv_svn(quote),
        pce_svn=pck_tcb[1] if pck_tcb is not None else None,
        qe_vendor_id=quote[12:28],
    )


def verify_quote(
    quote: bytes,
    collateral: Collateral,
    now: int,
    policy: Policy = DEFAULT_POLICY,
    expected_report_data: bytes | None = None,
    root_ca_der: bytes | None = None,
) -> Verdict:
    """Verify and appraise one quote. Never raises for a refused quote: the verdict says why."""
    return verify_quote_any(quote, collateral, now, (policy,), expected_report_data, root_ca_der)[0]


def verify_quote_any(
    quote: bytes,
    collateral: Collateral,
    now: int,
    policies: Sequence[Policy],
    expected_report_data: bytes | None = None,
    root_ca_der: bytes | None = None,
) -> tuple[Verdict, int]:
    """Verify one quote once and appraise it against each policy in turn (a pin rollover: the
    current pins first, then the retiring ones). Returns the first accepting verdict and its index,
    else the first policy's refusal and 0: a refusal always names what the current pins expect."""
    if not policies:
        raise ValueError("verify_quote_any needs at least one policy")
    if expected_report_data is not None and len(expected_report_data) != 64:
        raise InputError("expected REPORTDATA of 64 bytes", f"{len(expected_report_data)} bytes")
    need_date = any(p.out_of_date_grace_days is not None for p in policies)
    try:
        facts = verified_facts(quote, collateral, now, need_tcb_date=need_date, root_ca_der=root_ca_der)
    except (ValueError, TypeError) as exc:
        failure = failure_from_error(exc, quote, collateral, root_ca_der)
        derived = derived_tcb_check(failure, quote, collateral)
        return refused(quote, failure, "dcap-qvl", extra=(derived,) if derived is not None else ()), 0
    first: Verdict | None = None
    for index, policy in enumerate(policies):
        verdict = evaluate(facts, policy, int(now), expected_report_data)
        verdict = replace(
            verdict, checks=(CheckResult("dcap_qvl.verify", "pass", seen=facts.tcb_status), *verdict.checks)
        )
        if verdict.accepted:
            return verdict, index
        first = first or verdict
    assert first is not None
    return first, 0


def refused(quote: bytes, failure: Failure, by: str, extra: tuple[CheckResult, ...] = ()) -> Verdict:
    """The verdict on a quote refused before the policy could run (`by`: dcap-qvl, or the collateral
    look-up). It shows what the quote claims, marked unverified, when the quote parses at all."""
    report, fmspc = None, None
    try:
        parsed = parse_quote(quote)
        report, fmspc = parsed.report, parsed.fmspc()
    except Exception:  # an unparsable quote simply has no report to show
        pass
    return Verdict(
        accepted=False,
        tcb_status=None,
        advisory_ids=(),
        report=report,
        fmspc=fmspc,
        failures=(failure,),
        checks=(CheckResult(failure.check, "fail", failure.expected, failure.seen, by), *extra),
        report_verified=False,
    )
