"""What the quote policy reports and refuses, down to the field: every check's outcome, expected and
seen values in a verdict, the InputError (expected, seen, file) for each kind of bad policy or pins
document, the values a policy file really sets, and how a stack's pins and GPU expectation are merged
into a policy (issue 17, item 9: the mutants test_policy.py left alive)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from tdxattest.core.checks import CheckResult, Failure
from tdxattest.core.errors import InputError
from tdxattest.core.gpu_policy import DEFAULT_GPU_POLICY, GpuPolicy
from tdxattest.core.pins import GpuExpectation, MrtdCandidates, RegisterPin, StackPins
from tdxattest.core.policy import (
    DAY,
    DEFAULT_POLICY,
    PIN_FIELDS,
    Pin,
    Pins,
    Policy,
    Verdict,
    evaluate,
    load_pins_json,
    load_policy,
    parse_pin,
    pins_from_stack,
    policy_from_mapping,
    read_stack_pins,
    with_pins_json,
    with_stack_pins,
)
from tests.support.builders import MRTD, TCB_DATE, facts, report

OTHER = b"\x99" * 48
CANDIDATE = b"\xaa" * 48
DEBUG_ATTRIBUTES = bytes.fromhex("0100000000000000")  # DEBUG set, SEPT_VE_DISABLE clear
SVN_SEEN = "04010700000000000000000000000000"  # what builders.report carries


def failed(verdict: Verdict) -> list[str]:
    return [f.check for f in verdict.failures]


def check(verdict: Verdict, name: str) -> CheckResult:
    (found,) = [c for c in verdict.checks if c.check == name]
    return found


def refusal(doc: Any) -> InputError:
    with pytest.raises(InputError) as caught:
        policy_from_mapping(doc)
    return caught.value


# --- the verdict: every check, with what was expected and seen ------------------------------------


def test_the_default_policy_reports_every_check_with_its_outcome_expected_and_seen() -> None:
    v = evaluate(facts(), DEFAULT_POLICY, TCB_DATE)
    r = report()
    zero = "00" * 48
    pins = [
        CheckResult(f"pin.{n}", "pass", zero, zero)
        if n in ("mrconfigid", "mrowner", "mrownerconfig")  # all zero unless the stack sets them
        else CheckResult(f"pin.{n}", "not_checked", seen=getattr(r, n).hex(), reason="not pinned")
        for n in PIN_FIELDS
    ]
    assert v.checks == (
        CheckResult("tcb.status_not_allowed", "pass", ["UpToDate"], "UpToDate"),
        CheckResult("tcb.advisory_not_allowed", "pass", [], []),
        CheckResult("tcb.qe_svn_too_low", "not_checked", reason="no minimum set"),
        CheckResult("tcb.pce_svn_too_low", "not_checked", reason="no minimum set"),
        CheckResult(
            "quote.qe_vendor_not_intel", "pass", "939a7233f79c4ca9940a0db3957f0607", "939a7233f79c4ca9940a0db3957f0607"
        ),
        CheckResult("td.debug_enabled", "pass", "DEBUG = 0", "DEBUG = 0"),
        CheckResult("td.sept_ve_disable_missing", "pass", "SEPT_VE_DISABLE = 1", "SEPT_VE_DISABLE = 1"),
        CheckResult("td.tee_tcb_svn_too_low", "not_checked", reason="no minimum set"),
        CheckResult("td.xfam_not_allowed", "pass", "XFAM within mask e7db060000000000, bits 0 and 1 set", r.xfam.hex()),
        *pins,
        CheckResult(
            "binding.report_data_mismatch", "not_checked", seen="42" * 64, reason="no expected REPORTDATA given"
        ),
    )
    assert v.accepted and v.failures == ()


def test_a_strict_policy_reports_each_failed_check_with_expected_and_seen() -> None:
    policy = Policy(
        min_tcb_evaluation_data_number=18,
        min_tee_tcb_svn=bytes.fromhex("05010000000000000000000000000000"),
        pins=Pins(mrtd=Pin((OTHER,))),
    )
    f = facts("SWHardeningNeeded", ["INTEL-SA-00960"], td_attributes=DEBUG_ATTRIBUTES)
    v = evaluate(f, policy, TCB_DATE, b"\x43" * 64)
    assert not v.accepted
    assert v.failures == (
        Failure("tcb.status_not_allowed", ["UpToDate"], "SWHardeningNeeded"),
        Failure("tcb.advisory_not_allowed", [], ["INTEL-SA-00960"]),
        Failure("tcb.evaluation_data_number_too_low", ">= 18", 17),
        Failure("td.debug_enabled", "DEBUG = 0", "DEBUG = 1"),
        Failure("td.sept_ve_disable_missing", "SEPT_VE_DISABLE = 1", "SEPT_VE_DISABLE = 0"),
        Failure("td.tee_tcb_svn_too_low", ">= 05010000000000000000000000000000 (each component)", SVN_SEEN),
        Failure("pin.mrtd", OTHER.hex(), MRTD.hex()),
        Failure("binding.report_data_mismatch", "43" * 64, "42" * 64),
    )
    # Every failure is also a "fail" row among the checks, in the same order.
    assert [c.check for c in v.checks if c.outcome == "fail"] == failed(v)


def test_the_verdict_as_a_dict_carries_the_failures_and_the_report() -> None:
    f = facts("SWHardeningNeeded", ["INTEL-SA-00615"])
    v = evaluate(f, DEFAULT_POLICY, TCB_DATE)
    out = v.as_dict()
    assert out["accepted"] is False and out["tcb_status"] == "SWHardeningNeeded"
    assert out["advisory_ids"] == ["INTEL-SA-00615"] and out["fmspc"] == "00806F050000"
    assert out["report_verified"] is True and out["td_report"] == f.report.as_dict()
    assert out["failures"] == [
        {"check": "tcb.status_not_allowed", "expected": ["UpToDate"], "seen": "SWHardeningNeeded"},
        {"check": "tcb.advisory_not_allowed", "expected": [], "seen": ["INTEL-SA-00615"]},
    ]
    assert out["checks"] == [c.as_dict() for c in v.checks]


def test_a_verdict_without_a_verified_report_renders_td_report_as_null() -> None:
    # A refusal before the quote's body was verified has no report to show.
    v = Verdict(False, None, (), None, None, (Failure("quote.invalid", "a quote", "garbage"),), (), False)
    assert v.as_dict() == {
        "accepted": False,
        "tcb_status": None,
        "advisory_ids": [],
        "fmspc": None,
        "report_verified": False,
        "td_report": None,
        "failures": [{"check": "quote.invalid", "expected": "a quote", "seen": "garbage"}],
        "checks": [],
    }


def test_revoked_is_refused_with_its_reason_and_never_listed_as_expected() -> None:
    p = Policy(allowed_tcb_statuses=frozenset({"UpToDate", "Revoked", "SWHardeningNeeded"}))
    v = evaluate(facts("Revoked"), p, TCB_DATE)
    assert v.failures == (
        Failure("tcb.status_not_allowed", ["SWHardeningNeeded", "UpToDate"], "Revoked", "Revoked is always refused"),
    )
    # Also when another status is refused, the expected list does not offer Revoked.
    v = evaluate(facts("ConfigurationNeeded"), p, TCB_DATE)
    assert v.failures == (Failure("tcb.status_not_allowed", ["SWHardeningNeeded", "UpToDate"], "ConfigurationNeeded"),)


def test_an_expired_grace_period_reports_the_deadline_and_why() -> None:
    v = evaluate(facts("OutOfDate"), Policy(out_of_date_grace_days=30), TCB_DATE + 31 * DAY)
    assert v.failures == (
        Failure(
            "tcb.out_of_date_grace_expired",
            "now <= 2023-09-08T00:00:00Z (tcbDate 2023-08-09T00:00:00Z + 30 days)",
            "2023-09-09T00:00:00Z",
            "status OutOfDate accepted only within the grace period",
        ),
    )


def test_a_grace_period_without_a_tcb_date_reports_what_was_missing() -> None:
    v = evaluate(facts("OutOfDate", tcb_date=None), Policy(out_of_date_grace_days=3650), TCB_DATE)
    assert v.failures == (
        Failure(
            "tcb.out_of_date_grace_expired",
            "tcbDate + 3650 days >= now",
            "no TCB date",
            "the verifier did not report the TCB level's date",
        ),
    )
    assert check(v, "tcb.out_of_date_grace_expired").outcome == "fail"


def test_an_outofdate_status_within_grace_passes_with_the_deadline_reported() -> None:
    v = evaluate(facts("OutOfDate"), Policy(out_of_date_grace_days=30), TCB_DATE + 30 * DAY)
    assert v.accepted
    assert check(v, "tcb.out_of_date_grace_expired") == CheckResult(
        "tcb.out_of_date_grace_expired",
        "pass",
        "now <= 2023-09-08T00:00:00Z (tcbDate 2023-08-09T00:00:00Z + 30 days)",
        "2023-09-08T00:00:00Z",
        "status OutOfDate accepted only within the grace period",
    )


def test_a_refused_advisory_reports_the_allow_list_sorted() -> None:
    p = Policy(
        allowed_tcb_statuses=frozenset({"UpToDate", "SWHardeningNeeded"}),
        allowed_advisories=frozenset({"INTEL-SA-00960", "INTEL-SA-00615"}),
    )
    v = evaluate(facts("SWHardeningNeeded", ["INTEL-SA-00615", "INTEL-SA-01010"]), p, TCB_DATE)
    assert v.failures == (
        Failure("tcb.advisory_not_allowed", ["INTEL-SA-00615", "INTEL-SA-00960"], ["INTEL-SA-01010"]),
    )


@pytest.mark.parametrize("minimum,accepted", [(16, True), (17, True), (18, False)])
def test_the_evaluation_data_number_boundary(minimum: int, accepted: bool) -> None:
    v = evaluate(facts(), Policy(min_tcb_evaluation_data_number=minimum), TCB_DATE)
    assert v.accepted is accepted
    row = check(v, "tcb.evaluation_data_number_too_low")
    assert (row.outcome, row.expected, row.seen) == ("pass" if accepted else "fail", f">= {minimum}", 17)


def test_a_missing_evaluation_data_number_fails_a_set_minimum() -> None:
    f = dataclasses.replace(facts(), tcb_evaluation_data_number=None)
    v = evaluate(f, Policy(min_tcb_evaluation_data_number=1), TCB_DATE)
    assert v.failures == (Failure("tcb.evaluation_data_number_too_low", ">= 1", None),)
    # Without a minimum the check is not made at all.
    assert "tcb.evaluation_data_number_too_low" not in [c.check for c in evaluate(f, DEFAULT_POLICY, TCB_DATE).checks]


def test_a_policy_allowing_debug_reports_the_debug_check_as_not_checked() -> None:
    v = evaluate(facts(td_attributes=DEBUG_ATTRIBUTES), Policy(forbid_debug=False), TCB_DATE)
    assert failed(v) == ["td.sept_ve_disable_missing"]
    assert check(v, "td.debug_enabled") == CheckResult("td.debug_enabled", "not_checked", reason="policy allows DEBUG")


def test_a_policy_not_requiring_sept_ve_disable_reports_it_as_not_checked() -> None:
    v = evaluate(facts(td_attributes=b"\0" * 8), Policy(require_sept_ve_disable=False), TCB_DATE)
    assert v.accepted
    assert check(v, "td.sept_ve_disable_missing") == CheckResult(
        "td.sept_ve_disable_missing", "not_checked", reason="not required by policy"
    )


def test_the_tee_tcb_svn_minimum_is_inclusive_per_component() -> None:
    equal = Policy(min_tee_tcb_svn=bytes.fromhex(SVN_SEEN))
    assert check(evaluate(facts(), equal, TCB_DATE), "td.tee_tcb_svn_too_low") == CheckResult(
        "td.tee_tcb_svn_too_low", "pass", f">= {SVN_SEEN} (each component)", SVN_SEEN
    )
    # One component above the TD's (the third, 07 -> 08) refuses, although the others are lower.
    above = Policy(min_tee_tcb_svn=bytes.fromhex("00000800000000000000000000000000"))
    assert failed(evaluate(facts(), above, TCB_DATE)) == ["td.tee_tcb_svn_too_low"]


def test_a_tee_tcb_svn_minimum_shorter_than_the_report_constrains_its_leading_components() -> None:
    # A Policy built in code may name fewer than 16 components; those it names are still enforced.
    assert evaluate(facts(), Policy(min_tee_tcb_svn=bytes.fromhex("0401")), TCB_DATE).accepted
    v = evaluate(facts(), Policy(min_tee_tcb_svn=bytes.fromhex("0402")), TCB_DATE)
    assert v.failures == (Failure("td.tee_tcb_svn_too_low", ">= 0402 (each component)", SVN_SEEN),)


def test_an_unpinned_register_reports_the_value_seen_and_the_reason() -> None:
    pins = Pins(rtmr2=Pin(None, "workload not pinned yet"), rtmr3=Pin(None))
    v = evaluate(facts(), Policy(pins=pins), TCB_DATE)
    assert check(v, "pin.rtmr2") == CheckResult(
        "pin.rtmr2", "not_checked", seen="03" * 48, reason="workload not pinned yet"
    )
    # A null pin without a reason still says why it was not checked.
    assert check(v, "pin.rtmr3") == CheckResult("pin.rtmr3", "not_checked", seen="00" * 48, reason="not pinned")


def test_a_matching_report_data_binding_passes_with_both_values_reported() -> None:
    v = evaluate(facts(), DEFAULT_POLICY, TCB_DATE, b"\x42" * 64)
    assert check(v, "binding.report_data_mismatch") == CheckResult(
        "binding.report_data_mismatch", "pass", "42" * 64, "42" * 64
    )


# --- policy documents: the values they set ---------------------------------------------------------


def test_a_policy_file_sets_the_minimum_evaluation_data_number_and_it_refuses(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\ntcb:\n  min_evaluation_data_number: 18\n")
    p = load_policy(str(path))
    assert p.min_tcb_evaluation_data_number == 18
    assert failed(evaluate(facts(), p, TCB_DATE)) == ["tcb.evaluation_data_number_too_low"]
    path.write_text("tcb:\n  min_evaluation_data_number: 17\n")
    assert evaluate(facts(), load_policy(str(path)), TCB_DATE).accepted


def test_a_policy_file_sets_the_minimum_tee_tcb_svn_and_it_refuses(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text('td:\n  min_tee_tcb_svn: "04020000000000000000000000000000"\n')
    p = load_policy(str(path))
    assert p.min_tee_tcb_svn == bytes.fromhex("04020000000000000000000000000000")
    assert failed(evaluate(facts(), p, TCB_DATE)) == ["td.tee_tcb_svn_too_low"]
    path.write_text(f'td:\n  min_tee_tcb_svn: "{SVN_SEEN}"\n')
    assert evaluate(facts(), load_policy(str(path)), TCB_DATE).accepted


def test_a_policy_file_can_allow_debug_and_drop_the_sept_ve_disable_requirement() -> None:
    p = policy_from_mapping({"td": {"forbid_debug": False, "require_sept_ve_disable": False}})
    assert p.forbid_debug is False and p.require_sept_ve_disable is False
    assert evaluate(facts(td_attributes=DEBUG_ATTRIBUTES), p, TCB_DATE).accepted
    # Each key sets its own field only.
    p = policy_from_mapping({"td": {"forbid_debug": False}})
    assert (p.forbid_debug, p.require_sept_ve_disable) == (False, True)
    p = policy_from_mapping({"td": {"require_sept_ve_disable": False}})
    assert (p.forbid_debug, p.require_sept_ve_disable) == (True, False)


def test_a_grace_period_of_zero_days_is_a_valid_policy() -> None:
    p = policy_from_mapping({"tcb": {"out_of_date_grace_days": 0}})
    assert p.out_of_date_grace_days == 0
    assert not evaluate(facts("OutOfDate"), p, TCB_DATE + 1).accepted


def test_null_sections_and_null_lists_take_the_safe_defaults() -> None:
    p = policy_from_mapping({"tcb": {"allowed_advisories": None, "min_evaluation_data_number": None}, "td": None})
    assert p == DEFAULT_POLICY


# --- policy documents: refusals name the key, what was expected and what was seen -------------------

TCB_KEYS = (
    "['allowed_advisories', 'allowed_statuses', 'min_evaluation_data_number', 'min_pce_svn', 'min_qe_svn', "
    "'out_of_date_grace_days', 'require_intel_qe_vendor']"
)
STATUS_LIST = (
    "['UpToDate', 'SWHardeningNeeded', 'ConfigurationNeeded', 'ConfigurationAndSWHardeningNeeded', "
    "'OutOfDate', 'OutOfDateConfigurationNeeded', 'Revoked']"
)


@pytest.mark.parametrize(
    "doc,expected,seen",
    [
        (["tcb"], "policy: a mapping", "list"),
        ({"tcb": ["UpToDate"]}, "policy.tcb: a mapping", "list"),
        ({"td": "strict"}, "policy.td: a mapping", "str"),
        ({"pins": 1}, "policy.pins: a mapping", "int"),
        ({"extra": 1}, "policy: keys among ['gpu', 'pins', 'tcb', 'td', 'version']", "unknown key(s) ['extra']"),
        ({"tcb": {"allowed_status": []}}, f"policy.tcb: keys among {TCB_KEYS}", "unknown key(s) ['allowed_status']"),
        (
            {"td": {"debug": False}},
            "policy.td: keys among ['forbid_debug', 'min_tee_tcb_svn', 'require_sept_ve_disable', 'xfam_allowed_mask']",
            "unknown key(s) ['debug']",
        ),
        (
            {"pins": {"mrenclave": None}},
            "policy.pins: keys among ['mrconfigid', 'mrowner', 'mrownerconfig', ",
            "unknown key(s)",
        ),
        ({"version": 2}, "policy: version 1", "2"),
        ({"version": "1"}, "policy: version 1", "'1'"),
        (
            {"tcb": {"allowed_statuses": "UpToDate"}},
            f"policy.tcb.allowed_statuses: a list of {STATUS_LIST}",
            "'UpToDate'",
        ),
        ({"tcb": {"allowed_statuses": ["Fine"]}}, f"policy.tcb.allowed_statuses: a list of {STATUS_LIST}", "['Fine']"),
        (
            {"tcb": {"allowed_statuses": ["UpToDate", "Revoked"]}},
            "policy.tcb.allowed_statuses without Revoked",
            "['UpToDate', 'Revoked']",
        ),
        ({"tcb": {"out_of_date_grace_days": -1}}, "policy.tcb.out_of_date_grace_days: a whole number", "-1"),
        ({"tcb": {"out_of_date_grace_days": True}}, "policy.tcb.out_of_date_grace_days: a whole number", "True"),
        ({"tcb": {"out_of_date_grace_days": "30"}}, "policy.tcb.out_of_date_grace_days: a whole number", "'30'"),
        (
            {"tcb": {"allowed_advisories": "INTEL-SA-00615"}},
            "policy.tcb.allowed_advisories: a list of advisory ids",
            "'INTEL-SA-00615'",
        ),
        ({"tcb": {"allowed_advisories": [615]}}, "policy.tcb.allowed_advisories: a list of advisory ids", "[615]"),
        (
            {"tcb": {"min_evaluation_data_number": "17"}},
            "policy.tcb.min_evaluation_data_number: an integer or null",
            "'17'",
        ),
        (
            {"tcb": {"min_evaluation_data_number": True}},
            "policy.tcb.min_evaluation_data_number: an integer or null",
            "True",
        ),
        ({"tcb": {"min_evaluation_data_number": 17.5}}, "policy.tcb.min_evaluation_data_number: an integer", "17.5"),
        ({"td": {"forbid_debug": "no"}}, "policy.td.forbid_debug: true or false", "'no'"),
        ({"td": {"require_sept_ve_disable": 1}}, "policy.td.require_sept_ve_disable: true or false", "1"),
        ({"td": {"min_tee_tcb_svn": "0401"}}, "policy.td.min_tee_tcb_svn: 16 bytes of hex", "2 bytes"),
        ({"td": {"min_tee_tcb_svn": 401}}, "policy.td.min_tee_tcb_svn: a hex string", "401"),
        ({"pins": {"mrtd": "abcd"}}, "pins.mrtd: 48 bytes of hex", "2 bytes"),
        ({"pins": {"xfam": ["e702060000000000", "zz"]}}, "pins.xfam: a hex string", "'zz'"),
        ({"pins": {"rtmr1": []}}, "pins.rtmr1: a hex string, a non-empty list or null", "[]"),
    ],
)
def test_a_bad_policy_document_is_refused_naming_the_key(doc: Any, expected: str, seen: str) -> None:
    err = refusal(doc)
    assert err.expected.startswith(expected), err.expected
    assert err.seen.startswith(seen), err.seen
    assert err.file is None  # a parsed mapping has no file; load_policy adds it


def test_the_complete_messages_of_a_few_refusals() -> None:
    # The prefix table above keeps rows short; these pin whole messages.
    err = refusal({"tcb": {"out_of_date_grace_days": -1}})
    assert err.expected == "policy.tcb.out_of_date_grace_days: a whole number of days >= 0 or null"
    err = refusal({"pins": {"mrenclave": None}})
    assert err.expected == f"policy.pins: keys among {sorted(PIN_FIELDS)}"
    assert err.seen == "unknown key(s) ['mrenclave']"
    err = refusal({"tcb": {"allowed_statuses": "UpToDate"}})
    assert str(err) == f"<input>: expected policy.tcb.allowed_statuses: a list of {STATUS_LIST}, seen 'UpToDate'"


def test_parse_pin_reads_null_one_value_and_a_list() -> None:
    assert parse_pin("mrtd", None) == Pin(None, "pin is null (not checked)")
    assert parse_pin("mrtd", None, "pins.json: acpi") == Pin(None, "pins.json: acpi")
    assert parse_pin("xfam", " 0xE702060000000000 ") == Pin((bytes.fromhex("e702060000000000"),))
    assert parse_pin("mrtd", [MRTD.hex(), OTHER.hex()]) == Pin((MRTD, OTHER))


# --- policy files ---------------------------------------------------------------------------------


def test_a_policy_file_with_a_key_twice_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nversion: 1\n")
    with pytest.raises(InputError) as caught:
        load_policy(str(path))
    err = caught.value
    assert (err.expected, err.seen, err.file) == (
        "a YAML policy (UTF-8, no key twice)",
        "duplicate key 'version' at line 2, column 1",
        str(path),
    )


def test_a_yaml_refusal_is_cut_to_200_characters(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    key = "k" * 400
    path.write_text(f"{key}: 1\n{key}: 2\n")
    with pytest.raises(InputError) as caught:
        load_policy(str(path))
    assert caught.value.seen == ("duplicate key '" + key)[:200]


def test_a_bad_policy_file_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 2\n")
    with pytest.raises(InputError) as caught:
        load_policy(str(path))
    err = caught.value
    assert (err.expected, err.seen, err.file) == ("policy: version 1", "2", str(path))
    assert str(err) == f"{path}: expected policy: version 1, seen 2"


# --- a stack's pins.json merged into a policy -------------------------------------------------------


def pins_doc(**extra: Any) -> dict[str, Any]:
    return {
        "schema": 1,
        "mrtd": MRTD.hex(),
        "mrtdCandidates": {"single": CANDIDATE.hex(), "twoPass": None},
        "rtmr0": None,
        "reasons": {"rtmr0": "acpi not captured"},
        **extra,
    }


def write_pins(tmp_path: Path, doc: object) -> str:
    path = tmp_path / "pins.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_pins_from_a_stack_use_the_pinned_mrtd_unless_candidates_are_accepted() -> None:
    stack = StackPins(
        mrtd=RegisterPin(MRTD.hex()),
        rtmr1=RegisterPin(None),
        mrtd_candidates=MrtdCandidates(single=CANDIDATE.hex(), two_pass=None),
    )
    pins, keys = pins_from_stack(stack)
    assert pins.mrtd == Pin((MRTD,)) and keys == {"mrtd", "rtmr1"}
    # A register the stack could not pin, with no reason given, says so.
    assert pins.rtmr1 == Pin(None, "pins.json: null (not pinned)")
    pins, _ = pins_from_stack(stack, accept_mrtd_candidates=True)
    assert pins.mrtd == Pin((CANDIDATE,))


def test_load_pins_json_reads_registers_reasons_and_candidates(tmp_path: Path) -> None:
    path = write_pins(tmp_path, pins_doc())
    pins, keys = load_pins_json(path)
    assert keys == {"mrtd", "rtmr0"}
    assert pins.mrtd == Pin((MRTD,)) and pins.rtmr0 == Pin(None, "pins.json: acpi not captured")
    assert pins.rtmr1 == Pin(None, "not pinned")
    pins, _ = load_pins_json(path, accept_mrtd_candidates=True)
    assert pins.mrtd == Pin((CANDIDATE,))
    # The pinned MRTD refuses a TD whose MRTD is the other candidate.
    assert failed(evaluate(facts(mrtd=CANDIDATE), Policy(pins=load_pins_json(path)[0]), TCB_DATE)) == ["pin.mrtd"]


def test_a_pins_file_that_is_not_json_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pins.json"
    path.write_text("{not json")
    with pytest.raises(InputError) as caught:
        read_stack_pins(str(path))
    err = caught.value
    assert (err.expected, err.seen, err.file) == (
        "JSON",
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        str(path),
    )
    with pytest.raises(InputError) as caught:
        load_pins_json(str(path))
    assert caught.value.file == str(path)


def test_a_pins_file_of_another_schema_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = write_pins(tmp_path, {"schema": 2})
    with pytest.raises(InputError) as caught:
        read_stack_pins(path)
    assert (caught.value.expected, caught.value.seen, caught.value.file) == (
        'a pins document with "schema": 1',
        "2",
        path,
    )


def test_with_pins_json_lets_the_stack_registers_win_and_keeps_the_policy_s_others(tmp_path: Path) -> None:
    policy = Policy(pins=Pins(mrtd=Pin((OTHER,)), mrseam=Pin((b"\x5b" * 48,))), out_of_date_grace_days=7)
    merged = with_pins_json(policy, write_pins(tmp_path, pins_doc()))
    assert merged.pins.mrtd == Pin((MRTD,)) and merged.pins.mrseam == Pin((b"\x5b" * 48,))
    assert merged.pins.rtmr0 == Pin(None, "pins.json: acpi not captured")
    assert merged.out_of_date_grace_days == 7 and merged.gpu == DEFAULT_GPU_POLICY
    assert evaluate(facts(), merged, TCB_DATE).accepted
    with_candidates = with_pins_json(policy, write_pins(tmp_path, pins_doc()), accept_mrtd_candidates=True)
    assert with_candidates.pins.mrtd == Pin((CANDIDATE,))


def test_with_stack_pins_uses_the_pinned_mrtd_unless_candidates_are_accepted() -> None:
    stack = StackPins(mrtd=RegisterPin(MRTD.hex()), mrtd_candidates=MrtdCandidates(None, CANDIDATE.hex()))
    assert with_stack_pins(DEFAULT_POLICY, stack).pins.mrtd == Pin((MRTD,))
    assert with_stack_pins(DEFAULT_POLICY, stack, accept_mrtd_candidates=True).pins.mrtd == Pin((CANDIDATE,))


def test_a_stack_that_pins_gpus_makes_gpu_evidence_required_with_its_pins() -> None:
    base = Policy(gpu=GpuPolicy(count=8, reference_source="refs.yaml", ocsp=True))
    stack = StackPins(gpu=GpuExpectation(count=2, vbios=("96.00.9F.00.01",), driver=("550.90.07",), mode="on"))
    policy = with_stack_pins(base, stack)
    assert policy.gpu == GpuPolicy(
        required=True,
        count=2,
        vbios=("96.00.9F.00.01",),
        driver=("550.90.07",),
        reference_source="refs.yaml",
        ocsp=True,
        dev=False,
    )
    assert policy.pins == base.pins


def test_a_devtools_stack_relaxes_the_gpu_policy_and_a_dev_policy_stays_relaxed() -> None:
    devtools = StackPins(gpu=GpuExpectation(count=1, vbios=(), driver=(), mode="devtools"))
    assert with_stack_pins(DEFAULT_POLICY, devtools).gpu.dev is True
    on = StackPins(gpu=GpuExpectation(count=1, vbios=(), driver=(), mode="on"))
    dev_policy = Policy(gpu=GpuPolicy(dev=True))
    assert with_stack_pins(dev_policy, on).gpu.dev is True
    assert with_stack_pins(DEFAULT_POLICY, on).gpu.dev is False


def test_a_stack_without_gpus_leaves_the_gpu_policy_as_it_was() -> None:
    base = Policy(gpu=GpuPolicy(required=True, count=4))
    assert with_stack_pins(base, StackPins(mrtd=RegisterPin(MRTD.hex()))).gpu == GpuPolicy(required=True, count=4)
