"""The `aa` quote source: CoCo's attestation agent through guest-components' api-server-rest (a Kata
Confidential Containers pod has no configfs-tsm). A loopback stand-in of api-server-rest answers
`GET /aa/evidence` as upstream does (guest-components 8246e5e0: api-server-rest/src/router.rs and
utils.rs, attestation-agent/attester/src/tdx/mod.rs), with TEST-PKI quotes whose REPORTDATA is the
decoded runtime_data zero-padded to 64 bytes, like the AA's. Every server a test starts, it stops."""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest

from tdxattest.channel.quote_source import AttestationAgentQuoteSource, QuoteUnavailable
from tdxattest.core.quote import parse_quote, read_td_report
from tdxattest.testing.standin import StandinConfig, known_answer
from tdxattest.testing.testpki import TdIdentity, TestPki
from tests.support.channel import Channel
from tests.tdxattest.test_channel_cli import spawn

MODEL = StandinConfig().model
REPORT_DATA = bytes(range(64))
_URL_SAFE_NO_PAD = re.compile(r"[A-Za-z0-9_-]*")

# An answer the stand-in gives instead of evidence: (status, body, send Content-Length).
Answer = tuple[int, bytes, bool]


class ApiServerRest:
    """guest-components' api-server-rest (--features attestation) with a TDX attestation agent
    behind it, on 127.0.0.1. `legacy`: one older than v0.21.0, which ignores `encoding`;
    `tamper`: the AA quotes other REPORTDATA; `answer`: a fixed reply instead of evidence."""

    def __init__(self, pki: TestPki, td: TdIdentity = TdIdentity(), *, legacy: bool = False) -> None:
        self.pki, self.td, self.legacy = pki, td, legacy
        self.tamper = False
        self.answer: Answer | None = None
        self.queries: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                status, body, length = outer.respond(self.path)
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                if length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()  # HTTP/1.0: without a length, the body ends when we close
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.handle_error = lambda *a: None  # type: ignore[method-assign]  # a client that hung up early
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> ApiServerRest:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def respond(self, target: str) -> Answer:
        parts = urllib.parse.urlsplit(target)
        if parts.path != "/aa/evidence":
            return 404, b"URL NOT FOUND", True
        # router.rs: form_urlencoded::parse(query) collected into a HashMap (the last value wins)
        params = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        self.queries.append(params)
        if self.answer is not None:
            return self.answer
        if "runtime_data" not in params:
            return 400, b"BAD REQUEST", True
        runtime_data = decode_runtime_data(params["runtime_data"], None if self.legacy else params.get("encoding"))
        if runtime_data is None:
            return 400, b"BAD REQUEST", True
        if len(runtime_data) > 64:  # TdxAttester::get_evidence bails; the AA answers a bare RpcStatus
            return 500, b"ttrpc request error", True
        report_data = runtime_data.ljust(64, b"\0")  # report_data.resize(TDX_REPORT_DATA_SIZE, 0)
        if self.tamper:
            report_data = bytes([report_data[0] ^ 1]) + report_data[1:]
        quote = self.pki.quote(report_data, self.td)
        # TdxEvidence {cc_eventlog, quote} through serde_json::Value::to_string: compact, keys sorted
        evidence = {"cc_eventlog": base64.b64encode(b"CCEL").decode(), "quote": base64.b64encode(quote).decode()}
        return 200, json.dumps(evidence, separators=(",", ":")).encode(), True


def decode_runtime_data(value: str, encoding: str | None) -> bytes | None:
    """api-server-rest/src/utils.rs decode_runtime_data: the raw UTF-8 bytes without `encoding`,
    strict URL-safe base64 without padding with `encoding=base64`; None where upstream says 400."""
    if encoding is None:
        return value.encode()
    if encoding != "base64" or not _URL_SAFE_NO_PAD.fullmatch(value) or len(value) % 4 == 1:
        return None
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    return raw if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == value else None  # canonical only


@pytest.fixture
def aa(pki: TestPki) -> Iterator[ApiServerRest]:
    with ApiServerRest(pki) as server:
        yield server


def refusal(source: AttestationAgentQuoteSource) -> QuoteUnavailable:
    with pytest.raises(QuoteUnavailable) as info:
        source.quote(REPORT_DATA)
    assert info.value.check == "gateway.quote_unavailable"
    return info.value


