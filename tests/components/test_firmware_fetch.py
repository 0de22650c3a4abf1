"""`python -m components firmware fetch`: the pinned OVMF comes from its Debian package through a
mirror (here a loopback one serving a .deb built from the very OVMF binary in the fixtures), is
checked against the manifest's digests, and is refused by name when it is wrong or cannot be had."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from components.catalog.firmware_fetch import apt_mirror, main
from components.catalog.td_manifest import FIRMWARE_DIR, load_boot_manifest
from tests.support.loopback_http import LoopbackFileServer
from tests.support.paths import ARTIFACTS

BOOT = load_boot_manifest(FIRMWARE_DIR / "td" / "ovmf-debian-trixie.yaml")
PIN = BOOT.firmware


def build_deb(pool: Path, payload: bytes) -> Path:
    """The pinned package as a real .deb (dpkg-deb --build) at its pool path under `pool`."""
    deb = PIN.debian
    assert deb is not None
    tree = pool.parent / "tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {deb.package}\nVersion: {deb.version}\nArchitecture: {deb.arch}\n"
        "Maintainer: tests <tests@localhost>\nDescription: the pinned firmware, for the fetch tests\n"
    )
    member = tree / deb.member
    member.parent.mkdir(parents=True)
    member.write_bytes(payload)
    out = pool / deb.pool_path
    out.parent.mkdir(parents=True)
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(tree), str(out)], check=True, capture_output=True)
    return out


def fetch(artifacts: Path, *extra: str) -> int:
    return main(["fetch", "--artifact-dir", str(artifacts), *extra])


def test_the_pinned_firmware_is_fetched_checked_and_kept(tmp_path: Path, capsys) -> None:
    build_deb(tmp_path / "mirror", (ARTIFACTS / PIN.file).read_bytes())
    with LoopbackFileServer(tmp_path / "mirror") as mirror:
        assert fetch(tmp_path / "artifacts", "--mirror", mirror.url) == 0
        fact = json.loads(capsys.readouterr().out)
        assert fact["status"] == "fetched" and fact["sha256"] == PIN.sha256
        assert (tmp_path / "artifacts" / PIN.file).read_bytes() == (ARTIFACTS / PIN.file).read_bytes()
        assert fetch(tmp_path / "artifacts", "--mirror", mirror.url) == 0  # in place: not fetched again
        assert json.loads(capsys.readouterr().out)["status"] == "present"
        assert len(mirror.requests) == 1 and mirror.requests[0].endswith(f"{PIN.debian.version}_all.deb")  # type: ignore[union-attr]


def test_a_package_with_other_bytes_is_refused_and_nothing_is_written(tmp_path: Path, capsys) -> None:
    other = bytearray((ARTIFACTS / PIN.file).read_bytes())
    other[4096] ^= 1
    build_deb(tmp_path / "mirror", bytes(other))
    with LoopbackFileServer(tmp_path / "mirror") as mirror:
        assert fetch(tmp_path / "artifacts", "--mirror", mirror.url) == 1
    err = capsys.readouterr().err
    assert "`firmware.sha256` pins 14954040" in err and "refusing" in err
    assert not (tmp_path / "artifacts" / PIN.file).exists()


def test_a_missing_package_names_the_url_and_the_manual_fallback(tmp_path: Path, capsys) -> None:
    (tmp_path / "mirror").mkdir()
    with LoopbackFileServer(tmp_path / "mirror") as mirror:
        assert fetch(tmp_path / "artifacts", "--mirror", mirror.url) == 1
    err = capsys.readouterr().err
    assert "HTTP 404" in err and "pool/main/e/edk2/ovmf_2025.02-8+deb13u1_all.deb" in err
    assert "by hand: get Debian package ovmf=2025.02-8+deb13u1" in err and PIN.sha256 in err


def test_a_wrong_file_in_place_is_refused_not_replaced(tmp_path: Path, capsys) -> None:
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / PIN.file).write_bytes(b"not the firmware")
    assert fetch(artifacts, "--mirror", "http://127.0.0.1:9/") == 1  # never contacted
    assert "`firmware.sha256` pins" in capsys.readouterr().err
    assert (artifacts / PIN.file).read_bytes() == b"not the firmware"


def test_without_a_mirror_the_fix_is_named(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TDX_VLLM_DEBIAN_MIRROR", raising=False)
    monkeypatch.setattr("components.catalog.firmware_fetch.apt_mirror", lambda: None)
    assert fetch(tmp_path / "artifacts") == 1
    err = capsys.readouterr().err
    assert "no Debian mirror is known: pass --mirror URL or set $TDX_VLLM_DEBIAN_MIRROR" in err


def test_the_mirror_is_read_from_the_apt_sources(tmp_path: Path) -> None:
    (tmp_path / "a.list").write_text("# comment\ndeb http://mirror.example/ubuntu noble main\n")
    (tmp_path / "b.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\n\nTypes: deb\nURIs: http://mirror.example/debian/\n"
    )
    assert apt_mirror((str(tmp_path / "*.list"), str(tmp_path / "*.sources"))) == "http://mirror.example/debian"
    assert apt_mirror((str(tmp_path / "*.list"),)) is None
