"""The production host scripts (components/scripts/) against fake TDX hosts over real SSH.

Every step is rendered with components.render.steps.render exactly as the Pulumi components render it and
run with tests/support/hosts/sshrun.py the way pulumi-command's remote.Command runs it, against
NamespaceHosts (real sshd in network namespaces with faked hardware, tests/support/hosts/nshost.py).
Nothing here talks to anything but addresses inside the namespaces the fixtures create.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from components.catalog.bios import load_vendor_table
from components.catalog.dcap import dcap_packages
from components.catalog.gpu import GpuAdminTools, gpu_sku
from components.catalog.host_tools import host_tool_packages
from components.config.model import DcapConfig, GpuConfig, PlatformConfig, Secret, TdxModulePin
from components.render.host_steps import BIOS_VERIFY_STEP as BIOS_VERIFY
from components.render.host_steps import DCAP_STEP as DCAP
from components.render.host_steps import GPU_STEP as GPU
from components.render.host_steps import HOST_TOOLS_STEP as HOST_TOOLS
from components.render.host_steps import KERNEL_STEP as KERNEL
from components.render.host_steps import PREFLIGHT_STEP as PREFLIGHT
from components.render.host_steps import bios_verify_params, host_tools_params
from components.render.host_steps import dcap_params as component_dcap_params
from components.render.host_steps import gpu_params as component_gpu_params
from components.render.host_steps import kernel_params as component_kernel_params
from components.render.host_steps import preflight_params as component_preflight_params
from components.render.steps import DELETE_COMMAND, SCRIPTS_DIR, Rendered, Step, render
from tests.support.hosts import profiles as H
from tests.support.hosts import sshrun
from tests.support.hosts.nshost import TOOLS_PACKAGE, TOOLS_VERSION, make_vbios_rom, namespace_hosts, new_ssh_key
from tests.support.hosts.sshrun import CommandFailed

pytestmark = pytest.mark.harness

# The steps and their parameters come from the components themselves, so the harness runs what
# `pulumi up` runs.
KERNEL_ARGS = "nohibernate kvm_intel.tdx=1 intel_iommu=on"  # components/config.py BASE_KERNEL_ARGS
FAST_BOOT = {"TDX_REBOOT_DELAY": "1", "TDX_WAIT_POLL": "1"}
PCCS_API_KEY = "pcs-api-key-5f3c9a"


@pytest.fixture(scope="module")
def hosts(nshost_factory):
    """Seven fake hosts, started in parallel for the module (about 2 s), torn down after it."""
    return nshost_factory(
        [H.FRESH, H.TDX_READY, H.TDX_OFF_IN_BIOS, H.GPU_WRONG_MODE, H.WRONG_VBIOS, H.NVIDIA_LOADED, H.PRE_PRODUCTION]
    )


def run(host, step: Step, params: dict, action: str = "run", **target) -> sshrun.Result:
    return sshrun.run(host.target(**target), render(step, params, action), deadline_s=60)


def fails(host, step: Step, params: dict, action: str = "run", **target) -> CommandFailed:
    with pytest.raises(CommandFailed) as info:
        run(host, step, params, action, **target)
    return info.value


def error_lines(exc: CommandFailed) -> list[str]:
    return [ln for ln in exc.stderr.splitlines() if ln.startswith("error: ")]


def preflight_params(count: int = 1) -> dict:
    return component_preflight_params(
        GpuConfig(model="h100-sxm", count=count, mode="on"), gpu_sku("h100-sxm"), False, ()
    )


def bios_params() -> dict:
    return bios_verify_params(load_vendor_table("intel"))


def kernel_params() -> dict:
    return component_kernel_params(
        PlatformConfig(os="ubuntu-26.04", extra_kernel_args=(), tdx_modules=(TdxModulePin("1.5.16", "00" * 48),))
    )


def gpu_params(host, **over) -> dict:
    """components/gpu.py gpu_params, with the pin of the wheel the host's package index serves."""
    sha = hashlib.sha256(host.wheel_path.read_bytes()).hexdigest()
    count = len([g for g in host.profile.gpus if g.kind == "gpu"])
    tools = GpuAdminTools(package=TOOLS_PACKAGE, version=TOOLS_VERSION, wheel=host.wheel_path.name, sha256=sha)
    p = component_gpu_params(GpuConfig(model="h100-sxm", count=count, mode="on"), gpu_sku("h100-sxm"), tools)
    p.update(over)
    return p


