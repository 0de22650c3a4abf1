"""Set the TDX BIOS attributes of one server through its BMC (Redfish, via sushy).

The work is split in two:

* pure functions in `components.bmc.resolve` (`resolve_settings`, `resolve_attributes`, `diff`,
  endpoint and fingerprint parsing) that map a vendor table phase onto a particular BIOS;
* I/O (`apply_phase`, `check_phase`, the CLI) that reads the BMC, PATCHes only what differs,
  resets the system and waits until the BIOS reports the new values.

The BMC password is only handed to sushy. It never goes into messages, logs or results, and
`_redact` scrubs it from any third-party text we pass on.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import logging
import os
import ssl
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sushy
from requests.adapters import HTTPAdapter
from sushy import auth as sushy_auth
from sushy import connector as sushy_connector
from sushy import exceptions as sushy_exc

from components.bmc.resolve import (
    BiosError,
    BiosPhaseResult,
    BiosSettingsMissing,
    ResolvedSetting,
    base_url,
    diff,
    format_fingerprint,
    normalise_fingerprint,
    resolve_settings,
    system_identity,
)
from components.catalog.bios import (
    DEFAULT_FIRMWARE_DIR,
    BiosSetting,
    CatalogError,
    Scalar,
    load_vendor_table,
)

LOG = logging.getLogger("components.bmc.redfish")

ENV_USERNAME = "TDXGPU_BMC_USERNAME"
ENV_PASSWORD = "TDXGPU_BMC_PASSWORD"

# Reset types in order of preference when the system is on. The SEAM loader may need a full power
# cycle, not a warm reset (dmc5179/redfish-configure-tdx-bios README; its scripts and Dell's tooling
# use PowerCycle), so a BMC that offers one gets it.
_RESTART_PREFERENCE = (
    sushy.ResetType.POWER_CYCLE,
    sushy.ResetType.FORCE_RESTART,
    sushy.ResetType.GRACEFUL_RESTART,
)

REGISTRATIONS = ("mpa", "pckid", "none")

# iDRAC applies staged BIOS values only through a configuration job for Bios/Settings; without one a
# reset boots the old values (Dell's iDRAC-Redfish-Scripting, BiosSetAttributeREDFISH.py: PATCH
# Bios/Settings, POST this collection with TargetSettingsURI, reboot, poll the job to Completed).
DELL_JOBS = "/redfish/v1/Managers/iDRAC.Embedded.1/Jobs"
_JOB_DONE = ("Completed",)
_JOB_FAILED = ("Failed", "CompletedWithErrors", "RebootFailed")


# ---------------------------------------------------------------------------------------------
# I/O
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Conn:
    url: str
    config_key: str
    fingerprint: str | None
    secrets: tuple[str, ...]
    request_timeout_s: float


class _FingerprintAdapter(HTTPAdapter):
    """Pin the BMC certificate by SHA-256 instead of a CA: BMCs ship self-signed certificates."""

    def __init__(self, fingerprint: str) -> None:
        self._fingerprint = fingerprint
        # The pin replaces CA checks, so the chain is not verified here. An explicit context also stops
        # urllib3 from loading the system CA store on every connection (sushy sends Connection: close).
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._context.check_hostname = False
        self._context.verify_mode = ssl.CERT_NONE
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs.update(assert_fingerprint=self._fingerprint, ssl_context=self._context)
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.update(assert_fingerprint=self._fingerprint, ssl_context=self._context)
        return super().proxy_manager_for(*args, **kwargs)


class _OfflinePublicConnector:
    """sushy would fetch registries listed only by a public URL from the Internet, without a timeout."""

    def get(self, url: str, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"not fetching {url}: only the BMC is contacted")


def _redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return " ".join(text.split())


def _secrets_for(username: str, password: str) -> tuple[str, ...]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return (password, token)


def _tls_settings(
    url: str, tls_fingerprint: str | None, ca_file: str | None, config_key: str
) -> tuple[Any, str | None]:
    """Return (requests verify value, pinned fingerprint)."""
    if url.startswith("http://"):
        return False, None
    if tls_fingerprint and ca_file:
        raise BiosError(f"set only one of {config_key}.tlsFingerprint and {config_key}.caFile")
    if tls_fingerprint:
        return False, normalise_fingerprint(tls_fingerprint)
    if ca_file:
        if not Path(ca_file).is_file():
            raise BiosError(f"{config_key}.caFile {ca_file!r} does not exist")
        return str(ca_file), None
    raise BiosError(
        f"bmc.tlsFingerprint or bmc.caFile is required to trust BMC {url}; fix: set "
        f"{config_key}.tlsFingerprint (SHA-256 of its certificate) or {config_key}.caFile"
    )


@contextlib.contextmanager
def _connect(
    endpoint: str,
    username: str,
    password: str,
    *,
    tls_fingerprint: str | None,
    ca_file: str | None,
    allow_insecure_http: bool,
    config_key: str,
    request_timeout_s: float,
    retry_delay_s: float,
) -> Iterator[tuple[sushy.Sushy, _Conn]]:
    if not username or not password:
        raise BiosError(f"BMC username and password must both be set; fix: {config_key}.username/password")
    url = base_url(endpoint, allow_insecure_http=allow_insecure_http, config_key=config_key)
    verify, fingerprint = _tls_settings(url, tls_fingerprint, ca_file, config_key)
    conn = _Conn(url, config_key, fingerprint, _secrets_for(username, password), request_timeout_s)

    connector = sushy_connector.Connector(
        url,
        verify=verify,
        server_side_retries=3,
        server_side_retries_delay=retry_delay_s,
        default_request_timeout=request_timeout_s,
        connect_timeout=min(request_timeout_s, 15.0),
    )
    if fingerprint:
        # sushy exposes no hook for this; the requests session is the documented-by-source seam.
        connector._session.mount("https://", _FingerprintAdapter(fingerprint))
    auth = sushy_auth.SessionOrBasicAuth(username=username, password=password)
    try:
        root = sushy.Sushy(url, auth=auth, connector=connector, public_connector=_OfflinePublicConnector())
        yield root, conn
    except sushy_exc.SushyError as exc:
        raise _translate(exc, conn) from None
    finally:
        with contextlib.suppress(Exception):
            auth.close()
        connector.close()


def _translate(exc: sushy_exc.SushyError, conn: _Conn) -> BiosError:
    text = _redact(str(exc), conn.secrets)
    key = conn.config_key
    if isinstance(exc, sushy_exc.AccessError):
        if exc.status_code == 403:
            return BiosError(
                f"BMC {conn.url} denied access (HTTP 403): {text}; fix: give {key}.username a role "
                "that may configure components and reset the system"
            )
        return BiosError(
            f"BMC {conn.url} refused the credentials (HTTP {exc.status_code}); fix: check {key}.username/password"
        )
    if isinstance(exc, sushy_exc.ConnectionError):
        return _connection_error(text, conn)
    if isinstance(exc, sushy_exc.HTTPError):
        return BiosError(f"BMC {conn.url} answered HTTP {exc.status_code}: {text}")
    return BiosError(f"BMC {conn.url}: {type(exc).__name__}: {text}")


def _connection_error(text: str, conn: _Conn) -> BiosError:
    key = conn.config_key
    if conn.fingerprint:
        seen = peer_fingerprint(conn.url, timeout_s=min(conn.request_timeout_s, 10.0))
        if seen is not None and seen != conn.fingerprint:
            return BiosError(
                f"TLS fingerprint mismatch for BMC {conn.url}: expected SHA-256 "
                f"{format_fingerprint(conn.fingerprint)}, seen {format_fingerprint(seen)}; fix: if the BMC "
                "certificate was legitimately replaced, check the new one out of band and update "
                f"{key}.tlsFingerprint"
            )
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return BiosError(
            f"TLS verification of BMC {conn.url} against {key}.caFile failed: {text}; "
            f"fix: check {key}.caFile or pin the certificate with {key}.tlsFingerprint"
        )
    return BiosError(
        f"BMC {conn.url} is unreachable: {text}; fix: check {key}.endpoint, the network path "
        "to the BMC and that its Redfish service is enabled"
    )


def peer_fingerprint(url: str, *, timeout_s: float = 10.0) -> str | None:
    """SHA-256 hex of the certificate the server presents, or None when no TLS handshake happens."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        return None
    try:
        pem = ssl.get_server_certificate((parts.hostname, parts.port or 443), timeout=timeout_s)
    except (OSError, ValueError):
        return None
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def _get_system(root: sushy.Sushy, system_path: str | None, conn: _Conn) -> Any:
    identity = system_identity(system_path)
    try:
        return root.get_system(identity)
    except sushy_exc.UnknownDefaultError:
        members = sorted(root.get_system_collection().members_identities)
        raise BiosError(
            f"BMC {conn.url} lists {len(members)} systems {members}; fix: set "
            f"{conn.config_key}.systemPath to the one to configure"
        ) from None
    except sushy_exc.ResourceNotFoundError:
        raise BiosError(f"BMC {conn.url} has no system {identity}; fix: check {conn.config_key}.systemPath") from None


