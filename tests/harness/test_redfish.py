"""components.bmc.redfish against a real sushy-emulator (HTTPS, basic auth, pending-until-reset BIOS)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import REPO

pytest.importorskip("sushy_tools")

import sushy

from components.bmc import redfish
from components.bmc.redfish import BiosError
from components.bmc.resolve import BiosSettingsMissing
from components.catalog import bios as bios_tables
from components.catalog.bios import BiosSetting, load_vendor_table
from tests.support.redfish.emulator import (
    Board,
    RedfishEmulator,
    board_for_table,
    board_from_rules,
    free_port,
    make_tls,
    run_emulator,
)

pytestmark = pytest.mark.harness

FAST = {"poll_s": 0.05, "timeout_s": 15.0, "retry_delay_s": 0.05}


@pytest.fixture
def emulator_for(tmp_path: Path) -> Iterator[Any]:
    """Factory: start one emulator per call; every one is stopped (and checked) at teardown."""
    started: list[RedfishEmulator] = []
    with contextlib.ExitStack() as stack:

        def start(board: Board, **kwargs: Any) -> RedfishEmulator:
            emu = stack.enter_context(run_emulator(tmp_path / f"bmc{len(started)}", board, **kwargs))
            started.append(emu)
            return emu

        yield start
    assert all(emu.process.poll() is not None for emu in started), "sushy-emulator left running"


@pytest.fixture
def dell_bmc(emulator_for: Any) -> RedfishEmulator:
    # iDRAC offers PowerCycle (dell.rules.json "reset")
    return emulator_for(dataclasses.replace(board_for_table(load_vendor_table("dell")), reset_types=("PowerCycle",)))


def pinned(emu: RedfishEmulator, **extra: Any) -> dict[str, Any]:
    return {"tls_fingerprint": emu.tls.fingerprint, **FAST, **extra}


def desired(vendor: str, phase: int) -> dict[str, Any]:
    return {s.attribute: s.value for s in load_vendor_table(vendor).phase(phase)}


def run_cli(emu: RedfishEmulator, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TDXGPU_BMC_")}
    env.update(TDXGPU_BMC_USERNAME=emu.username, TDXGPU_BMC_PASSWORD=password or emu.password)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "components.bmc.redfish",
            *args,
            "--endpoint",
            emu.url,
            "--poll",
            "0.05",
            "--timeout",
            "15",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def sushy_client(emu: RedfishEmulator) -> sushy.Sushy:
    return sushy.Sushy(emu.url, username=emu.username, password=emu.password, verify=str(emu.tls.cert))


# --- the happy path -------------------------------------------------------------------------------


def test_every_phase_applies_in_order_and_rerun_changes_nothing(dell_bmc: RedfishEmulator) -> None:
    emu = dell_bmc
    phases = load_vendor_table("dell").phase_numbers
    assert phases == (1, 2, 3)
    with pytest.raises(BiosError, match="hidden until the previous phase is applied"):
        redfish.check_phase(emu.url, emu.username, emu.password, "dell", 2, tls_fingerprint=emu.tls.fingerprint)

    before = redfish.check_phase(emu.url, emu.username, emu.password, "dell", 1, tls_fingerprint=emu.tls.fingerprint)
    assert before.pending == desired("dell", 1) and not before.changed and not before.reset

    for phase in phases:
        result = redfish.apply_phase(emu.url, emu.username, emu.password, "dell", phase, **pinned(emu))
        # The SEAM loader may need a full power cycle: the BMC offers one, so it is used.
        assert result.changed and result.reset and result.reset_type == "PowerCycle"
        assert result.applied == desired("dell", phase)
        assert result.attributes == desired("dell", phase)
        assert result.pending == {}
        assert result.bios_version == "2.7.4"
        assert result.system == emu.system_path

    # Each phase: PATCH, iDRAC's configuration job (POST Jobs), the reset (POST), then the BIOS applies
    # it at power-on.
    kinds = [
        e["kind"] if e["kind"] != "request" else e["method"]
        for e in emu.events()
        if e["kind"] in ("bios_applied", "power_request")
        or (e["kind"] == "request" and e["method"] in ("PATCH", "POST"))
    ]
    assert kinds == ["PATCH", "POST", "POST", "power_request", "bios_applied"] * len(phases)
    assert [p["body"]["Attributes"] for p in emu.patches()] == [desired("dell", n) for n in phases]

    seen = len(emu.events())
    for phase in phases:
        again = redfish.apply_phase(emu.url, emu.username, emu.password, "dell", phase, **pinned(emu))
        assert not again.changed and not again.reset and again.applied == {} and again.pending == {}
        assert again.attributes == desired("dell", phase)
    later = emu.events()[seen:]
    assert not [e for e in later if e.get("method") in ("PATCH", "POST") or e["kind"] != "request"]


def test_settings_stay_pending_until_a_reset(dell_bmc: RedfishEmulator) -> None:
    emu = dell_bmc
    root = sushy_client(emu)
    bios = root.get_system(emu.system_path).bios
    bios.set_attributes({"MemoryEncryption": "MultipleKeys"})
    bios.refresh(force=True)
    assert bios.attributes["MemoryEncryption"] == "Disabled"
    assert bios.pending_attributes["MemoryEncryption"] == "MultipleKeys"

    check = redfish.check_phase(emu.url, emu.username, emu.password, "dell", 1, tls_fingerprint=emu.tls.fingerprint)
    assert check.pending["MemoryEncryption"] == "MultipleKeys"
    assert check.attributes["MemoryEncryption"] == "Disabled"
    assert not emu.events("bios_applied")

    result = redfish.apply_phase(emu.url, emu.username, emu.password, "dell", 1, **pinned(emu))
    assert result.reset and result.attributes["MemoryEncryption"] == "MultipleKeys"
    applied = emu.events("bios_applied")
    assert len(applied) == 1 and applied[0]["t"] > emu.resets()[0]["t"]


def test_cli_applies_both_phases_and_prints_only_json(emulator_for: Any) -> None:
    emu = emulator_for(board_for_table(load_vendor_table("lenovo")))
    common = ["--vendor", "lenovo", "--system", emu.system_path, "--ca-file", str(emu.tls.cert)]
    for phase in ("1", "2"):
        done = run_cli(emu, "apply", "--phase", phase, *common)
        assert done.returncode == 0, done.stderr
        assert len(done.stdout.splitlines()) == 1
        fact = json.loads(done.stdout)
        assert fact["changed"] is True and fact["reset"] is True and fact["pending"] == {}
        assert fact["attributes"] == desired("lenovo", int(phase))
        assert fact["vendor"] == "lenovo" and fact["phase"] == int(phase) and fact["system"] == emu.system_path
        assert "redfish: " in done.stderr and "error:" not in done.stderr

    assert fact["attributes"]["Processors_TME_MTTDXkeysplit"] == 1
    again = run_cli(emu, "apply", "--phase", "2", *common)
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False
    check = run_cli(emu, "check", "--phase", "1", "--vendor", "lenovo", "--tls-fingerprint", emu.tls.fingerprint)
    assert check.returncode == 0 and json.loads(check.stdout)["pending"] == {}
    assert len(emu.patches()) == 2 and len(emu.resets()) == 2


# --- name resolution against a board with other names ---------------------------------------------

# What a Supermicro board on older BMC firmware calls the X14 table's attributes.
SUPERMICRO_RENAMES = {
    "LimitCPUPAto46bits": "LimitCPUPAto46bits_F319",  # AMI form-id suffix
    "MemoryEncryption_TME_": "MemoryEncryption(TME)#3C36",  # X13-era name: display name only
    "TotalMemoryEncryptionMulti_Tenant_TME_MT_": "TotalMemoryEncryptionMulti-Tenant(TME-MT)#F31B",
    "TrustDomainExtensions_TDX_": "TrustDomainExtension(TDX)#3C38",
    "TDXSecureArbitrationModeLoader_SEAMLoader_": "TDXSecureArbitrationModeLoader_SEAMLoader__F31D",
}


def _renamed(setting: BiosSetting) -> str:
    return SUPERMICRO_RENAMES.get(setting.attribute, setting.attribute)


def test_suffixed_and_display_name_only_attributes_resolve(emulator_for: Any) -> None:
    emu = emulator_for(board_for_table(load_vendor_table("supermicro"), rename=_renamed))
    by_setting = {}
    for phase in load_vendor_table("supermicro").phase_numbers:
        result = redfish.apply_phase(emu.url, emu.username, emu.password, "supermicro", phase, **pinned(emu))
        assert result.changed and result.pending == {}
        by_setting.update(result.resolved)
    result = redfish.check_phase(
        emu.url, emu.username, emu.password, "supermicro", 3, tls_fingerprint=emu.tls.fingerprint
    )
    assert result.resolved["tdx"] == "TrustDomainExtension(TDX)#3C38"
    assert result.resolved["seam_loader"] == "TDXSecureArbitrationModeLoader_SEAMLoader__F31D"
    assert result.attributes["TrustDomainExtension(TDX)#3C38"] == "Enabled"

    phase1 = redfish.check_phase(
        emu.url, emu.username, emu.password, "supermicro", 1, tls_fingerprint=emu.tls.fingerprint
    )
    assert phase1.resolved["pa_limit_46"] == "LimitCPUPAto46bits_F319"
    assert phase1.resolved["tme"] == "MemoryEncryption(TME)#3C36"
    assert phase1.pending == {}
    patched = set().union(*(p["body"]["Attributes"] for p in emu.patches()))
    table = load_vendor_table("supermicro")
    assert patched == {_renamed(s) for n in table.phase_numbers for s in table.phase(n)}


def test_bmc_without_registry_resolves_by_name(emulator_for: Any) -> None:
    emu = emulator_for(board_for_table(load_vendor_table("dell")), with_registry=False)
    result = redfish.apply_phase(emu.url, emu.username, emu.password, "dell", 1, **pinned(emu))
    assert result.changed and result.attributes == desired("dell", 1)


# --- errors ---------------------------------------------------------------------------------------


def test_unknown_attribute_is_reported_before_any_change(emulator_for: Any) -> None:
    board = board_for_table(load_vendor_table("dell"))
    board.bios.pop("CpuPaLimit")
    board.registry[:] = [e for e in board.registry if e["AttributeName"] != "CpuPaLimit"]
    emu = emulator_for(board)
    with pytest.raises(BiosError) as info:
        redfish.apply_phase(emu.url, emu.username, emu.password, "dell", 1, **pinned(emu), missing_retries=0)
    message = str(info.value)
    for part in (
        "'pa_limit_46'",
        "'CpuPaLimit'",
        "'CPU Physical Address Limit'",
        "BIOS too old or attribute hidden until the previous phase",
        "firmware/bios/dell.yaml",
        emu.url,
    ):
        assert part in message
    assert emu.patches() == [] and emu.resets() == []


def test_value_the_registry_does_not_allow_is_refused(emulator_for: Any) -> None:
    board = board_for_table(load_vendor_table("supermicro"))
    board.registry[:] = [e for e in board.registry if e["AttributeName"] != "LimitCPUPAto46bits"]
    board.registry.append(
        {
            "AttributeName": "LimitCPUPAto46bits",
            "DisplayName": "Limit CPU PA to 46 bits",
            "Type": "Enumeration",
            "ReadOnly": False,
            "Value": [
                {"ValueName": "Enable", "ValueDisplayName": "Enable"},
                {"ValueName": "Disable", "ValueDisplayName": "Disable"},
            ],
        }
    )
    emu = emulator_for(board)
    with pytest.raises(
        BiosError, match=r"value 'Disabled' is not allowed for attribute 'LimitCPUPAto46bits'.*'Enable'"
    ):
        redfish.apply_phase(emu.url, emu.username, emu.password, "supermicro", 1, **pinned(emu))
    assert emu.patches() == []


def test_wrong_credentials(dell_bmc: RedfishEmulator) -> None:
    emu = dell_bmc
    with pytest.raises(BiosError) as info:
        redfish.apply_phase(
            emu.url, emu.username, "wrong-Passw0rd-91", "dell", 1, config_key="hosts[0].bmc", **pinned(emu)
        )
    assert str(info.value).startswith(f"BMC {emu.url} refused the credentials (HTTP 401)")
    assert "fix: check hosts[0].bmc.username/password" in str(info.value)

    done = run_cli(
        emu,
        "apply",
        "--vendor",
        "dell",
        "--phase",
        "1",
        "--tls-fingerprint",
        emu.tls.fingerprint,
        password="wrong-Passw0rd-91",
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1].startswith("error: BMC ")
    assert "refused the credentials (HTTP 401)" in done.stderr
    assert emu.patches() == []


def test_tls_fingerprint_mismatch_names_both(dell_bmc: RedfishEmulator) -> None:
    emu = dell_bmc
    wrong = "00" * 32
    with pytest.raises(BiosError) as info:
        redfish.check_phase(emu.url, emu.username, emu.password, "dell", 1, tls_fingerprint=wrong, retry_delay_s=0.05)
    message = str(info.value)
    assert "TLS fingerprint mismatch" in message
    assert f"expected SHA-256 {redfish.format_fingerprint(wrong)}" in message
    assert f"seen {redfish.format_fingerprint(emu.tls.fingerprint)}" in message
    # Nothing was sent past the handshake.
    assert emu.events("request") == []


def test_ca_file_verifies_and_a_foreign_ca_is_refused(dell_bmc: RedfishEmulator, tmp_path: Path) -> None:
    emu = dell_bmc
    ok = redfish.check_phase(emu.url, emu.username, emu.password, "dell", 1, ca_file=str(emu.tls.cert))
    assert ok.pending == desired("dell", 1)
    other = tmp_path / "other-ca"
    other.mkdir()
    foreign = make_tls(other)
    with pytest.raises(BiosError, match="TLS verification of BMC .* failed"):
        redfish.check_phase(
            emu.url, emu.username, emu.password, "dell", 1, ca_file=str(foreign.cert), retry_delay_s=0.05
        )


def test_unreachable_bmc() -> None:
    url = f"https://127.0.0.1:{free_port()}"
    with pytest.raises(BiosError, match=f"BMC {url} is unreachable: .*fix: check hosts\\[i\\].bmc.endpoint"):
        redfish.check_phase(url, "admin", "pw-unused-123", "dell", 1, tls_fingerprint="ab" * 32, retry_delay_s=0.05)


def test_reset_that_never_applies_times_out_with_expected_vs_seen(emulator_for: Any) -> None:
    # A board whose reset never finishes: power stays Off far beyond the timeout.
    emu = emulator_for(board_for_table(load_vendor_table("dell")), power_delay_s=3600)
    with pytest.raises(BiosError) as info:
        redfish.apply_phase(emu.url, emu.username, emu.password, "dell", 1, **pinned(emu, timeout_s=0.5))
    message = str(info.value)
    assert "not applied after 0.5 s (power Off)" in message
    assert "MemoryEncryption: expected 'MultipleKeys', seen 'Disabled'" in message


# --- the password never leaks ---------------------------------------------------------------------


def test_password_never_appears_in_any_output(
    dell_bmc: RedfishEmulator, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    emu = dell_bmc
    wrong = "another-Secret-pw-555"
    secrets = [emu.password, wrong]
    secrets += [base64.b64encode(f"{emu.username}:{p}".encode()).decode() for p in (emu.password, wrong)]
    texts: list[str] = []
    caplog.set_level(logging.DEBUG)

    attempts = [
        lambda: redfish.apply_phase(emu.url, emu.username, emu.password, "dell", 1, **pinned(emu)),
        lambda: redfish.apply_phase(emu.url, emu.username, emu.password, "dell", 2, **pinned(emu)),
        lambda: redfish.check_phase(emu.url, emu.username, wrong, "dell", 1, tls_fingerprint=emu.tls.fingerprint),
        lambda: redfish.check_phase(
            emu.url, emu.username, emu.password, "dell", 1, tls_fingerprint="11" * 32, retry_delay_s=0.05
        ),
        lambda: redfish.check_phase(
            emu.url + "0",
            emu.username,
            emu.password,
            "dell",
            1,
            tls_fingerprint=emu.tls.fingerprint,
            retry_delay_s=0.05,
        ),
    ]
    for attempt in attempts:
        try:
            texts.append(repr(attempt()))
        except BiosError as exc:
            texts += [str(exc), repr(exc)]

    for password, extra in ((emu.password, ["--verbose"]), (wrong, ["--verbose"]), (emu.password, [])):
        done = run_cli(
            emu,
            "apply",
            "--vendor",
            "dell",
            "--phase",
            "1",
            "--tls-fingerprint",
            emu.tls.fingerprint,
            *extra,
            password=password,
        )
        texts += [done.stdout, done.stderr]

    captured = capsys.readouterr()
    texts += [captured.out, captured.err, caplog.text]
    # The DEBUG capture really saw the HTTP traffic, so its silence about the password means something.
    assert "HTTP request: POST" in caplog.text and "'Authorization'" not in caplog.text
    assert any("refused the credentials" in t for t in texts)
    for text in texts:
        for secret in secrets:
            assert secret not in text


# --- the boards as the evidence describes them (tests/fixtures/host/bios/<vendor>.rules.json) -------


@pytest.mark.parametrize("vendor", ["dell", "intel", "lenovo", "supermicro"])
def test_each_shipped_table_applies_on_its_vendors_board(emulator_for: Any, vendor: str) -> None:
    """Every attribute appears only once what it requires is active; the table's phases get there."""
    emu = emulator_for(board_from_rules(vendor))
    table = load_vendor_table(vendor)
    registration = "mpa" if table.sets_registration_agent else "pckid"
    for phase in table.phase_numbers:
        result = redfish.apply_phase(
            emu.url, emu.username, emu.password, vendor, phase, **pinned(emu), registration=registration
        )
        assert result.changed and result.pending == {}, (phase, result)
    assert len(emu.resets()) == len(table.phase_numbers)