# -- the source ----------------------------------------------------------------------------------


def test_the_quote_carries_our_64_bytes_exactly(aa: ApiServerRest) -> None:
    quote = AttestationAgentQuoteSource(aa.url).quote(REPORT_DATA)
    assert read_td_report(quote).report_data == REPORT_DATA
    assert parse_quote(quote).report.report_data == REPORT_DATA
    (query,) = aa.queries
    assert query["encoding"] == "base64" and len(query["runtime_data"]) == 86 and "=" not in query["runtime_data"]


def test_the_stand_in_pads_runtime_data_like_the_aa(aa: ApiServerRest) -> None:
    """What the stand-in does with a short runtime_data, raw and base64: zero-padded to 64 bytes."""
    for target in ("/aa/evidence?runtime_data=hello", "/aa/evidence?runtime_data=aGVsbG8&encoding=base64"):
        status, body, _ = aa.respond(target)
        assert status == 200 and sorted(json.loads(body)) == ["cc_eventlog", "quote"]
        assert read_td_report(base64.b64decode(json.loads(body)["quote"])).report_data == b"hello".ljust(64, b"\0")
    assert aa.respond("/aa/evidence?runtime_data=aGVsbG8=&encoding=base64")[0] == 400  # padding refused
    assert aa.respond("/aa/evidence?runtime_data=aGVsbG8&encoding=hex")[0] == 400


def test_a_path_prefix_in_the_url_is_kept(aa: ApiServerRest) -> None:
    with pytest.raises(QuoteUnavailable) as info:
        AttestationAgentQuoteSource(aa.url + "/prefix/").quote(REPORT_DATA)
    assert info.value.seen == "HTTP 404: 'URL NOT FOUND'" and "check --aa-url" in info.value.fix


# -- refusals ------------------------------------------------------------------------------------


def test_a_quote_over_other_report_data_is_refused(aa: ApiServerRest) -> None:
    aa.tamper = True
    failure = refusal(AttestationAgentQuoteSource(aa.url))
    assert failure.expected == f"REPORTDATA {REPORT_DATA.hex()} (the runtime_data we sent, exactly)"
    assert failure.seen == "REPORTDATA " + (bytes([1]) + REPORT_DATA[1:]).hex()
    assert "binds nothing of ours" in failure.fix


@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "close-delimited"])
def test_an_oversized_body_is_refused(aa: ApiServerRest, with_length: bool) -> None:
    aa.answer = (200, b"{" + b" " * (1 << 20), with_length)
    failure = refusal(AttestationAgentQuoteSource(aa.url))
    assert failure.expected == f"evidence of at most {1 << 20} bytes from the attestation agent"
    assert failure.seen == (f"Content-Length {(1 << 20) + 1}" if with_length else "more")


def test_the_body_limit_is_a_parameter(aa: ApiServerRest) -> None:
    failure = refusal(AttestationAgentQuoteSource(aa.url, max_body=1000))
    assert failure.expected == "evidence of at most 1000 bytes from the attestation agent"


