"""The pure policy function: (verified facts, policy, time) -> verdict. No dcap-qvl, no files."""

from __future__ import annotations

import dataclasses

import pytest

from tdxattest.core.errors import InputError
from tdxattest.core.policy import (
    DAY,
    DEFAULT_POLICY,
    Pin,
    Pins,
    Policy,
    evaluate,
    parse_pin,
    pins_from_stack_output,
    policy_from_mapping,
)
from tests.support.builders import MRTD, TCB_DATE, facts


def names(verdict) -> list[str]:
    return [f.check for f in verdict.failures]


def test_defaults_accept_uptodate_and_report_not_checked_pins() -> None:
    v = evaluate(facts(), DEFAULT_POLICY, TCB_DATE + 400 * DAY)
    assert v.accepted and v.failures == ()
    outcomes = {c.check: c.outcome for c in v.checks}
    assert all(outcomes[f"pin.{n}"] == "not_checked" for n in ("mrtd", "rtmr0", "mrseam", "xfam"))
    assert outcomes["binding.report_data_mismatch"] == "not_checked"


@pytest.mark.parametrize(
    "status", ["SWHardeningNeeded", "ConfigurationNeeded", "OutOfDate", "OutOfDateConfigurationNeeded", "Revoked"]
)
def test_defaults_refuse_everything_but_uptodate(status: str) -> None:
    v = evaluate(facts(status), DEFAULT_POLICY, TCB_DATE)
    assert names(v) == ["tcb.status_not_allowed"]
    assert v.failures[0].seen == status and v.failures[0].expected == ["UpToDate"]


def test_revoked_is_refused_even_when_listed() -> None:
    p = Policy(allowed_tcb_statuses=frozenset({"UpToDate", "Revoked"}))
    assert names(evaluate(facts("Revoked"), p, TCB_DATE)) == ["tcb.status_not_allowed"]
    with pytest.raises(InputError):
        policy_from_mapping({"tcb": {"allowed_statuses": ["Revoked"]}})


@pytest.mark.parametrize("offset,accepted", [(-1, True), (0, True), (1, False)])
def test_grace_period_boundary(offset: int, accepted: bool) -> None:
    p = Policy(out_of_date_grace_days=30)
    v = evaluate(facts("OutOfDate"), p, TCB_DATE + 30 * DAY + offset)
    assert v.accepted is accepted
    if not accepted:
        assert names(v) == ["tcb.out_of_date_grace_expired"]
        assert "2023-09-08T00:00:00Z" in v.failures[0].expected and v.failures[0].seen == "2023-09-08T00:00:01Z"


def test_grace_zero_days_accepts_only_on_the_tcb_date() -> None:
    p = Policy(out_of_date_grace_days=0)
    assert evaluate(facts("OutOfDate"), p, TCB_DATE).accepted
    assert not evaluate(facts("OutOfDate"), p, TCB_DATE + 1).accepted


def test_grace_without_a_tcb_date_fails_closed() -> None:
    v = evaluate(facts("OutOfDate", tcb_date=None), Policy(out_of_date_grace_days=3650), TCB_DATE)
    assert names(v) == ["tcb.out_of_date_grace_expired"] and v.failures[0].seen == "no TCB date"


def test_grace_does_not_open_outofdate_configuration_needed_unless_listed() -> None:
    p = Policy(out_of_date_grace_days=30)
    assert names(evaluate(facts("OutOfDateConfigurationNeeded"), p, TCB_DATE)) == ["tcb.status_not_allowed"]
    p = Policy(allowed_tcb_statuses=frozenset({"UpToDate", "OutOfDateConfigurationNeeded"}), out_of_date_grace_days=30)
    assert evaluate(facts("OutOfDateConfigurationNeeded"), p, TCB_DATE).accepted
    assert names(evaluate(facts("OutOfDateConfigurationNeeded"), p, TCB_DATE + 31 * DAY)) == [
        "tcb.out_of_date_grace_expired"
    ]


def test_outofdate_listed_without_grace_is_accepted_any_time() -> None:
    p = Policy(allowed_tcb_statuses=frozenset({"UpToDate", "OutOfDate"}))
    assert evaluate(facts("OutOfDate"), p, TCB_DATE + 3650 * DAY).accepted


