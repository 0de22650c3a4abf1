"""Conformance of the offline measurement code with every vector in tests/fixtures/measurements
(and the quotes + CCEL in tests/fixtures/tdx-quotes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tdxattest.core import events as ev
from tdxattest.core.dstack import parse_dstack_attestation
from tdxattest.core.eventlog import parse_tcg2_log, replay_log
from tdxattest.core.measure import AcpiDigests, BootInputs, compute, rtmr0_register, rtmr1_register
from tdxattest.core.mrtd import compute_mrtd
from tdxattest.core.quote import parse_quote, read_td_report
from tdxattest.core.rtmr import replay
from tdxattest.core.tdhob import MIB, td_hob_digest
from tdxattest.core.tdvf import cfv_bytes, parse_tdvf
from tests.support.paths import MEASUREMENTS as MEAS
from tests.support.paths import QUOTES, REPO


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


COMPUTED = _json(MEAS / "firmware" / "computed-debian-ovmf.json")
OASIS = _json(MEAS / "expected" / "oasis-cli-tdx-vectors.json")
DSTACK = _json(MEAS / "expected" / "dstack-expected.json")
DECODED = _json(MEAS / "eventlogs" / "dstack-eventlogs-decoded.json")
QUOTE_MANIFEST = _json(QUOTES / "manifest.json")
FIRMWARE_RECORDS = {f["fixture"]: f for f in COMPUTED["files"]}
TRIXIE = "firmware/ovmf-debian13-trixie-2025.02-8-deb13u1.fd"
BOOKWORM = "firmware/ovmf-debian12-bookworm-2022.11-6-deb12u2.fd"
CCEL_SAMPLE = MEAS / "eventlogs" / "dstack-ccel-sample.bin"
SIMULATOR = MEAS / "eventlogs" / "dstack-simulator-attestation.bin"
GCP_CCEL = QUOTES / "eventlog" / "gcp-cos113-ccel_data.bin"
GCP_QUOTE = QUOTES / "quotes" / "gcp-cos113-v4-00806f.bin"

_cache: dict = {}


def firmware(fixture: str):
    if fixture not in _cache:
        data = (MEAS / fixture).read_bytes()
        _cache[fixture] = (data, parse_tdvf(data))
    return _cache[fixture]


def h(value: bytes | None) -> str | None:
    return value.hex() if value is not None else None


def oasis_acpi(memory_mib: int, cpus: int) -> AcpiDigests:
    (v,) = [v for v in OASIS["acpi_blob_sha384"]["vectors"] if v["memory_mib"] == memory_mib and v["cpus"] == cpus]
    return AcpiDigests(
        table_loader=bytes.fromhex(v["sha384_etc_table_loader"]),
        rsdp=bytes.fromhex(v["sha384_etc_acpi_rsdp"]),
        tables=bytes.fromhex(v["sha384_etc_acpi_tables"]),
    )


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tdxattest", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


# ---------------------------------------------------------------------------------------------
# TDVF metadata and MRTD (Debian firmware, both page-add orders)


@pytest.mark.parametrize("fixture", [BOOKWORM, TRIXIE])
def test_tdvf_metadata(fixture):
    exp = FIRMWARE_RECORDS[fixture]
    data, meta = firmware(fixture)
    assert len(data) == exp["size"]
    assert meta.descriptor_offset == exp["tdvf_descriptor_offset"]
    assert [s.as_dict() for s in meta.sections] == exp["sections"]


@pytest.mark.parametrize("order,key", [("single", "mrtd_single_pass"), ("two-pass", "mrtd_two_pass")])
@pytest.mark.parametrize("fixture", [BOOKWORM, TRIXIE])
def test_mrtd(fixture, order, key):
    data, meta = firmware(fixture)
    assert compute_mrtd(data, meta, order).hex() == FIRMWARE_RECORDS[fixture][key]


def test_mrtd_readme_values():
    """The README's table (the values a reader sees first) equals the JSON the test reads."""
    readme = (MEAS / "README.md").read_text()
    for fixture in (BOOKWORM, TRIXIE):
        assert (
            FIRMWARE_RECORDS[fixture]["mrtd_single_pass"] in readme
            and FIRMWARE_RECORDS[fixture]["mrtd_two_pass"] in readme
        )