@pytest.mark.parametrize(
    "body, seen",
    [
        (b"<html>no</html>", "not JSON (Expecting value: line 1 column 1 (char 0)): '<html>no</html>'"),
        (b'{"quote": "AAAA"', "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b'["quote"]', "a JSON list: '[\"quote\"]'"),
        (b'{"svn":"1","report_data":"eHh4eA=="}', "no string \"quote\"; keys ['report_data', 'svn']"),
        (b'{"quote": 5}', 'no string "quote"'),
        (b'{"quote": "not base64!"}', "\"quote\" is not base64: 'not base64!'"),
        (b'{"quote": ""}', 'an empty "quote"'),
    ],
    ids=["html", "truncated", "not-utf8", "deep", "list", "sample-attester", "number", "not-base64", "empty"],
)
def test_malformed_evidence_is_refused(aa: ApiServerRest, body: bytes, seen: str) -> None:
    aa.answer = (200, body, True)
    failure = refusal(AttestationAgentQuoteSource(aa.url))
    assert failure.expected == 'TDX evidence from the attestation agent: JSON {"cc_eventlog", "quote": base64}'
    assert failure.seen.startswith(seen), failure.seen
    assert "primary attester must be TDX" in failure.fix


def test_evidence_that_is_no_tdx_quote_is_refused(aa: ApiServerRest) -> None:
    aa.answer = (200, json.dumps({"cc_eventlog": None, "quote": base64.b64encode(b"Q" * 100).decode()}).encode(), True)
    failure = refusal(AttestationAgentQuoteSource(aa.url))
    assert failure.expected == "a TDX quote (v4/v5) in the attestation agent's evidence"
    assert "quote version 4 or 5" in failure.seen


@pytest.mark.parametrize(
    "answer, fix",
    [
        ((500, b"ttrpc request error", True), "older than guest-components v0.21.0"),
        ((404, b"Attestation Feature Not Enabled", True), "agent.guest_components_rest_api=attestation"),
        ((400, b"BAD REQUEST", True), "URL-safe base64 without padding"),
        ((403, b"Forbidden", True), "loopback clients only"),
    ],
    ids=["500", "feature-off", "400", "403"],
)
def test_an_error_status_is_refused_with_its_body(aa: ApiServerRest, answer: Answer, fix: str) -> None:
    aa.answer = answer
    failure = refusal(AttestationAgentQuoteSource(aa.url))
    assert failure.expected == f"HTTP 200 from the attestation agent at {aa.url}/aa/evidence"
    assert failure.seen == f"HTTP {answer[0]}: {answer[1].decode()!r}"
    assert fix in failure.fix


def test_an_api_server_older_than_the_base64_encoding_fails_closed(pki: TestPki) -> None:
    """Before v0.21.0 api-server-rest ignores `encoding` and hands the AA the 86 characters: more
    than 64 bytes, which it refuses. Nothing is quoted over our REPORTDATA's text instead."""
    with ApiServerRest(pki, legacy=True) as old:
        failure = refusal(AttestationAgentQuoteSource(old.url))
    assert failure.seen == "HTTP 500: 'ttrpc request error'" and "v0.21.0" in failure.fix


def test_an_unreachable_agent_is_refused() -> None:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    failure = refusal(AttestationAgentQuoteSource(f"http://127.0.0.1:{port}"))
    assert failure.expected == f"an answer from the attestation agent's REST API at http://127.0.0.1:{port}"
    assert failure.seen == "Connection refused"
    assert "agent.guest_components_rest_api=attestation" in failure.fix


def test_an_agent_that_never_answers_times_out() -> None:
    with closing(socket.socket()) as s:  # listens, never accepts: the request is sent, no answer comes
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        failure = refusal(AttestationAgentQuoteSource(f"http://127.0.0.1:{s.getsockname()[1]}", timeout_s=0.3))
    assert failure.seen == "timed out"


def test_not_http_is_refused() -> None:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)

        def garbage() -> None:
            conn, _ = s.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

        t = threading.Thread(target=garbage, daemon=True)
        t.start()
        failure = refusal(AttestationAgentQuoteSource(f"http://127.0.0.1:{s.getsockname()[1]}"))
        t.join(5)
    assert failure.seen.startswith("BadStatusLine"), failure.seen


@pytest.mark.parametrize(
    "url, message",
    [
        ("https://127.0.0.1:8006", "http://HOST:PORT[/PREFIX]"),
        ("http://127.0.0.1:8006?x=1", "http://HOST:PORT[/PREFIX]"),
        ("http://127.0.0.1:99999", "a port 1..65535"),
        ("http://127.0.0.1:0", "a port 1..65535"),
        ("http://192.0.2.1:8006", "on loopback"),
        ("http://aa.example:8006", "on loopback"),
    ],
)
def test_urls_off_loopback_or_not_http_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        AttestationAgentQuoteSource(url)


def test_urls_on_loopback_are_taken() -> None:
    for url in ("http://127.0.0.1:8006", "http://localhost:8006/", "http://[::1]:8006", "http://127.0.0.2"):
        assert AttestationAgentQuoteSource(url).label == "tdx-coco-aa"


def test_report_data_must_be_64_bytes(aa: ApiServerRest) -> None:
    with pytest.raises(ValueError, match="64 bytes"):
        AttestationAgentQuoteSource(aa.url).quote(b"short")
    assert aa.queries == []


