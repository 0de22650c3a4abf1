"""The verifying proxy: the client's OpenAI SDK talks to it on localhost, and no request byte goes
upstream over a TLS connection that has not proven, with a fresh quote, that its key lives in the
pinned TD.

Every upstream connection is attested before it carries anything: the proxy sends
`GET /.well-known/tdx-attestation?nonce=<fresh 32 bytes>` on that very TLS connection, verifies the
quote (dcap-qvl + policy + pins, `tdxattest.verify`) and checks that REPORTDATA binds the SPKI of
the certificate this connection presented, the nonce just sent and the digest of the GPU evidence
served with it (`tdxattest.binding`). The GPU evidence is then verified against the policy's `gpu`
section (`core.gpu_policy`: NVIDIA chain, SPDM signature over the nonce derived from this
connection, CC mode, VBIOS/driver pins, reference measurements). Only then are client requests sent
on it. A new connection (reconnect, another concurrent request, a server
that swapped its certificate) is a new attestation; a connection older than the re-attestation
interval is attested again before its next request. Any failure answers the client 502 with a JSON
body in the OpenAI error shape naming the failed check, and nothing goes upstream.

Upstream HTTP/1.1 is framed by `tdxattest.http1` (llhttp through httptools) over our own asyncio
TLS streams, because attestation has to be tied to one TLS connection and the usual client
libraries pool connections out of our sight.
The client side is an aiohttp server; response bodies are copied chunk by chunk (streaming
completions are not buffered).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import itertools
import json
import os
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from tdxattest.channel.binding import gpu_nonce, response_gpu_nonce, response_report_data
from tdxattest.channel.gateway import ATTESTATION_PATH, HOP_BY_HOP, forwarded_response
from tdxattest.channel.http1 import ResponseReader, UpstreamProtocolError, encode_request
from tdxattest.core.checks import Failure
from tdxattest.core.errors import InputError
from tdxattest.core.gpu_policy import EvidenceDoc, GpuVerdict, parse_evidence_doc
from tdxattest.core.policy import Verdict
from tdxattest.dcap.appraise import Appraiser, FixedCollateral

MAX_ATTESTATION_BYTES = 8 * 1024 * 1024
ATTESTATION_TIMEOUT_S = 60.0  # the whole exchange: request, quote generation in the TD, response
READ_CHUNK = 65536


class AttestationFailed(Exception):
    """The upstream did not prove itself; `failures` name each failed check."""

    def __init__(self, failures: list[Failure] | tuple[Failure, ...], context: str = "attestation"):
        self.failures = tuple(failures)
        self.context = context
        first = self.failures[0]
        super().__init__(f"{context} failed: {first.check}: expected {first.expected}, seen {first.seen}")

    @property
    def check(self) -> str:
        return self.failures[0].check


def _failure(check: str, expected: Any, seen: Any, detail: str | None = None) -> AttestationFailed:
    return AttestationFailed([Failure(check, expected, seen, detail)])


@dataclass(frozen=True)
class ProxyConfig:
    upstream: str  # https://HOST:PORT of the attested gateway
    reattest_interval_s: float = 300.0
    audit_path: str | None = None
    require_response_quotes: bool = False  # also ask for and verify a quote per response
    connect_timeout_s: float = 10.0
    # The dev stack's TDs without TDX (pins `tdx: false`): take the TEST root and collateral each
    # answer of a software-test gateway carries. `tdxattest proxy` refuses it for any other pins.
    dev_test_root: bool = False

    def __post_init__(self) -> None:
        parts = urlsplit(self.upstream)
        if "@" in parts.netloc:
            # The upstream is written into every audit line: credentials in it would be too.
            raise InputError("--upstream: https://HOST:PORT without credentials (the gateway takes none)", "user@...")
        if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise InputError("--upstream: https://HOST:PORT (the attested gateway)", repr(self.upstream))

    @property
    def host(self) -> str:
        return urlsplit(self.upstream).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.upstream).port or 443


async def appraise(appraiser: Appraiser, quote: bytes, expected_report_data: bytes) -> Verdict:
    """The appraisal, off the event loop (a collateral fetch is blocking HTTP, a verification a few ms
    of CPU), so the proxy serves its other connections meanwhile. Raises AttestationFailed."""
    return (await appraise_with_pin_set(appraiser, quote, expected_report_data))[0]


async def appraise_with_pin_set(appraiser: Appraiser, quote: bytes, expected_report_data: bytes) -> tuple[Verdict, int]:
    """`appraise`, and which of the appraiser's pin sets accepted (0 the current, i > 0 a retiring one)."""
    try:
        appraisal = await asyncio.get_running_loop().run_in_executor(
            None, appraiser.appraise, quote, int(time.time()), expected_report_data
        )
    except InputError as exc:
        raise _failure("quote.malformed", "a TDX quote v4/v5", exc.seen) from None
    if not appraisal.verdict.accepted:
        raise AttestationFailed(appraisal.verdict.failures)
    return appraisal.verdict, appraisal.pin_set


