"""TD boot manifests (firmware/td/*.yaml): what a Trust Domain boots, and so what its MRTD and
RTMR0-2 must be. This is the one reader of them: the launch (render/td_definition.py), the `pins`
computation (render/pins.py), the stack config (the VM shape) and the guest image pinning all take
the `BootManifest` built here.

A manifest pins each file it names by sha256 and sha384 (`firmware`, `kernel`, `initrd`, and the
guest image's dm-verity root disk `rootfs`), the QEMU command line, the VM shape, the TD attributes
and the ACPI digests of a reference TD. An input not pinned yet is written with `file: null` (or
`value: null`, `digests: null`) and a `reason`; it is listed in `reasons`, and the manifest cannot
launch a TD until the kernel, initrd and command line are pinned (`gaps`). `base: <file>` (a
manifest in the same directory) supplies every top-level section this file leaves out: the dev
image's manifest names only its own kernel, initrd, command line and root disk.

`gpuDriver` (optional, written with the image's pins) records the NVIDIA driver the guest image
carries: the stack config checks the GPU SKUs' driver pins and the vLLM image's CUDA version
against it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from components.catalog.pinfile import CatalogError, read_pin_file
from components.paths import FIRMWARE_DIR
from guest_agent import DEV_STACK
from tdxattest.core.measure import SEPARATOR_PLACEMENTS
from tdxattest.core.mrtd import ORDERS, SINGLE
from tdxattest.core.pins import AcpiPin
from tdxattest.core.quote import TD_ATTR_DEBUG, TD_ATTR_SEPT_VE_DISABLE

# `dev` boots the dev image (serial autologin, software quotes allowed), every other stack the prod
# image, so staging and prod share their pins.
TD_BOOT_MANIFEST = "ovmf-debian-trixie.yaml"
TD_BOOT_MANIFEST_DEV = "ovmf-debian-trixie-dev.yaml"

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
    "gpuDriver",
)
FILE_KEYS = ("name", "version", "source", "file", "size", "sha256", "sha384", "reason", "used")
FIRMWARE_KEYS = (*FILE_KEYS, "pageAddOrder", "eventTemplate", "separator", "debian")
DEBIAN_KEYS = ("package", "sourcePackage", "version", "arch", "member")
# Where the TrustDomain stages each role on the host (role -> file name under the TD's directory).
STAGED_NAMES = {"firmware": "firmware.fd", "kernel": "vmlinuz", "initrd": "initrd.img", "rootfs": "rootfs.verity.img"}
ACPI_KEYS = {"tableLoader": "table_loader", "rsdp": "rsdp", "tables": "tables"}
GPU_DRIVER_KEYS = ("version", "cuda", "packages", "modules")

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA384 = re.compile(r"[0-9a-f]{96}")
_TD_ATTRIBUTES = re.compile(r"[0-9a-f]{16}")
_DRIVER_VERSION = re.compile(r"[0-9]+\.[0-9]+(\.[0-9]+)?")
_CUDA_VERSION = re.compile(r"[0-9]+\.[0-9]+")
_PACKAGE_PIN = re.compile(r"[a-z0-9][a-z0-9+.\-]*=[A-Za-z0-9.+~:\-]+")
_MODULE_FILE = re.compile(r"[A-Za-z0-9_\-]+\.ko")


def td_boot_manifest(stack: str, firmware_dir: Path = FIRMWARE_DIR) -> Path:
    """The TD boot manifest a stack's TDs launch and its pins are computed from."""
    return firmware_dir / "td" / (TD_BOOT_MANIFEST_DEV if stack == DEV_STACK else TD_BOOT_MANIFEST)


@dataclass(frozen=True)
class DebianPin:
    """Where a pinned file comes from in Debian's archive, exactly: `member` of the `package` .deb at
    `version` (`pool/main/<prefix>/<sourcePackage>/<package>_<version>_<arch>.deb`), so the setup
    fetches it instead of a person hunting for it (components/catalog/firmware_fetch.py)."""

    package: str
    source_package: str
    version: str
    arch: str
    member: str

    @property
    def pool_path(self) -> str:
        prefix = self.source_package[:4] if self.source_package.startswith("lib") else self.source_package[0]
        return f"pool/main/{prefix}/{self.source_package}/{self.package}_{self.version}_{self.arch}.deb"


