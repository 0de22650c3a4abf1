"""NVIDIA RIMs in the same on-disk cache as the Intel collateral: `<cache dir>/rim/<id>.xml` (0600),
each verified (`core.rim.verify_rim`) before it is written and every time it is read; fetched from a
RIM service when missing or no longer valid, if one is given.

    store = RimStore(cache_dir, service="https://rim.example")     # service None: offline only
    rim = store.lookup("NV_GPU_DRIVER_GH100_550.163.01", now)     # RimError naming the check
    values, source = store.reference(report, now)                # the GPU policy's reference source

The service API is NVIDIA's: `GET <service>/v1/rim/<id>` answers JSON whose `rim` is the SWID tag in
base64. A verified RIM is also kept in memory until its signing chain's earliest notAfter, so the
proxy does not re-verify the XML signature per attestation.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tdxattest.core.rim import MAX_RIM_BYTES, RIM_ID, Rim, RimError, rim_reference, verify_rim
from tdxattest.dcap.cache import DEFAULT_CACHE_DIR, write_private

if TYPE_CHECKING:
    from tdxattest.core.gpu_evidence import GpuReport

HTTP_TIMEOUT = 15


def fetch_rim(service: str, rim_id: str) -> bytes:
    """The SWID XML of `rim_id` from a RIM service (bounded read). Raises RimError."""
    import urllib.error
    import urllib.request

    url = f"{service.rstrip('/')}/v1/rim/{urllib.parse.quote(rim_id)}"
    host = urllib.parse.urlsplit(url).hostname or ""
    handlers = [urllib.request.ProxyHandler({})] if host in ("127.0.0.1", "localhost", "::1") else []
    try:
        with urllib.request.build_opener(*handlers).open(url, timeout=HTTP_TIMEOUT) as resp:
            body = resp.read(2 * MAX_RIM_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise RimError("gpu.rim_missing", f"{rim_id} from {url}", f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise RimError("gpu.rim_missing", f"{rim_id} from {url}", str(getattr(exc, "reason", exc))) from None
    if len(body) > 2 * MAX_RIM_BYTES:
        raise RimError("gpu.rim_malformed", f"a RIM service answer of at most {2 * MAX_RIM_BYTES} bytes", "more")
    try:
        doc = json.loads(body)
        return base64.b64decode(doc["rim"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise RimError("gpu.rim_malformed", "JSON with the RIM in base64 under `rim`", str(exc)[:120]) from None


class RimStore:
    """Verified RIMs by id: memory, then the cache directory, then the service."""

    def __init__(self, directory: str | None = None, service: str | None = None, root_pem: bytes | None = None):
        self.dir = os.path.join(directory or DEFAULT_CACHE_DIR, "rim")
        self.service = service
        self.root_pem = root_pem  # a TEST RIM root instead of NVIDIA's (tests and the dev stack only)
        self._verified: dict[str, Rim] = {}
        self._lock = threading.Lock()

    def _path(self, rim_id: str) -> str:
        if not RIM_ID.fullmatch(rim_id):
            raise RimError("gpu.rim_malformed", "a RIM id such as NV_GPU_DRIVER_GH100_550.163.01", repr(rim_id)[:80])
        return os.path.join(self.dir, f"{rim_id}.xml")

    def put(self, rim_id: str, xml: bytes, now: float) -> Rim:
        """Verify `xml` and keep it as `rim_id`; the verified RIM."""
        path = self._path(rim_id)
        rim = verify_rim(xml, now, self.root_pem)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        write_private(path, xml)
        with self._lock:
            self._verified[rim_id] = rim
        return rim

    def lookup(self, rim_id: str, now: float) -> Rim:
        path = self._path(rim_id)
        with self._lock:
            kept = self._verified.get(rim_id)
        if kept is not None and now < kept.not_after:
            return kept
        problem: RimError | None = None
        try:
            with open(path, "rb") as fh:
                xml = fh.read(MAX_RIM_BYTES + 1)
        except OSError:  # missing or unreadable: as if it were not there
            xml = None
        if xml is not None:
            try:
                rim = verify_rim(xml, now, self.root_pem)
            except RimError as exc:
                problem = exc  # e.g. its signer expired: a fresh one may be fetched below
            else:
                with self._lock:
                    self._verified[rim_id] = rim
                return rim
        if self.service is None:
            if problem is not None:
                raise problem
            raise RimError(
                "gpu.rim_missing",
                f"{rim_id} in the RIM cache {self.dir} (`tdxattest collateral rim --id {rim_id} --file F` "
                "imports one; --rim-service fetches them)",
                "not there",
            )
        return self.put(rim_id, fetch_rim(self.service, rim_id), now)

    def reference(self, report: GpuReport, now: float) -> tuple[Mapping[int, tuple[bytes, ...]], str]:
        """The report's reference values from its driver and VBIOS RIMs (core.rim.rim_reference)."""
        return rim_reference(report, lambda rim_id: self.lookup(rim_id, now))