def held_to(appraiser: Appraiser, pin_set: int) -> Appraiser:
    """The appraiser with only the pin set that accepted a connection: its response quotes, and its
    GPU evidence, are held to that set alone, never to a mix of a rollover's old and new pins."""
    if not appraiser.retiring:
        return appraiser
    policy = appraiser.policy if pin_set == 0 else appraiser.retiring[pin_set - 1]
    return replace(appraiser, policy=policy, retiring=())


def read_gpu_evidence(value: Any) -> EvidenceDoc | None:
    """The served GPU evidence (None when the upstream served none). Raises AttestationFailed."""
    if value is None:
        return None
    try:
        return parse_evidence_doc(value)
    except InputError as exc:
        raise _failure("gpu.evidence_malformed", exc.expected, exc.seen) from None


async def appraise_gpus(appraiser: Appraiser, doc: EvidenceDoc | None, nonce: bytes) -> GpuVerdict:
    """The GPU policy over `doc` (a few ms of ECDSA per GPU), off the event loop. Raises
    AttestationFailed naming the first failed GPU check."""
    try:
        verdict = await asyncio.get_running_loop().run_in_executor(
            None, appraiser.appraise_gpus, doc, nonce, time.time()
        )
    except Exception as exc:  # e.g. a cache write failing: a named refusal, never a 500
        raise _failure("gpu.verifier_error", "a GPU verdict", f"{type(exc).__name__}: {exc}"[:200]) from None
    if not verdict.accepted:
        raise AttestationFailed(verdict.failures)
    return verdict


