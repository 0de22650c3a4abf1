"""`components.render.pins.expected_pins`: the stack's `pins` output from a TD boot manifest."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from components.catalog.pinfile import CatalogError
from components.render.pins import expected_pins
from tdxattest.core import events as ev
from tdxattest.core.authenticode import authenticode_digest
from tdxattest.core.bzimage import qemu_patch_kernel
from tdxattest.core.rtmr import replay
from tests.support.builders import make_bzimage
from tests.support.paths import ARTIFACTS
from tests.support.stacks import DEFAULT_MANIFEST

FIXTURE_FW_DIR = ARTIFACTS
TRIXIE = "ovmf-debian13-trixie-2025.02-8-deb13u1.fd"
COMPUTED = FIXTURE_FW_DIR / "computed-debian-ovmf.json"

# oasis' published ACPI blob digests for 1024 MiB / 1 vCPU; with the trixie firmware at 1 GiB they
# complete the RTMR0 of dstack's hardware CCEL sample (274c2344...).
ACPI_1G_1CPU = {
    "tableLoader": "68cd79315e70aecd4afe7c1b23a5ed7b3b8e51a477e1739f111b3156def86bbc56ebf239dcd4591bc7a9fff90023f481",
    "rsdp": "6bc203b3843388cc4918459c3f5c6d1300a796fb594781b7ecfaa3ae7456975f095bfcc1156c9f2d25e8b8bc1b520f66",
    "tables": "444cf35d277a7b6049faf4ff23165e256e716eaad4650aeef6afae8e2dca3359b40c1b2eb997c5568f956616310c9147",
}
DSTACK_CCEL_RTMR0 = "274c2344116db7c663470693b5ba62b8621eac28cb41d2f816ddf188f9f423f900a1c44d32386fd3c993dc814e62af9d"


def manifest() -> dict:
    return yaml.safe_load(DEFAULT_MANIFEST.read_text())


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "td.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def pin_file(path: Path, **extra) -> dict:
    data = path.read_bytes()
    return {
        "name": path.name,
        "version": "test",
        "source": "built by the test",
        "file": path.name,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "sha384": hashlib.sha384(data).hexdigest(),
        **extra,
    }


def test_real_manifest_pins_mrtd_and_explains_the_rest():
    # The firmware fixture is here, the guest image's files are not: MRTD is computed, and every
    # register that needs a missing file says which one (a dev preview on a machine without them).
    fixture = next(f for f in json.loads(COMPUTED.read_text())["files"] if f["fixture"].endswith(TRIXIE))
    pins = expected_pins(DEFAULT_MANIFEST, FIXTURE_FW_DIR, require_artifacts=False).to_json()
    kernel_file = manifest()["kernel"]["file"]
    assert pins["mrtd"] == fixture["mrtd_single_pass"]
    assert pins["mrtdCandidates"] == {"single": fixture["mrtd_single_pass"], "twoPass": fixture["mrtd_two_pass"]}
    assert pins["pageAddOrder"] == "single"
    assert pins["rtmr0"] is None and pins["rtmr1"] is None and pins["rtmr2"] is None and pins["rtmr3"] is None
    assert pins["reasons"]["rtmr3"] == "workload manifest not pinned yet"
    assert pins["reasons"]["rtmr0"].startswith("acpi: ")
    assert pins["reasons"]["rtmr1"] == f"kernel: artifact {kernel_file} not found in {FIXTURE_FW_DIR}"
    assert pins["reasons"]["rtmr2"].startswith("initrd: artifact tdx-vllm-guest-prod-initrd-")
    assert "mrtd" not in pins["reasons"]
    assert pins["tdAttributes"] == "0000001000000000"
    fw = pins["artifacts"]["firmware"]
    assert fw["sha256"] == fixture["sha256"] and fw["sha384"] == fixture["sha384"] and fw["version"]
    assert pins["artifacts"]["cmdline"] == manifest()["cmdline"]["value"]
    # the TD HOB and CFV events are known even though RTMR0 is not
    first = pins["events"]["rtmr0"][:2]
    assert first[0]["digest"] == fixture["td_hob_sha384_by_ram_mib"]["65536"]
    assert first[1]["digest"] == fixture["cfv_sha384"]
    assert json.loads(json.dumps(pins)) == pins  # plain JSON for pulumi.export
    # outside dev a missing file is an error that names it
    with pytest.raises(CatalogError, match=r"`kernel\.file`: \S*" + re.escape(kernel_file) + " not found"):
        expected_pins(DEFAULT_MANIFEST, FIXTURE_FW_DIR)
    # ... except the guest image's for a stack that launches no TD, which is not looked for
    host_only = expected_pins(DEFAULT_MANIFEST, FIXTURE_FW_DIR, require_guest=False).to_json()
    assert host_only["mrtd"] == pins["mrtd"] and host_only["rtmr1"] is None and host_only["rtmr2"] is None
    assert host_only["reasons"]["rtmr1"] == (
        "kernel: this stack launches no TD (no workload): the guest image is not measured"
    )


def test_a_missing_firmware_is_an_error_even_without_a_workload(tmp_path):
    with pytest.raises(CatalogError, match=r"`firmware\.file`: .* not found"):
        expected_pins(DEFAULT_MANIFEST, tmp_path, require_guest=False)


def test_manifest_matches_the_fixture_it_names():
    data = manifest()
    fixture = next(f for f in json.loads(COMPUTED.read_text())["files"] if f["fixture"].endswith(TRIXIE))
    assert data["firmware"]["file"] == TRIXIE
    assert (data["firmware"]["sha256"], data["firmware"]["sha384"], data["firmware"]["size"]) == (
        fixture["sha256"],
        fixture["sha384"],
        fixture["size"],
    )
    assert data["firmware"]["version"] == fixture["debian_version"]


@pytest.mark.parametrize("field", ["sha256", "sha384"])
def test_digest_mismatch_is_refused_with_both_values(tmp_path, field):
    data = manifest()
    real = data["firmware"][field]
    data["firmware"][field] = ("0" if real[0] != "0" else "1") + real[1:]
    with pytest.raises(CatalogError) as err:
        expected_pins(write(tmp_path, data), FIXTURE_FW_DIR)
    msg = str(err.value)
    assert f"`firmware.{field}` pins {data['firmware'][field]}" in msg and f"has {real}" in msg


def test_missing_artifact(tmp_path):
    with pytest.raises(CatalogError, match=r"`firmware.file`: .* not found; put the pinned file there"):
        expected_pins(DEFAULT_MANIFEST, tmp_path)
    pins = expected_pins(DEFAULT_MANIFEST, tmp_path, require_artifacts=False).to_json()
    assert pins["mrtd"] is None and "not found in" in pins["reasons"]["mrtd"]
    assert pins["reasons"]["rtmr0"].startswith("firmware: artifact")


def test_artifact_dir_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TDX_VLLM_ARTIFACT_DIR", str(tmp_path))
    with pytest.raises(CatalogError, match=str(tmp_path)):
        expected_pins(DEFAULT_MANIFEST)


def test_fully_pinned_manifest(tmp_path):
    """Firmware + kernel + initrd + cmdline + ACPI digests: RTMR0-2 are computed; RTMR0 equals the
    one a real TD reported (dstack's CCEL sample, 1 GiB / 1 vCPU)."""
    art = tmp_path / "artifacts"
    art.mkdir()
    os.symlink(FIXTURE_FW_DIR / TRIXIE, art / TRIXIE)
    kernel = art / "bzImage"
    kernel.write_bytes(make_bzimage(size=0x6000))
    initrd = art / "initrd.img"
    initrd.write_bytes(b"initramfs" * 1000)
    cmdline = "console=ttyS0 root=/dev/vda ro"
    data = manifest()
    data["vm"] = {"vcpus": 1, "memoryMiB": 1024}
    data["kernel"] = pin_file(kernel)
    data["initrd"] = pin_file(initrd)
    data["cmdline"] = {"value": cmdline}
    data["acpi"] = {"digests": ACPI_1G_1CPU, "source": "oasis test vectors, 1024 MiB / 1 vCPU"}
    pins = expected_pins(write(tmp_path, data), art).to_json()

    assert pins["rtmr0"] == DSTACK_CCEL_RTMR0
    patched = qemu_patch_kernel(
        kernel.read_bytes(), ram_bytes=1024 << 20, initrd_size=initrd.stat().st_size, cmdline=cmdline
    )
    kernel_digest = authenticode_digest(patched)
    assert (
        pins["rtmr1"]
        == replay(
            [
                kernel_digest,
                ev.efi_action(ev.CALLING_EFI_APPLICATION),
                ev.SEPARATOR,
                ev.efi_action(ev.EXIT_BOOT_SERVICES_INVOCATION),
                ev.efi_action(ev.EXIT_BOOT_SERVICES_SUCCESS),
            ]
        ).hex()
    )
    assert (
        pins["rtmr2"]
        == replay([ev.cmdline_digest(cmdline + " initrd=initrd"), hashlib.sha384(initrd.read_bytes()).digest()]).hex()
    )
    assert pins["rtmr3"] is None and set(pins["reasons"]) == {"rtmr3"}
    assert pins["artifacts"]["kernel"]["authenticodeSha384Patched"] == kernel_digest.hex()
    assert pins["artifacts"]["acpi"]["tables"] == ACPI_1G_1CPU["tables"]
    # A stack that launches no TD: the same pins on a machine with or without a guest image build
    # (promotion compares them), so the kernel and initrd are not measured even when present.
    host_only = expected_pins(write(tmp_path, data), art, require_guest=False).to_json()
    assert host_only["mrtd"] == pins["mrtd"] and host_only["rtmr0"] == pins["rtmr0"]
    assert host_only["rtmr1"] is None and host_only["rtmr2"] is None
    kernel.unlink()
    initrd.unlink()
    assert expected_pins(write(tmp_path, data), art, require_guest=False).to_json() == host_only


def test_qemu_patch_depends_on_initrd_and_ram():
    k = make_bzimage()
    a = qemu_patch_kernel(k, ram_bytes=1 << 30, initrd_size=5000)
    assert a[0x210] == 0xB0 and a[0x211] & 0x80 and int.from_bytes(a[0x228:0x22C], "little") == 0x20000
    assert int.from_bytes(a[0x224:0x226], "little") == 0xFE00
    # initrd_max = 1 GiB - 0x28000 (ACPI) - 1, the image page-aligned below it
    assert int.from_bytes(a[0x218:0x21C], "little") == ((1 << 30) - 0x28000 - 1 - 5000) & ~0xFFF
    assert int.from_bytes(a[0x21C:0x220], "little") == 5000
    assert a[0x260:] == k[0x260:]
    # RAM >= 2.75 GiB: 2 GiB below 4 GiB, so the same header for 4 and 64 GiB
    assert (
        qemu_patch_kernel(k, ram_bytes=4 << 30, initrd_size=5000)
        == qemu_patch_kernel(k, ram_bytes=64 << 30, initrd_size=5000)
        != a
    )
    # without XLF_CAN_BE_LOADED_ABOVE_4G (xloadflags bit 1) the header's initrd_addr_max applies
    low = make_bzimage(xloadflags=0x7D, initrd_addr_max=0x37FFFFFF)
    assert (
        int.from_bytes(qemu_patch_kernel(low, ram_bytes=2 << 30, initrd_size=5000)[0x218:0x21C], "little")
        == (0x37FFFFFF - 5000) & ~0xFFF
    )
    high = make_bzimage(xloadflags=0x02, initrd_addr_max=0x37FFFFFF)
    assert (
        int.from_bytes(qemu_patch_kernel(high, ram_bytes=2 << 30, initrd_size=5000)[0x218:0x21C], "little")
        == ((2 << 30) - 0x28000 - 1 - 5000) & ~0xFFF
    )
    # vga= on the command line sets vid_mode
    assert qemu_patch_kernel(k, ram_bytes=1 << 30, cmdline="vga=ask")[0x1FA:0x1FC] == b"\xfd\xff"
    assert qemu_patch_kernel(k, ram_bytes=1 << 30, cmdline="x vga=0x317")[0x1FA:0x1FC] == b"\x17\x03"


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d["firmware"].update(pageAddOrder="three-pass"), "`firmware.pageAddOrder` must be one of"),
        (lambda d: d["td"].update(attributes="0100001000000000"), "DEBUG (bit 0) set"),
        (lambda d: d["td"].update(attributes="0000000000000000"), "lacks SEPT_VE_DISABLE"),
        (lambda d: d.update(kernel=None), "`kernel` must be a mapping"),
        (lambda d: d.update(kernel={"file": None}), "`kernel.reason` is required"),
        (lambda d: d.update(colour="blue"), "unknown key `colour`"),
        (lambda d: d["firmware"].update(sha256="ABC"), "`firmware.sha256` must be a lowercase hex"),
        (lambda d: d["firmware"].update(file="../etc/passwd"), "relative to the artifact directory"),
        (lambda d: d["vm"].update(memoryMiB=0), "`vm.memoryMiB` must be a positive integer"),
        (lambda d: d.update(acpi={"digests": {"rsdp": "00"}, "source": "x"}), "`acpi.digests` must map exactly"),
        (lambda d: d.update(schema=2), "`schema` must be 1"),
        (lambda d: d.update(gpuDriver={"version": "latest", "cuda": "12.4"}), "`gpuDriver.version` must be the driver"),
        (lambda d: d.update(gpuDriver={"version": "550.163.01", "cuda": 12.4}), "`gpuDriver.cuda` must be the newest"),
        (
            lambda d: d.update(gpuDriver={"version": "550.163.01", "cuda": "12.4", "packages": ["libcuda1"]}),
            "`gpuDriver.packages` must list `name=version`",
        ),
        (
            lambda d: d.update(gpuDriver={"version": "550.163.01", "cuda": "12.4", "modules": {"nvidia.ko": "x"}}),
            "`gpuDriver.modules` must map module files",
        ),
        (lambda d: d.update(gpuDriver={"version": "550.163.01", "cuda": "12.4", "x": 1}), "unknown key `gpuDriver.x`"),
    ],
)
def test_manifest_errors(tmp_path, edit, message):
    data = manifest()
    edit(data)
    with pytest.raises(CatalogError) as err:
        expected_pins(write(tmp_path, data), tmp_path, require_artifacts=False)
    assert message in str(err.value) and str(tmp_path / "td.yaml") in str(err.value)


