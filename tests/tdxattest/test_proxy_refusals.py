"""The verifying proxy's refusals, each pinned down to what it reports (issue 17, item 9): the check
name, what was expected and seen, the HTTP status and error body the client gets, and the audit
line. The refusal builders and the per-response quote check are driven directly (on this thread's
event loop); the rest goes through a real gateway and proxy on loopback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import re
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tdxattest.channel.binding import expected_report_data, response_gpu_nonce, response_report_data
from tdxattest.channel.gateway import Gateway
from tdxattest.channel.proxy import (
    AttestationFailed,
    ProxyConfig,
    VerifyingProxy,
    _upstream_refusal,
    appraise,
    appraise_gpus,
    dev_test_appraiser,
    read_gpu_evidence,
)
from tdxattest.core.checks import Failure
from tdxattest.core.errors import InputError
from tdxattest.core.gpu_policy import parse_evidence_doc
from tdxattest.core.policy import DEFAULT_POLICY, with_pins_json
from tdxattest.dcap.appraise import Appraiser, FixedCollateral
from tdxattest.dcap.collateral import collateral_from_json_text
from tdxattest.testing.standin import StandinConfig
from tdxattest.testing.testpki import TdIdentity, TestPki
from tests.support.channel import Channel

CHECKED = "Say OK"
CHAT = json.dumps({"model": StandinConfig().model, "messages": [{"role": "user", "content": CHECKED}]}).encode()


def failures_of(exc: AttestationFailed) -> list[dict[str, Any]]:
    return [f.as_dict() for f in exc.failures]


@pytest.fixture
def appraiser(tmp_path: Path, pki: TestPki) -> Appraiser:
    pins = tmp_path / "pins.json"
    pins.write_text(json.dumps(TdIdentity().stack_pins().to_json()))
    return Appraiser(
        FixedCollateral(collateral_from_json_text(pki.collateral_json())),
        with_pins_json(DEFAULT_POLICY, str(pins)),
        pki.root_ca_der,
    )


# -- the upstream URL ------------------------------------------------------------------------------


def test_an_upstream_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(InputError) as info:
        ProxyConfig("https://user:secret@gw.example:8443")
    assert info.value.expected == "--upstream: https://HOST:PORT without credentials (the gateway takes none)"
    assert info.value.seen == "user@..."  # never the password


@pytest.mark.parametrize(
    "upstream",
    ["http://gw.example:8443", "https://:8443", "https://gw.example:8443/v1", "https://gw.example:8443/?a=1"],
    ids=["plain-http", "no-host", "a-path", "a-query"],
)
def test_an_upstream_that_is_not_just_https_host_port_is_refused(upstream: str) -> None:
    with pytest.raises(InputError) as info:
        ProxyConfig(upstream)
    assert (info.value.expected, info.value.seen) == (
        "--upstream: https://HOST:PORT (the attested gateway)",
        repr(upstream),
    )


@pytest.mark.parametrize(
    ("upstream", "host", "port"),
    [("https://gw.example:8443", "gw.example", 8443), ("https://gw.example/", "gw.example", 443)],
)
def test_an_https_host_port_upstream_is_taken(upstream: str, host: str, port: int) -> None:
    config = ProxyConfig(upstream)
    assert (config.host, config.port) == (host, port)


# -- the gateway's refusal to quote ------------------------------------------------------------------


def test_a_gateway_error_names_its_own_check_in_what_was_seen() -> None:
    raw = json.dumps({"error": {"code": "gateway.quote_unavailable", "message": "no TSM"}}).encode()
    assert failures_of(_upstream_refusal(503, raw)) == [
        {
            "check": "attestation.unavailable",
            "expected": "a quote from the gateway",
            "seen": "HTTP 503: gateway.quote_unavailable: no TSM",
        }
    ]


@pytest.mark.parametrize(
    "raw",
    [b"<html>busy</html>", b'{"error": "busy"}', b'{"detail": 1}', b"[1, 2]"],
    ids=["html", "str", "no-error", "list"],
)
def test_a_gateway_error_without_a_named_check_shows_its_bytes(raw: bytes) -> None:
    assert failures_of(_upstream_refusal(500, raw)) == [
        {"check": "attestation.unavailable", "expected": "a quote from the gateway", "seen": f"HTTP 500: {raw!r}"}
    ]


def test_a_gateway_error_shows_at_most_160_of_its_bytes() -> None:
    raw = b"x" * 400
    (failure,) = _upstream_refusal(502, raw).failures
    assert failure.seen == f"HTTP 502: {raw[:160]!r}"


# -- appraisal helpers -------------------------------------------------------------------------------


class _RaisingAppraiser:
    """An appraiser whose quote parser gives up on the input (as collateral lookup does on bytes
    too short to hold an FMSPC)."""

    def appraise(self, quote: bytes, now: int, expected_report_data: bytes | None = None) -> Any:
        raise InputError("a quote with a PCK certificate", f"{len(quote)} bytes")


def test_bytes_that_are_no_quote_are_refused_as_malformed() -> None:
    with pytest.raises(AttestationFailed) as info:
        asyncio.run(appraise(_RaisingAppraiser(), b"not a quote", bytes(64)))  # type: ignore[arg-type]
    assert failures_of(info.value) == [
        {"check": "quote.malformed", "expected": "a TDX quote v4/v5", "seen": "11 bytes"}
    ]
    assert info.value.context == "attestation" and info.value.check == "quote.malformed"
    assert str(info.value) == "attestation failed: quote.malformed: expected a TDX quote v4/v5, seen 11 bytes"


def test_a_quote_over_other_report_data_is_refused(appraiser: Appraiser, pki: TestPki) -> None:
    quote = pki.quote(bytes(64))
    assert asyncio.run(appraise(appraiser, quote, bytes(64))).accepted
    with pytest.raises(AttestationFailed) as info:
        asyncio.run(appraise(appraiser, quote, b"\x01" * 64))
    assert info.value.check == "binding.report_data_mismatch"


def test_malformed_gpu_evidence_is_refused_with_what_the_parser_saw() -> None:
    value = {"version": 3}
    with pytest.raises(InputError) as parsed:
        parse_evidence_doc(value)
    with pytest.raises(AttestationFailed) as info:
        read_gpu_evidence(value)
    assert failures_of(info.value) == [
        {"check": "gpu.evidence_malformed", "expected": parsed.value.expected, "seen": parsed.value.seen}
    ]


def test_no_gpu_evidence_reads_as_none() -> None:
    assert read_gpu_evidence(None) is None


class _GpuAppraiser:
    """Stands in for the appraiser's GPU side: records what it was asked, answers or raises."""

    def __init__(self, answer: Any = None, error: Exception | None = None) -> None:
        self.answer, self.error = answer, error
        self.calls: list[tuple[Any, bytes, float]] = []

    def appraise_gpus(self, doc: Any, nonce: bytes, now: float) -> Any:
        self.calls.append((doc, nonce, now))
        if self.error is not None:
            raise self.error
        return self.answer


