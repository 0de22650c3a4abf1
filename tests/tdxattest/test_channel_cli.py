"""The commands a user runs: `python -m tdxattest gateway` (software-test quotes, as in the dev
stack), `python -m tdxattest proxy`, and the stand-in vLLM, as separate processes on loopback,
with the official `openai` client through them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import openai
import pytest

from tdxattest.testing.standin import StandinConfig, known_answer
from tdxattest.testing.testpki import TdIdentity
from tests.support.paths import REPO


def spawn(stack: ExitStack, *args: str) -> dict:
    """Start `python -m ...`, wait for its one JSON line, stop it when the test ends."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )

    def stop() -> None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    stack.callback(stop)
    assert proc.stdout is not None and proc.stderr is not None  # both PIPE
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"{args[0]} did not start: {proc.stderr.read()}")
    return json.loads(line)


def software_gateway(stack: ExitStack, pki_dir: str, *extra: str) -> dict:
    """The stand-in vLLM and `tdxattest gateway --quote-source software-test` in front of it (the dev
    stack's TD without TDX); the gateway's JSON line."""
    upstream = spawn(stack, "tdxattest.testing.standin", "--listen", "127.0.0.1:0")["listening"]
    argv = ["gateway", "--listen", "127.0.0.1:0", "--upstream", upstream, "--quote-source", "software-test"]
    return spawn(stack, "tdxattest", *argv, "--test-pki-dir", pki_dir, *extra)


def test_gateway_and_proxy_commands(tmp_path: Path) -> None:
    pins = tmp_path / "pins.json"
    pins.write_text(json.dumps(TdIdentity().stack_pins().to_json()))
    pki = tmp_path / "pki"
    audit = tmp_path / "audit.jsonl"
    with ExitStack() as stack:
        gw = software_gateway(stack, str(pki))
        assert gw["quote_source"] == "software-test-pki" and len(gw["tls_spki_sha256"]) == 64
        assert oct(pki.stat().st_mode & 0o777) == "0o700"
        proxy = spawn(
            stack,
            "tdxattest",
            "proxy",
            "--upstream",
            gw["listening"],
            "--pins",
            str(pins),
            "--collateral",
            str(pki / "collateral.json"),
            "--root-ca",
            str(pki / "root-ca.der"),
            "--listen",
            "127.0.0.1:0",
            "--audit",
            str(audit),
        )
        assert proxy["root_ca"].startswith("TEST")
        client = openai.OpenAI(base_url=proxy["listening"] + "/v1", api_key="x", max_retries=0, timeout=20)
        done = client.chat.completions.create(
            model=StandinConfig().model, messages=[{"role": "user", "content": "Say OK"}], max_tokens=2
        )
        assert done.choices[0].message.content == known_answer("Say OK", max_tokens=2)
        (record,) = [json.loads(line) for line in audit.read_text().splitlines()]
        assert record["verdict"] == "accepted" and record["tls_spki_sha256"] == gw["tls_spki_sha256"]


def test_proxy_without_the_test_root_refuses_software_quotes(tmp_path: Path) -> None:
    """The TEST PKI is trusted only when handed over explicitly: with Intel's root, refused."""
    pins = tmp_path / "pins.json"
    pins.write_text(json.dumps(TdIdentity().stack_pins().to_json()))
    pki = tmp_path / "pki"
    with ExitStack() as stack:
        gw = software_gateway(stack, str(pki))
        proxy = spawn(
            stack,
            "tdxattest",
            "proxy",
            "--upstream",
            gw["listening"],
            "--pins",
            str(pins),
            "--collateral",
            str(pki / "collateral.json"),
            "--listen",
            "127.0.0.1:0",
            "--audit",
            str(tmp_path / "audit.jsonl"),
        )
        client = openai.OpenAI(base_url=proxy["listening"] + "/v1", api_key="x", max_retries=0, timeout=20)
        with pytest.raises(openai.APIStatusError) as info:
            client.models.list()
        assert info.value.status_code == 502
        body = info.value.body
        assert isinstance(body, dict) and body["code"].startswith(("collateral.", "pck.")), body