@pytest.mark.parametrize("fixture", [BOOKWORM, TRIXIE])
def test_cli_measure_prints_both_orders(fixture):
    proc = run_cli("measure", "--firmware", str(MEAS / fixture), "--page-add-order", "two-pass", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    exp = FIRMWARE_RECORDS[fixture]
    assert out["mrtd"] == {
        "single": exp["mrtd_single_pass"],
        "two-pass": exp["mrtd_two_pass"],
        "selected": "two-pass",
        "value": exp["mrtd_two_pass"],
    }
    assert out["firmware"]["sha256"] == exp["sha256"] and out["firmware"]["sha384"] == exp["sha384"]
    assert out["firmware"]["cfv_sha384"] == exp["cfv_sha384"]
    assert "rtmr0" not in out and "rtmr1" not in out and set(out["not_computed"]) == {"rtmr0", "rtmr1", "rtmr2"}


def test_cli_measure_direct_boot(tmp_path):
    """--kernel/--initrd/--cmdline give RTMR1 and RTMR2 with their per-event digests."""
    from tdxattest.core.authenticode import authenticode_digest
    from tdxattest.core.bzimage import qemu_patch_kernel
    from tests.support.builders import make_bzimage

    kernel = tmp_path / "bzImage"
    kernel.write_bytes(make_bzimage(size=0x8000))
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(bytes(range(256)) * 100)
    cmdline = "console=ttyS0 quiet"
    proc = run_cli(
        "measure",
        "--firmware",
        str(MEAS / TRIXIE),
        "--kernel",
        str(kernel),
        "--initrd",
        str(initrd),
        "--cmdline",
        cmdline,
        "--memory-mib",
        "16384",
        "--vcpus",
        "4",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    kd = authenticode_digest(
        qemu_patch_kernel(
            kernel.read_bytes(), ram_bytes=16384 * MIB, initrd_size=initrd.stat().st_size, cmdline=cmdline
        )
    )
    assert [e["digest"] for e in out["rtmr1"]["events"]] == [
        kd.hex(),
        ev.efi_action(ev.CALLING_EFI_APPLICATION).hex(),
        ev.SEPARATOR.hex(),
        ev.efi_action(ev.EXIT_BOOT_SERVICES_INVOCATION).hex(),
        ev.efi_action(ev.EXIT_BOOT_SERVICES_SUCCESS).hex(),
    ]
    assert out["rtmr1"]["value"] == replay(bytes.fromhex(e["digest"]) for e in out["rtmr1"]["events"]).hex()
    assert [e["digest"] for e in out["rtmr2"]["events"]] == [
        ev.cmdline_digest(cmdline + " initrd=initrd").hex(),
        ev.sha384(initrd.read_bytes()).hex(),
    ]
    assert out["inputs"]["kernel"]["authenticode_sha384_patched"] == kd.hex()
    assert "rtmr0" not in out and out["not_computed"] == {"rtmr0": "needs the QEMU ACPI blobs or their digests"}
    assert out["firmware"]["td_hob_sha384"] == FIRMWARE_RECORDS[TRIXIE]["td_hob_sha384_by_ram_mib"]["16384"]


# ---------------------------------------------------------------------------------------------
# TD HOB: 15 oasis vectors (bookworm/sid layout), the computed table, and two hardware logs


OASIS_HOB = {int(k): v for k, v in OASIS["td_hob_sha384_by_ram_mib"].items() if not k.startswith("_")}


def test_oasis_td_hob_vector_count():
    assert len(OASIS_HOB) == 15


@pytest.mark.parametrize("ram_mib", sorted(OASIS_HOB))
def test_td_hob_oasis_vectors(ram_mib):
    _, meta = firmware(BOOKWORM)
    assert td_hob_digest(meta, ram_mib * MIB).hex() == OASIS_HOB[ram_mib]


@pytest.mark.parametrize("fixture", [BOOKWORM, TRIXIE])
def test_td_hob_computed_table(fixture):
    _, meta = firmware(fixture)
    for ram_mib, digest in FIRMWARE_RECORDS[fixture]["td_hob_sha384_by_ram_mib"].items():
        assert td_hob_digest(meta, int(ram_mib) * MIB).hex() == digest, ram_mib


def test_td_hob_matches_hardware_logs():
    """V2: the dstack CCEL sample's TdxTable event = trixie layout at 1 GiB; V3: the simulator
    quote's = bookworm layout at 16 GiB."""
    ccel = parse_tcg2_log(CCEL_SAMPLE.read_bytes())
    assert ccel.events[0].describe() == "TdxTable"
    assert ccel.events[0].sha384 == td_hob_digest(firmware(TRIXIE)[1], 1024 * MIB)
    sim = parse_dstack_attestation(SIMULATOR.read_bytes())
    assert sim.events[0].sha384 == td_hob_digest(firmware(BOOKWORM)[1], 16384 * MIB)


# ---------------------------------------------------------------------------------------------
# CFV and the constant RTMR0 events


@pytest.mark.parametrize("fixture", [BOOKWORM, TRIXIE])
def test_cfv_digest(fixture):
    data, meta = firmware(fixture)
    assert ev.sha384(cfv_bytes(data, meta)).hex() == FIRMWARE_RECORDS[fixture]["cfv_sha384"]


def test_trixie_cfv_is_the_published_constant_and_in_both_hardware_logs():
    data, meta = firmware(TRIXIE)
    cfv = ev.sha384(cfv_bytes(data, meta))
    assert cfv.hex() == DSTACK["constants_in_dstack_mr_src_tdvf_rs"]["cfv_sha384_pristine_4MiB_varstore"]
    assert parse_tcg2_log(CCEL_SAMPLE.read_bytes()).events[1].sha384 == cfv
    assert parse_dstack_attestation(SIMULATOR.read_bytes()).events[1].sha384 == cfv


def test_constant_event_digests():
    consts = DSTACK["constants_in_dstack_mr_src_tdvf_rs"]
    assert ev.SEPARATOR.hex() == consts["separator_sha384"]
    assert ev.variable_boot(ev.BOOT_ORDER_DEFAULT).hex() == consts["boot_order_sha384"]
    assert ev.variable_boot(ev.uiapp_load_option()).hex() == consts["boot0000_sha384_uiapp"]
    assert ev.uiapp_load_option().hex() in consts["_boot0000_note"]


def test_event_digests_against_the_ccel_sample():
    """Secure Boot variables (empty), separator, EFI actions, BootOrder/Boot0000 = the hardware log."""
    events = parse_tcg2_log(CCEL_SAMPLE.read_bytes()).events
    by_detail = {e.describe(): e.sha384 for e in events}
    for name, guid in ev.SECURE_BOOT_VARIABLES:
        assert by_detail[f"{name} (0 bytes)"] == ev.variable_driver_config(guid, name)
    assert by_detail["separator"] == ev.SEPARATOR
    for text in (ev.CALLING_EFI_APPLICATION, ev.EXIT_BOOT_SERVICES_INVOCATION, ev.EXIT_BOOT_SERVICES_SUCCESS):
        assert by_detail[text] == ev.efi_action(text)
    assert by_detail["BootOrder (2 bytes)"] == ev.variable_boot(ev.BOOT_ORDER_DEFAULT)
    assert by_detail["Boot0000 (62 bytes)"] == ev.variable_boot(ev.uiapp_load_option())


# ---------------------------------------------------------------------------------------------
# kernel command line and RTMR replay vectors (oasis)


@pytest.mark.parametrize("vector", OASIS["kernel_cmdline_sha384"], ids=lambda v: repr(v["cmdline"][:20]))
def test_cmdline_vectors(vector):
    assert ev.cmdline_digest(vector["cmdline"]).hex() == vector["sha384"]


def test_cmdline_count():
    assert len(OASIS["kernel_cmdline_sha384"]) == 3


@pytest.mark.parametrize("index", range(3))
def test_rtmr_replay_vectors(index):
    v = OASIS["rtmr_replay"]["vectors"][index]
    assert replay(bytes.fromhex(d) for d in v["event_digests"]).hex() == v["expected_register"]


def test_oasis_rtmr0_log_from_first_principles():
    """Oasis' 14-event RTMR0 log rebuilt: bookworm-layout TD HOB at 2815 MiB, the pristine CFV,
    the 2815 MiB / 1 vCPU ACPI digests, and the separator at the end of RTMR0."""
    v = OASIS["rtmr_replay"]["vectors"][2]
    data, meta = firmware(TRIXIE)
    reg = rtmr0_register(
        td_hob_digest(firmware(BOOKWORM)[1], 2815 * MIB),
        ev.sha384(cfv_bytes(data, meta)),
        oasis_acpi(2815, 1),
        separator="rtmr0",
    )
    assert [e.digest.hex() for e in reg.events] == v["event_digests"]
    assert reg.value.hex() == v["expected_register"]


def test_oasis_rtmr1_template():
    v = OASIS["rtmr_replay"]["vectors"][1]
    reg = rtmr1_register(bytes.fromhex(v["event_digests"][0]), separator="rtmr0")
    assert [e.digest.hex() for e in reg.events] == v["event_digests"]
    assert reg.value.hex() == v["expected_register"]


# ---------------------------------------------------------------------------------------------
# dstack's event logs (hardware)


def test_ccel_sample_events_and_replay():
    log = parse_tcg2_log(CCEL_SAMPLE.read_bytes())
    expected = DECODED["eventlogs/dstack-ccel-sample.bin"]
    assert [(e.mr_index, f"0x{e.event_type:x}", e.sha384.hex(), len(e.data)) for e in log.events] == [
        (x["mr_index"], x["event_type"], x["sha384"], x["event_data_len"]) for x in expected["events"]
    ]
    rep = replay_log(log.events)
    assert rep.rtmrs[0].hex() == expected["replayed_rtmrs"]["rtmr0"]
    assert rep.rtmrs[1].hex() == expected["replayed_rtmrs"]["rtmr1"]


def test_rtmr0_of_the_ccel_sample_from_the_trixie_firmware():
    """Everything in the hardware log's RTMR0 recomputed: TD HOB and CFV from the trixie firmware at
    1 GiB, the constant events, and the ACPI digests oasis publishes for 1 GiB / 1 vCPU."""
    data, _ = firmware(TRIXIE)
    result = compute(BootInputs(firmware=data, memory_bytes=1024 * MIB, vcpus=1, acpi=oasis_acpi(1024, 1)))
    log = parse_tcg2_log(CCEL_SAMPLE.read_bytes())
    assert [e.digest for e in result.rtmr0.events] == [e.sha384 for e in log.events if e.rtmr == 0]
    assert result.rtmr0.value.hex() == DECODED["eventlogs/dstack-ccel-sample.bin"]["replayed_rtmrs"]["rtmr0"]


def test_cli_rtmr0_with_acpi_digest_file(tmp_path):
    acpi = oasis_acpi(1024, 1)
    path = tmp_path / "acpi.json"
    path.write_text(json.dumps(acpi.as_dict()))
    proc = run_cli(
        "measure",
        "--firmware",
        str(MEAS / TRIXIE),
        "--memory-mib",
        "1024",
        "--vcpus",
        "1",
        "--acpi-tables",
        str(path),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["rtmr0"]["value"] == DECODED["eventlogs/dstack-ccel-sample.bin"]["replayed_rtmrs"]["rtmr0"]
    assert out["firmware"]["td_hob_sha384"] == FIRMWARE_RECORDS[TRIXIE]["td_hob_sha384_by_ram_mib"]["1024"]
    assert [e["event"] for e in out["rtmr0"]["events"]][:2] == ["td-hob", "cfv"]


def test_rtmr1_template_of_the_ccel_sample():
    log = parse_tcg2_log(CCEL_SAMPLE.read_bytes())
    rtmr1 = [e.sha384 for e in log.events if e.rtmr == 1]
    reg = rtmr1_register(rtmr1[0], separator="rtmr1")
    assert [e.digest for e in reg.events] == rtmr1
    assert reg.value.hex() == DECODED["eventlogs/dstack-ccel-sample.bin"]["replayed_rtmrs"]["rtmr1"]


def test_simulator_replay_equals_its_quote():
    att = parse_dstack_attestation(SIMULATOR.read_bytes())
    quote = read_td_report(att.quote)
    body = DECODED["eventlogs/dstack-simulator-attestation.bin"]["quote_td_report_body"]
    assert quote.mrtd.hex() == body["mrtd"] and quote.td_attributes.hex() == body["td_attributes"]
    assert len(att.events) == 33
    rep = replay_log(att.events)
    assert [r.hex() for r in rep.rtmrs] == [body[f"rtmr{i}"] for i in range(4)]


def test_simulator_runtime_events():
    att = parse_dstack_attestation(SIMULATOR.read_bytes())
    runtime = [(e, n) for e, n in zip(att.events, att.names) if e.rtmr == 3]
    assert len(runtime) == 9
    for e, name in runtime:
        assert ev.dstack_runtime_event(e.event_type, name, e.data) == e.sha384, name


def test_cli_replay_of_the_simulator_matches_its_quote():
    proc = run_cli("eventlog", "replay", str(SIMULATOR), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["format"] == "dstack" and out["event_count"] == 33
    assert out["quote"]["ok"] is True and all(out["quote"]["match"].values())
    body = DECODED["eventlogs/dstack-simulator-attestation.bin"]["quote_td_report_body"]
    assert out["rtmrs"] == {f"rtmr{i}": body[f"rtmr{i}"] for i in range(4)}


# ---------------------------------------------------------------------------------------------
# Google's CCEL + quote (tdx-quotes fixtures): replay = the quote's RTMR0-3


def test_gcp_ccel_replay_equals_its_quote():
    log = parse_tcg2_log(GCP_CCEL.read_bytes())
    quote = read_td_report(GCP_QUOTE.read_bytes())
    assert replay_log(log.events).rtmrs == quote.rtmrs


def test_cli_replay_with_quote_exit_codes():
    ok = run_cli("eventlog", "replay", str(GCP_CCEL), "--quote", str(GCP_QUOTE), "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["quote"]["ok"] is True
    bad = run_cli("eventlog", "replay", str(CCEL_SAMPLE), "--quote", str(GCP_QUOTE))
    assert bad.returncode == 1
    assert "mismatch: rtmr0, rtmr1, rtmr2" in bad.stderr and "MISMATCH" in bad.stdout


@pytest.mark.parametrize("name", sorted(QUOTE_MANIFEST["quotes"]))
def test_quote_registers(name):
    v = QUOTE_MANIFEST["quotes"][name]
    data = (QUOTES / name).read_bytes()
    q = read_td_report(data)
    assert parse_quote(data).header.version == v["quote_version"]
    assert q.mrtd.hex() == v["mr_td"] and q.td_attributes.hex() == v["td_attributes"] and q.xfam.hex() == v["xfam"]
    assert [r.hex() for r in q.rtmrs] == [v[f"rtmr{i}"] for i in range(4)]
    assert q.mrconfigid.hex() == v["mr_config_id"] and q.report_data.hex() == v["report_data"]
