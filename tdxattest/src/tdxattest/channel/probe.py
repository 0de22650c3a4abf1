"""Attest one endpoint once, the way the verifying proxy attests every upstream connection, and say
what was seen: the verdict, the TCB status and advisories, the collateral it was judged with (its
earliest nextUpdate and TCB evaluation data number), the GPU verdict and CC mode, and, where the
platform is below the newest UpToDate TCB level of that collateral, which part needs the update.

    appraiser = stack_appraiser(pins, pccs="https://pccs.example:8081")
    seen = asyncio.run(probe("https://10.0.0.2:8443", appraiser))
    seen.accepted, seen.failures, seen.collateral, seen.recovery, seen.gpu

Nothing here judges differently from the proxy: the connection is `UpstreamConnection.open`, the
attestation `UpstreamConnection.attest` (fresh nonce, quote bound to this connection's TLS key,
`appraise`, `appraise_gpus`, `dev_test_appraiser` for the dev stack's TEST root). The appraiser is
only observed: a subclass that records the quote, the collateral and the verdicts it produced, so
the report can show more than the proxy's pass/refuse. `python -m components status` uses it.

`tcb_recovery` is pure: the TCB info's levels against the quote's SVNs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from tdxattest.channel.proxy import AttestationFailed, ProxyConfig, UpstreamConnection
from tdxattest.core.checks import Failure
from tdxattest.core.errors import InputError
from tdxattest.core.gpu_policy import EvidenceDoc, GpuVerdict
from tdxattest.core.pins import StackPins
from tdxattest.core.policy import Verdict
from tdxattest.dcap.appraise import Appraisal, Appraiser, CollateralSource
from tdxattest.dcap.collateral import Collateral

UNREACHABLE = "upstream.unreachable"
CONNECT_TIMEOUT_S = 10.0

# Intel's TCB info names each component (`category`, `type`) in production collateral; where it
# does not (older versions, the TEST PKI), these are the TDX components' documented meanings.
_TEE_TCB_NAMES = {0: "TDX module", 1: "TDX module", 2: "TDX late microcode update"}

PLATFORM_FIX = (
    "update the BIOS / CPU microcode to the release with the platform's newest TCB (Intel's TCB recovery "
    "for this FMSPC; on a rented host, ask the provider), reboot, then let the PCCS fetch the PCK certificate "
    "for the new TCB (pulumi up runs the dcap step's registration)"
)
MICROCODE_FIX = (
    "update the CPU microcode (a BIOS update, or the OS's late microcode load) to the release the newest "
    "UpToDate TCB level names, then reboot the host"
)
MODULE_FIX = (
    "update the TDX module to the release the newest UpToDate TCB level names (a BIOS update or the OS's "
    "TDX module update), pin it in platform.tdxModule, then pulumi up"
)
QE_FIX = "update Intel's DCAP packages on the host (the TD quoting enclave; pins in firmware/dcap.yaml), then pulumi up"


# -- what the platform reports, and what a TCB recovery asks of it (pure) ------------------------


@dataclass(frozen=True)
class PlatformTcb:
    """The SVNs a quote carries that Intel's TCB levels are matched against."""

    cpusvn: tuple[int, ...]  # the PCK leaf's 16 SGX TCB components
    pcesvn: int
    tee_tcb_svn: tuple[int, ...]  # the TD report's 16 bytes
    qe_svn: int | None = None  # the QE report's ISV SVN


@dataclass(frozen=True)
class TcbFix:
    """One part of the platform below the newest UpToDate TCB level, and what raises it."""

    part: str  # platform | microcode | tdx_module | quoting_enclave
    below: tuple[str, ...]  # each "NAME SEEN < WANTED"
    fix: str

    def text(self) -> str:
        return f"{', '.join(self.below)}; fix: {self.fix}"


def _svns(components: Any) -> list[tuple[int, str | None]] | None:
    if not isinstance(components, list):
        return None
    out = []
    for c in components:
        if not isinstance(c, Mapping) or not isinstance(c.get("svn", 0), int):
            return None
        kind = c.get("type")
        out.append((int(c.get("svn", 0)), kind if isinstance(kind, str) and kind else None))
    return out


def _newest_up_to_date(levels: Any) -> Mapping[str, Any] | None:
    """The first (newest) UpToDate level of a TCB info / QE identity `tcbLevels` list."""
    if not isinstance(levels, list):
        return None
    return next((lv for lv in levels if isinstance(lv, Mapping) and lv.get("tcbStatus") == "UpToDate"), None)