def _get_bios(system: Any, conn: _Conn) -> Any:
    try:
        return system.bios
    except sushy_exc.MissingAttributeError:
        raise BiosError(
            f"system {system.path} on BMC {conn.url} exposes no Bios resource; fix: update the BMC "
            "firmware or check that this is the host system"
        ) from None


def _registry_entries(bios: Any, conn: _Conn) -> list[Mapping[str, Any]] | None:
    try:
        registry = bios.get_attribute_registry()
    except sushy_exc.AccessError:
        raise
    except Exception as exc:  # a broken registry must not block name-based resolution
        LOG.warning(
            "BIOS attribute registry unreadable (%s); resolving by attribute names only",
            _redact(str(exc), conn.secrets),
        )
        return None
    if registry is None:
        LOG.info("BMC serves no BIOS attribute registry; resolving by attribute names only")
        return None
    entries = (registry.json or {}).get("RegistryEntries", {}).get("Attributes")
    return [e for e in entries if isinstance(e, Mapping)] if isinstance(entries, list) else None


def _load_phase(vendor: str, phase: int, firmware_dir: Path | str, registration: str) -> tuple[BiosSetting, ...]:
    try:
        return load_vendor_table(vendor, firmware_dir).phase(phase, registration)
    except CatalogError as exc:
        raise BiosError(str(exc)) from None


