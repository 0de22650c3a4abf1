"""The TDX module pin (issue 18): a stack's `tdxModules` (release -> Intel's MRSEAM) holds the quote's
MRSEAM, and a refusal names both modules. Driven on real quotes (tests/fixtures/tdx-quotes) through
the `verify` command as a client runs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tdxattest.cli import main
from tdxattest.core.errors import InputError
from tdxattest.core.pins import StackPins
from tdxattest.core.tdx_modules import INTEL_MRSEAMS
from tests.support.paths import QUOTES

MANIFEST = json.loads((QUOTES / "manifest.json").read_text())
CASE = next(c for c in MANIFEST["cases"] if c["id"] == "phala-v4-uptodate")  # a quote from TDX module 1.5.06


def _verify(capsys: pytest.CaptureFixture[str], tmp_path: Path, modules: Any, *extra: str) -> tuple[int, Any]:
    """`verify` of the Phala quote with pins whose `tdxModules` are `modules` (a whole pins
    document when `modules` has a `schema`)."""
    doc = modules if isinstance(modules, dict) and "schema" in modules else {"schema": 1, "tdxModules": modules}
    pins = tmp_path / "pins.json"
    pins.write_text(json.dumps({"reasons": {}, **doc}))
    rc = main(
        [
            "verify",
            "--quote",
            str(QUOTES / CASE["quote_file"]),
            "--collateral",
            str(QUOTES / CASE["collateral_file"]),
            "--at",
            CASE["verify_at"],
            "--pins",
            str(pins),
            *extra,
        ]
    )
    out = capsys.readouterr()
    return rc, json.loads(out.out) if "--json" in extra else out.out + out.err


def test_the_module_the_quote_comes_from_passes(capsys, tmp_path) -> None:
    rc, out = _verify(capsys, tmp_path, {"1.5.06": INTEL_MRSEAMS["1.5.06"]}, "--json")
    assert rc == 0 and out["accepted"], out["failures"]
    check = next(c for c in out["checks"] if c["check"] == "pin.mrseam")
    assert (check["outcome"], check["expected"], check["seen"]) == (
        "pass",
        INTEL_MRSEAMS["1.5.06"],
        INTEL_MRSEAMS["1.5.06"],
    )


def test_during_an_upgrade_either_module_passes(capsys, tmp_path) -> None:
    modules = {"1.5.06": INTEL_MRSEAMS["1.5.06"], "1.5.08": INTEL_MRSEAMS["1.5.08"]}
    rc, out = _verify(capsys, tmp_path, modules, "--json")
    assert rc == 0 and out["accepted"], out["failures"]
    check = next(c for c in out["checks"] if c["check"] == "pin.mrseam")
    assert check["outcome"] == "pass" and check["expected"] == list(modules.values())


def test_any_other_module_is_refused_naming_both(capsys, tmp_path) -> None:
    rc, out = _verify(capsys, tmp_path, {"1.5.34": INTEL_MRSEAMS["1.5.34"]}, "--json")
    assert rc == 1 and not out["accepted"]
    assert out["failures"] == [
        {
            "check": "pin.mrseam",
            "expected": INTEL_MRSEAMS["1.5.34"],
            "seen": INTEL_MRSEAMS["1.5.06"],
            "detail": "the quote comes from TDX module 1.5.06; the pins allow TDX module 1.5.34",
        }
    ]
    rc, text = _verify(capsys, tmp_path, {"1.5.34": INTEL_MRSEAMS["1.5.34"], "1.5.28": INTEL_MRSEAMS["1.5.28"]})
    assert rc == 1
    assert "(the quote comes from TDX module 1.5.06; the pins allow TDX module 1.5.34, TDX module 1.5.28)" in text


def test_a_value_intel_lists_no_release_for_is_named_as_unlisted(capsys, tmp_path) -> None:
    rc, out = _verify(capsys, tmp_path, {"1.5.99": "ab" * 48}, "--json")
    assert rc == 1
    assert out["failures"][0]["detail"] == (
        "the quote comes from TDX module 1.5.06; the pins allow an unlisted TDX module (abababababababab…)"
    )


def test_without_tdx_modules_mrseam_stays_not_checked_with_the_stacks_reason(capsys, tmp_path) -> None:
    reason = "platform.tdxModule is not set"
    doc = {"schema": 1, "mrseam": None, "reasons": {"mrseam": reason}}
    rc, out = _verify(capsys, tmp_path, doc, "--json")
    check = next(c for c in out["checks"] if c["check"] == "pin.mrseam")
    assert rc == 0 and check["outcome"] == "not_checked" and reason in check["reason"]


@pytest.mark.parametrize(
    "modules,expected",
    [
        ({}, "pins.tdxModules: an object of 1 to 8 releases and their MRSEAM"),
        ({f"1.5.{n:02d}": "ab" * 48 for n in range(9)}, "pins.tdxModules: an object of 1 to 8 releases"),
        (["1.5.06"], "pins.tdxModules: an object of 1 to 8 releases"),
        ({"1.5.6": "ab" * 48}, "pins.tdxModules: releases as major.minor.update (1.5.34)"),
        ({"1.5.06": "ab" * 47}, "pins.tdxModules.1.5.06: 48 bytes of hex"),
        ({"1.5.06": None}, "pins.tdxModules.1.5.06: a hex string"),
    ],
    ids=["empty", "too-many", "list", "release-form", "short", "null"],
)
def test_a_malformed_tdx_modules_entry_is_refused_by_key(modules: Any, expected: str) -> None:
    with pytest.raises(InputError) as info:
        StackPins.from_json({"schema": 1, "tdxModules": modules})
    assert expected in str(info.value)


def test_tdx_modules_round_trip_through_the_pins_document() -> None:
    doc = {"schema": 1, "tdxModules": {"1.5.34": INTEL_MRSEAMS["1.5.34"].upper()}, "reasons": {}}
    pins = StackPins.from_json(doc)
    assert pins.tdx_modules == {"1.5.34": INTEL_MRSEAMS["1.5.34"]}
    assert pins.to_json()["tdxModules"] == {"1.5.34": INTEL_MRSEAMS["1.5.34"]}


def test_the_proxy_refuses_a_td_on_another_module_naming_both(loop, tmp_path, pki) -> None:
    import openai

    from tdxattest.testing.testpki import TdIdentity
    from tests.support.channel import start_channel

    td = TdIdentity(mrseam=bytes.fromhex(INTEL_MRSEAMS["1.5.28"]))  # the host still runs 1.5.28
    ch = loop.run(start_channel(tmp_path, pki, td=td, tdx_modules={"1.5.34": INTEL_MRSEAMS["1.5.34"]}))
    try:
        api = openai.OpenAI(base_url=ch.proxy_url + "/v1", api_key="test", max_retries=0, timeout=20)
        with pytest.raises(openai.APIStatusError) as info:
            api.chat.completions.create(model="m", messages=[{"role": "user", "content": "Say OK"}])
        assert info.value.status_code == 502
        body = info.value.body
        assert isinstance(body, dict) and body["code"] == "pin.mrseam", body
        assert (
            body["failures"][0]["detail"] == "the quote comes from TDX module 1.5.28; the pins allow TDX module 1.5.34"
        )
        assert ch.standin.requests == 0
    finally:
        loop.run(ch.stop())
    # During the upgrade both releases are pinned, and the same TD is served.
    ch = loop.run(start_channel(tmp_path, pki, td=td, tdx_modules={r: INTEL_MRSEAMS[r] for r in ("1.5.28", "1.5.34")}))
    try:
        api = openai.OpenAI(base_url=ch.proxy_url + "/v1", api_key="test", max_retries=0, timeout=20)
        done = api.chat.completions.create(
            model=ch.standin.config.model, messages=[{"role": "user", "content": "Say OK"}]
        )
        assert done.choices[0].message.content
        assert ch.standin.requests == 1
    finally:
        loop.run(ch.stop())
