"""The client's GPU policy (tdxattest.core.gpu_policy) over the two real Hopper reports and chains
in tests/fixtures/gpu-evidence, and over the TEST GPU (tdxattest.testing.testgpu) where a fresh
nonce or a changed measurement needs a new signature. Every refusal names its check."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace

import pytest

from tdxattest.core.errors import InputError
from tdxattest.core.gpu_evidence import parse_gpu_report
from tdxattest.core.gpu_policy import (
    MAX_GPUS,
    CcState,
    EvidenceDoc,
    GpuItem,
    GpuPolicy,
    evaluate_gpus,
    gpu_policy_from_mapping,
    parse_evidence_doc,
    parse_reference,
)
from tdxattest.core.pins import GpuExpectation, StackPins
from tdxattest.core.policy import DEFAULT_POLICY, policy_from_mapping, with_stack_pins
from tdxattest.testing.testgpu import TestGpu
from tests.support.nvml_standin import FIXTURE_NONCE as NONCE1
from tests.support.nvml_standin import GPU_FIXTURES as GPU

NONCE2 = bytes.fromhex("87d8e24ab336adafe228d49e83d745f6dba4ae505372b6a5704820856b343fec")
PROD = CcState("prod", True, False)
REPORT1 = (GPU / "hopperAttestationReport.txt").read_text().strip()
CHAIN1 = (GPU / "hopper_cert_chain_case1.txt").read_bytes()
REPORT2 = (GPU / "hopper_coco_report1.txt").read_text().strip()
CHAIN2 = (GPU / "hopper_coco_certs1.txt").read_bytes()
CLAIMS = json.loads((GPU / "hopperAttestationReport-claims.txt").read_text())
# The golden set of report 1: every block its GPU measured (trustee's claims name the same values).
GOLDEN = parse_reference({k: v for k, v in CLAIMS["measurements"].items() if set(v) != {"0"}}, "golden")
PINNED = GpuPolicy(required=True, count=1, vbios=("96.00.9F.00.01",), driver=("550.90.07",), reference=GOLDEN)


def doc(*items: tuple[bytes | str, bytes], nonce: bytes = NONCE1, cc: CcState = PROD) -> EvidenceDoc:
    return EvidenceDoc(nonce, cc, tuple(GpuItem(bytes.fromhex(r) if isinstance(r, str) else r, c) for r, c in items))


def failed(verdict) -> list[str]:
    return [f.check for f in verdict.failures]


@pytest.fixture(scope="module")
def gpu() -> TestGpu:
    return TestGpu.create(REPORT1)


def test_signed_versions_and_fwid_come_from_the_reports_opaque_data() -> None:
    one, two = parse_gpu_report(REPORT1), parse_gpu_report(REPORT2)
    assert (one.driver_version, one.vbios_version) == ("550.90.07", "96.00.9f.00.01")
    assert (
        one.driver_version == CLAIMS["config"]["driver_version"]
        and one.vbios_version == CLAIMS["config"]["vbios_version"]
    )
    assert one.fwid is not None and one.fwid.hex() == CLAIMS["config"]["fwid"]
    assert (two.driver_version, two.vbios_version) == ("580.95.05", "96.00.74.00.1a")


def test_real_report_with_pins_and_golden_set_is_accepted() -> None:
    verdict = evaluate_gpus(doc((REPORT1, CHAIN1)), NONCE1, PINNED, time.time())
    assert verdict.accepted, verdict.failures
    assert verdict.summary() == {
        "verdict": "accepted",
        "count": 1,
        "vbios": ["96.00.9f.00.01"],
        "driver": ["550.90.07"],
        "evidence_sha256": doc((REPORT1, CHAIN1)).digest().hex(),
    }
    outcomes = {c.check: c.outcome for c in verdict.checks}
    assert outcomes["gpu.measurement_mismatch"] == outcomes["gpu.vbios_not_pinned"] == "pass"


@pytest.mark.parametrize(
    ("chain", "check"),
    [
        ("hopper_cert_chain_case2.txt", "gpu.chain_too_short"),
        ("hopper_cert_chain_case3.txt", "gpu.chain_invalid"),
        ("hopper_cert_chain_case4.txt", "gpu.leaf_missing_fwid"),
        ("hopper_coco_certs1.txt", "gpu.signature_invalid"),  # another GPU's chain
    ],
)
def test_broken_chains_are_refused_by_name(chain: str, check: str) -> None:
    verdict = evaluate_gpus(doc((REPORT1, (GPU / chain).read_bytes())), NONCE1, PINNED, time.time())
    assert failed(verdict) == [check]


def test_a_flipped_measurement_breaks_the_real_signature() -> None:
    raw = bytearray(bytes.fromhex(REPORT1))
    raw[37 + 8 + 7] ^= 0x01  # the first byte of block 1's value
    assert failed(evaluate_gpus(doc((bytes(raw), CHAIN1)), NONCE1, PINNED, time.time())) == ["gpu.signature_invalid"]


def test_a_replayed_report_under_a_new_nonce_is_refused() -> None:
    fresh = os.urandom(32)
    verdict = evaluate_gpus(doc((REPORT1, CHAIN1), nonce=fresh), fresh, PINNED, time.time())
    assert failed(verdict) == ["gpu.nonce_mismatch"]
    assert verdict.failures[0].seen == NONCE1.hex()
    # The served document's own nonce must be the one the client derived, too.
    assert failed(evaluate_gpus(doc((REPORT1, CHAIN1)), fresh, PINNED, time.time())) == ["gpu.nonce_mismatch"]


def test_evidence_from_another_gpu_is_refused() -> None:
    # The CoCo CI GPU's own (valid) report and chain: another device, another driver and VBIOS.
    verdict = evaluate_gpus(doc((REPORT2, CHAIN2), nonce=NONCE2), NONCE2, PINNED, time.time())
    # It also measures blocks report 1's GPU left at zero: the golden set has no value for them.
    assert failed(verdict) == ["gpu.vbios_not_pinned", "gpu.driver_not_pinned", "gpu.reference_incomplete"]


def test_the_test_gpu_signs_fresh_nonces_with_its_test_root_only(gpu: TestGpu) -> None:
    nonce = os.urandom(32)
    policy = replace(PINNED, root_pem=gpu.root_pem)
    assert evaluate_gpus(doc((gpu.report(nonce), gpu.chain_pem), nonce=nonce), nonce, policy, time.time()).accepted
    # Against NVIDIA's pinned root the TEST chain is refused.
    verdict = evaluate_gpus(doc((gpu.report(nonce), gpu.chain_pem), nonce=nonce), nonce, PINNED, time.time())
    assert failed(verdict) == ["gpu.untrusted_root"]


def test_a_changed_measurement_signed_by_the_gpu_misses_the_golden_set(gpu: TestGpu) -> None:
    nonce = os.urandom(32)
    changed = gpu.with_measurement(10, bytes(48))
    verdict = evaluate_gpus(
        doc((changed.report(nonce), gpu.chain_pem), nonce=nonce),
        nonce,
        replace(PINNED, root_pem=gpu.root_pem),
        time.time(),
    )
    assert failed(verdict) == ["gpu.measurement_mismatch"]
    assert verdict.failures[0].expected == {"10": CLAIMS["measurements"]["10"]}


def test_versions_must_match_the_pins(gpu: TestGpu) -> None:
    nonce = os.urandom(32)
    newer = gpu.with_versions(driver="550.163.01", vbios="96.00.9F.00.02")
    policy = replace(PINNED, root_pem=gpu.root_pem, reference={})
    verdict = evaluate_gpus(
        doc((newer.report(nonce), gpu.chain_pem), nonce=nonce), nonce, replace(policy, dev=True), time.time()
    )
    assert failed(verdict) == ["gpu.vbios_not_pinned", "gpu.driver_not_pinned"]
    assert [f.seen for f in verdict.failures] == ["96.00.9f.00.02", "550.163.01"]


def test_outside_dev_missing_pins_and_reference_are_refused(gpu: TestGpu) -> None:
    nonce = os.urandom(32)
    bare = GpuPolicy(required=True, root_pem=gpu.root_pem)
    item = (gpu.report(nonce), gpu.chain_pem)
    assert failed(evaluate_gpus(doc(item, nonce=nonce), nonce, bare, time.time())) == [
        "gpu.vbios_not_pinned",
        "gpu.driver_not_pinned",
        "gpu.reference_missing",
    ]
    verdict = evaluate_gpus(doc(item, nonce=nonce), nonce, replace(bare, dev=True), time.time())
    assert verdict.accepted
    assert {c.check for c in verdict.checks if c.outcome == "not_checked"} >= {
        "gpu.vbios_not_pinned",
        "gpu.reference_missing",
    }


@pytest.mark.parametrize(
    ("cc", "checks"),
    [
        (CcState("prod", False, False), ["gpu.cc_off"]),
        (CcState("prod", True, True), ["gpu.cc_devtools"]),
        (CcState("sim", True, False), ["gpu.cc_environment"]),
    ],
)
def test_cc_mode_must_be_on_and_never_devtools_outside_dev(gpu: TestGpu, cc: CcState, checks: list[str]) -> None:
    nonce = os.urandom(32)
    policy = replace(PINNED, root_pem=gpu.root_pem)
    assert (
        failed(
            evaluate_gpus(doc((gpu.report(nonce), gpu.chain_pem), nonce=nonce, cc=cc), nonce, policy, 0 + time.time())
        )
        == checks
    )
    dev = evaluate_gpus(
        doc((gpu.report(nonce), gpu.chain_pem), nonce=nonce, cc=cc), nonce, replace(policy, dev=True), time.time()
    )
    assert failed(dev) == (["gpu.cc_off"] if not cc.enabled else [])


def test_count_duplicates_and_missing_evidence(gpu: TestGpu) -> None:
    nonce = os.urandom(32)
    policy = replace(PINNED, root_pem=gpu.root_pem, count=2)
    item = (gpu.report(nonce), gpu.chain_pem)
    assert failed(evaluate_gpus(doc(item, nonce=nonce), nonce, policy, time.time())) == ["gpu.count_mismatch"]
    assert failed(evaluate_gpus(doc(item, item, nonce=nonce), nonce, policy, time.time())) == ["gpu.duplicate_device"]
    other = TestGpu.create(REPORT1)
    two = doc(item, (other.report(nonce), other.chain_pem), nonce=nonce)
    assert failed(evaluate_gpus(two, nonce, policy, time.time())) == ["gpu.untrusted_root"]  # GPU 1's own TEST root
    assert failed(evaluate_gpus(None, nonce, PINNED, time.time())) == ["gpu.evidence_missing"]
    assert evaluate_gpus(None, nonce, replace(PINNED, dev=True), time.time()).accepted  # the dev stand-in
    assert evaluate_gpus(None, nonce, GpuPolicy(), time.time()).accepted


def test_the_digest_covers_every_report_chain_and_the_cc_state(gpu: TestGpu) -> None:
    nonce = os.urandom(32)
    base = doc((gpu.report(nonce), gpu.chain_pem), nonce=nonce)
    assert base.digest() == parse_evidence_doc(json.loads(json.dumps(base.to_json()))).digest()
    changed = [
        replace(base, cc=CcState("prod", True, True)),
        replace(base, nonce=os.urandom(32)),
        replace(base, gpus=(GpuItem(gpu.report(nonce, responder_nonce=b"\1" * 32), gpu.chain_pem),)),
        replace(base, gpus=base.gpus * 2),
    ]
    assert len({base.digest(), *(d.digest() for d in changed)}) == 5


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda d: d.update(version=1), "gpu_evidence: an object with version 2"),
        (lambda d: d.update(nonce="00"), "gpu_evidence.nonce"),
        (lambda d: d.update(cc={"enabled": "yes"}), "gpu_evidence.cc"),
        (lambda d: d.update(gpus=[]), "gpu_evidence.gpus"),
        (lambda d: d.update(gpus=d["gpus"] * (MAX_GPUS + 1)), "gpu_evidence.gpus"),
        (lambda d: d["gpus"][0].update(evidence="ab" * 0x2001), "gpu_evidence.gpus[0].evidence"),
        (lambda d: d["gpus"][0].update(evidence="zz"), "gpu_evidence.gpus[0].evidence"),
        (lambda d: d["gpus"][0].update(certificate="x" * 20000), "gpu_evidence.gpus[0].certificate"),
    ],
)
def test_unusable_evidence_documents_are_refused_by_key(mutate, key: str) -> None:
    wire = doc((REPORT1, CHAIN1)).to_json()
    mutate(wire)
    with pytest.raises(InputError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse_evidence_doc(wire)


def test_policy_file_gpu_section_and_stack_pins_merge(tmp_path) -> None:
    root = tmp_path / "root.pem"
    root.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    policy = policy_from_mapping(
        {"gpu": {"reference": {"10": CLAIMS["measurements"]["10"]}, "root_ca": str(root), "vbios": "96.00.9F.00.01"}}
    )
    assert policy.gpu.reference == {10: (bytes.fromhex(CLAIMS["measurements"]["10"]),)} and not policy.gpu.required
    assert policy.gpu.root_pem == root.read_bytes() and policy.gpu.vbios == ("96.00.9F.00.01",)
    stack = StackPins(gpu=GpuExpectation(count=2, vbios=("96.00.9F.00.01",), driver=("550.163.01",), mode="on"))
    assert StackPins.from_json(stack.to_json()).gpu == stack.gpu
    merged = with_stack_pins(policy, stack).gpu
    assert (merged.required, merged.count, merged.driver, merged.dev) == (True, 2, ("550.163.01",), False)
    assert merged.reference == policy.gpu.reference  # the policy file keeps its reference values
    devtools = GpuExpectation(count=2, vbios=("96.00.9F.00.01",), driver=("550.163.01",), mode="devtools")
    dev = with_stack_pins(DEFAULT_POLICY, replace(stack, gpu=devtools)).gpu
    assert dev.dev
    assert with_stack_pins(DEFAULT_POLICY, StackPins()).gpu == DEFAULT_POLICY.gpu


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"colour": 1}, "policy.gpu: keys among"),
        ({"required": "yes"}, "policy.gpu.required"),
        ({"count": 0}, "policy.gpu.count"),
        ({"vbios": []}, "policy.gpu.vbios"),
        ({"reference": {"0": "00" * 48}}, "policy.gpu.reference: block indices"),
        ({"reference": {"3": "abc"}}, "policy.gpu.reference.3"),
    ],
)
def test_bad_gpu_policy_sections_name_the_key(section: dict, key: str) -> None:
    with pytest.raises(InputError, match=key):
        gpu_policy_from_mapping(section)


def test_a_partial_golden_set_is_refused_not_half_checked(gpu: TestGpu) -> None:
    nonce = os.urandom(32)
    only_10 = replace(PINNED, root_pem=gpu.root_pem, reference={10: GOLDEN[10]})
    changed = gpu.with_measurement(5, bytes(range(48)))  # a block the partial set does not list
    verdict = evaluate_gpus(doc((changed.report(nonce), gpu.chain_pem), nonce=nonce), nonce, only_10, time.time())
    assert failed(verdict) == ["gpu.reference_incomplete"]
    assert "5" in verdict.failures[0].seen


def test_the_fwid_the_gpu_signed_must_be_its_certificates(gpu: TestGpu) -> None:
    nonce = os.urandom(32)
    policy = replace(PINNED, root_pem=gpu.root_pem)
    verdict = evaluate_gpus(
        doc((gpu.with_fwid(bytes(48)).report(nonce), gpu.chain_pem), nonce=nonce), nonce, policy, time.time()
    )
    assert failed(verdict) == ["gpu.fwid_mismatch"]


def test_one_device_twice_is_found_whatever_its_pem_layout(gpu: TestGpu) -> None:
    nonce = os.urandom(32)
    relaid = b"\n".join(line for line in gpu.chain_pem.splitlines()) + b"\n\n"  # other line breaks, same DER
    assert relaid != gpu.chain_pem
    two = doc((gpu.report(nonce), gpu.chain_pem), (gpu.report(nonce), relaid), nonce=nonce)
    policy = replace(PINNED, root_pem=gpu.root_pem, count=2)
    assert failed(evaluate_gpus(two, nonce, policy, time.time())) == ["gpu.duplicate_device"]


@pytest.mark.parametrize(
    ("mutate", "seen"),
    [
        (lambda r: r[: 37 + 8 + 5] + bytes([r[37 + 8 + 5] + 1]) + r[37 + 8 + 6 :], "bytes"),  # value size off by one
        (lambda r: r[: 37 + 8 + 55] + bytes([1]) + r[37 + 8 + 56 :], "block 1 twice"),  # block 2 renumbered 1
    ],
)
def test_measurement_blocks_are_walked_exactly(mutate, seen: str) -> None:
    from tdxattest.core.gpu_evidence import GpuEvidenceError

    raw = bytes.fromhex(REPORT1)
    with pytest.raises(GpuEvidenceError) as info:
        parse_gpu_report(mutate(raw))
    assert info.value.check == "gpu.report_malformed" and seen in info.value.seen
