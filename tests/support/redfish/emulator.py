"""Start the real sushy-emulator (with driver.py) on loopback, over HTTPS with basic auth.

`run_emulator(tmp_path, ...)` is a context manager: it generates a self-signed certificate and a
bcrypt htpasswd, writes the emulator config, starts the subprocess on a free 127.0.0.1 port, waits
until it answers, and always stops it. The state directory is per call, so no BIOS state leaks
between tests (stock sushy-emulator keeps FakeDriver state in $TMPDIR across runs).

Boards:
* `board_from_rules(vendor)` is the evidence-based board: every attribute, display name and value of
  tests/fixtures/host/bios/<vendor>.rules.json, each attribute hidden until the settings it
  `requires` are active (applied by a reset), refusing writes until what it `requiresPending` is at
  least staged, and read-only while a `blockedWhile` setting holds. A table whose phases do not
  follow those rules fails here as it would on the board.
* `board_for_table(table)` is a board made from one of our own tables (each phase's attributes
  hidden until the previous phase is active), for the tests of name resolution, credentials and TLS.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from components.catalog.bios import BiosSetting, VendorTable
from tests.support.paths import HOST

DRIVER = Path(__file__).resolve().parent / "driver.py"
SYSTEM_UUID = "5f1c1a52-7d0e-4f8a-9a64-2f8b0c1e7d11"
SYSTEM_PATH = f"/redfish/v1/Systems/{SYSTEM_UUID}"
REGISTRY_ID = "BiosAttributeRegistryP89.v1_0_0"  # the id the emulator's Bios template advertises

# Attributes every board has, so "only what the table names changes" is observable.
UNRELATED_ATTRIBUTES: Mapping[str, Any] = {"ProcTurboMode": "Enabled", "BootMode": "Uefi"}


@dataclass(frozen=True)
class TlsMaterial:
    cert: Path
    key: Path
    fingerprint: str  # SHA-256 of the DER certificate, lower-case hex


@dataclass
class RedfishEmulator:
    url: str
    username: str
    password: str
    tls: TlsMaterial
    system_path: str
    event_log: Path
    log_file: Path
    process: subprocess.Popen[bytes]

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.event_log.exists():
            return []
        lines = self.event_log.read_text(encoding="utf-8").splitlines()
        events = [json.loads(line) for line in lines if line.strip()]
        return [e for e in events if kind is None or e.get("kind") == kind]

    def requests_matching(self, method: str, path_suffix: str) -> list[dict[str, Any]]:
        return [
            e for e in self.events("request") if e["method"] == method and e["path"].rstrip("/").endswith(path_suffix)
        ]

    def patches(self) -> list[dict[str, Any]]:
        return self.requests_matching("PATCH", "/BIOS/Settings")

    def resets(self) -> list[dict[str, Any]]:
        return self.requests_matching("POST", "/Actions/ComputerSystem.Reset")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_tls(directory: Path) -> TlsMaterial:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bmc.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "bmc.crt", directory / "bmc.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return TlsMaterial(cert_path, key_path, cert.fingerprint(hashes.SHA256()).hex())


def _off_value(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return 0
    return {"Enabled": "Disabled", "Disabled": "Enabled", "On": "Off", "Off": "On", "1": "0"}.get(value, "Disabled")


def registry_entry(
    name: str, display_name: str, value: Any, *, read_only: bool = False, extra_values: Sequence[str] = ()
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "AttributeName": name,
        "DisplayName": display_name,
        "ReadOnly": read_only,
        "Hidden": False,
        "Immutable": False,
    }
    if isinstance(value, int) and not isinstance(value, bool):
        entry.update(Type="Integer", LowerBound=0, UpperBound=32)
    else:
        names = list(dict.fromkeys([str(value), str(_off_value(value)), *extra_values]))
        entry.update(Type="Enumeration", Value=[{"ValueName": v, "ValueDisplayName": v} for v in names])
    return entry


def registry_document(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "@odata.id": "/redfish/v1/Systems/Bios/BiosRegistry",
        "@odata.type": "#AttributeRegistry.v1_1_1.AttributeRegistry",
        "Id": REGISTRY_ID,
        "Language": "en",
        "Name": "BIOS Attribute Registry",
        "OwningEntity": "tdxgpu-test",
        "RegistryVersion": "1.1.1",
        "RegistryEntries": {"Attributes": list(entries)},
    }


Renamer = Callable[[BiosSetting], str]


def _same_name(setting: BiosSetting) -> str:
    return setting.attribute


@dataclass(frozen=True)
class Board:
    """What the emulator serves: visible BIOS, hidden attributes (with their starting values), what
    each one needs active (`requires`) or at least staged (`requires_pending`) and what makes it
    read-only (`blocked_while`), and the registry entries."""

    bios: dict[str, Any]
    hidden: dict[str, Any]
    requires: dict[str, dict[str, Any]]
    registry: list[dict[str, Any]]
    requires_pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    blocked_while: dict[str, dict[str, Any]] = field(default_factory=dict)
    reset_types: tuple[str, ...] = ()  # offered on top of sushy-tools' list (iDRAC: PowerCycle)


def board_for_table(table: VendorTable, *, rename: Renamer = _same_name, gate_phases: bool = True) -> Board:
    """A board at factory defaults for this table, with the BMC's names chosen by `rename`: each
    phase's attributes appear once the previous phase's values are active."""
    bios = dict(UNRELATED_ATTRIBUTES)
    hidden: dict[str, Any] = {}
    requires: dict[str, dict[str, Any]] = {}
    everything: list[BiosSetting] = []
    for number in table.phase_numbers:
        settings = table.phases[number]
        everything += settings
        for s in settings:
            if number == 1 or not gate_phases:
                bios[rename(s)] = _off_value(s.value)
            else:
                hidden[rename(s)] = _off_value(s.value)
                requires[rename(s)] = {rename(p): p.value for p in table.phases[number - 1]}
    registry = [
        registry_entry(
            rename(s), s.display_name, s.value, extra_values=() if s.off_value is None else (str(s.off_value),)
        )
        for s in everything
    ]
    registry += [
        registry_entry("ProcTurboMode", "Turbo Boost", "Enabled"),
        registry_entry("BootMode", "Boot Mode", "Uefi", extra_values=("Bios",)),
    ]
    return Board(bios=bios, hidden=hidden, requires=requires, registry=registry)


_RESTING = ("Off", "Disabled", "Auto")


def board_from_rules(vendor: str) -> Board:
    """The board tests/fixtures/host/bios/<vendor>.rules.json describes, at factory settings."""
    rules = json.loads((HOST / "bios" / f"{vendor}.rules.json").read_text(encoding="utf-8"))
    bios = dict(UNRELATED_ATTRIBUTES)
    hidden: dict[str, Any] = {}
    requires: dict[str, dict[str, Any]] = {}
    pending: dict[str, dict[str, Any]] = {}
    blocked: dict[str, dict[str, Any]] = {}
    registry: list[dict[str, Any]] = []
    for name, attr in rules["attributes"].items():
        target = attr.get("target")
        values = [v for v in attr.get("values") or [] if isinstance(v, str) and " " not in v]
        integer = isinstance(target, int) or any("integer" in str(v) for v in attr.get("values") or [])
        if integer:
            start: Any = 0
            entry = {
                "AttributeName": name,
                "DisplayName": attr.get("displayName") or name,
                "ReadOnly": False,
                "Hidden": False,
                "Immutable": False,
                "Type": "Integer",
                "LowerBound": 0,
                "UpperBound": 32,
            }
        else:
            choices = list(dict.fromkeys([*values, *([str(target)] if target is not None else [])]))
            if len(choices) < 2:  # the sources name only the value we want: its usual opposite is the start
                choices.append(str(_off_value(choices[0] if choices else "Enabled")))
            resting = [v for v in choices if v in _RESTING and v != target]
            start = attr.get("default") or (resting[0] if resting else next(v for v in choices if v != target))
            entry = registry_entry(name, attr.get("displayName") or name, choices[0], extra_values=choices[1:])
        registry.append(entry)
        if attr.get("requires"):
            hidden[name] = start
            requires[name] = dict(attr["requires"])
        else:
            bios[name] = start
        if attr.get("requiresPending"):
            pending[name] = dict(attr["requiresPending"])
        if attr.get("blockedWhile"):
            blocked[name] = dict(attr["blockedWhile"])
    registry += [
        registry_entry("ProcTurboMode", "Turbo Boost", "Enabled"),
        registry_entry("BootMode", "Boot Mode", "Uefi", extra_values=("Bios",)),
    ]
    reset = (rules.get("reset") or {}).get("type")
    return Board(
        bios,
        hidden,
        requires,
        registry,
        requires_pending=pending,
        blocked_while=blocked,
        reset_types=("PowerCycle",) if reset == "PowerCycle" else (),
    )


def _write_config(path: Path, values: Mapping[str, Any]) -> None:
    # The emulator reads its config as Python; repr() of plain data is valid Python.
    path.write_text("".join(f"{key} = {value!r}\n" for key, value in values.items()), encoding="utf-8")


@contextmanager
def run_emulator(
    workdir: Path,
    board: Board,
    *,
    with_registry: bool = True,
    username: str = "admin",
    password: str = "tdx-S3cr3t-pw-7f3a9c",
    bios_version: str = "2.7.4",
    power_state: str = "On",
    power_delay_s: float = 0.2,
    startup_timeout_s: float = 20.0,
    dell_jobs: bool = False,
    dell_job_fails: str | None = None,
) -> Iterator[RedfishEmulator]:
    """`dell_jobs`: the BMC applies staged BIOS values only through an iDRAC configuration job
    (driver.py, `_boot`); `dell_job_fails`: every job fails during POST with that message."""
    workdir.mkdir(parents=True, exist_ok=True)
    tls = make_tls(workdir)
    htpasswd = workdir / "htpasswd"
    htpasswd.write_text(f"{username}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n")
    registry_path: str | None = None
    if with_registry:
        registry_file = workdir / "bios-registry.json"
        registry_file.write_text(json.dumps(registry_document(board.registry)), encoding="utf-8")
        registry_path = str(registry_file)
    event_log, log_file = workdir / "events.jsonl", workdir / "emulator.log"
    port = free_port()
    system = {
        "uuid": SYSTEM_UUID,
        "name": "tdx-host",
        "power_state": power_state,
        "external_notifier": False,
        "nics": [{"mac": "00:5c:52:31:3a:9c", "ip": "192.0.2.10"}],
        "bios": dict(board.bios),
        "bios_defaults": dict(board.bios),
        "bios_pending": {},
        "bios_hidden": dict(board.hidden),
        "bios_requires": dict(board.requires),
        "bios_requires_pending": dict(board.requires_pending),
        "bios_blocked_while": dict(board.blocked_while),
        "bios_version": bios_version,
    }
    config = workdir / "emulator.conf"
    _write_config(
        config,
        {
            "SUSHY_EMULATOR_LISTEN_IP": "127.0.0.1",
            "SUSHY_EMULATOR_LISTEN_PORT": port,
            "SUSHY_EMULATOR_SSL_CERT": str(tls.cert),
            "SUSHY_EMULATOR_SSL_KEY": str(tls.key),
            "SUSHY_EMULATOR_AUTH_FILE": str(htpasswd),
            "SUSHY_EMULATOR_STATE_DIR": str(workdir / "state"),
            "SUSHY_EMULATOR_FAKE_SYSTEMS": [system],
            "TDXGPU_BIOS_REGISTRY": registry_path,
            "TDXGPU_EVENT_LOG": str(event_log),
            "TDXGPU_POWER_DELAY_S": power_delay_s,
            "TDXGPU_EXTRA_RESET_TYPES": list(board.reset_types),
            "TDXGPU_DELL_JOBS": dell_jobs,
            "TDXGPU_DELL_JOB_FAILS": dell_job_fails,
        },
    )
    args = [sys.executable, str(DRIVER), "--fake", "--config", str(config), "-i", "127.0.0.1", "-p", str(port)]
    with open(log_file, "wb") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(workdir)
        )
    emulator = RedfishEmulator(
        url=f"https://127.0.0.1:{port}",
        username=username,
        password=password,
        tls=tls,
        system_path=SYSTEM_PATH,
        event_log=event_log,
        log_file=log_file,
        process=process,
    )
    try:
        _wait_ready(emulator, startup_timeout_s)
        yield emulator
    finally:
        _stop(process)


def _wait_ready(emulator: RedfishEmulator, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if emulator.process.poll() is not None:
            raise RuntimeError(f"sushy-emulator exited with {emulator.process.returncode}:\n{_tail(emulator.log_file)}")
        try:
            if requests.get(f"{emulator.url}/redfish/v1/", verify=str(emulator.tls.cert), timeout=1).ok:
                emulator.event_log.write_text("")  # tests see only their own traffic
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"sushy-emulator did not answer within {timeout_s} s:\n{_tail(emulator.log_file)}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "<no log>"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
