"""GPU evidence as the attested gateway serves it, and the client's policy over it.

    doc = parse_evidence_doc(response["gpu_evidence"])     # the wire form (below), or InputError
    doc.digest()                                          # what the TD quote's REPORTDATA binds
    verdict = evaluate_gpus(doc, expected_nonce, policy.gpu, now)

Wire form (version 2): {"version": 2, "nonce": 64 hex, "cc": {"environment", "enabled", "devtools"},
"gpus": [{"evidence": SPDM request+response hex, "certificate": PEM chain}, ...]}. The TD fills it
from NVML over a nonce derived from the client's nonce and the TLS key (`channel.binding.gpu_nonce`),
so a report cannot be replayed on another connection, and binds `digest()` into the quote, so the
set of reports and the CC state cannot be swapped (`channel.binding.expected_report_data`).

`evaluate_gpus` is pure (no I/O, the clock is an argument) and names every failed check:
`gpu.evidence_missing`, `gpu.count_mismatch`, `gpu.duplicate_device`, the evidence checks of
`core.gpu_evidence` (`gpu.chain_invalid`, `gpu.nonce_mismatch`, ...), `gpu.cc_off`,
`gpu.cc_devtools`, `gpu.cc_environment`, `gpu.vbios_not_pinned`, `gpu.driver_not_pinned`,
`gpu.reference_missing` and `gpu.measurement_mismatch`. The versions are the ones the GPU signed
(its opaque data), never the unsigned fields a collector may add.

Reference values: measurement block index -> accepted values, from a golden set recorded from a
known-good report of the pinned VBIOS and driver (policy `gpu.reference`), else from NVIDIA's signed
RIMs for the driver and VBIOS the GPU reports (`core.rim`, through the reference source the caller
provides: `dcap.rim_store`). With neither, a verifier outside dev refuses (`gpu.reference_missing`).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tdxattest.core.checks import CheckResult, Failure, Findings
from tdxattest.core.errors import InputError
from tdxattest.core.gpu_evidence import (
    GpuEvidence,
    GpuEvidenceError,
    normalise_version,
    verify_gpu_evidence,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from cryptography import x509

    from tdxattest.core.gpu_evidence import GpuReport

    # A report -> (its reference values by block, where they come from); raises GpuEvidenceError
    # naming the check. NVIDIA's RIMs through the cache: dcap.rim_store.RimStore.reference.
    ReferenceSource = Callable[[GpuReport], tuple[Mapping[int, tuple[bytes, ...]], str]]
    # A verified device chain (leaf first) -> its CA certificates' OCSP statuses; raises
    # GpuEvidenceError (`gpu.cert_revoked`, `gpu.ocsp_*`). dcap.ocsp_cache.OcspCache.check_chain.
    StatusSource = Callable[[list[x509.Certificate]], object]

DOC_VERSION = 2
NONCE_LEN = 32
MAX_GPUS = 64  # bounds the work one attestation answer can ask of the verifier
MAX_REPORT_HEX = 2 * 0x2000  # NVML_CC_GPU_ATTESTATION_REPORT_SIZE
MAX_CHAIN_PEM = 0x1400 * 2  # NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE, with room for PEM line breaks
DIGEST_TAG = b"tdxattest/gpu-evidence/v1\x00"


@dataclass(frozen=True)
class CcState:
    environment: str  # prod | sim | unavailable
    enabled: bool
    devtools: bool

    def as_dict(self) -> dict[str, Any]:
        return {"environment": self.environment, "enabled": self.enabled, "devtools": self.devtools}


@dataclass(frozen=True)
class GpuItem:
    report: bytes
    chain_pem: bytes


@dataclass(frozen=True)
class EvidenceDoc:
    nonce: bytes
    cc: CcState
    gpus: tuple[GpuItem, ...]

    def digest(self) -> bytes:
        """SHA-256 over the nonce, the CC state and every (report, chain), length-prefixed."""
        h = hashlib.sha256(DIGEST_TAG)
        env = self.cc.environment.encode()
        h.update(self.nonce + struct.pack("<H", len(env)) + env + bytes([self.cc.enabled, self.cc.devtools]))
        h.update(struct.pack("<I", len(self.gpus)))
        for g in self.gpus:
            h.update(struct.pack("<I", len(g.report)) + g.report + struct.pack("<I", len(g.chain_pem)) + g.chain_pem)
        return h.digest()

    def to_json(self) -> dict[str, Any]:
        return {
            "version": DOC_VERSION,
            "nonce": self.nonce.hex(),
            "cc": self.cc.as_dict(),
            "gpus": [{"evidence": g.report.hex(), "certificate": g.chain_pem.decode()} for g in self.gpus],
        }


def parse_evidence_doc(obj: object, where: str = "gpu_evidence") -> EvidenceDoc:
    """The wire form, bounded before anything is decoded. Raises InputError naming the key."""
    if not isinstance(obj, dict) or obj.get("version") != DOC_VERSION:
        seen = obj.get("version") if isinstance(obj, dict) else type(obj).__name__
        raise InputError(f"{where}: an object with version {DOC_VERSION}", repr(seen)[:80])
    try:
        nonce = bytes.fromhex(obj.get("nonce", ""))
    except (TypeError, ValueError):
        nonce = b""
    if len(nonce) != NONCE_LEN:
        raise InputError(f"{where}.nonce: {NONCE_LEN} bytes of hex", repr(obj.get("nonce"))[:80])
    cc = obj.get("cc")
    if (
        not isinstance(cc, dict)
        or not isinstance(cc.get("environment"), str)
        or len(cc["environment"]) > 32
        or not isinstance(cc.get("enabled"), bool)
        or not isinstance(cc.get("devtools"), bool)
    ):
        raise InputError(f"{where}.cc: {{environment: str, enabled: bool, devtools: bool}}", repr(cc)[:120])
    gpus = obj.get("gpus")
    if not isinstance(gpus, list) or not 0 < len(gpus) <= MAX_GPUS:
        raise InputError(f"{where}.gpus: a list of 1..{MAX_GPUS} GPUs", repr(gpus)[:80])
    items = []
    for i, g in enumerate(gpus):
        ev = g.get("evidence") if isinstance(g, dict) else None
        cert = g.get("certificate") if isinstance(g, dict) else None
        if not isinstance(ev, str) or not 0 < len(ev) <= MAX_REPORT_HEX:
            raise InputError(f"{where}.gpus[{i}].evidence: at most {MAX_REPORT_HEX} hex digits", repr(ev)[:80])
        if not isinstance(cert, str) or not 0 < len(cert) <= MAX_CHAIN_PEM or not cert.isascii():
            raise InputError(f"{where}.gpus[{i}].certificate: a PEM chain of at most {MAX_CHAIN_PEM}", repr(cert)[:80])
        try:
            report = bytes.fromhex(ev)
        except ValueError:
            raise InputError(f"{where}.gpus[{i}].evidence: hex", repr(ev[:40])) from None
        items.append(GpuItem(report, cert.encode()))
    return EvidenceDoc(nonce, CcState(cc["environment"], cc["enabled"], cc["devtools"]), tuple(items))


@dataclass(frozen=True)
class GpuPolicy:
    """What GPU evidence must show. `dev` relaxes CC devtools, a non-prod CC environment and missing
    pins or reference values to "not checked" (the dev stack only)."""

    required: bool = False
    count: int | None = None
    vbios: tuple[str, ...] = ()
    driver: tuple[str, ...] = ()
    reference: Mapping[int, tuple[bytes, ...]] = field(default_factory=dict)
    reference_source: str | None = None
    root_pem: bytes | None = None  # None: NVIDIA's Device Identity CA, pinned by fingerprint
    rim_root_pem: bytes | None = None  # None: NVIDIA's CoRIM signing Root CA, pinned by fingerprint
    ocsp: bool = False  # the chain's OCSP status must be known (an online verifier, or a fresh cache)
    dev: bool = False


DEFAULT_GPU_POLICY = GpuPolicy()


@dataclass(frozen=True)
class GpuVerdict:
    accepted: bool
    failures: tuple[Failure, ...]
    checks: tuple[CheckResult, ...]
    gpus: tuple[dict[str, Any], ...] = ()
    evidence_sha256: str | None = None

    def summary(self) -> dict[str, Any]:
        """The audit line's `gpu` field."""
        return {
            "verdict": "accepted" if self.accepted else "refused",
            "count": len(self.gpus),
            "vbios": sorted({g["vbios_version"] or "?" for g in self.gpus}),
            "driver": sorted({g["driver_version"] or "?" for g in self.gpus}),
            "evidence_sha256": self.evidence_sha256,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "failures": [f.as_dict() for f in self.failures],
            "checks": [c.as_dict() for c in self.checks],
            "gpus": list(self.gpus),
            "evidence_sha256": self.evidence_sha256,
        }


