"""The on-disk collateral cache: raw collateral per (FMSPC, PCK CA), re-verified on every use and
refreshed before the earliest `nextUpdate`.

Layout: `<dir>/<FMSPC>-<ca>/` (0700) holding the response bodies and the issuer-chain header values
byte for byte (0600) plus `meta.json`.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from tdxattest.dcap.collateral import (
    FILES,
    INTEL_SGX_ROOT_CA_SHA256,
    Collateral,
    CollateralError,
    CollateralStatus,
    RawCollateral,
    collateral_from_json_text,
    iso,
    verify_collateral,
)
from tdxattest.dcap.fetch import fetch_collateral

DEFAULT_REFRESH_MARGIN = 7 * 86400
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "tdxattest", "collateral")


def write_private(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"  # the proxy's executor threads share a pid
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class CollateralCache:
    """Raw collateral per (FMSPC, PCK CA) on disk; verified on every `get`."""

    def __init__(
        self,
        directory: str | None = None,
        refresh_margin: int = DEFAULT_REFRESH_MARGIN,
        root_sha256: str = INTEL_SGX_ROOT_CA_SHA256,
        root_crl_url: str | None = None,
    ):
        self.dir = directory or DEFAULT_CACHE_DIR
        self.margin = refresh_margin
        self.root_sha256 = root_sha256
        self.root_crl_url = root_crl_url  # see fetch_collateral; None = the root cert's distribution point

    def _entry(self, fmspc: str, ca: str) -> str:
        if not fmspc or not all(c in "0123456789ABCDEFabcdef" for c in fmspc) or len(fmspc) != 12:
            raise CollateralError("collateral.fetch_failed", "an FMSPC of 12 hex digits", repr(fmspc))
        return os.path.join(self.dir, f"{fmspc.upper()}-{ca}")

    def load(self, fmspc: str, ca: str = "platform") -> RawCollateral | None:
        d = self._entry(fmspc, ca)
        try:
            parts = []
            for name in FILES:
                with open(os.path.join(d, name), "rb") as fh:
                    parts.append(fh.read())
        except FileNotFoundError:
            return None
        return RawCollateral(*parts)

    def store(self, fmspc: str, ca: str, raw: RawCollateral, meta: dict[str, Any]) -> str:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)
        d = self._entry(fmspc, ca)
        os.makedirs(d, mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)
        for name, data in raw.files().items():
            write_private(os.path.join(d, name), data)
        write_private(os.path.join(d, "meta.json"), json.dumps(meta, indent=2).encode())
        return d

    def get(
        self, base_url: str | None, fmspc: str | None, ca: str, now: int, force_refresh: bool = False
    ) -> tuple[Collateral, dict[str, Any]]:
        """(verification.Collateral, status dict) valid at `now`. Uses the cache when it verifies and
        `now` is before its earliest nextUpdate minus the refresh margin; otherwise fetches. When
        fetching fails, a cached set still valid at `now` is used and the status says so; when
        none is, raises CollateralError("collateral.stale", ...)."""

        if fmspc is None:
            raise CollateralError("collateral.fetch_failed", "an FMSPC (from the quote's PCK certificate)", "none")
        cached = self.load(fmspc, ca)
        verified: tuple[RawCollateral, CollateralStatus] | None = None  # the cached set, if it verifies
        cached_error = None
        if cached is not None:
            try:
                verified = cached, verify_collateral(cached, now, fmspc, self.root_sha256)
            except CollateralError as exc:
                cached_error = exc
        cached_status = verified[1] if verified else None
        status: dict[str, Any] = {"fmspc": fmspc.upper(), "ca": ca, "cache_dir": self._entry(fmspc, ca)}
        if verified and now < verified[1].earliest_next_update - self.margin and not force_refresh:
            status.update(source="cache", **verified[1].as_dict())
            return collateral_from_json_text(verified[0].to_dcap_json(), status["cache_dir"]), status
        fetch_error = None
        if base_url:
            try:
                raw = fetch_collateral(base_url, fmspc, ca, root_crl_url=self.root_crl_url)
                new_status = verify_collateral(raw, now, fmspc, self.root_sha256)
                if (
                    cached_status is not None
                    and new_status.tcb_evaluation_data_number < cached_status.tcb_evaluation_data_number
                ):
                    raise CollateralError(
                        "collateral.rollback",
                        f"tcbEvaluationDataNumber >= {cached_status.tcb_evaluation_data_number}",
                        str(new_status.tcb_evaluation_data_number),
                    )
                self.store(fmspc, ca, raw, {"fetched_at": iso(now), "url": base_url, **new_status.as_dict()})
                status.update(source="fetched", **new_status.as_dict())
                return collateral_from_json_text(raw.to_dcap_json(), status["cache_dir"]), status
            except CollateralError as exc:
                fetch_error = exc
        if verified:
            raw_cached, cached_status = verified
            status.update(
                source="cache",
                **cached_status.as_dict(),
                warning=f"refresh failed ({fetch_error}); cached collateral valid until "
                f"{iso(cached_status.earliest_next_update)}"
                if fetch_error
                else None,
            )
            return collateral_from_json_text(raw_cached.to_dcap_json(), status["cache_dir"]), status
        why = []
        if cached_error is not None:
            why.append(f"cached: {cached_error}")
        elif cached is None:
            why.append("nothing cached")
        if fetch_error is not None:
            why.append(f"refresh: {fetch_error}")
        elif not base_url:
            why.append("no PCCS URL to refresh from")
        raise CollateralError(
            "collateral.stale", f"collateral for FMSPC {fmspc.upper()} valid at {iso(now)}", "; ".join(why)
        )
