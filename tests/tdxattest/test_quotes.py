"""Quote verification against the real quotes and collateral in tests/fixtures/tdx-quotes:
every manifest case gives its recorded verdict at its recorded time, and every mutation recipe is
refused with the named failure."""

from __future__ import annotations

import json
from typing import Any

import dcap_qvl
import pytest

from tdxattest.cli import main
from tdxattest.core.policy import DEFAULT_POLICY, Pin, Pins, Policy
from tdxattest.core.quote import parse_quote
from tdxattest.dcap.collateral import collateral_from_json_text, load_collateral
from tdxattest.dcap.collateral import parse_iso_ts as _ts
from tdxattest.dcap.verify import classify_error, report_from_verified_json, verify_quote
from tests.support.paths import QUOTES

MANIFEST_PATH = QUOTES / "manifest.json"
MANIFEST = json.loads(MANIFEST_PATH.read_text())
CASES = MANIFEST["cases"]
RECIPES = MANIFEST["mutation_recipes"]["recipes"]


# dcap-qvl's recorded error for a case -> our named failure.
CASE_FAILURES = {
    "phala-v5-no-tcb-level": "tcb.no_matching_level",
    "gotdxguest-v4-no-tcb-level": "tcb.no_matching_level",
    "azure-v4-no-sept-ve-disable": "td.sept_ve_disable_missing",
    "alibaba-v5-service-td": "td.service_td_not_allowed",
}

RECIPE_FAILURES = {
    "flip-mrtd": "quote.signature_invalid",
    "flip-reportdata": "quote.signature_invalid",
    "flip-rtmr3": "quote.signature_invalid",
    "flip-td-attributes": "quote.signature_invalid",
    "flip-quote-signature": "quote.signature_invalid",
    "flip-attestation-key": "qe.report_binding_mismatch",
    "flip-qe-report": "qe.report_signature_invalid",
    "flip-qe-report-signature": "qe.report_signature_invalid",
    "flip-qe-auth-data": "qe.report_binding_mismatch",
    "truncate-quote": "quote.malformed",
    "header-version-3": "quote.malformed",
    "time-after-pck-crl-next-update": "collateral.expired",
    "time-after-tcb-info-next-update": "collateral.expired",
    "time-before-issue": "collateral.not_yet_valid",
    "time-far-future": "collateral.expired",
    "swap-collateral-other-fmspc": "collateral.fmspc_mismatch",
    "edit-tcb-info-text": "collateral.tcb_info_signature_invalid",
    "reserialize-tcb-info": "collateral.tcb_info_signature_invalid",
    "flip-qe-identity-signature": "collateral.qe_identity_signature_invalid",
    "flip-tcb-info-signature": "collateral.tcb_info_signature_invalid",
    "swap-crls": "collateral.crl_invalid",
    "sgx-collateral-for-tdx-quote": "collateral.wrong_type",
    "wrong-root-ca": "collateral.root_mismatch",  # issue 17: it was named crl_invalid
}


NARROWED = {"collateral.crl_invalid": "collateral.root_mismatch"}

GRACE = Policy(out_of_date_grace_days=30)  # an OutOfDate quote takes dcap-qvl's claims mode for its TCB date


def _case(case_id: str) -> dict:
    return next(c for c in CASES if c["id"] == case_id)


def _quote(rel: str) -> bytes:
    return (QUOTES / rel).read_bytes()


