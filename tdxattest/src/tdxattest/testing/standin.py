"""A deterministic OpenAI-compatible server that stands in for vLLM.

Why: the attested gateway and the verifying proxy must be tested and benchmarked without a GPU.
Their tests need an upstream that counts what reached it (to assert that a refused request never
did), the proxy benchmark needs real chunked SSE at a decode-like pace on loopback, and the dev TD
image needs something to serve when no GPU is present. vLLM itself is too heavy for any of these,
so this module speaks the subset of its HTTP API that the official `openai` client uses, on
aiohttp alone.

Endpoints: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions` (both with
`"stream": true` as SSE, one chunk per token, ending `data: [DONE]`), `GET /health`. Anything else
is a 404, malformed JSON a 400, both in OpenAI's error shape `{"error": {"message", "type",
"param", "code"}}`. Like vLLM, a request naming a model other than the served one is a 404
(`code: "model_not_found"`); leaving `model` out is accepted.

The known-answer rule ("greedy" decoding of a model that only echoes):
  * the words are the last `user` message's text (legacy completions: the prompt) split on
    whitespace; with no words the single word `standin` is used;
  * token i is words[i % len(words)], every token but the first prefixed by one space, so the
    answer is the words repeated cyclically and joined by single spaces;
  * n = min(config.tokens, max_tokens or max_completion_tokens) tokens are produced;
    finish_reason is "length" when the request's limit cut the answer short (limit <
    config.tokens), else "stop";
  * usage.prompt_tokens counts whitespace-separated words over all messages (the prompt),
    completion_tokens = n.
So with the default 16 tokens, "Say OK" answers "Say OK" repeated 8 times
("Say OK Say OK ... Say OK", 16 words), and with max_tokens=2 exactly "Say OK".

Streaming follows vLLM's chunk order: a first chunk with delta {"role": "assistant", "content":
""}, one chunk per token (the pause token_interval_s sits between tokens, none before the first),
a final chunk with an empty delta and the finish_reason, a usage chunk (choices []) if
`stream_options.include_usage`, then `data: [DONE]`.

Use it as `async with StandinServer(cfg) as s: ...`, or from sync code
`with StandinServer(cfg).run_in_thread() as s: ...`, or from a shell:
`python -m tdxattest.testing.standin --listen 127.0.0.1:8000 [--token-interval-ms N] [--model M]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

FALLBACK_WORD = "standin"
# The sentinel the openai client stops reading at; the blank line ends the SSE event.
_SSE_DONE = b"data: [DONE]\n\n"
# Renders one choice of a stream chunk from a delta and a finish_reason (chat and legacy differ).
Choice = Callable[[dict[str, Any], str | None], dict[str, Any]]


@dataclass(frozen=True)
class StandinConfig:
    model: str = "standin/echo-1"
    token_interval_s: float = 0.0
    tokens: int = 16


class ApiError(Exception):
    """An error the client should see, rendered in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = (status, message, code, param, type_)

    def response(self) -> web.Response:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return web.json_response(body, status=self.status)


# ---- the deterministic "model" -----------------------------------------------------------------