def reboot_and_wait(host, params: dict, *, timeout: int = 20) -> tuple[sshrun.Result, sshrun.Result]:
    """The reboot command, then the wait command fed from the reboot's facts, as
    components/remote_step.reboot_and_wait wires them (wait dials without limit)."""
    reboot = run(host, KERNEL, {**params, **FAST_BOOT}, "reboot")
    assert reboot.facts is not None
    wait_params = {
        **params,
        **FAST_BOOT,
        "TDX_PREV_BOOT_ID": str(reboot.facts.get("boot_id", "")),
        "TDX_REBOOTING": "true" if reboot.facts.get("rebooting") else "false",
        "TDX_WAIT_TIMEOUT": str(timeout),
    }
    wait = run(host, KERNEL, wait_params, "wait", dial_error_limit=-1)
    return reboot, wait


def reboot_then_failing_wait(host) -> CommandFailed:
    """The kernel step's reboot, then its wait, which must fail within 1 s of the new boot."""
    reboot = run(host, KERNEL, {**kernel_params(), **FAST_BOOT}, "reboot")
    assert reboot.facts is not None and reboot.facts["rebooting"] is True
    wait_params = {
        **kernel_params(),
        **FAST_BOOT,
        "TDX_PREV_BOOT_ID": reboot.facts["boot_id"],
        "TDX_REBOOTING": "true",
        "TDX_WAIT_TIMEOUT": "1",
    }
    with pytest.raises(CommandFailed) as info:
        run(host, KERNEL, wait_params, "wait", dial_error_limit=-1)
    return info.value


# ----------------------------------------------------------------------------------------------
# the harness itself


def test_vbios_rom_round_trips_through_the_production_parser():
    spec = importlib.util.spec_from_file_location("vbios_version_under_test", SCRIPTS_DIR / "vbios_version.py")
    vbios_version = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vbios_version)
    for version in (H.H100_VBIOS, "96.00.A5.00.03", "96.00.5E.00.02"):
        rom = make_vbios_rom(version)
        assert rom[:2] == b"\x55\xaa"
        assert vbios_version.parse_vbios_version(rom) == version


def test_fake_host_facts_and_pinned_host_key(hosts):
    h = hosts["tdx_ready"]
    r = sshrun.run(
        h.target(),
        Rendered(
            command="hostname; cat /proc/sys/kernel/random/boot_id; ls /sys/class/tsm 2>&1 | head -1; modprobe -r msr; "
            "rdmsr -p 0 -0 0x1401 2>&1; modprobe msr; rdmsr -p 0 -0 0x1401",
            stdin="",
        ),
    )
    hostname, boot_id, tsm, no_msr_module, msr = r.stdout.splitlines()[:5]
    assert hostname == "tdx-ready" and boot_id == h.boot_id()
    assert "No such file" in tsm
    assert no_msr_module == "rdmsr: open: No such file or directory"
    assert msr == f"{H.PRODUCTION_MSRS[0x1401]:016x}"
    # A host key other than the pinned one is refused at once, never accepted or remembered.
    _, other = new_ssh_key()
    start = time.monotonic()
    with pytest.raises(sshrun.HostKeyMismatch):
        sshrun.run(h.target(host_key=other, dial_error_limit=-1), render(PREFLIGHT, preflight_params()), deadline_s=10)
    assert time.monotonic() - start < 5


# ----------------------------------------------------------------------------------------------
# preflight


def test_a_fresh_server_gets_the_tools_the_steps_call_then_preflight_passes(hosts):
    """Ubuntu server without msr-tools or python3-pip and with empty apt lists, BIOS at factory
    defaults: the host-tools step refreshes apt and installs what is missing; preflight then reads
    only MSRs that exist before the BIOS phases (not SGX's 0x503)."""
    h = hosts["fresh"]
    before = fails(h, PREFLIGHT, preflight_params())
    assert any("rdmsr is missing" in ln and "host-tools" in ln for ln in error_lines(before)), before.output

    first = run(h, HOST_TOOLS, host_tools_params(host_tool_packages()))
    f = first.facts
    assert f["ok"] is True and f["changed"] is True, first.stderr
    assert sorted(f["installed"]) == ["msr-tools", "python3-pip"]
    assert f["packages"]["msr-tools"] == "1.3-5build1" and f["packages"]["pciutils"] == "1:3.10.0-2build1"
    apt = [c["argv"] for c in h.calls("apt-get")]
    assert apt[0][0] == "update" and apt[1][:1] == ["install"], apt  # lists first: a fresh image has none

    second = run(h, HOST_TOOLS, host_tools_params(host_tool_packages()))
    assert second.facts["changed"] is False and len(h.calls("apt-get")) == len(apt)

    pre = run(h, PREFLIGHT, preflight_params()).facts
    assert pre["ok"] is True and pre["production_silicon"] is True and pre["tdx_host_platform"] is False
    assert not any(c["argv"][-1] in ("0x503", "0x87") for c in h.calls("rdmsr"))