@dataclass(frozen=True)
class _Snapshot:
    system: Any
    bios: Any
    resolved: tuple[ResolvedSetting, ...]
    desired: dict[str, Scalar]
    current: dict[str, Any]


def _read(
    root: sushy.Sushy, conn: _Conn, vendor: str, settings: Sequence[BiosSetting], system_path: str | None
) -> _Snapshot:
    system = _get_system(root, system_path, conn)
    bios = _get_bios(system, conn)
    current = dict(bios.attributes or {})
    registry = _registry_entries(bios, conn)
    try:
        resolved = resolve_settings(settings, current, registry, vendor=vendor)
    except BiosError as exc:
        raise type(exc)(f"BMC {conn.url} system {system.path}: {exc}") from None
    desired = {r.attribute: r.value for r in resolved}
    return _Snapshot(system, bios, resolved, desired, current)


def _read_until_found(
    root: sushy.Sushy,
    conn: _Conn,
    vendor: str,
    settings: Sequence[BiosSetting],
    system_path: str | None,
    retries: int,
    poll_s: float,
) -> _Snapshot:
    for _ in range(retries):
        try:
            return _read(root, conn, vendor, settings, system_path)
        except BiosSettingsMissing:
            LOG.info("BMC %s: a BIOS setting is not listed yet; reading the BIOS again in %g s", conn.url, poll_s)
            time.sleep(poll_s)
    return _read(root, conn, vendor, settings, system_path)


def _as_read(snap: _Snapshot, vendor: str, phase: int, conn: _Conn) -> BiosPhaseResult:
    """The phase as the BIOS has it now: nothing changed, nothing reset."""
    return _result(
        snap,
        vendor,
        phase,
        conn,
        snap.current,
        bios_version=snap.system.bios_version,
        changed=False,
        reset=False,
        applied={},
        reset_type=None,
    )


def _result(
    snap: _Snapshot,
    vendor: str,
    phase: int,
    conn: _Conn,
    observed: Mapping[str, Any],
    *,
    bios_version: str | None,
    changed: bool,
    reset: bool,
    applied: Mapping[str, Scalar],
    reset_type: str | None,
    job: str | None = None,
) -> BiosPhaseResult:
    return BiosPhaseResult(
        vendor=vendor,
        phase=phase,
        endpoint=conn.url,
        system=snap.system.path,
        bios_version=bios_version,
        changed=changed,
        reset=reset,
        resolved={r.setting: r.attribute for r in snap.resolved},
        applied=dict(applied),
        attributes={name: observed.get(name) for name in snap.desired},
        pending=diff(snap.desired, observed),
        reset_type=reset_type,
        job=job or None,
    )


