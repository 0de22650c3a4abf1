"""Untrusted bytes cost what they weigh (issue 17, item 1): the PCK chain of a quote is scanned once,
forward, with `find`, and bounded; a hostile attestation answer is refused without stalling the
proxy's other connections.

The hostile quote is a TEST-PKI quote whose PEM chain is replaced by 256 KiB of BEGIN lines without
an END, with every length field fixed up: what a malicious gateway serves. The lazy regex that used
to scan it took 12.5 s on this machine (0.8 s at 64 KiB: quadratic)."""

from __future__ import annotations

import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai

from tdxattest.core.policy import DEFAULT_POLICY
from tdxattest.core.quote import MAX_PCK_CHAIN_CERTS, parse_quote, pem_cert_bodies
from tdxattest.dcap.appraise import Appraiser, FixedCollateral
from tdxattest.testing.standin import StandinConfig
from tdxattest.testing.testpki import SoftwareQuoteProvider, TdIdentity, TestPki
from tests.support.channel import LoopThread, start_channel

BEGIN, END = b"-----BEGIN CERTIFICATE-----\n", b"-----END CERTIFICATE-----\n"
V4_BODY_END = 48 + 584  # header + TD report body: the signature data's length field follows


def hostile_quote(pki: TestPki, report_data: bytes = bytes(64), kib: int = 256) -> bytes:
    quote = bytearray(pki.quote(report_data))
    start = quote.index(BEGIN[:-1])
    old = struct.unpack_from("<I", quote, start - 4)[0]
    assert start + old == len(quote)
    chain = BEGIN * (kib * 1024 // len(BEGIN))
    delta = len(chain) - old
    quote[start:] = chain
    struct.pack_into("<I", quote, start - 4, len(chain))
    (sig_len,) = struct.unpack_from("<I", quote, V4_BODY_END)
    struct.pack_into("<I", quote, V4_BODY_END, sig_len + delta)
    outer = V4_BODY_END + 4 + 64 + 64  # signature, attestation key, then certification data type 6
    assert struct.unpack_from("<H", quote, outer)[0] == 6
    struct.pack_into("<I", quote, outer + 2, struct.unpack_from("<I", quote, outer + 2)[0] + delta)
    return bytes(quote)


def test_pem_scan_takes_what_a_pem_reader_takes_and_stops_at_the_bound() -> None:
    assert pem_cert_bodies(BEGIN + b"QQ==\n" + END + b"junk" + BEGIN + b"Qg==\n" + END) == [b"\nQQ==\n", b"\nQg==\n"]
    # A BEGIN inside a span starts the certificate its END closes.
    assert pem_cert_bodies(BEGIN + b"x\n" + BEGIN + b"QQ==\n" + END) == [b"\nQQ==\n"]
    assert pem_cert_bodies(BEGIN + b"QQ==\n") == [] and pem_cert_bodies(b"") == []
    many = (BEGIN + b"QQ==\n" + END) * 50
    assert len(pem_cert_bodies(many)) == MAX_PCK_CHAIN_CERTS


def test_a_hostile_pem_chain_is_scanned_in_linear_time() -> None:
    data = BEGIN * (256 * 1024 // len(BEGIN))
    t = time.perf_counter()
    assert pem_cert_bodies(data) == []
    # 0.1 ms here; the quadratic regex took 12.5 s. The bound is three orders of magnitude loose.
    assert time.perf_counter() - t < 1.0


def test_a_hostile_quote_is_refused_at_once_with_a_named_check(pki: TestPki, tmp_path: Path) -> None:
    quote = hostile_quote(pki)
    assert len(quote) > 256 * 1024 and parse_quote(quote).pck_chain_ders() == []
    collateral = tmp_path / "collateral.json"
    collateral.write_text(pki.collateral_json())
    appraiser = Appraiser(FixedCollateral.from_file(str(collateral)), DEFAULT_POLICY, pki.root_ca_der)
    t = time.perf_counter()
    verdict = appraiser.appraise(quote, int(time.time()), bytes(64)).verdict
    took = time.perf_counter() - t
    assert not verdict.accepted and verdict.failures[0].check.startswith(("dcap_qvl.", "quote.", "pck.")), verdict
    print(f"\nappraisal of the 256 KiB hostile quote: {took * 1000:.2f} ms")
    assert took < 1.0, took


class FirstAnswerHostile:
    """A gateway's quote source whose first quote is the hostile one; the rest are good."""

    def __init__(self, pki: TestPki):
        self.good = SoftwareQuoteProvider(pki, TdIdentity())
        self.label = self.good.label
        self.served = 0
        self.lock = threading.Lock()

    def quote(self, report_data: bytes) -> bytes:
        with self.lock:
            self.served += 1
            first = self.served == 1
        return hostile_quote(self.good.pki, report_data) if first else self.good.quote(report_data)


def test_the_proxy_serves_a_good_request_while_a_hostile_answer_is_appraised(
    loop: LoopThread, tmp_path: Path, pki: TestPki
) -> None:
    source = FirstAnswerHostile(pki)
    ch = loop.run(start_channel(tmp_path, pki, source=source))
    try:
        client = openai.OpenAI(base_url=ch.proxy_url + "/v1", api_key="t", max_retries=0, timeout=30)
        results: dict[str, tuple[object, float]] = {}

        def ask(name: str) -> None:
            t = time.perf_counter()
            try:
                client.chat.completions.create(
                    model=StandinConfig().model, messages=[{"role": "user", "content": "Say OK"}]
                )
                results[name] = ("ok", time.perf_counter() - t)
            except openai.APIStatusError as exc:
                results[name] = (exc.status_code, time.perf_counter() - t)

        hostile = threading.Thread(target=ask, args=("hostile",))
        hostile.start()
        while source.served == 0:  # the first attestation (the hostile one) is under way
            time.sleep(0.005)
        ask("good")
        hostile.join(30)
        print(
            f"\nhostile answer refused in {results['hostile'][1]:.3f} s; concurrent good request {results['good'][1]:.3f} s"
        )
        assert results["hostile"][0] == 502, results
        assert results["good"][0] == "ok", results
        assert results["good"][1] < 5.0, results  # the appraisal of the other answer holds nothing up
        refused = [r for r in ch.audit_records() if r["verdict"] == "refused"]
        assert len(refused) == 1 and refused[0]["failures"][0]["check"].startswith(("dcap_qvl.", "quote.", "pck."))
    finally:
        loop.run(ch.stop())


def test_the_client_refuses_credentials_in_its_urls(tmp_path: Path) -> None:
    # issue 17: URLs are written into audit lines and the collateral cache's metadata.
    from tests.support.paths import REPO

    quote = next((REPO / "tests" / "fixtures" / "tdx-quotes" / "quotes").glob("*.bin"))
    runs = {
        "--pccs": [
            "verify",
            "--quote",
            str(quote),
            "--pccs",
            "https://alice:pw-123@pccs.example/sgx/certification/v4/",
        ],
        "--upstream": ["proxy", "--upstream", "https://alice:pw-123@td.example:8443", "--pins", str(tmp_path / "p")],
    }
    for option, argv in runs.items():
        p = subprocess.run([sys.executable, "-m", "tdxattest", *argv], capture_output=True, text=True, timeout=60)
        assert p.returncode == 2, (option, p.stderr)
        assert f"expected {option}: " in p.stderr and "without credentials" in p.stderr, p.stderr
        assert "pw-123" not in p.stderr + p.stdout and "Traceback" not in p.stderr