def _text_of(content: Any) -> str:
    """Text of a message's content: a string, or a list of parts of which the text parts count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _words(text: str) -> list[str]:
    return text.split() or [FALLBACK_WORD]


def answer_tokens(text: str, n: int) -> list[str]:
    """The n tokens answered to `text` under the known-answer rule (see the module docstring)."""
    words = _words(text)
    return [(" " if i else "") + words[i % len(words)] for i in range(n)]


def known_answer(prompt: str, config: StandinConfig = StandinConfig(), max_tokens: int | None = None) -> str:
    """The exact completion text the stand-in returns for a last user message `prompt`."""
    return "".join(answer_tokens(prompt, _token_count(config, max_tokens)))


def _token_count(config: StandinConfig, limit: int | None) -> int:
    return config.tokens if limit is None else min(config.tokens, limit)


def _finish_reason(config: StandinConfig, limit: int | None) -> str:
    return "length" if limit is not None and limit < config.tokens else "stop"


# ---- request parsing ---------------------------------------------------------------------------


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError both
        raise ApiError(400, f"We could not parse the JSON body of your request. ({e})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


def _limit(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        # bool is an int in Python; a JSON `true` is not a token count.
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ApiError(400, f"{key} must be an integer >= 1, got {value!r}", param=key)
        return value
    return None


def _check_common(body: dict[str, Any], model: str) -> None:
    asked = body.get("model")
    if asked is not None and asked != model:
        raise ApiError(404, f"The model `{asked}` does not exist.", code="model_not_found", param="model")
    if body.get("n", 1) != 1:
        raise ApiError(400, "Only n=1 is supported.", param="n")


def _chat_prompt(body: dict[str, Any]) -> tuple[str, int]:
    """(last user message text, word count over all messages)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty array", param="messages")
    if not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "each message must be an object", param="messages")
    texts = [_text_of(m.get("content")) for m in messages]
    users = [t for m, t in zip(messages, texts, strict=False) if m.get("role") == "user"]
    return (users[-1] if users else ""), sum(len(t.split()) for t in texts)


def _legacy_prompt(body: dict[str, Any]) -> tuple[str, int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list):  # one prompt as a list of strings or of token ids
        if len(prompt) != 1 and not all(isinstance(p, int) for p in prompt):
            raise ApiError(400, "Only one prompt per request is supported.", param="prompt")
        prompt = " ".join(map(str, prompt)) if all(isinstance(p, int) for p in prompt) else prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string", param="prompt")
    return prompt, len(prompt.split())


# ---- the server --------------------------------------------------------------------------------