def check_phase(
    endpoint: str,
    username: str,
    password: str,
    vendor: str,
    phase: int,
    *,
    system_path: str | None = None,
    tls_fingerprint: str | None = None,
    ca_file: str | None = None,
    firmware_dir: Path | str = DEFAULT_FIRMWARE_DIR,
    allow_insecure_http: bool = False,
    config_key: str = "hosts[i].bmc",
    request_timeout_s: float = 60.0,
    retry_delay_s: float = 3.0,
    registration: str = "mpa",
) -> BiosPhaseResult:
    """Read-only: resolve the phase against the BIOS and report what apply_phase would change."""
    settings = _load_phase(vendor, phase, firmware_dir, registration)
    with _connect(
        endpoint,
        username,
        password,
        tls_fingerprint=tls_fingerprint,
        ca_file=ca_file,
        allow_insecure_http=allow_insecure_http,
        config_key=config_key,
        request_timeout_s=request_timeout_s,
        retry_delay_s=retry_delay_s,
    ) as (root, conn):
        return _as_read(_read(root, conn, vendor, settings, system_path), vendor, phase, conn)


def apply_phase(
    endpoint: str,
    username: str,
    password: str,
    vendor: str,
    phase: int,
    *,
    system_path: str | None = None,
    tls_fingerprint: str | None = None,
    ca_file: str | None = None,
    timeout_s: float = 900.0,
    poll_s: float = 10.0,
    firmware_dir: Path | str = DEFAULT_FIRMWARE_DIR,
    allow_insecure_http: bool = False,
    config_key: str = "hosts[i].bmc",
    request_timeout_s: float = 60.0,
    retry_delay_s: float = 3.0,
    registration: str = "mpa",
    missing_retries: int = 3,
) -> BiosPhaseResult:
    """PATCH what differs, reset, and wait until the BIOS reports every value. Idempotent.

    A setting missing from the BIOS is looked for again (attributes and registry re-read) up to
    `missing_retries` times, `poll_s` apart: right after the previous phase's reset some BMCs still
    serve the old attribute list (iDRAC drops the SGX attributes until it refreshes)."""
    settings = _load_phase(vendor, phase, firmware_dir, registration)
    with _connect(
        endpoint,
        username,
        password,
        tls_fingerprint=tls_fingerprint,
        ca_file=ca_file,
        allow_insecure_http=allow_insecure_http,
        config_key=config_key,
        request_timeout_s=request_timeout_s,
        retry_delay_s=retry_delay_s,
    ) as (root, conn):
        snap = _read_until_found(root, conn, vendor, settings, system_path, missing_retries, poll_s)
        changes = diff(snap.desired, snap.current)
        if not changes:
            LOG.info("BIOS phase %s on %s already applied; nothing to do", phase, conn.url)
            return _as_read(snap, vendor, phase, conn)

        LOG.info(
            "BIOS phase %s on %s: setting %s",
            phase,
            conn.url,
            ", ".join(f"{k}={v!r}" for k, v in sorted(changes.items())),
        )
        dell = vendor == "dell"
        # On iDRAC the job below carries the change; asking for OnReset as well would make iDRAC
        # create a job of its own, and ours would then be refused as a second one.
        _patch(snap.bios, changes, conn, on_reset=not dell)
        job = _dell_config_job(root, snap.bios, conn) if dell else None
        reset_type = _reset(snap.system, conn)
        observed, version = _wait_applied(snap.system, snap.desired, conn, phase, timeout_s, poll_s, job=job, root=root)
        LOG.info("BIOS phase %s on %s applied (BIOS %s)", phase, conn.url, version)
        return _result(
            snap,
            vendor,
            phase,
            conn,
            observed,
            bios_version=version,
            changed=True,
            reset=True,
            applied=changes,
            reset_type=reset_type,
            job=job,
        )


def _patch(bios: Any, changes: Mapping[str, Scalar], conn: _Conn, *, on_reset: bool = True) -> None:
    # A BMC that advertises OnReset applies the values at the next reset only when asked to.
    supported = bios.supported_apply_times or []
    apply_time = sushy.ApplyTime.ON_RESET if on_reset and sushy.ApplyTime.ON_RESET in supported else None
    try:
        bios.set_attributes(dict(changes), apply_time=apply_time)
    except (sushy_exc.BadRequestError, sushy_exc.ResourceNotFoundError) as exc:
        detail = _redact(exc.detail or str(exc), conn.secrets)
        raise BiosError(
            f"BMC {conn.url} rejected the BIOS change {dict(changes)} (HTTP {exc.status_code}): {detail}; fix: "
            "an attribute may be hidden until the previous phase is applied, or the value is not accepted by "
            "this BIOS version"
        ) from None


