"""OCSP status of the GPU device chain: which certificates are asked about (on the real Hopper chain),
and the GPU policy with a TEST responder on loopback, responses kept in the cache like the CRLs."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from tdxattest.core.gpu_policy import CcState, EvidenceDoc, GpuItem, GpuPolicy, evaluate_gpus
from tdxattest.core.ocsp import OcspError, check_response, checked_pairs, ocsp_request
from tdxattest.dcap.ocsp_cache import OcspCache
from tdxattest.testing.testgpu import TestGpu
from tests.support.nvml_standin import GPU_FIXTURES

TEMPLATE = (GPU_FIXTURES / "hopperAttestationReport.txt").read_text().strip()


def test_the_ca_certificates_below_the_root_are_checked_not_the_leaf() -> None:
    chain = x509.load_pem_x509_certificates((GPU_FIXTURES / "hopper_cert_chain_case1.txt").read_bytes())
    pairs = checked_pairs(chain)
    assert [c.subject.rfc4514_string().split(",")[0] for c, _ in pairs] == [
        "CN=GH100 A01 GSP BROM",
        "C=US",  # "C=US,O=NVIDIA Corporation,CN=NVIDIA GH100 Provisioner ICA 1"
        "O=NVIDIA Corporation",  # "...,CN=NVIDIA GH100 Identity"
    ]
    assert [i.subject for _, i in pairs] == [chain[2].subject, chain[3].subject, chain[4].subject]
    request = ocsp.load_der_ocsp_request(ocsp_request(*pairs[0]))
    assert request.serial_number == chain[1].serial_number and request.hash_algorithm.name == "sha256"


class Responder(ThreadingHTTPServer):
    """POST application/ocsp-request -> the DER `answer()` gives; counts requests."""

    def __init__(self, answer):
        self.answer = answer
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                ocsp.load_der_ocsp_request(self.rfile.read(int(self.headers["content-length"])))
                outer.requests += 1
                body = outer.answer()
                self.send_response(200)
                self.send_header("content-type", "application/ocsp-response")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/"


@pytest.fixture
def responder() -> Iterator[Responder]:
    server = Responder(lambda: b"")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def gpu() -> TestGpu:
    return TestGpu.create(TEMPLATE)


def evaluate(gpu: TestGpu, cache: OcspCache | None, ocsp_required: bool = True):
    nonce = os.urandom(32)
    doc = EvidenceDoc(nonce, CcState("prod", True, False), (GpuItem(gpu.report(nonce), gpu.chain_pem),))
    policy = GpuPolicy(root_pem=gpu.root_pem, ocsp=ocsp_required, dev=True)  # dev: pins and reference aside
    now = time.time()
    return evaluate_gpus(
        doc, nonce, policy, now, None, (lambda chain: cache.check_chain(chain, now)) if cache else None
    )


def stranger_signed(gpu: TestGpu) -> bytes:
    """Signed by a key the issuer never certified (a responder certificate from another TEST root)."""
    other = TestGpu.create(TEMPLATE)
    key = ec.generate_private_key(ec.SECP384R1())
    return gpu.ocsp_response(signer=key, responder=other.ocsp_responder_cert(key))


def checks(verdict) -> list[str]:
    return [f.check for f in verdict.failures]


def test_a_good_status_is_fetched_once_and_kept(responder: Responder, gpu: TestGpu, tmp_path: Path) -> None:
    responder.answer = lambda: gpu.ocsp_response()
    cache = OcspCache(str(tmp_path), responder.url)
    verdict = evaluate(gpu, cache)
    assert verdict.accepted and any(c.check == "gpu.ocsp" and c.outcome == "pass" for c in verdict.checks)
    assert evaluate(gpu, cache).accepted and responder.requests == 1
    (kept,) = (tmp_path / "ocsp").iterdir()
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    # Offline, a fresh cached response is enough.
    assert evaluate(gpu, OcspCache(str(tmp_path), None)).accepted and responder.requests == 1


@pytest.mark.parametrize(
    ("answer", "check"),
    [
        (lambda g: g.ocsp_response(status="revoked"), "gpu.cert_revoked"),
        (lambda g: g.ocsp_response(status="unknown"), "gpu.cert_revoked"),
        (lambda g: g.ocsp_response(now=datetime.now(UTC) - timedelta(days=3)), "gpu.ocsp_stale"),
        (lambda g: stranger_signed(g), "gpu.ocsp_invalid"),
        (lambda g: TestGpu.create(TEMPLATE).ocsp_response(), "gpu.ocsp_invalid"),  # about another chain
        (lambda g: b"not DER", "gpu.ocsp_invalid"),
    ],
)
def test_bad_statuses_are_refused_and_not_kept(responder, gpu: TestGpu, tmp_path: Path, answer, check: str) -> None:
    responder.answer = lambda: answer(gpu)
    assert checks(evaluate(gpu, OcspCache(str(tmp_path), responder.url))) == [check]
    assert not (tmp_path / "ocsp").exists()


def test_a_delegated_responder_needs_the_ocsp_signing_purpose(gpu: TestGpu) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    ica, root = x509.load_pem_x509_certificates(gpu.chain_pem)[1:]
    good = gpu.ocsp_response(signer=key, responder=gpu.ocsp_responder_cert(key))
    assert check_response(good, ica, root, time.time()).subject == ica.subject.rfc4514_string()
    wrong = gpu.ocsp_response(signer=key, responder=gpu.ocsp_responder_cert(key, for_ocsp=False))
    with pytest.raises(OcspError) as info:
        check_response(wrong, ica, root, time.time())
    assert info.value.check == "gpu.ocsp_invalid"


def test_required_status_without_a_source_is_refused(gpu: TestGpu, tmp_path: Path) -> None:
    assert checks(evaluate(gpu, None)) == ["gpu.ocsp_unavailable"]
    (failure,) = evaluate(gpu, OcspCache(str(tmp_path), None)).failures
    assert failure.check == "gpu.ocsp_unavailable" and "--ocsp-responder" in failure.expected
    skipped = evaluate(gpu, None, ocsp_required=False)
    assert skipped.accepted and any(c.check == "gpu.ocsp" and c.outcome == "not_checked" for c in skipped.checks)


def test_a_stale_cached_status_is_fetched_again(responder: Responder, gpu: TestGpu, tmp_path: Path) -> None:
    responder.answer = lambda: gpu.ocsp_response(valid_for=timedelta(minutes=5, seconds=1))
    cache = OcspCache(str(tmp_path), responder.url)
    assert evaluate(gpu, cache).accepted
    time.sleep(1.1)  # the response's nextUpdate passes
    responder.answer = lambda: gpu.ocsp_response()
    assert evaluate(gpu, OcspCache(str(tmp_path), responder.url)).accepted and responder.requests == 2


def test_a_status_about_the_same_serial_under_another_issuer_is_refused(gpu: TestGpu) -> None:
    """Same serial number, issuer name/key hashes of another CA: not about this certificate."""
    from cryptography.hazmat.primitives import hashes, serialization

    ica, root = x509.load_pem_x509_certificates(gpu.chain_pem)[1:]
    other_root = x509.load_pem_x509_certificates(TestGpu.create(TEMPLATE).chain_pem)[-1]
    now = datetime.now(UTC)
    assert gpu.root_key is not None
    forged = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=ica, issuer=other_root, algorithm=hashes.SHA256(), cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=now - timedelta(minutes=5), next_update=now + timedelta(days=1),
            revocation_time=None, revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, root)
        .sign(gpu.root_key, hashes.SHA384())
        .public_bytes(serialization.Encoding.DER)
    )  # fmt: skip
    with pytest.raises(OcspError, match="another issuer") as info:
        check_response(forged, ica, root, time.time())
    assert info.value.check == "gpu.ocsp_invalid"