def test_a_gpu_verifier_crash_is_a_named_refusal_cut_at_200_characters() -> None:
    stub = _GpuAppraiser(error=RuntimeError("cache write failed " * 30))
    with pytest.raises(AttestationFailed) as info:
        asyncio.run(appraise_gpus(stub, None, bytes(32)))  # type: ignore[arg-type]
    (failure,) = info.value.failures
    assert (failure.check, failure.expected) == ("gpu.verifier_error", "a GPU verdict")
    assert failure.seen == ("RuntimeError: " + "cache write failed " * 30)[:200] and len(failure.seen) == 200


def test_the_gpu_policy_gets_the_evidence_the_nonce_and_the_time(appraiser: Appraiser) -> None:
    verdict = appraiser.appraise_gpus(None, bytes(32), time.time())
    assert verdict.accepted  # no GPUs pinned, none served
    stub = _GpuAppraiser(answer=verdict)
    doc, nonce = object(), b"\x07" * 32
    before = time.time()
    assert asyncio.run(appraise_gpus(stub, doc, nonce)) is verdict  # type: ignore[arg-type]
    ((seen_doc, seen_nonce, now),) = stub.calls
    assert seen_doc is doc and seen_nonce == nonce and before <= now <= time.time()


def test_a_gpu_verdict_that_refuses_is_raised_with_its_failures(tmp_path: Path, pki: TestPki) -> None:
    from tdxattest.core.pins import GpuExpectation

    pins = tmp_path / "gpu-pins.json"
    pinned = GpuExpectation(count=1, vbios=("96.00.9F.00.01",), driver=("550.90.07",), mode="on")
    pins.write_text(json.dumps(replace(TdIdentity().stack_pins(), gpu=pinned).to_json()))
    gpu_appraiser = Appraiser(
        FixedCollateral(collateral_from_json_text(pki.collateral_json())),
        with_pins_json(DEFAULT_POLICY, str(pins)),
        pki.root_ca_der,
    )
    refusal = gpu_appraiser.appraise_gpus(None, bytes(32), time.time())
    assert not refusal.accepted
    with pytest.raises(AttestationFailed) as info:
        asyncio.run(appraise_gpus(gpu_appraiser, None, bytes(32)))
    assert info.value.failures == tuple(refusal.failures)


# -- --accept-dev-test-root ----------------------------------------------------------------------------

TEST_PKI_EXPECTED = (
    "the TEST root and collateral a software-test gateway serves (`test_pki`), as --accept-dev-test-root needs"
)
TEST_PKI_DETAIL = "the upstream is not the dev stack's TD without TDX: drop --accept-dev-test-root"


def test_the_served_test_root_and_collateral_replace_the_appraisers(appraiser: Appraiser, pki: TestPki) -> None:
    other = replace(appraiser, root_ca_der=b"another root")
    served = {"root_ca": base64.b64encode(pki.root_ca_der).decode(), "collateral": pki.collateral_json()}
    dev = dev_test_appraiser(other, served)
    assert dev.root_ca_der == pki.root_ca_der
    assert isinstance(dev.collateral, FixedCollateral) and dev.policy is other.policy
    assert asyncio.run(appraise(dev, pki.quote(bytes(64)), bytes(64))).accepted


@pytest.mark.parametrize(
    ("value", "seen"),
    [
        (None, "'NoneType' object is not subscriptable"),
        ({"collateral": "{}"}, "'root_ca'"),
        ({"root_ca": "QUFB*QUFB"}, "Only base64 data is allowed"),
    ],
    ids=["none", "no-root", "lenient-base64"],
)
def test_an_answer_without_a_usable_test_pki_is_refused(appraiser: Appraiser, value: Any, seen: str) -> None:
    with pytest.raises(AttestationFailed) as info:
        dev_test_appraiser(appraiser, value)
    assert failures_of(info.value) == [
        {"check": "attestation.test_pki", "expected": TEST_PKI_EXPECTED, "seen": seen, "detail": TEST_PKI_DETAIL}
    ]


def test_unusable_served_collateral_is_named_and_cut_at_160_characters(appraiser: Appraiser, pki: TestPki) -> None:
    with pytest.raises(InputError) as parsed:
        collateral_from_json_text("{}", "the dev gateway's TEST PKI")
    with pytest.raises(AttestationFailed) as info:
        dev_test_appraiser(appraiser, {"root_ca": base64.b64encode(pki.root_ca_der).decode(), "collateral": "{}"})
    (failure,) = info.value.failures
    assert len(str(parsed.value)) > 160
    assert failure.seen == " ".join(str(parsed.value).split())[:160]
    assert failure.seen.startswith("the dev gateway's TEST PKI: expected collateral JSON")


# -- per-response quotes, checked directly ---------------------------------------------------------------

RESPONSE_ID = "resp-0123456789abcdef"


