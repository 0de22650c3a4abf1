"""`components.guest_image`: pinning a built guest image in firmware/td/ and checking a build against it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.catalog.guest_image import check, differences, main, pin, pin_sections, rewrite_sections
from components.catalog.pinfile import CatalogError
from components.catalog.td_manifest import load_boot_manifest, read_manifest
from tests.support.paths import REPO

ROOT_HASH = "ab" * 32


GPU_DRIVER = {
    "version": "550.163.01",
    "cuda": "12.4",
    "packages": ["libcuda1=550.163.01-4~bpo13+1", "nvidia-modprobe=570.133.07-1"],
    "modules": {"nvidia.ko": "11" * 32, "nvidia-uvm.ko": "22" * 32},
}


def fake_build(dest: Path, stack: str, *, salt: bytes = b"", gpu_driver: dict | None = None) -> Path:
    """A directory shaped like one stack of tools/build-guest-image.sh --out (small stand-in files)."""
    d = dest / stack
    d.mkdir(parents=True)
    files: dict[str, dict[str, Any]] = {}
    for name in ("vmlinuz", "initrd.img", "rootfs.verity.img"):
        data = f"{stack} {name}".encode() + salt
        (d / name).write_bytes(data)
        files[name] = {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "sha384": hashlib.sha384(data).hexdigest(),
        }
    cmdline = f"console=ttyS0 tdx_vllm.roothash={ROOT_HASH} stack={stack}"
    (d / "cmdline.txt").write_text(cmdline)

    def entry(key: str, name: str) -> dict:
        return {
            "name": name,
            "version": f"{stack}-test",
            "source": "fake build",
            "file": f"{stack}-{files[name]['sha256'][:12]}-{name}",
            **files[name],
        }

    manifest = {
        "schema": 1,
        "stack": stack,
        "files": files,
        "firmwareTd": {
            "kernel": entry("kernel", "vmlinuz"),
            "initrd": entry("initrd", "initrd.img"),
            "cmdline": {"value": cmdline},
            "rootfs": entry("rootfs", "rootfs.verity.img"),
            "gpuDriver": gpu_driver or GPU_DRIVER,
        },
    }
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


@pytest.fixture
def fw(tmp_path: Path) -> Path:
    dest = tmp_path / "fw"
    shutil.copytree(REPO / "firmware", dest)
    (dest / "td" / "ovmf-debian-trixie-dev.yaml").unlink()
    return dest


MANIFEST_TEXT = """\
# header comment
schema: 1
firmware:
  file: ovmf.fd
kernel:
  file: null
  reason: not yet
# the initrd: comment kept
initrd:
  file: null
  reason: not yet
acpi:
  digests: null
