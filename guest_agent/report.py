"""The one line the host waits for in the TD's serial log, also printed to stdout.

    tdx-vllm-agent: {"state": "ready"|"refused"|"failed", "stack", "reason"?, "rtmr3", "endpoint", "quoteSource", ...}

"refused": the agent would not start serving (the reason names the step and the fix); "failed":
it was ready and a supervised process died afterwards.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from . import REPORT_PREFIX
from .system import System

# The host reads the serial console (QEMU -serial file:...); the agent writes its line there itself,
# and systemd sends its stdout to the journal only, so the line is on the console once.
CONSOLE = "/dev/ttyS0"


@dataclass(frozen=True)
class Report:
    state: str  # "ready" | "refused" | "failed"
    stack: str | None
    rtmr3: str | None = None
    endpoint: str | None = None
    quote_source: str | None = None
    reason: str | None = None
    step: str | None = None
    notes: tuple[str, ...] = field(default=())  # loud facts: software quotes, skipped GPU step
    manifest_sha384: str | None = None  # the workload manifest measured into RTMR3 (the host compares it)

    def as_dict(self) -> dict:
        out: dict[str, Any] = {
            "state": self.state,
            "stack": self.stack,
            "rtmr3": self.rtmr3,
            "endpoint": self.endpoint,
            "quoteSource": self.quote_source,
        }
        if self.reason is not None:
            out["reason"] = self.reason
            out["step"] = self.step
        if self.notes:
            out["notes"] = list(self.notes)
        if self.manifest_sha384 is not None:
            out["manifestSha384"] = self.manifest_sha384
        return out

    def line(self) -> str:
        # ensure_ascii: the serial console and the host's log parser see plain ASCII, one line.
        return REPORT_PREFIX + json.dumps(self.as_dict(), ensure_ascii=True, separators=(", ", ": "))


def parse_line(line: str) -> dict | None:
    """The report in a serial-log line, or None (what the host side looks for)."""
    at = line.find(REPORT_PREFIX)
    if at < 0:
        return None
    try:
        return json.loads(line[at + len(REPORT_PREFIX) :])
    except ValueError:
        return None


def emit(report: Report, system: System, stdout: TextIO | None = None) -> None:
    line = report.line()
    print(line, file=stdout or sys.stdout, flush=True)
    write_console(line, system)


def write_console(line: str, system: System) -> None:
    """`line` on the serial console, whole: written to the tty directly, not through the journal,
    whose console copy goes through the kernel log and is cut at its record size (~1 KiB)."""
    path = system.path(CONSOLE)
    if not path.exists():
        return
    # Best effort: a console that blocks or refuses must not keep the line from stdout/journal.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_APPEND)
    except OSError:
        return
    try:
        os.write(fd, ("\r\n" + line + "\r\n").encode())
    except OSError:
        pass
    finally:
        os.close(fd)