def test_advisory_allowlist() -> None:
    f = facts("SWHardeningNeeded", ["INTEL-SA-00615", "INTEL-SA-00960"])
    p = Policy(
        allowed_tcb_statuses=frozenset({"UpToDate", "SWHardeningNeeded"}),
        allowed_advisories=frozenset({"INTEL-SA-00615"}),
    )
    v = evaluate(f, p, TCB_DATE)
    assert names(v) == ["tcb.advisory_not_allowed"] and v.failures[0].seen == ["INTEL-SA-00960"]
    p = dataclasses.replace(p, allowed_advisories=frozenset({"INTEL-SA-00615", "INTEL-SA-00960"}))
    assert evaluate(f, p, TCB_DATE).accepted


def test_debug_and_sept_ve_disable() -> None:
    v = evaluate(facts(td_attributes=bytes.fromhex("0100000000000000")), DEFAULT_POLICY, TCB_DATE)
    assert names(v) == ["td.debug_enabled", "td.sept_ve_disable_missing"]
    assert v.failures[0].expected == "DEBUG = 0" and v.failures[0].seen == "DEBUG = 1"
    relaxed = Policy(require_sept_ve_disable=False)
    v = evaluate(facts(td_attributes=b"\0" * 8), relaxed, TCB_DATE)
    assert v.accepted
    assert {c.check: c.outcome for c in v.checks}["td.sept_ve_disable_missing"] == "not_checked"


def test_pins_single_list_and_null() -> None:
    other = b"\x99" * 48
    pins = Pins(mrtd=Pin((other, MRTD)), rtmr0=Pin((b"\1" * 48,)), rtmr1=Pin(None, "kernel not pinned yet"))
    v = evaluate(facts(), Policy(pins=pins), TCB_DATE)
    assert v.accepted
    by = {c.check: c for c in v.checks}
    assert by["pin.mrtd"].outcome == "pass" and by["pin.mrtd"].expected == [other.hex(), MRTD.hex()]
    assert by["pin.rtmr1"].outcome == "not_checked" and by["pin.rtmr1"].reason == "kernel not pinned yet"
    v = evaluate(
        facts(), Policy(pins=Pins(mrtd=Pin((other,)), xfam=Pin((bytes.fromhex("0702060000000000"),)))), TCB_DATE
    )
    assert names(v) == ["pin.mrtd", "pin.xfam"]
    assert (v.failures[0].expected, v.failures[0].seen) == (other.hex(), MRTD.hex())


def test_min_tee_tcb_svn_componentwise() -> None:
    p = Policy(min_tee_tcb_svn=bytes.fromhex("03010200000000000000000000000000"))
    assert evaluate(facts(), p, TCB_DATE).accepted
    p = Policy(min_tee_tcb_svn=bytes.fromhex("05010000000000000000000000000000"))
    v = evaluate(facts(), p, TCB_DATE)
    assert names(v) == ["td.tee_tcb_svn_too_low"] and v.failures[0].seen == "04010700000000000000000000000000"


def test_report_data_binding() -> None:
    assert evaluate(facts(), DEFAULT_POLICY, TCB_DATE, b"\x42" * 64).accepted
    v = evaluate(facts(), DEFAULT_POLICY, TCB_DATE, b"\x43" * 64)
    assert names(v) == ["binding.report_data_mismatch"]


def test_min_evaluation_data_number() -> None:
    assert names(evaluate(facts(), Policy(min_tcb_evaluation_data_number=18), TCB_DATE)) == [
        "tcb.evaluation_data_number_too_low"
    ]
    assert evaluate(facts(), Policy(min_tcb_evaluation_data_number=17), TCB_DATE).accepted


