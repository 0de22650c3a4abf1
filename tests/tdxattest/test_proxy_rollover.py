"""Pin rollover in the verifying proxy (`--retiring-pins`), and its TLS towards its clients.

During a rollover the proxy accepts the current pins or a retiring set, each as a whole: a quote
that matches one field of each set is refused, and the GPU evidence is held to the set that
accepted the quote. The deployed proxy (components/render/proxy.py) uses exactly this: the new pins
plus the old ones until the new TD serves, then the new pins alone."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import pytest

from tdxattest.core.policy import DEFAULT_POLICY, with_stack_pins
from tdxattest.dcap.appraise import Appraiser, FixedCollateral
from tdxattest.dcap.collateral import collateral_from_json_text
from tdxattest.testing.testpki import SoftwareQuoteProvider, TdIdentity, TestPki
from tests.support.paths import REPO
from tests.tdxattest.test_channel_cli import software_gateway, spawn

OLD = TdIdentity(rtmr3=b"\x0a" * 48)
NEW = TdIdentity(rtmr3=b"\x0b" * 48, mrtd=b"\x0b" * 48)
REPORT_DATA = bytes(range(64))


def appraiser(pki: TestPki, current: TdIdentity, *retiring: TdIdentity) -> Appraiser:
    return Appraiser(
        FixedCollateral(collateral_from_json_text(pki.collateral_json(), "test")),
        with_stack_pins(DEFAULT_POLICY, current.stack_pins()),
        pki.root_ca_der,
        retiring=tuple(with_stack_pins(DEFAULT_POLICY, r.stack_pins()) for r in retiring),
    )


def test_a_retiring_pin_set_accepts_the_old_td_and_says_so(pki: TestPki) -> None:
    quote = SoftwareQuoteProvider(pki, OLD).quote(REPORT_DATA)
    now = int(time.time())
    alone = appraiser(pki, NEW).appraise(quote, now, REPORT_DATA)
    assert not alone.verdict.accepted and alone.pin_set == 0
    assert {f.check for f in alone.verdict.failures} == {"pin.mrtd", "pin.rtmr3"}
    rolling = appraiser(pki, NEW, OLD).appraise(quote, now, REPORT_DATA)
    assert rolling.verdict.accepted and rolling.pin_set == 1
    new_quote = SoftwareQuoteProvider(pki, NEW).quote(REPORT_DATA)
    assert appraiser(pki, NEW, OLD).appraise(new_quote, now, REPORT_DATA).pin_set == 0


def test_a_refusal_during_a_rollover_names_what_the_current_pins_expect(pki: TestPki) -> None:
    stranger = TdIdentity(rtmr3=b"\x0c" * 48)
    got = appraiser(pki, NEW, OLD).appraise(
        SoftwareQuoteProvider(pki, stranger).quote(REPORT_DATA), int(time.time()), REPORT_DATA
    )
    assert not got.verdict.accepted
    rtmr3 = next(f for f in got.verdict.failures if f.check == "pin.rtmr3")
    assert NEW.rtmr3.hex() in rtmr3.expected and OLD.rtmr3.hex() not in rtmr3.expected


def test_pin_sets_are_never_mixed(pki: TestPki) -> None:
    # Each set accepts one of the TD's two registers: a union per field would accept it.
    td = TdIdentity(mrtd=b"\x01" * 48, rtmr3=b"\x02" * 48)
    first = replace(td, rtmr3=b"\x03" * 48)
    second = replace(td, mrtd=b"\x04" * 48)
    quote = SoftwareQuoteProvider(pki, td).quote(REPORT_DATA)
    got = appraiser(pki, first, second).appraise(quote, int(time.time()), REPORT_DATA)
    assert not got.verdict.accepted
    assert [f.check for f in got.verdict.failures] == ["pin.rtmr3"]  # what the current set refused


def test_the_gpu_policy_of_the_set_that_accepted_applies(pki: TestPki) -> None:
    from tdxattest.core.pins import GpuExpectation

    # The retiring pins required 1 GPU; the current pins none. A TD accepted by the retiring pins
    # that serves no GPU evidence is refused by the retiring set's GPU policy.
    old_pins = replace(OLD.stack_pins(), gpu=GpuExpectation(count=1, vbios=(), driver=(), mode="on"))
    a = Appraiser(
        FixedCollateral(collateral_from_json_text(pki.collateral_json(), "test")),
        with_stack_pins(DEFAULT_POLICY, NEW.stack_pins()),
        pki.root_ca_der,
        retiring=(with_stack_pins(DEFAULT_POLICY, old_pins),),
    )
    got = a.appraise(SoftwareQuoteProvider(pki, OLD).quote(REPORT_DATA), int(time.time()), REPORT_DATA)
    assert got.verdict.accepted and got.pin_set == 1
    assert a.appraise_gpus(None, bytes(32), time.time(), got.pin_set).accepted is False
    assert a.appraise_gpus(None, bytes(32), time.time(), 0).accepted is True


def _proxy(stack: ExitStack, tmp: Path, gw: dict, pins: list[TdIdentity], *extra: str) -> dict:
    pki = tmp / "pki"
    argv = ["proxy", "--upstream", gw["listening"], "--collateral", str(pki / "collateral.json")]
    argv += ["--root-ca", str(pki / "root-ca.der"), "--audit", str(tmp / "audit.jsonl")]
    for i, td in enumerate(pins):
        path = tmp / f"pins-{i}.json"
        path.write_text(json.dumps(td.stack_pins().to_json()))
        argv += ["--pins" if i == 0 else "--retiring-pins", str(path)]
    return spawn(stack, "tdxattest", *argv, *extra)


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for localhost and its key, as PEM files (the Redfish emulator's maker)."""
    from tests.support.redfish.emulator import make_tls

    tls = make_tls(tmp)
    return tls.cert, tls.key


