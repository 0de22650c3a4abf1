"""What `python -m components status` concludes, and how it says it. Pure: the command
(components/status/) gathers the stack's last update, its outputs, each host step's read-only
check and each TD endpoint's attestation; these functions judge them and render the table and the
JSON.

Why a command and not only the outputs: Pulumi keeps the outputs of the last *successful* update,
so after a failed `pulumi up` they still say `ready: true` with the previous run's facts. The
truth is on the hosts, and in the stack's history.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

StepState = Literal["in_sync", "drifted", "refused", "failed"]
SHOWN = {"in_sync": "in sync", "drifted": "drifted", "refused": "refused", "failed": "failed"}
TdState = Literal["attested", "refused", "unreachable", "not_attested"]
TD_SHOWN = {"attested": "attested", "refused": "refused", "unreachable": "unreachable", "not_attested": "not attested"}

# Intel issues TCB info and QE identity with a nextUpdate 30 days after their issue date and a PCCS
# refreshes them long before that, so a set within a week of its nextUpdate means its refresh stopped.
DEFAULT_WARN_DAYS = 7
DAY_S = 86400

# Exit statuses (components/status/command.py documents them; README.md too).
EXIT_READY, EXIT_NOT_READY, EXIT_UNREADABLE, EXIT_DRIFT, EXIT_TD_REFUSED = 0, 1, 2, 3, 4


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
class TdCollateral:
    """The collateral a TD's quote was judged with."""

    next_update: int | None  # the earliest nextUpdate of its pieces (unix time)
    next_update_of: str | None  # which piece: tcb_info, qe_identity, root_ca_crl, pck_crl
    tcb_evaluation_data_number: int | None
    fmspc: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class TdGpu:
    """The GPU verdict of one attestation, and the CC mode the evidence states."""

    accepted: bool
    served: bool  # the TD served GPU evidence
    count: int
    cc_mode: str | None  # on | devtools | off (from the evidence)
    environment: str | None = None
    vbios: tuple[str, ...] = ()
    driver: tuple[str, ...] = ()


@dataclass(frozen=True)
class TdStatus:
    """One TD endpoint (the stack output `endpoints`), attested once as the verifying proxy does."""

    name: str  # the key in `endpoints`: the host's name, or `kubernetes`
    endpoint: str | None  # https://HOST:PORT of its gateway (None: the output has none)
    host: str | None  # the stack's host it runs on (None: the Kubernetes target, or not known)
    state: TdState
    failures: tuple[str, ...] = ()  # each "check: expected X, seen Y; fix: Z"
    tcb_status: str | None = None
    advisories: tuple[str, ...] = ()
    collateral: TdCollateral | None = None
    recovery: tuple[str, ...] = ()  # each "what is below the newest UpToDate TCB level; fix: Z"
    gpu: TdGpu | None = None
    quote_source: str | None = None

    @property
    def reachable(self) -> bool:
        return self.state in ("attested", "refused")

    @property
    def accepted(self) -> bool:
        return self.state == "attested"


