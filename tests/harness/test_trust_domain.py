"""td_stage.sh / td_launch.sh / td_wait.sh against a fake TDX host over real SSH.

The steps are rendered with components.render.steps.render from the parameters components/render/trust_domain.py
builds, exactly as `pulumi up` renders them, and run with tests/support/hosts/sshrun.py against a
NamespaceHost (tests/support/hosts/nshost.py). The host has no KVM: fakes/bin/qemu-system-x86_64 stands
in for QEMU and the guest agent (it records its argv and writes the agent's status lines to the
serial log). The fake `systemctl` knows units only from services.json and does not run them, so the
test registers the TD unit there and plays systemd: it starts the unit's ExecStart= itself.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from pathlib import Path

import pytest

from components.catalog.td_manifest import BootArtifact, BootManifest
from components.config.model import KnownAnswer, TdShape, WorkloadConfig
from components.render.steps import DELETE_COMMAND, Rendered, render
from components.render.td_definition import qemu_argv
from components.render.trust_domain import (
    LAUNCH_STEP,
    STAGE_STEP,
    WAIT_STEP,
    definition,
    launch_params,
    stage_params,
    wait_params,
)
from tdxattest.core.workload import expected_rtmr3
from tests.support.hosts import profiles as H
from tests.support.hosts import sshrun
from tests.support.hosts.sshrun import CommandFailed

pytestmark = pytest.mark.harness

NAME = "gpu-a"
TD_DIR = f"/var/lib/tdx-vllm/td/{NAME}"
UNIT = f"tdx-vllm-td-{NAME}.service"
SOURCE = "/var/lib/tdxfake/td-src"  # the artifact source: a directory on the host
FAKE_QEMU = "/usr/local/bin/qemu-system-x86_64"
GPU = "0000:b8:00.0"
FILES = {"ovmf-test.fd": b"TDVF" * 4096, "vmlinuz-test": b"MZ kernel " * 1000, "initrd-test.img": b"070701" * 500}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def host(nshost_factory):
    profile = H.TDX_READY.replace(name="td_host", hostname="td-host", gpus=(H.Gpu(bdf=GPU, driver="vfio-pci"),))
    h = nshost_factory([profile])["td_host"]
    src = h.state_dir / "td-src"
    src.mkdir()
    for name, data in FILES.items():
        (src / name).write_bytes(data)
    services = h.read_json("services.json", {})
    services["tdx-vllm-td-" + NAME] = {}  # the fake systemctl knows units from here
    h._save("services.json", services)
    return h


def boot(**sha_overrides: str) -> BootManifest:
    shas = {name: sha_overrides.get(name, sha256(data)) for name, data in FILES.items()}
    return BootManifest(
        path=Path("harness.yaml"),
        name="harness",
        vcpus=16,
        memory_mib=65536,
        td_attributes="0000001000000000",
        firmware=BootArtifact("firmware", "ovmf-test.fd", shas["ovmf-test.fd"]),
        page_add_order="single",
        separator="rtmr1",
        kernel=BootArtifact("kernel", "vmlinuz-test", shas["vmlinuz-test"]),
        initrd=BootArtifact("initrd", "initrd-test.img", shas["initrd-test.img"]),
        initrd_used=True,
        cmdline="console=ttyS0 root=/dev/vda1 ro",
        acpi=None,
    )


WORKLOAD = WorkloadConfig(
    target="host",
    image="docker.io/vllm/vllm-openai@sha256:" + "ab" * 32,
    model_id="Qwen/Qwen2.5-0.5B-Instruct",
    model_revision="0123456789abcdef0123456789abcdef01234567",
    model_files=(("config.json", "bb" * 32), ("model.safetensors", "aa" * 32)),
    model_source="https://huggingface.co",
    vllm_args=("--max-model-len", "4096"),
    gateway_port=8443,
    known_answer=KnownAnswer(prompt="The capital of France is", expect=" Paris"),
    td=TdShape(vcpus=16, memory_mib=65536, artifact_source=SOURCE, ready_timeout_s=60, data_disk_gib=2),
    boot=None,
)
MANIFEST = WORKLOAD.manifest(1)
DEFN = definition(NAME, boot(), WORKLOAD, (GPU,), qemu=FAKE_QEMU)


def run(host, step, params: dict, **kw) -> sshrun.Result:
    return sshrun.run(host.target(), render(step, params), deadline_s=kw.get("deadline_s", 60))


def fails(host, step, params: dict) -> CommandFailed:
    with pytest.raises(CommandFailed) as info:
        run(host, step, params)
    return info.value


def errors(exc: CommandFailed) -> str:
    return "\n".join(ln for ln in exc.stderr.splitlines() if ln.startswith("error: "))


def staged(host, name: str) -> Path:
    return host.host_path(f"{TD_DIR}/{name}")


def launch(**changes) -> dict:
    return {
        **launch_params(DEFN, boot(), WORKLOAD, MANIFEST, "staging"),
        **changes,
    }


def wait(timeout: int = 20, **changes) -> dict:
    return {**wait_params(DEFN, MANIFEST, timeout), "TDX_WAIT_POLL": "1", **changes}


def systemctl_calls(host, verb: str) -> list[list[str]]:
    return [c["argv"] for c in host.calls("systemctl") if verb in c["argv"]]


def start_unit_like_systemd(host) -> None:
    """What `systemctl start` would do with the unit the launch wrote: run its ExecStart=."""
    unit = staged_unit(host)
    line = next(ln for ln in unit.replace("\\\n", " ").splitlines() if ln.startswith("ExecStart="))
    argv = [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line[len("ExecStart=") :])]
    assert argv == qemu_argv(DEFN)
    cmd = f"setsid {shlex.join(argv)} </dev/null >/dev/null 2>&1 &"
    sshrun.run(host.target(), Rendered(command=cmd, stdin=""), deadline_s=20)


def staged_unit(host) -> str:
    return host.host_path(f"/etc/systemd/system/{UNIT}").read_text()


# ---------------------------------------------------------------------------------------------
# td-stage


def test_stage_refuses_an_artifact_whose_checksum_differs_naming_it(host):
    pinned = "77" * 32
    exc = fails(host, STAGE_STEP, stage_params(NAME, boot(**{"vmlinuz-test": pinned}), SOURCE))
    msg = errors(exc)
    assert f"TD artifact vmlinuz-test from {SOURCE} does not match its pin" in msg, exc.stderr
    assert f"expected sha256 {pinned}, seen sha256 {sha256(FILES['vmlinuz-test'])}" in msg
    # Nothing of the refused file is left, under either name.
    assert not staged(host, "vmlinuz").exists()
    assert not [p.name for p in host.host_path(TD_DIR).iterdir() if p.name.startswith(".incoming")]
    assert json.loads(exc.stdout.splitlines()[-1])["ok"] is False


def test_stage_refuses_a_missing_artifact(host):
    b = boot()
    b = BootManifest(**{**b.__dict__, "initrd": BootArtifact("initrd", "no-such.img", "88" * 32)})
    msg = errors(fails(host, STAGE_STEP, stage_params(NAME, b, SOURCE)))
    assert "cannot fetch TD artifact no-such.img" in msg and "workload.td.artifactSource" in msg


def test_stage_fetches_and_verifies_then_is_idempotent(host):
    params = stage_params(NAME, boot(), SOURCE)
    first = run(host, STAGE_STEP, params)
    assert first.facts["ok"] is True and first.facts["changed"] is True
    for staged_name, source_name in (
        ("firmware.fd", "ovmf-test.fd"),
        ("vmlinuz", "vmlinuz-test"),
        ("initrd.img", "initrd-test.img"),
    ):
        assert staged(host, staged_name).read_bytes() == FILES[source_name]
    assert {a["name"]: a["sha256"] for a in first.facts["artifacts"]}["vmlinuz"] == sha256(FILES["vmlinuz-test"])
    second = run(host, STAGE_STEP, params)
    assert second.facts["ok"] is True and second.facts["changed"] is False and "applying" not in second.stderr


def test_stage_replaces_a_staged_file_that_was_changed(host):
    staged(host, "initrd.img").write_bytes(b"not the pinned initrd")
    r = run(host, STAGE_STEP, stage_params(NAME, boot(), SOURCE))
    assert r.facts["changed"] is True and staged(host, "initrd.img").read_bytes() == FILES["initrd-test.img"]


# ---------------------------------------------------------------------------------------------
# td-launch


def test_launch_writes_the_unit_and_agent_config_and_starts_the_td(host):
    params = launch()
    r = run(host, LAUNCH_STEP, params)
    assert r.facts["ok"] is True and r.facts["changed"] is True, r.stderr
    assert staged_unit(host) == params["TDX_UNIT_TEXT"]
    assert staged(host, "agent.json").read_text() == params["TDX_AGENT_CONFIG"]
    assert json.loads(params["TDX_AGENT_CONFIG"])["workload"] == MANIFEST.as_dict()
    data = staged(host, "data.img")
    assert data.stat().st_size == 2 * 1024**3 and data.stat().st_blocks == 0  # sparse
    assert r.facts["active"] == "active" and r.facts["enabled"] == "enabled"
    assert r.facts["gpus"] == [{"bdf": GPU, "driver": "vfio-pci"}]
    assert r.facts["qemu_version"].startswith("QEMU emulator version 10.1.0")
    svc = host.read_json("services.json")["tdx-vllm-td-" + NAME]
    assert svc["enabled"] is True and svc["active"] is True and svc["restarts"] == 1
    assert systemctl_calls(host, "daemon-reload")
    unit = staged_unit(host)
    assert "debug" not in unit.lower() and '"sept-ve-disable":true' in unit
    assert f"# pin kernel sha256: {sha256(FILES['vmlinuz-test'])}" in unit


def test_launch_second_run_checks_and_applies_nothing(host):
    restarts = len(systemctl_calls(host, "restart"))
    r = run(host, LAUNCH_STEP, launch())
    assert r.facts["ok"] is True and r.facts["changed"] is False and "applying" not in r.stderr
    assert len(systemctl_calls(host, "restart")) == restarts


def test_launch_restarts_the_td_when_its_definition_changes(host):
    params = launch(TDX_UNIT_TEXT=launch()["TDX_UNIT_TEXT"].replace("RestartSec=10", "RestartSec=11"))
    r = run(host, LAUNCH_STEP, params)
    assert r.facts["changed"] is True and "RestartSec=11" in staged_unit(host)
    assert host.read_json("services.json")["tdx-vllm-td-" + NAME]["restarts"] == 2
    assert run(host, LAUNCH_STEP, launch()).facts["changed"] is True  # and back


def test_launch_refuses_a_staged_artifact_changed_after_staging(host):
    original = staged(host, "firmware.fd").read_bytes()
    staged(host, "firmware.fd").write_bytes(b"evil firmware")
    try:
        msg = errors(fails(host, LAUNCH_STEP, launch()))
        assert f"staged TD artifact {TD_DIR}/firmware.fd (ovmf-test.fd) changed" in msg
        assert f"expected sha256 {sha256(original)}, seen sha256 {sha256(b'evil firmware')}" in msg
    finally:
        staged(host, "firmware.fd").write_bytes(original)


def test_launch_refuses_a_qemu_without_tdx(host):
    msg = errors(fails(host, LAUNCH_STEP, launch(TDX_QEMU="/usr/bin/true")))
    assert "QEMU cannot run a TD" in msg


# ---------------------------------------------------------------------------------------------
# td-wait


def test_wait_reports_ready_with_the_expected_manifest_and_rtmr3(host):
    start_unit_like_systemd(host)
    r = run(host, WAIT_STEP, wait())
    assert r.facts["ok"] is True and r.facts["state"] == "ready", r.stderr
    assert r.facts["rtmr3"] == expected_rtmr3(MANIFEST).hex()
    recorded = host.read_json("td_qemu.json")[NAME]["argv"]
    assert recorded == qemu_argv(DEFN)[1:]


def test_wait_fails_with_the_agent_refusal(host):
    log = staged(host, "serial.log")
    saved = log.read_text()
    reason = "model file model.safetensors: sha256 differs from the manifest"
    with log.open("a") as fh:
        fh.write("tdx-vllm-agent: " + json.dumps({"state": "refused", "step": "model", "reason": reason}) + "\n")
    try:
        msg = errors(fails(host, WAIT_STEP, wait()))
        assert "the TD's guest agent refused to serve (step model)" in msg and f"seen refused: {reason}" in msg
    finally:
        log.write_text(saved)


def test_wait_refuses_an_unexpected_rtmr3(host):
    msg = errors(fails(host, WAIT_STEP, wait(TDX_EXPECTED_RTMR3="ee" * 48)))
    assert "the TD's RTMR3 differs from the pin" in msg and f"seen {expected_rtmr3(MANIFEST).hex()}" in msg


def test_wait_times_out_with_the_last_state(host):
    log = staged(host, "serial.log")
    saved = log.read_text()
    log.write_text('tdx-vllm-agent: {"state": "fetching"}\n')
    try:
        exc = fails(host, WAIT_STEP, wait(timeout=2))
        msg = errors(exc)
        assert "did not report ready within 2s" in msg and "last agent state fetching" in msg
        assert "workload.td.readyTimeoutSeconds" in msg
    finally:
        log.write_text(saved)


def test_wait_fails_fast_when_the_td_is_not_running(host):
    log = staged(host, "serial.log")
    saved = log.read_text()
    log.write_text('tdx-vllm-agent: {"state": "booting"}\n')
    services = host.read_json("services.json")
    services["tdx-vllm-td-" + NAME]["active"] = False
    host._save("services.json", services)
    try:
        msg = errors(fails(host, WAIT_STEP, wait(timeout=30)))
        assert f"the TD is not running; expected unit {UNIT} active, seen inactive (last agent state: booting)" in msg
    finally:
        log.write_text(saved)
        services["tdx-vllm-td-" + NAME]["active"] = True
        host._save("services.json", services)


# ---------------------------------------------------------------------------------------------
# a host reboot


def test_the_td_comes_back_with_its_gpu_after_a_host_reboot(host):
    """A reboot loses driver_override; vfio-pci claims the GPU at boot from the launch's modprobe.d
    and modules-load.d files, so the enabled unit finds it and a second `up` changes nothing."""
    assert host.host_path("/etc/modprobe.d/tdxgpu-vfio.conf").read_text().splitlines()[1:] == [
        "options vfio-pci ids=10de:2330",
        "softdep nvidia pre: vfio-pci",
        "softdep nouveau pre: vfio-pci",
    ]
    assert host.host_path("/etc/modules-load.d/tdxgpu-vfio.conf").read_text() == "vfio-pci\n"
    old_boot = host.boot_id()
    reboot = "systemd-run --quiet --on-active=1 --unit=tdx-test-reboot systemctl reboot"
    sshrun.run(host.target(), Rendered(command=reboot, stdin=""))
    deadline = time.monotonic() + 20
    while host.boot_id() == old_boot or not host.read_json("services.json")["tdx-vllm-td-" + NAME].get("active"):
        assert time.monotonic() < deadline, f"the fake host did not come back:\n{host.logs()}"
        time.sleep(0.2)
    time.sleep(0.5)  # sshd restarts after the profile's delay
    r = sshrun.run(host.target(dial_error_limit=-1), render(LAUNCH_STEP, launch()), deadline_s=60)
    assert r.facts["gpus"] == [{"bdf": GPU, "driver": "vfio-pci"}], r.stderr
    assert r.facts["ok"] is True and r.facts["changed"] is False and r.facts["active"] == "active"


# ---------------------------------------------------------------------------------------------
# destroy


def test_a_replaced_stage_leaves_the_files_the_running_td_uses(host):
    # `pulumi up --replace <td-stage>` (the fix a changed staged file's refusal names) creates the new
    # stage, then deletes the old one, while the TD's unit stays: the files stay with it, or the TD
    # would not start again after the next reboot (found by the journey: "Could not open ... No such file").
    before = sorted(p.name for p in host.host_path(TD_DIR).iterdir())
    r = sshrun.run(
        host.target(),
        Rendered(command=DELETE_COMMAND, stdin=render(STAGE_STEP, stage_params(NAME, boot(), SOURCE)).stdin),
    )
    assert r.facts["left_in_place"].startswith(f"{TD_DIR}: the TD unit {UNIT} still runs from it"), r.facts
    assert sorted(p.name for p in host.host_path(TD_DIR).iterdir()) == before


def test_destroy_stops_the_td_and_removes_its_files(host):
    r = sshrun.run(host.target(), Rendered(command=DELETE_COMMAND, stdin=render(LAUNCH_STEP, launch()).stdin))
    assert r.facts["removed_paths"] == f"/etc/systemd/system/{UNIT} {TD_DIR}/agent.json", r.facts
    assert not host.host_path(f"/etc/systemd/system/{UNIT}").exists() and not staged(host, "agent.json").exists()
    assert not staged(host, "data.img").exists()
    svc = host.read_json("services.json")["tdx-vllm-td-" + NAME]
    assert svc["active"] is False and svc["enabled"] is False
    sshrun.run(
        host.target(),
        Rendered(command=DELETE_COMMAND, stdin=render(STAGE_STEP, stage_params(NAME, boot(), SOURCE)).stdin),
    )
    assert not host.host_path(TD_DIR).exists()
