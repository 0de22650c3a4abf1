"""Malformed inputs to the measurement code: every refusal names the file, the offset and what was
expected. The bad inputs are built here (no fixtures needed); `make_tdvf` and `make_bzimage` are
also used by other tests."""

from __future__ import annotations

import importlib
import struct
import subprocess
import sys
import uuid

import pytest

from tdxattest import cli
from tdxattest.core.authenticode import authenticode_digest, pe_layout
from tdxattest.core.errors import InputError
from tdxattest.core.eventlog import parse_tcg2_log
from tdxattest.core.loaders import load_firmware, load_kernel
from tdxattest.core.mrtd import compute_mrtd
from tdxattest.core.quote import read_td_report
from tdxattest.core.tdvf import parse_tdvf
from tests.support.builders import DESC, SECTIONS, SIZE, make_bzimage, make_spec_id_log, make_tdvf
from tests.support.paths import REPO

# --------------------------------------------------------------------------------------------
# builders


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tdxattest", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, file: str, offset: int | None) -> str:
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith(f"error: {file}: "), line
    if offset is not None:
        assert f": offset {offset} (0x{offset:x}): expected " in line, line
    assert ", seen " in line
    return line


# --------------------------------------------------------------------------------------------
# the builders are sound


def test_synthetic_firmware_parses_and_orders_differ():
    fw = make_tdvf()
    meta = parse_tdvf(fw)
    assert meta.descriptor_offset == DESC and meta.located_by == "ovmf-footer-table"
    assert [s.type_name for s in meta.sections] == ["BFV", "CFV", "TD_HOB", "TempMem"]
    assert compute_mrtd(fw, meta, "single") != compute_mrtd(fw, meta, "two-pass")


def test_page_aug_sections_do_not_count():
    """A PermMem section added with PAGE.AUG leaves no trace in MRTD (its GPA does not matter);
    a PAGE.ADDed one does. The descriptor sits inside the measured BFV here, so the measured image
    bytes are kept identical and only the parsed metadata differs."""

    def mrtd_with(gpa: int, attrs: int) -> bytes:
        fw = bytearray(make_tdvf([*SECTIONS, (0, 0, gpa, 0x4000, 4, attrs)]))
        fw[DESC + 16 + 32 * 4 : DESC + 48 + 32 * 4] = bytes(32)  # keep the measured BFV bytes identical
        meta = parse_tdvf(make_tdvf([*SECTIONS, (0, 0, gpa, 0x4000, 4, attrs)]))
        return compute_mrtd(bytes(fw), meta)

    assert mrtd_with(0x1000000, 2) == mrtd_with(0x2000000, 2)
    assert mrtd_with(0x1000000, 0) != mrtd_with(0x2000000, 0)


# --------------------------------------------------------------------------------------------
# firmware


def test_file_without_tdvf_metadata(tmp_path):
    bad = tmp_path / "plain.bin"
    bad.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(InputError) as err:
        load_firmware(bad)
    e = err.value
    assert e.file == str(bad) and e.offset == len(bad.read_bytes()) - 0x30
    assert "footer GUID" in e.expected and "not a TDX firmware image" in e.seen
    line = assert_one_line_error(run_cli("measure", "--firmware", str(bad)), str(bad), e.offset)
    assert "96b582de-1fb2-45f7-baea-a366c55a082d" in line


def test_tiny_file(tmp_path):
    bad = tmp_path / "tiny.fd"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(InputError, match=r"tiny.fd: offset 0 \(0x0\): expected a firmware image with TDVF"):
        load_firmware(bad)


def test_footer_table_without_tdx_entry():
    fw = bytearray(make_tdvf())
    end = SIZE - 0x20
    fw[end - 40 + 6 : end - 40 + 6 + 16] = uuid.UUID(int=1).bytes_le  # overwrite the TDX entry's GUID
    with pytest.raises(InputError) as err:
        parse_tdvf(bytes(fw))
    assert "TDX metadata offset GUID" in err.value.expected and err.value.offset == end - 40


def test_footer_entry_length_out_of_range():
    fw = bytearray(make_tdvf())
    end = SIZE - 0x20
    struct.pack_into("<H", fw, end - 40 + 4, 999)  # the TDX entry claims 999 bytes
    with pytest.raises(InputError) as err:
        parse_tdvf(bytes(fw))
    assert err.value.offset == end - 40 + 4 and "entry length" in err.value.expected and err.value.seen == "999"


def test_missing_metadata_guid_before_descriptor():
    fw = bytearray(make_tdvf())
    fw[DESC - 16 : DESC] = bytes(16)
    with pytest.raises(InputError) as err:
        parse_tdvf(bytes(fw))
    assert err.value.offset == DESC - 16 and "e9eaf9f3" in err.value.expected


