"""The known-answer check through the gateway, before the agent reports ready (the rule and its
reasons: guest_agent/pod/known_answer.py, which the Kubernetes target runs as its readiness probe).
The legacy completions endpoint works for every model (a chat template is not needed)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from .config import KnownAnswer
from .pod import known_answer
from .server import insecure_loopback_tls, loopback_open
from .system import Refused


def request_body(known: KnownAnswer, model: str) -> dict[str, Any]:
    return known_answer.request_body(known.prompt, known.max_tokens, model)


def compare(known: KnownAnswer, seen: str) -> None:
    """Pure: `seen` begins with the expected answer, or a refusal that shows where they part."""
    problem = known_answer.mismatch(known.prompt, known.expect, seen)
    if problem is not None:
        raise Refused("known-answer", problem)


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
