"""The checks of vLLM before the agent reports ready, beyond the known answer: which model runner
its log shows (vllm #57224), and a sampled probe that a zeroed-sampling fault fails (vllm #50671),
against a completions server on loopback that either samples or always answers greedily."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from guest_agent.config import KnownAnswer
from guest_agent.knownanswer import (
    SAMPLED_SEEDS,
    check_known_answer,
    check_runner,
    check_sampled,
    runner_refusal,
    sampled_refusal,
)
from guest_agent.server import VLLM_ENV
from guest_agent.system import Refused

# vLLM's own log lines (format `(<process>) LEVEL MM-DD HH:MM:SS [file.py:line] message`), as they
# appear in published server logs of the V1 runner, and the line gpu_worker.py logs for the V2 one.
V1_LOG = (
    "(EngineCore_DP0 pid=125) INFO 05-03 17:11:09 [gpu_model_runner.py:4777] Starting to load model /m...\n"
    "(EngineCore_DP0 pid=125) INFO 05-03 17:11:40 [gpu_model_runner.py:4820] Model loading took 10.46 GiB\n"
)
V2_LOG = "(EngineCore_DP0 pid=125) INFO 05-03 17:11:08 [gpu_worker.py:385] Using V2 Model Runner\n" + V1_LOG.replace(
    "gpu_model_runner.py", "model_runner.py"
)
KNOWN = KnownAnswer(prompt="The capital of France is", expect=" Paris", max_tokens=8, timeout_s=10)
GREEDY = " Paris. It is the capital"


def test_the_runner_is_read_from_vllms_log(tmp_path: Path) -> None:
    assert runner_refusal(V1_LOG) is None
    # An older vLLM on its V0 engine (the line its llm_engine.py logs) has no V2 runner to fall into.
    assert (
        runner_refusal("INFO 02-05 09:08:59 llm_engine.py:234] Initializing a V0 LLM engine (v0.7.3) with config")
        is None
    )
    assert "vllm #57224" in (runner_refusal(V2_LOG) or "")
    assert "cannot be told" in (runner_refusal("INFO something else\n") or "")
    log = tmp_path / "vllm.log"
    log.write_text(V2_LOG)
    with pytest.raises(Refused, match="vllm-runner"):
        check_runner(log)
    with pytest.raises(Refused, match="vLLM's log at"):
        check_runner(tmp_path / "missing.log")
    # The variable the check relies on, and the log level that makes the V1 lines appear.
    assert VLLM_ENV["VLLM_USE_V2_MODEL_RUNNER"] == "0" and VLLM_ENV["VLLM_LOGGING_LEVEL"] == "INFO"


def test_sampled_refusal_is_all_samples_greedy() -> None:
    assert sampled_refusal(GREEDY, [GREEDY] * 4) is not None
    assert sampled_refusal(GREEDY, [GREEDY, GREEDY, " Paris, which", GREEDY]) is None


class Completions(ThreadingHTTPServer):
    """/v1/completions: greedy at temperature 0; at temperature > 0 a seed-dependent answer, or the
    greedy one when `zeroed` (sampling parameters read as zero)."""

    def __init__(self, zeroed: bool):
        self.zeroed = zeroed
        self.bodies: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.bodies.append(body)
                sampled = body["temperature"] > 0 and not outer.zeroed
                text = f" Paris, seed {body['seed']}" if sampled else GREEDY
                data = json.dumps({"choices": [{"text": text}]}).encode()
                self.send_response(200)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def completions(request) -> Iterator[Completions]:
    server = Completions(zeroed=request.param)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("completions", [False], indirect=True)
def test_a_working_sampler_passes_after_one_differing_sample(completions: Completions) -> None:
    greedy = check_known_answer(completions.url, KNOWN, "m")
    check_sampled(completions.url, KNOWN, "m", greedy)
    assert [b["temperature"] for b in completions.bodies] == [0, 1.5]
    assert completions.bodies[1]["seed"] == SAMPLED_SEEDS[0] and completions.bodies[1]["prompt"] == KNOWN.prompt


@pytest.mark.parametrize("completions", [True], indirect=True)
def test_zeroed_sampling_is_refused(completions: Completions) -> None:
    greedy = check_known_answer(completions.url, KNOWN, "m")  # greedy still looks right
    with pytest.raises(Refused, match=r"sampled-probe.*vllm #50671"):
        check_sampled(completions.url, KNOWN, "m", greedy)
    assert [b["seed"] for b in completions.bodies[1:]] == list(SAMPLED_SEEDS)


def test_the_gateway_gets_the_agents_collector_for_fresh_evidence() -> None:
    from guest_agent.server import gateway_argv

    collect = ("/usr/bin/python3", "-m", "guest_agent.nvml", "--nonce", "{nonce}")

    def argv(evidence: str | None) -> list[str]:
        return gateway_argv(
            "/usr/bin/python3", listen="0.0.0.0", port=8443, upstream_port=8000, quote_source="tsm",
            test_pki_dir=None, event_log="/e", gpu_evidence=evidence, gpu_collect=collect,
        )  # fmt: skip

    expected_tail = ["--gpu-evidence", "/s/gpu-evidence.json", "--gpu-collect", json.dumps(list(collect))]
    assert argv("/s/gpu-evidence.json")[-4:] == expected_tail
    assert "--gpu-collect" not in argv(None)


def test_the_gateway_refuses_verified_gpus_without_a_collector(tmp_path: Path, capsys) -> None:
    from tdxattest.cli import main

    boot = tmp_path / "gpu-evidence.json"
    from tests.support.nvml_standin import GPU_FIXTURES

    chain = (GPU_FIXTURES / "hopper_cert_chain_case1.txt").read_text()
    boot.write_text(json.dumps({"version": 1, "gpus": [{"certificate": chain}]}))
    args = [
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--quote-source",
        "software-test",
        "--test-pki-dir",
        str(tmp_path / "p"),
    ]
    assert main([*args, "--gpu-evidence", str(boot)]) == 2
    assert "--gpu-collect" in capsys.readouterr().err
    assert main([*args, "--gpu-evidence", str(boot), "--gpu-collect", '["nvml"]']) == 2
    assert "{nonce}" in capsys.readouterr().err
    boot.write_text(json.dumps({"version": 1, "gpus": [{"certificate": "-----BEGIN CERTIFICATE-----"}]}))
    assert main([*args, "--gpu-evidence", str(boot), "--gpu-collect", '["nvml", "{nonce}"]']) == 2
    assert "certificate chains" in capsys.readouterr().err