def test_bad_signature_and_version():
    with pytest.raises(InputError) as err:
        parse_tdvf(make_tdvf(signature=b"XXXX"))
    assert err.value.offset == DESC and "'TDVF'" in err.value.expected
    with pytest.raises(InputError) as err:
        parse_tdvf(make_tdvf(version=2))
    assert err.value.offset == DESC + 8 and err.value.seen == "2"


def test_truncated_descriptor(tmp_path):
    fw = make_tdvf(count=40)  # 40 sections do not fit between the descriptor and the end of the file
    path = tmp_path / "truncated.fd"
    path.write_bytes(fw)
    with pytest.raises(InputError) as err:
        load_firmware(path)
    e = err.value
    assert e.offset == DESC and "truncated descriptor" in e.expected and "before the end of the file" in e.seen
    assert_one_line_error(run_cli("measure", "--firmware", str(path)), str(path), DESC)


def test_descriptor_length_mismatch():
    with pytest.raises(InputError) as err:
        parse_tdvf(make_tdvf(length=100))
    assert err.value.offset == DESC + 4 and "16 + 32 * 4" in err.value.expected and err.value.seen == "100"


def test_unknown_section_type(tmp_path):
    sections = [*SECTIONS[:3], (0, 0, 0x800000, 0x6000, 9, 0)]
    path = tmp_path / "type9.fd"
    path.write_bytes(make_tdvf(sections))
    with pytest.raises(InputError) as err:
        load_firmware(path)
    e = err.value
    assert e.offset == DESC + 16 + 32 * 3 + 24 and "unknown section type 9" in e.seen and "TD_HOB" in e.expected
    assert_one_line_error(run_cli("measure", "--firmware", str(path), "--json"), str(path), e.offset)


@pytest.mark.parametrize(
    "section,what,field_offset",
    [
        ((0x1000, 0x3000, 0xFFFFD000, 0x3000, 0, 0x4), "attributes", 28),
        ((0x1000, 0x3000, 0xFFFFD001, 0x3000, 0, 1), "aligned to 4 KiB", 8),
        ((0x1000, 0x3000, 0xFFFFD000, 0x2000, 0, 1), "memory size >=", 16),
        ((0x1000, 0x9000, 0xFFFFD000, 0x9000, 0, 1), "inside the", 0),
        ((0x1000, 0x3000, 0xFFFFD000, 0x3000, 0, 0), "MR.EXTEND", 28),
    ],
)
def test_bad_section_fields(section, what, field_offset):
    with pytest.raises(InputError) as err:
        parse_tdvf(make_tdvf([section, *SECTIONS[1:]]))
    assert what in err.value.expected and err.value.offset == DESC + 16 + field_offset


def test_td_hob_requires_one_hob_section():
    from tdxattest.core.tdhob import td_hob_digest

    fw = make_tdvf([SECTIONS[0], SECTIONS[1], SECTIONS[3]])
    with pytest.raises(InputError, match="exactly one TD_HOB"):
        td_hob_digest(parse_tdvf(fw), 1 << 30)


# --------------------------------------------------------------------------------------------
# kernel


def test_kernel_that_is_not_a_pe_image(tmp_path):
    elf = tmp_path / "vmlinux"
    elf.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(0x400))
    with pytest.raises(InputError) as err:
        load_kernel(elf)
    assert err.value.offset == 0 and "'MZ'" in err.value.expected and err.value.seen.startswith("0x7f454c46")
    fw = tmp_path / "fw.fd"
    fw.write_bytes(make_tdvf())
    line = assert_one_line_error(
        run_cli("measure", "--firmware", str(fw), "--kernel", str(elf), "--memory-mib", "2048", "--cmdline", ""),
        str(elf),
        0,
    )
    assert "PE/COFF" in line


def test_mz_without_pe_signature(tmp_path):
    img = bytearray(make_bzimage())
    img[0x40:0x44] = b"NE\x00\x00"
    with pytest.raises(InputError) as err:
        pe_layout(bytes(img))
    assert err.value.offset == 0x40 and "PE\\0\\0" in err.value.expected


def test_section_beyond_end_of_file():
    img = make_bzimage()[:0x2000]  # .text claims bytes up to 0x3000
    with pytest.raises(InputError) as err:
        authenticode_digest(img)
    assert "section 1 raw data" in err.value.expected


def test_authenticode_skips_checksum_certificate_entry_and_table():
    base = make_bzimage(cert=b"\x30\x82" + bytes(62))
    digest = authenticode_digest(base)
    img = bytearray(base)
    img[0x58 + 64] ^= 0xFF  # CheckSum
    img[-10] ^= 0xFF  # inside the certificate table
    assert authenticode_digest(bytes(img)) == digest
    for off in (0x10, 0x1F1, 0x210, 0x1800, 0x2FFF):  # header, setup header, sections
        changed = bytearray(base)
        changed[off] ^= 0xFF
        assert authenticode_digest(bytes(changed)) != digest, hex(off)