def tcb_recovery(
    tcb_info: Mapping[str, Any], platform: PlatformTcb, qe_identity: Mapping[str, Any] | None = None
) -> tuple[TcbFix, ...]:
    """What keeps `platform` below the newest UpToDate level of `tcb_info` (and of `qe_identity`):
    the PCK's CPUSVN components or PCESVN (a BIOS / microcode update), TEE_TCB_SVN's microcode
    component (a microcode update), the TDX module's SVN (a TDX module update, judged by the TCB
    info's `tdxModuleIdentities` when TEE_TCB_SVN[1] names a module version, else by TEE_TCB_SVN[0:2]
    of the level), the QE's ISV SVN (a DCAP package update). Empty when nothing is below, or when
    the collateral has no UpToDate level to compare with."""
    out: list[TcbFix] = []
    newest = _newest_up_to_date(tcb_info.get("tcbLevels"))
    tcb = newest.get("tcb") if newest is not None else None
    if isinstance(tcb, Mapping):
        sgx = _svns(tcb.get("sgxtcbcomponents")) or []
        below = [
            f"CPUSVN[{i}]{f' ({kind})' if kind else ''} {have} < {want}"
            for i, ((want, kind), have) in enumerate(zip(sgx, platform.cpusvn, strict=False))
            if have < want
        ]
        pcesvn = tcb.get("pcesvn")
        if isinstance(pcesvn, int) and platform.pcesvn < pcesvn:
            below.append(f"PCESVN {platform.pcesvn} < {pcesvn}")
        if below:
            out.append(TcbFix("platform", tuple(below), PLATFORM_FIX))
        tee = platform.tee_tcb_svn
        module_version = len(tee) > 1 and tee[1] > 0  # then TEE_TCB_SVN[0:2] are judged by the module's identity
        microcode: list[str] = []
        module: list[str] = []
        for i, ((want, kind), have) in enumerate(zip(_svns(tcb.get("tdxtcbcomponents")) or [], tee, strict=False)):
            if have >= want or (module_version and i < 2):
                continue
            name = kind or _TEE_TCB_NAMES.get(i)
            line = f"TEE_TCB_SVN[{i}]{f' ({name})' if name else ''} {have} < {want}"
            (microcode if name and "microcode" in name.lower() else module).append(line)
        if module_version:
            module += _module_below(tcb_info, tee)
        if microcode:
            out.append(TcbFix("microcode", tuple(microcode), MICROCODE_FIX))
        if module:
            out.append(TcbFix("tdx_module", tuple(module), MODULE_FIX))
    if qe_identity is not None and platform.qe_svn is not None:
        qe_level = _newest_up_to_date(qe_identity.get("tcbLevels"))
        qe_want = (qe_level.get("tcb") or {}).get("isvsvn") if qe_level is not None else None
        if isinstance(qe_want, int) and platform.qe_svn < qe_want:
            out.append(TcbFix("quoting_enclave", (f"QE ISV SVN {platform.qe_svn} < {qe_want}",), QE_FIX))
    return tuple(out)


def _module_below(tcb_info: Mapping[str, Any], tee: Sequence[int]) -> list[str]:
    """The TDX module's SVN (TEE_TCB_SVN[0]) against the newest UpToDate level of its identity
    (`TDX_<major version, 2 hex digits>` in `tdxModuleIdentities`)."""
    wanted_id = f"TDX_{tee[1]:02X}"
    identities = tcb_info.get("tdxModuleIdentities")
    if not isinstance(identities, list):
        return []
    ident = next((m for m in identities if isinstance(m, Mapping) and str(m.get("id", "")).upper() == wanted_id), None)
    level = _newest_up_to_date(ident.get("tcbLevels")) if ident is not None else None
    want = (level.get("tcb") or {}).get("isvsvn") if level is not None else None
    if isinstance(want, int) and tee[0] < want:
        return [f"TDX module {wanted_id} SVN (TEE_TCB_SVN[0]) {tee[0]} < {want}"]
    return []


# -- what one attestation showed ---------------------------------------------------------------


@dataclass(frozen=True)
class CollateralInfo:
    """The collateral a quote was judged with."""

    next_update: int | None  # the earliest nextUpdate of its pieces (unix time)
    next_updates: Mapping[str, int]  # tcb_info, qe_identity, root_ca_crl, pck_crl
    tcb_evaluation_data_number: int | None
    fmspc: str | None
    source: str | None  # a file, the cache directory, the dev gateway's TEST PKI


@dataclass(frozen=True)
class GpuInfo:
    """The GPU verdict and the CC mode the served evidence states."""

    accepted: bool
    served: bool  # False: the TD served no GPU evidence (the verdict says whether that was allowed)
    count: int
    cc_mode: str | None  # on | devtools | off, from the evidence
    environment: str | None  # prod | sim | unavailable
    vbios: tuple[str, ...] = ()
    driver: tuple[str, ...] = ()


