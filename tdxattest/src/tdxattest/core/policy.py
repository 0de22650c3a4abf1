"""Appraisal policy for verified TDX quotes: a pure function of (verified facts, policy, time).

dcap-qvl verifies signatures, chains, CRLs and collateral and *computes* a TCB status; it does
not decide whether that status, the advisories or the TD's measurements are acceptable. This
module does, without any I/O: `evaluate(facts, policy, now)` returns a `Verdict` listing every
check with what was expected and what was seen. Loading a policy file (`load_policy`) and a
stack's `pins.json` (`load_pins_json`) are thin parsers into frozen dataclasses.

Failure names are stable strings (see docs/verification.md): `tcb.status_not_allowed`,
`tcb.out_of_date_grace_expired`, `tcb.advisory_not_allowed`, `tcb.evaluation_data_number_too_low`,
`tcb.qe_svn_too_low`, `tcb.pce_svn_too_low`, `quote.qe_vendor_not_intel`, `td.debug_enabled`,
`td.sept_ve_disable_missing`, `td.tee_tcb_svn_too_low`, `td.xfam_not_allowed`, `pin.<field>`,
`binding.report_data_mismatch`.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tdxattest.core.checks import CheckResult, Failure, Findings
from tdxattest.core.errors import InputError
from tdxattest.core.gpu_policy import DEFAULT_GPU_POLICY, GpuPolicy, gpu_policy_from_mapping
from tdxattest.core.pins import REGISTERS, RegisterPin, StackPins, parse_hex
from tdxattest.core.quote import INTEL_QE_VENDOR_ID

if TYPE_CHECKING:
    from tdxattest.core.quote import TdReport

TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)
OUT_OF_DATE_STATUSES = frozenset({"OutOfDate", "OutOfDateConfigurationNeeded"})
PIN_FIELDS = (
    "mrtd",
    "rtmr0",
    "rtmr1",
    "rtmr2",
    "rtmr3",
    "mrseam",
    "td_attributes",
    "xfam",
    "mrconfigid",
    "mrowner",
    "mrownerconfig",
)
PIN_SIZES = {**dict(REGISTERS.values()), "mrowner": 48, "mrownerconfig": 48}  # field -> bytes
DAY = 86400


@dataclass(frozen=True)
class Pin:
    """Accepted values for one field. `values is None` means not checked (with `reason`)."""

    values: tuple[bytes, ...] | None
    reason: str | None = None


# XFAM bits a TD may enable (XFAM_FIXED0: a 0 bit must be 0) and must enable (XFAM_FIXED1: x87 and
# SSE), as go-tdx-guest v0.3.1 validate.go holds every quote to (xfamFixed0 0x0006DBE7, xfamFixed1 0x3).
XFAM_FIXED0 = (0x0006DBE7).to_bytes(8, "little")
XFAM_FIXED1 = 0x3

# MRCONFIGID, MROWNER and MROWNERCONFIG are set by whoever creates the TD: all zero unless the stack
# sets them (the Kubernetes target's MRCONFIGID), so a host cannot tag a TD with an identity
# nobody asked for.
_ZERO48 = Pin((bytes(48),))


@dataclass(frozen=True)
class Pins:
    mrtd: Pin = Pin(None, "not pinned")
    rtmr0: Pin = Pin(None, "not pinned")
    rtmr1: Pin = Pin(None, "not pinned")
    rtmr2: Pin = Pin(None, "not pinned")
    rtmr3: Pin = Pin(None, "not pinned")
    mrseam: Pin = Pin(None, "not pinned")
    td_attributes: Pin = Pin(None, "not pinned")
    xfam: Pin = Pin(None, "not pinned")
    mrconfigid: Pin = _ZERO48
    mrowner: Pin = _ZERO48
    mrownerconfig: Pin = _ZERO48

    def merged(self, other: Pins, keys: frozenset[str]) -> Pins:
        """These pins with `other`'s entries for `keys` taking precedence."""
        return Pins(**{k: (getattr(other, k) if k in keys else getattr(self, k)) for k in PIN_FIELDS})