@dataclass(frozen=True)
class BootArtifact:
    """One pinned file of the manifest."""

    role: str  # firmware | kernel | initrd | rootfs
    file: str  # relative to the artifact directory (and to `workload.td.artifactSource` on the host)
    sha256: str
    sha384: str | None = None  # required for the measured roles (firmware, kernel, initrd)
    size: int | None = None
    name: str | None = None
    version: str | None = None
    source: str | None = None  # where the file comes from (shown when it is missing)
    debian: DebianPin | None = None  # firmware: the exact Debian package it is fetched from

    @property
    def staged_name(self) -> str:
        return STAGED_NAMES[self.role]


def cuda_tuple(version: str) -> tuple[int, int]:
    """`12.4` as (12, 4), for comparing CUDA versions (raises ValueError otherwise)."""
    if not _CUDA_VERSION.fullmatch(version):
        raise ValueError(f"a CUDA version MAJOR.MINOR like 12.4, not {version!r}")
    major, minor = version.split(".")
    return int(major), int(minor)


@dataclass(frozen=True)
class GpuDriverPin:
    """The NVIDIA driver the guest image carries (`gpuDriver`, written by `guest-image pin` from the
    build): the version NVML reports, the newest CUDA runtime it serves, its locked packages and the
    sha256 of each kernel module built for the image's kernel."""

    version: str
    cuda: str
    packages: tuple[str, ...] = ()
    modules: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BootManifest:
    path: Path
    name: str  # the profile of the pins
    vcpus: int
    memory_mib: int
    td_attributes: str  # the quote's TD_ATTRIBUTES bytes, 16 hex digits
    firmware: BootArtifact
    page_add_order: str
    separator: str  # where this OVMF build measures the end-of-pre-boot separator
    kernel: BootArtifact | None
    initrd: BootArtifact | None  # None also when not used
    initrd_used: bool  # False: `initrd: {used: false}` (QEMU gets no -initrd)
    cmdline: str | None  # the QEMU -append text
    acpi: AcpiPin | None  # SHA-384 of QEMU's ACPI blobs, captured from a reference TD of the same VM shape
    rootfs: BootArtifact | None = None  # the guest image's root disk (measured through the cmdline's root hash)
    gpu_driver: GpuDriverPin | None = None  # the NVIDIA driver in the guest image; None: not recorded
    reasons: Mapping[str, str] = field(
        default_factory=dict
    )  # why each input that is not pinned is not (kernel, ..., acpi)

    @property
    def artifacts(self) -> tuple[BootArtifact, ...]:
        """The files the host stages, in launch order."""
        return tuple(a for a in (self.firmware, self.kernel, self.initrd, self.rootfs) if a is not None)

    @property
    def gaps(self) -> tuple[str, ...]:
        """Why the manifest cannot launch a TD yet ("kernel: <reason>", ...); empty when it can."""
        reasons = self.reasons
        missing = [("kernel", self.kernel is None), ("initrd", self.initrd_used and self.initrd is None)]
        missing.append(("cmdline", self.cmdline is None))
        return tuple(f"{key}: {reasons.get(key, 'not pinned')}" for key, absent in missing if absent)

    @property
    def launchable(self) -> bool:
        return not self.gaps


def read_manifest(path: Path) -> Mapping[str, Any]:
    """The manifest as a mapping, `base:` merged in: readable YAML, known top-level keys, schema 1."""
    data = _read_one(path)
    base = data.get("base")
    if base is None:
        return data
    if not isinstance(base, str) or "/" in base or not base.endswith(".yaml"):
        raise CatalogError(
            f"{path}: `base` must name a manifest in the same directory (e.g. {TD_BOOT_MANIFEST}), not {base!r}"
        )
    parent = _read_one(path.parent / base)
    if parent.get("base") is not None:
        raise CatalogError(f"{path}: `base` {base} has a `base` of its own; one level only")
    return {**parent, **{k: v for k, v in data.items() if k != "base"}}


def _read_one(path: Path) -> Mapping[str, Any]:
    data = read_pin_file(path, "TD boot manifest")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise CatalogError(f"{path}: unknown key `{unknown[0]}` (known keys: {', '.join(TOP_KEYS)})")
    if data.get("schema") != 1:
        raise CatalogError(f"{path}: `schema` must be 1, not {data.get('schema')!r}")
    return data