def test_a_pinned_host_tool_version_that_differs_is_reinstalled(hosts):
    h = hosts["tdx_ready"]
    err = fails(h, HOST_TOOLS, {"TDX_PACKAGES": "msr-tools=1.2*", "TDX_MODE": "check"})
    assert any("package msr-tools version" in ln and "expected 1.2*, seen 1.3-5build1" in ln for ln in error_lines(err))
    assert run(h, HOST_TOOLS, {"TDX_PACKAGES": "msr-tools=1.3*"}).facts["changed"] is False


def test_preflight_reports_the_ready_host(hosts):
    h = hosts["tdx_ready"]
    f = run(h, PREFLIGHT, preflight_params()).facts
    assert f["ok"] is True and f["changed"] is False
    assert f["cpu_generation"] == "Emerald Rapids" and f["tdx_host_platform"] is True
    assert f["production_silicon"] is True and f["microcode"] == "0x21000283"
    assert f["os"] == "ubuntu-24.04" and f["kernel"] == "7.1.0-generic"
    assert f["gpus"] == [{"bdf": "0000:b8:00.0", "device_id": "2330"}]
    assert f["boot_id"] == h.boot_id()
    assert f["tee_io"]["enabled"] is False and f["tee_io"]["pci_tsm"] is False


def test_preflight_refuses_a_pre_production_cpu(hosts):
    err = fails(hosts["pre_production"], PREFLIGHT, preflight_params())
    assert err.facts["ok"] is False
    [line] = error_lines(err)
    assert "pre-production CPU (MSR 0xCE bit 27 set)" in line
    assert "fix: use production CPUs" in line


def test_preflight_refuses_too_few_gpus(hosts):
    err = fails(hosts["tdx_ready"], PREFLIGHT, preflight_params(count=8))
    [line] = error_lines(err)
    assert "too few GPUs of the pinned model" in line and "seen 1" in line
    assert "fix: check gpu.model/gpu.count in the stack" in line


def test_preflight_refuses_tee_io_without_a_pci_tsm(hosts):
    err = fails(hosts["tdx_ready"], PREFLIGHT, {**preflight_params(), "TDX_TEE_IO": "true"})
    [line] = error_lines(err)
    assert "/sys/class/tsm" in line and "fix: set teeIo: false" in line


# ----------------------------------------------------------------------------------------------
# bios-verify


def test_bios_verify_passes_on_the_ready_host(hosts):
    f = run(hosts["tdx_ready"], BIOS_VERIFY, bios_params()).facts
    assert f["ok"] is True and f["changed"] is False
    assert f["tme_enabled"] is True and f["tme_mt_keyid_bits"] == 6 and f["tdx_private_keyids"] == 64


def test_bios_verify_names_every_missing_setting_and_the_change_to_ask_for(hosts):
    h = hosts["tdx_off_in_bios"]
    calls_before = len(h.calls())
    err = fails(h, BIOS_VERIFY, bios_params())
    lines = error_lines(err)
    assert all("fix: " in ln for ln in lines)
    joined = "\n".join(lines)
    expected = {
        "TME is off": 'fix: ask the provider to set BIOS "Memory Encryption (TME) = Enabled"',
        "TME-MT has no KeyID bits": '"Total Memory Encryption Multi-Tenant (TME-MT) = Enabled"',
        "the SEAM range is not enabled": '"Trust Domain Extension (TDX) = Enabled"',
        # MSR 0x87 does not exist while TME-MT is off: the BIOS change, not an MSR-access hint.
        "the TDX key split cannot be read (MSR 0x87 faults: TME-MT is off)": '"TME-MT/TDX key split = 1"',
    }
    assert len(lines) == len(expected), joined
    assert not any("lockdown" in ln or "modprobe msr" in ln for ln in lines), joined
    for what, fix in expected.items():
        assert any(what in ln and fix in ln for ln in lines), f"{what} / {fix} not in:\n{joined}"
    assert any(
        "SEAM range" in ln and '"TDX Secure Arbitration Mode Loader (SEAM Loader) = Enabled"' in ln for ln in lines
    )
    assert err.facts["tdx_host_platform"] is False and err.facts["seamrr_enabled"] is False
    # check mode: nothing was changed on the host
    assert {c["tool"] for c in h.calls()[calls_before:]} <= {"rdmsr", "modprobe"}


# ----------------------------------------------------------------------------------------------
# kernel: GRUB drop-in, reboot, wait


