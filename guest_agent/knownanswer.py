"""The checks of vLLM's answers before the agent reports ready, all through the gateway:

  * the known-answer check (the rule and its reasons: guest_agent/pod/known_answer.py, which the
    Kubernetes target runs as its readiness probe);
  * which model runner vLLM really started, from its own log: the V1 runner (`[gpu_model_runner.py:`
    "Starting to load model"), or the V0 engine of a vLLM that has no V2 runner ("Initializing a V0
    LLM engine"), and never the V2 one ("Using V2 Model Runner", logged by
    vllm/v1/worker/gpu_worker.py). VLLM_USE_V2_MODEL_RUNNER=0 asks for V1 (vllm #57224: the V2
    runner answers with garbage under CC); once vLLM ignores the variable, this check says so;
  * a sampled probe: the known prompt at temperature 1.5 with four seeds, 32 tokens each. vllm #50671: under CC,
    stale sampling values read as zero, so a greedy request still looks right while every sampled
    one comes back greedy. Four seeded samples that all equal the greedy answer are that fault (a
    working sampler at this temperature almost never repeats a greedy continuation four times).

The legacy completions endpoint works for every model (a chat template is not needed)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
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


V2_RUNNER_MARK = "Using V2 Model Runner"
V1_RUNNER_MARK = "[gpu_model_runner.py:"  # the V1 engine's model runner (vllm/v1/worker/gpu_model_runner.py)
V0_ENGINE_MARK = "Initializing a V0 LLM engine"  # vLLM before the V1 engine (<= 0.8): no V2 runner at all
SAMPLED_SEEDS = (1, 2, 3, 4)
SAMPLED_TEMPERATURE = 1.5
# Long enough that a working sampler leaves the greedy path somewhere, whatever knownAnswer.maxTokens
# is: four seeded samples of a one-token answer to a well-known prompt could all be greedy.
SAMPLED_MAX_TOKENS = 32


def runner_refusal(log_text: str) -> str | None:
    """None when vLLM's log shows the V1 model runner and not the V2 one; else why. Pure."""
    if V2_RUNNER_MARK in log_text:
        return (
            f"vLLM's V1 model runner (VLLM_USE_V2_MODEL_RUNNER=0), seen {V2_RUNNER_MARK!r} in its log: this "
            "vLLM ignores the variable and its V2 runner is broken under CC (vllm #57224); pin a vLLM "
            "image that still honours it, or one with the fix"
        )
    if V1_RUNNER_MARK not in log_text and V0_ENGINE_MARK not in log_text:
        return (
            f"vLLM's V1 model runner in its log ({V1_RUNNER_MARK!r} lines, or {V0_ENGINE_MARK!r} of an older vLLM, "
            "at VLLM_LOGGING_LEVEL=INFO), seen neither: the runner cannot be told; check the vLLM image and its log"
        )
    return None


def check_runner(log: Path) -> None:
    try:
        text = log.read_text(errors="replace")
    except OSError as exc:
        raise Refused("vllm-runner", f"vLLM's log at {log}, seen {exc.strerror}") from None
    problem = runner_refusal(text)
    if problem is not None:
        raise Refused("vllm-runner", problem)


def sampled_refusal(greedy: str, samples: list[str]) -> str | None:
    """None when at least one seeded sample differs from the greedy answer; else the fault. Pure."""
    if samples and all(s == greedy for s in samples):
        return (
            f"{len(samples)} samples at temperature {SAMPLED_TEMPERATURE} (seeds {list(SAMPLED_SEEDS)}) that "
            f"differ somewhere from the greedy answer, seen all equal to {greedy[:80]!r}: sampling parameters "
            "read as zero (vllm #50671, vLLM under CC); do not serve sampled requests from this image"
        )
    return None


def _complete(gateway_url: str, body: dict[str, Any], timeout_s: float, step: str) -> str:
    req = urllib.request.Request(
        gateway_url.rstrip("/") + "/v1/completions",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"content-type": "application/json"},
    )
    try:
        with loopback_open(req, timeout_s, insecure_loopback_tls()) as resp:
            doc = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise Refused(
            step, f"HTTP 200 from {gateway_url}/v1/completions, seen {exc.code}: {exc.read()[:200]!r}"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Refused(step, f"an answer from {gateway_url}/v1/completions, seen {exc}") from None
    try:
        seen = doc["choices"][0]["text"]
    except (KeyError, IndexError, TypeError):
        raise Refused(step, f"a completion, seen {json.dumps(doc)[:200]}") from None
    return seen if isinstance(seen, str) else repr(seen)


def check_known_answer(gateway_url: str, known: KnownAnswer, model: str) -> str:
    seen = _complete(gateway_url, request_body(known, model), known.timeout_s, "known-answer")
    compare(known, seen)
    return seen


def check_sampled(gateway_url: str, known: KnownAnswer, model: str, greedy: str) -> None:
    """The sampled probe (module docstring): `greedy` is the known-answer check's answer."""
    samples = []
    for seed in SAMPLED_SEEDS:
        body = {
            **request_body(known, model),
            "temperature": SAMPLED_TEMPERATURE,
            "seed": seed,
            "max_tokens": SAMPLED_MAX_TOKENS,
        }
        samples.append(_complete(gateway_url, body, known.timeout_s, "sampled-probe"))
        if samples[-1] != greedy:
            return  # sampling works: one differing sample is enough
    problem = sampled_refusal(greedy, samples)
    if problem is not None:
        raise Refused("sampled-probe", problem)