def load_boot_manifest(path: str | Path) -> BootManifest:
    """Read and check a TD boot manifest. Raises CatalogError naming the manifest and the key."""
    path = Path(path)
    data = read_manifest(path)
    reasons: dict[str, str] = {}

    fw = _section(data, "firmware", path, FIRMWARE_KEYS)
    order = fw.get("pageAddOrder", SINGLE)
    if order not in ORDERS:
        raise CatalogError(f"{path}: `firmware.pageAddOrder` must be one of {', '.join(ORDERS)}, not {order!r}")
    template = fw.get("eventTemplate", "ovmf-direct")
    if template != "ovmf-direct":
        raise CatalogError(
            f"{path}: `firmware.eventTemplate` must be `ovmf-direct` (the only event template "
            f"implemented), not {template!r}"
        )
    separator = fw.get("separator", SEPARATOR_PLACEMENTS[0])
    if separator not in SEPARATOR_PLACEMENTS:
        raise CatalogError(
            f"{path}: `firmware.separator` must be {' or '.join(SEPARATOR_PLACEMENTS)}, not {separator!r}"
        )
    firmware = _artifact("firmware", fw, path)
    if "debian" in fw:
        firmware = replace(firmware, debian=_debian(fw["debian"], path))

    vm = _section(data, "vm", path, ("vcpus", "memoryMiB"))
    for key in ("vcpus", "memoryMiB"):
        value = vm.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise CatalogError(f"{path}: `vm.{key}` must be a positive integer, not {value!r}")

    td = _section(data, "td", path, ("attributes",))
    attrs = str(td.get("attributes", ""))
    if not _TD_ATTRIBUTES.fullmatch(attrs):
        raise CatalogError(
            f"{path}: `td.attributes` must be 16 lowercase hex digits (the quote's TD_ATTRIBUTES bytes), not {attrs!r}"
        )
    attr_value = int.from_bytes(bytes.fromhex(attrs), "little")
    if attr_value & TD_ATTR_DEBUG:
        raise CatalogError(
            f"{path}: `td.attributes` {attrs} has DEBUG (bit 0) set: a debuggable TD exposes its memory to the "
            "host; pin it with bit 0 clear"
        )
    if not attr_value & TD_ATTR_SEPT_VE_DISABLE:
        raise CatalogError(
            f"{path}: `td.attributes` {attrs} lacks SEPT_VE_DISABLE (bit 28); the TD policy requires it "
            "(0000001000000000)"
        )

    def optional_file(key: str) -> BootArtifact | None:
        entry = _section(data, key, path, FILE_KEYS)
        if entry.get("file") is None:
            reasons[key] = _reason(entry, key, path)
            return None
        return _artifact(key, entry, path)

    kernel = optional_file("kernel")
    initrd_entry = _section(data, "initrd", path, FILE_KEYS)
    initrd_used = initrd_entry.get("used") is not False
    initrd = optional_file("initrd") if initrd_used else None

    cmd = _section(data, "cmdline", path, ("value", "reason"))
    cmdline = cmd.get("value")
    if cmdline is None:
        reasons["cmdline"] = _reason(cmd, "cmdline", path)
    elif not isinstance(cmdline, str):
        raise CatalogError(f"{path}: `cmdline.value` must be a string (the QEMU -append text), not {cmdline!r}")

    acpi = _acpi(_section(data, "acpi", path, ("digests", "source", "reason")), path, reasons)

    rootfs = None
    if isinstance(data.get("rootfs"), Mapping) and data["rootfs"].get("file") is not None:
        rootfs = _artifact("rootfs", _section(data, "rootfs", path, FILE_KEYS), path, need_sha384=False)

    gpu_driver = _gpu_driver(data, path) if data.get("gpuDriver") is not None else None

    return BootManifest(
        path=path,
        name=str(data.get("name") or path.stem),
        vcpus=vm["vcpus"],
        memory_mib=vm["memoryMiB"],
        td_attributes=attrs,
        firmware=firmware,
        page_add_order=order,
        separator=separator,
        kernel=kernel,
        initrd=initrd,
        initrd_used=initrd_used,
        cmdline=cmdline,
        acpi=acpi,
        rootfs=rootfs,
        gpu_driver=gpu_driver,
        reasons=reasons,
    )


def _gpu_driver(data: Mapping[str, Any], path: Path) -> GpuDriverPin:
    entry = _section(data, "gpuDriver", path, GPU_DRIVER_KEYS)
    version, cuda = entry.get("version"), entry.get("cuda")
    if not isinstance(version, str) or not _DRIVER_VERSION.fullmatch(version):
        raise CatalogError(
            f"{path}: `gpuDriver.version` must be the driver version NVML reports (e.g. 550.163.01), not {version!r}"
        )
    if not isinstance(cuda, str) or not _CUDA_VERSION.fullmatch(cuda):
        raise CatalogError(
            f'{path}: `gpuDriver.cuda` must be the newest CUDA version the driver serves (e.g. "12.4"), not {cuda!r}'
        )
    packages = entry.get("packages", [])
    if not isinstance(packages, list) or not all(isinstance(p, str) and _PACKAGE_PIN.fullmatch(p) for p in packages):
        raise CatalogError(f"{path}: `gpuDriver.packages` must list `name=version` package pins, not {packages!r}")
    modules = entry.get("modules", {})
    if not isinstance(modules, Mapping) or not all(
        isinstance(k, str) and _MODULE_FILE.fullmatch(k) and isinstance(v, str) and _SHA256.fullmatch(v)
        for k, v in modules.items()
    ):
        raise CatalogError(
            f"{path}: `gpuDriver.modules` must map module files (nvidia.ko) to sha256 digests, not {modules!r}"
        )
    return GpuDriverPin(version=version, cuda=cuda, packages=tuple(packages), modules=dict(modules))