def response_headers(pki: TestPki, body: bytes, response_id: str = RESPONSE_ID, **extra: str) -> list[tuple[str, str]]:
    """What a gateway attaches to a response: a quote over this request body and response id."""
    quote = pki.quote(response_report_data(hashlib.sha256(body).digest(), response_id))
    headers = {"X-TDX-Quote": base64.b64encode(quote).decode(), "X-TDX-Response-Id": response_id}
    headers.update(extra)
    return list(headers.items())


def check_response(appraiser: Appraiser, headers: list[tuple[str, str]], body: bytes = CHAT) -> str:
    proxy = VerifyingProxy(ProxyConfig("https://127.0.0.1:1"), appraiser)
    return asyncio.run(proxy._check_response_quote(appraiser, headers, body))


def refusal(appraiser: Appraiser, headers: list[tuple[str, str]], body: bytes = CHAT) -> Failure:
    with pytest.raises(AttestationFailed) as info:
        check_response(appraiser, headers, body)
    return info.value.failures[0]


def test_a_response_quote_over_the_request_and_response_id_is_taken(appraiser: Appraiser, pki: TestPki) -> None:
    headers = response_headers(pki, CHAT)
    quote = base64.b64decode(dict(headers)["X-TDX-Quote"])
    assert check_response(appraiser, headers) == hashlib.sha256(quote).hexdigest()


def test_a_replayed_connection_quote_is_refused_as_a_response_quote(appraiser: Appraiser, pki: TestPki) -> None:
    # The quote that proved the connection is genuine, but it binds the TLS key and a nonce, not
    # this response: a middleman replaying it must not make the response look attested.
    connection_quote = pki.quote(expected_report_data(bytes(91), bytes(32)))
    headers = [("x-tdx-quote", base64.b64encode(connection_quote).decode()), ("x-tdx-response-id", RESPONSE_ID)]
    assert refusal(appraiser, headers).check == "binding.report_data_mismatch"


def test_a_response_quote_for_another_request_body_is_refused(appraiser: Appraiser, pki: TestPki) -> None:
    assert refusal(appraiser, response_headers(pki, b"another request")).check == "binding.report_data_mismatch"


@pytest.mark.parametrize("missing", ["X-TDX-Quote", "X-TDX-Response-Id"])
def test_a_response_without_its_quote_or_its_id_is_refused(appraiser: Appraiser, pki: TestPki, missing: str) -> None:
    headers = [(k, v) for k, v in response_headers(pki, CHAT) if k != missing]
    assert refusal(appraiser, headers).as_dict() == {
        "check": "response.quote_missing",
        "expected": "x-tdx-quote and x-tdx-response-id headers",
        "seen": "absent",
        "detail": "the gateway did not attest this response",
    }


def test_a_response_quote_in_lenient_base64_is_refused(appraiser: Appraiser, pki: TestPki) -> None:
    # Lenient decoding would drop the `*` and verify the right quote: strict decoding refuses it.
    headers = dict(response_headers(pki, CHAT))
    headers["X-TDX-Quote"] = headers["X-TDX-Quote"][:40] + "*" + headers["X-TDX-Quote"][40:]
    failure = refusal(appraiser, list(headers.items()))
    assert failure.as_dict() == {
        "check": "response.quote_malformed",
        "expected": "a base64 quote and an ASCII response id",
        "seen": "Only base64 data is allowed",
    }


def test_a_response_id_that_is_not_printable_ascii_is_refused(appraiser: Appraiser, pki: TestPki) -> None:
    headers = dict(response_headers(pki, CHAT))
    headers["X-TDX-Response-Id"] = "r\u00e9ponse"
    failure = refusal(appraiser, list(headers.items()))
    assert (failure.check, failure.expected) == ("response.quote_malformed", "a base64 quote and an ASCII response id")
    assert "printable ASCII response id" in failure.seen and "\n" not in failure.seen


@pytest.mark.parametrize(
    ("evidence", "seen"),
    [("e30*", "Only base64 data is allowed"), (base64.b64encode(b"{not json").decode(), "Expecting property name")],
    ids=["lenient-base64", "not-json"],
)
def test_response_gpu_evidence_that_is_not_base64_json_is_refused(
    appraiser: Appraiser, pki: TestPki, evidence: str, seen: str
) -> None:
    failure = refusal(appraiser, response_headers(pki, CHAT, **{"X-TDX-GPU-Evidence": evidence}))
    assert (failure.check, failure.expected) == ("gpu.evidence_malformed", "x-tdx-gpu-evidence as base64 JSON")
    assert failure.seen.startswith(seen)


def test_response_gpu_evidence_of_the_wrong_shape_is_refused(appraiser: Appraiser, pki: TestPki) -> None:
    evidence = base64.b64encode(json.dumps({"version": 3}).encode()).decode()
    failure = refusal(appraiser, response_headers(pki, CHAT, **{"X-TDX-GPU-Evidence": evidence}))
    assert failure.check == "gpu.evidence_malformed" and failure.expected == "gpu_evidence: an object with version 2"


# -- response quotes with GPU evidence -------------------------------------------------------------------


@pytest.fixture(scope="module")
def test_gpu() -> Any:
    from tdxattest.testing.testgpu import TestGpu
    from tests.support.nvml_standin import GPU_FIXTURES

    return TestGpu.create((GPU_FIXTURES / "hopperAttestationReport.txt").read_text().strip())


@pytest.fixture
def gpu_appraiser(tmp_path: Path, pki: TestPki, test_gpu: Any) -> Appraiser:
    from tdxattest.core.gpu_policy import GpuPolicy, parse_reference
    from tdxattest.core.pins import GpuExpectation
    from tests.support.nvml_standin import GPU_FIXTURES

    claims = json.loads((GPU_FIXTURES / "hopperAttestationReport-claims.txt").read_text())
    golden = parse_reference({k: v for k, v in claims["measurements"].items() if set(v) != {"0"}}, "golden")
    policy = replace(
        DEFAULT_POLICY, gpu=GpuPolicy(reference=golden, reference_source="golden", root_pem=test_gpu.root_pem)
    )
    pinned = GpuExpectation(count=1, vbios=("96.00.9F.00.01",), driver=("550.90.07",), mode="on")
    pins = tmp_path / "gpu-pins.json"
    pins.write_text(json.dumps(replace(TdIdentity().stack_pins(), gpu=pinned).to_json()))
    return Appraiser(
        FixedCollateral(collateral_from_json_text(pki.collateral_json())),
        with_pins_json(policy, str(pins)),
        pki.root_ca_der,
    )