def test_initrd_not_used(tmp_path):
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(make_bzimage())
    data = manifest()
    data["kernel"] = pin_file(kernel)
    data["initrd"] = {"used": False}
    data["cmdline"] = {"value": ""}
    pins = expected_pins(write(tmp_path, data), tmp_path, require_artifacts=False).to_json()
    assert pins["rtmr2"] == replay([ev.cmdline_digest("")]).hex()
    assert pins["rtmr1"] is not None and pins["artifacts"]["initrd"] == {"used": False}
    assert pins["mrtd"] is None  # the firmware is not in tmp_path


def test_kernel_not_pe_is_refused(tmp_path):
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF" + bytes(0x400))
    data = manifest()
    data["kernel"] = pin_file(kernel)
    data["initrd"] = {"used": False}
    data["cmdline"] = {"value": "quiet"}
    with pytest.raises(CatalogError, match=r"`kernel.file`: .*vmlinux: offset 0 \(0x0\): expected 'MZ'"):
        expected_pins(write(tmp_path, data), tmp_path, require_artifacts=False)


def test_a_key_given_twice_is_refused(tmp_path):
    # YAML keeps the last of two equal keys; a stale pin below a new one would silently win.
    text = DEFAULT_MANIFEST.read_text() + "\nkernel: {file: other, sha256: '" + "0" * 64 + "'}\n"
    path = tmp_path / "td.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError, match="not valid YAML: duplicate key 'kernel'"):
        expected_pins(path, tmp_path, require_artifacts=False)


