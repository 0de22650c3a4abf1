"""Expected TD measurements ("pins") from the pinned TD boot artifacts in `firmware/td/`.

`expected_pins(manifest_path, artifact_dir)` reads one TD boot manifest, checks every file it
names against the manifest's sha256 AND sha384 (refusing with both values on a mismatch),
computes MRTD and, where their inputs are pinned, RTMR0-2 with `tdxattest`, and returns the
`pins` dict documented in docs/pins.md. Offline and deterministic, so it runs at preview time.

No Pulumi here: `__main__.py` passes the result to `pulumi.export("pins", ...)`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml
from tdxattest.core.errors import InputError
from tdxattest.core.events import sha384
from tdxattest.core.files import hash_file
from tdxattest.core.loaders import load_firmware, load_kernel
from tdxattest.core.measure import (
    AcpiDigests,
    InitrdInfo,
    kernel_measurement,
    rtmr0_register,
    rtmr1_register,
    rtmr2_register,
)
from tdxattest.core.mrtd import ORDERS, SINGLE, compute_mrtd_both
from tdxattest.core.quote import TD_ATTR_DEBUG, TD_ATTR_SEPT_VE_DISABLE
from tdxattest.core.tdhob import td_hob_digest
from tdxattest.core.tdvf import cfv_bytes

from .config import td_boot_manifest
from .paths import REPO_ROOT, display_path
from .pinfile import load_pin_yaml

DEFAULT_MANIFEST = td_boot_manifest("prod")  # the prod guest image's (config.td_boot_manifest picks per stack)
DEFAULT_ARTIFACT_DIR = REPO_ROOT / "artifacts"
ARTIFACT_DIR_ENV = "TDX_VLLM_ARTIFACT_DIR"
PINS_SCHEMA = 1
MIB = 1 << 20

RTMR3_REASON = "workload manifest not pinned yet"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA384 = re.compile(r"[0-9a-f]{96}")
_TD_ATTRIBUTES = re.compile(r"[0-9a-f]{16}")
# `rootfs` (the guest image's dm-verity disk) is staged and attached by the TrustDomain but measured
# only through the root hash on the command line (RTMR2), so nothing here reads it.
TOP_KEYS = (
    "schema",
    "name",
    "description",
    "base",
    "firmware",
    "vm",
    "td",
    "kernel",
    "initrd",
    "cmdline",
    "acpi",
    "rootfs",
)
FILE_KEYS = ("name", "version", "source", "file", "size", "sha256", "sha384", "reason", "used")
FIRMWARE_KEYS = FILE_KEYS + ("pageAddOrder", "eventTemplate", "separator")


class PinError(ValueError):
    """The manifest or an artifact does not match; one line naming the manifest key and both values."""


def default_artifact_dir() -> Path:
    """`$TDX_VLLM_ARTIFACT_DIR`, else `artifacts/` in the repository."""
    env = os.environ.get(ARTIFACT_DIR_ENV)
    return Path(env) if env else DEFAULT_ARTIFACT_DIR


# ---------------------------------------------------------------------------------------------
# manifest reading


def load_manifest(path: Path) -> Mapping[str, Any]:
    """The TD boot manifest as a mapping: readable YAML, known top-level keys, schema 1.

    `base: <file>` (a manifest in the same directory) supplies every top-level section this file
    leaves out: the dev image's manifest names only its own kernel, initrd, command line and root
    disk, and shares the firmware, VM shape and ACPI pins with the prod one."""
    data = _read_manifest(path)
    base = data.get("base")
    if base is None:
        return data
    if not isinstance(base, str) or "/" in base or not base.endswith(".yaml"):
        raise PinError(
            f"{path}: `base` must name a manifest in the same directory (e.g. ovmf-debian-trixie.yaml), not {base!r}"
        )
    base_path = path.parent / base
    parent = _read_manifest(base_path)
    if parent.get("base") is not None:
        raise PinError(f"{path}: `base` {base} has a `base` of its own; one level only")
    return {**parent, **{k: v for k, v in data.items() if k != "base"}}


def _read_manifest(path: Path) -> Mapping[str, Any]:
    try:
        data = load_pin_yaml(path.read_text())
    except OSError as exc:
        raise PinError(f"{path}: cannot read the TD boot manifest: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise PinError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, Mapping):
        raise PinError(f"{path}: expected a mapping at the top level")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise PinError(f"{path}: unknown key `{unknown[0]}` (known keys: {', '.join(TOP_KEYS)})")
    if data.get("schema") != 1:
        raise PinError(f"{path}: `schema` must be 1, not {data.get('schema')!r}")
    return data


def _section(data: Mapping[str, Any], key: str, path: Path, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, Mapping):
        raise PinError(
            f"{path}: `{key}` must be a mapping (for an artifact not pinned yet: "
            f"`{key}: {{file: null, reason: ...}}`), not {value!r}"
        )
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise PinError(f"{path}: unknown key `{key}.{unknown[0]}` (known keys: {', '.join(allowed)})")
    return value


def _reason(entry: Mapping[str, Any], key: str, path: Path) -> str:
    reason = entry.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise PinError(
            f"{path}: `{key}.reason` is required when `{key}` is not pinned (say why, e.g. "
            f'"guest image build not pinned yet")'
        )
    return reason.strip()


class _Artifact:
    """One pinned file: checked against both digests before anything reads it."""

    def __init__(self, key: str, entry: Mapping[str, Any], path: Path, artifact_dir: Path):
        self.key = key
        self.entry = entry
        for field, pattern in (("sha256", _SHA256), ("sha384", _SHA384)):
            value = entry.get(field)
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise PinError(f"{path}: `{key}.{field}` must be a lowercase hex {field.upper()} digest, not {value!r}")
        for field in ("name", "version", "source"):
            if not isinstance(entry.get(field), str) or not entry[field].strip():
                raise PinError(f"{path}: `{key}.{field}` is required")
        rel = entry["file"]
        if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise PinError(f"{path}: `{key}.file` must be a path relative to the artifact directory, not {rel!r}")
        self.file = artifact_dir / rel
        self.manifest = path
        self.hashes = None

    def exists(self) -> bool:
        return self.file.is_file()

    def verify(self) -> None:
        try:
            h = hash_file(self.file)
        except InputError as exc:
            raise PinError(f"{self.manifest}: `{self.key}.file`: {exc}") from None
        for field in ("sha256", "sha384"):
            want, have = self.entry[field], getattr(h, field)
            if want != have:
                raise PinError(
                    f"{self.manifest}: `{self.key}.{field}` pins {want}, but {self.file} has {have}: "
                    "refusing to compute measurements from an artifact that is not the pinned one"
                )
        size = self.entry.get("size")
        if size is not None and size != h.size:
            raise PinError(f"{self.manifest}: `{self.key}.size` pins {size} bytes, but {self.file} has {h.size}")
        self.hashes = h

    def describe(self) -> dict:
        return {k: self.entry.get(k) for k in ("name", "version", "source", "file", "size", "sha256", "sha384")}


# ---------------------------------------------------------------------------------------------
# the pins


def expected_pins(
    manifest_path: str | Path,
    artifact_dir: str | Path | None = None,
    *,
    require_artifacts: bool = True,
    require_guest: bool = True,
) -> dict:
    """The `pins` output for one TD boot manifest (shape: docs/pins.md).

    Every artifact file is looked up under `artifact_dir` (default: `default_artifact_dir()`) and
    verified against the manifest's sha256 and sha384 before it is read. With
    `require_artifacts=False` a missing file is not an error: the registers that need it are `None`
    with the reason (for a dev preview on a machine without the artifacts). A file that is present
    but differs from its pin is always refused. With `require_guest=False` (a stack that launches no
    TD from this manifest) the kernel and initrd are not looked for at all, so the pins do not
    depend on whether this machine happens to hold a guest image build.
    """
    path = Path(manifest_path)
    root = Path(artifact_dir) if artifact_dir is not None else default_artifact_dir()
    data = load_manifest(path)
    reasons: dict[str, str] = {}

    fw_entry = _section(data, "firmware", path, FIRMWARE_KEYS)
    order = fw_entry.get("pageAddOrder", SINGLE)
    if order not in ORDERS:
        raise PinError(f"{path}: `firmware.pageAddOrder` must be one of {', '.join(ORDERS)}, not {order!r}")
    template = fw_entry.get("eventTemplate", "ovmf-direct")
    if template != "ovmf-direct":
        raise PinError(
            f"{path}: `firmware.eventTemplate` must be `ovmf-direct` (the only event template "
            f"implemented), not {template!r}"
        )
    separator = fw_entry.get("separator", "rtmr1")
    if separator not in ("rtmr1", "rtmr0"):
        raise PinError(f"{path}: `firmware.separator` must be rtmr1 or rtmr0, not {separator!r}")
    firmware = _Artifact("firmware", fw_entry, path, root)

    vm = _section(data, "vm", path, ("vcpus", "memoryMiB"))
    for key in ("vcpus", "memoryMiB"):
        if not isinstance(vm.get(key), int) or isinstance(vm.get(key), bool) or vm[key] <= 0:
            raise PinError(f"{path}: `vm.{key}` must be a positive integer, not {vm.get(key)!r}")
    memory = vm["memoryMiB"] * MIB

    td = _section(data, "td", path, ("attributes",))
    attrs = str(td.get("attributes", ""))
    if not _TD_ATTRIBUTES.fullmatch(attrs):
        raise PinError(
            f"{path}: `td.attributes` must be 16 lowercase hex digits (the quote's TD_ATTRIBUTES bytes), not {attrs!r}"
        )
    attr_value = int.from_bytes(bytes.fromhex(attrs), "little")
    if attr_value & TD_ATTR_DEBUG:
        raise PinError(
            f"{path}: `td.attributes` {attrs} has DEBUG (bit 0) set: a debuggable TD exposes its "
            "memory to the host; pin it with bit 0 clear"
        )
    if not attr_value & TD_ATTR_SEPT_VE_DISABLE:
        raise PinError(
            f"{path}: `td.attributes` {attrs} lacks SEPT_VE_DISABLE (bit 28); the TD policy "
            "requires it (0000001000000000)"
        )

    def optional_file(key: str, allow_unused: bool) -> tuple[_Artifact | None, bool]:
        """(artifact, used). Not pinned: (None, True) and a reason recorded."""
        entry = _section(data, key, path, FILE_KEYS)
        if allow_unused and entry.get("used") is False:
            return None, False
        if entry.get("file") is None:
            reasons[key] = _reason(entry, key, path)
            return None, True
        return _Artifact(key, entry, path, root), True

    kernel, _ = optional_file("kernel", allow_unused=False)
    initrd, initrd_used = optional_file("initrd", allow_unused=True)

    cmd_entry = _section(data, "cmdline", path, ("value", "reason"))
    cmdline = cmd_entry.get("value")
    if cmdline is None:
        reasons["cmdline"] = _reason(cmd_entry, "cmdline", path)
    elif not isinstance(cmdline, str):
        raise PinError(f"{path}: `cmdline.value` must be a string (the QEMU -append text), not {cmdline!r}")

    acpi_entry = _section(data, "acpi", path, ("digests", "source", "reason"))
    acpi = None
    if acpi_entry.get("digests") is None:
        reasons["acpi"] = _reason(acpi_entry, "acpi", path)
    else:
        digests = acpi_entry["digests"]
        keys = {"tableLoader": "table_loader", "rsdp": "rsdp", "tables": "tables"}
        if not isinstance(digests, Mapping) or set(digests) != set(keys):
            raise PinError(
                f"{path}: `acpi.digests` must map exactly tableLoader, rsdp and tables to SHA-384 "
                f"digests, not {digests!r}"
            )
        for k, v in digests.items():
            if not isinstance(v, str) or not _SHA384.fullmatch(v):
                raise PinError(f"{path}: `acpi.digests.{k}` must be a lowercase hex SHA-384 digest, not {v!r}")
        if not isinstance(acpi_entry.get("source"), str) or not acpi_entry["source"].strip():
            raise PinError(f"{path}: `acpi.source` is required: say which reference TD the blobs were captured from")
        acpi = AcpiDigests(**{keys[k]: bytes.fromhex(v) for k, v in digests.items()})

    # --- artifacts present? verify every one before reading any -----------------------------------
    present: dict[str, bool] = {}
    for art in (firmware, kernel, initrd):
        if art is None:
            continue
        if not require_guest and art.key != "firmware":
            present[art.key] = False
            reasons[art.key] = "this stack launches no TD (no workload): the guest image is not measured"
            continue
        present[art.key] = art.exists()
        if present[art.key]:
            art.verify()
        elif require_artifacts:
            raise PinError(
                f"{path}: `{art.key}.file`: {art.file} not found; put the pinned file there "
                f"({art.entry['source']}) or point ${ARTIFACT_DIR_ENV} at the directory that holds it"
            )
        else:
            reasons[art.key] = f"artifact {art.entry['file']} not found in {root}"

    artifacts = {
        "firmware": firmware.describe(),
        "kernel": kernel.describe() if kernel else None,
        "initrd": initrd.describe() if initrd else ({"used": False} if not initrd_used else None),
        "cmdline": cmdline,
        "acpi": ({"source": acpi_entry["source"], **acpi.as_dict()} if acpi else None),
    }
    pins: dict[str, Any] = {
        "schema": PINS_SCHEMA,
        "profile": str(data.get("name") or path.stem),
        "manifest": display_path(path),
        "mrtd": None,
        "mrtdCandidates": None,
        "pageAddOrder": order,
        "rtmr0": None,
        "rtmr1": None,
        "rtmr2": None,
        "rtmr3": None,
        "reasons": {},
        "events": {},
        "tdAttributes": attrs,
        "vm": {"vcpus": vm["vcpus"], "memoryMiB": vm["memoryMiB"]},
        "artifacts": artifacts,
    }

    # --- compute ------------------------------------------------------------------------------
    fw_ok = present["firmware"]
    kernel_ok = kernel is not None and present.get("kernel", False)
    initrd_ok = not initrd_used or (initrd is not None and present.get("initrd", False))
    initrd_info = None
    if initrd_used and initrd_ok:
        initrd_info = InitrdInfo(size=initrd.hashes.size, sha384=bytes.fromhex(initrd.hashes.sha384))

    def first_gap(*needs: str) -> str | None:
        ok = {
            "firmware": fw_ok,
            "kernel": kernel_ok,
            "initrd": initrd_ok,
            "cmdline": cmdline is not None,
            "acpi": acpi is not None,
        }
        for need in needs:
            if not ok[need]:
                return f"{need}: {reasons.get(need, 'not pinned')}"
        return None

    gaps = {
        "mrtd": first_gap("firmware"),
        "rtmr0": first_gap("firmware", "acpi"),
        "rtmr1": first_gap("kernel", "initrd", "cmdline"),
        "rtmr2": first_gap("cmdline", "initrd"),
    }
    hob = cfv = None
    if fw_ok:
        fw_bytes, meta = _firmware(firmware)
        mrtd = compute_mrtd_both(fw_bytes, meta, order)
        pins["mrtd"] = mrtd.value.hex()
        pins["mrtdCandidates"] = {"single": mrtd.single.hex(), "twoPass": mrtd.two_pass.hex()}
        try:
            hob = td_hob_digest(meta, memory)
            cfv = sha384(cfv_bytes(fw_bytes, meta))
        except InputError as exc:
            raise PinError(
                f"{path}: `firmware.file` with `vm.memoryMiB` {vm['memoryMiB']}: {exc.with_file(str(firmware.file))}"
            ) from None
    kernel_digest = None
    if gaps["rtmr1"] is None:
        try:
            kernel_digest = kernel_measurement(_kernel(kernel), memory, initrd_info, cmdline)
        except InputError as exc:
            raise PinError(f"{path}: `kernel.file`: {exc.with_file(str(kernel.file))}") from None
        artifacts["kernel"]["authenticodeSha384Patched"] = kernel_digest.hex()
    registers = {
        "rtmr0": rtmr0_register(hob, cfv, acpi, separator),
        "rtmr1": rtmr1_register(kernel_digest, separator),
        "rtmr2": rtmr2_register(cmdline if gaps["rtmr2"] is None else None, initrd_info),
    }
    for name, reg in registers.items():
        value = reg.value
        pins[name] = value.hex() if value is not None else None
        pins["events"][name] = [e.as_dict() for e in reg.events]
        if value is None:
            pins["reasons"][name] = gaps[name] or "inputs not pinned"
    if pins["mrtd"] is None:
        pins["reasons"]["mrtd"] = gaps["mrtd"]
    pins["reasons"]["rtmr3"] = RTMR3_REASON
    return pins


def _firmware(art: _Artifact):
    try:
        return load_firmware(art.file)
    except InputError as exc:
        raise PinError(f"{art.manifest}: `firmware.file`: {exc}") from None


def _kernel(art: _Artifact) -> bytes:
    try:
        return load_kernel(art.file)
    except InputError as exc:
        raise PinError(f"{art.manifest}: `kernel.file`: {exc}") from None