@functools.lru_cache(maxsize=1)
def _upstream_tls() -> ssl.SSLContext:
    """One client context for every upstream connection (building one costs ~0.6 ms). Trust comes
    from the quote bound to each connection's key, not from a CA or a hostname."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@dataclass
class Attestation:
    quote_sha256: str
    tls_spki_sha256: str
    tcb_status: str | None
    at: float  # time.monotonic() when verified: the re-attestation clock ignores wall-clock jumps
    appraiser: Appraiser  # what accepted it (with the dev TEST root, its own): response quotes use it too
    gpu: dict[str, Any] | None = None  # the GPU verdict's summary (None: no GPU evidence, none required)
    checks: dict[str, str] = field(default_factory=dict)  # check name -> pass | not_checked (the audit line)
    quote_source: str | None = None  # what the gateway said signs its quotes (tsm, software-test-pki)
    pin_set: str = "current"  # during a pin rollover: "retiring" when the pins being replaced accepted it


_conn_ids = itertools.count(1)


class UpstreamConnection:
    """One TLS connection to the gateway, attested before use, one request at a time."""

    def __init__(self, config: ProxyConfig, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.id = next(_conn_ids)
        self.config = config
        self.reader, self.writer = reader, writer
        self.http = ResponseReader()
        self._host = f"{config.host}:{config.port}"
        ssl_object = writer.get_extra_info("ssl_object")
        self.cert_der: bytes = ssl_object.getpeercert(binary_form=True) if ssl_object else b""
        self.attestation: Attestation | None = None
        self.closed = False
        self.reused = False  # handed out from the idle pool (kept alive since an earlier request)

    @classmethod
    async def open(cls, config: ProxyConfig) -> UpstreamConnection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(config.host, config.port, ssl=_upstream_tls(), server_hostname=config.host),
                config.connect_timeout_s,
            )
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            raise _failure(
                "upstream.unreachable",
                f"a TLS connection to {config.upstream}",
                str(exc) or type(exc).__name__,
                "is the gateway running and reachable from here?",
            ) from None
        return cls(config, reader, writer)

    @property
    def spki(self) -> bytes:
        from tdxattest.channel.binding import spki_der

        return spki_der(self.cert_der)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()

    def recycle(self) -> bool:
        """Ready the connection for its next request; False (and closed) when it cannot carry one."""
        if self.closed or not self.http.reusable:
            self.close()
            return False
        self.http.reset()
        return True

    # -- HTTP/1.1 -------------------------------------------------------------------------------
    async def send(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("the upstream connection is closed")
        self.writer.write(encode_request(method, target, self._host, headers, body))
        await self.writer.drain()

    async def _fill(self) -> None:
        self.http.feed(await self.reader.read(READ_CHUNK))

    async def response(self) -> ResponseReader:
        """Wait for the response head; returns the parser holding status, reason and headers."""
        while not self.http.headers_done:
            await self._fill()
        return self.http

    async def body_parts(self, before_first_wait=None) -> AsyncIterator[tuple[bytes, bool]]:
        """The body as (bytes, ended) pairs, for forwarding: each pair joins every body byte that
        had been received when it was made (one write downstream instead of one per HTTP chunk),
        `ended` is True on the last one (the message ended with it; its bytes may be empty). Bytes
        are never held back to wait for more. `before_first_wait` is awaited once, before the
        first wait on the network if nothing has been yielded by then."""
        while True:
            data = self.http.take_body()
            if self.http.complete:
                yield data, True
                return
            if data:
                yield data, False
                before_first_wait = None
            elif before_first_wait is not None:
                await before_first_wait()
                before_first_wait = None
            await self._fill()

    async def read_body(self, limit: int) -> bytes:
        parts, size = [], 0
        async for chunk, _ended in self.body_parts():
            size += len(chunk)
            if size > limit:
                raise ValueError(f"more than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    # -- attestation ----------------------------------------------------------------------------
    async def attest(self, appraiser: Appraiser) -> Attestation:
        """Prove this connection: fresh nonce, quote bound to this connection's TLS key."""
        from tdxattest.channel.binding import expected_report_data

        nonce = os.urandom(32)

        async def exchange():
            await self.send("GET", f"{ATTESTATION_PATH}?nonce={nonce.hex()}", [("accept", "application/json")], b"")
            head = await self.response()
            return head, await self.read_body(MAX_ATTESTATION_BYTES)

        try:
            head, raw = await asyncio.wait_for(exchange(), ATTESTATION_TIMEOUT_S)
        except TimeoutError:
            self.close()
            raise _failure(
                "attestation.unavailable",
                f"an attestation response within {ATTESTATION_TIMEOUT_S:.0f} s",
                "no complete answer",
            ) from None
        except (OSError, UpstreamProtocolError, ValueError, asyncio.IncompleteReadError) as exc:
            self.close()
            raise _failure(
                "attestation.unavailable", "an attestation response from the gateway", str(exc) or type(exc).__name__
            ) from None
        if head.status != 200:
            self.close()
            raise _upstream_refusal(head.status, raw)
        try:
            doc = json.loads(raw)
            quote = base64.b64decode(doc["quote"], validate=True)
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            self.close()
            raise _failure(
                "attestation.malformed", "JSON with a base64 `quote`", " ".join(str(exc).split())[:160]
            ) from None
        try:
            spki = self.spki
        except ValueError as exc:  # includes cryptography's UnsupportedAlgorithm
            self.close()
            raise _failure(
                "attestation.malformed", "a TLS certificate with a public key we can read", str(exc)[:160]
            ) from None
        if self.config.dev_test_root:
            try:
                appraiser = dev_test_appraiser(appraiser, doc.get("test_pki"))
            except AttestationFailed:
                self.close()
                raise
        try:
            gpu = read_gpu_evidence(doc.get("gpu_evidence"))
            digest = gpu.digest() if gpu is not None else None
            verdict, pin_set = await appraise_with_pin_set(
                appraiser, quote, expected_report_data(spki, nonce, gpu_digest=digest)
            )
            appraiser = held_to(appraiser, pin_set)
            gpu_verdict = await appraise_gpus(appraiser, gpu, gpu_nonce(hashlib.sha256(spki).digest(), nonce))
        except BaseException:  # refused, or anything unforeseen: this connection carries nothing
            self.close()
            raise
        if not self.recycle():
            # Verified, but the gateway closed (or broke) this very connection: a request may only
            # go over the connection the quote was bound to, so there is nothing to use.
            raise _failure(
                "attestation.unavailable",
                "the attested connection kept open for requests",
                "the gateway closed it after answering (shutting down?)",
            )
        self.attestation = Attestation(
            hashlib.sha256(quote).hexdigest(),
            hashlib.sha256(spki).hexdigest(),
            verdict.tcb_status,
            time.monotonic(),
            appraiser,
            gpu=gpu_verdict.summary() if gpu is not None else None,
            checks={c.check: c.outcome for c in (*verdict.checks, *gpu_verdict.checks)},
            quote_source=doc.get("quote_source") if isinstance(doc.get("quote_source"), str) else None,
            pin_set="current" if pin_set == 0 else "retiring",
        )
        return self.attestation


