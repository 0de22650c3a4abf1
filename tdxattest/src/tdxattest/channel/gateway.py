"""The attested gateway: runs inside the TD in front of vLLM and proves itself on request.

    GET /.well-known/tdx-attestation?nonce=HEX
        -> {"quote": base64, "nonce", "tls_spki_sha256", "quote_source", "event_log", "gpu_evidence"}
           the quote's REPORTDATA = SHA-512(tag || SHA-256(this TLS key's SPKI) || nonce)
           (tdxattest.binding), so a client that checks it knows the TLS key it is talking to was
           made inside the TD that the quote describes. In a TD with GPUs, `gpu_evidence` is fresh:
           every GPU's SPDM report over binding.gpu_nonce(key, nonce), and REPORTDATA binds its
           digest too (core.gpu_policy).
    anything else -> forwarded to vLLM on loopback, streamed through unbuffered.
        With `x-attestation: required` the response also carries `x-tdx-quote`, a quote over
        SHA-512(tag || SHA-256(request body) || x-tdx-response-id) (with GPUs, also
        `x-tdx-gpu-evidence`, fresh evidence for that response, and its digest in the quote); when
        no quote or evidence can be made the call is refused (503) and never reaches vLLM.

The TLS key is generated at start, in TD memory, and never written anywhere but a private
temporary directory that is removed as soon as the TLS context has loaded it: a restart is a new
key, which clients notice and re-attest.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import hashlib
import json
import os
import secrets
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdxattest.channel.binding import (
    MAX_NONCE,
    MIN_NONCE,
    expected_report_data,
    gpu_nonce,
    response_gpu_nonce,
    response_report_data,
    spki_der,
)
from tdxattest.channel.quote_source import QuoteSource, QuoteUnavailable
from tdxattest.core.errors import InputError
from tdxattest.core.gpu_evidence import GpuEvidenceError, device_identity
from tdxattest.core.gpu_policy import EvidenceDoc, parse_evidence_doc

if TYPE_CHECKING:  # aiohttp is imported where it is used (CLI start-up time)
    from aiohttp import ClientSession, web

ATTESTATION_PATH = "/.well-known/tdx-attestation"
# Collections queued behind the one running: a client opening 64 connections at once waits; a flood
# gets 503 gateway.busy.
MAX_GPU_WAITING = 128
CCEL_DATA = "/sys/firmware/acpi/tables/data/CCEL"
# RFC 7230 §6.1 hop-by-hop headers, plus those aiohttp recomputes for the next hop.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


@dataclass(frozen=True)
class GatewayConfig:
    upstream: str = "http://127.0.0.1:8000"  # vLLM, loopback inside the TD
    host: str = "0.0.0.0"
    port: int = 8443
    event_log: str | None = CCEL_DATA  # served as is when readable
    gpu_evidence: str | None = None  # JSON written by the guest agent after it verified the GPUs
    # The GPU evidence collector, `{nonce}` replaced by 64 hex digits (the agent's: python3 -m
    # guest_agent.nvml --nonce {nonce}); required when the agent verified GPUs.
    gpu_collect: tuple[str, ...] = ()
    gpu_collect_timeout_s: float = 45.0  # under the proxy's 60 s for the whole attestation exchange
    max_body_bytes: int = 32 * 1024 * 1024
    # Quotes a second (and the burst above it), all clients together and per client address: each
    # quote takes the host's quote service (and, with GPUs, an SPDM exchange), and an attestation
    # request needs no credentials. A verifying proxy attests once per connection (and per response
    # with response quotes), so one proxy with 64 streams asks for 64 at once.
    quote_rate: float = 50.0
    quote_burst: int = 200
    client_quote_rate: float = 20.0
    client_quote_burst: int = 100


class QuoteRateLimit:
    """Token buckets for quote generation: one for everyone, one per client address (at most
    `max_clients` tracked; the fullest are forgotten first, since they are the ones not waiting)."""

    def __init__(self, config: GatewayConfig, max_clients: int = 4096):
        self.rate, self.burst = config.quote_rate, float(config.quote_burst)
        self.client_rate, self.client_burst = config.client_quote_rate, float(config.client_quote_burst)
        self.max_clients = max_clients
        self._all = (self.burst, 0.0)
        self._clients: dict[str, tuple[float, float]] = {}

    @staticmethod
    def _refill(bucket: tuple[float, float], rate: float, burst: float, now: float) -> float:
        tokens, last = bucket
        return min(burst, tokens + (now - last) * rate) if last else burst

    def take(self, client: str, now: float) -> float | None:
        """None when a quote may be made now (one token taken from both buckets), else the seconds
        until one may."""
        everyone = self._refill(self._all, self.rate, self.burst, now)
        mine = self._refill(
            self._clients.get(client, (self.client_burst, 0.0)), self.client_rate, self.client_burst, now
        )
        if everyone < 1 or mine < 1:
            self._all = (everyone, now)
            self._clients[client] = (mine, now)
            wait_all = (1 - everyone) / self.rate if everyone < 1 else 0.0
            wait_mine = (1 - mine) / self.client_rate if mine < 1 else 0.0
            return max(wait_all, wait_mine)
        self._all = (everyone - 1, now)
        self._clients[client] = (mine - 1, now)
        if len(self._clients) > self.max_clients:
            for key, _ in sorted(self._clients.items(), key=lambda kv: -kv[1][0])[: len(self._clients) // 4]:
                del self._clients[key]
        return None


@dataclass(frozen=True)
class TlsIdentity:
    cert_der: bytes
    spki: bytes
    context: ssl.SSLContext

    @functools.cached_property
    def spki_sha256(self) -> str:
        return hashlib.sha256(self.spki).hexdigest()


def make_tls_identity(common_name: str = "tdx-vllm attested gateway") -> TlsIdentity:
    """A fresh P-256 key and self-signed certificate; trust comes from the quote, not from a CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # ssl can only load a key from a file: write it to a private directory for the moment it takes.
    with tempfile.TemporaryDirectory(
        prefix="tdxattest-gw-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    ) as d:
        cert_path, key_path = Path(d, "cert.pem"), Path(d, "key.pem")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        ctx.load_cert_chain(cert_path, key_path)
    return TlsIdentity(cert.public_bytes(serialization.Encoding.DER), spki_der(cert), ctx)


def _read_optional(path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def _rate_limited(request: Any, limit: QuoteRateLimit) -> Any:
    """A 429 when the client (or everyone together) asks for quotes faster than the limits, else None."""
    import math
    import time

    wait = limit.take(request.remote or "unknown", time.monotonic())
    if wait is None:
        return None
    response = _error(
        429,
        "gateway.rate_limited",
        f"quotes are limited to {limit.client_rate:g}/s per client (burst {limit.client_burst:g}) and "
        f"{limit.rate:g}/s in all (burst {limit.burst:g}); retry after {wait:.2f} s",
    )
    response.headers["retry-after"] = str(max(1, math.ceil(wait)))
    return response


def _error(status: int, check: str, message: str, **extra: Any):
    from aiohttp import web

    body = {"error": {"message": message, "type": "attestation_error", "code": check, **extra}}
    return web.json_response(body, status=status)


_response_class = None


def forwarded_response(**kw):
    """An aiohttp StreamResponse whose headers wait in its writer for the first body bytes (or
    the end), so both go out in one write (one wake-up of the reader instead of two); the caller
    decides when to send them alone. Used by the gateway and the proxy."""
    global _response_class
    if _response_class is None:
        from aiohttp import web

        class ForwardedResponse(web.StreamResponse):
            _send_headers_immediately = False  # as aiohttp's own web.Response does

        _response_class = ForwardedResponse
    return _response_class(**kw)


class Gateway:
    """The aiohttp application; `serve()` runs it with the TD's TLS identity."""

    def __init__(self, config: GatewayConfig, source: QuoteSource, tls: TlsIdentity | None = None):
        self.config = config
        self.source = source
        self.tls = tls or make_tls_identity()
        # A software-test source's TEST root and collateral travel with each answer (`test_pki`);
        # a hardware source has none, and its answers never carry the key.
        test_pki = getattr(source, "test_pki", None)
        self.test_pki: dict[str, Any] = {"test_pki": test_pki()} if callable(test_pki) else {}
        # Written before the gateway starts and never changed: encoded once, not per attestation.
        event_log = _read_optional(config.event_log)
        self.event_log_b64 = base64.b64encode(event_log).decode() if event_log else None
        evidence = _read_optional(config.gpu_evidence)
        boot = json.loads(evidence) if evidence else None
        # The devices the agent verified at boot: fresh evidence must come from exactly these.
        try:
            self.boot_devices = sorted(device_identity(g["certificate"]) for g in (boot or {}).get("gpus") or ())
        except (GpuEvidenceError, KeyError, TypeError) as exc:
            raise InputError(
                "the verified GPUs' certificate chains", str(exc)[:160], file=config.gpu_evidence
            ) from None
        if self.boot_devices and not config.gpu_collect:
            raise InputError(
                "a GPU evidence collector (--gpu-collect) for the GPUs the guest agent verified",
                f"{len(self.boot_devices)} GPU(s) in {config.gpu_evidence} and no collector",
            )
        self.rate_limit = QuoteRateLimit(config)
        self._gpu_lock = asyncio.Lock()
        self._gpu_waiting = 0
        self._session: ClientSession | None = None
        self.quotes_made = 0
        self.gpu_collections = 0

    async def _quote(self, report_data: bytes) -> bytes:
        # configfs-tsm blocks while the host's quote service works: keep it off the event loop.
        quote = await asyncio.get_running_loop().run_in_executor(None, self.source.quote, report_data)
        self.quotes_made += 1
        return quote

    async def _gpu_evidence(self, nonce: bytes) -> EvidenceDoc | None:
        """Fresh evidence from every GPU over `nonce` (None in a TD without GPUs). Raises
        QuoteUnavailable naming what failed: no answer is better than an unbound one."""
        if not self.config.gpu_collect:
            return None
        if self._gpu_waiting >= MAX_GPU_WAITING:
            # Attestation requests need no credentials: a flood must not queue SPDM exchanges
            # (each takes the GPUs' time) behind which every real client would wait.
            raise QuoteUnavailable(
                f"at most {MAX_GPU_WAITING} GPU evidence collections waiting",
                "more",
                "retry shortly",
                check="gateway.busy",
            )
        self._gpu_waiting += 1
        try:
            async with self._gpu_lock:  # one SPDM exchange with the GPUs at a time
                out = await self._run_collector([a.replace("{nonce}", nonce.hex()) for a in self.config.gpu_collect])
        finally:
            self._gpu_waiting -= 1
        self.gpu_collections += 1
        try:
            raw = json.loads(out)
            doc = parse_evidence_doc(
                {"version": 2, "nonce": nonce.hex(), "cc": raw.get("cc"), "gpus": raw.get("evidences")},
                "the collector's output",
            )
            devices = sorted(device_identity(g.chain_pem) for g in doc.gpus)
        except (ValueError, AttributeError, RecursionError, InputError, GpuEvidenceError) as exc:
            raise QuoteUnavailable(
                "the collector's evidence JSON (guest_agent.nvml's shape)",
                " ".join(str(exc).split())[:200],
                "check the collector",
                check="gateway.gpu_evidence_unavailable",
            ) from None
        if self.boot_devices and devices != self.boot_devices:
            raise QuoteUnavailable(
                f"evidence from the {len(self.boot_devices)} GPU(s) the guest agent verified at boot",
                f"{len(doc.gpus)} report(s) from another set of devices",
                "restart the TD: its GPUs changed since it attested them",
                check="gateway.gpu_changed",
            )
        return doc

    async def _run_collector(self, argv: list[str]) -> bytes:
        """The collector's stdout; the process never outlives the request (timeout, cancellation)."""
        unavailable = "gateway.gpu_evidence_unavailable"
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
        except OSError as exc:
            raise QuoteUnavailable(
                f"the GPU evidence collector {argv[0]}",
                exc.strerror or str(exc),
                "check the guest image",
                check=unavailable,
            ) from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.config.gpu_collect_timeout_s)
        except TimeoutError:
            raise QuoteUnavailable(
                f"GPU evidence within {self.config.gpu_collect_timeout_s:g} s",
                "no answer",
                "check the GPUs (nvidia-smi) and the driver log",
                check=unavailable,
            ) from None
        finally:
            if proc.returncode is None:  # timed out, or the request was cancelled
                proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            raise QuoteUnavailable(
                "GPU evidence from the collector",
                f"exit {proc.returncode}: {err.decode(errors='replace')[-300:]}",
                "check the GPUs (nvidia-smi) and the driver log",
                check=unavailable,
            )
        return out

    async def attestation(self, request):
        from aiohttp import web

        text = request.query.get("nonce", "")
        try:
            nonce = bytes.fromhex(text)
        except ValueError:
            nonce = b""
        if not MIN_NONCE <= len(nonce) <= MAX_NONCE:
            return _error(
                400, "gateway.bad_nonce", f"nonce must be {MIN_NONCE}..{MAX_NONCE} bytes of hex, got {text[:40]!r}"
            )
        limited = _rate_limited(request, self.rate_limit)
        if limited is not None:
            return limited
        try:
            gpu = await self._gpu_evidence(gpu_nonce(bytes.fromhex(self.tls.spki_sha256), nonce))
            digest = gpu.digest() if gpu is not None else None
            quote = await self._quote(expected_report_data(self.tls.spki, nonce, gpu_digest=digest))
        except QuoteUnavailable as exc:
            return _error(503, exc.check, str(exc))
        return web.json_response(
            {
                "version": 1,
                "nonce": nonce.hex(),
                "quote": base64.b64encode(quote).decode(),
                "quote_source": self.source.label,
                "tls_spki_sha256": self.tls.spki_sha256,
                "event_log": self.event_log_b64,
                "gpu_evidence": gpu.to_json() if gpu is not None else None,
                **self.test_pki,
            },
            headers={"cache-control": "no-store"},
        )

    async def forward(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import ClientError

        body = await request.read()
        extra: dict[str, str] = {}
        mode = request.headers.get("x-attestation", "").strip().lower()
        if mode == "required":
            limited = _rate_limited(request, self.rate_limit)
            if limited is not None:
                return limited
            response_id = f"resp-{secrets.token_hex(16)}"
            digest = hashlib.sha256(body).digest()
            try:
                gpu = await self._gpu_evidence(response_gpu_nonce(digest, response_id))
                gpu_digest = gpu.digest() if gpu is not None else None
                quote = await self._quote(response_report_data(digest, response_id, gpu_digest))
            except QuoteUnavailable as exc:
                return _error(503, exc.check, str(exc))
            extra = {
                "x-tdx-quote": base64.b64encode(quote).decode(),
                "x-tdx-response-id": response_id,
                "x-tdx-request-sha256": digest.hex(),
            }
            if gpu is not None:
                compact = json.dumps(gpu.to_json(), separators=(",", ":")).encode()
                extra["x-tdx-gpu-evidence"] = base64.b64encode(compact).decode()
        elif mode not in ("", "none"):
            return _error(
                400, "gateway.bad_attestation_header", f"x-attestation must be `required` or `none`, got {mode[:40]!r}"
            )
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "x-attestation"
        }
        session = self._session
        if session is None:  # opened by the app's cleanup context before it serves any request
            raise RuntimeError("the gateway's upstream client session is not open")
        try:
            upstream = await session.request(
                request.method,
                # The request-target exactly as received: aiohttp's path_qs turns `//x` into `////x`.
                self.config.upstream + request.raw_path,
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
            )
        except (ClientError, OSError) as exc:
            return _error(
                502, "gateway.upstream_unavailable", f"vLLM at {self.config.upstream} is not answering: {exc}"
            )
        async with upstream:
            out = forwarded_response(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in HOP_BY_HOP:
                    out.headers.add(k, v)
            out.headers.update(extra)
            if upstream.content_length is not None and "content-encoding" not in upstream.headers:
                out.content_length = upstream.content_length
            await out.prepare(request)
            # What vLLM sent with its headers goes out with ours in one write (all of it, with the
            # end of the message, for a small answer); the headers are never held back to wait.
            first = upstream.content.read_nowait()
            if upstream.content.at_eof():
                await out.write_eof(first)
                return out
            await out.write(first)
            async for chunk in upstream.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out

    def app(self):
        from aiohttp import ClientSession, TCPConnector, web

        async def session_ctx(app):
            self._session = ClientSession(connector=TCPConnector(limit=0), auto_decompress=False)
            yield
            await self._session.close()

        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.cleanup_ctx.append(session_ctx)
        app.router.add_get(ATTESTATION_PATH, self.attestation)
        app.router.add_route("*", "/{tail:.*}", self.forward)
        return app

    async def start(self):
        """Start serving; returns the aiohttp runner (await `runner.cleanup()` to stop)."""
        from aiohttp import web

        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port, ssl_context=self.tls.context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1] if self.config.port == 0 else self.config.port
        return runner
