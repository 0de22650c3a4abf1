"""OCSP responses for the NVIDIA device chains, kept like the Intel CRLs: in the collateral cache
(`<cache dir>/ocsp/<id>.der`, 0600), re-checked on every read (`core.ocsp.check_response`), fetched
from the responder when missing or past nextUpdate.

    status = OcspCache(cache_dir, responder="http://ocsp.example").check_chain(chain, now)

`responder` None: offline, only responses already in the cache count. NVIDIA's responder is
http://ocsp.ndis.nvidia.com (the AIA of its intermediates); responses last a day.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
from typing import TYPE_CHECKING

from tdxattest.core.ocsp import MAX_RESPONSE_BYTES, OcspError, OcspStatus, check_response, checked_pairs, ocsp_request
from tdxattest.dcap.cache import DEFAULT_CACHE_DIR, write_private

if TYPE_CHECKING:
    from cryptography import x509

HTTP_TIMEOUT = 15


def fetch_ocsp(responder: str, request: bytes, subject: str) -> bytes:
    import urllib.error
    import urllib.request

    host = urllib.parse.urlsplit(responder).hostname or ""
    handlers = [urllib.request.ProxyHandler({})] if host in ("127.0.0.1", "localhost", "::1") else []
    req = urllib.request.Request(responder, data=request, headers={"content-type": "application/ocsp-request"})
    try:
        with urllib.request.build_opener(*handlers).open(req, timeout=HTTP_TIMEOUT) as resp:
            body: bytes = resp.read(MAX_RESPONSE_BYTES + 1)
            return body
    except urllib.error.HTTPError as exc:
        raise OcspError("gpu.ocsp_unavailable", f"a status of {subject} from {responder}", f"HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise OcspError(
            "gpu.ocsp_unavailable", f"a status of {subject} from {responder}", str(getattr(exc, "reason", exc))
        ) from None


class OcspCache:
    def __init__(self, directory: str | None = None, responder: str | None = None):
        self.dir = os.path.join(directory or DEFAULT_CACHE_DIR, "ocsp")
        self.responder = responder
        self._kept: dict[str, OcspStatus] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(cert: x509.Certificate, issuer: x509.Certificate) -> str:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        spki = issuer.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(spki + cert.serial_number.to_bytes(20, "big", signed=False)).hexdigest()[:32]

    def status(self, cert: x509.Certificate, issuer: x509.Certificate, now: float) -> OcspStatus:
        key = self._key(cert, issuer)
        with self._lock:
            kept = self._kept.get(key)
        if kept is not None and kept.this_update <= now < kept.next_update:
            return kept
        path = os.path.join(self.dir, f"{key}.der")
        problem: OcspError | None = None
        try:
            with open(path, "rb") as fh:
                status = check_response(fh.read(MAX_RESPONSE_BYTES + 1), cert, issuer, now)
        except OSError:  # missing or unreadable: ask the responder
            pass
        except OcspError as exc:
            if exc.check == "gpu.cert_revoked":
                raise
            problem = exc  # stale: ask again
        else:
            with self._lock:
                self._kept[key] = status
            return status
        subject = cert.subject.rfc4514_string()
        if self.responder is None:
            raise problem or OcspError(
                "gpu.ocsp_unavailable",
                f"an OCSP status of {subject} in {self.dir} (pass --ocsp-responder to fetch it)",
                "none",
            )
        der = fetch_ocsp(self.responder, ocsp_request(cert, issuer), subject)
        status = check_response(der, cert, issuer, now)  # a revoked or bad answer is never kept
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        write_private(path, der)
        with self._lock:
            self._kept[key] = status
        return status

    def check_chain(self, chain: list[x509.Certificate], now: float) -> list[OcspStatus]:
        """The status of every CA certificate below the root (core.ocsp.checked_pairs)."""
        return [self.status(cert, issuer, now) for cert, issuer in checked_pairs(chain)]