@dataclass(frozen=True)
class StackStatus:
    stack: str
    last_update: LastUpdate | None
    outputs_ready: bool | None  # what `pulumi stack output ready` says (None: no such output)
    hosts: tuple[HostStatus, ...]
    tds: tuple[TdStatus, ...] = ()
    now: int = 0  # when the TDs were attested (unix time): the collateral warnings count from it
    warn_days: int = DEFAULT_WARN_DAYS
    td_note: str | None = None  # why the TDs were not attested (no collateral source given)

    @property
    def exit_code(self) -> int:
        """0 ready; 4 a TD refused or unreachable after a successful `up` (whatever else is wrong);
        3 only drift since a successful `up`; 1 anything else that is not ready."""
        if self.ready:
            return EXIT_READY
        if self.last_update is not None and self.last_update.up_succeeded:
            if any(td.state in ("refused", "unreachable") for td in self.tds):
                return EXIT_TD_REFUSED
            readable = all(h.unreachable is None for h in self.hosts)
            tds_ok = all(td.accepted for td in self.tds)
            if tds_ok and readable and all(s.state in ("in_sync", "drifted") for h in self.hosts for s in h.steps):
                return EXIT_DRIFT
        return EXIT_NOT_READY

    @property
    def ready(self) -> bool:
        """True only when the last `up` succeeded, every host is, right now, as it left it, and every
        TD endpoint proved itself against the stack's pins."""
        last = self.last_update
        return (
            last is not None
            and last.up_succeeded
            and all(h.in_sync for h in self.hosts)
            and all(td.accepted for td in self.tds)
        )

    def warnings(self) -> list[str]:
        """What is not wrong yet: collateral near its nextUpdate, TCB recoveries and whom they affect,
        TDs judged under different TCB evaluation data numbers."""
        out = []
        for td in self.tds:
            warning = collateral_warning(td.collateral, self.now, self.warn_days)
            if warning is not None:
                out.append(f"TD {td.name}: {warning}")
        for td in self.tds:
            if td.recovery:
                where = f"host {td.host}" if td.host else "the cluster's TDX hosts"
                status = f" (TCB status {td.tcb_status})" if td.tcb_status else ""
                out += [f"TCB recovery affects {where}, TD {td.name}{status}: {fix}" for fix in td.recovery]
        numbers = {
            td.name: td.collateral.tcb_evaluation_data_number
            for td in self.tds
            if td.collateral is not None and td.collateral.tcb_evaluation_data_number is not None
        }
        if numbers and len(set(numbers.values())) > 1:
            newest = max(numbers.values())
            behind = sorted(name for name, n in numbers.items() if n < newest)
            out.append(
                f"TD {', '.join(behind)} judged with collateral older than tcbEvaluationDataNumber {newest} "
                f"({', '.join(f'{n}: {numbers[n]}' for n in behind)}): a TCB recovery raised it; fix: refresh "
                "that collateral (its PCCS, or tdxattest collateral fetch), then run status again"
            )
        return out

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
        if self.td_note is not None:
            notes.append(self.td_note)
        bad = [td.name for td in self.tds if td.state in ("refused", "unreachable")]
        if bad:
            notes.append(
                f"TD {', '.join(bad)} did not prove {'itself' if len(bad) == 1 else 'themselves'} against the "
                "stack's pins: a verifying proxy refuses them too; each line below names the check and its fix"
            )
        if any(td.quote_source == "software-test-pki" for td in self.tds):
            notes.append("the TDs' quotes are TEST quotes (the dev stack without TDX): they prove nothing")
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