@dataclass(frozen=True)
class Probe:
    endpoint: str
    reachable: bool
    accepted: bool
    failures: tuple[Failure, ...] = ()
    tcb_status: str | None = None
    advisories: tuple[str, ...] = ()
    collateral: CollateralInfo | None = None
    recovery: tuple[TcbFix, ...] = ()
    gpu: GpuInfo | None = None
    quote_source: str | None = None  # what the gateway said signs its quotes (tsm, software-test-pki)


@dataclass
class _Record:
    quote: bytes | None = None
    verdict: Verdict | None = None
    collateral: Collateral | None = None
    where: Mapping[str, Any] | None = None
    gpu_doc: EvidenceDoc | None = None
    gpu_verdict: GpuVerdict | None = None


@dataclass
class _RecordingSource:
    inner: CollateralSource
    record: _Record

    def collateral_for(self, quote: bytes, now: int) -> tuple[Collateral, dict[str, Any]]:
        collateral, info = self.inner.collateral_for(quote, now)
        self.record.collateral = collateral
        return collateral, info


@dataclass
class _ObservedAppraiser(Appraiser):
    """The caller's Appraiser, judging exactly as before, that also records what it saw. A field
    and a `__post_init__`, so that `dataclasses.replace` (the proxy's `dev_test_appraiser`) keeps
    recording into the same record."""

    record: _Record = field(default_factory=_Record)

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        if not isinstance(self.collateral, _RecordingSource):
            self.collateral = _RecordingSource(self.collateral, self.record)

    # Whatever the base methods take (their signatures may grow optional arguments), passed through.
    def appraise(self, quote: bytes, *args: Any, **kwargs: Any) -> Appraisal:
        appraisal = super().appraise(quote, *args, **kwargs)
        self.record.quote, self.record.verdict, self.record.where = (
            bytes(quote),
            appraisal.verdict,
            appraisal.collateral,
        )
        return appraisal

    def appraise_gpus(self, doc: EvidenceDoc | None, *args: Any, **kwargs: Any) -> GpuVerdict:
        verdict = super().appraise_gpus(doc, *args, **kwargs)
        self.record.gpu_doc, self.record.gpu_verdict = doc, verdict
        return verdict


def _observed(appraiser: Appraiser) -> _ObservedAppraiser:
    given = {f.name: getattr(appraiser, f.name) for f in fields(appraiser) if f.init}
    return _ObservedAppraiser(**given, record=_Record())


def collateral_info(collateral: Collateral, where: Mapping[str, Any] | None = None) -> CollateralInfo:
    """The earliest nextUpdate of the collateral's pieces and its TCB evaluation data number."""
    from tdxattest.dcap.collateral import parse_iso_ts

    nexts: dict[str, int] = {}
    try:
        nexts["tcb_info"] = parse_iso_ts(str(collateral.tcb_info["nextUpdate"]))
    except (KeyError, TypeError, ValueError):
        pass
    try:
        nexts["qe_identity"] = parse_iso_ts(str(json.loads(collateral.dcap.qe_identity)["nextUpdate"]))
    except (KeyError, TypeError, ValueError, AttributeError):
        pass
    from cryptography import x509

    for name in ("root_ca_crl", "pck_crl"):
        try:
            crl = x509.load_der_x509_crl(bytes(getattr(collateral.dcap, name)))
            if crl.next_update_utc is not None:
                nexts[name] = int(crl.next_update_utc.timestamp())
        except (TypeError, ValueError, AttributeError):
            pass
    number = collateral.evaluation_data_number
    source = (where or {}).get("cache_dir") or collateral.source
    return CollateralInfo(
        next_update=min(nexts.values()) if nexts else None,
        next_updates=nexts,
        tcb_evaluation_data_number=number if isinstance(number, int) else None,
        fmspc=collateral.fmspc,
        source=str(source) if source else None,
    )


def platform_tcb(quote: bytes) -> PlatformTcb | None:
    """The SVNs of `quote` (PCK leaf and TD report), or None when it does not carry them."""
    from tdxattest.core.quote import quote_pck_tcb, quote_qe_isv_svn, read_td_report

    try:
        pck = quote_pck_tcb(quote)
        tee = read_td_report(quote).tee_tcb_svn
        qe_svn = quote_qe_isv_svn(quote)
    except (InputError, ValueError, TypeError, IndexError):
        return None
    if pck is None:
        return None
    return PlatformTcb(tuple(pck[0]), int(pck[1]), tuple(tee), qe_svn)


def _recovery(record: _Record) -> tuple[TcbFix, ...]:
    if record.quote is None or record.collateral is None:
        return ()
    platform = platform_tcb(record.quote)
    if platform is None:
        return ()
    try:
        qe_identity = json.loads(record.collateral.dcap.qe_identity)
    except (TypeError, ValueError, AttributeError):
        qe_identity = None
    return tcb_recovery(record.collateral.tcb_info, platform, qe_identity if isinstance(qe_identity, dict) else None)