def test_kernel_check_apply_verify_then_nothing_to_apply(hosts):
    h = hosts["tdx_ready"]
    sshrun.run(h.target(), Rendered(command="rm -f /etc/default/grub.d/90-tdxgpu.cfg", stdin=""))
    runs = h.state()["grub"]["update_grub_runs"]
    first = run(h, KERNEL, kernel_params())
    assert first.facts["ok"] is True and first.facts["changed"] is True
    running = h.state()["cmdline"].split()
    assert first.facts["reboot_required"] is not all(a in running for a in KERNEL_ARGS.split())
    assert "kernel: applying (1 change)" in first.stderr
    dropin = h.host_path("/etc/default/grub.d/90-tdxgpu.cfg").read_text()
    assert f'GRUB_CMDLINE_LINUX_DEFAULT="${{GRUB_CMDLINE_LINUX_DEFAULT}} {KERNEL_ARGS}"' in dropin
    assert not Path("/etc/default/grub.d/90-tdxgpu.cfg").exists()  # the real machine is untouched
    assert h.state()["grub"]["update_grub_runs"] == runs + 1
    assert h.state()["grub"]["next_cmdline"].endswith(f"quiet splash {KERNEL_ARGS}")

    second = run(h, KERNEL, kernel_params())
    assert second.facts["changed"] is False and "applying" not in second.stderr
    assert h.state()["grub"]["update_grub_runs"] == runs + 1

    # A changed argument list rewrites the drop-in (and reruns update-grub) once.
    third = run(h, KERNEL, {**kernel_params(), "TDX_KERNEL_ARGS": KERNEL_ARGS + " iommu=pt"})
    assert third.facts["changed"] is True and h.state()["grub"]["update_grub_runs"] == runs + 2
    run(h, KERNEL, kernel_params())
    assert h.state()["grub"]["update_grub_runs"] == runs + 3

    # A line break would end the GRUB variable and make the rest a command of GRUB's scripts: the step
    # refuses it even from a caller that skipped the config's validation (issue 17).
    exc = fails(h, KERNEL, {**kernel_params(), "TDX_KERNEL_ARGS": KERNEL_ARGS + ' quiet\nGRUB_TIMEOUT="0"'})
    assert error_lines(exc)[0].startswith("error: kernel: the kernel arguments hold a character GRUB would interpret")
    assert KERNEL_ARGS in h.host_path("/etc/default/grub.d/90-tdxgpu.cfg").read_text()
    assert "GRUB_TIMEOUT" not in h.host_path("/etc/default/grub.d/90-tdxgpu.cfg").read_text()
    assert h.state()["grub"]["update_grub_runs"] == runs + 3


def test_kernel_reboot_then_wait_sees_the_new_boot_with_tdx(hosts):
    h = hosts["tdx_ready"]
    run(h, KERNEL, kernel_params())
    old_boot, reboots = h.boot_id(), h.state()["reboots"]
    reboot, wait = reboot_and_wait(h, kernel_params())
    assert reboot.facts["rebooting"] is True and reboot.facts["boot_id"] == old_boot
    assert "kernel: rebooting: the running kernel lacks TDX arguments" in reboot.stderr
    assert wait.dials > 1 and all("refused" in e for e in wait.dial_errors)  # the old boot never answered
    f = wait.facts
    assert f["ok"] is True and f["boot_id"] != old_boot and f["boot_id"] == h.boot_id()
    assert f["kvm_intel_tdx"] == "Y" and f["tdx_module_version"] == "1.5.16"
    assert f["cmdline"].endswith(KERNEL_ARGS)
    assert h.state()["reboots"] == reboots + 1

    # Converged: the reboot command sees the effect and schedules no reboot.
    scheduled = len(h.calls("systemd-run"))
    again = run(h, KERNEL, {**kernel_params(), **FAST_BOOT}, "reboot")
    assert again.facts["rebooting"] is False and again.facts["changed"] is False
    assert len(h.calls("systemd-run")) == scheduled and h.boot_id() == f["boot_id"]
    # During a module upgrade the pin is a list: a host still on the old release is converged too.
    upgrade = {**kernel_params(), **FAST_BOOT, "TDX_MODULE_VERSIONS": "1.5.16 1.5.34"}
    assert run(h, KERNEL, upgrade, "reboot").facts["rebooting"] is False
    assert len(h.calls("systemd-run")) == scheduled


def test_kernel_wait_fails_with_the_tdx_diagnosis_when_bios_lacks_tdx(hosts):
    h = hosts["tdx_off_in_bios"]
    run(h, KERNEL, kernel_params())
    old_boot = h.boot_id()
    err = reboot_then_failing_wait(h)
    assert err.facts["boot_id"] != old_boot and err.facts["kvm_intel_tdx"] == "N"
    lines = error_lines(err)
    assert all("fix: " in ln for ln in lines)
    # Linux 7.1's own line for a BIOS without TME-MT (tests/fixtures/host/kernel/tdx-disabled-in-bios.dmesg)
    diagnosis = "fix: enable TDX, TME-MT and the key split in BIOS"
    assert any("KVM's TDX support is off" in ln and diagnosis in ln for ln in lines), "\n".join(lines)
    assert any(
        "the TDX module is not initialised" in ln and "virt/tdx: TDX not supported by the host platform" in ln
        for ln in lines
    )
    assert any("differs from the pin" in ln and "seen unknown" in ln for ln in lines)


