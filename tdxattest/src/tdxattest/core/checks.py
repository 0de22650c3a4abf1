"""One check of a verdict, and one refused check: the shared shape of every policy's findings (the
quote policy in `core.policy`, the GPU policy in `core.gpu_policy`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Failure:
    """One refused check: its name, what the policy expected and what the evidence showed."""

    check: str
    expected: Any
    seen: Any
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"check": self.check, "expected": self.expected, "seen": self.seen}
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass(frozen=True)
class CheckResult:
    check: str
    outcome: str  # "pass" | "fail" | "not_checked"
    expected: Any = None
    seen: Any = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "check": self.check,
            "outcome": self.outcome,
            "expected": self.expected,
            "seen": self.seen,
        }
        if self.reason:
            out["reason"] = self.reason
        return out


class Findings:
    """Collects a verdict's checks as they are made: `findings(name, ok, expected, seen)` records a
    pass or a failure, `findings.skip(name, reason)` a check not made and why."""

    def __init__(self) -> None:
        self.checks: list[CheckResult] = []
        self.failures: list[Failure] = []

    def __call__(self, name: str, ok: bool, expected: Any, seen: Any, detail: str | None = None) -> bool:
        self.checks.append(CheckResult(name, "pass" if ok else "fail", expected, seen, detail))
        if not ok:
            self.failures.append(Failure(name, expected, seen, detail))
        return ok

    def skip(self, name: str, reason: str, seen: Any = None) -> None:
        self.checks.append(CheckResult(name, "not_checked", seen=seen, reason=reason))