def _gpu_info(record: _Record) -> GpuInfo | None:
    verdict = record.gpu_verdict
    if verdict is None:
        return None
    doc = record.gpu_doc
    cc = doc.cc if doc is not None else None
    mode = None if cc is None else ("off" if not cc.enabled else "devtools" if cc.devtools else "on")
    return GpuInfo(
        accepted=verdict.accepted,
        served=doc is not None,
        count=len(doc.gpus) if doc is not None else 0,
        cc_mode=mode,
        environment=cc.environment if cc is not None else None,
        vbios=tuple(sorted({str(g.get("vbios_version") or "?") for g in verdict.gpus})),
        driver=tuple(sorted({str(g.get("driver_version") or "?") for g in verdict.gpus})),
    )


async def probe(
    endpoint: str, appraiser: Appraiser, *, dev_test_root: bool = False, connect_timeout_s: float = CONNECT_TIMEOUT_S
) -> Probe:
    """Open one TLS connection to the gateway at `endpoint`, attest it once as the proxy does, close
    it, and report. Never raises for what the endpoint does: an unreachable gateway is
    `reachable=False` with the `upstream.unreachable` failure, a refusal names its checks."""
    try:
        config = ProxyConfig(upstream=endpoint, connect_timeout_s=connect_timeout_s, dev_test_root=dev_test_root)
    except InputError as exc:
        return Probe(endpoint, False, False, (Failure("upstream.malformed", exc.expected, exc.seen),))
    try:
        conn = await UpstreamConnection.open(config)
    except AttestationFailed as exc:
        return Probe(endpoint, False, False, exc.failures)
    observed = _observed(appraiser)
    failures: tuple[Failure, ...] = ()
    quote_source = None
    try:
        attestation = await conn.attest(observed)
        quote_source = attestation.quote_source
    except AttestationFailed as exc:
        failures = exc.failures
    except Exception as exc:  # anything unforeseen is a refusal naming it, never a traceback
        failures = (Failure("verifier.error", "a verdict", f"{type(exc).__name__}: {exc}"[:200]),)
    finally:
        conn.close()
    rec = observed.record
    verdict = rec.verdict
    return Probe(
        endpoint=endpoint,
        reachable=True,
        accepted=not failures,
        failures=failures,
        tcb_status=verdict.tcb_status if verdict is not None else None,
        advisories=tuple(verdict.advisory_ids) if verdict is not None else (),
        collateral=collateral_info(rec.collateral, rec.where) if rec.collateral is not None else None,
        recovery=_recovery(rec),
        gpu=_gpu_info(rec),
        quote_source=quote_source,
    )


async def probe_all(
    endpoints: Mapping[str, str], appraiser: Appraiser, *, dev_test_root: bool = False
) -> dict[str, Probe]:
    """`probe` every endpoint at once (name -> URL); the answers in the same order."""
    names = list(endpoints)
    found = await asyncio.gather(*(probe(endpoints[n], appraiser, dev_test_root=dev_test_root) for n in names))
    return dict(zip(names, found, strict=True))


# -- the appraiser a stack's TDs are judged with ---------------------------------------------------


def stack_appraiser(
    pins: StackPins,
    *,
    collateral: str | None = None,
    pccs: str | None = None,
    cache_dir: str | None = None,
    root_ca: str | None = None,
    policy_path: str | None = None,
    rim_service: str | None = None,
    ocsp_responder: str | None = None,
    dev_test_root: bool = False,
) -> Appraiser:
    """The Appraiser `tdxattest proxy` builds from the same options (tdxattest/cli/_verification.py),
    with the stack's `pins` already read. Raises InputError for options that do not fit together or
    files that cannot be read."""
    from tdxattest.core.policy import DEFAULT_POLICY, load_policy, with_stack_pins
    from tdxattest.dcap.appraise import appraiser_for

    if dev_test_root:
        if root_ca:
            raise InputError("--accept-dev-test-root without --root-ca (the TEST root comes from the gateway)", root_ca)
        if pins.tdx:
            raise InputError(
                "--accept-dev-test-root only for TDs without TDX (the stack's pins say `tdx: false`: the dev "
                "stack's workload.td.tdx: false); give --pccs or --collateral instead",
                "pins that say tdx: true",
            )
    elif not (collateral or pccs):
        raise InputError("one of --pccs, --collateral or --accept-dev-test-root", "none")
    policy = with_stack_pins(load_policy(policy_path) if policy_path else DEFAULT_POLICY, pins)
    return appraiser_for(
        policy,
        collateral_path=collateral,
        pccs=pccs,
        cache_dir=cache_dir,
        root_ca_path=root_ca,
        rim_service=rim_service,
        ocsp_responder=ocsp_responder,
    )
