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

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.catalog.td_manifest import load_boot_manifest, td_boot_manifest
from guest_agent import REPORT_PREFIX
from tests.support.engine import engine_unavailable, up_events
from tests.support.journey import (
    GATEWAY_PORT,
    MODEL_ID,
    NAME,
    PROXY_PORT,
    PYTHON,
    REV_A,
    REV_B,
    STACK,
    TD_DIR,
    UNIT,
    UP_TIMEOUT_S,
    Journey,
    audit_records,
    client,
    deployed_proxy_get,
    host_sh,
    journey_world,
    pins_file,
    serial_log,
    sha256,
    start_proxy,
)

pytestmark = pytest.mark.slow

_reason = engine_unavailable()
if _reason:
    pytest.skip(_reason, allow_module_level=True)


@pytest.fixture(scope="module")
def journey(images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Journey]:
    with journey_world(tmp_path_factory.mktemp("journey"), images[STACK]) as j:
        try:
            yield j
        finally:
            print("\npulumi timings (s): " + ", ".join(f"{n} {t:.1f}" for n, t in j.eng.timings))


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
        assert sha256(staged.read_bytes()) == a.sha256, a.file
    assert host_sh(j, f"systemctl is-active {UNIT}.service").strip() == "active"
    serial = serial_log(j)
    assert "verified by dm-verity" in serial and REPORT_PREFIX in serial
    # The verifying proxy `up` deployed for the clients serves the TD on the stack's pins.
    assert out["proxies"] == {NAME: f"http://127.0.0.1:{PROXY_PORT}"}
    assert deployed_proxy_get(j) == (200, "")


def test_the_proxy_refuses_the_dev_flag_for_pins_of_real_tds(journey: Journey) -> None:
    j = journey
    pins = json.loads(pins_file(j, "pins-check.json").read_text())
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
    j.pins_a = pins_file(j, "pins.json")
    audit = j.root / "audit-a.jsonl"
    j.proxy_a = start_proxy(j, j.pins_a, audit)
    openai_client = client(j.proxy_a)
    answer = openai_client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Hello attested world"}], max_tokens=5
    )
    assert answer.choices[0].message.content == "Hello attested world Hello attested"
    stream = openai_client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "streamed tokens"}], max_tokens=4, stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "streamed tokens streamed tokens"
    records = audit_records(audit)
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
    # A client keeps asking through the deployed proxy for the whole `up`.
    polls: list[tuple[int, str]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            polls.append(deployed_proxy_get(j))
            stop.wait(1.0)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        p = j.eng.up(STACK, "up#2 revision change (TD replaced)", True, "--json", timeout=UP_TIMEOUT_S)
    finally:
        stop.set()
        poller.join(120)
    ops, _summary = up_events(p.stdout)
    # delete_before_replace: the old TD stops, then the new one is created (the last event's op)
    assert ops.get(f"{NAME}-td-launch") == "create-replacement", ops
    assert ops.get(f"proxy-{NAME}-accept") == ops.get(f"proxy-{NAME}-retire") == "update", ops
    assert not [n for n in ops if not n.startswith((f"{NAME}-td", "proxy-"))], f"only the TD and proxy change: {ops}"
    pins_b = pins_file(j, "pins-b.json")
    assert json.loads(pins_b.read_text())["rtmr3"] != old_rtmr3
    # The rollover's order, from the engine's events: the proxy took the new pins (keeping the old)
    # before the old TD stopped, and dropped the old pins only after the new TD reported ready.
    events = event_order(p.stdout)
    assert events.index(("done", f"proxy-{NAME}-accept")) < events.index(("start", f"{NAME}-td-launch"))
    assert events.index(("done", f"{NAME}-td-wait")) < events.index(("start", f"proxy-{NAME}-retire"))
    # No client request was ever refused for its pins: answered, or the TD was down (no attestation).
    assert polls and not [r for r in polls if r[1].startswith("pin.")], polls
    assert (200, "") in polls, polls
    # Once `up` ended, the proxy accepts the new pins only: a TD measured as before is refused.
    assert not j.host.host_path(f"/etc/tdx-vllm/proxy/{NAME}/retiring.json").exists()
    assert deployed_proxy_get(j) == (200, "")
    audit = audit_records(j.host.host_path(f"/var/log/tdx-vllm/proxy/{NAME}.jsonl"))
    assert audit[-1]["verdict"] == "accepted" and audit[-1]["pin_set"] == "current", audit[-1]
    served_after = [r for r in audit if r.get("pin_set") == "current" and r.get("quote_source")]
    retiring = [i for i, r in enumerate(audit) if r.get("pin_set") == "retiring"]
    assert not retiring or max(retiring) < audit.index(served_after[-1])

    import openai

    # The proxy on the old pins: the new TD's quote fails RTMR3, and nothing goes upstream.
    with pytest.raises(openai.APIStatusError) as refused:
        client(j.proxy_a).chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 502
    assert "pin.rtmr3" in str(refused.value.body), refused.value.body
    # On the new pins it answers.
    answer = client(start_proxy(j, pins_b, j.root / "audit-b.jsonl")).chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "new revision"}], max_tokens=2
    )
    assert answer.choices[0].message.content == "new revision"