def _dev_pins(tmp_path: Path, rtmr3: bytes, *, tdx: bool = False) -> Path:
    """The `pins` a dev stack without TDX exports: `tdx: false`, MRTD/RTMR0-2 not pinned, RTMR3 pinned."""
    from tdxattest.core.pins import RegisterPin

    pins = TdIdentity(rtmr3=rtmr3).stack_pins()
    if not tdx:  # what components/render/pins.without_tdx makes of a dev stack's pins
        unpinned = RegisterPin(None, "no TDX")
        pins = replace(pins, tdx=False, mrtd=unpinned, rtmr0=unpinned, rtmr1=unpinned, rtmr2=unpinned)
    path = tmp_path / f"pins-{'tdx' if tdx else 'dev'}-{rtmr3.hex()[:8]}.json"
    path.write_text(json.dumps(pins.to_json()))
    return path


def test_dev_test_root_with_the_gateways_test_rtmr3(tmp_path: Path) -> None:
    """The dev stack's TD without TDX, as its image runs it: the gateway's TEST quotes carry the
    agent's software RTMR3, and a proxy on the dev pins with --accept-dev-test-root needs no
    collateral or root of its own. The wrong RTMR3 is still refused."""
    rtmr3 = bytes(range(48))
    audit = tmp_path / "audit.jsonl"
    with ExitStack() as stack:
        gw = software_gateway(stack, str(tmp_path / "pki"), "--test-rtmr3", rtmr3.hex())
        for pins, ok in ((_dev_pins(tmp_path, rtmr3), True), (_dev_pins(tmp_path, bytes(48)), False)):
            argv = ["--upstream", gw["listening"], "--pins", str(pins), "--accept-dev-test-root"]
            proxy = spawn(stack, "tdxattest", "proxy", *argv, "--listen", "127.0.0.1:0", "--audit", str(audit))
            assert proxy["root_ca"].startswith("TEST, served by the dev gateway")
            client = openai.OpenAI(base_url=proxy["listening"] + "/v1", api_key="x", max_retries=0, timeout=20)
            if ok:
                assert [m.id for m in client.models.list().data] == [StandinConfig().model]
            else:
                with pytest.raises(openai.APIStatusError) as info:
                    client.models.list()
                body = info.value.body
                assert info.value.status_code == 502 and isinstance(body, dict) and body["code"] == "pin.rtmr3", body


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--pins", "TDX"], "pins TDs that run with TDX"),
        (["--pins", "DEV", "--root-ca", "DEV"], "drop --root-ca"),
        (["--pins", "DEV", "--pccs", "https://127.0.0.1:9"], "not allowed with argument"),
    ],
)
def test_dev_test_root_is_refused_outside_dev_pins(tmp_path: Path, extra: list[str], message: str) -> None:
    files = {"TDX": str(_dev_pins(tmp_path, bytes(48), tdx=True)), "DEV": str(_dev_pins(tmp_path, bytes(48)))}
    argv = [sys.executable, "-m", "tdxattest", "proxy", "--upstream", "https://127.0.0.1:9", "--accept-dev-test-root"]
    argv += [files.get(a, a) for a in extra] + ["--listen", "127.0.0.1:0", "--audit", str(tmp_path / "a.jsonl")]
    done = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_gateway_refuses_a_test_rtmr3_without_software_quotes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tdxattest", "gateway", "--listen", "127.0.0.1:0", "--test-rtmr3", "00" * 48],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 2 and "--test-rtmr3 is for --quote-source software-test only" in done.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--listen", "0.0.0.0:8080"], "loopback"),
        (["--upstream", "http://192.0.2.1:8443"], "https://HOST:PORT"),
    ],
)
def test_proxy_refuses_unsafe_options(tmp_path: Path, args: list[str], message: str) -> None:
    pins = tmp_path / "pins.json"
    pins.write_text(json.dumps(TdIdentity().stack_pins().to_json()))
    base = {
        "--upstream": "https://127.0.0.1:9",
        "--pins": str(pins),
        "--collateral": str(pins),
        "--listen": "127.0.0.1:0",
        "--audit": str(tmp_path / "a.jsonl"),
    }
    base.update(dict(zip(args[::2], args[1::2])))
    argv = [sys.executable, "-m", "tdxattest", "proxy"] + [x for kv in base.items() for x in kv]
    done = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_gateway_refuses_to_start_outside_a_td() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tdxattest", "gateway", "--listen", "127.0.0.1:0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if Path("/sys/kernel/config/tsm/report").is_dir():
        pytest.skip("this machine has configfs-tsm")
    assert done.returncode == 1 and "gateway.quote_unavailable" in done.stderr and "CONFIG_TSM_REPORTS" in done.stderr


