"""The whole journey in one run, as a user makes it: `pulumi up` of a dev stack boots the pinned
guest image on a host, the verifying proxy attests the TD from the stack's `pins`, and the official
`openai` client gets its answers through it.

  * host: a fake TDX host (tests/support/hosts/nshost.py: real sshd in a network namespace, faked
    hardware and DCAP) whose QEMU is the REAL qemu-system-x86_64. There is no TDX here, so the stack
    says `workload.td.tdx: false`: the dev stack's TD runs as a plain VM under TCG, the guest agent
    keeps RTMR3 in software and the gateway signs TEST quotes (docs/trust-domain.md). The host has
    no systemd; its fake `systemctl` runs the TD unit's ExecStart= (the rendered QEMU command) for
    real, because services.json says `run` for that unit.
  * artifacts: an HTTP server on the host's loopback (inside its namespace) serves the TD boot
    artifacts by the names the dev TD boot manifest pins (the image the slow tier builds, which
    tests/slow/test_guest_image.py proves is the pinned one) and a two-file "model" for the stand-in
    model server. The host's td-stage fetches and checks each sha256; the TD's agent fetches the
    model through QEMU's user network (10.0.2.2 is the host's loopback) and checks it too.
  * engine: the real Pulumi CLI and program (tests/support/engine.py), stack `dev`, file backend.

Then exactly what the README tells a user: `pulumi stack output pins --json > pins.json`,
`tdxattest proxy --upstream <endpoint> --pins pins.json --accept-dev-test-root`, the openai client
streaming and not, an audit line per request. A model revision change replaces the TD: the proxy on
the old pins refuses (502, pin.rtmr3), on the new pins it answers. A root disk changed on the host
after staging: the TD refuses to boot from it (dm-verity), and the next `pulumi up` that launches
refuses it by name, with the command that stages the pinned files again; that command brings the TD
back. `pulumi destroy` stops the TD and removes its files.

The tests run in file order and build on each other. Wall time on 2 CPUs: about 6 minutes (three
TCG boots of the guest image), most of it the boots.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from components.catalog.td_manifest import load_boot_manifest, td_boot_manifest
from components.render.steps import Rendered
from guest_agent import REPORT_PREFIX
from tests.support.engine import PCCS_API_KEY, Engine, engine_unavailable, trust_pccs_certificate, up_events
from tests.support.hosts import profiles as H
from tests.support.hosts import sshrun
from tests.support.hosts.nshost import NamespaceHost, namespace_hosts
from tests.support.paths import ARTIFACTS, REPO

pytestmark = pytest.mark.slow

_reason = engine_unavailable()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

STACK = "dev"  # the only stack that may run a TD without TDX
NAME = "td-a"
TD_DIR = f"/var/lib/tdx-vllm/td/{NAME}"
UNIT = f"tdx-vllm-td-{NAME}"
GATEWAY_PORT = 8443
SERVE_PORT = 8099  # the artifact server, on the host's loopback
MODEL_ID = "standin/echo"
REV_A = "a" * 40
REV_B = "b" * 40
# The stand-in serves no weights; the agent still fetches and checks every listed file.
MODEL_FILES = {
    "config.json": b'{"model_type": "standin-echo", "note": "tdx-vllm journey test"}\n',
    "tokenizer.json": b'{"version": "1.0", "model": {"type": "WordLevel"}}\n',
}
PROMPT = "Say OK"  # the stand-in echoes: its greedy answer begins with the prompt
UP_TIMEOUT_S = 900  # one TCG boot of the guest image, with the host steps before it
PYTHON = REPO / ".venv" / "bin" / "python"


@dataclass
class Journey:
    eng: Engine
    host: NamespaceHost
    root: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    endpoint: str = ""
    pins_a: Path | None = None
    proxy_a: str = ""
    restage: re.Match[str] | None = None  # the `pulumi up --replace` the tamper refusal names


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _artifact_dir(dest: Path, images: dict[str, Path]) -> Path:
    """The TD boot artifacts by the file names the dev TD boot manifest pins, and the model files
    laid out as `<modelSource>/<path>` with `{id}/resolve/{revision}` expanded, for both revisions."""
    boot = load_boot_manifest(td_boot_manifest(STACK))
    built = {"kernel": "vmlinuz", "initrd": "initrd.img", "rootfs": "rootfs.verity.img"}
    td = dest / "td"
    td.mkdir(parents=True)
    for a in boot.artifacts:
        src = ARTIFACTS / a.file if a.role == "firmware" else images[STACK] / built[a.role]
        (td / a.file).symlink_to(src)
    for rev in (REV_A, REV_B):
        model = dest / MODEL_ID / "resolve" / rev
        model.mkdir(parents=True)
        for name, data in MODEL_FILES.items():
            (model / name).write_bytes(data)
    return dest


def _stack_config(host: NamespaceHost) -> dict[str, str]:
    base = {
        "platform.os": "ubuntu-24.04",
        "platform.extraKernelArgs[0]": "modprobe.blacklist=nouveau,nvidia",
        "platform.tdxModule": host.profile.tdx_module_version,
        "dcap.registration": "mpa",
        "dcap.useSecureCert": "true",
        "hosts[0].name": NAME,
        "hosts[0].ssh.address": host.address,
        "hosts[0].ssh.port": "22",
        "hosts[0].ssh.user": "root",
        "hosts[0].ssh.hostKey": host.host_key,
        "teeIo": "false",
        "rebootTimeoutSeconds": "60",
        # the workload: what README's dev example shows, on a host without TDX or GPU
        "workload.target": "host",
        "workload.server": "standin",
        "workload.image": "docker.io/vllm/vllm-openai@sha256:" + "0" * 64,
        "workload.cudaVersion": "12.4",
        "workload.model.id": MODEL_ID,
        "workload.model.revision": REV_A,
        "workload.modelSource": f"http://10.0.2.2:{SERVE_PORT}/{{id}}/resolve/{{revision}}",
        "workload.gateway.port": str(GATEWAY_PORT),
        "workload.knownAnswer.prompt": PROMPT,
        "workload.knownAnswer.expect": PROMPT,
        "workload.td.tdx": "false",
        "workload.td.vcpus": "2",
        "workload.td.memoryMiB": "2048",
        "workload.td.artifactSource": f"http://127.0.0.1:{SERVE_PORT}/td",
        "workload.td.readyTimeoutSeconds": "600",
        "workload.td.dataDiskGiB": "1",
    }
    for name, data in MODEL_FILES.items():
        base[f'workload.model.files["{name}"]'] = _sha256(data)
    return base


@pytest.fixture(scope="module")
def journey(images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Journey]:
    root = tmp_path_factory.mktemp("journey")
    served = _artifact_dir(root / "served", images)
    profile = H.TDX_READY.replace(name="journey", hostname="journey-host", gpus=())
    with namespace_hosts([profile]) as hosts, contextlib.ExitStack() as stack:
        host = hosts["journey"]
        services = host.read_json("services.json", {})
        services[UNIT] = {"run": True}  # the fake systemctl runs this unit's ExecStart= for real
        host._save("services.json", services)
        trust_pccs_certificate(host)
        server = subprocess.Popen(
            ["ip", "netns", "exec", str(host.netns), sys.executable, "-m", "http.server", "--bind", "127.0.0.1"]
            + [str(SERVE_PORT), "--directory", str(served)],
            stdout=subprocess.DEVNULL,
            stderr=(root / "artifact-server.log").open("wb"),
        )
        stack.callback(lambda: (server.terminate(), server.wait(10)))
        eng = Engine(root / "engine")
        eng.env["TDX_VLLM_ARTIFACT_DIR"] = str(served / "td")  # `pins` from the served files
        # The tracked dev example points at documentation addresses under another passphrase: this
        # user made their own `dev` stack, as its header says to.
        (eng.project / "stacks" / f"Pulumi.{STACK}.yaml").unlink()
        eng.pulumi("stack", "init", stack=STACK)
        eng.config_set(
            STACK,
            _stack_config(host),
            secret={"hosts[0].ssh.privateKey": host.client_private_key, "dcap.pccsApiKey": PCCS_API_KEY},
        )
        j = Journey(eng, host, root)
        try:
            yield j
        finally:
            for proc in j.procs:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            print("\npulumi timings (s): " + ", ".join(f"{n} {t:.1f}" for n, t in eng.timings))


# ---- helpers: what a user types ------------------------------------------------------------------


def _pins_file(j: Journey, name: str) -> Path:
    """`pulumi stack output pins --json > pins.json`"""
    out = j.root / name
    out.write_text(j.eng.pulumi("stack", "output", "pins", "--json", stack=STACK).stdout)
    return out


def _proxy(j: Journey, pins: Path, audit: Path, *extra: str) -> str:
    """`tdxattest proxy --upstream <endpoint> --pins pins.json --accept-dev-test-root --listen ...`;
    its URL once it listens."""
    port = _free_port()
    argv = [str(PYTHON), "-m", "tdxattest", "proxy", "--upstream", j.endpoint, "--pins", str(pins)]
    argv += ["--accept-dev-test-root", "--listen", f"127.0.0.1:{port}", "--audit", str(audit), *extra]
    log = (j.root / f"proxy-{port}.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_PROXY": "*"})
    j.procs.append(proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the proxy exited {proc.returncode}: {(j.root / f'proxy-{port}.log').read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return f"http://127.0.0.1:{port}"
        time.sleep(0.1)
    pytest.fail("the proxy did not listen within 30 s")


def _client(url: str):
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _audit(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _host_sh(j: Journey, command: str) -> str:
    return sshrun.run(j.host.target(), Rendered(command=command, stdin=""), deadline_s=60).stdout


def _serial(j: Journey) -> str:
    path = j.host.host_path(f"{TD_DIR}/serial.log")
    return path.read_text(errors="replace") if path.exists() else ""


# ---- the journey ---------------------------------------------------------------------------------


def test_up_boots_the_pinned_dev_image_and_exports_endpoints_and_pins(journey: Journey) -> None:
    j = journey
    p = j.eng.up(STACK, "up#1 create (host steps + TD boot)", timeout=UP_TIMEOUT_S)
    assert "created" in p.stdout
    out = j.eng.outputs(STACK)
    assert out["ready"] is True, p.stdout[-4000:]
    j.endpoint = out["endpoints"][NAME]
    assert j.endpoint == f"https://{j.host.address}:{GATEWAY_PORT}"
    td = out["hosts"][NAME]["td"]
    # It says what it is: no TDX, TEST quotes.
    assert td["tdx"] is False and td["state"] == "ready" and td["quoteSource"] == "software-test", td
    pins = out["pins"]
    assert pins["tdx"] is False
    assert pins["mrtd"] is None and "without TDX" in pins["reasons"]["mrtd"]
    assert pins["rtmr3"] == td["rtmr3"] and len(pins["rtmr3"]) == 96
    assert pins["workload"]["modelRevision"] == REV_A
    # The host fetched exactly the pinned files (td-stage checked each sha256 there) and QEMU runs.
    boot = load_boot_manifest(td_boot_manifest(STACK))
    for a in boot.artifacts:
        staged = j.host.host_path(f"{TD_DIR}/{a.staged_name}")
        assert _sha256(staged.read_bytes()) == a.sha256, a.file
    assert _host_sh(j, f"systemctl is-active {UNIT}.service").strip() == "active"
    serial = _serial(j)
    assert "verified by dm-verity" in serial and REPORT_PREFIX in serial


def test_the_proxy_refuses_the_dev_flag_for_pins_of_real_tds(journey: Journey) -> None:
    j = journey
    pins = json.loads(_pins_file(j, "pins-check.json").read_text())
    del pins["tdx"]  # what a stack with TDX exports
    real = j.root / "pins-tdx.json"
    real.write_text(json.dumps(pins))
    done = subprocess.run(
        [str(PYTHON), "-m", "tdxattest", "proxy", "--upstream", j.endpoint, "--pins", str(real)]
        + ["--accept-dev-test-root", "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "--accept-dev-test-root" in done.stderr and "Intel's root" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_the_openai_client_gets_attested_answers_through_the_proxy(journey: Journey) -> None:
    j = journey
    j.pins_a = _pins_file(j, "pins.json")
    audit = j.root / "audit-a.jsonl"
    j.proxy_a = _proxy(j, j.pins_a, audit)
    client = _client(j.proxy_a)
    answer = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Hello attested world"}], max_tokens=5
    )
    assert answer.choices[0].message.content == "Hello attested world Hello attested"
    stream = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "streamed tokens"}], max_tokens=4, stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "streamed tokens streamed tokens"
    records = _audit(audit)
    assert len(records) == 2, records
    for rec in records:
        assert rec["verdict"] == "accepted" and rec["status"] == 200, rec
        assert len(rec["quote_sha256"]) == 64 and rec["quote_source"] == "software-test-pki"
        checks = rec["checks"]
        assert checks["pin.rtmr3"] == "pass" and checks["binding.report_data_mismatch"] == "pass", checks
        assert checks["pin.mrtd"] == "not_checked", checks  # no TDX: nothing measured the boot


def test_a_model_revision_change_replaces_the_td_and_moves_rtmr3(journey: Journey) -> None:
    j = journey
    assert j.pins_a is not None
    old_rtmr3 = json.loads(j.pins_a.read_text())["rtmr3"]
    j.eng.config_set(STACK, {"workload.model.revision": REV_B})
    p = j.eng.up(STACK, "up#2 revision change (TD replaced)", True, "--json", timeout=UP_TIMEOUT_S)
    ops, _summary = up_events(p.stdout)
    # delete_before_replace: the old TD stops, then the new one is created (the last event's op)
    assert ops.get(f"{NAME}-td-launch") == "create-replacement", ops
    assert not [n for n in ops if not n.startswith(f"{NAME}-td")], f"only the TD changes: {ops}"
    pins_b = _pins_file(j, "pins-b.json")
    assert json.loads(pins_b.read_text())["rtmr3"] != old_rtmr3

    import openai

    # The proxy on the old pins: the new TD's quote fails RTMR3, and nothing goes upstream.
    with pytest.raises(openai.APIStatusError) as refused:
        _client(j.proxy_a).chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 502
    assert "pin.rtmr3" in str(refused.value.body), refused.value.body
    # On the new pins it answers.
    answer = _client(_proxy(j, pins_b, j.root / "audit-b.jsonl")).chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "new revision"}], max_tokens=2
    )
    assert answer.choices[0].message.content == "new revision"


def test_a_root_disk_changed_on_the_host_is_refused_by_the_td_and_by_the_next_up(journey: Journey) -> None:
    j = journey
    boot = load_boot_manifest(td_boot_manifest(STACK))
    rootfs = next(a for a in boot.artifacts if a.role == "rootfs")
    disk = j.host.host_path(f"{TD_DIR}/{rootfs.staged_name}")
    with disk.open("r+b") as f:  # the squashfs superblock: the first block the guest reads
        first = f.read(64)
        f.seek(0)
        f.write(bytes(b ^ 0xFF for b in first))
    # The TD boots from it again (a host reboot, a restart): dm-verity stops it before anything runs.
    _host_sh(j, f"systemctl restart {UNIT}.service")
    deadline = time.monotonic() + 300
    while _host_sh(j, f"systemctl is-active {UNIT}.service || true").strip() == "active":
        assert time.monotonic() < deadline, "the TD kept running on a changed root disk:\n" + _serial(j)[-3000:]
        time.sleep(2)
    serial = _serial(j)
    assert "verity" in serial and "corrupted" in serial, serial[-3000:]
    assert REPORT_PREFIX not in serial, "the agent must never run from a changed root disk"
    # The next `up` that launches the TD (back to revision A) refuses the file by name.
    j.eng.config_set(STACK, {"workload.model.revision": REV_A})
    p = j.eng.up(STACK, "up#3 tampered root disk (refused)", False, timeout=UP_TIMEOUT_S)
    assert f"staged TD artifact {TD_DIR}/{rootfs.staged_name} ({rootfs.file}) changed" in p.stdout, p.stdout[-4000:]
    assert f"expected sha256 {rootfs.sha256}" in p.stdout
    assert _sha256(disk.read_bytes()) in p.stdout
    j.restage = re.search(r"pulumi up --replace '(urn:pulumi:[^']+)'", p.stdout)
    assert j.restage is not None and j.restage.group(1).endswith(f"::{NAME}-td-stage"), p.stdout[-3000:]


def test_the_fix_the_refusal_names_stages_the_pinned_files_and_the_td_serves_again(journey: Journey) -> None:
    j = journey
    assert j.restage is not None
    j.eng.up(
        STACK,
        "up#4 --replace td-stage (the refusal's fix)",
        True,
        "--replace",
        j.restage.group(1),
        timeout=UP_TIMEOUT_S,
    )
    out = j.eng.outputs(STACK)
    assert out["ready"] is True and out["hosts"][NAME]["td"]["state"] == "ready"
    assert j.pins_a is not None and out["pins"]["rtmr3"] == json.loads(j.pins_a.read_text())["rtmr3"]
    # revision A again: the first proxy, on pins A, answers once more
    answer = _client(j.proxy_a).chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "back again"}], max_tokens=2
    )
    assert answer.choices[0].message.content == "back again"


def test_destroy_stops_the_td_and_removes_its_files(journey: Journey) -> None:
    j = journey
    assert _host_sh(j, f"systemctl is-active {UNIT}.service").strip() == "active"
    j.eng.pulumi("destroy", "--yes", "--skip-preview", stack=STACK, timeout=300, label="destroy")
    assert not j.host.host_path(TD_DIR).exists()
    assert not j.host.host_path(f"/etc/systemd/system/{UNIT}.service").exists()
    assert _host_sh(j, f"systemctl is-active {UNIT}.service || true").strip() == "inactive"
    assert not _host_sh(j, "pgrep -f '[q]emu-system-x86_64' || true").strip()
