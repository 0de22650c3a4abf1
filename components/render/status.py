"""What `python -m components status` concludes, and how it says it. Pure: the command
(components/status/) gathers the stack's last update, its outputs and each host step's read-only
check; these functions judge them and render the table and the JSON.

Why a command and not only the outputs: Pulumi keeps the outputs of the last *successful* update,
so after a failed `pulumi up` they still say `ready: true` with the previous run's facts. The
truth is on the hosts, and in the stack's history.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

StepState = Literal["in_sync", "drifted", "refused", "failed"]
SHOWN = {"in_sync": "in sync", "drifted": "drifted", "refused": "refused", "failed": "failed"}


@dataclass(frozen=True)
class StepStatus:
    step: str  # the host step (components/render/host_steps.py): preflight, kernel, ...
    resource: str  # the Pulumi resource that runs it, for `pulumi up --target`
    state: StepState
    problems: tuple[str, ...] = ()  # each "what; expected X, seen Y; fix: Z", as the step prints it
    facts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HostStatus:
    host: str
    address: str
    unreachable: str | None = None  # why no step could be read (the SSH handshake or login failed)
    steps: tuple[StepStatus, ...] = ()

    @property
    def in_sync(self) -> bool:
        return self.unreachable is None and all(s.state == "in_sync" for s in self.steps)

    @property
    def first_problem(self) -> str | None:
        """The first thing `pulumi up` would stop at on this host, in step order."""
        if self.unreachable is not None:
            return f"ssh: {self.unreachable}"
        bad = next((s for s in self.steps if s.state != "in_sync"), None)
        if bad is None:
            return None
        return f"{bad.step}: {bad.problems[0] if bad.problems else SHOWN[bad.state]}"


@dataclass(frozen=True)
class LastUpdate:
    """The newest `pulumi up` or `pulumi destroy` in the stack's history."""

    kind: str  # update | destroy
    result: str  # succeeded | failed | in-progress
    started: str
    ended: str | None

    @property
    def up_succeeded(self) -> bool:
        return (self.kind, self.result) == ("update", "succeeded")


@dataclass(frozen=True)
class StackStatus:
    stack: str
    last_update: LastUpdate | None
    outputs_ready: bool | None  # what `pulumi stack output ready` says (None: no such output)
    hosts: tuple[HostStatus, ...]

    @property
    def exit_code(self) -> int:
        """0 ready; 3 only drift since a successful `up`; 1 anything else that is not ready."""
        if self.ready:
            return 0
        if self.last_update is not None and self.last_update.up_succeeded:
            readable = all(h.unreachable is None for h in self.hosts)
            if readable and all(s.state in ("in_sync", "drifted") for h in self.hosts for s in h.steps):
                return 3
        return 1

    @property
    def ready(self) -> bool:
        """True only when the last `up` succeeded and every host is, right now, as it left it."""
        last = self.last_update
        return last is not None and last.up_succeeded and all(h.in_sync for h in self.hosts)

    def notes(self) -> list[str]:
        notes = []
        last = self.last_update
        if last is None:
            notes.append("no `pulumi up` has run on this stack yet; fix: pulumi up")
        elif last.kind == "destroy":
            notes.append(f"the last operation was `pulumi destroy` ({last.result}, {last.ended or last.started})")
        elif last.result != "succeeded":
            notes.append(
                f"the last `pulumi up` {last.result} ({last.started}); the first problem per host is below; "
                "fix it, then run pulumi up again"
            )
        if self.outputs_ready and not self.ready:
            notes.append(
                "`pulumi stack output ready` still says true: Pulumi keeps the outputs of the last successful "
                "update, and they do not describe what is wrong now"
            )
        drifted = [h.host for h in self.hosts if not h.in_sync]
        if drifted and last is not None and last.up_succeeded:
            notes.append(
                f"{', '.join(drifted)} changed since the last `pulumi up`, which cannot see it (a step runs again "
                "only when its inputs change); each line below names its fix"
            )
        return notes