def test_authenticode_hand_computed():
    """The byte ranges written out by hand for the synthetic image (SizeOfHeaders 0x200,
    CheckSum at 0x98, certificate entry at 0xe8, sections back to back, 64-byte table at the end)."""
    import hashlib

    img = make_bzimage(cert=b"\x30\x82" + bytes(62))
    expected = hashlib.sha384(
        img[:0x98] + img[0x9C:0xE8] + img[0xF0:0x200] + img[0x200:0x1000] + img[0x1000:0x3000]
    ).digest()
    assert authenticode_digest(img) == expected
    assert authenticode_digest(img, "sha256") == hashlib.sha256(img[:0x98] + img[0x9C:0xE8] + img[0xF0:0x3000]).digest()


def test_initrd_with_a_kernel_too_old_for_it():
    from tdxattest.core.bzimage import qemu_patch_kernel

    img = bytearray(make_bzimage())
    img[0x202:0x206] = b"\x00\x00\x00\x00"  # no "HdrS": protocol 0
    with pytest.raises(InputError) as err:
        qemu_patch_kernel(bytes(img), ram_bytes=1 << 31, initrd_size=4096)
    assert err.value.offset == 0x202


# --------------------------------------------------------------------------------------------
# event logs and quotes


def test_event_log_with_a_bad_header(tmp_path):
    bad = tmp_path / "ccel.bin"
    bad.write_bytes(make_spec_id_log(event_type=8))
    with pytest.raises(InputError) as err:
        parse_tcg2_log(bad.read_bytes())
    assert err.value.offset == 4 and "EV_NO_ACTION" in err.value.expected and err.value.seen == "event type 0x8"
    assert_one_line_error(run_cli("eventlog", "replay", str(bad)), str(bad), 4)


def test_event_log_with_a_bad_signature(tmp_path):
    bad = tmp_path / "ccel.bin"
    bad.write_bytes(make_spec_id_log(signature=b"Spec ID Event02\x00"))
    line = assert_one_line_error(run_cli("eventlog", "replay", str(bad), "--json"), str(bad), 32)
    assert "Spec ID Event03" in line


def test_event_log_truncated_event():
    log = make_spec_id_log() + struct.pack("<III", 2, 0x80000007, 1) + struct.pack("<H", 0x000C) + bytes(20)
    with pytest.raises(InputError) as err:
        parse_tcg2_log(log)
    assert "truncated" in err.value.seen and "sha384" in err.value.expected


def test_event_log_wrong_mr_index():
    import hashlib

    text = b"Exit Boot Services Invocation"
    event = struct.pack("<III", 7, 0x80000007, 1) + struct.pack("<H", 0x000C) + hashlib.sha384(text).digest()
    log = make_spec_id_log() + event + struct.pack("<I", len(text)) + text
    with pytest.raises(InputError) as err:
        parse_tcg2_log(log)
    assert "MR index 1..4" in err.value.expected and err.value.seen.startswith("7")


def test_event_log_replays_a_valid_small_log():
    import hashlib

    from tdxattest.core.eventlog import replay_log
    from tdxattest.core.rtmr import replay

    text = b"Exit Boot Services Invocation"
    digest = hashlib.sha384(text).digest()
    event = struct.pack("<III", 2, 0x80000007, 1) + struct.pack("<H", 0x000C) + digest
    log = make_spec_id_log() + event + struct.pack("<I", len(text)) + text + bytes(64)
    parsed = parse_tcg2_log(log)
    assert len(parsed.events) == 1 and parsed.events[0].describe() == text.decode()
    assert replay_log(parsed.events).rtmrs[1] == replay([digest])


def test_quote_with_wrong_version_or_tee(tmp_path):
    with pytest.raises(InputError) as err:
        read_td_report(struct.pack("<HHI", 3, 2, 0) + bytes(1000))
    assert err.value.offset == 0 and "version 4 or 5" in err.value.expected
    with pytest.raises(InputError) as err:
        read_td_report(struct.pack("<HHI", 4, 2, 0) + bytes(1000))
    assert err.value.offset == 4 and "TDX" in err.value.expected
    with pytest.raises(InputError) as err:
        read_td_report(struct.pack("<HHI", 4, 2, 0x81) + bytes(100))
    assert "truncated quote" in err.value.seen