def test_evaluate_is_pure_and_policies_are_frozen() -> None:
    f, p = facts("OutOfDate"), Policy(out_of_date_grace_days=10)
    assert evaluate(f, p, TCB_DATE) == evaluate(f, p, TCB_DATE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.out_of_date_grace_days = 100  # type: ignore[misc]


def test_policy_yaml_mapping() -> None:
    import yaml

    doc = yaml.safe_load(
        f"""
version: 1
tcb:
  allowed_statuses: [UpToDate, SWHardeningNeeded]
  out_of_date_grace_days: 30
  allowed_advisories: [INTEL-SA-00615]
  min_evaluation_data_number: 17
td:
  forbid_debug: true
  require_sept_ve_disable: true
  min_tee_tcb_svn: "03010200000000000000000000000000"
pins:
  mrtd: [{"aa" * 48}, {MRTD.hex()}]
  rtmr3: null
  xfam: e702060000000000
"""
    )
    p = policy_from_mapping(doc)
    assert p.allowed_tcb_statuses == {"UpToDate", "SWHardeningNeeded"} and p.out_of_date_grace_days == 30
    # issue 17 (mutation testing): these two were set here and never asserted, so dropping them
    # while reading the file went unseen.
    assert p.min_tcb_evaluation_data_number == 17
    assert p.min_tee_tcb_svn == bytes.fromhex("03010200000000000000000000000000")
    assert p.allowed_advisories == frozenset({"INTEL-SA-00615"}) and p.forbid_debug and p.require_sept_ve_disable
    assert p.pins.mrtd.values == (b"\xaa" * 48, MRTD) and p.pins.rtmr3.values is None
    assert p.pins.rtmr0.reason == "not pinned"
    assert policy_from_mapping(None) == DEFAULT_POLICY == policy_from_mapping({})


@pytest.mark.parametrize(
    "doc",
    [
        {"tcb": {"allowed_statuses": ["Fine"]}},
        {"tcb": {"out_of_date_grace_days": -1}},
        {"tcb": {"out_of_date_grace_days": "30"}},
        {"pins": {"mrtd": "abcd"}},
        {"pins": {"mrtd": []}},
        {"pins": {"mrenclave": None}},
        {"td": {"forbid_debug": "no"}},
        {"version": 2},
        {"extra": 1},
    ],
)
def test_policy_rejects_bad_documents(doc: dict) -> None:
    with pytest.raises(InputError):
        policy_from_mapping(doc)


def test_pins_from_stack_output() -> None:
    doc = {
        "schema": 1,
        "mrtd": None,
        "mrtdCandidates": {"single": MRTD.hex(), "twoPass": None},
        "rtmr0": None,
        "rtmr1": "02" * 48,
        "rtmr3": None,
        "reasons": {"rtmr0": "acpi not captured"},
        "tdAttributes": "0000001000000000",
    }
    pins, keys = pins_from_stack_output(doc)
    assert pins.mrtd.values is None and pins.mrtd.reason is not None and "null" in pins.mrtd.reason
    assert pins.rtmr0.values is None and pins.rtmr0.reason is not None and "acpi not captured" in pins.rtmr0.reason
    assert keys == {"mrtd", "rtmr0", "rtmr1", "rtmr3", "td_attributes"}
    pins, _ = pins_from_stack_output(doc, accept_mrtd_candidates=True)
    assert pins.mrtd.values == (MRTD,)
    merged = Pins(mrseam=parse_pin("mrseam", "5b" * 48), rtmr1=Pin((b"\0" * 48,))).merged(pins, keys)
    assert merged.mrseam.values == (b"\x5b" * 48,) and merged.rtmr1.values == (b"\2" * 48,)
    v = evaluate(facts(), Policy(pins=merged), TCB_DATE)
    assert v.accepted, v.failures
    with pytest.raises(InputError):
        pins_from_stack_output({"schema": 2})


def test_docs_example_policy_parses() -> None:
    import re
    from pathlib import Path

    import yaml

    doc = Path(__file__).resolve().parents[2] / "docs" / "verification.md"
    found = re.search(r"```yaml\n(.*?)```", doc.read_text(), re.S)
    assert found is not None
    block = found.group(1)
    p = policy_from_mapping(yaml.safe_load(block))
    assert p.allowed_tcb_statuses == {"UpToDate"} and p.pins.mrseam.values and p.pins.mrtd.values is None
    assert p.pins.td_attributes.values == (bytes.fromhex("0000001000000000"),)
    assert p.gpu.vbios == ("96.00.9F.00.01",) and list(p.gpu.reference) == [10] and not p.gpu.required