def dev_test_appraiser(appraiser: Appraiser, value: Any) -> Appraiser:
    """`appraiser` trusting the TEST root a software-test gateway served with this very answer, and
    verifying with the collateral it came with. Such quotes prove nothing (anyone can make that
    PKI); the pins still hold (RTMR3, REPORTDATA bound to this connection), which is what a dev
    stack without TDX can show. Only ever used for pins that say `tdx: false`."""
    from tdxattest.dcap.collateral import CollateralError, collateral_from_json_text

    try:
        root = base64.b64decode(value["root_ca"], validate=True)
        collateral = collateral_from_json_text(value["collateral"], "the dev gateway's TEST PKI")
    except (TypeError, KeyError, ValueError, InputError, CollateralError) as exc:
        raise _failure(
            "attestation.test_pki",
            "the TEST root and collateral a software-test gateway serves (`test_pki`), as --accept-dev-test-root needs",
            " ".join(str(exc).split())[:160] or "none",
            "the upstream is not the dev stack's TD without TDX: drop --accept-dev-test-root",
        ) from None
    return replace(appraiser, collateral=FixedCollateral(collateral), root_ca_der=root)


def _upstream_refusal(status: int, raw: bytes) -> AttestationFailed:
    """The gateway answered the attestation request with an error: name its check when it gave one."""
    seen = f"HTTP {status}"
    try:
        err = json.loads(raw)["error"]
        if isinstance(err, dict):
            return _failure(
                "attestation.unavailable",
                "a quote from the gateway",
                f"{seen}: {err.get('code')}: {err.get('message')}",
            )
    except (ValueError, KeyError, TypeError):
        pass
    return _failure("attestation.unavailable", "a quote from the gateway", f"{seen}: {raw[:160]!r}")


