"""Reading files for the pure parsers: every `InputError` names the file. No parser imports here,
so a caller that only reads bytes (a root CA, a quote) pays for nothing else."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tdxattest.core.errors import InputError

T = TypeVar("T")
CHUNK = 1 << 20


@dataclass(frozen=True)
class FileHashes:
    size: int
    sha256: str
    sha384: str


def read_bytes(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except IsADirectoryError:
        raise InputError("a file", "a directory", file=str(path)) from None
    except OSError as exc:
        raise InputError("a readable file", exc.strerror or str(exc), file=str(path)) from None


def parse_file(path: str | Path, parse: Callable[[bytes], T]) -> T:
    data = read_bytes(path)
    try:
        return parse(data)
    except InputError as exc:
        raise exc.with_file(str(path)) from None


def hash_bytes(data: bytes) -> FileHashes:
    """Size, SHA-256 and SHA-384 of bytes already in memory."""
    return FileHashes(len(data), hashlib.sha256(data).hexdigest(), hashlib.sha384(data).hexdigest())


def hash_file(path: str | Path) -> FileHashes:
    """Size, SHA-256 and SHA-384 of a file, read in chunks."""
    h256, h384, size = hashlib.sha256(), hashlib.sha384(), 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h256.update(chunk)
                h384.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise InputError("a readable file", exc.strerror or str(exc), file=str(path)) from None
    return FileHashes(size, h256.hexdigest(), h384.hexdigest())