def test_gateway_and_proxy_commands_with_a_gpu_behind_nvml(
    tmp_path: Path, standin_lib: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TD's GPU path as the image runs it: the gateway asks `python -m guest_agent.nvml` for
    fresh evidence per client nonce, NVML (the stand-in library) has the TEST GPU sign it, and
    the proxy command verifies it with the policy file's `gpu:` section and the stack's GPU pins."""
    from tdxattest.core.pins import GpuExpectation
    from tdxattest.testing.testgpu import TestGpu
    from tests.support.nvml_standin import GPU_FIXTURES

    gpu_state = tmp_path / "gpu"
    gpu = TestGpu.create((GPU_FIXTURES / "hopperAttestationReport.txt").read_text())
    gpu.save(gpu_state / "0")
    claims = json.loads((GPU_FIXTURES / "hopperAttestationReport-claims.txt").read_text())
    pins = tmp_path / "pins.json"
    expectation = GpuExpectation(count=1, vbios=("96.00.9F.00.01",), driver=("550.90.07",), mode="on")
    pins.write_text(json.dumps(replace(TdIdentity().stack_pins(), gpu=expectation).to_json()))
    policy = tmp_path / "policy.yaml"
    golden = {k: v for k, v in claims["measurements"].items() if set(v) != {"0"}}
    policy.write_text(json.dumps({"gpu": {"root_ca": str(gpu_state / "0/root.pem"), "reference": golden}}))
    boot = tmp_path / "gpu-evidence.json"  # what the agent writes once it verified the GPUs at boot
    boot.write_text(json.dumps({"version": 1, "gpus": [{"certificate": gpu.chain_pem.decode()}]}))
    for key, value in {
        "TDX_VLLM_NVML_LIBRARY": str(standin_lib),
        "NVML_STANDIN_CHAIN": str(gpu_state / "%u/chain.pem"),
        "NVML_STANDIN_SIGNER": f"{sys.executable} -m tdxattest.testing.testgpu sign --state {gpu_state}",
        "NVML_STANDIN_STATE": str(tmp_path),
    }.items():
        monkeypatch.setenv(key, value)  # the gateway's children inherit it
    pki = tmp_path / "pki"
    audit = tmp_path / "audit.jsonl"
    with ExitStack() as stack:
        upstream = spawn(stack, "tdxattest.testing.standin", "--listen", "127.0.0.1:0")["listening"]
        collect = [sys.executable, "-m", "guest_agent.nvml", "--nonce", "{nonce}"]
        gw = spawn(
            stack, "tdxattest", "gateway", "--listen", "127.0.0.1:0", "--upstream", upstream,
            "--quote-source", "software-test", "--test-pki-dir", str(pki),
            "--gpu-evidence", str(boot), "--gpu-collect", json.dumps(collect),
        )  # fmt: skip
        proxy = spawn(
            stack, "tdxattest", "proxy", "--upstream", gw["listening"], "--pins", str(pins),
            "--policy", str(policy), "--collateral", str(pki / "collateral.json"),
            "--root-ca", str(pki / "root-ca.der"), "--listen", "127.0.0.1:0", "--audit", str(audit),
        )  # fmt: skip
        client = openai.OpenAI(base_url=proxy["listening"] + "/v1", api_key="x", max_retries=0, timeout=30)
        done = client.chat.completions.create(
            model=StandinConfig().model, messages=[{"role": "user", "content": "Say OK"}], max_tokens=2
        )
        assert done.choices[0].message.content == known_answer("Say OK", max_tokens=2)
        (record,) = [json.loads(line) for line in audit.read_text().splitlines()]
        assert record["verdict"] == "accepted" and record["gpu"]["verdict"] == "accepted"
        assert record["gpu"]["driver"] == ["550.90.07"]
        # NVML was asked for a report over a fresh nonce (the proxy accepted it: it was the one derived
        # from this connection's key and the proxy's nonce, or gpu.nonce_mismatch would have refused).
        assert len((tmp_path / "nonce-0.bin").read_bytes()) == 32
