"""The attested channel with GPUs, end to end on loopback: the gateway collects fresh evidence from
a TEST GPU (tdxattest.testing.testgpu, a real H100 report's blocks re-signed over each nonce) for
every attestation, the quote binds its digest, and the verifying proxy refuses any connection whose
GPU evidence fails, with a 502 naming the GPU check and nothing forwarded to the stand-in."""

from __future__ import annotations

import base64
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import openai
import pytest

from tdxattest.channel.gateway import Gateway
from tdxattest.core.gpu_evidence import parse_gpu_report
from tdxattest.core.gpu_policy import CcState, EvidenceDoc, GpuItem, GpuPolicy, parse_reference
from tdxattest.core.pins import GpuExpectation
from tdxattest.core.policy import DEFAULT_POLICY, Policy
from tdxattest.testing.standin import StandinConfig
from tdxattest.testing.testgpu import TestGpu, save_gpus
from tests.support.channel import Channel, LoopThread, start_channel
from tests.support.nvml_standin import GPU_FIXTURES

MODEL = StandinConfig().model
TEMPLATE = (GPU_FIXTURES / "hopperAttestationReport.txt").read_text().strip()
CLAIMS = json.loads((GPU_FIXTURES / "hopperAttestationReport-claims.txt").read_text())
GOLDEN = parse_reference({k: v for k, v in CLAIMS["measurements"].items() if set(v) != {"0"}}, "golden")
PINNED = GpuExpectation(count=1, vbios=("96.00.9F.00.01",), driver=("550.90.07",), mode="on")


@pytest.fixture(scope="module")
def gpu() -> TestGpu:
    return TestGpu.create(TEMPLATE)


def policy_for(gpu: TestGpu) -> Policy:
    """The client's policy: the TEST GPU root instead of NVIDIA's, and the golden set."""
    return replace(DEFAULT_POLICY, gpu=GpuPolicy(reference=GOLDEN, reference_source="golden", root_pem=gpu.root_pem))


@pytest.fixture
def start(loop: LoopThread, tmp_path: Path, pki, gpu: TestGpu):
    started: list[Channel] = []

    def make(served: TestGpu | None = gpu, *, cc: dict | None = None, **kw) -> Channel:
        state = None
        if served is not None:
            state = tmp_path / f"gpus-{len(started)}"
            save_gpus([served], state, cc)
        kw.setdefault("policy", policy_for(gpu))
        kw.setdefault("pinned_gpu", PINNED)
        ch = loop.run(start_channel(tmp_path, pki, gpus=state, **kw))
        started.append(ch)
        return ch

    yield make
    for ch in started:
        loop.run(ch.stop())


def chat(ch: Channel, **kw) -> str:
    client = openai.OpenAI(base_url=ch.proxy_url + "/v1", api_key="test", max_retries=0, timeout=30, **kw)
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say OK"}])
    return answer.choices[0].message.content or ""


def refused(ch: Channel, check: str) -> dict:
    with pytest.raises(openai.APIStatusError) as info:
        chat(ch)
    assert info.value.status_code == 502
    error = json.loads(info.value.response.text)["error"]
    assert error["code"] == check, error
    assert ch.standin.requests == 0  # nothing was forwarded
    return error


def test_fresh_gpu_evidence_is_verified_per_connection_and_audited(start) -> None:
    ch = start()
    assert chat(ch)
    assert ch.gateway.gpu_collections == 1
    (record,) = ch.audit_records()
    assert record["verdict"] == "accepted"
    assert record["gpu"]["verdict"] == "accepted" and record["gpu"]["count"] == 1
    assert record["gpu"]["driver"] == ["550.90.07"] and record["gpu"]["vbios"] == ["96.00.9f.00.01"]


def test_a_measurement_off_the_golden_set_is_refused(start, gpu: TestGpu) -> None:
    error = refused(start(gpu.with_measurement(10, bytes(48))), "gpu.measurement_mismatch")
    assert "golden" in error["failures"][0]["detail"]