def test_kernel_wait_names_the_module_upgrade_when_the_kernel_refuses_it(hosts):
    """The module has the RBP clobber bug: Linux 7.1 logs its version, then refuses it."""
    h = hosts["pre_production"]  # used only by a preflight test
    h.set_profile(tdx_failure_log="rbp-clobber.dmesg")
    run(h, KERNEL, kernel_params())
    err = reboot_then_failing_wait(h)
    lines = error_lines(err)
    assert err.facts["tdx_module_version"] == "1.5.00"
    assert any("not initialised" in ln and "upgrade the TDX module" in ln for ln in lines), "\n".join(lines)
    assert any("differs from the pin" in ln and "expected 1.5.16, seen 1.5.00" in ln for ln in lines)
    h.set_profile(tdx_failure_log=None)


# ----------------------------------------------------------------------------------------------
# gpu-cc


def test_gpu_cc_check_apply_verify_then_nothing_to_apply(hosts):
    h = hosts["tdx_ready"]
    first = run(h, GPU, gpu_params(h))
    f = first.facts
    assert f["ok"] is True and f["changed"] is True
    assert f["gpus"] == [
        {"bdf": "0000:b8:00.0", "vbios": H.H100_VBIOS, "driver": "none", "cc_mode": "on", "ppcie_mode": "off"}
    ]
    assert h.state()["gpu"]["0000:b8:00.0"]["cc"] == "on"
    installed = h.host_path(f"/opt/tdxgpu/gpu-admin-tools/{TOOLS_VERSION}")
    assert (installed / ".wheel-sha256").read_text() == h.wheel_sha256
    assert (installed / "nvidia_gpu_tools.py").exists()
    sets = h.gpu_tool_calls(sets_only=True)
    # PPCIe is already off: only the CC switch runs
    assert [c["argv"][2:] for c in sets] == [
        ["--gpu-bdf=0000:b8:00.0", "--set-cc-mode=on", "--reset-after-cc-mode-switch"],
    ]

    second = run(h, GPU, gpu_params(h))
    assert second.facts["changed"] is False and second.facts["gpus"] == f["gpus"]
    assert len(h.gpu_tool_calls(sets_only=True)) == len(sets)  # no --set-* on the second run


def test_gpu_cc_switches_the_wrong_mode_host_on_from_the_offline_wheel(hosts):
    h = hosts["gpu_wrong_mode"]
    h.set_gpu_mode("0000:b8:00.0", cc="devtools", ppcie="on")
    h.set_gpu_mode("0000:ba:00.0", cc="off", ppcie="on")
    calls = len(h.gpu_tool_calls(sets_only=True))
    first = run(h, GPU, gpu_params(h))
    assert first.facts["ok"] is True and first.facts["changed"] is True
    assert {g["bdf"]: (g["cc_mode"], g["ppcie_mode"], g["driver"]) for g in first.facts["gpus"]} == {
        "0000:b8:00.0": ("on", "off", "vfio-pci"),
        "0000:ba:00.0": ("on", "off", "vfio-pci"),
    }
    # installed by the real `python3 -m pip download` from the host's offline index (its pip.conf)
    assert h.host_path(f"/opt/tdxgpu/gpu-admin-tools/{TOOLS_VERSION}/.wheel-sha256").read_text() == h.wheel_sha256
    # PPCIe goes off before CC goes on, where it is on (canonical/tdx setup-gpus.sh order)
    per_gpu = [c["argv"][2:4] for c in h.gpu_tool_calls(sets_only=True)[calls:]]
    assert per_gpu == [
        ["--gpu-bdf=0000:b8:00.0", "--set-ppcie-mode=off"],
        ["--gpu-bdf=0000:b8:00.0", "--set-cc-mode=on"],
        ["--gpu-bdf=0000:ba:00.0", "--set-ppcie-mode=off"],
        ["--gpu-bdf=0000:ba:00.0", "--set-cc-mode=on"],
    ]
    second = run(h, GPU, gpu_params(h))
    assert second.facts["changed"] is False and len(h.gpu_tool_calls(sets_only=True)) == calls + 4


def test_gpu_cc_ppcie_mode_includes_the_nvswitches(hosts):
    h = hosts["gpu_wrong_mode"]
    first = run(h, GPU, gpu_params(h, TDX_GPU_MODE="ppcie"))
    assert first.facts["ok"] is True, first.stderr
    assert {g["bdf"]: (g["cc_mode"], g["ppcie_mode"]) for g in first.facts["gpus"]} == {
        "0000:b8:00.0": ("off", "on"),
        "0000:ba:00.0": ("off", "on"),
    }
    assert h.state()["gpu"]["0000:05:00.0"]["ppcie"] == "on"  # the NVSwitch too
    assert "cc_pending" not in h.state()["gpu"]["0000:05:00.0"]  # gpu-admin-tools skips CC on a switch
    calls = len(h.gpu_tool_calls(sets_only=True))
    assert run(h, GPU, gpu_params(h, TDX_GPU_MODE="ppcie")).facts["changed"] is False
    assert len(h.gpu_tool_calls(sets_only=True)) == calls