def test_the_proxy_command_serves_the_old_td_during_a_rollover_over_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    with ExitStack() as stack:
        gw = software_gateway(stack, str(tmp_path / "pki"))  # serves TdIdentity(): the "old" TD here
        old = TdIdentity()
        new = replace(old, rtmr3=b"\x0b" * 48)
        proxy = _proxy(stack, tmp_path, gw, [new, old], "--tls-cert", str(cert), "--tls-key", str(key))
        assert proxy["listening"].startswith("https://127.0.0.1:")
        url = proxy["listening"].replace("127.0.0.1", "localhost")
        ctx = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(url + "/v1/models", context=ctx, timeout=20) as answer:
            assert answer.status == 200
        (record,) = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
        assert record["verdict"] == "accepted" and record["pin_set"] == "retiring"
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # TLS only: plain HTTP gets nothing
            urllib.request.urlopen(proxy["listening"].replace("https", "http") + "/v1/models", timeout=5)


def test_the_proxy_command_without_the_retiring_pins_refuses_the_old_td(tmp_path: Path) -> None:
    with ExitStack() as stack:
        gw = software_gateway(stack, str(tmp_path / "pki"))
        new = replace(TdIdentity(), rtmr3=b"\x0b" * 48)
        proxy = _proxy(stack, tmp_path, gw, [new], "--listen", "127.0.0.1:0")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(proxy["listening"] + "/v1/models", timeout=20)
        body = json.loads(refused.value.read())
        assert refused.value.code == 502 and body["error"]["code"] == "pin.rtmr3", body


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--listen", "0.0.0.0:0"], "--tls-cert and --tls-key for any other: prompts would cross it in plain text"),
        (["--tls-cert", "x.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], "/nonexistent.pem, /nonexistent.key"),
    ],
)
def test_the_proxy_command_refuses_plain_text_beyond_loopback_and_bad_tls_files(
    tmp_path: Path, extra: list[str], said: str
) -> None:
    pins = tmp_path / "pins.json"
    pins.write_text(json.dumps(TdIdentity().stack_pins().to_json()))
    argv = [sys.executable, "-m", "tdxattest", "proxy", "--upstream", "https://127.0.0.1:9", "--pins", str(pins)]
    argv += ["--collateral", str(pins), *extra]
    p = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and said in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_a_connection_the_retiring_pins_accepted_is_held_to_them_for_its_response_quotes(
    loop, pki: TestPki, tmp_path: Path
) -> None:
    """The proxy in process: the old TD is served during the rollover, its response quotes are
    checked against the retiring set alone (held_to), and the audit line says so."""
    from tests.support.channel import start_channel

    ch = loop.run(start_channel(tmp_path, pki, td=OLD, pinned=NEW, retiring=(OLD,), require_response_quotes=True))
    try:
        with urllib.request.urlopen(ch.proxy_url + "/v1/models", timeout=20) as answer:
            assert answer.status == 200
        (record,) = ch.audit_records()
        assert record["verdict"] == "accepted" and record["pin_set"] == "retiring", record
        assert record["response_quote_sha256"], record
        (conn,) = ch.proxy.pool._idle
        assert conn.attestation is not None
        held = conn.attestation.appraiser
        assert held.retiring == () and held.policy.pins.rtmr3.values == (OLD.rtmr3,)
    finally:
        loop.run(ch.stop())
