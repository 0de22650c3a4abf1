"""Parse a TCG2 crypto-agile event log as a TD publishes it (the ACPI CCEL area) and replay
RTMR0-3 from it.

Layout: the first record is the legacy TCG_PCClientPCREvent header (u32 index, u32 type =
EV_NO_ACTION, 20 zero bytes, u32 size, then TCG_EfiSpecIDEvent: "Spec ID Event03\\0", platform
class, version, uintn size, the digest algorithms and their sizes, vendor info). Each later record
is a TCG_PCR_EVENT2: u32 index, u32 type, u32 digest count, (u16 algorithm, digest) * count,
u32 event size, event data. The log ends at a record whose index and type are both 0 (zero
padding of the CCEL area) or both 0xFFFFFFFF, or at the end of the data.

In a CCEL log the index is the MR index: 1..4 = RTMR0..3 (0 would be MRTD, which the guest cannot
extend). EV_NO_ACTION records are informational and never extended. Pure.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from tdxattest.core.errors import InputError, show_bytes
from tdxattest.core.events import EV_NO_ACTION, event_type_name
from tdxattest.core.rtmr import RTMR_COUNT, ZERO, extend

SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"
TPM_ALG_SHA384 = 0x000C
ALGORITHM_NAMES = {0x0004: "sha1", 0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512", 0x0012: "sm3_256"}
LEGACY_HEADER_SIZE = 32  # index, type, 20-byte SHA-1 digest, event size


@dataclass(frozen=True)
class LogEvent:
    index: int  # position in the log, 0 = first event after the SpecID header
    offset: int  # file offset of the record
    mr_index: int  # CCEL MR index (1..4 = RTMR0..3)
    event_type: int
    digests: tuple[tuple[int, bytes], ...]  # (TCG algorithm id, digest)
    data: bytes

    @property
    def rtmr(self) -> int | None:
        return self.mr_index - 1 if 1 <= self.mr_index <= RTMR_COUNT else None

    @property
    def sha384(self) -> bytes | None:
        for alg, digest in self.digests:
            if alg == TPM_ALG_SHA384:
                return digest
        return None

    @property
    def extends(self) -> bool:
        return self.event_type != EV_NO_ACTION

    def describe(self) -> str:
        return describe_event(self.event_type, self.data)

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "offset": self.offset,
            "mr_index": self.mr_index,
            "rtmr": self.rtmr,
            "type": event_type_name(self.event_type),
            "type_value": f"0x{self.event_type:x}",
            "sha384": self.sha384.hex() if self.sha384 is not None else None,
            "data_size": len(self.data),
            "detail": self.describe(),
            "extended": self.extends,
        }


@dataclass(frozen=True)
class EventLog:
    format: str
    algorithms: tuple[tuple[int, int], ...]  # (TCG algorithm id, digest size) from the SpecID header
    events: tuple[LogEvent, ...]
    end_offset: int


@dataclass(frozen=True)
class Replay:
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    events_per_rtmr: tuple[tuple[LogEvent, ...], ...]

    def as_dict(self) -> dict[str, str]:
        return {f"rtmr{i}": self.rtmrs[i].hex() for i in range(RTMR_COUNT)}


def describe_event(event_type: int, data: bytes) -> str:
    """A short human hint at what an event is (best effort, never raises)."""
    try:
        from tdxattest.core import events as ev

        if event_type in (
            ev.EV_EFI_ACTION,
            ev.EV_PLATFORM_CONFIG_FLAGS,
            ev.EV_EFI_HANDOFF_TABLES2,
            ev.EV_EFI_PLATFORM_FIRMWARE_BLOB2,
            ev.EV_IPL,
            ev.EV_POST_CODE,
            ev.EV_S_CRTM_VERSION,
        ):
            if event_type in (ev.EV_EFI_HANDOFF_TABLES2, ev.EV_EFI_PLATFORM_FIRMWARE_BLOB2) and data:
                data = data[1 : 1 + data[0]]  # u8 description size, then the description
            text = data.rstrip(b"\x00")
            if text and all(32 <= b < 127 for b in text):
                return text.decode("ascii")
            if event_type == ev.EV_S_CRTM_VERSION:
                return data.decode("utf-16-le", "replace").rstrip("\x00")
        if (
            event_type
            in (
                ev.EV_EFI_VARIABLE_DRIVER_CONFIG,
                ev.EV_EFI_VARIABLE_BOOT,
                ev.EV_EFI_VARIABLE_BOOT2,
                ev.EV_EFI_VARIABLE_AUTHORITY,
            )
            and len(data) >= 32
        ):
            name_len, data_len = struct.unpack_from("<QQ", data, 16)
            name = data[32 : 32 + 2 * name_len].decode("utf-16-le", "replace")
            return f"{name} ({data_len} bytes)"
        if event_type == ev.EV_EVENT_TAG and len(data) >= 8:
            tag, _size = struct.unpack_from("<II", data, 0)
            known = {ev.LINUX_EVENT_TAG_LOAD_OPTIONS: "Linux LoadOptions", ev.LINUX_EVENT_TAG_INITRD: "Linux initrd"}
            return f"tag 0x{tag:x} {known.get(tag, '')}".rstrip()
        if event_type == ev.EV_SEPARATOR:
            return "separator"
    except (UnicodeDecodeError, struct.error, IndexError):
        pass
    return ""


def _need(data: bytes, offset: int, size: int, what: str) -> None:
    if offset + size > len(data):
        raise InputError(
            f"{what} ({size} bytes)", f"{len(data) - offset} bytes before the end (truncated log)", offset=offset
        )


def parse_spec_id_header(data: bytes) -> tuple[tuple[tuple[int, int], ...], int]:
    """Check the legacy SpecID header; return the algorithm table and the offset after the header."""
    _need(data, 0, LEGACY_HEADER_SIZE, "the TCG event log header (TCG_PCClientPCREvent)")
    _index, event_type = struct.unpack_from("<II", data, 0)
    if event_type != EV_NO_ACTION:
        raise InputError(
            "a TCG2 event log starting with an EV_NO_ACTION (3) SpecID header event",
            f"event type 0x{event_type:x}",
            offset=4,
        )
    (size,) = struct.unpack_from("<I", data, 28)
    body = LEGACY_HEADER_SIZE
    _need(data, body, size, "the SpecID event")
    if data[body : body + 16] != SPEC_ID_SIGNATURE:
        raise InputError(
            "signature 'Spec ID Event03' (a crypto-agile TCG2 log)", show_bytes(data[body : body + 16]), offset=body
        )
    if size < 16 + 4 + 4 + 4 + 1:
        raise InputError("a SpecID event of at least 29 bytes", f"{size} bytes", offset=28)
    (count,) = struct.unpack_from("<I", data, body + 24)
    pos = body + 28
    if count == 0 or pos + 4 * count + 1 > body + size:
        raise InputError(f"1..{(size - 29) // 4} digest algorithms in the SpecID event", str(count), offset=body + 24)
    algorithms = tuple(struct.unpack_from("<HH", data, pos + 4 * i) for i in range(count))
    pos += 4 * count
    vendor = data[pos]
    if pos + 1 + vendor > body + size:
        raise InputError(
            f"vendor info within the SpecID event ({body + size - pos - 1} bytes left)", f"{vendor} bytes", offset=pos
        )
    if TPM_ALG_SHA384 not in dict(algorithms):
        raise InputError(
            "a SHA-384 (algorithm 0x000c) digest bank in the SpecID event",
            ", ".join(ALGORITHM_NAMES.get(a, f"0x{a:04x}") for a, _ in algorithms),
            offset=body + 28,
        )
    return algorithms, body + size


def parse_tcg2_log(data: bytes) -> EventLog:
    algorithms, pos = parse_spec_id_header(data)
    sizes = dict(algorithms)
    events: list[LogEvent] = []
    while pos + 8 <= len(data):
        index, event_type = struct.unpack_from("<II", data, pos)
        if (index, event_type) in ((0, 0), (0xFFFFFFFF, 0xFFFFFFFF)):
            break
        start = pos
        _need(data, pos, 12, f"event {len(events)} header")
        (count,) = struct.unpack_from("<I", data, pos + 8)
        if count != len(algorithms):
            raise InputError(
                f"event {len(events)} with {len(algorithms)} digests (one per SpecID algorithm)",
                f"{count} digests",
                offset=pos + 8,
            )
        pos += 12
        digests = []
        for _ in range(count):
            _need(data, pos, 2, f"event {len(events)} digest algorithm")
            (alg,) = struct.unpack_from("<H", data, pos)
            if alg not in sizes:
                raise InputError(
                    f"a digest algorithm listed in the SpecID header ({', '.join(f'0x{a:04x}' for a in sizes)})",
                    f"0x{alg:04x}",
                    offset=pos,
                )
            _need(data, pos + 2, sizes[alg], f"event {len(events)} {ALGORITHM_NAMES.get(alg, 'digest')}")
            digests.append((alg, bytes(data[pos + 2 : pos + 2 + sizes[alg]])))
            pos += 2 + sizes[alg]
        _need(data, pos, 4, f"event {len(events)} data size")
        (size,) = struct.unpack_from("<I", data, pos)
        _need(data, pos + 4, size, f"event {len(events)} data")
        payload = bytes(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
        if event_type != EV_NO_ACTION and not 1 <= index <= RTMR_COUNT:
            raise InputError("a CCEL MR index 1..4 (RTMR0..3)", f"{index} in event {len(events)}", offset=start)
        events.append(LogEvent(len(events), start, index, event_type, tuple(digests), payload))
    return EventLog(format="tcg2", algorithms=algorithms, events=tuple(events), end_offset=pos)


def replay_log(events: tuple[LogEvent, ...] | list[LogEvent]) -> Replay:
    """Replay RTMR0-3 from the events' SHA-384 digests."""
    values = [ZERO] * RTMR_COUNT
    per: list[list[LogEvent]] = [[] for _ in range(RTMR_COUNT)]
    for e in events:
        if not e.extends or e.rtmr is None:
            continue
        digest = e.sha384
        if digest is None:
            raise InputError("a SHA-384 digest in every extended event", f"none in event {e.index}", offset=e.offset)
        values[e.rtmr] = extend(values[e.rtmr], digest)
        per[e.rtmr].append(e)
    rtmrs = (values[0], values[1], values[2], values[3])  # RTMR_COUNT of them
    return Replay(rtmrs=rtmrs, events_per_rtmr=tuple(tuple(p) for p in per))
