"""Fetch every file the workload manifest lists into the model directory, each hashed while it
streams and kept only when its SHA-256 is the pinned one. The manifest's hashes are what the TD's
measurements vouch for, so the transport needs no trust of its own: a file is written to
`<name>.part` and renamed into place only on a match; a file already in place with the right hash
is kept (a restart does not download again).

Standard library only: the guest agent imports these functions (guest_agent/model.py), and the
Kubernetes target runs this file as its init container (`python3 -c <this file> SOURCE MODEL_ID
REVISION DIR`, the files as JSON `{path: sha256}` in $TDX_VLLM_MODEL_FILES), printing one JSON line
per verified file; a refused file ends it with the reason and a non-zero status.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

CHUNK = 1 << 20
TIMEOUT_S = 60.0
FILES_ENV = "TDX_VLLM_MODEL_FILES"


# Filesystems whose bytes the host can change after they were checked: a Kata emptyDir in the
# `shared-fs` mode is a host directory shared over virtio-fs. The model must be on a volume inside
# the TD: `block-encrypted` (LUKS2 with dm-integrity, key made in the TD) or memory (tmpfs).
HOST_SHARED_FS = frozenset({"virtiofs", "9p", "fuse", "fuse.virtiofsd", "nfs", "nfs4", "cifs", "smb3"})


class FetchError(Exception):
    """A model file that could not be fetched or is not the pinned one; the message says which."""


def mount_of(path: str, mountinfo: str) -> tuple[str, str, str]:
    """(mount point, filesystem type, source) of the mount that holds `path`, from the text of
    /proc/self/mountinfo (proc(5): fields up to " - ", then type and source). Pure."""
    best = ("", "", "")
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(rest) < 2:
            continue
        point = fields[4].replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, rest[0], rest[1])
    return best


def check_volume(path: str, mountinfo: str) -> None:
    """Refuse a model directory on a filesystem the host can write (see HOST_SHARED_FS)."""
    point, fstype, source = mount_of(path, mountinfo)
    if fstype in HOST_SHARED_FS or fstype.startswith("fuse."):
        raise FetchError(
            f"model directory {path}: on {fstype} ({source} at {point}), which the host shares into the TD and can "
            'change after the check; fix: use Kata\'s emptydir_mode = "block-encrypted" for this runtime class '
            "(the CoCo default), or an emptyDir with medium: Memory"
        )


def file_url(source: str, model_id: str, revision: str, path: str) -> str:
    """`<source>/<path>`, with {id} and {revision} in the source expanded. Pure."""
    base = source.replace("{id}", model_id).replace("{revision}", revision)
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
        raise FetchError(f"model file {name}: a download from {url}, failed: {exc}") from None
    seen = h.hexdigest()
    if seen != expected:
        part.unlink(missing_ok=True)
        raise FetchError(
            f"model file {name}: sha256 {expected}, seen {seen} (from {url}); the source serves other bytes "
            "than the manifest pins: fix model.source or the manifest"
        )
    os.replace(part, dest)


def fetch_files(
    files: Mapping[str, str],
    source: str,
    model_id: str,
    revision: str,
    model_dir: Path,
    verified: Callable[[str], None] = lambda path: None,
) -> tuple[list[str], list[str]]:
    """Every file of `files` ({path: sha256}) in `model_dir`, in path order: (fetched, kept).
    `verified(path)` is called as each file is in place."""
    fetched, kept = [], []
    for path, expected in sorted(files.items()):
        dest = model_dir / path
        if dest.is_file() and sha256_file(dest) == expected:
            kept.append(path)
        else:
            dest.unlink(missing_ok=True)
            fetch_file(file_url(source, model_id, revision, path), dest, expected, name=path)
            fetched.append(path)
        verified(path)
    return fetched, kept


def main(argv: list[str]) -> int:
    source, model_id, revision, root = argv
    files = json.loads(os.environ[FILES_ENV])
    try:
        check_volume(root, Path("/proc/self/mountinfo").read_text())
        fetch_files(files, source, model_id, revision, Path(root),
                    lambda path: print(json.dumps({"verified": path, "sha256": files[path]}), flush=True))  # fmt: skip
    except FetchError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(json.dumps({"model": model_id, "revision": revision, "files": len(files)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