@dataclass(frozen=True)
class Policy:
    allowed_tcb_statuses: frozenset[str] = frozenset({"UpToDate"})
    out_of_date_grace_days: int | None = None
    allowed_advisories: frozenset[str] = frozenset()
    min_tcb_evaluation_data_number: int | None = None
    forbid_debug: bool = True
    require_sept_ve_disable: bool = True
    min_tee_tcb_svn: bytes | None = None
    min_qe_svn: int | None = None  # the QE report's ISV SVN (the quoting enclave that signed)
    min_pce_svn: int | None = None  # the PCK certificate's PCESVN
    require_intel_qe_vendor: bool = True  # the header's QE vendor id is Intel's
    xfam_allowed_mask: bytes | None = XFAM_FIXED0  # XFAM bits outside this mask are refused
    pins: Pins = Pins()
    gpu: GpuPolicy = DEFAULT_GPU_POLICY


DEFAULT_POLICY = Policy()


@dataclass(frozen=True)
class QuoteFacts:
    """What a successful dcap-qvl verification established (all fields from the verified result)."""

    tcb_status: str
    advisory_ids: tuple[str, ...]
    report: TdReport
    fmspc: str | None = None
    tcb_date: int | None = None  # unix time of the matched TCB level's tcbDate (needed for the grace period)
    tcb_evaluation_data_number: int | None = None
    # From the verified quote (None where these facts were not read from one): the QE report's ISV
    # SVN, the PCK leaf's PCESVN, and the header's QE vendor id.
    qe_svn: int | None = None
    pce_svn: int | None = None
    qe_vendor_id: bytes | None = None


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    tcb_status: str | None
    advisory_ids: tuple[str, ...]
    report: TdReport | None
    fmspc: str | None
    failures: tuple[Failure, ...]
    checks: tuple[CheckResult, ...]
    report_verified: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "tcb_status": self.tcb_status,
            "advisory_ids": list(self.advisory_ids),
            "fmspc": self.fmspc,
            "report_verified": self.report_verified,
            "td_report": self.report.as_dict() if self.report is not None else None,
            "failures": [f.as_dict() for f in self.failures],
            "checks": [c.as_dict() for c in self.checks],
        }


def _bits(value: int) -> str:
    return ", ".join(str(b) for b in range(64) if value >> b & 1)


def _svn_minimum(record: Findings, check: str, minimum: int | None, seen: int | None) -> None:
    if minimum is None:
        record.skip(check, "no minimum set")
    else:
        record(check, seen is not None and seen >= minimum, f">= {minimum}", seen)