def test_a_driver_off_the_pins_is_refused(start, gpu: TestGpu) -> None:
    error = refused(start(gpu.with_versions(driver="535.104.05")), "gpu.driver_not_pinned")
    assert error["failures"][0]["seen"] == "535.104.05"


def test_cc_devtools_is_refused_outside_dev(start) -> None:
    refused(start(cc={"environment": "prod", "enabled": True, "devtools": True}), "gpu.cc_devtools")


def test_a_gpu_chain_to_another_root_is_refused(start) -> None:
    refused(start(TestGpu.create(TEMPLATE)), "gpu.untrusted_root")


class ReplayingGateway(Gateway):
    """Serves GPU evidence made for an earlier nonce (a host replaying a recorded report)."""

    async def _gpu_evidence(self, nonce: bytes):
        return await super()._gpu_evidence(b"\x07" * 32)


def test_replayed_gpu_evidence_is_refused(start) -> None:
    refused(start(gateway_cls=ReplayingGateway), "gpu.nonce_mismatch")


def swapping_gateway(other: TestGpu) -> type[Gateway]:
    class SwappingGateway(Gateway):
        """Quotes over its GPU's evidence, then serves another GPU's (fresh, valid) evidence."""

        async def attestation(self, request):
            from aiohttp import web

            answer = await super().attestation(request)
            body = json.loads(answer.body)
            nonce = bytes.fromhex(body["gpu_evidence"]["nonce"])
            cc = CcState("prod", True, False)
            body["gpu_evidence"] = EvidenceDoc(nonce, cc, (GpuItem(other.report(nonce), other.chain_pem),)).to_json()
            return web.json_response(body)

    return SwappingGateway


def test_evidence_swapped_for_another_gpus_is_refused(start, gpu: TestGpu) -> None:
    other = replace(TestGpu.create(TEMPLATE), chain_pem=gpu.chain_pem, root_pem=gpu.root_pem, key=gpu.key)
    other = other.with_fwid(bytes(48))  # same TEST root, another device's report: only the binding tells
    refused(start(gateway_cls=swapping_gateway(other)), "binding.report_data_mismatch")


def test_a_td_that_serves_no_gpu_evidence_is_refused_when_the_stack_pins_gpus(start) -> None:
    ch = start(None)
    error = refused(ch, "gpu.evidence_missing")
    assert ch.gateway.gpu_collections == 0
    assert "pins GPUs" in error["failures"][0]["expected"]


def test_per_response_quotes_carry_fresh_gpu_evidence(start) -> None:
    ch = start(require_response_quotes=True)
    assert chat(ch)
    assert ch.gateway.gpu_collections == 2  # the connection's attestation, then the response's
    (record,) = ch.audit_records()
    assert record["verdict"] == "accepted" and record["response_quote_sha256"]


def test_gateway_attaches_response_gpu_evidence_bound_to_the_request(start, loop) -> None:
    ch = start()
    import ssl
    import urllib.request

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Say OK"}]}).encode()
    req = urllib.request.Request(
        ch.gateway_url + "/v1/chat/completions",
        data=body,
        headers={"content-type": "application/json", "x-attestation": "required"},
    )
    with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
        headers = resp.headers
    evidence = json.loads(base64.b64decode(headers["x-tdx-gpu-evidence"]))
    import hashlib

    from tdxattest.channel.binding import response_gpu_nonce

    assert bytes.fromhex(evidence["nonce"]) == response_gpu_nonce(
        hashlib.sha256(body).digest(), headers["x-tdx-response-id"]
    )


def fetch_attestation(ch: Channel, nonce: bytes) -> dict:
    import ssl
    import urllib.request

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with urllib.request.urlopen(
        f"{ch.gateway_url}/.well-known/tdx-attestation?nonce={nonce.hex()}", context=ctx, timeout=30
    ) as resp:
        return json.loads(resp.read())


