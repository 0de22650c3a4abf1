"""The proxy's HTTP/1.1 framing: what it sends and how it reads responses (tdxattest.http1)."""

from __future__ import annotations

import pytest

from tdxattest.channel.http1 import MAX_HEAD_BYTES, ResponseReader, UpstreamProtocolError, encode_request


def test_request_bytes() -> None:
    raw = encode_request("POST", "/v1/chat/completions?x=1", "td:8443", [("authorization", "Bearer k")], b"{}")
    assert raw == (
        b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: td:8443\r\nauthorization: Bearer k\r\n"
        b"content-length: 2\r\n\r\n{}"
    )


@pytest.mark.parametrize(
    "method, target, headers",
    [
        ("GET", "/a b", []),
        ("GET", "http://x/", []),
        ("G ET", "/", []),
        ("GET", "/", [("x", "a\r\nGET /smuggled HTTP/1.1")]),
        ("GET", "/", [("bad name", "v")]),
        ("GET", "/", [("x", "a\x00")]),
    ],
)
def test_request_smuggling_is_refused(method: str, target: str, headers: list) -> None:
    with pytest.raises(ValueError, match="malformed"):
        encode_request(method, target, "h", headers, b"")


def feed_all(reader: ResponseReader, data: bytes, step: int) -> None:
    for i in range(0, len(data), step):
        reader.feed(data[i : i + step])


@pytest.mark.parametrize("step", [1, 7, 10_000])
def test_chunked_response_in_any_split(step: int) -> None:
    r = ResponseReader()
    feed_all(
        r,
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        step,
    )
    assert r.status == 200 and r.reason == b"OK" and (b"content-type", b"text/event-stream") in r.headers
    assert r.take_body() == b"hello world" and r.complete and r.reusable
    r.reset()
    r.feed(b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\nno")
    assert r.status == 404 and r.take_body() == b"no" and r.reusable


def test_interim_response_is_skipped() -> None:
    r = ResponseReader()
    r.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx")
    assert r.status == 200 and r.take_body() == b"x" and r.complete


def test_close_delimited_body_ends_at_eof_and_is_not_reused() -> None:
    r = ResponseReader()
    r.feed(b"HTTP/1.1 200 OK\r\n\r\npartial")
    assert not r.complete
    r.feed(b"")
    assert r.complete and r.take_body() == b"partial" and not r.reusable


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "before answering"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nabc", "before the response ended"),
    ],
)
def test_early_close_is_an_error(data: bytes, message: str) -> None:
    r = ResponseReader()
    if data:
        r.feed(data)
    with pytest.raises(ConnectionResetError, match=message):
        r.feed(b"")


def test_garbage_and_extra_responses_make_the_connection_unusable() -> None:
    r = ResponseReader()
    with pytest.raises(UpstreamProtocolError, match="malformed HTTP"):
        r.feed(b"SSH-2.0-OpenSSH\r\n\r\n")
    r = ResponseReader()
    r.feed(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    assert not r.reusable
    r = ResponseReader()
    r.feed(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    assert r.complete and not r.reusable


def test_an_oversized_response_head_is_refused() -> None:
    # Before attestation the peer may be anyone on the path: no unbounded memory for its headers.
    r = ResponseReader()
    with pytest.raises(UpstreamProtocolError, match="response head over"):
        r.feed(b"HTTP/1.1 200 OK\r\nx-a: " + b"a" * (MAX_HEAD_BYTES + 1) + b"\r\n\r\n")
    r = ResponseReader()
    with pytest.raises(UpstreamProtocolError, match="response head over"):
        r.feed(b"HTTP/1.1 200 OK\r\n" + b"x: y\r\n" * 200)
    assert not r.reusable


def test_a_header_that_never_ends_is_refused() -> None:
    # llhttp only reports a header once it ends: fed in pieces, an endless value must still stop.
    r = ResponseReader()
    r.feed(b"HTTP/1.1 200 OK\r\nx-a: ")
    with pytest.raises(UpstreamProtocolError, match="response head over"):
        for _ in range(MAX_HEAD_BYTES // 4096 + 1):
            r.feed(b"a" * 4096)
    assert not r.reusable
    # a large body after a small head is not a head
    r = ResponseReader()
    for piece in (b"HTTP/1.1 200 OK\r\ncontent-length: 200000\r\n\r\n", *[b"b" * 50_000] * 4):
        r.feed(piece)
    assert r.complete and sum(map(len, r.body)) == 200_000