def evaluate_gpus(
    doc: EvidenceDoc | None,
    expected_nonce: bytes | None,
    policy: GpuPolicy,
    now: float,
    references: ReferenceSource | None = None,
    statuses: StatusSource | None = None,
) -> GpuVerdict:
    """Apply `policy` to the served GPU evidence. No clock; no I/O but what `references` does (a
    cache of NVIDIA's RIMs), and only where the policy has no golden set."""
    rec = Findings()
    if doc is None:
        if policy.required and policy.dev:
            rec.skip("gpu.evidence_missing", "no GPU evidence served (policy gpu.dev: e.g. the dev stand-in server)")
        elif policy.required:
            rec(
                "gpu.evidence_missing",
                False,
                "GPU evidence in the attestation (the stack pins GPUs)",
                "none",
                "a TD whose workload pins GPUs always serves it; this upstream is not that TD",
            )
        else:
            rec.skip("gpu.evidence_missing", "no GPU evidence served and none required")
        return _verdict(rec, [], None)
    digest = doc.digest().hex()
    if expected_nonce is not None:
        rec("gpu.nonce_mismatch", hmac.compare_digest(doc.nonce, expected_nonce), expected_nonce.hex(), doc.nonce.hex())
    if policy.count is not None:
        rec("gpu.count_mismatch", len(doc.gpus) == policy.count, policy.count, len(doc.gpus))
    _check_cc(rec, doc.cc, policy.dev)
    gpus: list[dict[str, Any]] = []
    devices: set[bytes] = set()
    duplicates = 0
    for i, item in enumerate(doc.gpus):
        try:
            ev = verify_gpu_evidence(item.report, item.chain_pem, policy.root_pem, doc.nonce, now)
        except GpuEvidenceError as exc:
            rec(exc.check, False, exc.expected, exc.seen, f"GPU {i}")
            continue
        if ev.device in devices:
            duplicates += 1  # its checks were made with the first report of this device
            continue
        devices.add(ev.device)
        gpus.append(_gpu_facts(ev))
        _check_status(rec, i, ev, policy, statuses)
        _check_versions(rec, i, ev, policy)
        _check_reference(rec, i, ev, policy, references)
    rec(
        "gpu.duplicate_device",
        not duplicates,
        "one report per distinct GPU",
        f"{len(devices) + duplicates} verified reports, {len(devices)} devices",
    )
    return _verdict(rec, gpus, digest)


