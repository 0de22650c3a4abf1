"""Model fetch: every file the manifest lists, hashed while it streams, kept only when it matches.

The manifest's SHA-256 per file is what RTMR3 vouches for, so the transport needs no trust of its
own: a file is written to `<name>.part`, hashed on the way, and renamed into place only on a match.
A file already in place with the right hash is kept (an agent restart does not download again).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tdxattest.core.workload import WorkloadManifest

from .system import Refused

CHUNK = 1 << 20
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ModelResult:
    dir: Path
    fetched: tuple[str, ...]
    kept: tuple[str, ...]


def file_url(source: str, manifest: WorkloadManifest, path: str) -> str:
    """`<source>/<path>`, with {id} and {revision} in the source expanded. Pure."""
    base = source.replace("{id}", manifest.model_id).replace("{revision}", manifest.model_revision)
    return base.rstrip("/") + "/" + urllib.parse.quote(path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fetch_file(url: str, dest: Path, expected: str, name: str | None = None, timeout_s: float = TIMEOUT_S) -> None:
    name = name or dest.name
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp, open(part, "wb") as out:
            while chunk := resp.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        raise Refused("model", f"model file {name}: a download from {url}, failed: {exc}") from None
    seen = h.hexdigest()
    if seen != expected:
        part.unlink(missing_ok=True)
        raise Refused(
            "model",
            f"model file {name}: sha256 {expected}, seen {seen} (from {url}); the source "
            "serves other bytes than the manifest pins: fix model.source or the manifest",
        )
    os.replace(part, dest)


def fetch_model(manifest: WorkloadManifest, source: str, model_dir: Path) -> ModelResult:
    fetched, kept = [], []
    for path, expected in manifest.model_files:
        dest = model_dir / path
        if dest.is_file() and sha256_file(dest) == expected:
            kept.append(path)
            continue
        dest.unlink(missing_ok=True)
        fetch_file(file_url(source, manifest, path), dest, expected, name=path)
        fetched.append(path)
    return ModelResult(model_dir, tuple(fetched), tuple(kept))