# -- the gateway with `aa`, and the proxy that accepts it ----------------------------------------


def test_the_proxy_accepts_a_gateway_quoting_through_the_aa(
    channel_factory: Callable[..., Channel], pki: TestPki, aa: ApiServerRest
) -> None:
    ch = channel_factory(pki, source=AttestationAgentQuoteSource(aa.url))
    client = openai.OpenAI(base_url=ch.proxy_url + "/v1", api_key="x", max_retries=0, timeout=20)
    done = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say OK"}], max_tokens=2)
    assert done.choices[0].message.content == known_answer("Say OK", max_tokens=2)
    (record,) = ch.audit_records()
    assert record["verdict"] == "accepted" and record["quote_source"] == "tdx-coco-aa"
    assert record["checks"]["binding.report_data_mismatch"] == "pass"
    assert len(aa.queries) == 1


def test_a_gateway_whose_aa_quotes_other_report_data_serves_nothing(
    channel_factory: Callable[..., Channel], pki: TestPki, aa: ApiServerRest
) -> None:
    aa.tamper = True
    ch = channel_factory(pki, source=AttestationAgentQuoteSource(aa.url))
    client = openai.OpenAI(base_url=ch.proxy_url + "/v1", api_key="x", max_retries=0, timeout=20)
    with pytest.raises(openai.APIStatusError) as info:
        client.models.list()
    body = info.value.body
    assert info.value.status_code == 502 and isinstance(body, dict) and body["code"] == "attestation.unavailable"
    (failure,) = body["failures"]
    assert (
        failure["seen"].startswith("HTTP 503: gateway.quote_unavailable: ")
        and "expected REPORTDATA " in failure["seen"]
    )
    assert ch.standin.requests == 0


def test_gateway_command_with_quote_source_aa(tmp_path: Path, pki: TestPki, aa: ApiServerRest) -> None:
    """`python -m tdxattest gateway --quote-source aa --aa-url URL` and `python -m tdxattest proxy`
    as separate processes, the official `openai` client through them."""
    pins, root, collateral, audit = (tmp_path / n for n in ("pins.json", "root.der", "collateral.json", "a.jsonl"))
    pins.write_text(json.dumps(TdIdentity().stack_pins().to_json()))
    root.write_bytes(pki.root_ca_der)
    collateral.write_text(pki.collateral_json())
    with ExitStack() as stack:
        upstream = spawn(stack, "tdxattest.testing.standin", "--listen", "127.0.0.1:0")["listening"]
        argv = ["gateway", "--listen", "127.0.0.1:0", "--upstream", upstream, "--quote-source", "aa"]
        gw = spawn(stack, "tdxattest", *argv, "--aa-url", aa.url)
        assert gw["quote_source"] == "tdx-coco-aa"
        argv = ["proxy", "--upstream", gw["listening"], "--pins", str(pins), "--collateral", str(collateral)]
        argv += ["--root-ca", str(root), "--listen", "127.0.0.1:0", "--audit", str(audit)]
        proxy = spawn(stack, "tdxattest", *argv)
        client = openai.OpenAI(base_url=proxy["listening"] + "/v1", api_key="x", max_retries=0, timeout=20)
        done = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say OK"}], max_tokens=2
        )
        assert done.choices[0].message.content == known_answer("Say OK", max_tokens=2)
    (record,) = [json.loads(line) for line in audit.read_text().splitlines()]
    assert record["verdict"] == "accepted" and record["tls_spki_sha256"] == gw["tls_spki_sha256"]
    assert record["quote_source"] == "tdx-coco-aa" and len(aa.queries) == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--aa-url", "http://127.0.0.1:8006"], "--aa-url is for --quote-source aa only"),
        (["--quote-source", "aa", "--aa-url", "http://192.0.2.1:8006"], "--aa-url: the attestation agent's URL on"),
    ],
)
def test_gateway_command_refuses_a_misplaced_or_remote_aa_url(argv: list[str], message: str) -> None:
    import os
    import subprocess
    import sys

    from tests.support.paths import REPO

    done = subprocess.run(
        [sys.executable, "-m", "tdxattest", "gateway", "--listen", "127.0.0.1:0", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