def _dell_config_job(root: sushy.Sushy, bios: Any, conn: _Conn) -> str:
    """Create iDRAC's BIOS configuration job for the values just staged; its URI (from Location).
    A job already scheduled (an earlier run stopped before the reset) is refused by iDRAC as a
    second one: the reset runs that one, so it is used instead of failing."""
    target = bios._settings.resource_uri or f"{bios.path}/Settings"
    try:
        response = root._conn.post(DELL_JOBS, data={"TargetSettingsURI": target})
    except sushy_exc.BadRequestError as exc:
        detail = _redact(exc.detail or str(exc), conn.secrets)
        if "already committed" in detail:
            LOG.info("a BIOS configuration job is already scheduled on %s; the reset runs it", conn.url)
            return ""
        raise BiosError(
            f"BMC {conn.url} refused the BIOS configuration job for {target} (HTTP {exc.status_code}): {detail}; "
            f"fix: look at the iDRAC job queue ({DELL_JOBS}) for a job stuck in Scheduled or Failed, delete it, "
            "and run pulumi up again"
        ) from None
    except sushy_exc.ResourceNotFoundError:
        raise BiosError(
            f"BMC {conn.url} has no iDRAC job service at {DELL_JOBS}: the vendor table says dell; fix: set "
            "bmc.vendor to the BMC's real vendor"
        ) from None
    location = response.headers.get("Location", "")
    if "/Jobs/" not in location:
        raise BiosError(f"BMC {conn.url} made the BIOS configuration job but named no job URI (Location {location!r})")
    LOG.info("BIOS configuration job %s scheduled on %s", location.rsplit("/", 1)[-1], conn.url)
    return urlsplit(location).path


def _job_state(root: sushy.Sushy, job: str) -> dict[str, Any]:
    body: dict[str, Any] = root._conn.get(job).json()
    return body


def _reset(system: Any, conn: _Conn) -> str:
    system.refresh(force=True)
    if system.power_state == sushy.PowerState.OFF:
        reset_type = sushy.ResetType.ON
    else:
        allowed = system.get_allowed_reset_system_values()
        reset_type = next((t for t in _RESTART_PREFERENCE if t in allowed), sushy.ResetType.FORCE_RESTART)
    LOG.info(
        "resetting %s on %s (%s) so the BIOS applies the pending settings", system.path, conn.url, reset_type.value
    )
    system.reset_system(reset_type)
    return reset_type.value


def _wait_applied(
    system: Any,
    desired: Mapping[str, Scalar],
    conn: _Conn,
    phase: int,
    timeout_s: float,
    poll_s: float,
    *,
    job: str | None = None,
    root: sushy.Sushy | None = None,
) -> tuple[dict[str, Any], str | None]:
    """Until the system is on with every desired value, and (with `job`) the BMC's configuration
    job completed; a failed job ends the wait at once with its message."""
    deadline = time.monotonic() + timeout_s
    observed: dict[str, Any] = {}
    power: str = "unknown"
    while True:
        try:
            system.refresh(force=True)
            power = system.power_state.value if system.power_state else "unknown"
            job_done = True
            if job and root is not None:
                state = _job_state(root, job)
                if state.get("JobState") in _JOB_FAILED:
                    raise BiosError(
                        f"BIOS phase {phase}: configuration job {state.get('Id', job)} on BMC {conn.url} "
                        f"{state.get('JobState')}: {_redact(str(state.get('Message')), conn.secrets)} "
                        f"({state.get('MessageId')}); fix: read that job in the iDRAC Lifecycle Log, correct "
                        "the setting it names, and run pulumi up again"
                    )
                job_done = state.get("JobState") in _JOB_DONE
            bios = system.bios
            bios.refresh(force=True)
            observed = dict(bios.attributes or {})
            if system.power_state == sushy.PowerState.ON and job_done and not diff(desired, observed):
                return observed, system.bios_version
        except (sushy_exc.ConnectionError, sushy_exc.ServerSideError) as exc:
            # BMCs often stall or 5xx while the host goes through POST.
            LOG.info("BMC %s not answering during the reset yet: %s", conn.url, _redact(str(exc), conn.secrets))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(poll_s, remaining))

    missing = diff(desired, observed)
    details = ", ".join(
        f"{k}: expected {v!r}, seen {observed.get(k, '<absent>')!r}" for k, v in sorted(missing.items())
    )
    raise BiosError(
        f"BIOS phase {phase} on BMC {conn.url} not applied after {timeout_s:g} s (power {power}): "
        f"{details or 'values match but the system is not powered on'}; fix: check the BMC job queue / "
        "lifecycle log for a failed BIOS job; the SEAM loader may need a full power cycle"
    )


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