class ConnectionPool:
    """Attested upstream connections. A connection is handed out only when attested, and no older
    than the re-attestation interval."""

    def __init__(self, config: ProxyConfig, appraiser: Appraiser):
        self.config = config
        self.appraiser = appraiser
        self._idle: list[UpstreamConnection] = []
        self.attestations = 0

    async def acquire(self) -> UpstreamConnection:
        while self._idle:
            conn = self._idle.pop()
            if conn.closed or conn.reader.at_eof():
                conn.close()
                continue
            assert conn.attestation is not None
            # Kept alive since its last request: a failure before the next answer means the server
            # closed it while idle, so that request may be retried. Not after a re-attestation: the
            # connection has just carried an exchange, and a failure is then as ambiguous as on a new one.
            conn.reused = time.monotonic() - conn.attestation.at < self.config.reattest_interval_s
            if not conn.reused:
                await self._attest(conn)
            return conn
        conn = await UpstreamConnection.open(self.config)
        await self._attest(conn)
        return conn

    async def _attest(self, conn: UpstreamConnection) -> None:
        await conn.attest(self.appraiser)
        self.attestations += 1

    def release(self, conn: UpstreamConnection) -> None:
        if conn.recycle():
            self._idle.append(conn)

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


class AuditLog:
    """One JSON line per request: id, time, upstream connection, quote hash, verdict, status."""

    def __init__(self, path: str | None):
        self._fh = None
        if path:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._fh = os.fdopen(fd, "a", buffering=1, encoding="utf-8")

    def write(self, record: dict) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def _rfc3339_ms(ts: float) -> str:
    # time.strftime is several times cheaper than datetime.isoformat, and this runs per request.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def _error_response(
    status: int, failure: AttestationFailed | None, message: str, request_id: str, code: str = "upstream.error"
):
    from aiohttp import web

    error: dict[str, Any] = {
        "message": message,
        "type": "attestation_failed" if failure else "upstream_error",
        "code": failure.check if failure else code,
        "request_id": request_id,
    }
    if failure:
        error["failures"] = [f.as_dict() for f in failure.failures]
    return web.json_response({"error": error}, status=status)


@dataclass
class _Exchange:
    request_id: str
    started: float
    record: dict = field(default_factory=dict)