def step_status(step: str, resource: str, rc: int, stdout: str, stderr: str) -> StepStatus:
    """Judge one step's `status` run (components/scripts/host/lib.sh `_status`): rc 0 and its facts
    line with `in_sync`; a non-zero rc is the step refusing (a problem apply cannot fix) or breaking."""
    facts = last_json_line(stdout)
    errors = tuple(_error_text(line, step) for line in stderr.splitlines() if line.startswith("error: "))
    if rc == 0 and facts is not None and isinstance(facts.get("in_sync"), bool):
        unmet = facts.get("unmet")
        problems = tuple(str(u) for u in unmet) if isinstance(unmet, list) else ()
        rest = {k: v for k, v in facts.items() if k not in ("in_sync", "unmet", "ok", "changed", "step")}
        return StepStatus(step, resource, "in_sync" if facts["in_sync"] else "drifted", problems, rest)
    if rc != 0 and errors:
        rest = {k: v for k, v in (facts or {}).items() if k not in ("ok", "changed", "step")}
        return StepStatus(step, resource, "refused", errors, rest)
    tail = " | ".join(stderr.strip().splitlines()[-3:]) or "no output"
    return StepStatus(step, resource, "failed", (f"the check ended with status {rc} and no verdict: {tail}",))


def last_json_line(stdout: str) -> dict[str, Any] | None:
    """The JSON object a step printed last (its facts), or None."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        return None
    try:
        value = json.loads(lines[-1])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _error_text(line: str, step: str) -> str:
    # "error: kernel (check): X" / "error: preflight: X" -> "X": the table already names the step.
    text = line.removeprefix("error: ")
    for prefix in (f"{step}: ", f"{step} ("):
        if text.startswith(prefix):
            text = text[len(prefix) :]
            if prefix.endswith("("):
                text = text.split("): ", 1)[-1]
            break
    return text


def last_update_of(history: Sequence[Mapping[str, Any]]) -> LastUpdate | None:
    """The newest update or destroy in `pulumi stack history --json` (refreshes change no host)."""
    entries = [e for e in history if isinstance(e, Mapping) and e.get("kind") in ("update", "destroy")]
    if not entries:
        return None
    newest = max(entries, key=lambda e: int(e.get("version") or 0))
    return LastUpdate(
        kind=str(newest["kind"]),
        result=str(newest.get("result") or "in-progress"),
        started=str(newest.get("startTime") or ""),
        ended=str(newest["endTime"]) if newest.get("endTime") else None,
    )


def to_json(status: StackStatus) -> dict[str, Any]:
    last = status.last_update
    return {
        "stack": status.stack,
        "ready": status.ready,
        "lastUpdate": None
        if last is None
        else {"kind": last.kind, "result": last.result, "started": last.started, "ended": last.ended},
        "outputsReady": status.outputs_ready,
        "notes": status.notes(),
        "hosts": {
            h.host: {
                "address": h.address,
                "inSync": h.in_sync,
                "unreachable": h.unreachable,
                "firstProblem": h.first_problem,
                "steps": [
                    {"step": s.step, "resource": s.resource, "state": s.state, "problems": list(s.problems)}
                    for s in h.steps
                ],
            }
            for h in status.hosts
        },
    }


def render_table(status: StackStatus) -> str:
    last = status.last_update
    lines = [f"stack {status.stack}: {'READY' if status.ready else 'NOT READY'}"]
    if last is not None:
        lines.append(f"  last {last.kind}: {last.result} (started {last.started})")
    lines += [f"  note: {n}" for n in status.notes()]
    rows = [("HOST", "STEP", "STATE", "DETAIL")]
    for h in status.hosts:
        if h.unreachable is not None:
            rows.append((h.host, "ssh", "unreachable", h.unreachable))
            continue
        for s in h.steps:
            detail = s.problems or ("",)
            rows.append((h.host, s.step, SHOWN[s.state], detail[0]))
            rows += [("", "", "", more) for more in detail[1:]]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines.append("")
    lines += [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip() for r in rows]
    return "\n".join(lines)