def test_verify_command_checks_a_recorded_attestation_with_its_gpu_evidence(
    start, pki, gpu: TestGpu, tmp_path: Path, capsys
) -> None:
    from tdxattest.cli import main
    from tdxattest.testing.testpki import TdIdentity

    ch = start()
    nonce = bytes(range(32))
    answer = tmp_path / "attestation.json"
    answer.write_text(json.dumps(fetch_attestation(ch, nonce)))
    (tmp_path / "root.der").write_bytes(pki.root_ca_der)
    (tmp_path / "gpu-root.pem").write_bytes(gpu.root_pem)
    pins = tmp_path / "stack-pins.json"
    pins.write_text(json.dumps(replace(TdIdentity().stack_pins(), gpu=PINNED).to_json()))
    golden = {k: v for k, v in CLAIMS["measurements"].items() if set(v) != {"0"}}
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps({"gpu": {"root_ca": str(tmp_path / "gpu-root.pem"), "reference": golden}}))
    common = [
        "--pins",
        str(pins),
        "--collateral",
        str(tmp_path / "collateral.json"),
        "--root-ca",
        str(tmp_path / "root.der"),
    ]
    args = ["verify", "--attestation", str(answer), *common, "--policy", str(policy), "--json"]
    assert main([*args, "--nonce", nonce.hex()]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["accepted"] and out["gpu"]["gpus"][0]["driver_version"] == "550.90.07"
    # Asked for another nonce: the quote's binding and the GPU's nonce both fail.
    assert main([*args, "--nonce", "ff" * 32]) == 1
    checks = [f["check"] for f in json.loads(capsys.readouterr().out)["failures"]]
    assert checks == ["binding.report_data_mismatch", "gpu.nonce_mismatch"]
    # Without the policy file: NVIDIA's root is the only one trusted, so the TEST GPU is refused.
    assert main(["verify", "--attestation", str(answer), *common, "--nonce", nonce.hex(), "--json"]) == 1
    checks = [f["check"] for f in json.loads(capsys.readouterr().out)["failures"]]
    assert checks == ["gpu.untrusted_root"]
    # With the root but no reference values (no golden set, no RIM in the cache): refused outside
    # dev, naming the command that imports the RIM.
    policy.write_text(json.dumps({"gpu": {"root_ca": str(tmp_path / "gpu-root.pem")}}))
    assert main([*args, "--nonce", nonce.hex()]) == 1
    (failure,) = json.loads(capsys.readouterr().out)["failures"]
    assert (
        failure["check"] == "gpu.rim_missing"
        and "collateral rim --id NV_GPU_DRIVER_GH100_550.90.07" in failure["expected"]
    )


def test_nvidia_style_rims_in_the_cache_stand_in_for_the_golden_set(start, gpu: TestGpu, tmp_path: Path) -> None:
    from tdxattest.core.rim import rim_ids
    from tdxattest.dcap.rim_store import RimStore
    from tdxattest.testing.testrim import TestRimSigner

    signer = TestRimSigner.create()
    store = RimStore(str(tmp_path / "cache"), None, signer.root_pem)
    driver_id, vbios_id = rim_ids(parse_gpu_report(TEMPLATE))
    vbios_blocks = {1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13}
    now = time.time()
    store.put(
        vbios_id,
        signer.rim(version="96.00.9F.00.01", measurements={b: v for b, v in GOLDEN.items() if b in vbios_blocks}),
        now,
    )
    store.put(
        driver_id,
        signer.rim(version="550.90.07", measurements={b: v for b, v in GOLDEN.items() if b not in vbios_blocks}),
        now,
    )
    no_golden = replace(DEFAULT_POLICY, gpu=GpuPolicy(root_pem=gpu.root_pem))
    ch = start(policy=no_golden, rims=store)
    assert chat(ch)
    # The driver RIM says another version than the GPU signed: refused before anything is forwarded.
    store.put(driver_id, signer.rim(version="550.163.01", measurements={5: [bytes(48)]}), now)
    refused(
        start(policy=no_golden, rims=RimStore(str(tmp_path / "cache"), None, signer.root_pem)),
        "gpu.rim_version_mismatch",
    )


def test_per_response_evidence_of_eight_gpus_fits_the_proxys_head_limit() -> None:
    from tdxattest.channel.http1 import MAX_HEAD_BYTES, ResponseReader

    chain = (GPU_FIXTURES / "hopper_cert_chain_case1.txt").read_bytes()
    doc = EvidenceDoc(bytes(32), CcState("prod", True, False), (GpuItem(bytes.fromhex(TEMPLATE), chain),) * 8)
    header = base64.b64encode(json.dumps(doc.to_json(), separators=(",", ":")).encode())  # as the gateway sends it
    assert 100_000 < len(header) < MAX_HEAD_BYTES - 16_384  # room for the quote and the other headers
    reader = ResponseReader()
    reader.feed(b"HTTP/1.1 200 OK\r\nx-tdx-gpu-evidence: " + header + b"\r\ncontent-length: 0\r\n\r\n")
    assert reader.headers_done


def test_a_gateway_whose_gpus_changed_since_boot_serves_no_quote(start, gpu: TestGpu, tmp_path: Path) -> None:
    class BootedWithAnotherGpu(Gateway):
        def __init__(self, config, source, tls=None):
            boot = tmp_path / "boot-evidence.json"
            other = TestGpu.create(TEMPLATE)
            boot.write_text(json.dumps({"version": 1, "gpus": [{"certificate": other.chain_pem.decode()}]}))
            super().__init__(replace(config, gpu_evidence=str(boot)), source, tls)

    ch = start(gateway_cls=BootedWithAnotherGpu)
    error = refused(ch, "attestation.unavailable")
    assert "gateway.gpu_changed" in error["failures"][0]["seen"]


@pytest.mark.parametrize(
    ("collect", "timeout", "seen"),
    [
        ((sys.executable, "-c", "import sys; sys.exit('no GPU answered')", "{nonce}"), 45.0, "no GPU answered"),
        ((sys.executable, "-c", "import time; time.sleep(30)", "{nonce}"), 0.5, "within 0.5 s"),
        ((sys.executable, "-c", "print('not json')", "{nonce}"), 45.0, "guest_agent.nvml's shape"),
    ],
)
def test_a_failing_collector_is_a_named_refusal(start, collect, timeout: float, seen: str) -> None:
    class Collector(Gateway):
        def __init__(self, config, source, tls=None):
            super().__init__(replace(config, gpu_collect=collect, gpu_collect_timeout_s=timeout), source, tls)

    started = time.monotonic()
    error = refused(start(gateway_cls=Collector), "attestation.unavailable")
    assert "gateway.gpu_evidence_unavailable" in error["failures"][0]["seen"] and seen in error["failures"][0]["seen"]
    assert time.monotonic() - started < 20  # the slow collector was killed at its timeout


def test_the_gateway_turns_away_collections_beyond_its_queue(start, loop) -> None:
    from tdxattest.channel.gateway import MAX_GPU_WAITING
    from tdxattest.channel.quote_source import QuoteUnavailable

    ch = start()
    ch.gateway._gpu_waiting = MAX_GPU_WAITING  # as if that many attestations were already waiting
    with pytest.raises(QuoteUnavailable) as info:
        loop.run(ch.gateway._gpu_evidence(bytes(32)))
    assert info.value.check == "gateway.busy" and ch.gateway.gpu_collections == 0


class StripsResponseEvidence(Gateway):
    """Collects for the connection's attestation, then serves per-response quotes without GPU
    evidence (a TD whose GPU path went away after it attested)."""

    async def _gpu_evidence(self, nonce: bytes):
        if self.gpu_collections:
            return None
        return await super()._gpu_evidence(nonce)


def test_a_per_response_quote_without_gpu_evidence_is_refused(start) -> None:
    ch = start(gateway_cls=StripsResponseEvidence, require_response_quotes=True)
    with pytest.raises(openai.APIStatusError) as info:
        chat(ch)
    error = json.loads(info.value.response.text)["error"]
    assert info.value.status_code == 502 and error["code"] == "gpu.evidence_missing"
