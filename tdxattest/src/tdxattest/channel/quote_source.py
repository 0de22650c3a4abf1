"""Where the gateway gets quotes: the kernel's configfs-tsm interface inside a TD.

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

The only other source is `tdxattest.testpki.SoftwareQuoteProvider` (a TEST PKI, for tests and the
dev stack); both satisfy `QuoteSource`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

TSM_REPORT_ROOT = "/sys/kernel/config/tsm/report"
TDX_PROVIDER = "tdx_guest"


class QuoteUnavailable(Exception):
    """No quote could be produced; `check` is the named failure the gateway reports."""

    def __init__(self, expected: str, seen: str, fix: str, check: str = "gateway.quote_unavailable"):
        self.check, self.expected, self.seen, self.fix = check, expected, seen, fix
        super().__init__(f"{check}: expected {expected}, seen {seen}; fix: {fix}")


class QuoteSource(Protocol):
    label: str  # says where quotes come from; "tdx-configfs-tsm" is the only hardware one

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
