"""The TD boot artifact files a manifest pins (TDVF, kernel, initrd), found in the artifact directory
and checked against the manifest's size, sha256 AND sha384 before anything reads them. A file that
differs from its pin is refused with both values; nothing is computed from it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from components.catalog.pinfile import CatalogError
from components.catalog.td_manifest import BootArtifact, BootManifest
from components.paths import REPO_ROOT
from tdxattest.core.errors import InputError
from tdxattest.core.files import FileHashes, hash_bytes, read_bytes

ARTIFACT_DIR_ENV = "TDX_VLLM_ARTIFACT_DIR"
DEFAULT_ARTIFACT_DIR = REPO_ROOT / "artifacts"
NO_GUEST_REASON = "this stack launches no TD (no workload): the guest image is not measured"


def default_artifact_dir() -> Path:
    """`$TDX_VLLM_ARTIFACT_DIR`, else `artifacts/` in the repository."""
    env = os.environ.get(ARTIFACT_DIR_ENV)
    return Path(env) if env else DEFAULT_ARTIFACT_DIR


@dataclass(frozen=True)
class ArtifactData:
    """A pinned file whose bytes matched every digest of its pin."""

    artifact: BootArtifact
    path: Path
    data: bytes = field(repr=False)
    hashes: FileHashes


@dataclass(frozen=True)
class MeasuredFiles:
    """The files the measurements are computed from; a pinned file that is not here (allowed only
    when not required) has its reason in `reasons`."""

    firmware: ArtifactData | None
    kernel: ArtifactData | None
    initrd: ArtifactData | None
    reasons: Mapping[str, str]


def verified(boot: BootManifest, artifact: BootArtifact, path: Path) -> ArtifactData:
    """`path`'s bytes, if they are the pinned file. Raises CatalogError naming the manifest key."""
    try:
        data = read_bytes(path)
    except InputError as exc:
        raise CatalogError(f"{boot.path}: `{artifact.role}.file`: {exc}") from None
    hashes = hash_bytes(data)
    for name, want, have in (("sha256", artifact.sha256, hashes.sha256), ("sha384", artifact.sha384, hashes.sha384)):
        if want is not None and want != have:
            raise CatalogError(
                f"{boot.path}: `{artifact.role}.{name}` pins {want}, but {path} has {have}: refusing to compute "
                "measurements from an artifact that is not the pinned one"
            )
    if artifact.size is not None and artifact.size != hashes.size:
        raise CatalogError(
            f"{boot.path}: `{artifact.role}.size` pins {artifact.size} bytes, but {path} has {hashes.size}"
        )
    return ArtifactData(artifact, path, data, hashes)


def measured_files(
    boot: BootManifest, artifact_dir: Path | None = None, *, require_artifacts: bool = True, require_guest: bool = True
) -> MeasuredFiles:
    """Find and verify the manifest's firmware, kernel and initrd under `artifact_dir` (default:
    `default_artifact_dir()`). With `require_artifacts=False` a missing file is not an error (its
    registers are then null with the reason: a dev preview on a machine without the artifacts); a
    file that is present but differs from its pin is always refused. With `require_guest=False` (a
    stack that launches no TD) the kernel and initrd are not looked for at all, so the pins do not
    depend on whether this machine happens to hold a guest image build."""
    root = artifact_dir if artifact_dir is not None else default_artifact_dir()
    reasons: dict[str, str] = {}
    found: dict[str, ArtifactData | None] = {}
    for artifact in (boot.firmware, boot.kernel, boot.initrd):
        if artifact is None:
            continue
        found[artifact.role] = None
        if not require_guest and artifact.role != "firmware":
            reasons[artifact.role] = NO_GUEST_REASON
            continue
        path = root / artifact.file
        if path.is_file():
            found[artifact.role] = verified(boot, artifact, path)
        elif require_artifacts:
            raise CatalogError(
                f"{boot.path}: `{artifact.role}.file`: {path} not found; put the pinned file there "
                f"({artifact.source}) or point ${ARTIFACT_DIR_ENV} at the directory that holds it"
            )
        else:
            reasons[artifact.role] = f"artifact {artifact.file} not found in {root}"
    return MeasuredFiles(found.get("firmware"), found.get("kernel"), found.get("initrd"), reasons)