def _verdict(rec: Findings, gpus: list[dict[str, Any]], digest: str | None) -> GpuVerdict:
    return GpuVerdict(not rec.failures, tuple(rec.failures), tuple(rec.checks), tuple(gpus), digest)


def _gpu_facts(ev: GpuEvidence) -> dict[str, Any]:
    return {
        "fwid": ev.fwid.hex(),
        "leaf": ev.leaf_subject,
        "vbios_version": ev.report.vbios_version,
        "driver_version": ev.report.driver_version,
    }


def _check_cc(rec: Findings, cc: CcState, dev: bool) -> None:
    rec("gpu.cc_off", cc.enabled, "GPU confidential computing on", "off" if not cc.enabled else "on")
    if dev:
        rec.skip("gpu.cc_devtools", "policy gpu.dev: CC devtools mode accepted")
        rec.skip("gpu.cc_environment", "policy gpu.dev: any CC environment accepted")
        return
    rec(
        "gpu.cc_devtools",
        not cc.devtools,
        "CC devtools mode off (devtools leaves GPU memory readable by the host)",
        "on" if cc.devtools else "off",
    )
    rec("gpu.cc_environment", cc.environment == "prod", "prod", cc.environment)


def _check_status(rec: Findings, i: int, ev: GpuEvidence, policy: GpuPolicy, statuses: StatusSource | None) -> None:
    if statuses is None:
        if policy.ocsp:
            rec(
                "gpu.ocsp_unavailable",
                False,
                "the OCSP status of the device chain (policy gpu.ocsp; --ocsp-responder fetches it)",
                "no status source",
                f"GPU {i}",
            )
        else:
            rec.skip("gpu.ocsp", f"GPU {i}: OCSP not asked for (policy gpu.ocsp, --ocsp-responder)")
        return
    try:
        statuses(list(ev.chain))
    except GpuEvidenceError as exc:
        rec(exc.check, False, exc.expected, exc.seen, f"GPU {i}")
        return
    rec("gpu.ocsp", True, "GOOD for every CA certificate of the chain", "GOOD", f"GPU {i}")