def _recorded_error(entry: dict) -> str:
    return " ".join(entry["error"].removeprefix("Verification failed: ").split())


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case_gives_recorded_verdict(case: dict) -> None:
    quote = _quote(case["quote_file"])
    coll = load_collateral(str(QUOTES / case["collateral_file"]))
    expected = case["dcap_qvl_0_7_0"]
    # Accept every non-revoked status so the recorded TCB status itself is what we compare.
    permissive = Policy(
        allowed_tcb_statuses=frozenset({"UpToDate", "OutOfDate", "SWHardeningNeeded"}),
        allowed_advisories=frozenset(expected.get("advisory_ids", [])),
    )
    verdict = verify_quote(quote, coll, case["verify_at_unix"], permissive)
    default = verify_quote(quote, coll, case["verify_at_unix"], DEFAULT_POLICY)
    # A grace-period policy reaches the same status / failure; for OutOfDate it learns the TCB date.
    graced = verify_quote(quote, coll, case["verify_at_unix"], GRACE)
    assert graced.tcb_status == default.tcb_status
    assert [f.check for f in graced.failures if not f.check.startswith("tcb.")] == [
        f.check for f in default.failures if not f.check.startswith("tcb.")
    ]
    if expected.get("status") == "OutOfDate":
        grace_fail = next(f for f in graced.failures if f.check == "tcb.out_of_date_grace_expired")
        assert "tcbDate 2023-08-09T00:00:00Z + 30 days" in grace_fail.expected
    if expected["ok"]:
        assert verdict.report_verified
        assert verdict.tcb_status == expected["status"]
        assert list(verdict.advisory_ids) == expected["advisory_ids"]
        assert verdict.accepted, verdict.failures
        # Default policy: UpToDate only, no advisories.
        assert default.tcb_status == expected["status"]
        if expected["status"] == "UpToDate":
            assert default.accepted, default.failures
        else:
            names = {f.check for f in default.failures}
            assert "tcb.status_not_allowed" in names
            assert "tcb.advisory_not_allowed" in names
        # The verified report equals the manifest's parsed measurements and our own parser.
        info = MANIFEST["quotes"][case["quote_file"]]
        r = verdict.report
        assert r is not None
        assert r.mrtd.hex() == info["mr_td"]
        assert [r.rtmr0.hex(), r.rtmr1.hex(), r.rtmr2.hex(), r.rtmr3.hex()] == [info[f"rtmr{i}"] for i in range(4)]
        assert r.mrseam.hex() == info["mr_seam"] and r.xfam.hex() == info["xfam"]
        assert r.td_attributes.hex() == info["td_attributes"] and r.tee_tcb_svn.hex() == info["tee_tcb_svn"]
        assert r.mrconfigid.hex() == info["mr_config_id"]
        assert verdict.fmspc == info["fmspc"].upper()
        assert parse_quote(quote).report == r
        # ... and equals dcap-qvl's own verified report.
        verified = dcap_qvl.verify(quote, coll.dcap, case["verify_at_unix"])
        assert report_from_verified_json(json.loads(verified.to_json())["report"]) == r
    else:
        assert not verdict.accepted and not default.accepted
        assert not verdict.report_verified
        assert [f.check for f in verdict.failures] == [CASE_FAILURES[case["id"]]]
        assert _recorded_error(expected) in verdict.failures[0].seen


def test_every_case_is_covered() -> None:
    failing = {c["id"] for c in CASES if not c["dcap_qvl_0_7_0"]["ok"]}
    assert failing == set(CASE_FAILURES), "a new failing case needs its named failure here"
    assert {r["id"] for r in RECIPES} == set(RECIPE_FAILURES), "a new recipe needs its named failure here"


# --- mutation recipes ---------------------------------------------------------------------------


def _xor(q: bytes, i: int) -> bytes:
    b = bytearray(q)
    b[i] ^= 1
    return bytes(b)


def _coll_edit(doc: dict, key: str, fn) -> str:
    doc = dict(doc)
    doc[key] = fn(doc[key])
    return json.dumps(doc)


def _flip_hex_byte(h: str, n: int) -> str:
    b = bytearray.fromhex(h)
    b[n] ^= 1
    return b.hex()