def test_the_pins_output_leaves_the_event_log_to_the_pins_verb(capsys) -> None:
    # issue 16: ~150 lines of expected events in every preview buried the plan; they stay one
    # command away, and the output keeps every register, reason and artifact.
    import json

    from components.config.stack import load_stack_file
    from components.render.stack_pins import main, pins_output, stack_measurements
    from tests.support.paths import REPO

    stack_file = REPO / "stacks" / "Pulumi.staging.yaml"
    pins = stack_measurements(load_stack_file(stack_file)).pins
    exported = pins_output(pins)
    assert "events" not in exported and {k: v for k, v in pins.to_json().items() if k != "events"} == exported
    assert (
        len(json.dumps(pins.to_json(), indent=2).splitlines()) - len(json.dumps(exported, indent=2).splitlines()) > 100
    )
    # The verb validates the file as `check` does: the template's placeholders are named, not printed over.
    assert main([str(stack_file)]) == 1
    assert "is a placeholder" in capsys.readouterr().err
    dev = REPO / "stacks" / "Pulumi.dev.yaml"
    assert main([str(dev)]) == 0
    assert json.loads(capsys.readouterr().out) == pins_output(stack_measurements(load_stack_file(dev)).pins)
    assert main([str(dev), "--events"]) == 0
    assert set(json.loads(capsys.readouterr().out)["events"]) == {"rtmr0", "rtmr1", "rtmr2"}  # no workload: no RTMR3