def _check_versions(rec: Findings, i: int, ev: GpuEvidence, policy: GpuPolicy) -> None:
    for check, pins, seen, key in (
        ("gpu.vbios_not_pinned", policy.vbios, ev.report.vbios_version, "vbios"),
        ("gpu.driver_not_pinned", policy.driver, ev.report.driver_version, "driver"),
    ):
        if not pins:
            if policy.dev:
                rec.skip(check, f"GPU {i}: no {key} pin (policy gpu.dev)")
            else:
                rec(check, False, f"a {key} pin (the stack's pins gpu.{key}, or policy gpu.{key})", seen, f"GPU {i}")
            continue
        accepted = {normalise_version(p) for p in pins}
        rec(check, seen is not None and normalise_version(seen) in accepted, sorted(pins), seen, f"GPU {i}")


def _check_reference(
    rec: Findings, i: int, ev: GpuEvidence, policy: GpuPolicy, references: ReferenceSource | None
) -> None:
    reference, source = policy.reference, policy.reference_source or "policy"
    if not reference and references is not None:
        try:
            reference, source = references(ev.report)
        except GpuEvidenceError as exc:
            rec(exc.check, False, exc.expected, exc.seen, f"GPU {i}")
            return
    if not reference:
        if policy.dev:
            rec.skip("gpu.reference_missing", f"GPU {i}: no reference measurements (policy gpu.dev)")
        else:
            rec(
                "gpu.reference_missing",
                False,
                "reference measurements for the GPU's VBIOS and driver: NVIDIA's RIMs (in the collateral "
                "cache, or --rim-service) or a golden set (policy gpu.reference)",
                "none",
                f"GPU {i}",
            )
        return
    seen = {b.index: b.value for b in ev.report.measurements}
    if policy.reference and reference is policy.reference:
        # A golden set is a whole known-good report: a measured block it does not list would go
        # unchecked (RIMs, by contrast, mark the blocks that vary as inactive on purpose).
        missing = sorted(block for block, v in seen.items() if any(v) and block not in reference)
        if missing:
            rec(
                "gpu.reference_incomplete",
                False,
                "a golden value for every measured (non-zero) block of the report",
                f"none for blocks {missing[:16]}",
                f"GPU {i}: record the golden set from a whole known-good report ({source})",
            )
            return
    bad = []
    for index, values in sorted(reference.items()):
        value = seen.get(index)
        if value is None or not any(hmac.compare_digest(value, v) for v in values):
            bad.append((index, [v.hex() for v in values], value.hex() if value is not None else None))
    if bad:
        index, expected, got = bad[0]
        rec(
            "gpu.measurement_mismatch",
            False,
            {str(index): expected if len(expected) > 1 else expected[0]},
            {str(index): got},
            f"GPU {i}: {len(bad)} of {len(reference)} reference measurements differ "
            f"(blocks {[b[0] for b in bad][:8]}); reference {source}",
        )
    else:
        rec(
            "gpu.measurement_mismatch",
            True,
            f"{len(reference)} reference measurements ({source})",
            "all match",
            f"GPU {i}",
        )


