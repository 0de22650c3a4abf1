"""RTMR extend and replay math, and the result types for a register built from events.

An RTMR starts as 48 zero bytes; each extend sets ``RTMR = SHA-384(RTMR || digest)`` with a
48-byte SHA-384 digest. Pure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tdxattest.core.events import event_type_name

DIGEST_SIZE = 48
ZERO = bytes(DIGEST_SIZE)
RTMR_COUNT = 4


def extend(register: bytes, digest: bytes) -> bytes:
    if len(register) != DIGEST_SIZE or len(digest) != DIGEST_SIZE:
        raise ValueError(f"RTMR extend takes 48-byte values, not {len(register)} and {len(digest)} bytes")
    return hashlib.sha384(register + digest).digest()


def replay(digests: Iterable[bytes], start: bytes = ZERO) -> bytes:
    value = start
    for d in digests:
        value = extend(value, d)
    return value


@dataclass(frozen=True)
class Event:
    """One measurement that goes into a register. `digest` is None when its input was not given."""

    name: str
    event_type: int
    digest: bytes | None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "event": self.name,
            "type": event_type_name(self.event_type),
            "digest": self.digest.hex() if self.digest is not None else None,
        }
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass(frozen=True)
class Register:
    """A register and the events that make it up, in extend order."""

    name: str
    events: tuple[Event, ...]

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.events if e.digest is None)

    @property
    def value(self) -> bytes | None:
        if self.missing:
            return None
        return replay(e.digest for e in self.events if e.digest is not None)  # all set: none is missing

    def as_dict(self) -> dict[str, Any]:
        value = self.value
        out: dict[str, Any] = {
            "value": value.hex() if value is not None else None,
            "events": [e.as_dict() for e in self.events],
        }
        if self.missing:
            out["missing"] = list(self.missing)
        return out