def test_gpu_cc_refuses_a_vbios_other_than_the_pin(hosts):
    h = hosts["wrong_vbios"]
    err = fails(h, GPU, gpu_params(h))
    [line] = error_lines(err)
    assert "GPU 0000:b8:00.0 VBIOS differs from the pin" in line
    assert f"expected {H.H100_VBIOS}, seen 96.00.5E.00.02" in line
    assert "fix: update the VBIOS through the server vendor" in line
    assert not h.gpu_tool_calls()  # refused before any tool ran


def test_gpu_cc_refuses_a_host_with_the_nvidia_driver_loaded(hosts):
    h = hosts["nvidia_loaded"]
    err = fails(h, GPU, gpu_params(h))
    [line] = error_lines(err)
    assert "the NVIDIA driver is loaded on the host" in line and "seen nvidia 550.90.07" in line
    assert "fix: blacklist nvidia/nouveau" in line


def test_gpu_cc_refuses_a_tampered_wheel_then_takes_the_pinned_one(hosts):
    h = hosts["pre_production"]  # right GPU and VBIOS, tools not installed yet
    pinned = gpu_params(h)["TDX_TOOLS_SHA256"]
    bad = h.publish_wheel(tamper="\nimport os  # swapped by a mirror\n")
    assert bad != pinned
    err = fails(h, GPU, gpu_params(h, TDX_TOOLS_SHA256=pinned))
    [line] = error_lines(err)
    assert "the gpu-admin-tools wheel does not match the pin" in line
    assert f"expected sha256 {pinned}, seen sha256 {bad}" in line
    assert "fix: do not use this wheel" in line
    assert not h.host_path("/opt/tdxgpu").exists() and not h.gpu_tool_calls()
    # the mirror serves the right wheel again: installed and applied
    assert h.publish_wheel() == pinned
    assert run(h, GPU, gpu_params(h, TDX_TOOLS_SHA256=pinned)).facts["changed"] is True


# ----------------------------------------------------------------------------------------------
# dcap


def dcap_params(registration: str = "mpa") -> dict:
    dcap = DcapConfig(
        pccs_api_key=Secret(PCCS_API_KEY),
        registration=registration,
        pccs_port=8081,
        qgs_port=4050,
        pccs_url=None,
        use_secure_cert=False,
    )
    return {**component_dcap_params(dcap, dcap_packages()), "TDX_PCCS_API_KEY": PCCS_API_KEY}


def test_dcap_installs_configures_registers_then_nothing_to_apply(hosts):
    h = hosts["tdx_ready"]
    secret = PCCS_API_KEY
    params = dcap_params("pckid")
    first = run(h, DCAP, params)
    f = first.facts
    assert f["ok"] is True and f["changed"] is True, first.stderr
    assert f["packages_missing"] == [] and f["pccs_http_status"] == "200"
    assert f["service_pccs"] == "active" and f["service_qgsd"] == "active"
    assert f["registration_status"] == "registered"
    assert secret not in first.stdout + first.stderr
    pccs = json.loads(h.host_path("/opt/intel/sgx-dcap-pccs/config/default.json").read_text())
    assert pccs["ApiKey"] == secret and pccs["hosts"] == "127.0.0.1" and pccs["UserTokenHash"]
    assert h.read_json("pccs.json")["platforms"]  # PCKIDRetrievalTool reached PCCS with the right token
    # issue 17: the token goes in on stdin, never on the tool's command line (ps shows argv to all)
    (tool,) = h.calls("PCKIDRetrievalTool")
    assert "-user_token" not in tool["argv"] and "***" not in tool["argv"], tool
    assert [c["argv"] for c in h.calls("PCKIDRetrievalTool-token-source")] == [["stdin"]]
    assert re.search(r"^port = 4050$", h.host_path("/etc/qgs.conf").read_text(), re.M)

    # What the package's non-interactive post-install skipped, done by the step: Intel's repository
    # first (apt-get update before install), npm install as pccs, the TLS pair, the owner pccs.service needs.
    apt = [c["argv"][0] for c in h.calls("apt-get")]
    assert apt.index("update") < apt.index("install"), apt
    assert "sgx_repo/ubuntu noble main" in h.host_path("/etc/apt/sources.list.d/tdxgpu-intel-sgx.list").read_text()
    assert "PCCS post-install configuration has been SKIPPED" in first.stderr
    pccs_uid = next(
        int(ln.split(":")[2]) for ln in h.host_path("/etc/passwd").read_text().splitlines() if ln.startswith("pccs:")
    )
    [npm] = h.calls("npm")
    assert npm["argv"][0] == "install" and f"uid={pccs_uid}" in npm["argv"], npm
    pccs_dir = h.host_path("/opt/intel/sgx-dcap-pccs")
    for name, mode in (("config/default.json", 0o640), ("ssl_key/private.pem", 0o600)):
        st = (pccs_dir / name).stat()
        assert (st.st_uid, st.st_mode & 0o777) == (pccs_uid, mode), name
    assert f["pccs_config_owner"] == "pccs:pccs 640"
    log = (h.state_dir / "pccs.log").read_text().splitlines()
    assert "Cannot find package 'express'" in log[0]  # the package's own start, before the step configured it
    running = max(i for i, ln in enumerate(log) if ln == "HTTPS Server is running on: https://localhost:8081")
    assert not [ln for ln in log[running:] if "[error]" in ln], log

    installs = len(h.calls("apt-get"))
    second = run(h, DCAP, params)
    assert second.facts["changed"] is False and len(h.calls("apt-get")) == installs
    assert secret not in second.stdout + second.stderr


