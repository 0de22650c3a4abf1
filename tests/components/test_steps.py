"""Rendering of host steps, and the lib.sh frame run locally with bash (check/apply/verify,
refusals, JSON facts), plus the pure helpers the scripts embed."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import components.render.steps as steps_module
from components.render.steps import DELETE_COMMAND, SCRIPTS_DIR, STEP_COMMAND, Step, render, render_stage
from tests.support.paths import HOST

sys.path.insert(0, str(SCRIPTS_DIR))
import vbios_version  # type: ignore[import-not-found]  # a host script, importable via SCRIPTS_DIR above


def run_local(stdin: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a rendered step exactly as the remote side does, on this machine."""
    return subprocess.run(
        ["bash", "-c", STEP_COMMAND],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


@pytest.fixture(autouse=True)
def staged(tmp_path_factory, monkeypatch) -> Path:
    """The scripts staged where the rendered steps look for them: a temp dir on this machine,
    filled by the `scripts` step itself (every host script)."""
    where = tmp_path_factory.mktemp("staged")
    monkeypatch.setattr(steps_module, "STAGED_DIR", str(where))
    done = run_local(render_stage().stdin)
    assert done.returncode == 0, done.stderr
    return where


def stage(*scripts: Path) -> None:
    """Stage scripts outside components/scripts/host/ (the toy steps), as the `scripts` step does."""
    done = run_local(render_stage(tuple(str(s) for s in scripts)).stdin)
    assert done.returncode == 0, done.stderr


def test_render_puts_script_and_values_on_stdin_not_the_command_line():
    r = render(Step("kernel", "kernel.sh"), {"TDX_KERNEL_ARGS": "nohibernate kvm_intel.tdx=1", "TDX_SECRET": "s3cr'et"})
    assert r.command == STEP_COMMAND and "s3cr" not in r.command
    assert "TDX_KERNEL_ARGS='nohibernate kvm_intel.tdx=1'" in r.stdin
    assert "TDX_SECRET='s3cr'\"'\"'et'" in r.stdin  # shell-quoted, so a quote cannot break out
    assert r.stdin.rstrip().endswith("tdx_main")
    assert render(Step("kernel", "kernel.sh"), {"TDX_KERNEL_ARGS": "x"}).digest != r.digest


def test_render_rejects_bad_parameter_names_and_actions():
    with pytest.raises(ValueError):
        render(Step("k", "kernel.sh"), {"bad-name": "x"})
    with pytest.raises(ValueError):
        render(Step("k", "kernel.sh"), {}, action="explode")


def test_helpers_become_shell_functions():
    r = render(Step("gpu-cc", "gpu_cc.sh", helpers=("vbios_version.py",)), {})
    digest = steps_module.script_digest("vbios_version.py")
    assert f'vbios_version() {{ python3 "$TDX_SCRIPTS/{digest}" "$@"; }}' in r.stdin
    assert "def parse_vbios_version" not in r.stdin  # staged once per host, not carried by each step


def test_a_step_carries_the_digests_of_its_files_not_the_files(tmp_path):
    kernel = render(Step("kernel", "kernel.sh"), {"TDX_KERNEL_ARGS": "x"})
    assert len(kernel.stdin) < 2000, len(kernel.stdin)
    for name in ("lib.sh", "kernel.sh"):
        assert f"_tdx_need {steps_module.script_digest(name)} {name} || exit 1" in kernel.stdin
    assert (SCRIPTS_DIR / "kernel.sh").read_text()[:200] not in kernel.stdin
    # A changed script changes the stdin of exactly the steps that run it.
    mine = tmp_path / "mine.sh"
    mine.write_text("check() { return 0; }\n")
    before = render(Step("mine", str(mine)), {}).stdin
    other = render(Step("kernel", "kernel.sh"), {"TDX_KERNEL_ARGS": "x"}).stdin
    mine.write_text("check() { true; }\n")
    assert render(Step("mine", str(mine)), {}).stdin != before
    assert render(Step("kernel", "kernel.sh"), {"TDX_KERNEL_ARGS": "x"}).stdin == other


def test_a_step_whose_scripts_are_not_staged_refuses_with_the_fix(tmp_path):
    mine = tmp_path / "unstaged.sh"
    mine.write_text("check() { return 0; }\n")
    res = run_local(render(Step("mine", str(mine)), {}).stdin)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.startswith("error: mine: the host step scripts are not staged here; expected "), res.stderr
    assert "seen no file; fix: pulumi up stages them first (its scripts step)" in res.stderr


def test_the_scripts_step_is_idempotent_and_repairs_a_changed_file(staged):
    again = run_local(render_stage().stdin)
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False
    lib = staged / steps_module.script_digest("lib.sh")
    lib.write_text("echo tampered\n")
    status = run_local(render_stage(action="status").stdin)
    facts = json.loads(status.stdout)
    assert facts["in_sync"] is False and facts["unmet"][0].startswith("host step script lib.sh; expected "), facts
    fixed = run_local(render_stage().stdin)
    assert json.loads(fixed.stdout)["changed"] is True
    assert steps_module.script_digest("lib.sh") == __import__("hashlib").sha256(lib.read_bytes()).hexdigest()


@pytest.fixture
def toy(tmp_path):
    """A step whose desired state is 'FILE contains WANT'."""
    script = tmp_path / "toy.sh"
    script.write_text(r"""
check() {
  fact target "$TOY_FILE"
  [ "$(cat "$TOY_FILE" 2>/dev/null)" = "$TOY_WANT" ] || unmet "file content" "$TOY_WANT" "$(cat "$TOY_FILE" 2>/dev/null || echo none)" "apply writes it"
  [ "${TOY_REFUSE:-}" != yes ] || refuse "a thing apply cannot fix" "x" "y" "replace the hardware"
  [ "${#_UNMET[@]}" -eq 0 ]
}
apply() {
  [ "${TOY_FAILING_APPLY:-}" != yes ] || grep -q never-there /dev/null
  [ "${TOY_BROKEN_APPLY:-}" = yes ] && { echo wrong >"$TOY_FILE"; return 0; }
  echo "$TOY_WANT" >"$TOY_FILE"; echo applied >>"$TOY_FILE.log"
}
remove() { rm -f "$TOY_FILE"; fact removed_paths "$TOY_FILE"; }
runtime_check() { [ -f "$TOY_FILE.booted" ] || unmet "not booted" "booted" "old boot" "reboot"; [ "${#_UNMET[@]}" -eq 0 ]; }
""")
    stage(script)
    return script, tmp_path / "state"


def toy_params(state: Path, **extra) -> dict:
    return {"TOY_FILE": str(state), "TOY_WANT": 'he said "hi"\tthere', **extra}


def test_check_apply_verify_then_nothing_to_do(toy):
    script, state = toy
    first = run_local(render(Step("toy", str(script)), toy_params(state)).stdin)
    assert first.returncode == 0, first.stderr
    facts = json.loads(first.stdout)
    assert facts == {"step": "toy", "ok": True, "changed": True, "target": str(state)}
    assert "toy: applying (1 change)" in first.stderr
    second = run_local(render(Step("toy", str(script)), toy_params(state)).stdin)
    assert json.loads(second.stdout)["changed"] is False
    assert Path(f"{state}.log").read_text().count("applied") == 1


def test_check_mode_never_applies_and_lists_what_is_unmet(toy):
    script, state = toy
    res = run_local(render(Step("toy", str(script), mode="check"), toy_params(state)).stdin)
    assert res.returncode == 1 and not state.exists()
    assert (
        'error: toy (check): file content; expected he said "hi"\tthere, seen none; fix: apply writes it' in res.stderr
    )
    assert json.loads(res.stdout)["ok"] is False


def test_failed_verify_and_refusal_are_reported_with_the_fix(toy):
    script, state = toy
    res = run_local(render(Step("toy", str(script)), toy_params(state, TOY_BROKEN_APPLY="yes")).stdin)
    assert res.returncode == 1 and "error: toy (verify): file content" in res.stderr
    assert json.loads(res.stdout) == {"step": "toy", "ok": False, "changed": True, "target": str(state)}
    res = run_local(render(Step("toy", str(script)), toy_params(state, TOY_REFUSE="yes")).stdin)
    assert res.returncode == 1
    assert "error: toy: a thing apply cannot fix; expected x, seen y; fix: replace the hardware" in res.stderr


def test_a_failing_command_in_apply_names_itself(toy):
    script, state = toy
    res = run_local(render(Step("toy", str(script)), toy_params(state, TOY_FAILING_APPLY="yes")).stdin)
    assert res.returncode == 1
    assert "error: toy (apply): `grep -q never-there /dev/null` failed with exit status 1; fix:" in res.stderr
    assert json.loads(res.stdout)["ok"] is False


def test_destroy_runs_the_steps_remove_on_the_same_stdin(toy, tmp_path):
    script, state = toy
    stdin = render(Step("toy", str(script)), toy_params(state)).stdin
    assert run_local(stdin).returncode == 0 and state.exists()
    res = subprocess.run(["bash", "-c", DELETE_COMMAND], input=stdin, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {
        "step": "toy",
        "ok": True,
        "changed": True,
        "removed_paths": str(state),
    }
    assert not state.exists()
    keep = tmp_path / "keep.sh"
    keep.write_text("check() { return 0; }\n")  # a step without `remove` leaves the host as it is
    stage(keep)
    res = subprocess.run(
        ["bash", "-c", DELETE_COMMAND],
        input=render(Step("keep", str(keep)), {}).stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0
    assert json.loads(res.stdout)["left_in_place"] == "everything this step did (it has nothing to remove)"


def test_wait_refuses_an_unchanged_boot_id_and_times_out_with_the_unmet_list(toy):
    script, state = toy
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    p = toy_params(state, TDX_REBOOTING="true", TDX_PREV_BOOT_ID=boot)
    res = run_local(render(Step("toy", str(script)), p, action="wait").stdin)
    assert res.returncode == 1 and "the host did not reboot" in res.stderr
    p.update(TDX_PREV_BOOT_ID="another-boot", TDX_WAIT_TIMEOUT="1", TDX_WAIT_POLL="0.2")
    res = run_local(render(Step("toy", str(script)), p, action="wait").stdin)
    assert res.returncode == 1 and "error: toy (after reboot, 1s): not booted" in res.stderr
    Path(f"{state}.booted").touch()
    res = run_local(render(Step("toy", str(script)), p, action="wait").stdin)
    assert res.returncode == 0 and json.loads(res.stdout)["boot_id"] == boot


def test_reboot_is_skipped_when_the_running_system_is_already_right(toy):
    script, state = toy
    Path(f"{state}.booted").touch()
    res = run_local(render(Step("toy", str(script)), toy_params(state), action="reboot").stdin)
    assert res.returncode == 0
    facts = json.loads(res.stdout)
    assert facts["rebooting"] is False and facts["changed"] is False and facts["boot_id"]


def test_every_production_script_parses():
    for script in SCRIPTS_DIR.glob("*.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True)


# ---- VBIOS ROM parsing --------------------------------------------------------------------


def make_rom(version: str, *, image_offset: int = 0, token: bytes = b"i") -> bytes:
    major, chip, minor, micro, patch = (int(x, 16) for x in version.split("."))
    rom = bytearray(image_offset + 1024)
    base = image_offset
    rom[base : base + 2] = b"\x55\xaa"
    bit = base + 0x100
    rom[bit : bit + 6] = b"\xff\xb8BIT\x00"
    rom[bit + 6 : bit + 12] = bytes([0x00, 0x01, 12, 6, 2, 0])  # version, header size, token size, count, checksum
    data_off = 0x200
    struct.pack_into("<BBHH", rom, bit + 12, ord("B"), 1, 4, 0x180)
    struct.pack_into("<BBHH", rom, bit + 18, token[0], 1, 5, data_off)
    rom[base + data_off : base + data_off + 5] = bytes([micro, minor, chip, major, patch])
    return bytes(rom)


@pytest.mark.parametrize("version", ["96.00.9F.00.01", "96.00.A5.00.03"])
def test_vbios_version_round_trips(version):
    assert vbios_version.parse_vbios_version(make_rom(version)) == version
    assert vbios_version.parse_vbios_version(make_rom(version, image_offset=1024)) == version


def test_vbios_version_errors_name_the_problem():
    with pytest.raises(vbios_version.RomError, match="no BIT table"):
        vbios_version.parse_vbios_version(b"\x55\xaa" + bytes(600))
    with pytest.raises(vbios_version.RomError, match="no 'i'"):
        vbios_version.parse_vbios_version(make_rom("96.00.9F.00.01", token=b"x"))
    with pytest.raises(vbios_version.RomError, match="truncated"):
        vbios_version.parse_vbios_version(make_rom("96.00.9F.00.01")[:0x112])


def test_vbios_helper_runs_as_the_scripts_run_it(tmp_path):
    rom = tmp_path / "rom"
    rom.write_bytes(make_rom("96.00.9F.00.01"))
    script = tmp_path / "s.sh"
    script.write_text('check() { fact v "$(vbios_version "$ROM")"; }\n')
    stage(script)
    res = run_local(
        render(Step("v", str(script), helpers=("vbios_version.py",), mode="check"), {"ROM": str(rom)}).stdin
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["v"] == "96.00.9F.00.01"


# ---- JSON config helper ---------------------------------------------------------------------


def json_config(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPTS_DIR / "json_config.py"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_json_config_updates_in_place_and_keeps_secrets_off_argv(tmp_path):
    f = tmp_path / "sgx_default_qcnl.conf"
    f.write_text('// comment from the package\n{"pccs_url": "https://old/", "retry_times": 6}\n')
    assert json_config("get", str(f), "pccs_url").stdout.strip() == '"https://old/"'
    assert json_config("set", str(f), 'pccs_url="https://localhost:8081/sgx/certification/v4/"').returncode == 0
    assert json_config("set", str(f), 'pccs_url="https://localhost:8081/sgx/certification/v4/"').returncode == 3
    assert json.loads(f.read_text()) == {"pccs_url": "https://localhost:8081/sgx/certification/v4/", "retry_times": 6}
    assert json_config("set-secret", str(f), "ApiKey", "K", env={"K": "abc"}).returncode == 0
    assert json_config("secret-matches", str(f), "ApiKey", "K", env={"K": "abc"}).returncode == 0
    res = json_config("secret-matches", str(f), "ApiKey", "K", env={"K": "abd"})
    assert res.returncode == 1 and "abc" not in res.stdout + res.stderr


@pytest.mark.parametrize("sample", ["pccs-default.json", "pccs-default-1.25.json", "pccs-default-2024.json"])
def test_json_config_reads_every_shipped_pccs_config_and_keeps_its_owner_and_mode(tmp_path, sample):
    """PCCS's default.json (DCAP 1.25+: a `//`-commented block after `},`, so a trailing comma once the
    comments go) is a dpkg conffile owned pccs:pccs 0640; pccs.service (User=pccs) must still read it."""
    f = tmp_path / "default.json"
    f.write_bytes((HOST / "dcap" / sample).read_bytes())
    f.chmod(0o640)
    os.chown(f, 4242, 4243)  # the tests run as root (CI does); a stand-in for pccs:pccs
    assert json_config("get", str(f), "HTTPS_PORT").stdout.strip() == "8081"
    assert json_config("set", str(f), 'hosts="127.0.0.1"', "HTTPS_PORT=8443").returncode == 0
    st = f.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (4242, 4243, 0o640)
    assert json.loads(f.read_text())["HTTPS_PORT"] == 8443


def test_json_config_reads_the_qcnl_template_and_refuses_what_is_not_a_config(tmp_path):
    f = tmp_path / "sgx_default_qcnl.conf"
    f.write_bytes((HOST / "dcap" / "sgx_default_qcnl.conf").read_bytes())
    assert json_config("get", str(f), "use_secure_cert").stdout.strip() == "true"
    f.write_text("[1, 2]")
    res = json_config("get", str(f), "x")
    assert res.returncode == 4 and "the top level is not a JSON object" in res.stderr
    f.write_bytes(b" " * (2 << 20))
    assert "more than a DCAP config ever has" in json_config("get", str(f), "x").stderr


# ---- the kernel step's reading of real kernel logs (tests/fixtures/host/kernel) ------------------


def step_function(script: str, call: str, **env: str) -> str:
    """Run `call` after lib.sh and one host script, as a step would define them; its stdout."""
    text = (SCRIPTS_DIR / "lib.sh").read_text() + (SCRIPTS_DIR / script).read_text() + call + "\n"
    res = subprocess.run(["bash", "-c", text], capture_output=True, text=True, env={**os.environ, **env})
    assert res.returncode == 0, res.stderr
    return res.stdout


def kernel_fn(call: str, log: Path | str, **env: str) -> str:
    """One function of kernel.sh on the TDX lines of a kernel log (a file under fixtures/host/kernel)."""
    grep = "log=$(grep -E '(^|[] ])(virt/)?tdx: ' \"$LOG\" || true); "
    return step_function("kernel.sh", f'{grep}{call} "$log"', LOG=str(HOST / "kernel" / log), **env)


@pytest.mark.parametrize(
    "log,pin,build,version",
    [
        ("mainline-module-version.dmesg", "1.5.16", "", "1.5.16"),  # Linux >= 7.1: "Module version: 1.5.16"
        ("ubuntu-25.10-module-build-number.dmesg", "1.5.06", "744", "1.5.06"),  # "TDX module 1.5.06.00, ..."
        ("ubuntu-6.8-major-version.dmesg", "1.5.06", "744", "1.5 build 784"),  # no update version, build differs
        ("mainline-6.16-7.0-module-initialized.dmesg", "1.5.16", "", ""),  # no version line at all
    ],
)
def test_the_module_version_is_read_from_every_kernel_format(log, pin, build, version):
    builds = f"{pin}={build}" if build else ""
    assert kernel_fn("tdx_module_version", log, TDX_MODULE_VERSIONS=pin, TDX_MODULE_BUILDS=builds) == version


def test_an_old_kernel_matches_the_pin_through_its_build_number(tmp_path):
    sample = (HOST / "kernel/ubuntu-6.8-major-version.dmesg").read_text().replace("build_num 784", "build_num 744")
    (tmp_path / "k.dmesg").write_text(sample)
    assert (
        kernel_fn(
            "tdx_module_version", tmp_path / "k.dmesg", TDX_MODULE_VERSIONS="1.5.06", TDX_MODULE_BUILDS="1.5.06=744"
        )
        == "1.5.06"
    )


def test_during_an_upgrade_the_build_number_names_whichever_pinned_release_runs(tmp_path):
    sample = (HOST / "kernel/ubuntu-6.8-major-version.dmesg").read_text().replace("build_num 784", "build_num 744")
    (tmp_path / "k.dmesg").write_text(sample)
    pins = {"TDX_MODULE_VERSIONS": "1.5.06 1.5.16", "TDX_MODULE_BUILDS": "1.5.16=900 1.5.06=744"}
    assert kernel_fn("tdx_module_version", tmp_path / "k.dmesg", **pins) == "1.5.06"
    # A build number pinned for another major.minor never matches.
    other = {"TDX_MODULE_VERSIONS": "2.0.08", "TDX_MODULE_BUILDS": "2.0.08=744"}
    assert kernel_fn("tdx_module_version", tmp_path / "k.dmesg", **other) == "1.5 build 744"


@pytest.mark.parametrize("running,pinned", [("1.5.16", True), ("1.5.34", True), ("1.5.1", False), ("", False)])
def test_the_running_module_must_be_one_of_the_pinned_releases(running, pinned):
    call = f'module_pinned "{running}" && echo yes || echo no'
    assert step_function("kernel.sh", call, TDX_MODULE_VERSIONS="1.5.16 1.5.34").strip() == ("yes" if pinned else "no")


@pytest.mark.parametrize(
    "log,fix",
    [
        ("rbp-clobber.dmesg", "upgrade the TDX module (BIOS update, or a newer TDX-SEAM.so)"),
        ("mainline-7.1-init-failed.dmesg", "update the BIOS/TDX module"),
        ("too-few-keyids.dmesg", "key split"),
        ("hibernation-enabled.dmesg", "nohibernate"),
        ("module-not-loaded.dmesg", "SEAM Loader"),
        ("tdx-disabled-in-bios.dmesg", "enable TDX, TME-MT and the key split in BIOS"),
        ("ubuntu-6.8-bios-only-no-init.dmesg", "kvm_intel.tdx=1"),
    ],
)
def test_each_recorded_tdx_failure_gets_its_own_fix(log, fix):
    assert fix in kernel_fn("tdx_diagnosis", log)


# ---- the GPU step's reading of gpu-admin-tools output (tests/fixtures/host/gpu) -----------------


@pytest.mark.parametrize(
    "sample,modes",
    [
        ("reconstructed-2025.11.21-query-cc-mode-on.txt", ["0000:b8:00.0 on"]),
        ("reconstructed-2025.11.21-query-cc-mode-off.txt", ["0000:b8:00.0 off"]),
        (
            "reconstructed-2025.11.21-query-ppcie-mode-gpus-nvswitches.txt",
            ["0000:19:00.0 on", "0000:3b:00.0 on", "0000:05:00.0 on"],
        ),
    ],
)
def test_the_mode_query_parses_what_gpu_admin_tools_prints(sample, modes):
    out = step_function(
        "gpu_cc.sh",
        'gpu_tool() { cat "$SAMPLE"; }; query_modes',
        SAMPLE=str(HOST / "gpu" / sample),
        TDX_TOOLS_VERSION="2025.11.21",
    )
    assert out.splitlines() == modes


def test_the_71_wording_of_a_failed_module_init_gets_the_module_fix(tmp_path):
    """Linux >= 7.1 prints "TDX-Module initialization failed (%d)" (tdx_enable; capital M)."""
    (tmp_path / "k.dmesg").write_text("[    3.912047] virt/tdx: TDX-Module initialization failed (-12)\n")
    assert kernel_fn("tdx_diagnosis", tmp_path / "k.dmesg").strip() == "update the TDX module (platform.tdxModule pin)"


def test_the_loader_hands_the_script_whole_to_bash_and_removes_its_copy(toy, tmp_path):
    # `bash -s` reads the loader line byte by byte; `cat` takes exactly the rest. A step command that
    # reads stdin (here: apply runs `cat`) sees end of input and cannot eat the script's tail.
    script, state = toy
    hungry = tmp_path / "hungry.sh"
    hungry.write_text(script.read_text().replace('echo applied >>"$TOY_FILE.log"', 'cat >>"$TOY_FILE.log"'))
    stage(hungry)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    rendered = render(Step("toy", str(hungry)), toy_params(state))
    assert rendered.stdin.splitlines()[0].startswith("umask 077; f=$(mktemp")
    res = run_local(rendered.stdin.replace("/tmp/tdxgpu-step", f"{tmp}/tdxgpu-step"))
    assert res.returncode == 0 and json.loads(res.stdout)["changed"] is True, res.stderr
    assert Path(f"{state}.log").read_text() == ""  # the step's `cat` got nothing of the script
    assert list(tmp.iterdir()) == []  # the private copy is gone
    failing = run_local(render(Step("toy", str(script)), toy_params(state, TOY_REFUSE="yes")).stdin)
    assert failing.returncode == 1  # the step's status is the command's