def iso_utc(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def collateral_warning(collateral: TdCollateral | None, now: int, warn_days: int) -> str | None:
    """A warning when the collateral's earliest nextUpdate is within `warn_days` of `now` (or past)."""
    if collateral is None or collateral.next_update is None:
        return None
    left = collateral.next_update - now
    if left > warn_days * DAY_S:
        return None
    piece = f" ({collateral.next_update_of})" if collateral.next_update_of else ""
    fmspc = f" for FMSPC {collateral.fmspc}" if collateral.fmspc else ""
    when = (
        f"expired at {iso_utc(collateral.next_update)}"
        if left < 0
        else f"expires at {iso_utc(collateral.next_update)}, in {left / DAY_S:.1f} days (warned {warn_days} days ahead)"
    )
    return (
        f"the collateral{fmspc} {when}{piece}; from then on every verifier refuses this TD's quotes; fix: refresh it "
        "(a PCCS fetches Intel's new set by itself: check that it still reaches Intel PCS; for --collateral FILE, "
        "tdxattest collateral fetch)"
    )


# The fix for each refused check, by the check's name or its family (the part before the dot).
_FIXES: dict[str, str] = {
    "attestation.unavailable": "the gateway answered without a quote: check the TD's agent and the host's quote "
    "service (the dcap step's QGS), then relaunch the TD (pulumi up --replace its <host>-td-launch resource)",
    "attestation.malformed": "the endpoint is not the stack's gateway, or something in between answers for it: "
    "do not send it prompts",
    "upstream.malformed": "the stack output `endpoints` should hold https://HOST:PORT; run pulumi up",
    "tcb.advisory_not_allowed": "update the platform (the TCB recovery named below), or allow these advisories in a "
    "--policy file once you have assessed them",
    "tcb.evaluation_data_number_too_low": "refresh the collateral (a PCCS that reaches Intel PCS, or tdxattest "
    "collateral fetch)",
    "collateral.root_mismatch": "TEST quotes need --root-ca (the TEST root) or, for the dev stack without TDX, "
    "--accept-dev-test-root; real TDs need Intel's collateral (--pccs)",
    "collateral.chain_untrusted_root": "TEST quotes need --root-ca (the TEST root) or, for the dev stack without "
    "TDX, --accept-dev-test-root; real TDs need Intel's collateral (--pccs)",
    "gpu.evidence_missing": "the TD served no GPU evidence though the stack pins GPUs: check the host's gpu-cc "
    "step, then relaunch the TD (pulumi up --replace its <host>-td-launch resource; pulumi stack --show-urns)",
    "quote.malformed": "the endpoint is not the stack's gateway: do not send it prompts",
}
_FAMILY_FIXES: dict[str, str] = {
    "pin": "the TD does not run what the stack pins: stage and relaunch the pinned image (pulumi up --replace its "
    "<host>-td-stage and <host>-td-launch resources; pulumi stack --show-urns); if it still differs, do not send "
    "it prompts",
    "binding": "the quote is not bound to this TLS connection: something between here and the TD answers for "
    "it; do not send it prompts",
    "collateral": "give collateral that covers this quote: --pccs URL of a PCCS that reaches Intel PCS, or a fresh "
    "--collateral file (tdxattest collateral fetch)",
    "pck": "the platform's PCK certificate does not hold (revoked or not chaining to the root): ask Intel or the "
    "host's provider; do not send it prompts",
    "td": "the TD runs with attributes the stack never launches it with: treat the host as compromised",
    "tdx_module": "pin the host's TDX module (platform.tdxModule) to a release Intel lists, then pulumi up",
    "qe": "update Intel's DCAP packages on the host (the quoting enclave), then pulumi up",
    "gpu": "the GPUs do not meet the stack's pins: check the host's gpu-cc step (CC mode, VBIOS) and the pins, "
    "then pulumi up",
    "tcb": "the platform is below the TCB the policy accepts: apply Intel's TCB recovery for its FMSPC (BIOS / "
    "microcode, TDX module)",
}
_DEFAULT_FIX = "do not send it prompts until it attests; tdxattest verify shows the whole verdict"


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(str(v) for v in value) or "none"
    return str(value)


def failure_line(
    check: str, expected: Any, seen: Any, detail: str | None, endpoint: str | None, recovery: Sequence[str] = ()
) -> str:
    """One refused check of a TD as "check: expected X, seen Y; fix: Z" (an unreachable gateway as
    "check: cannot reach URL: why; fix: Z"). A TCB refusal's fix is what the TCB recovery needs."""
    if check == "upstream.unreachable":
        return (
            f"{check}: cannot reach {endpoint}: {_show(seen)}; fix: is the TD running? the host's problem is above, "
            "and on the host `systemctl status tdx-vllm-td-<host>` and its serial log say why; relaunch it with "
            "pulumi up --replace its <host>-td-launch resource (pulumi stack --show-urns: a plain up re-runs no "
            "unchanged step); check that this machine reaches that address and port"
        )
    fix = _FIXES.get(check) or _FAMILY_FIXES.get(check.split(".", 1)[0], _DEFAULT_FIX)
    if check in ("tcb.status_not_allowed", "tcb.out_of_date_grace_expired", "tcb.no_matching_level") and recovery:
        fix = " and ".join(r.split("; fix: ", 1)[-1] for r in recovery)
    if check == "attestation.test_pki" and detail:
        fix, detail = detail, None  # the proxy's own fix
    more = f" ({detail})" if detail else ""
    return f"{check}: expected {_show(expected)}, seen {_show(seen)}{more}; fix: {fix}"


def host_cc_modes(status: StackStatus, host: str | None) -> list[str]:
    """The CC mode of each GPU of `host` as its gpu-cc step's check printed it (`BDF: mode`)."""
    h = next((h for h in status.hosts if h.host == host), None)
    if h is None:
        return []
    step = next((s for s in h.steps if s.step == "gpu-cc"), None)
    gpus = step.facts.get("gpus") if step is not None else None
    if not isinstance(gpus, list):
        return []
    return [f"{g.get('bdf')}: {g.get('cc_mode')}" for g in gpus if isinstance(g, Mapping)]


def _gpu_json(status: StackStatus, td: TdStatus) -> dict[str, Any] | None:
    on_host = host_cc_modes(status, td.host)
    g = td.gpu
    if g is None and not on_host:
        return None
    out: dict[str, Any] = {
        "verdict": None if g is None else ("accepted" if g.accepted else "refused"),
        "evidence": None if g is None else g.served,
        "count": None if g is None else g.count,
        "ccMode": None if g is None else g.cc_mode,
        "environment": None if g is None else g.environment,
        "vbios": [] if g is None else list(g.vbios),
        "driver": [] if g is None else list(g.driver),
        "hostCcModes": on_host,
    }
    return out


def _gpu_text(status: StackStatus, td: TdStatus) -> str | None:
    doc = _gpu_json(status, td)
    if doc is None:
        return None
    parts = []
    if doc["verdict"] is not None:
        if doc["evidence"]:
            parts.append(f"{doc['verdict']}, {doc['count']} GPU(s), CC {doc['ccMode']} ({doc['environment']})")
        else:
            parts.append(f"{doc['verdict']}, no GPU evidence served")
    if doc["hostCcModes"]:
        parts.append(f"host says CC {', '.join(doc['hostCcModes'])}")
    return "; ".join(parts) or None


def td_json(status: StackStatus, td: TdStatus) -> dict[str, Any]:
    c = td.collateral
    return {
        "endpoint": td.endpoint,
        "host": td.host,
        "state": td.state,
        "reachable": td.reachable,
        "accepted": td.accepted,
        "tcbStatus": td.tcb_status,
        "advisories": list(td.advisories),
        "failures": list(td.failures),
        "tcbRecovery": list(td.recovery),
        "quoteSource": td.quote_source,
        "collateral": None
        if c is None
        else {
            "nextUpdate": iso_utc(c.next_update) if c.next_update is not None else None,
            "nextUpdateOf": c.next_update_of,
            "tcbEvaluationDataNumber": c.tcb_evaluation_data_number,
            "fmspc": c.fmspc,
            "source": c.source,
            "warning": collateral_warning(c, status.now, status.warn_days),
        },
        "gpu": _gpu_json(status, td),
    }


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
        "tds": {td.name: td_json(status, td) for td in status.tds},
        "warnings": status.warnings(),
    }