def gpu_response_headers(pki: TestPki, gpu: Any, body: bytes, nonce: bytes | None = None) -> list[tuple[str, str]]:
    """Headers a gateway with `gpu` attaches: evidence over the response's GPU nonce (or `nonce`),
    and a quote binding the request body, the response id and that evidence's digest."""
    digest = hashlib.sha256(body).digest()
    nonce = nonce if nonce is not None else response_gpu_nonce(digest, RESPONSE_ID)
    doc = parse_evidence_doc(
        {
            "version": 2,
            "nonce": nonce.hex(),
            "cc": {"environment": "prod", "enabled": True, "devtools": False},
            "gpus": [{"index": 0, "evidence": gpu.report(nonce).hex(), "certificate": gpu.chain_pem.decode()}],
        }
    )
    quote = pki.quote(response_report_data(digest, RESPONSE_ID, doc.digest()))
    compact = json.dumps(doc.to_json(), separators=(",", ":")).encode()
    return [
        ("x-tdx-quote", base64.b64encode(quote).decode()),
        ("x-tdx-response-id", RESPONSE_ID),
        ("x-tdx-gpu-evidence", base64.b64encode(compact).decode()),
    ]


def test_a_response_quote_with_fresh_gpu_evidence_is_taken(
    gpu_appraiser: Appraiser, pki: TestPki, test_gpu: Any
) -> None:
    headers = gpu_response_headers(pki, test_gpu, CHAT)
    assert check_response(gpu_appraiser, headers) == hashlib.sha256(base64.b64decode(headers[0][1])).hexdigest()


def test_response_gpu_evidence_over_another_nonce_is_refused(
    gpu_appraiser: Appraiser, pki: TestPki, test_gpu: Any
) -> None:
    # Evidence collected for another response (its nonce), bound into this quote all the same.
    headers = gpu_response_headers(pki, test_gpu, CHAT, nonce=b"\x05" * 32)
    assert refusal(gpu_appraiser, headers).check.startswith("gpu.")


def test_a_response_without_gpu_evidence_is_refused_when_gpus_are_pinned(
    gpu_appraiser: Appraiser, pki: TestPki
) -> None:
    assert refusal(gpu_appraiser, response_headers(pki, CHAT)).check.startswith("gpu.")


# -- through a gateway and the proxy on loopback ---------------------------------------------------------


