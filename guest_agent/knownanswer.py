"""The known-answer check: one greedy completion through the gateway, compared exactly.

Under CC, vLLM has produced fluent-looking garbage while every health check passed (vllm #57224);
a fixed prompt with greedy decoding and an exact expected answer is the check that catches it, and
going through the gateway checks the whole path a client will use.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request

from .config import KnownAnswer
from .server import insecure_loopback_tls, loopback_open
from .system import Refused


def request_body(known: KnownAnswer, model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": known.prompt}],
            "temperature": 0, "top_p": 1, "seed": 0, "max_tokens": known.max_tokens, "stream": False}


def compare(known: KnownAnswer, seen: str) -> None:
    """Pure: exact match, or a refusal that shows where the answers part."""
    if seen == known.expect:
        return
    at = next((i for i, (a, b) in enumerate(zip(seen, known.expect)) if a != b), min(len(seen), len(known.expect)))
    raise Refused("known-answer", f"the answer {known.expect!r} to {known.prompt!r}, seen {seen[:200]!r} "
                                  f"(first difference at character {at}); the model or the GPU path is broken "
                                  "(vLLM under CC: check VLLM_USE_V2_MODEL_RUNNER=0), or the expectation is stale")


def check_known_answer(gateway_url: str, known: KnownAnswer, model: str) -> str:
    body = json.dumps(request_body(known, model)).encode()
    req = urllib.request.Request(gateway_url.rstrip("/") + "/v1/chat/completions", data=body, method="POST",
                                 headers={"content-type": "application/json"})
    try:
        with loopback_open(req, known.timeout_s, insecure_loopback_tls()) as resp:
            doc = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise Refused("known-answer", f"HTTP 200 from {gateway_url}/v1/chat/completions, seen {exc.code}: "
                                      f"{exc.read()[:200]!r}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Refused("known-answer", f"an answer from {gateway_url}/v1/chat/completions, seen {exc}") from None
    try:
        seen = doc["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise Refused("known-answer", f"a chat completion, seen {json.dumps(doc)[:200]}") from None
    compare(known, seen if isinstance(seen, str) else repr(seen))
    return seen
