"""The attested channel end to end on loopback: stand-in vLLM <- gateway (TLS, TEST-PKI quotes)
<- verifying proxy <- the official `openai` client. Every refusal case checks that the client gets
the named failure and that nothing reached the stand-in (it counts requests)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import openai
import pytest

from tdxattest.channel.gateway import make_tls_identity
from tdxattest.channel.quote_source import QuoteUnavailable
from tdxattest.testing.standin import StandinConfig, known_answer
from tdxattest.testing.testpki import SoftwareQuoteProvider, TdIdentity
from tests.support.channel import Channel, SwitchableForwarder, start_channel, tls_relay

MODEL = StandinConfig().model


def client(ch: Channel) -> openai.OpenAI:
    return openai.OpenAI(base_url=ch.proxy_url + "/v1", api_key="test", max_retries=0, timeout=20)


def refused(ch: Channel, check: str) -> dict:
    """One chat call must fail with 502 naming `check`; returns the error body."""
    with pytest.raises(openai.APIStatusError) as info:
        client(ch).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say OK"}])
    assert info.value.status_code == 502
    error = info.value.body if isinstance(info.value.body, dict) else json.loads(info.value.response.text)["error"]
    assert error["code"] == check, error
    assert error["failures"][0]["check"] == check
    return error


# -- the happy path ----------------------------------------------------------------------------


def test_openai_client_works_unchanged_through_the_proxy(channel_factory, pki) -> None:
    ch = channel_factory(pki)
    c = client(ch)
    assert [m.id for m in c.models.list().data] == [MODEL]
    done = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say OK"}], max_tokens=4)
    assert done.choices[0].message.content == known_answer("Say OK", max_tokens=4)
    stream = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say OK"}], max_tokens=4, stream=True
    )
    pieces = [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert "".join(pieces) == known_answer("Say OK", max_tokens=4) and len(pieces) == 4
    # one attested connection carried all three calls
    assert ch.proxy.pool.attestations == 1 and ch.gateway.quotes_made == 1
    assert ch.standin.requests == 3

    records = ch.audit_records()
    assert [r["path"] for r in records] == ["/v1/models", "/v1/chat/completions", "/v1/chat/completions"]
    for r in records:
        assert r["verdict"] == "accepted" and r["status"] == 200 and len(r["quote_sha256"]) == 64
        assert r["tls_spki_sha256"] == ch.gateway.tls.spki_sha256 and r["request_id"]
    assert oct(ch.audit.stat().st_mode & 0o777) == "0o600"


def test_streaming_is_not_buffered(channel_factory, pki) -> None:
    ch = channel_factory(pki, standin=StandinConfig(token_interval_s=0.1, tokens=6))
    c = client(ch)
    c.models.list()  # attest first, so the timing below is the stream alone
    start = time.perf_counter()
    stream = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a b c"}], stream=True)
    arrivals = [time.perf_counter() - start for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert len(arrivals) == 6
    assert arrivals[-1] >= 0.45  # five pauses of 0.1 s
    assert arrivals[0] < arrivals[-1] - 0.3, arrivals  # the first token arrived long before the last


def test_reattests_on_interval_and_reconnect(channel_factory, pki) -> None:
    ch = channel_factory(pki, reattest_interval_s=0.0)
    c = client(ch)
    for _ in range(3):
        c.models.list()
    assert ch.proxy.pool.attestations == 3 and ch.gateway.quotes_made == 3
    assert len({r["quote_sha256"] for r in ch.audit_records()}) == 3  # a fresh nonce, a fresh quote


def test_per_response_quotes(channel_factory, pki) -> None:
    ch = channel_factory(pki, require_response_quotes=True)
    done = client(ch).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say OK"}])
    assert done.choices[0].message.content == known_answer("Say OK")
    (record,) = ch.audit_records()
    assert len(record["response_quote_sha256"]) == 64 and record["response_quote_sha256"] != record["quote_sha256"]
    assert ch.gateway.quotes_made == 2  # the connection, then the response


# -- refusals: nothing reaches the upstream ------------------------------------------------------


def test_wrong_mrtd_pin_is_refused(channel_factory, pki) -> None:
    other = TdIdentity(mrtd=bytes(range(48)))
    ch = channel_factory(pki, pinned=other)
    error = refused(ch, "pin.mrtd")
    assert error["failures"][0]["seen"] == TdIdentity().mrtd.hex()
    assert other.mrtd.hex() in json.dumps(error["failures"][0]["expected"])
    assert ch.standin.requests == 0
    (record,) = ch.audit_records()
    assert record["verdict"] == "refused" and record["failures"][0]["check"] == "pin.mrtd"


def test_debug_td_is_refused(channel_factory, pki) -> None:
    debug = TdIdentity().debug()
    ch = channel_factory(pki, td=debug, pinned=debug)
    refused(ch, "td.debug_enabled")
    assert ch.standin.requests == 0


def test_stale_collateral_is_refused(channel_factory, pki) -> None:
    stale = pki.collateral_json(next_update=int(time.time()) - 60)
    ch = channel_factory(pki, collateral=stale)
    refused(ch, "collateral.expired")
    assert ch.standin.requests == 0


def test_quote_bound_to_another_tls_key_is_refused(channel_factory, pki) -> None:
    # A relay terminates TLS with its own key and passes the attestation request to the real TD:
    # the quote is genuine but binds the gateway's key, not the relay's.
    ch = channel_factory(pki, middleman=tls_relay)
    error = refused(ch, "binding.report_data_mismatch")
    failure = error["failures"][0]
    assert len(failure["expected"]) == len(failure["seen"]) == 128 and failure["expected"] != failure["seen"]
    assert ch.standin.requests == 0


def test_replayed_quote_is_refused(channel_factory, pki, loop) -> None:
    # Even with the gateway's own TLS key, an old attestation (someone else's nonce) is refused.
    identity = make_tls_identity()
    recorded = {}

    async def replayer(gateway_url: str):
        import aiohttp

        async with aiohttp.ClientSession() as s:
            async with s.get(gateway_url + "/.well-known/tdx-attestation?nonce=" + "ab" * 32, ssl=False) as r:
                recorded.update(await r.json())
        return await tls_relay(gateway_url, tls=identity, replay=recorded)

    ch = channel_factory(pki, tls=identity, middleman=replayer)
    assert recorded["tls_spki_sha256"] == identity.spki_sha256
    refused(ch, "binding.report_data_mismatch")
    assert ch.standin.requests == 0


def test_certificate_swapped_after_attestation_is_refused(channel_factory, pki, loop) -> None:
    state: dict[str, Any] = {}

    async def forwarder(gateway_url: str):
        fwd = SwitchableForwarder(gateway_url)
        url = await fwd.start()
        relay_url, relay_stop = await tls_relay(gateway_url)
        state.update(fwd=fwd, relay=relay_url)

        async def stop():
            await fwd.stop()
            await relay_stop()

        return url, stop

    ch = channel_factory(pki, middleman=forwarder)
    c = client(ch)
    c.models.list()
    assert ch.standin.requests == 1
    # The upstream now presents another certificate (new connections reach the relay's key).
    loop.loop.call_soon_threadsafe(state["fwd"].switch, state["relay"])
    time.sleep(0.1)
    refused(ch, "binding.report_data_mismatch")
    assert ch.standin.requests == 1
    assert ch.proxy.pool.attestations == 1  # the swapped connection never passed


def test_gateway_unable_to_quote_is_refused(channel_factory, pki) -> None:
    class Broken:
        label = "broken"

        def quote(self, report_data: bytes) -> bytes:
            raise QuoteUnavailable("a quote from configfs-tsm", "Input/output error", "check qgsd")

    ch = channel_factory(pki, source=Broken())
    error = refused(ch, "attestation.unavailable")
    assert "gateway.quote_unavailable" in error["failures"][0]["seen"]
    assert ch.standin.requests == 0


def test_gateway_refuses_required_response_quote_it_cannot_make(loop, tmp_path, pki) -> None:
    """`x-attestation: required` straight at the gateway: no quote, no forwarding (503)."""
    import aiohttp

    class OnlyOnce:
        label = "only-once"

        def __init__(self):
            self.inner, self.used = SoftwareQuoteProvider(pki), False

        def quote(self, report_data: bytes) -> bytes:
            if self.used:
                raise QuoteUnavailable("a quote", "quote service gone", "restart qgsd")
            self.used = True
            return self.inner.quote(report_data)

    ch = loop.run(start_channel(tmp_path, pki, source=OnlyOnce()))
    try:

        async def call():
            async with aiohttp.ClientSession() as s:
                async with s.get(ch.gateway_url + "/.well-known/tdx-attestation?nonce=" + "00" * 32, ssl=False) as r:
                    ok = r.status
                async with s.post(
                    ch.gateway_url + "/v1/chat/completions",
                    ssl=False,
                    headers={"x-attestation": "required"},
                    json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                ) as r:
                    return ok, r.status, await r.json()

        ok, status, body = loop.run(call())
        assert ok == 200 and status == 503 and body["error"]["code"] == "gateway.quote_unavailable"
        assert ch.standin.requests == 0
    finally:
        loop.run(ch.stop())


def test_gateway_attestation_response_binds_its_tls_key(loop, tmp_path, pki) -> None:
    import aiohttp

    from tdxattest.channel.binding import expected_report_data
    from tdxattest.core.quote import parse_quote

    ch = loop.run(start_channel(tmp_path, pki))
    try:

        async def call(nonce: str):
            async with aiohttp.ClientSession() as s:
                async with s.get(ch.gateway_url + "/.well-known/tdx-attestation?nonce=" + nonce, ssl=False) as r:
                    return r.status, await r.json()

        status, doc = loop.run(call("11" * 32))
        assert status == 200 and doc["quote_source"] == SoftwareQuoteProvider.label
        quote = parse_quote(base64.b64decode(doc["quote"]))
        assert quote.report.report_data == expected_report_data(ch.gateway.tls.spki, bytes.fromhex("11" * 32))
        # A software-test source serves its TEST root and collateral with the quote (dev stack only)
        assert base64.b64decode(doc["test_pki"]["root_ca"]) == pki.root_ca_der
        assert json.loads(doc["test_pki"]["collateral"]) == json.loads(pki.collateral_json())
        for bad in ("", "zz", "11" * 8, "11" * 65):
            status, doc = loop.run(call(bad))
            assert status == 400 and doc["error"]["code"] == "gateway.bad_nonce"
    finally:
        loop.run(ch.stop())


def test_gateway_closing_the_attested_connection_is_refused(channel_factory, pki) -> None:
    """A verified quote is only good for the connection it was bound to: if the gateway closes that
    connection after answering, the request is refused (not sent on another, unattested one)."""
    from tdxattest.channel.gateway import Gateway

    class Closing(Gateway):
        async def attestation(self, request):
            response = await super().attestation(request)
            response.force_close()
            return response

    ch = channel_factory(pki, gateway_cls=Closing)
    error = refused(ch, "attestation.unavailable")
    assert "closed it after answering" in error["failures"][0]["seen"]
    assert ch.standin.requests == 0


def test_head_requests_are_not_forwarded_and_are_audited(channel_factory, pki) -> None:
    import urllib.request

    ch = channel_factory(pki)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(ch.proxy_url + "/v1/models", method="HEAD"), timeout=10)
    assert info.value.code == 405
    assert ch.standin.requests == 0
    (record,) = ch.audit_records()
    assert record["verdict"] == "not_forwarded" and record["status"] == 405


# -- the dev stack's TD without TDX: --accept-dev-test-root --------------------------------------


class _QuotesWithoutTestPki:
    """Signs TEST quotes but serves no `test_pki` (like a hardware source, which has none)."""

    label = "software-test-pki"

    def __init__(self, pki) -> None:
        self._inner = SoftwareQuoteProvider(pki)

    def quote(self, report_data: bytes) -> bytes:
        return self._inner.quote(report_data)


def test_dev_test_root_takes_the_test_pki_served_with_each_answer(channel_factory, pki) -> None:
    from tdxattest.testing.testpki import make_test_pki

    # The proxy was given another PKI's collateral: only the TEST PKI in the answer can verify.
    other = make_test_pki(int(time.time()))
    td = TdIdentity(rtmr3=bytes(range(48)))
    ch = channel_factory(pki, td=td, collateral=other.collateral_json(), dev_test_root=True)
    done = client(ch).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say OK"}])
    assert done.choices[0].message.content == known_answer("Say OK")
    (record,) = ch.audit_records()
    assert record["verdict"] == "accepted" and record["quote_source"] == "software-test-pki"
    assert record["checks"]["pin.rtmr3"] == "pass" and record["checks"]["binding.report_data_mismatch"] == "pass"


def test_without_the_flag_the_served_test_pki_is_ignored(channel_factory, pki) -> None:
    from tdxattest.testing.testpki import make_test_pki

    other = make_test_pki(int(time.time()))
    ch = channel_factory(pki, collateral=other.collateral_json())
    with pytest.raises(openai.APIStatusError) as info:
        client(ch).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say OK"}])
    assert info.value.status_code == 502
    assert ch.standin.requests == 0


def test_dev_test_root_still_holds_the_pins(channel_factory, pki) -> None:
    ch = channel_factory(
        pki, td=TdIdentity(rtmr3=bytes(48)), pinned=TdIdentity(rtmr3=bytes(range(48))), dev_test_root=True
    )
    refused(ch, "pin.rtmr3")
    assert ch.standin.requests == 0


def test_dev_test_root_refuses_an_answer_without_a_test_pki(channel_factory, pki) -> None:
    ch = channel_factory(pki, source=_QuotesWithoutTestPki(pki), dev_test_root=True)
    error = refused(ch, "attestation.test_pki")
    assert "drop --accept-dev-test-root" in json.dumps(error)
    assert ch.standin.requests == 0


def test_a_response_quote_bound_to_other_data_is_refused(channel_factory, pki) -> None:
    # issue 17 (mutation testing): the response quote's REPORTDATA comparison could be dropped with
    # no test failing; only the success path was tested. A gateway that answers with a quote over
    # other data (here: any REPORTDATA but the response's) must not get its answer through.
    from tdxattest.channel.gateway import Gateway

    class OtherDataForResponses(Gateway):
        async def _quote(self, report_data: bytes) -> bytes:
            if self.quotes_made >= 1:  # the connection's quote is right; every response's is not
                report_data = bytes(64)
            return await super()._quote(report_data)

    ch = channel_factory(pki, require_response_quotes=True, gateway_cls=OtherDataForResponses)
    error = refused(ch, "binding.report_data_mismatch")
    assert "response refused" in error["message"]
    (record,) = ch.audit_records()
    assert record["verdict"] == "refused" and record["failures"][0]["check"] == "binding.report_data_mismatch"


def test_a_request_is_never_sent_twice_when_a_fresh_connection_breaks(channel_factory, pki) -> None:
    # issue 17 (mutation testing): only a kept-alive connection that the server closed while idle may
    # be retried; on a fresh one the request may have run, and a completion must not run twice.
    from tdxattest.channel.gateway import Gateway

    class DropsTheFirstRequest(Gateway):
        forwarded = 0

        async def forward(self, request):
            type(self).forwarded += 1
            if type(self).forwarded == 1:
                request.transport.abort()  # took the request, answered nothing
                raise ConnectionResetError
            return await super().forward(request)

    ch = channel_factory(pki, gateway_cls=DropsTheFirstRequest)
    with pytest.raises(openai.APIStatusError) as info:
        client(ch).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say OK"}])
    assert info.value.status_code == 502 and "upstream connection failed" in info.value.response.text
    assert DropsTheFirstRequest.forwarded == 1  # not retried on another connection
    (record,) = ch.audit_records()
    assert record["verdict"] == "error" and record["status"] == 502


def test_an_attestation_answer_that_never_comes_times_out(channel_factory, pki, monkeypatch) -> None:
    import asyncio

    from tdxattest.channel import proxy as proxy_module
    from tdxattest.channel.gateway import Gateway

    class NeverAnswers(Gateway):
        async def attestation(self, request):
            await asyncio.sleep(2)  # past the proxy's (patched) 0.5 s; short, so the gateway stops promptly
            return await super().attestation(request)

    monkeypatch.setattr(proxy_module, "ATTESTATION_TIMEOUT_S", 0.5)
    ch = channel_factory(pki, gateway_cls=NeverAnswers)
    error = refused(ch, "attestation.unavailable")
    assert "within 0 s" in error["failures"][0]["expected"] or "0.5" in str(error["failures"][0]), error


def test_a_quote_in_lenient_base64_is_refused(channel_factory, pki) -> None:
    # issue 17 (mutation testing): lenient decoding drops what is not base64, so `*` inside the quote
    # would still decode to the right bytes; the answer is not what the gateway should send.
    from tdxattest.channel.gateway import Gateway

    class Sloppy(Gateway):
        async def attestation(self, request):
            response = await super().attestation(request)
            doc = json.loads(response.body)
            doc["quote"] = doc["quote"][:40] + "*" + doc["quote"][40:]
            response.body = json.dumps(doc).encode()
            return response

    ch = channel_factory(pki, gateway_cls=Sloppy)
    refused(ch, "attestation.malformed")
