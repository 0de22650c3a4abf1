"""End to end: the real Pulumi program (`Pulumi.yaml`, `__main__.py`, `components/`) under the real
engine (bin/pulumi, file backend in a temp dir, PULUMI_CONFIG_PASSPHRASE) against fake TDX hosts of
tests/support/hosts/nshost.py (real sshd in network namespaces, faked hardware, fake reboot, fake
gpu-admin-tools wheel in a local pip index, fake DCAP packages and PCCS).

What is set up (module fixture `e2e`):
- the project's tracked files (`git ls-files`, nothing else) copied into a temp dir, with `.venv`
  symlinked to the repository's (Pulumi.yaml names `virtualenv: .venv`), so nothing is written
  into the repository;
- TDX_VLLM_FIRMWARE_DIR: a copy of firmware/ whose gpu/gpu-admin-tools.yaml pins the sha256 of the
  harness's fake wheel (the only pin that differs: same package, version and file name);
- TDX_VLLM_ARTIFACT_DIR: tests/fixtures/measurements/firmware, so
  `pins` is computed with `require_artifacts` (the stacks are not `dev`);
- two stacks (`e2e`, `e2e-pre`), one harness host each, set with `pulumi config set-all --path`
  (SSH private key and PCCS API key as secrets, host key pinned, `dcap.useSecureCert: false` as the
  staging template has it for the per-host PCCS, rebootTimeoutSeconds 60 = the schema's minimum, no
  BMC).

useSecureCert: the fake `sgx-dcap-pccs` package makes a self-signed certificate for localhost at
install time (as the real package does), so the per-host PCCS on loopback is used without verifying
it, exactly as a user's stack from the template does; nothing on the hosts is prepared beyond what
`pulumi up` does (issue 16: the tests once trusted that certificate through a `~/.curlrc`, which no
user has).

Stacks: `e2e` (a TDX-ready host: create, no-op, kernel pin change) and `e2e-pre` (a pre-production
CPU: preflight refuses, the host is fixed, the next `up` finishes). The tests run in file order
and build on each other; the last one destroys both stacks and checks what stays on the host.
Every fake host (sshd, namespaces, veth, files) is torn down when the module ends, also on failure.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator

import pytest
import yaml

from tests.support.engine import (
    EXTRA_ARG,
    PCCS_API_KEY,
    PROJECT,
    VENV,
    Engine,
    apply_calls,
    changed_steps,
    engine_unavailable,
    up_events,
)
from tests.support.hosts import profiles as H
from tests.support.hosts.nshost import namespace_hosts
from tests.support.paths import ARTIFACTS, REPO

KERNEL_ARGS = "nohibernate kvm_intel.tdx=1 intel_iommu=on"
NEW_ARG = "iommu=pt"

_reason = engine_unavailable()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

READY_HOST, PRE_HOST = "gpu-ready", "gpu-pre"


def _key_body(pem: str) -> list[str]:
    body = "".join(ln for ln in pem.splitlines() if "PRIVATE KEY" not in ln)
    return [body[:40], body[len(body) // 2 : len(body) // 2 + 40], body[-40:]]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, dict]]:
    root = tmp_path_factory.mktemp("program")
    with namespace_hosts([H.TDX_READY, H.PRE_PRODUCTION]) as hosts:
        eng = Engine(root)
        try:
            ready, pre = hosts["tdx_ready"], hosts["pre_production"]
            assert ready.wheel_sha256 == pre.wheel_sha256  # the fake wheel is reproducible
            eng.pin_fake_wheel(ready.wheel_sha256)
            eng.new_stack("e2e", ready, READY_HOST)
            eng.new_stack("e2e-pre", pre, PRE_HOST)
            yield eng, hosts
        finally:
            print("\npulumi timings (s): " + ", ".join(f"{n} {t:.1f}" for n, t in eng.timings))


def test_firmware_override_differs_only_in_the_wheel_pin(e2e) -> None:
    eng, hosts = e2e
    repo_pin = yaml.safe_load((REPO / "firmware/gpu/gpu-admin-tools.yaml").read_text())
    e2e_pin = yaml.safe_load((eng.firmware / "gpu/gpu-admin-tools.yaml").read_text())
    assert {k for k in repo_pin if repo_pin[k] != e2e_pin[k]} <= {"sha256"}
    assert e2e_pin["wheel"] == hosts["tdx_ready"].wheel_path.name
    assert e2e_pin["sha256"] == hosts["tdx_ready"].wheel_sha256
    diff = subprocess.run(["diff", "-r", str(REPO / "firmware"), str(eng.firmware)], capture_output=True, text=True)
    assert [ln for ln in diff.stdout.splitlines() if ln.startswith(("<", ">"))] == [
        f"< sha256: {repo_pin['sha256']}",
        f"> sha256: {e2e_pin['sha256']}",
    ], diff.stdout
    # the copy is the tracked files plus the .venv and bin links, nothing else
    tracked = set(
        filter(
            None,
            subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
            .stdout.decode()
            .split("\0"),
        )
    )
    copied = {
        q.relative_to(eng.project).as_posix()
        for q in eng.project.rglob("*")
        if (q.is_file() or q.is_symlink()) and q.relative_to(eng.project).parts[0] not in (".venv", "bin")
    }
    assert copied - tracked == {"stacks/Pulumi.e2e.yaml", "stacks/Pulumi.e2e-pre.yaml"}  # made by `config set`
    assert (eng.project / ".venv").is_symlink() and (eng.project / "bin").is_symlink()


def test_the_e2e_stacks_use_the_staging_templates_pccs_settings(e2e) -> None:
    # issue 16: the template's own first `up` must work, so the tests run what it says (no ~/.curlrc)
    eng, _hosts = e2e
    template = yaml.safe_load((REPO / "stacks" / "Pulumi.staging.yaml").read_text())["config"]["tdx-vllm:dcap"]
    ours = yaml.safe_load((eng.project / "stacks" / "Pulumi.e2e.yaml").read_text())["config"]["tdx-vllm:dcap"]
    assert str(ours["useSecureCert"]).lower() == str(template["useSecureCert"]).lower() == "false"
    assert "pccsUrl" not in template and "pccsUrl" not in ours  # the per-host PCCS


def test_up_runs_every_step_and_exports_the_observed_facts(e2e) -> None:
    eng, hosts = e2e
    h = hosts["tdx_ready"]
    boot0 = h.boot_id()
    p = eng.up("e2e", "up#1 create")
    assert "created" in p.stdout
    out = eng.outputs("e2e")
    assert out["ready"] is True
    facts = out["hosts"][READY_HOST]
    assert facts["ready"] is True
    assert facts["tdxModuleVersion"] == "1.5.16"
    assert facts["cpuGeneration"] == "Emerald Rapids" and facts["productionSilicon"] is True
    assert facts["os"] == "ubuntu-24.04"
    assert facts["gpus"] == [{"bdf": "0000:b8:00.0", "vbios": H.H100_VBIOS, "ccMode": "on", "ppcieMode": "off"}]
    assert facts["gpuAdminTools"] == "2025.11.21"
    assert facts["pccs"]["httpStatus"] == "200" and facts["registration"] == "registered"
    assert facts["tdxPrivateKeyIds"] == 64 and facts["teeIo"] is False
    assert facts["kernelCmdline"].endswith(f"{KERNEL_ARGS} {EXTRA_ARG}")
    # pins: computed from the fixture TD artifacts (require_artifacts for a non-dev stack)
    pins = out["pins"]
    computed = json.loads((ARTIFACTS / "computed-debian-ovmf.json").read_text())
    [trixie] = [f for f in computed["files"] if f["fixture"].endswith(pins["artifacts"]["firmware"]["file"])]
    assert pins["mrtd"] == trixie["mrtd_single_pass"]  # the three-implementation reference value
    assert pins["mrtdCandidates"]["twoPass"] == trixie["mrtd_two_pass"]
    # the fake host really ran the steps: GRUB drop-in, one reboot into a TDX boot, CC on, DCAP up
    st = h.state()
    assert h.boot_id() != boot0 and st["reboots"] == 1
    assert st["kvm_intel_tdx"] == "Y" and st["cmdline"].endswith(f"{KERNEL_ARGS} {EXTRA_ARG}")
    assert st["gpu"]["0000:b8:00.0"]["cc"] == "on"
    assert st["services"]["pccs"]["active"] and st["mpa"]["status"] == "completed"
    assert PCCS_API_KEY not in p.stdout


def test_converged_stack_previews_no_changes_and_up_applies_nothing(e2e) -> None:
    eng, hosts = e2e
    h = hosts["tdx_ready"]
    calls, boot = len(h.calls()), h.boot_id()
    eng.pulumi("preview", "--expect-no-changes", stack="e2e", label="preview (no changes)")
    p = eng.up("e2e", "up#2 no-op", True, "--json")
    ops, summary = up_events(p.stdout)
    assert ops == {} and set(summary["resourceChanges"]) == {"same"}, summary
    assert h.calls()[calls:] == []  # no command ran on the host at all
    assert h.boot_id() == boot
    assert eng.outputs("e2e")["ready"] is True


def test_a_changed_kernel_pin_reruns_only_the_kernel_steps(e2e) -> None:
    eng, hosts = e2e
    h = hosts["tdx_ready"]
    eng.config_set("e2e", {"platform.extraKernelArgs[1]": NEW_ARG})
    kernel = {f"{READY_HOST}-kernel-cmdline", f"{READY_HOST}-kernel-reboot", f"{READY_HOST}-kernel-wait"}
    preview = changed_steps(eng.preview_json("e2e"))
    assert preview == {name: "update" for name in kernel}, preview
    calls, boot, reboots = len(h.calls()), h.boot_id(), h.state()["reboots"]
    gpu_sets = len(h.gpu_tool_calls(sets_only=True))
    p = eng.up("e2e", "up#3 kernel pin", True, "--json")
    applied, summary = up_events(p.stdout)
    assert applied == {name: "update" for name in kernel}, applied
    assert summary["resourceChanges"].get("update") == 3 and set(summary["resourceChanges"]) == {"same", "update"}
    st = h.state()
    assert st["reboots"] == reboots + 1 and h.boot_id() != boot
    assert st["cmdline"].endswith(f"{EXTRA_ARG} {NEW_ARG}")
    tools = {c["tool"] for c in apply_calls(h, calls)}
    # GRUB rewritten and a reboot scheduled (systemd-run + systemctl); no package, no GPU mode change
    assert tools == {"update-grub", "systemd-run", "systemctl"}, tools
    assert len(h.gpu_tool_calls(sets_only=True)) == gpu_sets
    facts = eng.outputs("e2e")["hosts"][READY_HOST]
    assert facts["kernelCmdline"].endswith(NEW_ARG) and facts["ready"] is True
    eng.pulumi("preview", "--expect-no-changes", stack="e2e")


def test_a_host_on_another_os_than_platform_os_is_refused_before_any_change(e2e) -> None:
    # issue 16: `platform.os` reached no step, so a stack for 26.04 ended ready on a 24.04 host
    eng, hosts = e2e
    h = hosts["tdx_ready"]
    calls = len(h.calls())
    eng.config_set("e2e", {"platform.os": "ubuntu-26.04"})
    p = eng.up("e2e", "up platform.os mismatch", ok=False)
    assert re.search(
        r"error: preflight: the host runs another OS than the stack says; expected platform.os ubuntu-26.04, "
        r"seen ubuntu-24.04 \(/etc/os-release\); fix: set platform.os: ubuntu-24.04",
        p.stdout,
    ), p.stdout[-6000:]
    # issue 16: the step's diagnostics open with the host (in the resource name), the step and the
    # fix; the provider's headline names only `bash -s`, not the loader that runs the script.
    assert re.search(
        r"  command:remote:Command \(gpu-ready-preflight-check\):\n"
        r"    error: Process exited with status 1: running \"bash -s\":\n"
        r"    error: preflight: the host runs another OS than the stack says; .*; fix: set platform.os",
        p.stdout,
    ), p.stdout[-6000:]
    assert "mktemp" not in p.stdout and "warning:" not in p.stdout
    assert not apply_calls(h, calls), "a step after the refused preflight changed the host"
    # issue 16: Pulumi keeps the outputs of the last successful update, so they still say ready...
    assert eng.outputs("e2e")["ready"] is True
    # ...and `status` tells the truth: the failed run, its host and step, and why.
    rc, status = eng.status("e2e")
    assert rc == 1 and status["ready"] is False, status
    assert status["lastUpdate"]["kind"] == "update" and status["lastUpdate"]["result"] == "failed"
    assert status["outputsReady"] is True and any("still says true" in n for n in status["notes"]), status["notes"]
    host = status["hosts"][READY_HOST]
    assert host["firstProblem"].startswith(
        "preflight: the host runs another OS than the stack says; expected platform.os ubuntu-26.04, "
        "seen ubuntu-24.04 (/etc/os-release); fix: set platform.os: ubuntu-24.04"
    ), host
    states = {s["step"]: s["state"] for s in host["steps"]}
    assert states == dict.fromkeys(("scripts", "host-tools", "bios-verify", "kernel", "gpu-cc", "dcap"), "in_sync") | {
        "preflight": "refused"
    }, states
    assert not apply_calls(h, calls), "status changed the host"
    eng.config_set("e2e", {"platform.os": "ubuntu-24.04"})
    eng.pulumi("preview", "--expect-no-changes", stack="e2e")
    # The fixed config converges with a run that applies nothing; only then is the stack ready again.
    assert eng.status("e2e")[0] == 1
    eng.up("e2e", "up after the os fix (no-op)")
    rc, status = eng.status("e2e")
    assert rc == 0 and status["ready"] is True and status["notes"] == [], status
    assert not apply_calls(h, calls)


def test_status_of_a_stack_it_cannot_read_says_why(e2e) -> None:
    eng, _ = e2e
    cmd = [str(VENV / "bin" / "python"), "-m", "components", "status", "--stack", "no-such-stack"]
    p = subprocess.run(cmd, cwd=eng.project, env=eng.env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("error: status: `pulumi config --show-secrets --stack no-such-stack` failed: error: ")
    assert "fix: source tools/env.sh" in p.stderr


def test_status_names_drift_on_a_host_that_pulumi_cannot_see(e2e) -> None:
    # A person edits a kernel argument out of the GRUB drop-in and flips a GPU out of CC mode by hand:
    # `pulumi preview` sees nothing; `status` names exactly those two, with what it expected and saw.
    from components.render.steps import Rendered
    from tests.support.hosts import sshrun

    eng, hosts = e2e
    h = hosts["tdx_ready"]
    bdf = eng.outputs("e2e")["hosts"][READY_HOST]["gpus"][0]["bdf"]
    dropin = "/etc/default/grub.d/90-tdxgpu.cfg"
    original = h.host_path(dropin).read_text()
    assert "intel_iommu=on" in original
    sshrun.run(h.target(), Rendered(command=f"sed -i 's/ intel_iommu=on//' {dropin}", stdin=""))
    h.set_gpu_mode(bdf, cc="off")
    try:
        eng.pulumi("preview", "--expect-no-changes", stack="e2e")
        rc, status = eng.status("e2e")
        assert rc == 3 and status["ready"] is False, status
        host = status["hosts"][READY_HOST]
        drifted = {s["step"]: s["problems"] for s in host["steps"] if s["state"] != "in_sync"}
        assert set(drifted) == {"kernel", "gpu-cc"}, drifted
        (kernel,) = drifted["kernel"]
        found = re.fullmatch(
            r'the GRUB drop-in differs; expected args "(.*)", seen (.*); fix: apply rewrites it and runs update-grub',
            kernel,
        )
        assert found and "intel_iommu=on" in found[1] and "intel_iommu=on" not in found[2], kernel
        assert drifted["gpu-cc"] == [
            f"GPU {bdf} CC mode; expected on, seen off; fix: apply runs nvidia_gpu_tools.py --set-cc-mode=on"
        ], drifted
        assert any("changed since the last `pulumi up`" in n for n in status["notes"]), status["notes"]
    finally:
        h.set_gpu_mode(bdf, cc="on")
        sshrun.run(h.target(), Rendered(command=f"cat >{dropin}", stdin=original))
    assert eng.status("e2e")[0] == 0


def test_a_wrong_pinned_host_key_fails_at_once_with_the_fix(e2e) -> None:
    # issue 16: the provider retried a host-key mismatch ten times (~11 s) and named no fix
    from tests.support.hosts.nshost import new_ssh_key

    eng, hosts = e2e
    h = hosts["tdx_ready"]
    calls = len(h.calls())
    other = new_ssh_key()[1]
    eng.config_set("e2e", {"hosts[0].ssh.hostKey": f"{h.address} {other}"})  # as ssh-keyscan prints it
    t0 = time.monotonic()
    p = eng.up("e2e", "up wrong host key", ok=False)
    took = time.monotonic() - t0
    assert re.search(
        rf"error: ssh-check: {re.escape(h.address)}:22 presents ssh-ed25519 SHA256:\S+, not the pinned "
        r"hosts\[0\]\.ssh\.hostKey \(ssh-ed25519 SHA256:\S+\); fix: if the host was reinstalled",
        p.stdout,
    ), p.stdout[-6000:]
    assert "Dial 2/" not in p.stdout  # no retries: the first handshake decided
    assert h.calls()[calls:] == [], "nothing ran on the host"
    assert took < 30, took  # engine start-up included; the dial itself is one handshake
    rc, status = eng.status("e2e")  # status makes the same handshake before it sends anything
    assert rc == 1, status
    assert re.fullmatch(
        rf"{re.escape(h.address)}:22 presents ssh-ed25519 SHA256:\S+, not the pinned ssh-ed25519 SHA256:\S+ "
        r"\(hosts\[0\]\.ssh\.hostKey\); nothing was sent; fix: if the host was reinstalled, .*",
        status["hosts"][READY_HOST]["unreachable"],
    ), status
    assert h.calls()[calls:] == []
    eng.config_set("e2e", {"hosts[0].ssh.hostKey": h.host_key})
    eng.pulumi("preview", "--expect-no-changes", stack="e2e")


def test_a_host_failing_preflight_fails_up_then_resumes_once_fixed(e2e) -> None:
    eng, hosts = e2e
    h = hosts["pre_production"]
    p = eng.up("e2e-pre", "up#4 preflight fails", ok=False)
    assert re.search(
        r"error: preflight: pre-production CPU \(MSR 0xCE bit 27 set\);.*fix: use production CPUs", p.stdout
    ), p.stdout[-6000:]
    assert not apply_calls(h), "a step after the failed preflight changed the host"
    assert h.state()["reboots"] == 0
    resources = eng.state("e2e-pre")["checkpoint"]["latest"].get("resources") or []
    # Only the SSH probe, the scripts and the host-tools step ran to completion before preflight; the failed check
    # is not recorded.
    recorded = [r["urn"].rsplit("::", 1)[-1] for r in resources if r["type"].startswith("command:")]
    assert recorded == [f"{PRE_HOST}-ssh-check", f"{PRE_HOST}-scripts", f"{PRE_HOST}-tools-install"], recorded
    # A failed first `up` leaves no outputs at all; `status` names the host, the step and why.
    rc, status = eng.status("e2e-pre")
    assert rc == 1 and status["outputsReady"] is None and status["lastUpdate"]["result"] == "failed", status
    assert status["hosts"][PRE_HOST]["firstProblem"].startswith(
        "preflight: pre-production CPU (MSR 0xCE bit 27 set); expected production silicon"
    ), status
    h.set_msr(0xCE, H.PRODUCTION_MSRS[0xCE])  # the provider swapped in production CPUs
    # The next `up` is killed (CLI, language host, program and provider at once) as soon as the
    # host has scheduled its reboot, i.e. in the middle of the kernel reboot step; the host reboots
    # anyway. The `up` after it re-runs that step (the host is then down or already in the new boot:
    # it dials, sees the TDX arguments running, schedules no second reboot) and finishes.
    t = time.monotonic()
    killed = eng.up_killed_when("e2e-pre", lambda: bool(h.calls("systemd-run")))
    eng.timings.append(("up#5 killed at the reboot", time.monotonic() - t))
    assert killed.returncode != 0
    # The engine recorded the step it had started as a pending create (normally the reboot step;
    # the wait step if the kill came a moment later).
    cut = {f"{PRE_HOST}-kernel-reboot", f"{PRE_HOST}-kernel-wait"}
    pending = [
        op["resource"]["urn"].rsplit("::", 1)[-1]
        for op in eng.state("e2e-pre")["checkpoint"]["latest"].get("pending_operations") or []
    ]
    assert len(pending) == 1 and set(pending) <= cut, pending
    # What an operator does after a killed run: release the killed run's lock, then run `up` again.
    eng.pulumi("cancel", "--yes", stack="e2e-pre")
    resumed = eng.up("e2e-pre", "up#6 resumes")
    assert "pending operations from previous deployment" in resumed.stdout
    out = eng.outputs("e2e-pre")
    assert out["ready"] is True and out["hosts"][PRE_HOST]["productionSilicon"] is True
    assert out["hosts"][PRE_HOST]["gpus"][0]["ccMode"] == "on"
    assert h.state()["reboots"] == 1 and h.state()["kvm_intel_tdx"] == "Y"  # one reboot in all
    # The killed run's pending create stays recorded until a refresh drops it (a command that was
    # cut off has nothing to import or clean up).
    still = [
        op["resource"]["urn"].rsplit("::", 1)[-1]
        for op in eng.state("e2e-pre")["checkpoint"]["latest"].get("pending_operations") or []
    ]
    assert still == pending
    eng.pulumi("refresh", "--clear-pending-creates", "--yes", "--skip-preview", stack="e2e-pre")
    assert not eng.state("e2e-pre")["checkpoint"]["latest"].get("pending_operations")
    eng.pulumi("preview", "--expect-no-changes", stack="e2e-pre")


def test_no_secret_in_plain_text_in_the_backend(e2e) -> None:
    eng, hosts = e2e
    needles = [
        PCCS_API_KEY,
        *_key_body(hosts["tdx_ready"].client_private_key),
        *_key_body(hosts["pre_production"].client_private_key),
    ]
    files = [p for p in eng.backend.rglob("*") if p.is_file()]
    names = {p.relative_to(eng.backend).as_posix() for p in files}
    assert f".pulumi/stacks/{PROJECT}/e2e.json" in names
    assert any("/history/" in n for n in names) and any("/backups/" in n or n.endswith(".bak") for n in names), names
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle.encode() not in data, f"{needle[:10]}... in plain text in {path}"
    # nor in the outputs (as read without --show-secrets), nor in the stack config files
    plain = eng.pulumi("stack", "output", "--json", stack="e2e").stdout
    for stack in ("e2e", "e2e-pre"):
        text = (eng.project / "stacks" / f"Pulumi.{stack}.yaml").read_text()
        plain += text
        assert "secure:" in text
    for needle in needles:
        assert needle not in plain
    by_name = {r["urn"].rsplit("::", 1)[-1]: r for r in eng.state("e2e")["checkpoint"]["latest"]["resources"]}
    dcap = by_name[f"{READY_HOST}-dcap-services"]
    assert "ciphertext" in json.dumps(dcap["inputs"]["stdin"]) and "ciphertext" in json.dumps(
        dcap["outputs"]["connection"]
    )


def test_destroy_removes_what_the_stack_installed_and_leaves_the_settings(e2e) -> None:
    """`pulumi destroy` runs the removable steps' `remove`: the gpu-admin-tools install and the DCAP
    packages this stack installed (services stopped, config purged) go. What stays, deliberately:
    the GRUB drop-in and kernel command line (restoreOnDestroy is false), the BIOS settings (MSRs)
    and the GPUs' CC mode (docs/decisions.md)."""
    eng, hosts = e2e
    h = hosts["tdx_ready"]
    for stack in ("e2e", "e2e-pre"):
        eng.pulumi("destroy", "--yes", "--skip-preview", stack=stack, label=f"destroy {stack}")
        resources = eng.state(stack)["checkpoint"]["latest"].get("resources") or []
        assert not [r for r in resources if r["type"].startswith("command:")]
    st = h.state()
    assert h.host_path("/etc/default/grub.d/90-tdxgpu.cfg").exists()
    assert st["cmdline"].endswith(f"{EXTRA_ARG} {NEW_ARG}") and st["kvm_intel_tdx"] == "Y"
    assert st["gpu"]["0000:b8:00.0"]["cc"] == "on"
    assert not h.host_path("/opt/tdxgpu/gpu-admin-tools/2025.11.21").exists()
    assert "sgx-dcap-pccs" not in st["packages"] and "pccs" not in st["services"]
    assert not h.host_path("/opt/intel/sgx-dcap-pccs/config/default.json").exists()
    # the run wrote nothing into the repository
    assert not (REPO / "stacks" / "Pulumi.e2e.yaml").exists() and not (REPO / "stacks" / "Pulumi.e2e-pre.yaml").exists()