def render_table(status: StackStatus) -> str:
    last = status.last_update
    lines = [f"stack {status.stack}: {'READY' if status.ready else 'NOT READY'}"]
    if last is not None:
        lines.append(f"  last {last.kind}: {last.result} (started {last.started})")
    lines += [f"  note: {n}" for n in status.notes()]
    lines += [f"  warning: {w}" for w in status.warnings()]
    rows = [("HOST", "STEP", "STATE", "DETAIL")]
    for h in status.hosts:
        if h.unreachable is not None:
            rows.append((h.host, "ssh", "unreachable", h.unreachable))
            continue
        for s in h.steps:
            detail = s.problems or ("",)
            rows.append((h.host, s.step, SHOWN[s.state], detail[0]))
            rows += [("", "", "", more) for more in detail[1:]]
    lines.append("")
    lines += _columns(rows)
    if status.tds:
        lines.append("")
        lines += _columns(_td_rows(status))
    return "\n".join(lines)


def _columns(rows: list[tuple[str, str, str, str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip() for r in rows]


def _td_rows(status: StackStatus) -> list[tuple[str, str, str, str]]:
    """The TD section: per TD its endpoint, TCB, collateral and GPU, then each failure and fix."""
    rows = [("TD", "HOST", "STATE", "DETAIL")]
    for td in status.tds:
        detail = [td.endpoint or "no endpoint"]
        if td.tcb_status is not None:
            advisories = f" (advisories: {', '.join(td.advisories)})" if td.advisories else ""
            detail.append(f"TCB {td.tcb_status}{advisories}")
        c = td.collateral
        if c is not None:
            when = iso_utc(c.next_update) if c.next_update is not None else "unknown"
            detail.append(f"collateral nextUpdate {when}, tcbEvaluationDataNumber {c.tcb_evaluation_data_number}")
        gpu = _gpu_text(status, td)
        if gpu is not None:
            detail.append(f"GPU {gpu}")
        detail += list(td.failures)
        detail += [f"TCB below the newest UpToDate level: {r.split('; fix: ', 1)[0]}" for r in td.recovery]
        warning = collateral_warning(c, status.now, status.warn_days)
        if warning is not None:
            detail.append(f"warning: {warning}")
        rows.append((td.name, td.host or "-", TD_SHOWN[td.state], detail[0]))
        rows += [("", "", "", more) for more in detail[1:]]
    return rows