"""


def test_rewrite_replaces_sections_and_keeps_the_comments():
    out = rewrite_sections(MANIFEST_TEXT, {"kernel": {"file": "k", "sha256": "00"}, "rootfs": {"file": "r"}})
    data = yaml.safe_load(out)
    assert data["kernel"] == {"file": "k", "sha256": "00"} and data["rootfs"] == {"file": "r"}
    assert data["initrd"] == {"file": None, "reason": "not yet"} and data["firmware"] == {"file": "ovmf.fd"}
    assert "# header comment" in out and "# the initrd: comment kept" in out
    assert "reason: not yet\n# the initrd" not in out  # kernel's old lines are gone
    assert rewrite_sections(out, {"kernel": {"file": "k", "sha256": "00"}, "rootfs": {"file": "r"}}) == out


def test_pin_writes_both_manifests_and_copies_the_files(tmp_path, fw):
    build = tmp_path / "build"
    fake_build(build, "prod")
    fake_build(build, "dev")
    art = tmp_path / "artifacts"
    lines = pin(build, fw, art)
    assert [line.split(":")[0] for line in lines] == ["prod", "dev"]
    prod_path, dev_path = fw / "td" / "ovmf-debian-trixie.yaml", fw / "td" / "ovmf-debian-trixie-dev.yaml"
    assert "# TD boot artifacts" in prod_path.read_text()  # the prod manifest's comments survive
    assert yaml.safe_load(dev_path.read_text())["base"] == "ovmf-debian-trixie.yaml"
    for path, stack in ((prod_path, "prod"), (dev_path, "dev")):
        boot = load_boot_manifest(path)
        assert boot.launchable and boot.cmdline.endswith(f"stack={stack}")
        assert boot.gpu_driver is not None and boot.gpu_driver.version == "550.163.01"
        assert boot.gpu_driver.cuda == "12.4" and boot.gpu_driver.modules["nvidia.ko"] == "11" * 32
        for a in boot.artifacts[1:]:  # the firmware is pinned separately
            assert hashlib.sha256((art / a.file).read_bytes()).hexdigest() == a.sha256
    # dev inherits firmware, VM shape and ACPI from prod
    assert read_manifest(dev_path)["firmware"] == read_manifest(prod_path)["firmware"]
    assert check(build, fw) == []
    pin(build, fw, art)  # again: nothing changes
    assert check(build, fw) == []


def test_check_names_every_difference(tmp_path, fw, capsys):
    pinned, rebuilt = tmp_path / "pinned", tmp_path / "rebuilt"
    fake_build(pinned, "prod")
    pin(pinned, fw, tmp_path / "art")
    fake_build(rebuilt, "prod", salt=b"+drift")
    problems = check(rebuilt, fw)
    assert any(p.startswith("prod (ovmf-debian-trixie.yaml): kernel.sha256: pinned ") for p in problems), problems
    assert any(p.startswith("prod (ovmf-debian-trixie.yaml): rootfs.size: pinned ") for p in problems), problems
    assert not any("gpuDriver" in p for p in problems), problems
    assert main(["check", str(rebuilt), "--firmware-dir", str(fw)]) == 1
    err = capsys.readouterr().err
    assert "the build differs from the pinned image" in err and "fix: if the recipe change is intended" in err


def test_differences_on_an_unpinned_manifest():
    built = {k: {"sha256": "00"} for k in ("kernel", "initrd", "rootfs")} | {
        "cmdline": {"value": "x"},
        "gpuDriver": GPU_DRIVER,
    }
    out = differences(built, {"kernel": {"file": None}, "initrd": None, "cmdline": {"value": None}})
    assert out[0] == "kernel.sha256: pinned None, built '00'"
    assert "initrd: pinned None, built '00'" in out and "cmdline.value: pinned None, built 'x'" in out
    assert "rootfs: pinned None, built '00'" in out
    assert "gpuDriver: pinned None, built '550.163.01'" in out


def test_check_names_a_driver_that_drifted(tmp_path, fw):
    # Same image files, another driver build (a module that no longer builds bit for bit, or a
    # package revision): check names each field.
    pinned, rebuilt = tmp_path / "pinned", tmp_path / "rebuilt"
    fake_build(pinned, "prod")
    pin(pinned, fw, tmp_path / "art")
    drifted = {**GPU_DRIVER, "cuda": "12.8", "modules": {**GPU_DRIVER["modules"], "nvidia.ko": "33" * 32}}
    fake_build(rebuilt, "prod", gpu_driver=drifted)
    assert check(rebuilt, fw) == [
        "prod (ovmf-debian-trixie.yaml): gpuDriver.cuda: pinned '12.4', built '12.8'",
        f"prod (ovmf-debian-trixie.yaml): gpuDriver.modules: pinned {GPU_DRIVER['modules']!r}, "
        f"built {drifted['modules']!r}",
    ]


def test_a_build_from_another_script_version_is_refused(tmp_path, fw):
    d = fake_build(tmp_path / "b", "prod")
    doc = json.loads((d / "manifest.json").read_text())
    doc["firmwareTd"]["rootfsFile"] = doc["firmwareTd"].pop("rootfs")["file"]
    (d / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(CatalogError, match="rebuild with this checkout's tools/build-guest-image.sh"):
        pin_sections(doc)
    with pytest.raises(CatalogError, match="no manifest.json here or in prod/ or dev/"):
        check(tmp_path / "nothing", fw)


def test_rewrite_handles_comments_inside_a_section_and_blank_lines():
    text = (
        "schema: 1\nkernel:\n  name: old\n# a column-0 comment inside the section\n  sha256: old\n\n"
        "# about acpi\nacpi:\n  digests: null\n"
    )
    out = rewrite_sections(text, {"kernel": {"name": "new", "sha256": "new"}})
    assert yaml.safe_load(out)["kernel"] == {"name": "new", "sha256": "new"}
    assert "old" not in out and "# about acpi\nacpi:" in out


def test_rewrite_refuses_what_it_cannot_edit_safely():
    with pytest.raises(CatalogError, match="duplicate or quoted section key"):
        rewrite_sections('schema: 1\n"kernel": {file: k}\n', {"kernel": {"file": "new"}})
    with pytest.raises(CatalogError, match="duplicate or quoted section key"):
        rewrite_sections("schema: 1\nkernel: {file: a}\nkernel: {file: b}\n", {"kernel": {"file": "b"}})


def test_pin_refuses_a_stale_build_and_changes_nothing(tmp_path, fw):
    build = tmp_path / "build"
    d = fake_build(build, "prod")
    (d / "initrd.img").write_bytes(b"rebuilt since manifest.json was written")
    before = (fw / "td" / "ovmf-debian-trixie.yaml").read_text()
    with pytest.raises(CatalogError, match="initrd.img: not the file manifest.json records"):
        pin(build, fw, tmp_path / "art")
    assert (fw / "td" / "ovmf-debian-trixie.yaml").read_text() == before