def _apply(recipe_id: str):
    """(quote, collateral json text, now, root_der or None) for a recipe."""
    base = MANIFEST["mutation_recipes"]["base"]
    q = _quote(base["quote"])
    text = (QUOTES / base["collateral"]).read_text()
    doc = json.loads(text)
    now = base["verify_at_unix"]
    root = None
    flips = {
        "flip-mrtd": 184,
        "flip-reportdata": 568,
        "flip-rtmr3": 520,
        "flip-td-attributes": 168,
        "flip-quote-signature": 636,
        "flip-attestation-key": 700,
        "flip-qe-report": 870,
        "flip-qe-report-signature": 1154,
        "flip-qe-auth-data": 1220,
    }
    if recipe_id in flips:
        q = _xor(q, flips[recipe_id])
    elif recipe_id == "truncate-quote":
        q = q[:1000]
    elif recipe_id == "header-version-3":
        q = bytes([3]) + q[1:]
    elif recipe_id == "time-after-pck-crl-next-update":
        now = _ts("2025-07-19T10:00:36Z")
    elif recipe_id == "time-after-tcb-info-next-update":
        now = _ts("2025-07-20T00:00:00Z")
    elif recipe_id == "time-before-issue":
        now = _ts("2025-06-19T09:00:00Z")
    elif recipe_id == "time-far-future":
        now = _ts("2030-01-01T00:00:00Z")
    elif recipe_id == "swap-collateral-other-fmspc":
        text = (QUOTES / "collateral/automata-2025-10-00806f.json").read_text()
        now = _ts("2025-11-01T00:00:00Z")
    elif recipe_id == "edit-tcb-info-text":
        assert '"OutOfDate"' in doc["tcb_info"]
        text = _coll_edit(doc, "tcb_info", lambda s: s.replace('"OutOfDate"', '"UpToDate"', 1))
    elif recipe_id == "reserialize-tcb-info":
        text = _coll_edit(doc, "tcb_info", lambda s: json.dumps(json.loads(s)))
    elif recipe_id == "flip-qe-identity-signature":
        text = _coll_edit(doc, "qe_identity_signature", lambda s: _flip_hex_byte(s, 5))
    elif recipe_id == "flip-tcb-info-signature":
        text = _coll_edit(doc, "tcb_info_signature", lambda s: _flip_hex_byte(s, 5))
    elif recipe_id == "swap-crls":
        doc["pck_crl"], doc["root_ca_crl"] = doc["root_ca_crl"], doc["pck_crl"]
        text = json.dumps(doc)
    elif recipe_id == "sgx-collateral-for-tdx-quote":
        text = (QUOTES / "collateral/dcapqvl-2025-06-sgx-negative.json").read_text()
    elif recipe_id == "wrong-root-ca":
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        pem = (QUOTES / "raw/intel-qvl-sample-root-ca.pem").read_bytes()
        root = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    else:
        raise AssertionError(f"unknown recipe {recipe_id}")
    return q, text, now, root


def test_mutation_base_is_accepted() -> None:
    _, text, now, _ = _apply("truncate-quote")
    base = MANIFEST["mutation_recipes"]["base"]
    verdict = verify_quote(_quote(base["quote"]), collateral_from_json_text(text), now)
    assert verdict.accepted and verdict.tcb_status == "UpToDate"


@pytest.mark.parametrize("policy", [DEFAULT_POLICY, GRACE], ids=["default-policy", "grace-policy"])
@pytest.mark.parametrize("recipe", RECIPES, ids=[r["id"] for r in RECIPES])
def test_mutation_is_refused_with_named_failure(recipe: dict, policy: Policy) -> None:
    q, text, now, root = _apply(recipe["id"])
    verdict = verify_quote(q, collateral_from_json_text(text), now, policy, root_ca_der=root)
    assert not verdict.accepted
    assert [f.check for f in verdict.failures] == [RECIPE_FAILURES[recipe["id"]]]
    # The seen text is dcap-qvl's own message (normalised), so the named failure is explainable.
    recorded = _recorded_error(recipe["dcap_qvl_0_7_0"])
    # The message alone names the class; the quote and collateral may narrow it (a root CRL that does
    # not verify because the collateral belongs to another root).
    assert NARROWED.get(classify_error(recorded), classify_error(recorded)) == RECIPE_FAILURES[recipe["id"]] or (
        classify_error(recorded) == RECIPE_FAILURES[recipe["id"]]
    )
    assert recorded.split(" Caused by:")[0] in verdict.failures[0].seen


# --- pins against real quotes (change the expectation, not the quote) -----------------------------


def _phala():
    case = _case("phala-v4-uptodate")
    return _quote(case["quote_file"]), load_collateral(str(QUOTES / case["collateral_file"])), case["verify_at_unix"]


