"""HTTP/1.1 client framing for the verifying proxy's attested connections.

The proxy must own its upstream connections (each is attested before it carries a request), so
it cannot use a pooled client library; it frames requests itself and parses responses with
llhttp (Node's parser, through `httptools`), which costs a few microseconds per response where a
pure-Python parser cost a few hundred -- the proxy's added latency budget is one millisecond.

One request is outstanding per connection at a time. Anything the server sends beyond the
response to it makes the connection unusable (`reusable` is False), as do parse errors and
`Connection: close`.
"""

from __future__ import annotations

import re

import httptools

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(r"/[\x21-\x7e]*")
_BAD_VALUE = re.compile(r"[\r\n\x00]")
# llhttp sets no limit on a response head; the upstream may be a man in the middle (the TLS key is
# only trusted after attestation), so a head larger than any real one is an error, not memory. The
# largest real one is a per-response quote with `x-tdx-gpu-evidence` for 8 GPUs: ~19 KB of base64
# per GPU (an H100's report and chain), ~150 KB in all.
MAX_HEAD_BYTES = 256 * 1024
MAX_HEADERS = 128


class UpstreamProtocolError(ConnectionError):
    """The upstream broke HTTP/1.1 framing; the connection is closed, never reused."""


def encode_request(method: str, target: str, host: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    """The request bytes: origin-form target, `host`, the given headers, a content-length.
    Refuses what could smuggle a second request (CR/LF in a value, a malformed name or target)."""
    if not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(target):
        raise ValueError(f"refusing to forward a malformed request line: {method[:20]!r} {target[:80]!r}")
    lines = [f"{method} {target} HTTP/1.1\r\nhost: {host}\r\n"]
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise ValueError(f"refusing to forward a malformed header: {name[:40]!r}")
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"content-length: {len(body)}\r\n\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape") + body


class ResponseReader:
    """Incremental parse of the responses on one connection (httptools callbacks)."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.broken = False
        self._error: str | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the finished response; the next one may begin."""
        self.status: int | None = None
        self.reason = b""
        self._head_bytes = 0  # complete status line and headers, as llhttp hands them over
        self._head_fed = 0  # bytes fed while the head was still incomplete
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.body: list[bytes] = []
        self.complete = False
        self.keep_alive = True
        self._framed = False  # content-length or chunked: the end is in the bytes, not at close

    # -- httptools callbacks ----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:
            self.broken = True  # a second response to one request

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD_BYTES or len(self.headers) > MAX_HEADERS:
            self._refuse_head()

    def _refuse_head(self) -> None:
        self.broken = True
        self._error = f"response head over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} headers"
        raise UpstreamProtocolError(self._error)  # llhttp wraps it; `feed` re-raises ours

    def on_status(self, status: bytes) -> None:
        self._count(len(status))
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        self.headers.append((name, value))
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(bytes(body))

    def on_message_complete(self) -> None:
        if self.status is not None and 100 <= self.status < 200:
            self.reset()  # an interim response: the real one follows
            return
        self.complete = True

    # -- feeding ----------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if not data:
            self._eof()
            return
        in_head = not self.headers_done
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.broken = True
            raise UpstreamProtocolError("the upstream switched protocols") from None
        except httptools.HttpParserError as exc:
            self.broken = True
            raise UpstreamProtocolError(self._error or f"malformed HTTP from the upstream: {exc}") from None
        # llhttp reports a header only once it ends, and httptools buffers the unfinished one: a
        # header that never ends is counted here, by the bytes fed while the head is incomplete.
        if in_head and not self.headers_done:
            self._head_fed += len(data)
            if self._head_fed > MAX_HEAD_BYTES:
                self._refuse_head()

    def _eof(self) -> None:
        self.broken = True
        if self.complete:
            return
        if self.headers_done and not self._framed and self.status not in (204, 304):
            self.complete = True  # a body delimited by the connection closing
            return
        raise ConnectionResetError(
            "the upstream closed the connection before the response ended"
            if self.headers_done
            else "the upstream closed the connection before answering"
        )

    def take_body(self) -> bytes:
        data = b"".join(self.body) if len(self.body) != 1 else self.body[0]
        self.body.clear()
        return data

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.broken and not self.body
