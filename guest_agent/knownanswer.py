"""The known-answer check: one greedy completion through the gateway, which must begin with the
expected text.

Under CC, vLLM has produced fluent-looking garbage while every health check passed (vllm #57224);
a fixed prompt with greedy decoding and a known answer is the check that catches it, and going
through the gateway checks the whole path a client will use. The legacy completions endpoint
works for every model (a chat template is not needed), and "begins with" lets `expect` be the
answer's first words without knowing how many tokens the model adds after them: with
`prompt: "The capital of France is"`, `expect: " Paris"` passes on " Paris. It is ...". The
Kubernetes target's readiness probe applies the same rule (components/kubernetes_workload.py).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from .config import KnownAnswer
from .server import insecure_loopback_tls, loopback_open
from .system import Refused


def request_body(known: KnownAnswer, model: str) -> dict:
    return {
        "model": model,
        "prompt": known.prompt,
        "temperature": 0,
        "top_p": 1,
        "seed": 0,
        "max_tokens": known.max_tokens,
        "stream": False,
    }


def compare(known: KnownAnswer, seen: str) -> None:
    """Pure: `seen` begins with the expected answer, or a refusal that shows where they part."""
    if seen.startswith(known.expect):
        return
    at = next((i for i, (a, b) in enumerate(zip(seen, known.expect)) if a != b), min(len(seen), len(known.expect)))
    raise Refused(
        "known-answer",
        f"the answer {known.expect!r} to {known.prompt!r}, seen {seen[:200]!r} "
        f"(first difference at character {at}); the model or the GPU path is broken "
        "(vLLM under CC: check VLLM_USE_V2_MODEL_RUNNER=0), or the expectation is stale",
    )


def check_known_answer(gateway_url: str, known: KnownAnswer, model: str) -> str:
    body = json.dumps(request_body(known, model)).encode()
    req = urllib.request.Request(
        gateway_url.rstrip("/") + "/v1/completions",
        data=body,
        method="POST",
        headers={"content-type": "application/json"},
    )
    try:
        with loopback_open(req, known.timeout_s, insecure_loopback_tls()) as resp:
            doc = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise Refused(
            "known-answer", f"HTTP 200 from {gateway_url}/v1/completions, seen {exc.code}: {exc.read()[:200]!r}"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Refused("known-answer", f"an answer from {gateway_url}/v1/completions, seen {exc}") from None
    try:
        seen = doc["choices"][0]["text"]
    except (KeyError, IndexError, TypeError):
        raise Refused("known-answer", f"a completion, seen {json.dumps(doc)[:200]}") from None
    compare(known, seen if isinstance(seen, str) else repr(seen))
    return seen