def _iso(ts: int) -> str:
    import time

    # time.gmtime is several times cheaper than a datetime, and this runs on every verification.
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def evaluate(facts: QuoteFacts, policy: Policy, now: int, expected_report_data: bytes | None = None) -> Verdict:
    """Apply `policy` to verified `facts` at unix time `now`. Pure: no I/O, no clock."""
    record = Findings()

    # TCB status (Revoked is never acceptable; OutOfDate may be accepted within the grace period).
    status = facts.tcb_status
    allowed = sorted(policy.allowed_tcb_statuses - {"Revoked"})
    grace = policy.out_of_date_grace_days
    if status == "Revoked":
        record("tcb.status_not_allowed", False, allowed, status, "Revoked is always refused")
    elif (
        status in OUT_OF_DATE_STATUSES
        and grace is not None
        and (status in policy.allowed_tcb_statuses or status == "OutOfDate")
    ):
        if facts.tcb_date is None:
            record(
                "tcb.out_of_date_grace_expired",
                False,
                f"tcbDate + {grace} days >= now",
                "no TCB date",
                "the verifier did not report the TCB level's date",
            )
        else:
            deadline = facts.tcb_date + grace * DAY
            record(
                "tcb.out_of_date_grace_expired",
                now <= deadline,
                f"now <= {_iso(deadline)} (tcbDate {_iso(facts.tcb_date)} + {grace} days)",
                _iso(now),
                f"status {status} accepted only within the grace period",
            )
    else:
        record("tcb.status_not_allowed", status in policy.allowed_tcb_statuses, allowed, status)

    # Advisories: every advisory on the verdict must be allow-listed.
    bad = [a for a in facts.advisory_ids if a not in policy.allowed_advisories]
    record("tcb.advisory_not_allowed", not bad, sorted(policy.allowed_advisories), bad)

    if policy.min_tcb_evaluation_data_number is not None:
        n = facts.tcb_evaluation_data_number
        record(
            "tcb.evaluation_data_number_too_low",
            n is not None and n >= policy.min_tcb_evaluation_data_number,
            f">= {policy.min_tcb_evaluation_data_number}",
            n,
        )

    _svn_minimum(record, "tcb.qe_svn_too_low", policy.min_qe_svn, facts.qe_svn)
    _svn_minimum(record, "tcb.pce_svn_too_low", policy.min_pce_svn, facts.pce_svn)
    if not policy.require_intel_qe_vendor:
        record.skip("quote.qe_vendor_not_intel", "policy allows any QE vendor")
    elif facts.qe_vendor_id is None:
        record.skip("quote.qe_vendor_not_intel", "no quote header in these facts")
    else:
        seen_vendor = facts.qe_vendor_id.hex()
        record(
            "quote.qe_vendor_not_intel", facts.qe_vendor_id == INTEL_QE_VENDOR_ID, INTEL_QE_VENDOR_ID.hex(), seen_vendor
        )

    report = facts.report
    if policy.forbid_debug:
        record("td.debug_enabled", not report.debug, "DEBUG = 0", f"DEBUG = {int(report.debug)}")
    else:
        record.skip("td.debug_enabled", "policy allows DEBUG")
    if policy.require_sept_ve_disable:
        record(
            "td.sept_ve_disable_missing",
            report.sept_ve_disable,
            "SEPT_VE_DISABLE = 1",
            f"SEPT_VE_DISABLE = {int(report.sept_ve_disable)}",
        )
    else:
        record.skip("td.sept_ve_disable_missing", "not required by policy")

    if policy.min_tee_tcb_svn is not None:
        seen = report.tee_tcb_svn
        ok = all(s >= m for s, m in zip(seen, policy.min_tee_tcb_svn, strict=False))
        record("td.tee_tcb_svn_too_low", ok, f">= {policy.min_tee_tcb_svn.hex()} (each component)", seen.hex())
    else:
        record.skip("td.tee_tcb_svn_too_low", "no minimum set")

    if policy.xfam_allowed_mask is not None:
        xfam = int.from_bytes(report.xfam, "little")
        extra = xfam & ~int.from_bytes(policy.xfam_allowed_mask, "little")
        missing = XFAM_FIXED1 & ~xfam
        problems = [f"bits {_bits(extra)} outside the mask"] if extra else []
        problems += [f"bits {_bits(missing)} (x87, SSE) not set"] if missing else []
        record(
            "td.xfam_not_allowed",
            not problems,
            f"XFAM within mask {policy.xfam_allowed_mask.hex()}, bits 0 and 1 set",
            report.xfam.hex(),
            "; ".join(problems) or None,
        )
    else:
        record.skip("td.xfam_not_allowed", "no XFAM mask set")

    for name in PIN_FIELDS:
        pin: Pin = getattr(policy.pins, name)
        seen = getattr(report, name)
        if pin.values is None:
            record.skip(f"pin.{name}", pin.reason or "not pinned", seen.hex())
            continue
        ok = any(hmac.compare_digest(seen, v) for v in pin.values)
        expected = pin.values[0].hex() if len(pin.values) == 1 else [v.hex() for v in pin.values]
        record(f"pin.{name}", ok, expected, seen.hex(), None if ok or name != "mrseam" else _modules(seen, pin.values))

    if expected_report_data is not None:
        record(
            "binding.report_data_mismatch",
            hmac.compare_digest(report.report_data, expected_report_data),
            expected_report_data.hex(),
            report.report_data.hex(),
        )
    else:
        record.skip("binding.report_data_mismatch", "no expected REPORTDATA given", report.report_data.hex())

    return Verdict(
        accepted=not record.failures,
        tcb_status=status,
        advisory_ids=tuple(facts.advisory_ids),
        report=report,
        fmspc=facts.fmspc,
        failures=tuple(record.failures),
        checks=tuple(record.checks),
    )


# --- loading ----------------------------------------------------------------------------------


def parse_pin(name: str, value: Any, reason: str | None = None) -> Pin:
    """A pin from YAML/JSON: null (not checked), one hex string, or a list of accepted hex strings."""
    if value is None:
        return Pin(None, reason or "pin is null (not checked)")
    values = value if isinstance(value, list) else [value]
    if not values:
        raise InputError(f"pins.{name}: a hex string, a non-empty list or null", "[]")
    return Pin(tuple(parse_hex(v, PIN_SIZES[name], f"pins.{name}") for v in values))