def test_dcap_restores_its_apt_source_without_reinstalling(hosts):
    h = hosts["tdx_ready"]  # DCAP installed by the test above
    sshrun.run(h.target(), Rendered(command="rm /etc/apt/sources.list.d/tdxgpu-intel-sgx.list", stdin=""))
    calls = len(h.calls("apt-get"))
    again = run(h, DCAP, dcap_params("pckid"))
    assert again.facts["ok"] is True and again.facts["changed"] is True, again.stderr
    assert [c["argv"][0] for c in h.calls("apt-get")[calls:]] == ["update"]
    assert h.host_path("/etc/apt/sources.list.d/tdxgpu-intel-sgx.list").exists()


def test_dcap_reads_a_completed_mpa_registration_as_registered(hosts):
    """mpa_manage exits 1 when the registration completed (its exit status is the status)."""
    h = hosts["gpu_wrong_mode"]
    first = run(h, DCAP, dcap_params("mpa"))
    assert first.facts["registration_status"] == "registered", first.stderr
    restarts = h.read_json("services.json")["mpa_registration_tool"]["restarts"]
    assert run(h, DCAP, dcap_params("mpa")).facts["changed"] is False
    assert h.read_json("services.json")["mpa_registration_tool"]["restarts"] == restarts


def test_dcap_names_nodejs_when_the_os_cannot_meet_pccs(hosts):
    """DCAP 1.27's sgx-dcap-pccs Depends: nodejs (>= 22.13.0); Ubuntu 24.04 has 18.19."""
    h = hosts["nvidia_loaded"]
    h.set_profile(pccs_node_min="22.13.0")
    try:
        err = fails(h, DCAP, dcap_params())
    finally:
        h.set_profile(pccs_node_min="18.17.0")
    [line] = error_lines(err)
    assert "cannot install DCAP packages" in line
    assert "Depends: nodejs (>= 22.13.0) but 18.19.1+dfsg-6ubuntu5 is to be installed" in line
    assert "fix: sgx-dcap-pccs needs a newer Node.js than this OS offers" in line


def test_dcap_refuses_when_pckidretrievaltool_printed_an_error_and_exited_0(hosts):
    h = hosts["wrong_vbios"]
    h.set_profile(pckid_network_error=True)
    try:
        err = fails(h, DCAP, dcap_params("pckid"))
    finally:
        h.set_profile(pckid_network_error=False)
    [line] = error_lines(err)
    assert "PCKIDRetrievalTool did not register the platform" in line
    assert "seen Error: network error, please check the network setting" in line
    assert "fix: PCCS did not answer PCKIDRetrievalTool" in line
    assert not h.host_path("/var/lib/tdxgpu/pckid-registered").exists()


# ----------------------------------------------------------------------------------------------
# teardown


