"""Gateway and proxy edges (issue 17, item 6): quote generation is rate-limited per client and in
all (429 beyond), every request the proxy's HTTP server refuses before its handler still gets an
audit line, and a request-target goes upstream exactly as it came (`//x` stayed `//x`)."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tdxattest.channel.gateway import GatewayConfig, QuoteRateLimit
from tdxattest.testing.testpki import TestPki
from tests.support.channel import Channel, LoopThread, start_channel


@pytest.fixture
def channel(loop: LoopThread, tmp_path: Path, pki: TestPki):
    ch = loop.run(start_channel(tmp_path, pki))
    yield ch
    loop.run(ch.stop())


def test_quote_buckets_per_client_and_for_everyone() -> None:
    limit = QuoteRateLimit(GatewayConfig(quote_rate=10, quote_burst=4, client_quote_rate=1, client_quote_burst=2))
    t = 100.0
    assert limit.take("a", t) is None and limit.take("a", t) is None
    assert limit.take("a", t) == pytest.approx(1.0)  # a's burst is spent; one token a second
    assert limit.take("b", t) is None and limit.take("b", t) is None  # b has its own bucket...
    assert limit.take("c", t) == pytest.approx(0.1)  # ...but all four of everyone's are gone
    assert limit.take("a", t + 1.0) is None  # a second later a has one again (and everyone ten)
    assert limit.take("a", t + 1.0) is not None


def test_the_client_table_is_bounded() -> None:
    limit = QuoteRateLimit(GatewayConfig(quote_rate=1e9, quote_burst=10**9), max_clients=100)
    for i in range(1000):
        assert limit.take(f"10.0.{i // 256}.{i % 256}", 1.0) is None
    assert len(limit._clients) <= 101


def _attest(ch: Channel) -> tuple[int, Any, dict]:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    url = f"{ch.gateway_url}/.well-known/tdx-attestation?nonce={'00' * 32}"
    try:
        with urllib.request.urlopen(url, context=context, timeout=10) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read())


def test_the_gateway_answers_429_beyond_the_quote_rate(loop: LoopThread, tmp_path: Path, pki: TestPki) -> None:
    from tdxattest.channel.gateway import Gateway

    ch = loop.run(start_channel(tmp_path, pki))
    try:
        # The same gateway application, with a small per-client burst.
        ch.gateway.rate_limit = QuoteRateLimit(
            GatewayConfig(quote_rate=100, quote_burst=100, client_quote_rate=0.01, client_quote_burst=2)
        )
        made = ch.gateway.quotes_made
        assert [_attest(ch)[0] for _ in range(2)] == [200, 200]
        status, headers, body = _attest(ch)
        assert status == 429 and int(headers["Retry-After"]) >= 1, (status, headers)
        assert body["error"]["code"] == "gateway.rate_limited" and "per client" in body["error"]["message"]
        assert ch.gateway.quotes_made == made + 2  # the refused request made no quote
        assert isinstance(ch.gateway, Gateway)
    finally:
        loop.run(ch.stop())


def _raw(ch: Channel, data: bytes) -> bytes:
    port = int(ch.proxy_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n",
        b"GET /v1/models%0aX-Injected:%20yes HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: p\r\nBad Header\r\n\r\n",
    ],
    ids=["bad-request-line", "connect", "encoded-newline", "bad-header"],
)
def test_a_request_the_http_server_refuses_is_audited_and_not_forwarded(channel: Channel, request_bytes: bytes) -> None:
    answer = _raw(channel, request_bytes)
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500, answer[:200]
    assert channel.standin.requests == 0
    records = channel.audit_records()
    assert len(records) == 1, records
    (record,) = records
    assert record["verdict"] == "not_forwarded" and record["status"] == status and record["connection"] is None


def test_an_oversized_body_is_audited_as_413(channel: Channel) -> None:
    body = b"x" * (32 * 1024 * 1024 + 1)
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    answer = _raw(channel, head.encode() + body)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    (record,) = channel.audit_records()
    assert (record["status"], record["path"], record["rejected"]) == (
        413,
        "/v1/chat/completions",
        "the body is over the limit",
    )
    assert channel.standin.requests == 0


def test_a_double_slash_target_goes_upstream_as_it_came(channel: Channel) -> None:
    answer = _raw(channel, b"GET //v1/models HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    assert channel.standin.paths == [("GET", "//v1/models")], channel.standin.paths  # was ////v1/models
    (record,) = channel.audit_records()
    assert record["path"] == "//v1/models" and record["verdict"] == "accepted"
