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

from components.render.steps import DELETE_COMMAND, SCRIPTS_DIR, STEP_COMMAND, Step, render

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
    assert "vbios_version() {" in r.stdin and "def parse_vbios_version" in r.stdin


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
        "removed": True,
    }
    assert not state.exists()
    keep = tmp_path / "keep.sh"
    keep.write_text("check() { return 0; }\n")  # a step without `remove` leaves the host as it is
    res = subprocess.run(
        ["bash", "-c", DELETE_COMMAND],
        input=render(Step("keep", str(keep)), {}).stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and json.loads(res.stdout)["removed"] is False


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