def test_pins_match_and_mismatch_on_real_quote() -> None:
    q, coll, now = _phala()
    info = MANIFEST["quotes"]["quotes/phala-v4-b0c06f.bin"]
    good = Pins(
        mrtd=Pin((bytes.fromhex(info["mr_td"]),)),
        rtmr0=Pin((b"\x00" * 48, bytes.fromhex(info["rtmr0"]))),  # a list: either value is accepted
        xfam=Pin((bytes.fromhex(info["xfam"]),)),
        td_attributes=Pin((bytes.fromhex(info["td_attributes"]),)),
        mrseam=Pin((bytes.fromhex(info["mr_seam"]),)),
        mrconfigid=Pin((b"\x00" * 48,)),
    )
    v = verify_quote(q, coll, now, Policy(pins=good))
    assert v.accepted, v.failures
    outcomes = {c.check: c.outcome for c in v.checks}
    assert outcomes["pin.mrtd"] == "pass" and outcomes["pin.rtmr1"] == "not_checked"
    bad = Pins(mrtd=Pin((b"\x11" * 48,)), xfam=Pin((bytes.fromhex("0702060000000000"),)))
    v = verify_quote(q, coll, now, Policy(pins=bad))
    assert not v.accepted
    assert [(f.check, f.seen) for f in v.failures] == [("pin.mrtd", info["mr_td"]), ("pin.xfam", info["xfam"])]
    assert v.failures[0].expected == (b"\x11" * 48).hex()


# --- CLI ------------------------------------------------------------------------------------------


def _cli(capsys, *argv: str) -> tuple[int, Any]:
    """The exit code and the parsed JSON output (Any, as json.loads gives it), or the raw text if not JSON."""
    rc = main(list(argv))
    out = capsys.readouterr()
    try:
        return rc, json.loads(out.out)
    except json.JSONDecodeError:
        return rc, out.out + out.err


def test_cli_accepts_uptodate(capsys) -> None:
    case = _case("gotdxguest-v5-uptodate")
    rc, out = _cli(
        capsys,
        "verify",
        "--quote",
        str(QUOTES / case["quote_file"]),
        "--collateral",
        str(QUOTES / case["collateral_file"]),
        "--at",
        case["verify_at"],
        "--json",
    )
    assert rc == 0 and out["accepted"] and out["tcb_status"] == "UpToDate" and out["failures"] == []
    r = out["td_report"]
    assert r["td_attributes_decoded"]["debug"] is False and r["td_attributes_decoded"]["sept_ve_disable"] is True
    assert out["fmspc"] == "90C06F000000" and "tee_tcb_svn2" in r and len(r["report_data"]) == 128


def test_cli_refuses_outofdate_and_grace_policy_accepts(capsys, tmp_path) -> None:
    case = _case("zkdcap-v4-outofdate")
    args = [
        "verify",
        "--quote",
        str(QUOTES / case["quote_file"]),
        "--collateral",
        str(QUOTES / case["collateral_file"]),
        "--at",
        case["verify_at"],
        "--json",
    ]
    rc, out = _cli(capsys, *args)
    assert rc == 1 and not out["accepted"] and out["tcb_status"] == "OutOfDate"
    assert {f["check"] for f in out["failures"]} == {"tcb.status_not_allowed", "tcb.advisory_not_allowed"}
    # TCB level date is 2023-08-09; verification 2025-01-21 is 531 days later.
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "tcb:\n  out_of_date_grace_days: 532\n  allowed_advisories: [INTEL-SA-00960, INTEL-SA-00982, INTEL-SA-00986]\n"
    )
    rc, out = _cli(capsys, *args, "--policy", str(policy))
    assert rc == 0 and out["accepted"], out["failures"]
    policy.write_text(
        "tcb:\n  out_of_date_grace_days: 531\n  allowed_advisories: [INTEL-SA-00960, INTEL-SA-00982, INTEL-SA-00986]\n"
    )
    rc, out = _cli(capsys, *args, "--policy", str(policy))
    assert rc == 1 and [f["check"] for f in out["failures"]] == ["tcb.out_of_date_grace_expired"]


