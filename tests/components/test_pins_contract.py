"""The `pins` contract (tdxattest.core.pins.StackPins, docs/pins.md): what the program exports on
either target is a StackPins, and JSON and back loses nothing; the verifiers read it as exported."""

from __future__ import annotations

import json

import pytest

from components.config.stack import parse_stack
from components.render.kubernetes import expected_pins as kubernetes_pins
from components.render.pins import expected_pins, without_tdx, workload_pins
from tdxattest.core.errors import InputError
from tdxattest.core.pins import StackPins
from tdxattest.core.policy import pins_from_stack_output
from tests.support.paths import ARTIFACTS
from tests.support.pulumi_mocks import SECRETS, decrypted
from tests.support.stacks import DEFAULT_MANIFEST, good, make_args, pinned_firmware_dir, workload

# docs/pins.md, "Shape": the keys of the host target's `pins` (with a workload: also
# imageDigest, modelSha256 and workload).
HOST_KEYS = {"schema", "profile", "manifest", "mrtd", "mrtdCandidates", "pageAddOrder", "rtmr0", "rtmr1", "rtmr2",
             "rtmr3", "reasons", "events", "tdAttributes", "vm", "artifacts"}  # fmt: skip


def round_trip(pins: StackPins) -> dict:
    doc = json.loads(json.dumps(pins.to_json()))  # what `pulumi stack output pins --json` gives
    assert StackPins.from_json(doc) == pins
    assert StackPins.from_json(doc).to_json() == doc
    return doc


def test_host_pins_without_a_workload():
    doc = round_trip(expected_pins(DEFAULT_MANIFEST, ARTIFACTS, require_guest=False))
    assert set(doc) == HOST_KEYS
    assert doc["mrtd"] and doc["rtmr1"] is None and "launches no TD" in doc["reasons"]["rtmr1"]


def _workload_pins(tmp_path) -> StackPins:
    """The host target's pins of a staging stack with the test workload (synthetic guest pins)."""
    raw = good()
    raw["workload"] = workload()
    fw = pinned_firmware_dir(tmp_path)
    stack = parse_stack(decrypted(raw), "staging", secret_paths=set(SECRETS), firmware_dir=fw)
    assert stack.workload is not None and stack.workload.boot is not None
    return workload_pins(expected_pins(stack.workload.boot, ARTIFACTS, require_artifacts=False),
                         stack.workload.manifest(1))  # fmt: skip


def test_host_pins_with_a_workload(tmp_path):
    doc = round_trip(_workload_pins(tmp_path))
    assert set(doc) == HOST_KEYS | {"imageDigest", "modelSha256", "workload"}
    parsed, keys = pins_from_stack_output(doc)
    assert parsed.rtmr3.values == (bytes.fromhex(doc["rtmr3"]),) and "rtmr3" in keys


def test_host_pins_of_a_dev_td_without_tdx(tmp_path):
    """`workload.td.tdx: false` (dev only): `tdx: false`, the boot registers not pinned (with the
    reason), RTMR3 still pinned; the values a TD would show stay under `artifacts`."""
    with_tdx = _workload_pins(tmp_path)
    doc = round_trip(without_tdx(with_tdx))
    assert doc["tdx"] is False and "tdx" not in round_trip(with_tdx)
    for key in ("mrtd", "rtmr0", "rtmr1", "rtmr2"):
        assert doc[key] is None and "without TDX" in doc["reasons"][key], key
    assert doc["mrtdCandidates"] is None
    assert doc["rtmr3"] == with_tdx.value("rtmr3") and doc["artifacts"] == with_tdx.to_json()["artifacts"]
    parsed, _keys = pins_from_stack_output(doc)
    assert parsed.rtmr3.values == (bytes.fromhex(doc["rtmr3"]),) and parsed.mrtd.values is None


def test_kubernetes_pins():
    doc = round_trip(kubernetes_pins(make_args()))
    assert doc["target"] == "kubernetes" and doc["mrconfigid"] and doc["initData"]["toml"]
    parsed, keys = pins_from_stack_output(doc)
    assert keys == {"mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrconfigid", "td_attributes"}
    assert parsed.rtmr3.values is None and "MRCONFIGID" in (parsed.rtmr3.reason or "")


def test_a_hand_written_pins_file_names_only_what_it_pins():
    pins = StackPins.from_json({"schema": 1, "mrtd": "AB" * 48, "tdAttributes": "0000001000000000"})
    assert pins.value("mrtd") == "ab" * 48 and pins.rtmr0 is None
    _, keys = pins_from_stack_output(pins.to_json())
    assert keys == {"mrtd", "td_attributes"}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"schema": 2}, 'a pins document with "schema": 1'),
        ([], 'a pins document with "schema": 1'),
        ({"schema": 1, "rtmr0": "00"}, "pins.rtmr0: 48 bytes of hex"),
        ({"schema": 1, "tdAttributes": "zz"}, "pins.tdAttributes: a hex string or null"),
        ({"schema": 1, "target": "cloud"}, "pins.target: host or kubernetes"),
        ({"schema": 1, "reasons": {"rtmr0": 1}}, "pins.reasons: an object of strings"),
        ({"schema": 1, "tdx": "false"}, "pins.tdx: true or false"),
    ],
)
def test_unusable_pins_are_refused_naming_the_key(doc, message):
    with pytest.raises(InputError) as err:
        StackPins.from_json(doc)
    assert message in str(err.value)
