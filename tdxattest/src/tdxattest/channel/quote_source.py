"""Where the gateway gets quotes: the kernel's configfs-tsm interface inside a TD, or the CoCo
attestation agent's REST API inside a Kata Confidential Containers pod.

Linux (6.7+) exposes TD quote generation as a configfs directory
(Documentation/ABI/testing/configfs-tsm):

    /sys/kernel/config/tsm/report/<entry>/inblob      write: the 64-byte REPORTDATA
    /sys/kernel/config/tsm/report/<entry>/outblob     read: the quote (the kernel asks the host's
                                                      quote generation service over vsock/GHCI)
    /sys/kernel/config/tsm/report/<entry>/generation  read: bumps on every write to the entry
    /sys/kernel/config/tsm/report/<entry>/provider    read: "tdx_guest" inside a TDX TD

Any process may write the same entry, so a quote read back is only ours if `generation` moved by
exactly one across our write and read; otherwise someone raced us and we retry. One entry is created at
start and reused, and quotes are generated one at a time (the quote generation service serialises
them anyway).

A pod of Kata Containers / Confidential Containers sees no configfs-tsm (upstream Kata does not
expose it to containers), but CoCo's guest-components run `api-server-rest` in the guest, which
asks the attestation agent (AA) for evidence: `AttestationAgentQuoteSource` (below).

The only other source is `tdxattest.testpki.SoftwareQuoteProvider` (a TEST PKI, for tests and the
dev stack); all satisfy `QuoteSource`.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Protocol

from tdxattest.core.errors import InputError
from tdxattest.core.quote import read_td_report

TSM_REPORT_ROOT = "/sys/kernel/config/tsm/report"
TDX_PROVIDER = "tdx_guest"

AA_REST_URL = "http://127.0.0.1:8006"  # api-server-rest's default bind (guest-components)
AA_EVIDENCE_PATH = "/aa/evidence"
MAX_AA_EVIDENCE_BYTES = 1 << 20  # a TDX quote is ~5 KiB; the CCEL plus AAEL, base64, well under this
AA_TIMEOUT_S = 30.0  # under the proxy's 60 s for the whole attestation exchange


class QuoteUnavailable(Exception):
    """No quote could be produced; `check` is the named failure the gateway reports."""

    def __init__(self, expected: str, seen: str, fix: str, check: str = "gateway.quote_unavailable"):
        self.check, self.expected, self.seen, self.fix = check, expected, seen, fix
        super().__init__(f"{check}: expected {expected}, seen {seen}; fix: {fix}")


class QuoteSource(Protocol):
    label: str  # says where quotes come from; "tdx-configfs-tsm" and "tdx-coco-aa" are the hardware ones

    def quote(self, report_data: bytes) -> bytes: ...


class ConfigfsTsmQuoteSource:
    """Quotes from the TDX module through configfs-tsm (the production source)."""

    label = "tdx-configfs-tsm"

    def __init__(self, root: str = TSM_REPORT_ROOT, entry: str = "tdxattest-gateway", retries: int = 3):
        self._dir = Path(root) / entry
        self._retries = retries
        self._lock = threading.Lock()
        self._open(Path(root))

    def _open(self, root: Path) -> None:
        if not root.is_dir():
            raise QuoteUnavailable(
                f"the configfs-tsm report directory {root}",
                "it does not exist",
                "run inside a TDX TD whose kernel has CONFIG_TSM_REPORTS and CONFIG_TDX_GUEST_DRIVER, "
                "with configfs mounted at /sys/kernel/config",
            )
        try:
            self._dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise QuoteUnavailable(
                f"a report entry {self._dir}",
                exc.strerror or str(exc),
                "the gateway needs write access to configfs-tsm (root, or CAP_SYS_ADMIN)",
            ) from None
        provider = self._read_text("provider")
        if provider != TDX_PROVIDER:
            raise QuoteUnavailable(
                f"provider {TDX_PROVIDER}",
                provider or "nothing",
                "this is not a TDX TD (or its quote driver is missing); a software quote "
                "source exists only for tests and the dev stack",
            )

    def _read_text(self, name: str) -> str:
        try:
            return (self._dir / name).read_text().strip()
        except OSError as exc:
            return f"<unreadable: {exc.strerror or exc}>"

    def _generation(self) -> int:
        text = self._read_text("generation")
        try:
            return int(text)
        except ValueError:
            raise QuoteUnavailable(
                "an integer in generation", text, "check the configfs-tsm ABI of this kernel"
            ) from None

    def quote(self, report_data: bytes) -> bytes:
        if len(report_data) != 64:
            raise ValueError(f"REPORTDATA must be 64 bytes, got {len(report_data)}")
        with self._lock:
            for _ in range(self._retries):
                try:
                    before = self._generation()
                    with open(self._dir / "inblob", "wb", buffering=0) as fh:
                        fh.write(report_data)
                    with open(self._dir / "outblob", "rb") as fh:
                        quote = fh.read()
                except OSError as exc:
                    # EIO/EBUSY here is the host's quote generation service failing (not reachable
                    # on vsock 4050, or PCCS/PCK trouble on the host).
                    raise QuoteUnavailable(
                        "a quote from configfs-tsm",
                        exc.strerror or str(exc),
                        "check the host's quote generation service (qgsd) and its PCCS",
                    ) from None
                if self._generation() == before + 1 and quote:
                    return quote
            raise QuoteUnavailable(
                "a quote for our REPORTDATA",
                f"generation did not move by exactly one in {self._retries} tries (another writer?)",
                f"give the gateway its own entry; nothing else may write {self._dir}",
            )


class AttestationAgentQuoteSource:
    """Quotes from CoCo's attestation agent through guest-components' api-server-rest (a Kata
    Confidential Containers pod, whose containers have no configfs-tsm).

    `GET <url>/aa/evidence?runtime_data=<URL-safe base64, no padding>&encoding=base64`: the AA
    decodes runtime_data (api-server-rest/src/utils.rs: decode_runtime_data), zero-pads it to 64
    bytes and writes it to configfs-tsm as REPORTDATA (attestation-agent/attester/src/tdx/mod.rs),
    and answers `{"cc_eventlog": base64 or null, "quote": base64}`. We always send all 64 bytes, so
    nothing is padded and the quote's REPORTDATA is exactly the gateway's; a quote whose REPORTDATA
    is anything else is refused. `encoding=base64` needs guest-components v0.21.0 or later: an
    older api-server-rest ignores it, passes the 86 characters as they are, and the AA refuses
    them (more than 64 bytes), so an old one fails closed too.

    The body is read up to `max_body` bytes and parsed once (JSON, then one base64 field)."""

    label = "tdx-coco-aa"

    def __init__(self, url: str = AA_REST_URL, timeout_s: float = AA_TIMEOUT_S, max_body: int = MAX_AA_EVIDENCE_BYTES):
        parts = urllib.parse.urlsplit(url)
        try:
            port = 80 if parts.port is None else parts.port
        except ValueError:
            port = 0
        if not 0 < port < 65536:
            raise ValueError(f"the attestation agent's URL: a port 1..65535, seen {url[:100]!r}")
        host = parts.hostname or ""
        if parts.scheme != "http" or not host or parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(f"the attestation agent's URL: http://HOST:PORT[/PREFIX], seen {url[:100]!r}")
        if not _loopback(host):
            raise ValueError(
                f"the attestation agent's URL on loopback (api-server-rest answers loopback clients only), "
                f"seen host {host!r}"
            )
        self.url = url.rstrip("/")
        self._host, self._port, self._prefix = host, port, parts.path.rstrip("/")
        self._timeout_s = timeout_s
        self._max_body = max_body

    def quote(self, report_data: bytes) -> bytes:
        if len(report_data) != 64:
            raise ValueError(f"REPORTDATA must be 64 bytes, got {len(report_data)}")
        runtime_data = base64.urlsafe_b64encode(report_data).rstrip(b"=").decode()
        target = f"{self._prefix}{AA_EVIDENCE_PATH}?runtime_data={runtime_data}&encoding=base64"
        status, body = self._get(target)
        if status != 200:
            raise QuoteUnavailable(
                f"HTTP 200 from the attestation agent at {self.url}{AA_EVIDENCE_PATH}",
                f"HTTP {status}: {_show(body)}",
                _status_fix(status, body),
            )
        quote = self._parse(body)
        try:
            seen = read_td_report(quote).report_data
        except InputError as exc:
            raise QuoteUnavailable(
                "a TDX quote (v4/v5) in the attestation agent's evidence",
                str(exc)[:200],
                "the AA's primary attester must be TDX (api-server-rest's /info says tee: tdx)",
            ) from None
        if seen != report_data:
            raise QuoteUnavailable(
                f"REPORTDATA {report_data.hex()} (the runtime_data we sent, exactly)",
                f"REPORTDATA {seen.hex()}",
                "the attestation agent did not quote our runtime_data as sent (an AA that hashes or "
                "rewrites runtime_data, or a quote for another request); this quote binds nothing of ours",
            )
        return quote

    def _get(self, target: str) -> tuple[int, bytes]:
        deadline = time.monotonic() + self._timeout_s
        conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)
        try:
            conn.request("GET", target, headers={"Accept": "application/json", "Connection": "close"})
            response = conn.getresponse()
            length = response.getheader("content-length", "").strip()
            if length.isascii() and length.isdigit() and (len(length) > 18 or int(length) > self._max_body):
                raise QuoteUnavailable(
                    f"evidence of at most {self._max_body} bytes from the attestation agent",
                    f"Content-Length {length[:40]}",
                    "check what answers at " + self.url,
                )
            chunks: list[bytes] = []
            size = 0
            while size <= self._max_body:
                if time.monotonic() > deadline:
                    raise TimeoutError("timed out")
                chunk = response.read(min(1 << 16, self._max_body + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError as exc:
            raise QuoteUnavailable(
                f"an answer from the attestation agent's REST API at {self.url}",
                exc.strerror or str(exc) or type(exc).__name__,
                "run in a Kata Confidential Containers pod whose guest kernel command line has "
                "agent.guest_components_rest_api=attestation (api-server-rest on 127.0.0.1:8006), "
                "or point --aa-url at it",
            ) from None
        except http.client.HTTPException as exc:
            raise QuoteUnavailable(
                f"an HTTP/1.1 answer from the attestation agent's REST API at {self.url}",
                f"{type(exc).__name__}: {str(exc)[:120]}",
                "check that api-server-rest (guest-components) is what listens there",
            ) from None
        finally:
            conn.close()
        if size > self._max_body:
            raise QuoteUnavailable(
                f"evidence of at most {self._max_body} bytes from the attestation agent",
                "more",
                "check what answers at " + self.url,
            )
        return response.status, b"".join(chunks)

    def _parse(self, body: bytes) -> bytes:
        """The quote of the AA's TDX evidence `{"cc_eventlog": ..., "quote": base64}`."""
        expected = 'TDX evidence from the attestation agent: JSON {"cc_eventlog", "quote": base64}'
        try:
            doc = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise QuoteUnavailable(expected, f"not JSON ({str(exc)[:80]}): {_show(body)}", _NOT_TDX) from None
        if not isinstance(doc, dict):
            raise QuoteUnavailable(expected, f"a JSON {type(doc).__name__}: {_show(body)}", _NOT_TDX)
        text = doc.get("quote")
        if not isinstance(text, str):
            keys = sorted(str(k) for k in doc)[:10]
            raise QuoteUnavailable(expected, f'no string "quote"; keys {keys}', _NOT_TDX)
        try:
            quote = base64.b64decode(text, validate=True)
        except ValueError:
            raise QuoteUnavailable(expected, f'"quote" is not base64: {text[:60]!r}', _NOT_TDX) from None
        if not quote:
            raise QuoteUnavailable(expected, 'an empty "quote"', _NOT_TDX)
        return quote


