"""Load the NVIDIA driver's kernel modules and report the kernel's verdict (tdx-vllm-gpu-driver.service).

    python3 -m guest_agent.driver      # one `tdx-vllm-driver: {...}` line on stdout and on ttyS0

The image carries the modules its build compiled for its kernel, listed with the driver version in
/etc/tdx-vllm/image.json (`gpuDriver`). Each is loaded with `modprobe` in that order; for each the
line says whether it is loaded afterwards and, when it is not, modprobe's exit status and message
and the kernel log lines naming the driver (nvidia, NVRM) written while it ran (/dev/kmsg).

A module that needs `nvidia` cannot load while `nvidia` does not (no NVIDIA GPU in the TD: the
module's init finds no device and fails with ENODEV). Such a module is then inserted alone with
`insmod`, after its other dependencies, so the kernel still checks it: the load fails on the
symbols only the driver's modules export ("Unknown symbol ... (err -2)"), which the line lists,
split into those the driver's own modules export (expected) and any others (a module built
against another kernel). A version-magic mismatch shows as such a module's kernel lines too.

Exit status 0 when every module is loaded, 1 when one is not, 2 when the image record is unusable.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .report import write_console
from .system import CommandResult, System

PREFIX = "tdx-vllm-driver: "  # the fact line on the console
IMAGE_FACTS = "/etc/tdx-vllm/image.json"
KMSG = "/dev/kmsg"
MODPROBE_TIMEOUT_S = 120.0
MAX_KERNEL_LINES = 12  # per attempt, in the line: the interesting ones come first (the counts use all)
NVIDIA_VENDOR = "0x10de"
_UNKNOWN_SYMBOL = re.compile(r"Unknown symbol (\S+) \(err")


class DriverFactsError(RuntimeError):
    """The image's record of its driver is missing or malformed."""


@dataclass(frozen=True)
class Attempt:
    command: tuple[str, ...]
    result: CommandResult
    kernel: tuple[str, ...]  # the kernel log lines written while the command ran


def module_dir_name(module: str) -> str:
    """The name under /sys/module (the kernel spells module names with underscores)."""
    return module.replace("-", "_")


def image_driver(system: System) -> tuple[str, tuple[str, ...]]:
    """(driver version, its modules in load order) from the image record."""
    path = system.path(IMAGE_FACTS)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DriverFactsError(f"{IMAGE_FACTS} readable JSON, seen: {exc}") from None
    driver = doc.get("gpuDriver") if isinstance(doc, dict) else None
    if not isinstance(driver, dict):
        raise DriverFactsError(f"{IMAGE_FACTS} with a `gpuDriver` object (an image built with the driver), seen none")
    version, modules = driver.get("version"), driver.get("modules")
    if not isinstance(version, str) or not version:
        raise DriverFactsError(f"{IMAGE_FACTS} gpuDriver.version as a string, seen {version!r}")
    if not isinstance(modules, list) or not modules or not all(isinstance(m, str) and m for m in modules):
        raise DriverFactsError(f"{IMAGE_FACTS} gpuDriver.modules as a non-empty list of names, seen {modules!r}")
    return version, tuple(modules)


def parse_kmsg(records: Iterable[str]) -> list[str]:
    """The message text of /dev/kmsg records ("prio,seq,usec,flags[,...];text"); continuation lines
    (" KEY=value") are dropped. Pure."""
    out = []
    for record in records:
        for line in record.splitlines():
            if not line or line.startswith(" "):
                continue
            head, sep, text = line.partition(";")
            out.append(text if sep else head)
    return out


def unknown_symbols(kernel_lines: Iterable[str]) -> list[str]:
    """The symbols the kernel could not resolve for a module, in the order it named them. Pure."""
    seen: dict[str, None] = {}
    for line in kernel_lines:
        m = _UNKNOWN_SYMBOL.search(line)
        if m:
            seen.setdefault(m.group(1), None)
    return list(seen)


def driver_exports(modules_symbols: str, modules: Iterable[str]) -> set[str]:
    """The symbols the driver's own modules export, from depmod's modules.symbols
    (`alias symbol:NAME MODULE`). Pure."""
    names = {module_dir_name(m) for m in modules}
    out = set()
    for line in modules_symbols.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "alias" and parts[1].startswith("symbol:") and parts[2] in names:
            out.add(parts[1][len("symbol:") :])
    return out


def gpu_count(system: System) -> int:
    """NVIDIA PCI functions the TD sees (vendor 0x10de), whatever the driver makes of them."""
    devices = system.path("/sys/bus/pci/devices")
    if not devices.is_dir():
        return 0
    n = 0
    for dev in devices.iterdir():
        try:
            if (dev / "vendor").read_text().strip().lower() == NVIDIA_VENDOR:
                n += 1
        except OSError:
            continue
    return n