class VerifyingProxy:
    """The aiohttp application and its upstream pool; every upstream is appraised by `appraiser` (the
    policy with the stack's pins, and where collateral comes from)."""

    def __init__(self, config: ProxyConfig, appraiser: Appraiser):
        self.config = config
        self.appraiser = appraiser
        self.pool = ConnectionPool(config, self.appraiser)
        self.audit = AuditLog(config.audit_path)

    def _audit(
        self,
        ex: _Exchange,
        request,
        conn: UpstreamConnection | None,
        verdict: str,
        status: int,
        failure: AttestationFailed | None = None,
    ) -> None:
        att = conn.attestation if conn else None
        record = {
            "request_id": ex.request_id,
            "time": _rfc3339_ms(ex.started),
            "method": request.method,
            "path": request.path,
            "upstream": self.config.upstream,
            "connection": conn.id if conn else None,
            "quote_sha256": att.quote_sha256 if att else None,
            "tls_spki_sha256": att.tls_spki_sha256 if att else None,
            "tcb_status": att.tcb_status if att else None,
            "quote_source": att.quote_source if att else None,
            "pin_set": att.pin_set if att else None,
            "checks": att.checks if att else None,
            "gpu": att.gpu if att else None,
            "verdict": verdict,
            "status": status,
            "answered_ms": round((time.time() - ex.started) * 1000, 3),
        }
        if failure:
            record["failures"] = [f.as_dict() for f in failure.failures]
        record.update(ex.record)
        request[_audited_key()] = True
        self.audit.write(record)

    def audit_rejected(self, request: Any, status: int) -> None:
        """The audit line of a request answered before `handle` wrote one: aiohttp refused it itself
        (a request line or header it cannot parse, a CONNECT target, `%0a` in the path), or the body
        was over the limit. Nothing of it went upstream."""
        parsed = request.method != "UNKNOWN"  # aiohttp's placeholder for a request it could not parse
        self.audit.write(
            {
                "request_id": uuid.uuid4().hex,
                "time": _rfc3339_ms(time.time()),
                "method": request.method if parsed else None,
                "path": request.raw_path if parsed else None,
                "upstream": self.config.upstream,
                "connection": None,
                "verdict": "not_forwarded",
                "status": status,
                "rejected": "the body is over the limit" if status == 413 else "the HTTP server refused the request",
            }
        )

    def runner_options(self) -> dict[str, Any]:
        """What the aiohttp AppRunner serving `app()` needs so that every request is audited, also
        those aiohttp answers before any handler runs (the CLI and the tests pass these)."""
        return {"access_log": self, "access_log_class": _rejected_request_audit()}

    async def handle(self, request):
        ex = _Exchange(uuid.uuid4().hex, time.time())
        body = await request.read()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        if self.config.require_response_quotes:
            headers = [(k, v) for k, v in headers if k.lower() != "x-attestation"] + [("x-attestation", "required")]
        if request.method in ("HEAD", "CONNECT"):
            # A HEAD response announces a body it does not carry; the OpenAI API has no use for either.
            self._audit(ex, request, None, "not_forwarded", 405)
            return _error_response(
                405, None, f"{request.method} is not forwarded", ex.request_id, "request.method_not_forwarded"
            )
        for attempt in (1, 2):
            try:
                conn = await self.pool.acquire()
            except AttestationFailed as exc:
                self._audit(ex, request, None, "refused", 502, exc)
                return _error_response(502, exc, f"upstream refused: {exc}", ex.request_id)
            try:
                # The request-target exactly as received: aiohttp's path_qs turns `//x` into `////x`.
                await conn.send(request.method, request.raw_path, headers, body)
                head = await conn.response()
                break
            except ValueError as exc:  # nothing was sent: the request itself cannot be framed safely
                conn.close()
                self._audit(ex, request, conn, "not_forwarded", 400)
                return _error_response(400, None, str(exc), ex.request_id, "request.malformed")
            except (OSError, UpstreamProtocolError) as exc:
                # Only a kept-alive connection that the server closed while idle is retried (once, on
                # a freshly attested connection): a fresh connection failing means the request may
                # have been processed, and a completion must not run twice.
                conn.close()
                if attempt == 2 or not conn.reused:
                    self._audit(ex, request, conn, "error", 502)
                    return _error_response(502, None, f"upstream connection failed: {exc}", ex.request_id)
        response_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers]
        if self.config.require_response_quotes:
            try:
                assert conn.attestation is not None  # the pool hands out attested connections only
                ex.record["response_quote_sha256"] = await self._check_response_quote(
                    conn.attestation.appraiser, response_headers, body
                )
            except AttestationFailed as exc:
                conn.close()  # the body is not read, so the connection cannot be reused
                self._audit(ex, request, conn, "refused", 502, exc)
                return _error_response(502, exc, f"response refused: {exc}", ex.request_id)
        # Logged once the upstream has answered and before the client sees any of it.
        self._audit(ex, request, conn, "accepted", head.status)
        out = forwarded_response(status=head.status, reason=head.reason.decode("latin-1") or None)
        for k, v in response_headers:
            if k.lower() not in HOP_BY_HOP:
                out.headers.add(k, v)
        length = next((v for k, v in response_headers if k.lower() == "content-length"), None)
        if length is not None and length.isdigit():
            out.content_length = int(length)
        tail = b""

        async def send_headers() -> None:
            await out.write(b"")  # the headers alone: the body is not here yet

        try:
            # The headers go out with the first body bytes when those came with them (one write
            # to the client, not two), and alone before any wait for the upstream: never later.
            await out.prepare(request)
            async for data, ended in conn.body_parts(send_headers):
                if ended:
                    tail = data
                else:
                    await out.write(data)
        except (OSError, UpstreamProtocolError, asyncio.CancelledError):
            conn.close()  # mid-body: it cannot be reused; the client sees the connection drop
            self.audit.write({"request_id": ex.request_id, "note": "response cut before its end"})
            raise
        self.pool.release(conn)
        await out.write_eof(tail)  # the last bytes and the end of the message in one write
        return out

    async def _check_response_quote(self, appraiser: Appraiser, headers: list[tuple[str, str]], body: bytes) -> str:
        values = {k.lower(): v for k, v in headers}
        quote_b64, response_id = values.get("x-tdx-quote"), values.get("x-tdx-response-id")
        if not quote_b64 or not response_id:
            raise _failure(
                "response.quote_missing",
                "x-tdx-quote and x-tdx-response-id headers",
                "absent",
                "the gateway did not attest this response",
            )
        try:
            quote = base64.b64decode(quote_b64, validate=True)
            body_sha256 = hashlib.sha256(body).digest()
            gpu_nonce_expected = response_gpu_nonce(body_sha256, response_id)
        except (ValueError, InputError) as exc:
            raise _failure(
                "response.quote_malformed", "a base64 quote and an ASCII response id", " ".join(str(exc).split())[:160]
            ) from None
        gpu_b64 = values.get("x-tdx-gpu-evidence")
        gpu_value = None
        if gpu_b64 is not None:
            try:
                gpu_value = json.loads(base64.b64decode(gpu_b64, validate=True))
            except (ValueError, RecursionError) as exc:
                raise _failure(
                    "gpu.evidence_malformed", "x-tdx-gpu-evidence as base64 JSON", " ".join(str(exc).split())[:160]
                ) from None
        gpu = read_gpu_evidence(gpu_value)
        expected = response_report_data(body_sha256, response_id, gpu.digest() if gpu is not None else None)
        await appraise(appraiser, quote, expected)
        await appraise_gpus(appraiser, gpu, gpu_nonce_expected)
        return hashlib.sha256(quote).hexdigest()

    def app(self):
        from aiohttp import web

        async def lifecycle(app):
            yield
            self.pool.close()
            self.audit.close()

        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.cleanup_ctx.append(lifecycle)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


