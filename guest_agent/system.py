"""The agent's window on the machine: a root prefix for kernel paths and a command runner.

Every step reaches sysfs, configfs, /dev and external tools only through `System`, so tests drive
the real step code against a temporary directory tree and scripted commands.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


class Refused(Exception):
    """A step found the TD unfit to serve; `reason` says what was expected, what was seen, the fix."""

    def __init__(self, step: str, reason: str):
        self.step, self.reason = step, reason
        super().__init__(f"{step}: {reason}")


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        tail = (self.stderr or self.stdout).strip().splitlines()[-3:]
        return f"`{' '.join(self.argv)}` exited {self.returncode}" + (f": {' | '.join(tail)}" if tail else "")


Runner = Callable[[Sequence[str], float], CommandResult]


def run_command(argv: Sequence[str], timeout_s: float) -> CommandResult:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError:
        return CommandResult(tuple(argv), 127, "", f"{argv[0]}: command not found")
    except OSError as exc:  # not executable, and the like: the shell's "cannot execute"
        return CommandResult(tuple(argv), 126, "", f"{argv[0]}: {exc.strerror or exc}")
    except subprocess.TimeoutExpired:
        return CommandResult(tuple(argv), 124, "", f"timed out after {timeout_s:g}s")
    return CommandResult(tuple(argv), done.returncode, done.stdout, done.stderr)


@dataclass(frozen=True)
class System:
    root: Path = Path("/")
    run: Runner = field(default=run_command)
    python: str = sys.executable  # runs tdxattest.gateway / tdxattest.testing.standin

    def path(self, absolute: str) -> Path:
        """`absolute` (a kernel or device path) under this system's root."""
        return self.root / absolute.lstrip("/")