_TOP_KEYS = {"version", "tcb", "td", "pins", "gpu"}
_TCB_KEYS = {
    "allowed_statuses",
    "out_of_date_grace_days",
    "allowed_advisories",
    "min_evaluation_data_number",
    "min_qe_svn",
    "min_pce_svn",
    "require_intel_qe_vendor",
}
_TD_KEYS = {"forbid_debug", "require_sept_ve_disable", "min_tee_tcb_svn", "xfam_allowed_mask"}


def _check_keys(section: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise InputError(f"{where}: a mapping", type(section).__name__)
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise InputError(f"{where}: keys among {sorted(allowed)}", f"unknown key(s) {unknown}")
    return section


def policy_from_mapping(doc: Mapping[str, Any] | None) -> Policy:
    """Build a Policy from a parsed YAML document. Missing keys take the safe defaults."""
    doc = _check_keys(doc, _TOP_KEYS, "policy")
    if doc.get("version", 1) != 1:
        raise InputError("policy: version 1", repr(doc.get("version")))
    tcb = _check_keys(doc.get("tcb"), _TCB_KEYS, "policy.tcb")
    td = _check_keys(doc.get("td"), _TD_KEYS, "policy.td")
    pins = _check_keys(doc.get("pins"), set(PIN_FIELDS), "policy.pins")
    statuses = tcb.get("allowed_statuses", ["UpToDate"])
    if not isinstance(statuses, list) or any(s not in TCB_STATUSES for s in statuses):
        raise InputError(f"policy.tcb.allowed_statuses: a list of {list(TCB_STATUSES)}", repr(statuses))
    if "Revoked" in statuses:
        raise InputError("policy.tcb.allowed_statuses without Revoked", repr(statuses))
    grace = tcb.get("out_of_date_grace_days")
    if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool) or grace < 0):
        raise InputError("policy.tcb.out_of_date_grace_days: a whole number of days >= 0 or null", repr(grace))
    advisories = tcb.get("allowed_advisories", []) or []
    if not isinstance(advisories, list) or not all(isinstance(a, str) for a in advisories):
        raise InputError("policy.tcb.allowed_advisories: a list of advisory ids", repr(advisories))
    min_eval = tcb.get("min_evaluation_data_number")
    if min_eval is not None and (not isinstance(min_eval, int) or isinstance(min_eval, bool)):
        raise InputError("policy.tcb.min_evaluation_data_number: an integer or null", repr(min_eval))
    svn_minimums = {}
    for key in ("min_qe_svn", "min_pce_svn"):
        value = tcb.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF):
            raise InputError(f"policy.tcb.{key}: an integer 0..65535 or null", repr(value)[:40])
        svn_minimums[key] = value
    if not isinstance(tcb.get("require_intel_qe_vendor", True), bool):
        raise InputError("policy.tcb.require_intel_qe_vendor: true or false", repr(tcb["require_intel_qe_vendor"]))
    for key in ("forbid_debug", "require_sept_ve_disable"):
        if not isinstance(td.get(key, True), bool):
            raise InputError(f"policy.td.{key}: true or false", repr(td[key]))
    svn = td.get("min_tee_tcb_svn")
    mask = td.get("xfam_allowed_mask", XFAM_FIXED0.hex())
    return Policy(
        allowed_tcb_statuses=frozenset(statuses),
        out_of_date_grace_days=grace,
        allowed_advisories=frozenset(advisories),
        min_tcb_evaluation_data_number=min_eval,
        forbid_debug=td.get("forbid_debug", True),
        require_sept_ve_disable=td.get("require_sept_ve_disable", True),
        min_tee_tcb_svn=None if svn is None else parse_hex(svn, 16, "policy.td.min_tee_tcb_svn"),
        min_qe_svn=svn_minimums["min_qe_svn"],
        min_pce_svn=svn_minimums["min_pce_svn"],
        require_intel_qe_vendor=tcb.get("require_intel_qe_vendor", True),
        xfam_allowed_mask=None if mask is None else parse_hex(mask, 8, "policy.td.xfam_allowed_mask"),
        pins=Pins(**{k: parse_pin(k, pins[k]) for k in pins}),
        gpu=gpu_policy_from_mapping(doc.get("gpu")),
    )


