"""Real servers on loopback for the attested-channel tests and the proxy benchmark.

One asyncio loop in a background thread hosts everything (stand-in vLLM, gateway, proxy, and the
hostile middlemen), so sync code (the official `openai` client, pytest) can drive it. Every server
started here is stopped by `Channel.stop()`. The `loop` and `pki` fixtures are registered for every
test (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import pytest

from tdxattest.channel.gateway import Gateway, GatewayConfig, TlsIdentity, make_tls_identity
from tdxattest.channel.proxy import ProxyConfig, VerifyingProxy
from tdxattest.channel.quote_source import QuoteSource
from tdxattest.core.pins import GpuExpectation
from tdxattest.core.policy import DEFAULT_POLICY, Policy, with_pins_json, with_stack_pins
from tdxattest.dcap.appraise import Appraiser, FixedCollateral
from tdxattest.dcap.rim_store import RimStore
from tdxattest.testing.standin import StandinConfig, StandinServer
from tdxattest.testing.testpki import SoftwareQuoteProvider, TdIdentity, TestPki, make_test_pki


class LoopThread:
    """An event loop in a daemon thread; `run(coro)` runs a coroutine there and returns its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="channel-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    """One event loop thread per test module, for the servers of `start_channel`."""
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def pki() -> TestPki:
    """A TEST PKI valid now, per test module."""
    return make_test_pki(int(time.time()))


async def start_site(app, host: str = "127.0.0.1", port: int = 0, ssl_context=None, **runner_options):
    """Start an aiohttp app; returns (runner, bound port)."""
    from aiohttp import web

    runner = web.AppRunner(app, **({"access_log": None} | runner_options), shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    server = cast(asyncio.Server, site._server)  # what TCPSite.start() made with loop.create_server
    return runner, server.sockets[0].getsockname()[1]


@dataclass
class Channel:
    """stand-in vLLM <- gateway (TLS, TEST quotes) <- [middleman] <- verifying proxy <- client."""

    standin: StandinServer
    gateway: Gateway
    proxy: VerifyingProxy
    proxy_url: str
    gateway_url: str
    audit: Path
    _stops: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def audit_records(self) -> list[dict]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines() if line]

    async def stop(self) -> None:
        for stop in reversed(self._stops):
            with suppress(Exception):
                await stop()


async def start_channel(
    tmp: Path,
    pki: TestPki,
    *,
    td: TdIdentity = TdIdentity(),
    pinned: TdIdentity | None = None,
    collateral: str | None = None,
    source: QuoteSource | None = None,
    policy: Policy = DEFAULT_POLICY,
    standin: StandinConfig = StandinConfig(),
    middleman: Callable[[str], Awaitable[tuple[str, Callable[[], Awaitable[None]]]]] | None = None,
    tls: TlsIdentity | None = None,
    gateway_cls: type[Gateway] = Gateway,
    gpus: Path | None = None,
    pinned_gpu: GpuExpectation | None = None,
    rims: RimStore | None = None,
    tdx_modules: dict[str, str] | None = None,
    retiring: tuple[TdIdentity, ...] = (),
    **proxy_options: Any,
) -> Channel:
    """Start the whole channel. `middleman(gateway_url)` may start something between proxy and
    gateway and return (its url, its stop). `gpus`: a TEST GPU state directory
    (tdxattest.testing.testgpu.save_gpus) the gateway collects fresh evidence from; `pinned_gpu`:
    the GPU expectation in the pins the proxy reads; `tdx_modules`: the pins' `tdxModules`
    (release -> MRSEAM).; `retiring`: TDs whose pins the proxy still accepts (a pin rollover's old pins)."""
    stops: list[Callable[[], Awaitable[None]]] = []
    try:
        upstream = StandinServer(standin)
        await upstream.start()
        stops.append(upstream.stop)
        collect: tuple[str, ...] = ()
        if gpus is not None:
            collect = (
                sys.executable,
                "-m",
                "tdxattest.testing.testgpu",
                "collect",
                "--state",
                str(gpus),
                "--nonce",
                "{nonce}",
            )
        gateway = gateway_cls(
            GatewayConfig(upstream=upstream.url, host="127.0.0.1", port=0, event_log=None, gpu_collect=collect),
            source or SoftwareQuoteProvider(pki, td),
            tls=tls,
        )
        runner = await gateway.start()
        stops.append(runner.cleanup)
        gateway_url = f"https://127.0.0.1:{gateway.port}"
        target = gateway_url
        if middleman is not None:
            target, stop = await middleman(gateway_url)
            stops.append(stop)

        pins_path = tmp / "pins.json"
        stack_pins = replace((pinned or td).stack_pins(), gpu=pinned_gpu, tdx_modules=tdx_modules)
        pins_path.write_text(json.dumps(stack_pins.to_json()))
        collateral_path = tmp / "collateral.json"
        collateral_path.write_text(collateral if collateral is not None else pki.collateral_json())
        audit = tmp / "audit.jsonl"
        config = ProxyConfig(upstream=target, audit_path=str(audit), **proxy_options)
        appraiser = Appraiser(
            FixedCollateral.from_file(str(collateral_path)),
            with_pins_json(policy, str(pins_path)),
            pki.root_ca_der,
            rims,
            retiring=tuple(with_stack_pins(policy, r.stack_pins()) for r in retiring),
        )
        proxy = VerifyingProxy(config, appraiser)
        proxy_runner, proxy_port = await start_site(proxy.app(), **proxy.runner_options())
        stops.append(proxy_runner.cleanup)
    except BaseException:
        for stop in reversed(stops):
            with suppress(Exception):
                await stop()
        raise
    return Channel(upstream, gateway, proxy, f"http://127.0.0.1:{proxy_port}", gateway_url, audit, stops)


# -- hostile middlemen ---------------------------------------------------------------------------


async def tls_relay(
    gateway_url: str, tls: TlsIdentity | None = None, replay: dict | None = None
) -> tuple[str, Callable[[], Awaitable[None]]]:
    """A TLS server with its own key that relays every request to the real gateway (a man in the
    middle that terminates TLS). With `replay`, it answers attestation requests with that recorded
    response instead of asking the gateway (a replay of an old quote)."""
    from aiohttp import ClientSession, TCPConnector, web

    from tdxattest.channel.gateway import ATTESTATION_PATH, HOP_BY_HOP

    identity = tls or make_tls_identity("relay")
    session = ClientSession(connector=TCPConnector(ssl=False), auto_decompress=False)

    async def relay(request: web.Request) -> web.StreamResponse:
        if replay is not None and request.path == ATTESTATION_PATH:
            return web.json_response(replay)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with session.request(request.method, gateway_url + request.path_qs, headers=headers, data=body) as up:
            out = web.StreamResponse(status=up.status)
            for k, v in up.headers.items():
                if k.lower() not in HOP_BY_HOP:
                    out.headers.add(k, v)
            await out.prepare(request)
            async for chunk in up.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", relay)
    runner, port = await start_site(app, ssl_context=identity.context)

    async def stop() -> None:
        await runner.cleanup()
        await session.close()

    return f"https://127.0.0.1:{port}", stop


class SwitchableForwarder:
    """A TCP forwarder: new connections go to `target` (bytes copied, TLS untouched end to end);
    `switch(new)` sends later connections elsewhere and cuts the current ones -- what an upstream
    that swaps its certificate after attestation looks like from the proxy."""

    def __init__(self, target: str):
        self.target = target
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return f"https://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.target.removeprefix("https://").rsplit(":", 1)
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def switch(self, target: str) -> None:
        self.target = target
        for w in self._writers:
            w.close()
        self._writers.clear()

    async def stop(self) -> None:
        self.switch(self.target)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