def _section(data: Mapping[str, Any], key: str, path: Path, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, Mapping):
        raise CatalogError(
            f"{path}: `{key}` must be a mapping (for an artifact not pinned yet: "
            f"`{key}: {{file: null, reason: ...}}`), not {value!r}"
        )
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise CatalogError(f"{path}: unknown key `{key}.{unknown[0]}` (known keys: {', '.join(allowed)})")
    return value


def _reason(entry: Mapping[str, Any], key: str, path: Path) -> str:
    reason = entry.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise CatalogError(
            f"{path}: `{key}.reason` is required when `{key}` is not pinned (say why, e.g. "
            '"guest image build not pinned yet")'
        )
    return reason.strip()


_DEB_NAME = re.compile(r"^[a-z0-9][a-z0-9+.~-]*$")


def _debian(entry: Any, path: Path) -> DebianPin:
    if not isinstance(entry, Mapping) or set(entry) != set(DEBIAN_KEYS):
        raise CatalogError(f"{path}: `firmware.debian` must have exactly the keys {', '.join(DEBIAN_KEYS)}")
    for key in DEBIAN_KEYS:
        value = entry[key]
        if not isinstance(value, str) or not value:
            raise CatalogError(f"{path}: `firmware.debian.{key}` must be a non-empty string")
        if key != "member" and not _DEB_NAME.fullmatch(value):
            raise CatalogError(f"{path}: `firmware.debian.{key}` is not a Debian name or version: {value!r}")
    member = entry["member"]
    if member.startswith("/") or ".." in member.split("/"):
        raise CatalogError(f"{path}: `firmware.debian.member` must be a path inside the package, not {member!r}")
    return DebianPin(entry["package"], entry["sourcePackage"], entry["version"], entry["arch"], member)


def _artifact(role: str, entry: Mapping[str, Any], path: Path, *, need_sha384: bool = True) -> BootArtifact:
    for digest, pattern in (("sha256", _SHA256), ("sha384", _SHA384)):
        value = entry.get(digest)
        if digest == "sha384" and value is None and not need_sha384:
            continue
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise CatalogError(
                f"{path}: `{role}.{digest}` must be a lowercase hex {digest.upper()} digest, not {value!r}"
            )
    for key in ("name", "version", "source"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise CatalogError(f"{path}: `{role}.{key}` is required")
    rel = entry.get("file")
    if not isinstance(rel, str) or not rel or rel.startswith("/") or ".." in rel.split("/"):
        raise CatalogError(f"{path}: `{role}.file` must be a path relative to the artifact directory, not {rel!r}")
    size = entry.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise CatalogError(f"{path}: `{role}.size` must be a number of bytes, not {size!r}")
    return BootArtifact(
        role=role,
        file=rel,
        sha256=entry["sha256"],
        sha384=entry.get("sha384"),
        size=size,
        name=entry["name"],
        version=entry["version"],
        source=entry["source"],
    )


def _acpi(entry: Mapping[str, Any], path: Path, reasons: dict[str, str]) -> AcpiPin | None:
    digests = entry.get("digests")
    if digests is None:
        reasons["acpi"] = _reason(entry, "acpi", path)
        return None
    if not isinstance(digests, Mapping) or set(digests) != set(ACPI_KEYS):
        raise CatalogError(
            f"{path}: `acpi.digests` must map exactly tableLoader, rsdp and tables to SHA-384 digests, not {digests!r}"
        )
    for key, value in digests.items():
        if not isinstance(value, str) or not _SHA384.fullmatch(value):
            raise CatalogError(f"{path}: `acpi.digests.{key}` must be a lowercase hex SHA-384 digest, not {value!r}")
    source = entry.get("source")
    if not isinstance(source, str) or not source.strip():
        raise CatalogError(f"{path}: `acpi.source` is required: say which reference TD the blobs were captured from")
    return AcpiPin(source=source, **{ACPI_KEYS[k]: v for k, v in digests.items()})
