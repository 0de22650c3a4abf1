"""The vLLM stand-in, driven by the official openai client: shapes, known answers, streaming."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import openai
import pytest

from tdxattest.testing.standin import StandinConfig, StandinServer, StandinThread, known_answer

ROOT = Path(__file__).resolve().parents[2]
MODEL = StandinConfig().model


@pytest.fixture
def standin() -> Iterator[StandinThread]:
    handle = StandinServer().run_in_thread()
    try:
        yield handle
    finally:
        handle.stop()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=10)


def chat(c: openai.OpenAI, prompt: str, **kw):
    return c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}], **kw)


def raw(url: str, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url + path, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_models_list(standin: StandinThread) -> None:
    models = client(standin.url).models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].owned_by == "standin" and models.data[0].object == "model"


def test_chat_known_answer(standin: StandinThread) -> None:
    c = client(standin.url)
    full = chat(c, "Say OK")
    assert full.id.startswith("chatcmpl-") and full.object == "chat.completion"
    assert full.model == MODEL
    assert full.choices[0].message.role == "assistant"
    assert full.choices[0].message.content == " ".join(["Say OK"] * 8) == known_answer("Say OK")
    assert full.choices[0].finish_reason == "stop"
    assert (full.usage.prompt_tokens, full.usage.completion_tokens, full.usage.total_tokens) == (2, 16, 18)
    short = chat(c, "Say OK", max_tokens=2)
    assert short.choices[0].message.content == "Say OK" == known_answer("Say OK", max_tokens=2)
    assert short.choices[0].finish_reason == "length"


def test_answer_echoes_last_user_message_cyclically(standin: StandinThread) -> None:
    c = client(standin.url)
    out = c.chat.completions.create(
        model=MODEL,
        max_completion_tokens=5,
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "ignored"},
            {"role": "assistant", "content": "x"},
            {"role": "user", "content": [{"type": "text", "text": "a  b\nc"}]},
        ],
    )
    assert out.choices[0].message.content == "a b c a b"
    assert out.usage is not None and out.usage.prompt_tokens == 2 + 1 + 1 + 3
    empty = chat(client(standin.url), "   ", max_tokens=2)
    assert empty.choices[0].message.content == "standin standin"


def test_streaming_matches_non_streaming(standin: StandinThread) -> None:
    c = client(standin.url)
    whole = chat(c, "one two three", max_tokens=7).choices[0].message.content
    chunks = list(chat(c, "one two three", max_tokens=7, stream=True, stream_options={"include_usage": True}))
    assert all(ch.object == "chat.completion.chunk" and ch.model == MODEL for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    tokens = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert tokens == ["one", " two", " three", " one", " two", " three", " one"]
    assert "".join(tokens) == whole
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 7
    assert len({ch.id for ch in chunks}) == 1


def test_legacy_completions(standin: StandinThread) -> None:
    c = client(standin.url)
    out = c.completions.create(model=MODEL, prompt="Say OK", max_tokens=3)
    assert out.object == "text_completion" and out.choices[0].text == "Say OK Say"
    assert out.choices[0].finish_reason == "length"
    streamed = "".join(
        ch.choices[0].text
        for ch in c.completions.create(model=MODEL, prompt="Say OK", max_tokens=3, stream=True)
        if ch.choices
    )
    assert streamed == "Say OK Say"


def test_counts_every_request(standin: StandinThread) -> None:
    c = client(standin.url)
    assert standin.requests == 0
    c.models.list()
    chat(c, "hi", max_tokens=1)
    raw(standin.url, "GET", "/health")
    raw(standin.url, "GET", "/nope")
    assert standin.requests == 4
    assert standin.paths == [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/health"),
        ("GET", "/nope"),
    ]


def test_health(standin: StandinThread) -> None:
    with urllib.request.urlopen(standin.url + "/health", timeout=10) as r:
        assert r.status == 200


def test_error_shapes(standin: StandinThread) -> None:
    status, body = raw(standin.url, "POST", "/v1/nothing", b"{}")
    assert status == 404 and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    status, body = raw(standin.url, "POST", "/v1/chat/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = raw(standin.url, "GET", "/v1/chat/completions")
    assert status == 405 and "message" in body["error"]
    with pytest.raises(openai.BadRequestError):
        chat(client(standin.url), "x", max_tokens=0)
    with pytest.raises(openai.NotFoundError) as e:
        client(standin.url).chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "model_not_found"


def test_streaming_is_paced_and_not_buffered() -> None:
    config = StandinConfig(token_interval_s=0.02, tokens=5)
    with StandinServer(config).run_in_thread() as s:
        start = time.monotonic()
        arrivals = [
            time.monotonic() - start
            for ch in chat(client(s.url), "a b c d e", stream=True)
            if ch.choices and ch.choices[0].delta.content
        ]
    assert len(arrivals) == 5
    assert arrivals[-1] >= 0.075
    # Buffered output would land all at once; real streaming shows the 4 pauses between tokens.
    assert arrivals[-1] - arrivals[0] >= 0.07


def test_async_context_manager_with_aiohttp() -> None:
    async def go() -> tuple[int, str, str]:
        async with StandinServer() as s, aiohttp.ClientSession() as http:
            async with http.post(
                s.url + "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "Say OK"}], "max_tokens": 2},
            ) as r:
                body = await r.json()
            return s.requests, body["choices"][0]["message"]["content"], s.url

    requests, content, url = asyncio.run(go())
    assert (requests, content) == (1, "Say OK") and url.startswith("http://127.0.0.1:")
    with pytest.raises(OSError):  # stopped: nothing listens any more
        socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=1).close()


def test_start_error_reaches_the_caller() -> None:
    with StandinServer().run_in_thread() as s:
        port = int(s.url.rsplit(":", 1)[1])
        with pytest.raises(OSError):
            StandinServer(port=port).run_in_thread()


def test_cli_serves_until_sigterm() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tdxattest.testing.standin",
            "--listen",
            "127.0.0.1:0",
            "--model",
            "m/1",
            "--token-interval-ms",
            "1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None  # stdout=PIPE
    try:
        url = json.loads(proc.stdout.readline())["listening"]
        assert [m.id for m in client(url).models.list().data] == ["m/1"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