class _RedactingFilter(logging.Filter):
    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self._secrets = tuple(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _redact(record.getMessage(), self._secrets)
        record.args = None
        return True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m components redfish",
        description=f"Apply or check one TDX BIOS phase over Redfish. Credentials come only from "
        f"${ENV_USERNAME} and ${ENV_PASSWORD}. Prints one JSON object on stdout.",
    )
    parser.add_argument("action", choices=("apply", "check"))
    parser.add_argument("--vendor", required=True)
    parser.add_argument("--phase", required=True, type=int)
    parser.add_argument(
        "--registration",
        choices=REGISTRATIONS,
        default="mpa",
        help="dcap.registration: the SGX Auto MP Registration agent on (mpa), off (pckid) or untouched (none)",
    )
    parser.add_argument("--endpoint", required=True, help="https://bmc-host[:port]")
    parser.add_argument("--system", default=None, help="system path or id (default: the only system)")
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument("--tls-fingerprint", default=None, help="SHA-256 of the BMC certificate (DER)")
    trust.add_argument("--ca-file", default=None, help="PEM bundle to verify the BMC certificate")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the reset to apply")
    parser.add_argument("--poll", type=float, default=10.0, help="seconds between polls after the reset")
    parser.add_argument("--firmware-dir", default=str(DEFAULT_FIRMWARE_DIR))
    parser.add_argument("--config-key", default="hosts[i].bmc", help="config path named in error fixes")
    parser.add_argument("--allow-insecure-http", action="store_true", help="accept a plain http:// endpoint")
    parser.add_argument("--verbose", action="store_true", help="debug logs (still without credentials) on stderr")
    return parser


@contextlib.contextmanager
def _cli_logging(verbose: bool, secrets: Sequence[str]) -> Iterator[None]:
    """Progress on stderr for the duration of one CLI call; the previous logging setup is restored."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("redfish: %(message)s"))
    handler.addFilter(_RedactingFilter(secrets))
    root, sushy_log = logging.getLogger(), logging.getLogger("sushy")
    saved = (list(root.handlers), root.level, LOG.level, sushy_log.level)
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    LOG.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        # sushy logs expected fallbacks (session -> basic auth) as warnings/errors; our own error line says it all.
        sushy_log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        LOG.setLevel(saved[2])
        sushy_log.setLevel(saved[3])


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    username = os.environ.get(ENV_USERNAME, "")
    password = os.environ.get(ENV_PASSWORD, "")
    if not username or not password:
        print(f"error: {ENV_USERNAME} and {ENV_PASSWORD} must be set in the environment", file=sys.stderr)
        return 2
    secrets = _secrets_for(username, password)
    with _cli_logging(args.verbose, secrets):
        try:
            result = _run_cli(args, username, password)
        except BiosError as exc:
            print(f"error: {_redact(str(exc), secrets)}", file=sys.stderr)
            return 1
        except Exception as exc:
            print(f"error: unexpected {type(exc).__name__}: {_redact(str(exc), secrets)}", file=sys.stderr)
            return 1
    sys.stdout.write(json.dumps(result.to_dict(), sort_keys=True) + "\n")
    return 0


def _run_cli(args: argparse.Namespace, username: str, password: str) -> BiosPhaseResult:
    common: dict[str, Any] = dict(
        system_path=args.system,
        tls_fingerprint=args.tls_fingerprint,
        ca_file=args.ca_file,
        firmware_dir=args.firmware_dir,
        allow_insecure_http=args.allow_insecure_http,
        config_key=args.config_key,
        registration=args.registration,
    )
    if args.action == "apply":
        return apply_phase(
            args.endpoint,
            username,
            password,
            args.vendor,
            args.phase,
            timeout_s=args.timeout,
            poll_s=args.poll,
            **common,
        )
    return check_phase(args.endpoint, username, password, args.vendor, args.phase, **common)


if __name__ == "__main__":
    sys.exit(main())