def test_cli_pins_json_and_report_data(capsys, tmp_path) -> None:
    case = _case("phala-v4-uptodate")
    info = MANIFEST["quotes"]["quotes/phala-v4-b0c06f.bin"]
    pins = {
        "schema": 1,
        "mrtd": None,
        "mrtdCandidates": {"single": info["mr_td"], "twoPass": "00" * 48},
        "rtmr0": info["rtmr0"],
        "rtmr1": "ab" * 48,
        "rtmr2": None,
        "rtmr3": None,
        "reasons": {"rtmr2": "cmdline not pinned yet", "rtmr3": "workload manifest not pinned yet"},
        "tdAttributes": info["td_attributes"],
    }
    path = tmp_path / "pins.json"
    path.write_text(json.dumps(pins))
    base = [
        "verify",
        "--quote",
        str(QUOTES / case["quote_file"]),
        "--collateral",
        str(QUOTES / case["collateral_file"]),
        "--at",
        case["verify_at"],
        "--json",
        "--pins",
        str(path),
        "--accept-mrtd-candidates",
    ]
    rc, out = _cli(capsys, *base)
    assert rc == 1
    assert [(f["check"], f["expected"], f["seen"]) for f in out["failures"]] == [
        ("pin.rtmr1", "ab" * 48, info["rtmr1"])
    ]
    checks = {c["check"]: c for c in out["checks"]}
    assert checks["pin.mrtd"]["outcome"] == "pass"
    assert checks["pin.rtmr2"]["outcome"] == "not_checked" and "cmdline not pinned yet" in checks["pin.rtmr2"]["reason"]
    pins["rtmr1"] = info["rtmr1"]
    path.write_text(json.dumps(pins))
    rc, out = _cli(capsys, *base, "--report-data", info["report_data"])
    assert rc == 0 and out["accepted"]
    rc, out = _cli(capsys, *base, "--report-data", "00" * 64)
    assert rc == 1 and [f["check"] for f in out["failures"]] == ["binding.report_data_mismatch"]


def test_cli_unusable_input_exit_2(capsys, tmp_path) -> None:
    case = _case("phala-v4-uptodate")
    q, c = str(QUOTES / case["quote_file"]), str(QUOTES / case["collateral_file"])
    assert main(["verify", "--quote", q, "--collateral", str(tmp_path / "missing.json")]) == 2
    bad = tmp_path / "c.json"
    bad.write_text("{}")
    assert main(["verify", "--quote", q, "--collateral", str(bad)]) == 2
    assert main(["verify", "--quote", q, "--collateral", c, "--at", "yesterday"]) == 2
    assert main(["verify", "--quote", q, "--collateral", c, "--report-data", "abcd"]) == 2
    pol = tmp_path / "p.yaml"
    pol.write_text("tcb:\n  alowed_statuses: [UpToDate]\n")
    assert main(["verify", "--quote", q, "--collateral", c, "--policy", str(pol)]) == 2
    err = capsys.readouterr().err
    assert "alowed_statuses" in err


def test_cli_refused_quote_reports_named_dcap_failure(capsys) -> None:
    case = _case("gotdxguest-v4-no-tcb-level")
    rc, out = _cli(
        capsys,
        "verify",
        "--quote",
        str(QUOTES / case["quote_file"]),
        "--collateral",
        str(QUOTES / case["collateral_file"]),
        "--at",
        case["verify_at"],
        "--json",
    )
    assert rc == 1 and out["failures"][0]["check"] == "tcb.no_matching_level"
    assert out["report_verified"] is False and out["td_report"]["td_attributes_decoded"]["sept_ve_disable"] is False


@pytest.mark.parametrize(
    "case", [c for c in CASES if c["dcap_qvl_0_7_0"]["ok"]], ids=[c["id"] for c in CASES if c["dcap_qvl_0_7_0"]["ok"]]
)
def test_tcb_level_date_matches_dcap_qvl_claims(case: dict) -> None:
    """The grace period's TCB date, read from the verified TCB info, equals dcap-qvl's own; a level
    whose status/advisories disagree with dcap-qvl's is not used (None -> dcap-qvl claims mode)."""
    from tdxattest.dcap.verify import _tcb_date, _tcb_date_from_tcb_info

    quote = _quote(case["quote_file"])
    coll = load_collateral(str(QUOTES / case["collateral_file"]))
    now, rec = case["verify_at_unix"], case["dcap_qvl_0_7_0"]
    claims = json.loads(
        dcap_qvl.QuoteVerifier()
        .verify_with_policy(quote, coll.dcap, now, dcap_qvl.QuotePolicy.claims_only(now))
        .to_json()
    )
    want = claims["platform"]["tcb_date_tag"]
    assert _tcb_date_from_tcb_info(quote, coll, rec["status"], tuple(rec["advisory_ids"])) == want
    assert _tcb_date_from_tcb_info(quote, coll, "Revoked", ()) is None
    assert _tcb_date(quote, coll, now, None, "Revoked", ()) == want  # falls back to dcap-qvl