def _collapsed(tmp_path: Path, vendor: str, move: set[str], into: int) -> Path:
    """A copy of the vendor's table with the settings in `move` pulled forward into phase `into`."""
    import yaml

    doc = yaml.safe_load(bios_tables.table_path(vendor).read_text())
    moved = [s for n, settings in doc["phases"].items() if n != into for s in settings if s["setting"] in move]
    for n in list(doc["phases"]):
        if n != into:
            doc["phases"][n] = [s for s in doc["phases"][n] if s["setting"] not in move]
    doc["phases"][into] += moved
    doc["phases"] = {i + 1: v for i, (_, v) in enumerate(sorted((n, v) for n, v in doc["phases"].items() if v))}
    (tmp_path / "fw" / "bios").mkdir(parents=True, exist_ok=True)
    (tmp_path / "fw" / "bios" / f"{vendor}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return tmp_path / "fw"


def test_dell_refuses_sgx_in_the_same_phase_as_memory_encryption(emulator_for: Any, tmp_path: Path) -> None:
    """The table as it was: IntelSgx with MemoryEncryption. On the board IntelSgx is absent until
    MultipleKeys is active (dmc5179, out-layer), so that phase fails before any change."""
    fw = _collapsed(tmp_path, "dell", {"sgx"}, 1)
    emu = emulator_for(board_from_rules("dell"))
    with pytest.raises(BiosError) as info:
        redfish.apply_phase(
            emu.url, emu.username, emu.password, "dell", 1, **pinned(emu), firmware_dir=fw, missing_retries=0
        )
    assert "'IntelSgx'" in str(info.value) and "hidden until the previous phase is applied" in str(info.value)
    assert emu.patches() == [] and emu.resets() == []


def test_supermicro_refuses_tme_mt_before_tme_is_active(emulator_for: Any, tmp_path: Path) -> None:
    fw = _collapsed(tmp_path, "supermicro", {"tme_mt", "tme_bypass"}, 1)
    emu = emulator_for(board_from_rules("supermicro"))
    with pytest.raises(BiosError, match="TotalMemoryEncryptionMulti_Tenant_TME_MT_"):
        redfish.apply_phase(
            emu.url, emu.username, emu.password, "supermicro", 1, **pinned(emu), firmware_dir=fw, missing_retries=0
        )


def test_a_write_before_what_unlocks_it_is_staged_is_refused(emulator_for: Any) -> None:
    """Dell: EnableTdxSeamldr accepts a write only once EnableTdx is at least staged (out-layer)."""
    emu = emulator_for(board_from_rules("dell"))
    redfish.apply_phase(emu.url, emu.username, emu.password, "dell", 1, **pinned(emu))
    bios = sushy_client(emu).get_system(emu.system_path).bios
    with pytest.raises(sushy.exceptions.BadRequestError, match="EnableTdxSeamldr is a read only property"):
        bios.set_attributes({"EnableTdxSeamldr": "Enabled"})
    bios.set_attributes({"EnableTdx": "Enabled", "EnableTdxSeamldr": "Enabled"})  # staged first: accepted


def test_pckid_keeps_the_registration_agent_off(emulator_for: Any) -> None:
    emu = emulator_for(board_from_rules("intel"))
    for phase in load_vendor_table("intel").phase_numbers:
        done = redfish.apply_phase(
            emu.url, emu.username, emu.password, "intel", phase, **pinned(emu), registration="pckid"
        )
    assert done.resolved["sgx_auto_registration"] == "SgxAutoRegistrationAgent"  # by its display name
    assert done.attributes["SgxAutoRegistrationAgent"] == "Disabled"


def test_a_setting_the_bmc_lists_late_is_read_again(emulator_for: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after a reset some BMCs serve the old attribute list for a while (KubeTEE: iDRAC drops
    the SGX attributes until it refreshes): the phase reads the BIOS again before failing."""
    emu = emulator_for(board_for_table(load_vendor_table("dell")))
    real, calls = redfish._read, []

    def late(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) < 3:
            raise BiosSettingsMissing("BIOS setting 'x2apic' not found: tried attribute 'ProcX2Apic'")
        return real(*args, **kwargs)

    monkeypatch.setattr(redfish, "_read", late)
    result = redfish.apply_phase(emu.url, emu.username, emu.password, "dell", 1, **pinned(emu))
    assert len(calls) == 3 and result.changed


# --- Dell iDRAC: staged BIOS values apply only through a configuration job (issue 17) -------------


def test_dell_applies_every_phase_through_an_idrac_configuration_job(emulator_for: Any) -> None:
    emu = emulator_for(board_from_rules("dell"), dell_jobs=True)
    table = load_vendor_table("dell")
    for phase in table.phase_numbers:
        result = redfish.apply_phase(emu.url, emu.username, emu.password, "dell", phase, **pinned(emu))
        assert result.changed and result.pending == {}, (phase, result)
        assert result.job is not None and result.job.startswith(redfish.DELL_JOBS + "/JID_"), result
    jobs = emu.events("job")
    assert [j["state"] for j in jobs] == ["Scheduled", "Completed"] * len(table.phase_numbers), jobs
    assert all(j["target"].lower().endswith("/bios/settings") for j in jobs if j["state"] == "Scheduled")
    assert emu.events("bios_not_applied") == []
    again = redfish.apply_phase(emu.url, emu.username, emu.password, "dell", 1, **pinned(emu))
    assert not again.changed and again.job is None and len(emu.events("job")) == len(jobs)  # idempotent


def test_without_the_configuration_job_idrac_boots_the_old_values(emulator_for: Any, monkeypatch: Any) -> None:
    # What the code did before: PATCH (OnReset) and reset. iDRAC keeps the values pending forever.
    emu = emulator_for(board_from_rules("dell"), dell_jobs=True)
    monkeypatch.setattr(redfish, "_dell_config_job", lambda *a: None)
    with pytest.raises(BiosError, match="BIOS phase 1 on BMC .* not applied after 2 s"):
        redfish.apply_phase(emu.url, emu.username, emu.password, "dell", 1, **pinned(emu, timeout_s=2, poll_s=0.2))
    assert emu.events("bios_not_applied"), emu.events()


def test_a_failed_idrac_job_is_reported_at_once_with_its_message(emulator_for: Any) -> None:
    emu = emulator_for(board_from_rules("dell"), dell_jobs=True, dell_job_fails="Unable to apply BIOS settings.")
    t = time.monotonic()
    with pytest.raises(BiosError) as info:
        redfish.apply_phase(emu.url, emu.username, emu.password, "dell", 1, **pinned(emu, timeout_s=60, poll_s=0.2))
    text = str(info.value)
    assert re.search(
        r"configuration job JID_\d{12} on BMC \S+ Failed: Unable to apply BIOS settings\. \(SYS051\)", text
    )
    assert "fix: read that job in the iDRAC Lifecycle Log" in text
    assert time.monotonic() - t < 30  # not the 60 s timeout: the job's state ends the wait
