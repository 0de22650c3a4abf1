"""TDX detection and the RTMR3 workload measurement.

The measurement is the first thing the agent does after reading its config: until RTMR3 holds the
manifest digest, a quote from this TD would not say what it serves, so nothing may run before it.

Kernel ABI (Documentation/ABI/testing/sysfs-devices-virtual-misc-tdx_guest, Linux >= 6.16): writing
48 bytes to `measurements/rtmr3:sha384` extends RTMR3 = SHA-384(RTMR3 || data); reading it returns
the current 48-byte value.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tdxattest.channel.quote_source import TDX_PROVIDER, TSM_REPORT_ROOT
from tdxattest.core import rtmr
from tdxattest.core.errors import InputError
from tdxattest.core.workload import WorkloadManifest, replay_rtmr3, rtmr3_events

from .system import Refused, System

TDX_GUEST_DEVICE = "/dev/tdx_guest"
RTMR3_SYSFS = "/sys/devices/virtual/misc/tdx_guest/measurements/rtmr3:sha384"
PROBE_ENTRY = "tdx-vllm-agent-probe"


@dataclass(frozen=True)
class TdxFacts:
    tsm_provider: str | None  # provider of configfs-tsm reports, "tdx_guest" in a TD
    device: bool  # /dev/tdx_guest exists
    rtmr3: Path | None  # the RTMR3 sysfs file, when present
    missing: tuple[str, ...]  # what a TD with working attestation has and this one lacks

    @property
    def present(self) -> bool:
        return not self.missing


def _tsm_provider(system: System) -> str | None:
    root = system.path(TSM_REPORT_ROOT)
    if not root.is_dir():
        return None
    # Any existing entry tells us the provider; otherwise make one (configfs creates its files) and
    # remove it again, so the probe leaves nothing behind for the gateway to trip over.
    for entry in sorted(root.iterdir()):
        provider = entry / "provider"
        if provider.is_file():
            try:
                return provider.read_text().strip()
            except OSError:
                continue
    probe = root / PROBE_ENTRY
    try:
        probe.mkdir(exist_ok=True)
        try:
            return (probe / "provider").read_text().strip()
        finally:
            try:
                probe.rmdir()
            except OSError:
                pass
    except OSError:
        return None


def detect_tdx(system: System) -> TdxFacts:
    provider = _tsm_provider(system)
    device = system.path(TDX_GUEST_DEVICE).exists()
    rtmr3 = system.path(RTMR3_SYSFS)
    missing = []
    if provider != TDX_PROVIDER:
        hint = (
            f" ({TDX_GUEST_DEVICE} exists: the kernel lacks CONFIG_TSM_REPORTS or configfs is not mounted)"
            if device
            else f" (and no {TDX_GUEST_DEVICE}: this is not a TDX TD)"
        )
        missing.append(f"configfs-tsm provider {TDX_PROVIDER} at {TSM_REPORT_ROOT}, seen {provider or 'nothing'}{hint}")
    if not rtmr3.is_file():
        missing.append(f"{RTMR3_SYSFS} (the RTMR sysfs ABI needs a guest kernel >= 6.16)")
    return TdxFacts(
        tsm_provider=provider, device=device, rtmr3=rtmr3 if rtmr3.is_file() else None, missing=tuple(missing)
    )


# ---- RTMR3 ------------------------------------------------------------------------------------


class Rtmr3(Protocol):
    label: str

    def read(self) -> bytes: ...

    def extend(self, digest: bytes) -> None: ...


class SysfsRtmr3:
    """The TD's real RTMR3, through the kernel's sysfs file."""

    label = "tdx_guest sysfs"

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> bytes:
        raw = self.path.read_bytes()
        if len(raw) == rtmr.DIGEST_SIZE:
            return raw
        text = raw.strip()
        try:  # tolerate a hex rendering, in case a kernel shows the value as text
            value = bytes.fromhex(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            value = b""
        if len(value) != rtmr.DIGEST_SIZE:
            raise Refused(
                "measure",
                f"{self.path} to read 48 bytes (or 96 hex digits), seen {len(raw)} bytes; "
                "check the guest kernel's tdx_guest measurements ABI",
            )
        return value

    def extend(self, digest: bytes) -> None:
        if len(digest) != rtmr.DIGEST_SIZE:
            raise ValueError(f"RTMR3 extends take 48 bytes, not {len(digest)}")
        # One unbuffered write of exactly 48 bytes: the kernel rejects partial writes.
        fd = os.open(self.path, os.O_WRONLY)
        try:
            written = os.write(fd, digest)
        finally:
            os.close(fd)
        if written != rtmr.DIGEST_SIZE:
            raise Refused("measure", f"a 48-byte write to {self.path}, the kernel took {written}")


class SoftwareRtmr3:
    """An in-memory stand-in for RTMR3 (dev stack without TDX only): same math, proves nothing."""

    label = "software (dev, no TDX)"

    def __init__(self) -> None:
        self.value = rtmr.ZERO

    def read(self) -> bytes:
        return self.value

    def extend(self, digest: bytes) -> None:
        self.value = rtmr.extend(self.value, digest)


@dataclass(frozen=True)
class Measurement:
    rtmr3: bytes
    extended: bool  # False when an earlier run of the agent in this TD already measured it


def read_event_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    events = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except ValueError as exc:
            raise Refused(
                "measure",
                f"JSON lines in {path}, line {n}: {exc}; the log is in tmpfs and "
                "only this agent writes it: restart the TD",
            ) from None
    return events


def _replay(events: list[dict], where: Path) -> bytes:
    try:
        return replay_rtmr3(events)
    except InputError as exc:
        raise Refused("measure", f"{where}: {exc}") from None


def measure_workload(manifest: WorkloadManifest, register: Rtmr3, event_log: Path) -> Measurement:
    """Extend RTMR3 with the manifest digest unless this TD already holds exactly that measurement.

    RTMR3 only grows, so the register and the log must agree before and after: a register that the
    log does not explain was extended by someone else, and a TD measured for another manifest must
    be restarted rather than have a second workload piled on top."""
    ours = rtmr3_events(manifest)
    logged = read_event_log(event_log)
    before = register.read()
    replayed = _replay(logged, event_log)
    if before != replayed:
        raise Refused(
            "measure",
            f"RTMR3 = {replayed.hex()} (replay of {len(logged)} event(s) in {event_log}), "
            f"seen {before.hex()}; something else extended RTMR3 or the log was lost: "
            "restart the TD",
        )
    if logged:
        if [e.get("digest") for e in logged] == [e["digest"] for e in ours]:
            return Measurement(before, extended=False)
        raise Refused(
            "measure",
            f"RTMR3 unmeasured or holding this manifest {ours[0]['digest']}, seen events "
            f"{[e.get('digest') for e in logged]}; a TD serves one manifest: restart the TD",
        )
    event_log.parent.mkdir(parents=True, exist_ok=True)
    # Log first, then extend: a crash in between leaves a log the register does not match yet,
    # which the next run refuses, rather than a measured register nobody can explain.
    record = [{**e, "manifest": manifest.as_dict()} for e in ours]
    with open(event_log, "a", encoding="utf-8") as fh:
        for e in record:
            fh.write(json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    register.extend(manifest.digest())
    after = register.read()
    expected = _replay(record, event_log)
    if after != expected:
        raise Refused(
            "measure",
            f"RTMR3 = {expected.hex()} after extending with the manifest digest, seen "
            f"{after.hex()} ({register.label}); the register did not extend as the ABI says",
        )
    return Measurement(after, extended=True)
