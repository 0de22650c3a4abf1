"""Quote -> collateral -> verdict, in one place. `tdxattest verify`, the verifying proxy and the
benchmarks all appraise through an `Appraiser` (and its GPU evidence through `appraise_gpus`):

    appraiser = Appraiser(CachedCollateral(pccs_url), policy)     # or FixedCollateral.from_file(path)
    appraisal = appraiser.appraise(quote, now, expected_report_data)
    appraisal.verdict.accepted, appraisal.verdict.failures, appraisal.collateral

Where the collateral comes from is the only thing that differs between callers: one fixed set (a
file in dcap-qvl's JSON form), or the set for the quote's FMSPC and PCK CA from a PCCS / Intel PCS
through the verified on-disk cache. A collateral that cannot be had is a refused verdict naming the
check (`collateral.stale`, ...), like any other refusal; only an unparsable quote in the cached
case raises `InputError` (there is no FMSPC to look collateral up by).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tdxattest.core.checks import Failure
from tdxattest.core.errors import InputError
from tdxattest.core.gpu_policy import EvidenceDoc, GpuVerdict, evaluate_gpus
from tdxattest.core.policy import DEFAULT_POLICY, Policy, Verdict
from tdxattest.core.quote import Quote, parse_quote
from tdxattest.dcap.collateral import Collateral, CollateralError, load_collateral, parse_iso_ts
from tdxattest.dcap.verify import refused, verify_quote_any

if TYPE_CHECKING:  # the cache (and HTTP) only where collateral comes from a PCCS
    from tdxattest.dcap.cache import CollateralCache
    from tdxattest.dcap.ocsp_cache import OcspCache
    from tdxattest.dcap.rim_store import RimStore


class CollateralSource(Protocol):
    def collateral_for(self, quote: bytes, now: int) -> tuple[Collateral, dict[str, Any]]:
        """The collateral to verify `quote` with at `now`, and what to report about where it came
        from. Raises CollateralError when there is none."""
        ...


@dataclass(frozen=True)
class FixedCollateral:
    """One collateral set for every quote."""

    collateral: Collateral

    @classmethod
    def from_file(cls, path: str) -> FixedCollateral:
        return cls(load_collateral(path))

    def collateral_for(self, quote: bytes, now: int) -> tuple[Collateral, dict[str, Any]]:
        return self.collateral, {"source": self.collateral.source}


@dataclass
class CachedCollateral:
    """The set for the quote's FMSPC and PCK CA, from a PCCS or Intel PCS through the on-disk cache.

    The cache re-reads and re-verifies its files on every get (a few ms); the proxy appraises every
    upstream connection, so a verified set is also kept in memory until the cache itself would
    refresh it. The memo is keyed on the quote's PCK chain bytes: the same chain has the same FMSPC
    and CA, and reading those takes X.509 parsing (~0.5 ms)."""

    pccs: str | None
    cache: CollateralCache
    _verified: dict[bytes, tuple[Collateral, int, int]] = field(default_factory=dict, init=False, repr=False)

    def collateral_for(self, quote: bytes, now: int) -> tuple[Collateral, dict[str, Any]]:
        parsed = parse_quote(quote)
        chain = parsed.pck_chain_pem or b""
        kept = self._verified.get(chain)
        if kept is not None and kept[1] <= now < kept[2]:
            return kept[0], {"source": "memory", "fmspc": kept[0].fmspc}
        fmspc, ca = parsed.collateral_key()
        if fmspc is None:
            raise _no_fmspc(parsed)
        collateral, status = self.cache.get(self.pccs, fmspc, ca, now)
        if not status.get("warning"):  # a set served despite a failed refresh is not kept: retry next time
            until = parse_iso_ts(status["earliest_next_update"]) - self.cache.margin
            self._verified[chain] = (collateral, now, until)
        return collateral, status


def _no_fmspc(quote: Quote) -> CollateralError:
    """What keeps the quote from naming its collateral: the FMSPC is read from the PCK leaf in its
    certification data, which no signature covers, so a gateway can break it."""
    fix = "the gateway sent a quote whose certification data is not what a TDX quote carries; do not trust it"
    if quote.cert_data_type != 6:
        return CollateralError(
            "quote.certification_data", "certification data type 6 (QE report with the PCK chain)",
            f"type {quote.cert_data_type}", fix,
        )  # fmt: skip
    if quote.pck_cert_type != 5:
        return CollateralError(
            "quote.certification_data", "inner certification data type 5 (the PCK chain as PEM)",
            f"type {quote.pck_cert_type}", fix,
        )  # fmt: skip
    n = len(quote.pck_chain_ders())
    return CollateralError(
        "quote.certification_data", "a PCK leaf certificate with Intel's SGX extension (its FMSPC) in the PCK chain",
        f"{n} certificate{'s' if n != 1 else ''} and no FMSPC", fix,
    )  # fmt: skip


def collateral_source(collateral_path: str | None, pccs: str | None, cache_dir: str | None) -> CollateralSource:
    """A fixed collateral file, else the cache for a PCCS / PCS (the CLI's and the proxy's options)."""
    if collateral_path:
        return FixedCollateral.from_file(collateral_path)
    from urllib.parse import urlsplit

    from tdxattest.dcap.cache import CollateralCache

    if pccs and "@" in urlsplit(pccs).netloc:
        # The URL is recorded with every cached collateral set and in verdicts: never credentials.
        raise InputError("--pccs: a PCCS or PCS URL without credentials (collateral is public)", "user@...")

    return CachedCollateral(pccs, CollateralCache(cache_dir))


@dataclass(frozen=True)
class Appraisal:
    verdict: Verdict
    collateral: dict[str, Any] | None  # where the collateral came from; None when there was none
    pin_set: int = 0  # which policy accepted: 0 the current pins, i > 0 the i-th retiring pins


@dataclass
class Appraiser:
    """Appraises quotes against one policy with collateral from one source.

    `retiring`: during a pin rollover, the policies of the pins being replaced (components/render/proxy.py
    deploys them). A quote passes when it satisfies the current policy or one retiring policy as a
    whole, never a mix; the GPU evidence is then held to the GPU section of that same policy."""

    collateral: CollateralSource
    policy: Policy = DEFAULT_POLICY
    root_ca_der: bytes | None = None  # trust this root instead of Intel's (TEST PKI only)
    rims: RimStore | None = None  # NVIDIA RIMs for the GPU policy's reference values
    ocsp: OcspCache | None = None  # the GPU chains' OCSP statuses
    retiring: tuple[Policy, ...] = ()

    def appraise(self, quote: bytes, now: int, expected_report_data: bytes | None = None) -> Appraisal:
        try:
            collateral, info = self.collateral.collateral_for(quote, now)
        except CollateralError as exc:
            failure = Failure(exc.check, exc.expected, exc.seen, exc.fix)
            return Appraisal(refused(quote, failure, "collateral"), None)
        policies = (self.policy, *self.retiring)
        verdict, pin_set = verify_quote_any(quote, collateral, now, policies, expected_report_data, self.root_ca_der)
        return Appraisal(verdict, info, pin_set)

    def appraise_gpus(self, doc: EvidenceDoc | None, expected_nonce: bytes, now: float, pin_set: int = 0) -> GpuVerdict:
        """The `gpu` section of the policy that accepted the quote (`pin_set`, from `appraise`) over
        served GPU evidence, with reference values from the RIM store and OCSP statuses from the
        cache where this appraiser has them."""
        rims, ocsp = self.rims, self.ocsp
        policy = self.policy if pin_set == 0 else self.retiring[pin_set - 1]
        return evaluate_gpus(
            doc,
            expected_nonce,
            policy.gpu,
            now,
            (lambda report: rims.reference(report, now)) if rims is not None else None,
            (lambda chain: ocsp.check_chain(chain, now)) if ocsp is not None else None,
        )


def appraiser_for(
    policy: Policy,
    *,
    collateral_path: str | None = None,
    pccs: str | None = None,
    cache_dir: str | None = None,
    root_ca_path: str | None = None,
    rim_service: str | None = None,
    ocsp_responder: str | None = None,
    retiring: tuple[Policy, ...] = (),
) -> Appraiser:
    """The Appraiser the verifying options describe (`tdxattest verify` and `proxy`,
    `python -m components status`): collateral from a file or a PCCS through the cache, the root
    (Intel's unless a TEST root is given), NVIDIA RIMs and OCSP statuses under the cache directory."""
    from tdxattest.core.files import read_bytes
    from tdxattest.dcap.rim_store import RimStore

    root = read_bytes(root_ca_path) if root_ca_path else None
    rims = RimStore(cache_dir, rim_service, policy.gpu.rim_root_pem)
    ocsp = None
    if ocsp_responder or policy.gpu.ocsp:  # without a responder, only fresh cached responses count
        from tdxattest.dcap.ocsp_cache import OcspCache

        ocsp = OcspCache(cache_dir, ocsp_responder)
    return Appraiser(collateral_source(collateral_path, pccs, cache_dir), policy, root, rims, ocsp, retiring=retiring)