def test_replay_against_a_truncated_quote(tmp_path):
    import hashlib

    text = b"x"
    event = struct.pack("<III", 1, 0x80000007, 1) + struct.pack("<H", 0x000C) + hashlib.sha384(text).digest()
    log = tmp_path / "log.bin"
    log.write_bytes(make_spec_id_log() + event + struct.pack("<I", 1) + text)
    quote = tmp_path / "quote.bin"
    quote.write_bytes(struct.pack("<HHI", 4, 2, 0x81) + bytes(100))
    assert_one_line_error(run_cli("eventlog", "replay", str(log), "--quote", str(quote)), str(quote), 48)


# --------------------------------------------------------------------------------------------
# CLI plumbing


def test_missing_file_is_exit_2(tmp_path):
    proc = run_cli("measure", "--firmware", str(tmp_path / "nope.fd"))
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"error: {tmp_path / 'nope.fd'}: expected a readable file, seen No such file or directory"
    )


def test_ram_too_small_for_the_firmware_layout(tmp_path):
    fw = tmp_path / "fw.fd"
    fw.write_bytes(make_tdvf())
    line = assert_one_line_error(run_cli("measure", "--firmware", str(fw), "--memory-mib", "4"), str(fw), DESC)
    assert "inside guest RAM below 4 GiB" in line


def test_initrd_too_large_names_the_kernel(tmp_path):
    from tdxattest.core.loaders import load_initrd
    from tdxattest.core.measure import BootInputs, compute

    kernel = make_bzimage()
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"x")
    info = load_initrd(initrd)
    big = type(info)(size=1 << 31, sha384=info.sha384)
    with pytest.raises(InputError) as err:
        compute(
            BootInputs(firmware=make_tdvf(), memory_bytes=1 << 30, kernel=kernel, initrd=big, cmdline=""),
            sources={"kernel": "bzImage"},
        )
    assert err.value.file == "bzImage" and "an initrd smaller than" in err.value.expected


def test_kernel_needs_memory(tmp_path):
    fw = tmp_path / "fw.fd"
    fw.write_bytes(make_tdvf())
    k = tmp_path / "bzImage"
    k.write_bytes(make_bzimage())
    proc = run_cli("measure", "--firmware", str(fw), "--kernel", str(k))
    assert proc.returncode == 2 and proc.stderr.startswith("error: --kernel: expected --memory-mib")


def test_bad_acpi_digest_file(tmp_path):
    fw = tmp_path / "fw.fd"
    fw.write_bytes(make_tdvf())
    acpi = tmp_path / "acpi.json"
    acpi.write_text('{"table_loader": "00", "rsdp": "11", "tables": "22"}')
    proc = run_cli("measure", "--firmware", str(fw), "--memory-mib", "1024", "--acpi-tables", str(acpi))
    assert proc.returncode == 2 and "`table_loader`: a SHA-384 digest" in proc.stderr


@pytest.mark.parametrize("layout", ["flat", "sysfs"])
def test_acpi_blob_directory(tmp_path, layout):
    import hashlib

    from tdxattest.core.loaders import load_acpi

    blobs = {"table_loader": b"loader", "rsdp": b"RSD PTR ", "tables": b"FACP" * 50}
    names = {
        "flat": {"table_loader": "table-loader", "rsdp": "rsdp", "tables": "tables"},
        "sysfs": {"table_loader": "etc/table-loader/raw", "rsdp": "etc/acpi/rsdp/raw", "tables": "etc/acpi/tables/raw"},
    }[layout]
    for field, name in names.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(blobs[field])
    acpi = load_acpi(tmp_path)
    assert acpi.as_dict() == {k: hashlib.sha384(v).hexdigest() for k, v in blobs.items()}
    (tmp_path / names["rsdp"]).unlink()
    with pytest.raises(InputError, match="one of rsdp, etc/acpi/rsdp"):
        load_acpi(tmp_path)


def test_every_registered_verb_has_its_module():
    for name, verb in cli.VERBS.items():
        assert callable(importlib.import_module(verb.module).configure), name
    assert cli.main(["measure", "--firmware", "/nonexistent/x.fd"]) == 2


def test_a_verb_loads_only_its_own_module():
    # `tdxattest verify` must not pay for the proxy, the gateway or the measurement code.
    code = (
        "import sys; from tdxattest import cli; cli.build_parser(sys.argv[1]);"
        "print(sorted(v.module for v in cli.VERBS.values() if v.module in sys.modules))"
    )
    for verb, loaded in (("verify", ["tdxattest.cli.verify"]), ("--help", [])):
        out = subprocess.run([sys.executable, "-c", code, verb], cwd=REPO, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == repr(loaded)


def test_library_does_not_import_pulumi():
    code = (
        "import sys, tdxattest.cli, tdxattest.core.measure, tdxattest.core.loaders, components.render.pins;"
        "sys.exit(1 if 'pulumi' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
