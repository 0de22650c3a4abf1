"""The known-answer check: one greedy completion through the gateway must begin with the expected
text. Under CC, vLLM has produced fluent-looking garbage while every health check passed (vllm
#57224); a fixed prompt with greedy decoding and a known answer catches it, and going through the
gateway checks the whole path a client uses. "Begins with" lets `expect` be the answer's first words
without knowing how many tokens the model adds: `prompt: "The capital of France is"`,
`expect: " Paris"` passes on " Paris. It is ...".

Standard library only: the guest agent imports these functions (guest_agent/knownanswer.py), and the
Kubernetes target runs this file as the gateway container's readiness probe (`python3 -c <this file>
GATEWAY_URL EXPECT REQUEST_JSON`): it asks the gateway for an attestation (a fresh nonce) and sends
the request through it, inside the pod, to the gateway's own loopback port, whose certificate is a
fresh self-signed one (TLS is not verified there).
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import urllib.request
from typing import Any

ATTESTATION_PATH = "/.well-known/tdx-attestation"


def request_body(prompt: str, max_tokens: int, model: str) -> dict[str, Any]:
    """The completion request: greedy and seeded, so the answer is the model's, every time."""
    return {"model": model, "prompt": prompt, "temperature": 0, "top_p": 1, "seed": 0,
            "max_tokens": max_tokens, "stream": False}  # fmt: skip


def mismatch(prompt: str, expect: str, seen: str) -> str | None:
    """None when `seen` begins with `expect`; else what was expected and where the answer parts. Pure."""
    if seen.startswith(expect):
        return None
    at = next((i for i, (a, b) in enumerate(zip(seen, expect)) if a != b), min(len(seen), len(expect)))
    return (
        f"the answer {expect!r} to {prompt!r}, seen {seen[:200]!r} (first difference at character {at}); the "
        "model or the GPU path is broken (vLLM under CC: check VLLM_USE_V2_MODEL_RUNNER=0), or the expectation "
        "is stale"
    )


def main(argv: list[str]) -> int:
    url, expect, body = argv
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    attestation = f"{url}{ATTESTATION_PATH}?nonce={os.urandom(32).hex()}"
    with urllib.request.urlopen(attestation, timeout=20, context=ctx) as resp:
        if not json.load(resp).get("quote"):
            print("known-answer check failed: the gateway returned no quote", file=sys.stderr)
            return 1
    request = urllib.request.Request(
        f"{url}/v1/completions", data=body.encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=50, context=ctx) as resp:
        text = json.load(resp)["choices"][0]["text"]
    problem = mismatch(json.loads(body)["prompt"], expect, text)
    if problem is not None:
        print(f"known-answer check failed: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
