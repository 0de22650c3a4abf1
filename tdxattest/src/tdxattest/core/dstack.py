"""Read dstack's attestation container (the "V0" SCALE encoding its guest agent produces): a TDX
quote and the TD's event log, including dstack's RTMR3 runtime events.

Layout: u8 version (0), u8 attestation kind (0 = dstack TDX), compact-length quote bytes, then a
compact-length list of events {u32 imr (0-based RTMR), u32 event type, compact-length digest,
compact-length UTF-8 name, compact-length payload}; what follows (report data, config) is not
needed here. SCALE compact integers: the low two bits of the first byte select 1, 2, 4 or
(n + 4) bytes. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from tdxattest.core.errors import InputError
from tdxattest.core.eventlog import TPM_ALG_SHA384, LogEvent
from tdxattest.core.rtmr import RTMR_COUNT


@dataclass(frozen=True)
class DstackAttestation:
    quote: bytes
    events: tuple[LogEvent, ...]
    names: tuple[str, ...]  # per event: dstack's event name ("" for firmware events)
    end_offset: int


class _Reader:
    def __init__(self, data: bytes, pos: int = 0):
        self.data = data
        self.pos = pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise InputError(
                f"{what} ({n} bytes)", f"{len(self.data) - self.pos} bytes before the end", offset=self.pos
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "little")

    def compact(self, what: str) -> int:
        first = self.take(1, what)[0]
        mode = first & 3
        if mode == 0:
            return first >> 2
        if mode == 1:
            return int.from_bytes(bytes([first]) + self.take(1, what), "little") >> 2
        if mode == 2:
            return int.from_bytes(bytes([first]) + self.take(3, what), "little") >> 2
        return int.from_bytes(self.take((first >> 2) + 4, what), "little")

    def blob(self, what: str) -> bytes:
        return bytes(self.take(self.compact(f"{what} length"), what))


def looks_like_dstack(data: bytes) -> bool:
    """Cheap check: version 0, kind 0, then a quote of version 4/5 with TEE type TDX."""
    if len(data) < 2 + 1 + 8 or data[0] != 0 or data[1] != 0:
        return False
    try:
        r = _Reader(data, 2)
        r.compact("quote length")
        head = r.take(8, "quote header")
    except InputError:
        return False
    return head[0] in (4, 5) and head[1] == 0 and head[4:8] == b"\x81\x00\x00\x00"


def parse_dstack_attestation(data: bytes) -> DstackAttestation:
    r = _Reader(data)
    version, kind = r.take(2, "the dstack attestation header")
    if version != 0:
        raise InputError("dstack attestation version 0 (V0)", str(version), offset=0)
    if kind != 0:
        raise InputError("attestation kind 0 (dstack TDX)", str(kind), offset=1)
    quote = r.blob("the TDX quote")
    count_at = r.pos
    count = r.compact("the event count")
    if count > len(data):
        raise InputError("a plausible event count", str(count), offset=count_at)
    events, names = [], []
    for i in range(count):
        start = r.pos
        imr = r.u32(f"event {i} RTMR index")
        event_type = r.u32(f"event {i} type")
        digest = r.blob(f"event {i} digest")
        name_raw = r.blob(f"event {i} name")
        payload = r.blob(f"event {i} payload")
        if imr >= RTMR_COUNT:
            raise InputError("an RTMR index 0..3", f"{imr} in event {i}", offset=start)
        if len(digest) != 48:
            raise InputError("a 48-byte SHA-384 digest", f"{len(digest)} bytes in event {i}", offset=start + 8)
        try:
            name = name_raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("a UTF-8 event name", f"undecodable bytes in event {i}", offset=start) from None
        events.append(LogEvent(i, start, imr + 1, event_type, ((TPM_ALG_SHA384, digest),), payload))
        names.append(name)
    return DstackAttestation(quote=quote, events=tuple(events), names=tuple(names), end_offset=r.pos)