class StandinServer:
    """The stand-in; an async context manager. `requests`/`paths` record every request."""

    def __init__(self, config: StandinConfig = StandinConfig(), host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        self.host, self.port = host, port
        self.paths: list[tuple[str, str]] = []
        self._runner: web.AppRunner | None = None

    @property
    def requests(self) -> int:
        return len(self.paths)

    @property
    def url(self) -> str:
        if self._runner is None:
            raise RuntimeError("the stand-in is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._record_and_shape_errors])
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._legacy)
        # Open streams at shutdown are cut after a second: a test's teardown must not hang.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> StandinServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def run_in_thread(self) -> StandinThread:
        """Start this server on its own event loop in a daemon thread, for sync callers."""
        return StandinThread(self)

    # -- middleware and handlers --

    @web.middleware
    async def _record_and_shape_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.paths.append((request.method, request.path))
        try:
            return await handler(request)
        except ApiError as e:
            return e.response()
        except web.HTTPException as e:
            if e.status < 400:
                raise
            if e.status == 404:
                return ApiError(404, f"Invalid URL ({request.method} {request.path})").response()
            return ApiError(e.status, e.reason).response()

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _models(self, request: web.Request) -> web.Response:
        model = {"id": self.config.model, "object": "model", "created": int(time.time()), "owned_by": "standin"}
        return web.json_response({"object": "list", "data": [model]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(
            request, _chat_prompt, "chatcmpl", "chat.completion", _chat_delta, _Completion.chat_body
        )

    async def _legacy(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(
            request, _legacy_prompt, "cmpl", "text_completion", _legacy_delta, _Completion.legacy_body
        )

    async def _complete(
        self,
        request: web.Request,
        prompt_of: Callable[[dict[str, Any]], tuple[str, int]],
        id_prefix: str,
        object_: str,
        choice: Choice,
        body_of: Callable[[_Completion], dict[str, Any]],
    ) -> web.StreamResponse:
        body = await _json_body(request)
        _check_common(body, self.config.model)
        limit = _limit(body)
        text, prompt_tokens = prompt_of(body)
        completion = _Completion(self.config, id_prefix, object_, text, prompt_tokens, limit)
        if body.get("stream"):
            return await completion.stream(request, _include_usage(body), choice)
        return web.json_response(body_of(completion))


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _chat_delta(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def _legacy_delta(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"index": 0, "text": delta.get("content", ""), "logprobs": None, "finish_reason": finish}


class _Completion:
    """One answer, rendered whole or as an SSE stream."""

    def __init__(
        self, config: StandinConfig, id_prefix: str, object_: str, text: str, prompt_tokens: int, limit: int | None
    ) -> None:
        self.config = config
        self.id = f"{id_prefix}-{uuid.uuid4().hex}"
        self.object = object_
        self.created = int(time.time())
        self.tokens = answer_tokens(text, _token_count(config, limit))
        self.finish = _finish_reason(config, limit)
        self.usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(self.tokens),
            "total_tokens": prompt_tokens + len(self.tokens),
        }

    def _envelope(self, object_: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": object_,
            "created": self.created,
            "model": self.config.model,
            "choices": choices,
        }

    def chat_body(self) -> dict[str, Any]:
        message = {"role": "assistant", "content": "".join(self.tokens)}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish}
        return {**self._envelope(self.object, [choice]), "usage": self.usage}

    def legacy_body(self) -> dict[str, Any]:
        choice = _legacy_delta({"content": "".join(self.tokens)}, self.finish)
        return {**self._envelope(self.object, [choice]), "usage": self.usage}

    def _events(self, include_usage: bool, choice: Choice) -> Iterator[tuple[bool, dict[str, Any]]]:
        """(pause before it, chunk) for every event of the stream but [DONE]."""
        chunk_object = "chat.completion.chunk" if self.object == "chat.completion" else self.object
        if self.object == "chat.completion":
            yield False, self._envelope(chunk_object, [choice({"role": "assistant", "content": ""}, None)])
        for i, token in enumerate(self.tokens):
            yield i > 0, self._envelope(chunk_object, [choice({"content": token}, None)])
        yield False, self._envelope(chunk_object, [choice({}, self.finish)])
        if include_usage:
            yield False, {**self._envelope(chunk_object, []), "usage": self.usage}

    async def stream(self, request: web.Request, include_usage: bool, choice: Choice) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        interval = self.config.token_interval_s
        try:
            for pause, chunk in self._events(include_usage, choice):
                if pause and interval > 0:
                    await asyncio.sleep(interval)
                # Each write goes to the socket as its own HTTP chunk: no buffering to the end.
                await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await response.write(_SSE_DONE)
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away mid-stream, as real clients do
        return response


# ---- sync use ----------------------------------------------------------------------------------


class StandinThread:
    """A StandinServer on its own loop in a daemon thread; a context manager, `stop()` to end."""

    def __init__(self, server: StandinServer, start_timeout_s: float = 10.0) -> None:
        self.server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="standin", daemon=True)
        self._thread.start()
        if not self._ready.wait(start_timeout_s):
            raise TimeoutError("the stand-in did not start")
        if self._error is not None:
            self._thread.join()
            raise self._error

    async def _main(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        try:
            await self.server.start()
        except BaseException as e:  # handed to the starting thread, which raises it
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def requests(self) -> int:
        return self.server.requests

    @property
    def paths(self) -> list[tuple[str, str]]:
        return self.server.paths

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._loop is not None and self._thread.is_alive():
            assert self._stopping is not None
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout_s)

    def __enter__(self) -> StandinThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- CLI ---------------------------------------------------------------------------------------


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _serve(server: StandinServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        print(json.dumps({"listening": server.url}), flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tdxattest.testing.standin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", 8000),
        metavar="HOST:PORT",
        help="address to serve on (default 127.0.0.1:8000)",
    )
    parser.add_argument(
        "--token-interval-ms", type=float, default=0.0, help="pause between streamed tokens, in milliseconds"
    )
    parser.add_argument(
        "--tokens", type=int, default=StandinConfig.tokens, help="tokens per completion unless max_tokens is smaller"
    )
    parser.add_argument("--model", default=StandinConfig.model, help="the served model id")
    args = parser.parse_args(argv)
    config = StandinConfig(model=args.model, token_interval_s=args.token_interval_ms / 1000, tokens=args.tokens)
    host, port = args.listen
    asyncio.run(_serve(StandinServer(config, host, port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