def call(
    ch: Channel, method: str = "POST", path: str = "/v1/chat/completions", body: bytes | None = CHAT, **headers: str
) -> tuple[int, http.client.HTTPMessage, bytes]:
    port = int(ch.proxy_url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        sent = {"content-type": "application/json", **{k.replace("_", "-"): v for k, v in headers.items()}}
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def error_of(status: int, body: bytes, expected_status: int = 502) -> dict[str, Any]:
    assert status == expected_status, body[:300]
    return json.loads(body)["error"]


class RecordingGateway(Gateway):
    """Records the head of every request it forwards and every attestation nonce it is asked for."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.seen: list[dict[str, list[str]]] = []
        self.nonces: list[str] = []
        self.attestation_asks: list[tuple[str | None, bytes]] = []

    async def attestation(self, request: Any) -> Any:
        self.nonces.append(request.query.get("nonce", ""))
        self.attestation_asks.append((request.headers.get("accept"), await request.read()))
        return await super().attestation(request)

    async def forward(self, request: Any) -> Any:
        heads: dict[str, list[str]] = {}
        for k, v in request.headers.items():
            heads.setdefault(k.lower(), []).append(v)
        self.seen.append(heads)
        return await super().forward(request)


def test_a_head_request_is_answered_405_and_audited_without_a_connection(
    channel_factory: Callable[..., Channel], pki: TestPki
) -> None:
    ch = channel_factory(pki)
    status, _, body = call(ch, "HEAD", "/v1/models", body=None)
    assert status == 405 and body == b""  # a HEAD answer carries no body: check the audit line
    (record,) = ch.audit_records()
    assert (record["verdict"], record["status"], record["connection"]) == ("not_forwarded", 405, None)
    assert ch.standin.requests == 0


@pytest.mark.parametrize("method", ["HEAD", "CONNECT"])
def test_the_405_body_names_the_method_and_the_request(tmp_path: Path, appraiser: Appraiser, method: str) -> None:
    # A HEAD answer carries no body on the wire, and aiohttp's router turns CONNECT away before the
    # handler: call the handler with aiohttp's test request so the error body itself can be read.
    from aiohttp.test_utils import make_mocked_request

    audit = tmp_path / "audit.jsonl"
    proxy = VerifyingProxy(ProxyConfig("https://127.0.0.1:1", audit_path=str(audit)), appraiser)

    async def run() -> Any:
        request = make_mocked_request(method, "/v1/models")
        return await proxy.handle(request)

    response = asyncio.run(run())
    proxy.audit.close()
    (record,) = [json.loads(line) for line in audit.read_text().splitlines()]
    assert response.status == 405
    assert json.loads(response.body) == {
        "error": {
            "message": f"{method} is not forwarded",
            "type": "upstream_error",
            "code": "request.method_not_forwarded",
            "request_id": record["request_id"],
        }
    }
    assert re.fullmatch(r"[0-9a-f]{32}", record["request_id"])


def test_an_unreachable_gateway_is_a_named_502_with_its_audit_line(
    channel_factory: Callable[..., Channel], pki: TestPki
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    ch = channel_factory(pki, middleman=lambda _url: _fixed(f"https://127.0.0.1:{port}"))
    error = error_of(*call(ch)[::2])
    (record,) = ch.audit_records()
    (failure,) = error["failures"]
    assert error["code"] == "upstream.unreachable" and error["type"] == "attestation_failed"
    assert failure["expected"] == f"a TLS connection to https://127.0.0.1:{port}"
    assert (
        "Connect call failed" in failure["seen"]
        and failure["detail"] == "is the gateway running and reachable from here?"
    )
    assert error["request_id"] == record["request_id"] and error["message"].startswith("upstream refused: ")
    assert (record["verdict"], record["status"], record["connection"]) == ("refused", 502, None)
    assert record["failures"] == error["failures"]


async def _fixed(url: str) -> tuple[str, Callable[[], Any]]:
    async def stop() -> None:
        return None

    return url, stop


def test_a_gateway_that_never_completes_the_tls_handshake_times_out(
    channel_factory: Callable[..., Channel], pki: TestPki
) -> None:
    async def silent(_url: str) -> tuple[str, Callable[[], Any]]:
        held: list[asyncio.StreamWriter] = []

        async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # never answers the ClientHello

        server = await asyncio.start_server(accept, "127.0.0.1", 0)

        async def stop() -> None:
            for w in held:
                w.close()
            server.close()

        return f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}", stop

    ch = channel_factory(pki, middleman=silent, connect_timeout_s=0.3)
    started = time.monotonic()
    error = error_of(*call(ch)[::2])
    assert time.monotonic() - started < 5
    assert error["code"] == "upstream.unreachable" and error["failures"][0]["seen"] == "TimeoutError"


def test_request_headers_reach_the_gateway_with_one_required_attestation_header(
    channel_factory: Callable[..., Channel], pki: TestPki
) -> None:
    # The client's own x-attestation (here `none`) must not win over the proxy's `required`.
    ch = channel_factory(pki, require_response_quotes=True, gateway_cls=RecordingGateway)
    status, _, body = call(ch, x_attestation="none", x_client_trace="abc")
    assert status == 200, body[:300]
    (heads,) = ch.gateway.seen  # type: ignore[attr-defined]
    assert heads["x-attestation"] == ["required"] and heads["x-client-trace"] == ["abc"]
    assert heads["host"] == [ch.proxy.config.upstream.removeprefix("https://")]
    (nonce,) = ch.gateway.nonces  # type: ignore[attr-defined]
    assert re.fullmatch(r"[0-9a-f]{64}", nonce)  # 32 fresh bytes
    assert ch.gateway.attestation_asks == [("application/json", b"")]  # type: ignore[attr-defined]


def test_an_accepted_answer_passes_status_length_and_headers_and_is_audited(
    channel_factory: Callable[..., Channel], pki: TestPki
) -> None:
    ch = channel_factory(pki, require_response_quotes=True)
    before = time.time()
    status, headers, body = call(ch)
    assert status == 200 and json.loads(body)["choices"]
    assert headers["content-length"] == str(len(body)) and headers["transfer-encoding"] is None
    assert headers["content-type"].startswith("application/json") and headers["x-tdx-response-id"]
    (record,) = ch.audit_records()
    quote = base64.b64decode(headers["x-tdx-quote"])
    assert record["response_quote_sha256"] == hashlib.sha256(quote).hexdigest()
    assert (record["verdict"], record["status"], record["method"], record["path"]) == (
        "accepted",
        200,
        "POST",
        "/v1/chat/completions",
    )
    assert isinstance(record["connection"], int) and record["tcb_status"] == "UpToDate"
    assert record["quote_source"] == "software-test-pki" and record["gpu"] is None
    assert record["checks"] and set(record["checks"].values()) <= {"pass", "not_checked"}
    assert 0 <= record["answered_ms"] < 10_000
    stamp = time.mktime(time.strptime(record["time"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"]) and abs(stamp - before) < 5


def test_an_upstream_error_status_is_passed_through(channel_factory: Callable[..., Channel], pki: TestPki) -> None:
    ch = channel_factory(pki)
    status, _, _ = call(ch, "GET", "/v1/no-such-endpoint", body=None)
    assert status == 404
    (record,) = ch.audit_records()
    assert (record["verdict"], record["status"]) == ("accepted", 404)


def test_a_replayed_connection_quote_on_a_response_is_refused_end_to_end(
    channel_factory: Callable[..., Channel], pki: TestPki
) -> None:
    class ReplaysTheConnectionQuote(Gateway):
        first: bytes | None = None

        async def _quote(self, report_data: bytes) -> bytes:
            quote = await super()._quote(report_data)
            if self.first is None:
                self.first = quote
            return self.first

    ch = channel_factory(pki, require_response_quotes=True, gateway_cls=ReplaysTheConnectionQuote)
    error = error_of(*call(ch)[::2])
    assert error["code"] == "binding.report_data_mismatch" and error["message"].startswith("response refused: ")
    (record,) = ch.audit_records()
    assert error["request_id"] == record["request_id"]
    assert (record["verdict"], record["status"]) == ("refused", 502) and isinstance(record["connection"], int)
    assert record["quote_sha256"] == hashlib.sha256(ch.gateway.first).hexdigest()  # type: ignore[attr-defined]
    assert record["failures"] == error["failures"]


def test_a_request_the_proxy_cannot_frame_is_a_400_and_not_sent(
    channel_factory: Callable[..., Channel], pki: TestPki
) -> None:
    ch = channel_factory(pki)
    port = int(ch.proxy_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET http://p/v1/models HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer[:300]
    error = json.loads(body)["error"]
    (record,) = ch.audit_records()
    assert error == {
        "message": error["message"],
        "type": "upstream_error",
        "code": "request.malformed",
        "request_id": record["request_id"],
    }
    assert error["message"].startswith("refusing to forward a malformed request line")
    assert (record["verdict"], record["status"], record["method"]) == ("not_forwarded", 400, "GET")
    assert isinstance(record["connection"], int) and record["quote_sha256"]  # the connection was attested
    assert ch.standin.requests == 0


# -- retries: only a kept-alive connection, only once ------------------------------------------------------


def dropping_gateway(drop: set[int]) -> type[Gateway]:
    """A gateway that takes the n-th forwarded request (n in `drop`) and closes the connection
    without answering: what a server closing an idle kept-alive connection looks like."""

    class Drops(Gateway):
        forwarded = 0

        async def forward(self, request: Any) -> Any:
            type(self).forwarded += 1
            if type(self).forwarded in drop:
                request.transport.abort()
                raise ConnectionResetError
            return await super().forward(request)

    return Drops


def test_a_request_on_a_kept_alive_connection_the_server_dropped_is_retried_once(
    channel_factory: Callable[..., Channel], pki: TestPki
) -> None:
    ch = channel_factory(pki, gateway_cls=dropping_gateway({2}))
    assert call(ch)[0] == 200
    status, _, body = call(ch)
    assert status == 200, body[:300]
    assert type(ch.gateway).forwarded == 3  # type: ignore[attr-defined]  # first, dropped, retried
    assert ch.proxy.pool.attestations == 2 and ch.standin.requests == 2
    first, second = ch.audit_records()
    assert second["verdict"] == "accepted" and second["connection"] != first["connection"]


def test_a_retried_request_that_fails_again_is_a_502_and_not_tried_a_third_time(
    channel_factory: Callable[..., Channel], pki: TestPki
) -> None:
    ch = channel_factory(pki, gateway_cls=dropping_gateway({2, 3}))
    assert call(ch)[0] == 200
    error = error_of(*call(ch)[::2])
    assert error["code"] == "upstream.error" and error["message"].startswith("upstream connection failed: ")
    assert type(ch.gateway).forwarded == 3  # type: ignore[attr-defined]
    _, record = ch.audit_records()
    assert (record["verdict"], record["status"]) == ("error", 502) and error["request_id"] == record["request_id"]
    assert isinstance(record["connection"], int) and record["quote_sha256"]


# -- the connection's attestation exchange -----------------------------------------------------------------


def attestation_gateway(answer: Callable[[Any, Any], Any]) -> type[Gateway]:
    """A gateway whose attestation answer is `answer(request, genuine_response)`."""

    class Answers(Gateway):
        async def attestation(self, request: Any) -> Any:
            return answer(request, await super().attestation(request))

    return Answers


def attestation_failure(ch: Channel, check: str) -> dict[str, Any]:
    error = error_of(*call(ch)[::2])
    assert error["code"] == check, error
    (record,) = ch.audit_records()
    assert record["failures"] == error["failures"] and (record["verdict"], record["status"]) == ("refused", 502)
    assert ch.standin.requests == 0
    (failure,) = error["failures"]
    return failure


def _hang_up(request: Any, _genuine: Any) -> Any:
    request.transport.abort()
    raise ConnectionResetError


def test_a_gateway_that_hangs_up_on_the_attestation_request_is_refused(
    channel_factory: Callable[..., Channel], pki: TestPki
) -> None:
    ch = channel_factory(pki, gateway_cls=attestation_gateway(_hang_up))
    failure = attestation_failure(ch, "attestation.unavailable")
    assert failure["expected"] == "an attestation response from the gateway"
    assert isinstance(failure["seen"], str) and failure["seen"] and failure["seen"] != "None"
    assert "Error" not in failure["seen"]  # the error's own words, not only its type


def _error_status(_request: Any, _genuine: Any) -> Any:
    from aiohttp import web

    return web.json_response({"error": {"code": "gateway.busy", "message": "later"}}, status=429)


def test_an_attestation_error_status_is_refused_with_the_status_seen(
    channel_factory: Callable[..., Channel], pki: TestPki
) -> None:
    ch = channel_factory(pki, gateway_cls=attestation_gateway(_error_status))
    failure = attestation_failure(ch, "attestation.unavailable")
    assert failure == {
        "check": "attestation.unavailable",
        "expected": "a quote from the gateway",
        "seen": "HTTP 429: gateway.busy: later",
    }


def _no_quote(_request: Any, genuine: Any) -> Any:
    doc = json.loads(genuine.body)
    del doc["quote"]
    genuine.body = json.dumps(doc).encode()
    return genuine


def test_an_attestation_answer_without_a_quote_is_refused(
    channel_factory: Callable[..., Channel], pki: TestPki
) -> None:
    ch = channel_factory(pki, gateway_cls=attestation_gateway(_no_quote))
    failure = attestation_failure(ch, "attestation.malformed")
    assert failure == {"check": "attestation.malformed", "expected": "JSON with a base64 `quote`", "seen": "'quote'"}


def _odd_source(_request: Any, genuine: Any) -> Any:
    doc = json.loads(genuine.body)
    doc["quote_source"] = {"label": "tsm"}
    genuine.body = json.dumps(doc).encode()
    return genuine


def test_a_quote_source_that_is_not_a_string_is_not_audited(
    channel_factory: Callable[..., Channel], pki: TestPki
) -> None:
    ch = channel_factory(pki, gateway_cls=attestation_gateway(_odd_source))
    assert call(ch)[0] == 200
    (record,) = ch.audit_records()
    assert record["verdict"] == "accepted" and record["quote_source"] is None


def padded_attestation(size: int) -> Callable[[Any, Any], Any]:
    """The genuine answer padded to exactly `size` bytes (the proxy reads at most 8 MiB of it)."""

    def answer(_request: Any, genuine: Any) -> Any:
        from aiohttp import web

        doc = json.loads(genuine.body)
        doc["pad"] = ""
        short = len(json.dumps(doc).encode())
        doc["pad"] = "x" * (size - short)
        body = json.dumps(doc).encode()
        assert len(body) == size
        return web.Response(body=body, content_type="application/json")

    return answer


def test_an_attestation_answer_of_exactly_8_mib_is_read(channel_factory: Callable[..., Channel], pki: TestPki) -> None:
    from tdxattest.channel.proxy import MAX_ATTESTATION_BYTES

    ch = channel_factory(pki, gateway_cls=attestation_gateway(padded_attestation(MAX_ATTESTATION_BYTES)))
    assert call(ch)[0] == 200


def test_an_attestation_answer_over_8_mib_is_refused(channel_factory: Callable[..., Channel], pki: TestPki) -> None:
    from tdxattest.channel.proxy import MAX_ATTESTATION_BYTES

    ch = channel_factory(pki, gateway_cls=attestation_gateway(padded_attestation(MAX_ATTESTATION_BYTES + 1)))
    failure = attestation_failure(ch, "attestation.unavailable")
    assert failure["seen"] == f"more than {MAX_ATTESTATION_BYTES} bytes"


def test_a_gateway_that_closes_the_attested_connection_leaves_nothing_to_use(
    channel_factory: Callable[..., Channel], pki: TestPki
) -> None:
    def closing(_request: Any, genuine: Any) -> Any:
        genuine.force_close()
        return genuine

    ch = channel_factory(pki, gateway_cls=attestation_gateway(closing))
    failure = attestation_failure(ch, "attestation.unavailable")
    assert failure == {
        "check": "attestation.unavailable",
        "expected": "the attested connection kept open for requests",
        "seen": "the gateway closed it after answering (shutting down?)",
    }


def test_an_attestation_answer_that_never_comes_is_refused_after_the_timeout(
    channel_factory: Callable[..., Channel], pki: TestPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tdxattest.channel import proxy as proxy_module

    class Slow(Gateway):
        async def attestation(self, request: Any) -> Any:
            await asyncio.sleep(1.0)
            return await super().attestation(request)

    # The bound is a module constant (60 s): a short one keeps the test fast.
    monkeypatch.setattr(proxy_module, "ATTESTATION_TIMEOUT_S", 0.2)
    ch = channel_factory(pki, gateway_cls=Slow)
    failure = attestation_failure(ch, "attestation.unavailable")  # not the answer that came 1 s later
    assert failure == {
        "check": "attestation.unavailable",
        "expected": "an attestation response within 0 s",
        "seen": "no complete answer",
    }


# -- the audit log -----------------------------------------------------------------------------------------


class _Request(dict):
    """What `_audit` and `audit_rejected` read of an aiohttp request."""

    def __init__(self, method: str, path: str) -> None:
        super().__init__()
        self.method, self.path, self.raw_path = method, path, path


def _audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_audit_line_times_the_request_from_its_start(tmp_path: Path, appraiser: Appraiser) -> None:
    from tdxattest.channel.proxy import _Exchange

    audit = tmp_path / "audit.jsonl"
    proxy = VerifyingProxy(ProxyConfig("https://127.0.0.1:1", audit_path=str(audit)), appraiser)
    started = time.time() - 100.0
    request = _Request("POST", "/v1/chat/completions")
    proxy._audit(_Exchange("rid", started), request, None, "refused", 502)
    proxy.audit.close()
    (record,) = _audit_lines(audit)
    assert 100_000 <= record["answered_ms"] < 100_090  # ms since the start, not a hundred more
    assert record["answered_ms"] == round(record["answered_ms"], 3) and isinstance(record["answered_ms"], float)
    assert (
        record["time"]
        == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)) + f".{int(started * 1000) % 1000:03d}Z"
    )
    assert (record["connection"], record["quote_sha256"], record["gpu"], record["checks"]) == (None, None, None, None)
    assert "failures" not in record and request  # marked as audited
    assert (record["request_id"], record["upstream"]) == ("rid", "https://127.0.0.1:1")


def test_rfc3339_times_are_utc_with_milliseconds() -> None:
    from tdxattest.channel.proxy import _rfc3339_ms

    assert _rfc3339_ms(0.5) == "1970-01-01T00:00:00.500Z"
    assert _rfc3339_ms(1_700_000_000.042) == "2023-11-14T22:13:20.042Z"


@pytest.mark.parametrize(
    ("method", "status", "seen_method", "seen_path", "why"),
    [
        ("GET", 400, "GET", "/v1/x", "the HTTP server refused the request"),
        ("UNKNOWN", 400, None, None, "the HTTP server refused the request"),
        ("POST", 413, "POST", "/v1/x", "the body is over the limit"),
    ],
    ids=["parsed", "unparsed", "too-large"],
)
def test_a_request_refused_before_the_handler_is_audited(
    tmp_path: Path,
    appraiser: Appraiser,
    method: str,
    status: int,
    seen_method: str | None,
    seen_path: str | None,
    why: str,
) -> None:
    audit = tmp_path / "audit.jsonl"
    proxy = VerifyingProxy(ProxyConfig("https://127.0.0.1:1", audit_path=str(audit)), appraiser)
    proxy.audit_rejected(_Request(method, "/v1/x"), status)
    proxy.audit.close()
    (record,) = _audit_lines(audit)
    assert (record["method"], record["path"], record["status"], record["rejected"]) == (
        seen_method,
        seen_path,
        status,
        why,
    )
    assert (record["verdict"], record["connection"], record["upstream"]) == (
        "not_forwarded",
        None,
        "https://127.0.0.1:1",
    )
    assert re.fullmatch(r"[0-9a-f]{32}", record["request_id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])


def test_audit_lines_are_compact_json(tmp_path: Path) -> None:
    from tdxattest.channel.proxy import AuditLog

    log = AuditLog(str(tmp_path / "audit.jsonl"))
    log.write({"a": 1, "b": "x"})
    log.close()
    assert (tmp_path / "audit.jsonl").read_text() == '{"a":1,"b":"x"}\n'


def test_without_an_audit_path_nothing_is_written() -> None:
    from tdxattest.channel.proxy import AuditLog

    log = AuditLog(None)
    log.write({"a": 1})  # nowhere to write: no error either
    log.close()


# -- a connection whose certificate cannot be read -----------------------------------------------------------


def test_a_connection_without_a_readable_certificate_is_refused(appraiser: Appraiser, pki: TestPki) -> None:
    # Plain TCP stands in for a TLS stack that gave no peer certificate: there is no key to bind,
    # so the quote cannot be bound to this connection, however good it is.
    from tdxattest.channel.proxy import UpstreamConnection

    answer = json.dumps({"quote": base64.b64encode(pki.quote(bytes(64))).decode()}).encode()

    async def run() -> tuple[AttestationFailed, bool]:
        hung_up = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer))
            await writer.drain()
            await reader.read()  # until the proxy closes the connection
            hung_up.set()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = UpstreamConnection(ProxyConfig(f"https://127.0.0.1:{port}"), reader, writer)
        try:
            await conn.attest(appraiser)
        except AttestationFailed as exc:
            await asyncio.wait_for(hung_up.wait(), 5)  # the refused connection is closed, not left open
            return exc, conn.closed
        finally:
            writer.close()
            server.close()
        raise AssertionError("attested a connection without a certificate")

    refusal_, closed = asyncio.run(run())
    (failure,) = refusal_.failures
    assert (failure.check, failure.expected) == (
        "attestation.malformed",
        "a TLS certificate with a public key we can read",
    )
    assert isinstance(failure.seen, str) and failure.seen and failure.seen != "None"
    assert closed


# -- forwarding the answer --------------------------------------------------------------------------------


def test_a_streamed_answer_arrives_whole_and_in_pieces(channel_factory: Callable[..., Channel], pki: TestPki) -> None:
    ch = channel_factory(pki, standin=StandinConfig(token_interval_s=0.05, tokens=4))
    assert call(ch, "GET", "/v1/models", body=None)[0] == 200  # attest first
    body = json.dumps(
        {"model": StandinConfig().model, "messages": [{"role": "user", "content": "a b c"}], "stream": True}
    ).encode()
    port = int(ch.proxy_url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers={"content-type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200
        assert response.headers.get_all("transfer-encoding") == ["chunked"]  # once: the upstream's is hop-by-hop
        assert response.headers["connection"] is None or "close" not in response.headers["connection"].lower()
        first = response.read1(65536)
        rest = response.read()
    finally:
        conn.close()
    assert first and b"data: " in first and b"[DONE]" not in first  # the first token before the last
    assert (first + rest).rstrip().endswith(b"data: [DONE]")
    assert all("note" not in r for r in ch.audit_records())


def test_an_answer_cut_mid_body_is_noted_in_the_audit_log(
    channel_factory: Callable[..., Channel], pki: TestPki
) -> None:
    from aiohttp import web

    class CutsTheBody(Gateway):
        async def forward(self, request: Any) -> Any:
            await request.read()
            out = web.StreamResponse(status=200, headers={"content-type": "text/plain"})
            await out.prepare(request)
            await out.write(b"partial answer")
            await asyncio.sleep(0.05)
            request.transport.abort()
            return out

    ch = channel_factory(pki, gateway_cls=CutsTheBody)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        call(ch)
    deadline = time.monotonic() + 5
    while len(ch.audit_records()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    accepted, note = ch.audit_records()
    assert accepted["verdict"] == "accepted"
    assert note == {"request_id": accepted["request_id"], "note": "response cut before its end"}


def test_the_answer_head_and_its_reason_go_to_the_client_before_a_slow_body(
    channel_factory: Callable[..., Channel], pki: TestPki
) -> None:
    # A completion's headers come before its first token: the client must see them then, not when
    # the body starts; and the upstream's hop-by-hop headers stay on the upstream hop.
    from aiohttp import web

    class SlowBody(Gateway):
        async def forward(self, request: Any) -> Any:
            await request.read()
            out = web.StreamResponse(
                status=200, reason="Slow But Fine", headers={"content-type": "text/plain", "keep-alive": "timeout=99"}
            )
            await out.prepare(request)
            await asyncio.sleep(0.6)
            await out.write(b"late body")
            await out.write_eof()
            return out

    ch = channel_factory(pki, gateway_cls=SlowBody)
    assert call(ch, "GET", "/v1/models", body=None)[0] == 200  # attest first
    port = int(ch.proxy_url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        started = time.monotonic()
        conn.request("GET", "/v1/models")
        response = conn.getresponse()
        head_after = time.monotonic() - started
        body = response.read()
        body_after = time.monotonic() - started
    finally:
        conn.close()
    assert (response.status, response.reason, body) == (200, "Slow But Fine", b"late body")
    assert head_after < 0.4 <= body_after, (head_after, body_after)
    assert response.headers["keep-alive"] is None


def test_a_retry_that_lands_on_another_dropped_kept_alive_connection_is_not_retried_again(
    channel_factory: Callable[..., Channel], pki: TestPki
) -> None:
    import threading

    class SlowThenDrops(Gateway):
        forwarded = 0

        async def forward(self, request: Any) -> Any:
            type(self).forwarded += 1
            n = type(self).forwarded
            if n <= 2:
                await asyncio.sleep(0.2)  # both first requests in flight at once: two connections
            elif n <= 4:
                request.transport.abort()
                raise ConnectionResetError
            return await super().forward(request)

    ch = channel_factory(pki, gateway_cls=SlowThenDrops)
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(call(ch)[0])) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert statuses == [200, 200] and ch.proxy.pool.attestations == 2
    # Both connections now idle and kept alive; the server drops the next request on each.
    error = error_of(*call(ch)[::2])
    assert error["code"] == "upstream.error"
    assert SlowThenDrops.forwarded == 4  # the request, its one retry, and no third try


def test_an_attestation_answer_that_arrives_in_pieces_is_put_together(
    channel_factory: Callable[..., Channel], pki: TestPki
) -> None:
    from aiohttp import web

    class InPieces(Gateway):
        async def attestation(self, request: Any) -> Any:
            genuine = await super().attestation(request)
            body = genuine.body
            cut = body.index(b'"quote": "') + 200  # inside the quote's base64
            out = web.StreamResponse(status=200, headers={"content-type": "application/json"})
            out.content_length = len(body)
            await out.prepare(request)
            await out.write(body[:cut])
            await asyncio.sleep(0.05)  # the proxy reads the first piece on its own
            await out.write(body[cut:])
            await out.write_eof()
            return out

    ch = channel_factory(pki, gateway_cls=InPieces)
    status, _, body = call(ch)
    assert status == 200, body[:300]
