"""`python -m components firmware fetch`: put the pinned TD firmware (TDVF/OVMF) into the artifact
directory, from the exact Debian package the TD boot manifest names (`firmware.debian`).

    python -m components firmware fetch [--artifact-dir DIR] [--mirror URL] [--firmware-dir DIR]

For each manifest in firmware/td/ whose firmware has a `debian` pin: a file already in place that
matches its pin is kept; otherwise `<mirror>/pool/main/.../<package>_<version>_<arch>.deb` is
downloaded (bounded), its `member` extracted with dpkg-deb, checked against the pin's size, sha256
and sha384 (components.catalog.artifacts.verified), and only then moved into place. Prints one JSON
line per file: {"file", "status": "present" | "fetched", "sha256"}. Exit 0 when every pinned
firmware file is in place, 1 when one could not be had (the message names the manifest, the URL
and the manual fallback), 2 for unusable input.

The mirror: --mirror, else $TDX_VLLM_DEBIAN_MIRROR, else the first `.../debian` URI of this
machine's apt sources (as tools/build-guest-image.sh finds it). Debian keeps a stable release's
superseded point-release packages in the pool only for a while; a snapshot archive URL as --mirror
fetches an old pin.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from components.catalog.artifacts import default_artifact_dir, verified
from components.catalog.pinfile import CatalogError
from components.catalog.td_manifest import FIRMWARE_DIR, BootArtifact, BootManifest, load_boot_manifest

MIRROR_ENV = "TDX_VLLM_DEBIAN_MIRROR"
MAX_DEB_BYTES = 256 << 20
HTTP_TIMEOUT = 60
APT_SOURCES = ("/etc/apt/sources.list", "/etc/apt/sources.list.d/*.list", "/etc/apt/sources.list.d/*.sources")
_URI = re.compile(r"(?:https?|file)://\S+")


def apt_mirror(patterns: tuple[str, ...] = APT_SOURCES) -> str | None:
    """The first `.../debian` URI in the apt sources (one-line `deb` and deb822 `URIs:` lines)."""
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            try:
                lines = Path(path).read_text(errors="replace").splitlines()
            except OSError:
                continue
            for line in lines:
                stripped = line.strip()
                if not (stripped.startswith("deb ") or stripped.startswith("deb\t") or stripped.startswith("URIs:")):
                    continue
                for uri in _URI.findall(stripped):
                    uri = uri.rstrip("/")
                    if uri.endswith("/debian"):
                        return uri
    return None


def manual_fallback(artifact: BootArtifact, target: Path) -> str:
    deb = artifact.debian
    assert deb is not None
    return (
        f"by hand: get Debian package {deb.package}={deb.version} ({deb.arch}; any mirror's {deb.pool_path}), "
        f"extract {deb.member} (`dpkg-deb -x` or `ar x` + tar) to {target}; its sha256 must be {artifact.sha256}"
    )


def _download(url: str, dest: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp, open(dest, "wb") as out:
            total = 0
            while chunk := resp.read(1 << 20):
                total += len(chunk)
                if total > MAX_DEB_BYTES:
                    raise CatalogError(f"{url}: more than {MAX_DEB_BYTES} bytes, not a firmware package")
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        raise CatalogError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise CatalogError(f"{url}: {getattr(exc, 'reason', exc)}") from None


def fetch_firmware(boot: BootManifest, artifact_dir: Path, mirror: str | None) -> dict[str, str] | None:
    """Put `boot`'s pinned firmware into `artifact_dir`; its JSON fact, or None without a `debian` pin.
    Raises CatalogError naming the manifest, what failed and the manual fallback."""
    artifact = boot.firmware
    deb = artifact.debian
    if deb is None:
        return None
    target = artifact_dir / artifact.file
    if target.is_file():
        verified(boot, artifact, target)  # a file that is there but wrong is refused, never replaced
        return {"file": str(target), "status": "present", "sha256": artifact.sha256}
    if mirror is None:
        raise CatalogError(
            f"{boot.path}: `firmware.file` {target} is missing and no Debian mirror is known: pass --mirror URL or "
            f"set ${MIRROR_ENV}; {manual_fallback(artifact, target)}"
        )
    url = f"{mirror.rstrip('/')}/{deb.pool_path}"
    with tempfile.TemporaryDirectory(prefix="tdx-vllm-firmware-") as tmp:
        package = Path(tmp) / "package.deb"
        try:
            _download(url, package)
        except CatalogError as exc:
            raise CatalogError(f"{boot.path}: `firmware.debian`: {exc}; {manual_fallback(artifact, target)}") from None
        tree = Path(tmp) / "tree"
        done = subprocess.run(
            ["dpkg-deb", "-x", str(package), str(tree)], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise CatalogError(
                f"{boot.path}: `firmware.debian`: {url} is not a Debian package dpkg-deb can unpack "
                f"({done.stderr.strip()[:200]}); {manual_fallback(artifact, target)}"
            )
        member = tree / deb.member
        if not member.is_file():
            raise CatalogError(f"{boot.path}: `firmware.debian.member`: {deb.member} is not in {url}")
        verified(boot, artifact, member)  # the pin decides, not the download: size, sha256, sha384
        artifact_dir.mkdir(parents=True, exist_ok=True)
        staging = artifact_dir / f".{artifact.file}.part"
        staging.write_bytes(member.read_bytes())
        os.replace(staging, target)
    return {"file": str(target), "status": "fetched", "sha256": artifact.sha256, "from": url}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m components firmware", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("fetch",))
    ap.add_argument("--artifact-dir", type=Path, default=None, help="default: $TDX_VLLM_ARTIFACT_DIR or artifacts/")
    ap.add_argument("--firmware-dir", type=Path, default=FIRMWARE_DIR)
    ap.add_argument("--mirror", default=None, help=f"Debian mirror URL (default: ${MIRROR_ENV}, else the apt sources')")
    args = ap.parse_args(argv)
    artifact_dir = args.artifact_dir or default_artifact_dir()
    mirror = args.mirror or os.environ.get(MIRROR_ENV) or apt_mirror()
    seen: set[str] = set()
    try:
        for path in sorted((args.firmware_dir / "td").glob("*.yaml")):
            boot = load_boot_manifest(path)
            if boot.firmware.file in seen:
                continue  # a derived manifest (base:) pins the same firmware
            fact = fetch_firmware(boot, artifact_dir, mirror)
            if fact is not None:
                seen.add(boot.firmware.file)
                print(json.dumps(fact))
    except CatalogError as exc:
        print(f"firmware: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