def load_policy(path: str) -> Policy:
    from tdxattest.core.files import read_bytes
    from tdxattest.core.safe_yaml import YamlRefused, load_yaml

    data = read_bytes(path)
    try:
        doc = load_yaml(data)
    except YamlRefused as exc:
        raise InputError("a YAML policy (UTF-8, no key twice)", str(exc)[:200], file=path) from None
    try:
        return policy_from_mapping(doc)
    except InputError as exc:
        raise exc.with_file(path) from None


def _modules(seen: bytes, allowed: tuple[bytes, ...]) -> str:
    """A refused MRSEAM named by TDX module release (Intel's published table)."""
    from tdxattest.core.tdx_modules import module_name

    pinned = ", ".join(module_name(v.hex()) for v in allowed)
    return f"the quote comes from {module_name(seen.hex())}; the pins allow {pinned}"


def pins_from_stack(stack: StackPins, accept_mrtd_candidates: bool = False) -> tuple[Pins, frozenset[str]]:
    """Policy pins from the stack's `pins`: the pins and the fields it sets (the registers the
    document names, and MRSEAM from its `tdxModules`). A null register stays not checked, with the
    stack's reason. With `accept_mrtd_candidates`, MRTD accepts either page-add-order candidate."""
    out: dict[str, Pin] = {}
    for name, _ in REGISTERS.values():
        pin: RegisterPin | None = getattr(stack, name)
        if pin is None:
            continue
        value: str | list[str] | None = pin.value
        if name == "mrtd" and accept_mrtd_candidates and stack.mrtd_candidates is not None:
            value = list(stack.mrtd_candidates.values()) or value
        out[name] = parse_pin(name, value, f"pins.json: {pin.reason or 'null (not pinned)'}")
    if stack.tdx_modules:
        out["mrseam"] = Pin(tuple(bytes.fromhex(v) for v in stack.tdx_modules.values()))
    return Pins(**out), frozenset(out)


def pins_from_stack_output(doc: object, accept_mrtd_candidates: bool = False) -> tuple[Pins, frozenset[str]]:
    """`pins_from_stack` of a `pins` JSON document (docs/pins.md)."""
    return pins_from_stack(StackPins.from_json(doc), accept_mrtd_candidates)


def read_stack_pins(path: str) -> StackPins:
    """A stack's `pins.json` (docs/pins.md); InputError names the file and the key."""
    import json

    from tdxattest.core.files import read_bytes

    data = read_bytes(path)
    try:
        doc = json.loads(data)
    except ValueError as exc:  # not JSON, or not UTF-8
        raise InputError("JSON", str(exc), file=path) from None
    try:
        return StackPins.from_json(doc)
    except InputError as exc:
        raise exc.with_file(path) from None


def load_pins_json(path: str, accept_mrtd_candidates: bool = False) -> tuple[Pins, frozenset[str]]:
    return pins_from_stack(read_stack_pins(path), accept_mrtd_candidates)


def with_pins_json(policy: Policy, path: str, accept_mrtd_candidates: bool = False) -> Policy:
    """`policy` with a stack's `pins.json` merged into its pins (and its GPU expectation into the
    GPU policy)."""
    return with_stack_pins(policy, read_stack_pins(path), accept_mrtd_candidates)


def with_stack_pins(policy: Policy, stack: StackPins, accept_mrtd_candidates: bool = False) -> Policy:
    """`policy` with the stack's registers (they take precedence) and, for a stack whose workload
    pins GPUs, GPU evidence required with the stack's count and VBIOS/driver pins. The policy file
    keeps its reference measurements and root; `mode: devtools` (the dev stack) relaxes the GPU
    policy as `gpu.dev` does."""
    from dataclasses import replace

    pins, keys = pins_from_stack(stack, accept_mrtd_candidates)
    policy = replace(policy, pins=policy.pins.merged(pins, keys))
    g = stack.gpu
    if g is not None:
        gpu = replace(
            policy.gpu,
            required=True,
            count=g.count,
            vbios=g.vbios,
            driver=g.driver,
            dev=policy.gpu.dev or g.mode == "devtools",
        )
        policy = replace(policy, gpu=gpu)
    return policy