def test_destroy_removes_what_the_steps_installed_and_keeps_the_rest(hosts):
    """What `pulumi destroy` runs (the same stdin, DELETE_COMMAND) after the steps above applied."""
    h = hosts["tdx_ready"]

    def destroy(step: Step, params: dict) -> sshrun.Result:
        return sshrun.run(h.target(), Rendered(command=DELETE_COMMAND, stdin=render(step, params).stdin), deadline_s=60)

    gpu = destroy(GPU, gpu_params(h))
    assert gpu.facts["removed_paths"].endswith("gpu-admin-tools/" + TOOLS_VERSION), gpu.facts
    assert gpu.facts["left_in_place"] == "GPU CC/PPCIe mode"
    assert not h.host_path(f"/opt/tdxgpu/gpu-admin-tools/{TOOLS_VERSION}").exists()
    assert h.state()["gpu"]["0000:b8:00.0"]["cc"] == "on"

    dcap = DcapConfig(
        pccs_api_key=Secret("k"),
        registration="pckid",
        pccs_port=8081,
        qgs_port=4050,
        pccs_url=None,
        use_secure_cert=False,
    )
    res = destroy(DCAP, {**component_dcap_params(dcap, dcap_packages()), "TDX_PCCS_API_KEY": "k"})
    assert set(res.facts["removed_packages"]) == {
        "sgx-dcap-pccs",
        "tdx-qgs",
        "libsgx-dcap-default-qpl",
        "sgx-pck-id-retrieval-tool",
    }
    assert not h.host_path("/opt/intel/sgx-dcap-pccs/config/default.json").exists()
    assert not h.host_path("/etc/tdxgpu/pccs-user-token").exists()

    kept = destroy(KERNEL, kernel_params())
    assert kept.facts["left_in_place"].endswith("(restoreOnDestroy is false)")
    assert h.host_path("/etc/default/grub.d/90-tdxgpu.cfg").exists()
    restored = destroy(KERNEL, {**kernel_params(), "TDX_RESTORE_ON_DESTROY": "true"})
    assert restored.facts["removed_paths"] == "/etc/default/grub.d/90-tdxgpu.cfg"
    assert not h.host_path("/etc/default/grub.d/90-tdxgpu.cfg").exists()


def test_a_host_leaves_nothing_behind(nshost_required):
    with namespace_hosts([H.TDX_READY.replace(name="short_lived", hostname="short-lived")]) as started:
        h = started["short_lived"]
        netns, veth, base = h.netns, h.veth, h.base
        sshd_config = str(h.state_dir / "sshd/sshd_config")
        assert run(h, PREFLIGHT, preflight_params()).facts["ok"] is True
        assert h.netns_pids()
    assert sshd_config not in subprocess.run(["pgrep", "-af", "sshd"], capture_output=True, text=True).stdout
    assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not Path(f"/sys/class/net/{veth}").exists()
    assert not base.exists()


def test_vbios_is_read_through_the_named_pipe_rom_where_fuse_is_missing(nshost_required):
    """The fallback for machines without /dev/fuse serves the same ROM to vbios_version.py."""
    profile = H.WRONG_VBIOS.replace(name="fifo_rom", hostname="fifo-rom")
    with namespace_hosts([profile], rom_mode="fifo") as started:
        h = started["fifo_rom"]
        err = fails(h, GPU, gpu_params(h))
        [line] = error_lines(err)
        assert f"expected {H.H100_VBIOS}, seen 96.00.5E.00.02" in line and "fix: " in line


# ----------------------------------------------------------------------------------------------
# failures in the middle of a step keep the frame: an error line with the fix, and the facts


def test_preflight_reports_an_unreadable_msr_as_such(hosts):
    h = hosts["nvidia_loaded"]
    h.set_msr(0xCE, None)  # rdmsr: CPU 0 cannot read MSR 0x000000ce
    try:
        err = fails(h, PREFLIGHT, preflight_params())
    finally:
        h.set_msr(0xCE, H.PRODUCTION_MSRS[0xCE])
    lines = error_lines(err)
    assert lines and all("fix: " in ln for ln in lines)
    assert not any("pre-production CPU" in ln for ln in lines), "\n".join(lines)
    assert any("0xce" in ln.lower() and "read" in ln for ln in lines), "\n".join(lines)


def test_bios_verify_keeps_the_frame_when_an_msr_is_unreadable(hosts):
    h = hosts["nvidia_loaded"]
    h.set_msr(0xA0, None)
    try:
        err = fails(h, BIOS_VERIFY, bios_params())
    finally:
        h.set_msr(0xA0, 0)
    assert err.facts is not None and err.facts["ok"] is False, err.output
    assert error_lines(err) and all("fix: " in ln for ln in error_lines(err)), err.output


def test_kernel_update_grub_failure_is_reported_and_retried(hosts):
    h = hosts["wrong_vbios"]  # not used by the kernel tests
    broken = "/etc/default/grub.d/60-broken.cfg"
    sshrun.run(
        h.target(), Rendered(command=f"mkdir -p /etc/default/grub.d && echo 'X=\"unterminated' > {broken}", stdin="")
    )
    err = fails(h, KERNEL, kernel_params())
    sshrun.run(h.target(), Rendered(command=f"rm -f {broken}", stdin=""))
    runs = h.state()["grub"]["update_grub_runs"]
    again = run(h, KERNEL, kernel_params())
    assert again.facts["changed"] is True and h.state()["grub"]["update_grub_runs"] == runs + 1, (
        "after the GRUB error was fixed the step did not run update-grub again"
    )
    assert err.facts is not None and any("fix: " in ln for ln in error_lines(err)), err.output