# --- loading ----------------------------------------------------------------------------------

_GPU_KEYS = {"required", "count", "vbios", "driver", "reference", "root_ca", "rim_root_ca", "ocsp", "dev"}


def parse_reference(value: object, where: str) -> dict[int, tuple[bytes, ...]]:
    """{block index: hex or [hex, ...]} -> accepted values per index."""
    if not isinstance(value, dict):
        raise InputError(f"{where}: a mapping of measurement block index to hex value(s)", type(value).__name__)
    out: dict[int, tuple[bytes, ...]] = {}
    for key, v in value.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            index = -1
        if not 1 <= index <= 255:
            raise InputError(f"{where}: block indices 1..255", repr(key))
        values = v if isinstance(v, list) else [v]
        try:
            parsed = tuple(bytes.fromhex(x) for x in values if isinstance(x, str))
        except ValueError:
            parsed = ()
        if not parsed or len(parsed) != len(values) or any(len(p) not in (32, 48, 64) for p in parsed):
            raise InputError(f"{where}.{key}: a SHA-256/384/512 hex digest or a list of them", repr(v)[:80])
        out[index] = parsed
    return out


def _versions(value: object, where: str) -> tuple[str, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise InputError(f"{where}: a version string or a list of them", repr(value)[:80])
    return tuple(values)


def gpu_policy_from_mapping(section: Mapping[str, Any] | None, where: str = "policy.gpu") -> GpuPolicy:
    if section is None:
        return DEFAULT_GPU_POLICY
    if not isinstance(section, dict):
        raise InputError(f"{where}: a mapping", type(section).__name__)
    unknown = sorted(set(section) - _GPU_KEYS)
    if unknown:
        raise InputError(f"{where}: keys among {sorted(_GPU_KEYS)}", f"unknown key(s) {unknown}")
    for key in ("required", "ocsp", "dev"):
        if not isinstance(section.get(key, False), bool):
            raise InputError(f"{where}.{key}: true or false", repr(section[key]))
    count = section.get("count")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_GPUS):
        raise InputError(f"{where}.count: 1..{MAX_GPUS} or null", repr(count))
    roots: dict[str, bytes | None] = {}
    for key in ("root_ca", "rim_root_ca"):
        path = section.get(key)
        roots[key] = None
        if path is not None:
            from tdxattest.core.files import read_bytes

            if not isinstance(path, str):
                raise InputError(f"{where}.{key}: the path of a PEM root certificate", repr(path))
            roots[key] = read_bytes(path)
    reference = parse_reference(section["reference"], f"{where}.reference") if "reference" in section else {}
    return GpuPolicy(
        required=section.get("required", False),
        count=count,
        vbios=_versions(section["vbios"], f"{where}.vbios") if "vbios" in section else (),
        driver=_versions(section["driver"], f"{where}.driver") if "driver" in section else (),
        reference=reference,
        reference_source=where + ".reference" if reference else None,
        root_pem=roots["root_ca"],
        rim_root_pem=roots["rim_root_ca"],
        ocsp=section.get("ocsp", False),
        dev=section.get("dev", False),
    )