def _audited_key() -> Any:
    from tdxattest.channel.request_keys import AUDITED

    return AUDITED


def _rejected_request_audit() -> type:
    """An aiohttp access logger: aiohttp calls it for every response it sends, those it made itself
    included; the ones the proxy's handler did not audit get their line here."""
    from aiohttp.abc import AbstractAccessLogger

    class RejectedRequestAudit(AbstractAccessLogger):
        def log(self, request: Any, response: Any, time: float) -> None:
            if not request.get(_audited_key()):
                proxy: VerifyingProxy = self.logger  # type: ignore[assignment]  # runner_options passes it
                proxy.audit_rejected(request, response.status)

    return RejectedRequestAudit


def check_listen(host: str, tls: bool = False) -> None:
    """Without TLS the proxy speaks plain HTTP to its client: refuse to listen beyond loopback."""
    import ipaddress

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not tls:
        raise InputError(
            "--listen on a loopback address (127.0.0.1, ::1, localhost), or --tls-cert and --tls-key for any "
            "other: prompts would cross it in plain text",
            host,
        )


def client_tls_context(cert_path: str, key_path: str) -> ssl.SSLContext:
    """The TLS the proxy serves its clients with (TLS 1.2 or later), from a PEM certificate chain and
    its key. InputError names the files when they do not load."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(
            "a PEM certificate chain (--tls-cert) and its private key (--tls-key)",
            " ".join(str(exc).split())[:160],
            file=f"{cert_path}, {key_path}",
        ) from None
    return ctx