class Kmsg:
    """The kernel log records written between `start()` and `read()`."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def start(self) -> None:
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError:
            self.fd = None

    def read(self) -> list[str]:
        if self.fd is None:
            return []
        records = []
        try:
            while True:
                try:
                    records.append(os.read(self.fd, 8192).decode(errors="replace"))
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EPIPE:  # records overwritten while we read: go on from the next
                        continue
                    break
        finally:
            os.close(self.fd)
            self.fd = None
        return parse_kmsg(records)


def about_driver(line: str) -> bool:
    """A kernel line about the driver: its modules name themselves (nvidia, nvidia_uvm, nvidia-nvlink)
    and its resource manager says NVRM. Other drivers' messages of the same moment are left out."""
    return "nvidia" in line.lower() or "NVRM" in line


def attempt(system: System, argv: Sequence[str], kmsg: Callable[[], Kmsg]) -> Attempt:
    log = kmsg()
    log.start()
    result = system.run(list(argv), MODPROBE_TIMEOUT_S)
    return Attempt(tuple(argv), result, tuple(line for line in log.read() if about_driver(line)))


def is_loaded(system: System, module: str) -> bool:
    return system.path(f"/sys/module/{module_dir_name(module)}").is_dir()


def load(system: System, modules: Sequence[str], kmsg: Callable[[], Kmsg], modules_symbols: str) -> list[dict]:
    """Load `modules` in order; one fact per module. `modules_symbols`: depmod's modules.symbols."""
    facts: list[dict] = []
    exports = driver_exports(modules_symbols, modules)
    driver = {module_dir_name(m) for m in modules}
    for module in modules:
        fact: dict[str, Any] = {"module": module}
        tried = attempt(system, ["modprobe", module], kmsg)
        _record(fact, tried)
        if not is_loaded(system, module):
            deps = _depends(system, module)
            if deps & driver and not all(is_loaded(system, d) for d in deps & driver):
                # The driver module it needs is not loaded: insert it alone so the kernel checks it.
                for dep in sorted(deps - driver):
                    system.run(["modprobe", dep], MODPROBE_TIMEOUT_S)
                path = system.run(["modinfo", "-n", module], MODPROBE_TIMEOUT_S).stdout.strip()
                alone = attempt(system, ["insmod", path or module], kmsg)
                unknown = unknown_symbols(alone.kernel)
                fact["alone"] = {
                    **_record({}, alone),
                    "unknownSymbols": len(unknown),
                    "unknownNotFromDriver": sorted(set(unknown) - exports),
                }
        fact["loaded"] = is_loaded(system, module)
        facts.append(fact)
    return facts


def _record(fact: dict, tried: Attempt) -> dict:
    fact.update(
        {
            "command": " ".join(tried.command),
            "exit": tried.result.returncode,
            "stderr": tried.result.stderr.strip(),
            "kernel": list(tried.kernel[:MAX_KERNEL_LINES]),
        }
    )
    return fact


def _depends(system: System, module: str) -> set[str]:
    res = system.run(["modinfo", "-F", "depends", module], MODPROBE_TIMEOUT_S)
    return {module_dir_name(d) for d in res.stdout.strip().split(",") if d} if res.returncode == 0 else set()


def report(system: System, release: str, kmsg: Callable[[], Kmsg] | None = None) -> tuple[dict, int]:
    """The fact line's document and the exit status; `release` is the running kernel's (uname -r)."""
    try:
        version, modules = image_driver(system)
    except DriverFactsError as exc:
        return {"error": str(exc)}, 2
    try:
        symbols = system.path(f"/lib/modules/{release}/modules.symbols").read_text()
    except OSError:
        symbols = ""  # then every unknown symbol counts as not the driver's: loud, not silent
    facts = load(system, modules, kmsg or (lambda: Kmsg(system.path(KMSG))), symbols)
    doc = {"driver": version, "kernel": release, "nvidiaPciFunctions": gpu_count(system), "modules": facts}
    return doc, 0 if all(f["loaded"] for f in facts) else 1


def line(doc: dict) -> str:
    return PREFIX + json.dumps(doc, ensure_ascii=True, separators=(", ", ": "))


def main(argv: list[str] | None = None) -> int:
    if argv:
        print("usage: python3 -m guest_agent.driver (no arguments)", file=sys.stderr)
        return 2
    system = System()
    doc, status = report(system, os.uname().release)
    text = line(doc)
    print(text, flush=True)
    write_console(text, system)
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