_NOT_TDX = (
    "the attestation agent's primary attester must be TDX (api-server-rest's /info says tee: tdx; "
    "the sample attester's evidence has no quote)"
)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _show(body: bytes) -> str:
    text = body[:160].decode("utf-8", "replace")
    return repr(text) + (f" (+{len(body) - 160} bytes)" if len(body) > 160 else "")


def _status_fix(status: int, body: bytes) -> str:
    text = body[:400].decode("utf-8", "replace")
    if status == 404 and "Attestation Feature Not Enabled" in text:
        return (
            "api-server-rest runs without the attestation feature: add agent.guest_components_rest_api=attestation "
            "(or all) to the Kata guest kernel command line"
        )
    if status == 404:
        return f"check --aa-url: api-server-rest serves {AA_EVIDENCE_PATH} at its root"
    if status == 400:
        return (
            "api-server-rest refused runtime_data (URL-safe base64 without padding, encoding=base64): "
            "check its version (guest-components v0.21.0 or later)"
        )
    if status == 403:
        return "api-server-rest answers loopback clients only"
    return (
        "see the attestation agent's log: an api-server-rest older than guest-components v0.21.0 ignores "
        "encoding=base64 and the AA refuses the 86-character runtime_data (over 64 bytes; a newer guest image "
        "fixes it); otherwise the host's quote generation service failed"
    )