def event_order(stdout: str) -> list[tuple[str, str]]:
    """`pulumi up --json` events in order: ("start", name) when a step begins, ("done", name) when
    its outputs are recorded."""
    order: list[tuple[str, str]] = []
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        for kind, key in (("start", "resourcePreEvent"), ("done", "resOutputsEvent")):
            if key in event:
                order.append((kind, event[key]["metadata"]["urn"].rsplit("::", 1)[-1]))
    return order


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
    host_sh(j, f"systemctl restart {UNIT}.service")
    deadline = time.monotonic() + 300
    while host_sh(j, f"systemctl is-active {UNIT}.service || true").strip() == "active":
        assert time.monotonic() < deadline, "the TD kept running on a changed root disk:\n" + serial_log(j)[-3000:]
        time.sleep(2)
    serial = serial_log(j)
    assert "verity" in serial and "corrupted" in serial, serial[-3000:]
    assert REPORT_PREFIX not in serial, "the agent must never run from a changed root disk"
    # The next `up` that launches the TD (back to revision A) refuses the file by name.
    j.eng.config_set(STACK, {"workload.model.revision": REV_A})
    p = j.eng.up(STACK, "up#3 tampered root disk (refused)", False, timeout=UP_TIMEOUT_S)
    assert f"staged TD artifact {TD_DIR}/{rootfs.staged_name} ({rootfs.file}) changed" in p.stdout, p.stdout[-4000:]
    assert f"expected sha256 {rootfs.sha256}" in p.stdout
    assert sha256(disk.read_bytes()) in p.stdout
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
    answer = client(j.proxy_a).chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "back again"}], max_tokens=2
    )
    assert answer.choices[0].message.content == "back again"


def test_status_attests_the_td_through_its_gateway_and_names_it_once_stopped(journey: Journey) -> None:
    # `python -m components status` on the dev stack: every host step and the proxy host in sync,
    # the TD attested with the proxy's own code (TEST quotes: --accept-dev-test-root); then the TD
    # is stopped by hand and named.
    j = journey

    def status(kept_as: str) -> tuple[int, dict]:
        """The table (kept in the journey's directory, as the README shows it), then the JSON."""
        rc, table = j.eng.status_text(STACK, "--accept-dev-test-root")
        (j.root / kept_as).write_text(table)
        rc_json, doc = j.eng.status(STACK, "--accept-dev-test-root")
        assert rc_json == rc, table
        return rc, doc

    rc, doc = status("status-ready.txt")
    td = doc["tds"][NAME]
    assert rc == 0 and td["accepted"] is True and td["reachable"] is True, td
    proxy_host = doc["hosts"]["proxy"]  # the deployed proxy's host: its scripts and its unit
    assert proxy_host["inSync"] is True and [s["step"] for s in proxy_host["steps"]] == ["scripts", "proxy"], proxy_host
    assert td["tcbStatus"] == "UpToDate" and td["quoteSource"] == "software-test-pki", td
    assert td["collateral"]["nextUpdate"] and td["collateral"]["tcbEvaluationDataNumber"] is not None, td
    host_sh(j, f"systemctl stop {UNIT}.service")
    rc, doc = status("status-td-stopped.txt")
    td = doc["tds"][NAME]
    assert rc == 4 and td["reachable"] is False and td["accepted"] is False, td
    assert td["failures"][0].startswith(f"upstream.unreachable: cannot reach {j.endpoint}"), td
    # Started again for the destroy test. QEMU may refuse at first while the kernel still holds the
    # stopped TD's vsock CID: start until it stays up.
    deadline = time.monotonic() + 120
    while True:
        host_sh(j, f"systemctl start {UNIT}.service")
        time.sleep(3)
        if host_sh(j, f"systemctl is-active {UNIT}.service || true").strip() == "active":
            break
        log = j.host.state_dir / f"unit-{UNIT}.log"
        assert time.monotonic() < deadline, "the TD did not start again:\n" + log.read_text(errors="replace")[-3000:]


def test_destroy_stops_the_td_and_removes_its_files(journey: Journey) -> None:
    j = journey
    assert host_sh(j, f"systemctl is-active {UNIT}.service").strip() == "active"
    j.eng.pulumi("destroy", "--yes", "--skip-preview", stack=STACK, timeout=300, label="destroy")
    assert not j.host.host_path(TD_DIR).exists()
    assert not j.host.host_path(f"/etc/systemd/system/{UNIT}.service").exists()
    assert host_sh(j, f"systemctl is-active {UNIT}.service || true").strip() == "inactive"
    assert not host_sh(j, "pgrep -f '[q]emu-system-x86_64' || true").strip()
    # the deployed proxy is gone too; its audit log stays
    assert host_sh(j, "systemctl is-active tdx-vllm-proxy-td-a.service || true").strip() == "inactive"
    assert not j.host.host_path("/etc/tdx-vllm/proxy/td-a").exists()
    assert j.host.host_path("/var/log/tdx-vllm/proxy/td-a.jsonl").exists()
