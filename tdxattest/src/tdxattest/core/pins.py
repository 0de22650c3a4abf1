"""The `pins` contract: what a quote from the stack's TDs must show, as one typed value.

The Pulumi program builds a `StackPins` on both targets and exports `to_json()` as the `pins` stack
output (`pulumi stack output pins --json > pins.json`); the verifying proxy, `tdxattest verify
--pins`, the policy and the promotion gate read it back with `StackPins.from_json`. The JSON shape is
docs/pins.md, schema 1.

A register is `None` when the document does not speak about it (a hand-written pins file may name
only MRTD), or a `RegisterPin` whose `value` is `None` with the `reason` when the stack could not pin
it yet: a verifier reports such a register as not checked, never as a match. Everything else is
descriptive, for the people and tools that explain a mismatch (per-event digests, the artifacts the
registers were computed from, the workload, the Kubernetes init data).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from tdxattest.core.errors import InputError

SCHEMA = 1
JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None
Target = Literal["host", "kubernetes"]

# JSON key -> (StackPins field, bytes)
REGISTERS: dict[str, tuple[str, int]] = {
    "mrtd": ("mrtd", 48),
    "rtmr0": ("rtmr0", 48),
    "rtmr1": ("rtmr1", 48),
    "rtmr2": ("rtmr2", 48),
    "rtmr3": ("rtmr3", 48),
    "mrconfigid": ("mrconfigid", 48),
    "mrseam": ("mrseam", 48),
    "xfam": ("xfam", 8),
    "tdAttributes": ("td_attributes", 8),
}


def parse_hex(value: object, size: int, where: str, what: str = "a hex string") -> bytes:
    """`size` bytes from a hex string (an optional 0x prefix and surrounding space allowed). Raises
    InputError naming `where` (the key) with `what` was expected."""
    try:
        raw = bytes.fromhex(value.strip().removeprefix("0x")) if isinstance(value, str) else None
    except ValueError:
        raw = None
    if raw is None:
        raise InputError(f"{where}: {what}", repr(value)[:80])
    if len(raw) != size:
        raise InputError(f"{where}: {size} bytes of hex", f"{len(raw)} bytes")
    return raw


@dataclass(frozen=True)
class RegisterPin:
    """One pinned register: lowercase hex, or `None` with the reason it is not pinned yet."""

    value: str | None
    reason: str | None = None


@dataclass(frozen=True)
class MrtdCandidates:
    """MRTD for both page-add orders (until a first quote confirms the host's)."""

    single: str | None
    two_pass: str | None

    def values(self) -> tuple[str, ...]:
        return tuple(v for v in (self.single, self.two_pass) if v)


@dataclass(frozen=True)
class ArtifactPin:
    """One TD boot artifact as pinned in the TD boot manifest."""

    name: str | None
    version: str | None
    source: str | None
    file: str | None
    size: int | None
    sha256: str | None
    sha384: str | None
    authenticode_sha384_patched: str | None = None  # the kernel as QEMU patches it (RTMR1)


@dataclass(frozen=True)
class AcpiPin:
    source: str
    table_loader: str
    rsdp: str
    tables: str


@dataclass(frozen=True)
class BootArtifacts:
    firmware: ArtifactPin | None
    kernel: ArtifactPin | None
    initrd: ArtifactPin | None
    initrd_used: bool  # False: the manifest says `initrd: {used: false}` (no -initrd)
    cmdline: str | None
    acpi: AcpiPin | None


@dataclass(frozen=True)
class HostBoot:
    """What the host target's TDs boot: from one TD boot manifest in firmware/td/."""

    manifest: str
    page_add_order: str
    vcpus: int
    memory_mib: int
    artifacts: BootArtifacts


@dataclass(frozen=True)
class WorkloadSummary:
    """The host target's workload, for people reading the output (RTMR3 is what is verified)."""

    image: str
    model_id: str
    model_revision: str
    tensor_parallel_size: int
    manifest_sha384: str


@dataclass(frozen=True)
class GpuExpectation:
    """What the stack's GPUs must show (a stack whose workload pins GPUs): the measured manifest's
    VBIOS and driver pins, how many GPUs each TD attests, and the CC mode the hosts set."""

    count: int
    vbios: tuple[str, ...]
    driver: tuple[str, ...]
    mode: str  # on | ppcie | devtools (docs/decisions.md, GPU modes)


@dataclass(frozen=True)
class KubernetesDetail:
    """The Kubernetes target: the pod's images, the workload manifest and the Kata init data whose
    SHA-384 is MRCONFIGID."""

    runtime_class_name: str
    image: str
    gateway_image: str
    gateway_image_digest: str
    workload_manifest: str
    model: Mapping[str, JsonValue]
    init_data: Mapping[str, str]
    agent_policy_sha384: str | None
    # The TD's shape under Kata's static sizing ({memoryMiB, vcpus, gpus}): RTMR0 (the TD's ACPI
    # tables) was measured for this shape, so pins from another shape do not apply.
    td_shape: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StackPins:
    target: Target = "host"
    profile: str | None = None
    mrtd: RegisterPin | None = None
    rtmr0: RegisterPin | None = None
    rtmr1: RegisterPin | None = None
    rtmr2: RegisterPin | None = None
    rtmr3: RegisterPin | None = None
    mrconfigid: RegisterPin | None = None
    mrseam: RegisterPin | None = None
    xfam: RegisterPin | None = None
    td_attributes: RegisterPin | None = None
    mrtd_candidates: MrtdCandidates | None = None  # either may be accepted (`--accept-mrtd-candidates`)
    # The TDX module releases the stack pins (`platform.tdxModule`): release -> MRSEAM hex. A quote's
    # MRSEAM must be one of these values; `mrseam` is then absent (this replaces it).
    tdx_modules: Mapping[str, str] | None = None
    notes: Mapping[str, str] = field(default_factory=dict)  # reasons that are not about one register
    events: Mapping[str, JsonValue] = field(default_factory=dict)  # per register, in extend order
    image_digest: str | None = None  # the vLLM image's `sha256:<hex>`
    model_sha256: str | None = None  # docs/pins.md, `modelSha256`
    boot: HostBoot | None = None  # host target
    workload: WorkloadSummary | None = None  # host target with a workload
    gpu: GpuExpectation | None = None  # host target whose workload pins GPUs
    kubernetes: KubernetesDetail | None = None  # kubernetes target
    # False only for the dev stack's TDs without TDX (`workload.td.tdx: false`): their quotes are TEST
    # quotes and nothing measures the boot. A verifier accepts a TEST root for these pins only.
    tdx: bool = True

    def register(self, key: str) -> RegisterPin | None:
        """A register by its JSON key (`mrtd`, `rtmr0`, ..., `tdAttributes`)."""
        pin: RegisterPin | None = getattr(self, REGISTERS[key][0])
        return pin

    def value(self, key: str) -> str | None:
        pin = self.register(key)
        return pin.value if pin is not None else None

    def to_json(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {"schema": SCHEMA}
        if self.target != "host":
            out["target"] = self.target
        if not self.tdx:
            out["tdx"] = False
        if self.profile is not None:
            out["profile"] = self.profile
        k8s = self.kubernetes
        if k8s is not None:
            out["runtimeClassName"] = k8s.runtime_class_name
        boot = self.boot
        if boot is not None:
            out["manifest"] = boot.manifest
        reasons: dict[str, JsonValue] = {}
        for key in REGISTERS:
            pin = self.register(key)
            if pin is None:
                continue
            out[key] = pin.value
            if pin.reason is not None:
                reasons[key] = pin.reason
            if key == "mrtd":  # the candidates and the page-add order follow MRTD in the document
                c = self.mrtd_candidates
                if boot is not None or c is not None:
                    out["mrtdCandidates"] = None if c is None else {"single": c.single, "twoPass": c.two_pass}
                if boot is not None:
                    out["pageAddOrder"] = boot.page_add_order
        if self.tdx_modules is not None:
            out["tdxModules"] = dict(self.tdx_modules)
        reasons.update(self.notes)
        out["reasons"] = reasons
        if self.events:
            out["events"] = dict(self.events)
        if boot is not None:
            out["vm"] = {"vcpus": boot.vcpus, "memoryMiB": boot.memory_mib}
            out["artifacts"] = _artifacts_json(boot.artifacts)
        if self.image_digest is not None:
            out["imageDigest"] = self.image_digest
        if self.model_sha256 is not None:
            out["modelSha256"] = self.model_sha256
        if self.workload is not None:
            w = self.workload
            out["workload"] = {
                "image": w.image,
                "modelId": w.model_id,
                "modelRevision": w.model_revision,
                "tensorParallelSize": w.tensor_parallel_size,
                "manifestSha384": w.manifest_sha384,
            }
        if self.gpu is not None:
            g = self.gpu
            out["gpu"] = {"count": g.count, "vbios": list(g.vbios), "driver": list(g.driver), "mode": g.mode}
        if k8s is not None:
            out["image"] = k8s.image
            out["gatewayImage"] = k8s.gateway_image
            out["gatewayImageDigest"] = k8s.gateway_image_digest
            out["workloadManifest"] = k8s.workload_manifest
            out["model"] = dict(k8s.model)
            out["initData"] = dict(k8s.init_data)
            out["agentPolicySha384"] = k8s.agent_policy_sha384
            out["tdShape"] = dict(k8s.td_shape)
        return out

    @classmethod
    def from_json(cls, doc: object) -> StackPins:
        """Parse a `pins` document (docs/pins.md). Raises InputError naming the key on anything that
        is not schema 1; keys it does not know are ignored (they are descriptive)."""
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            seen = doc.get("schema") if isinstance(doc, dict) else doc
            raise InputError(f'a pins document with "schema": {SCHEMA}', repr(seen))
        r = _Reader(doc)
        target = doc.get("target", "host")
        if target not in ("host", "kubernetes"):
            raise InputError("pins.target: host or kubernetes", repr(target))
        tdx = doc.get("tdx", True)
        if not isinstance(tdx, bool):
            raise InputError("pins.tdx: true or false", repr(tdx)[:40])
        reasons = r.mapping("reasons", str) or {}
        registers: dict[str, RegisterPin | None] = {}
        for key, (name, size) in REGISTERS.items():
            registers[name] = None
            if key in doc:
                registers[name] = RegisterPin(r.hex(key, size), reasons.get(key))
        notes = {k: v for k, v in reasons.items() if k not in REGISTERS}
        boot = None
        if "manifest" in doc or "artifacts" in doc:
            boot = _host_boot(r)
        workload = None
        if isinstance(doc.get("workload"), dict):
            w = _Reader(doc["workload"], "pins.workload")
            workload = WorkloadSummary(
                image=w.text("image"),
                model_id=w.text("modelId"),
                model_revision=w.text("modelRevision"),
                tensor_parallel_size=w.integer("tensorParallelSize"),
                manifest_sha384=w.text("manifestSha384"),
            )
        gpu = None
        if isinstance(doc.get("gpu"), dict):
            g = _Reader(doc["gpu"], "pins.gpu")
            gpu = GpuExpectation(
                count=g.integer("count"),
                vbios=g.texts("vbios"),
                driver=g.texts("driver"),
                mode=g.text("mode"),
            )
        k8s = None
        if target == "kubernetes":
            k8s = KubernetesDetail(
                runtime_class_name=r.text("runtimeClassName"),
                image=r.text("image"),
                gateway_image=r.text("gatewayImage"),
                gateway_image_digest=r.text("gatewayImageDigest"),
                workload_manifest=r.text("workloadManifest"),
                model=r.mapping("model", object) or {},
                init_data=r.mapping("initData", str) or {},
                agent_policy_sha384=r.optional_text("agentPolicySha384"),
                td_shape=r.mapping("tdShape", int) or {},
            )
        events = r.mapping("events", object) or {}
        candidates = None
        cands = r.mapping("mrtdCandidates", object)
        if cands is not None:
            c = _Reader(cands, "pins.mrtdCandidates")
            candidates = MrtdCandidates(c.hex("single", 48), c.hex("twoPass", 48))
        return cls(
            mrtd_candidates=candidates,
            tdx_modules=_tdx_modules(doc.get("tdxModules")),
            target=target,
            profile=r.optional_text("profile"),
            notes=notes,
            events=events,
            image_digest=r.optional_text("imageDigest"),
            model_sha256=r.optional_text("modelSha256"),
            boot=boot,
            workload=workload,
            gpu=gpu,
            kubernetes=k8s,
            tdx=tdx,
            **registers,
        )


MAX_TDX_MODULES = 8
_RELEASE = re.compile(r"[0-9]\.[0-9]\.[0-9]{2}")


def _tdx_modules(value: object) -> dict[str, str] | None:
    """`tdxModules`: 1 to MAX_TDX_MODULES releases (major.minor.update), each with a 48-byte MRSEAM."""
    if value is None:
        return None
    if not isinstance(value, dict) or not 0 < len(value) <= MAX_TDX_MODULES:
        raise InputError(
            f"pins.tdxModules: an object of 1 to {MAX_TDX_MODULES} releases and their MRSEAM", repr(value)[:80]
        )
    out = {}
    for release, mrseam in value.items():
        if not isinstance(release, str) or not _RELEASE.fullmatch(release):
            raise InputError("pins.tdxModules: releases as major.minor.update (1.5.34)", repr(release)[:40])
        out[release] = parse_hex(mrseam, 48, f"pins.tdxModules.{release}").hex()
    return out


def _artifacts_json(a: BootArtifacts) -> dict[str, JsonValue]:
    def one(p: ArtifactPin | None) -> JsonValue:
        if p is None:
            return None
        out: dict[str, JsonValue] = {
            "name": p.name,
            "version": p.version,
            "source": p.source,
            "file": p.file,
            "size": p.size,
            "sha256": p.sha256,
            "sha384": p.sha384,
        }
        if p.authenticode_sha384_patched is not None:
            out["authenticodeSha384Patched"] = p.authenticode_sha384_patched
        return out

    acpi: JsonValue = None
    if a.acpi is not None:
        acpi = {"source": a.acpi.source, "table_loader": a.acpi.table_loader, "rsdp": a.acpi.rsdp,
                "tables": a.acpi.tables}  # fmt: skip
    return {
        "firmware": one(a.firmware),
        "kernel": one(a.kernel),
        "initrd": one(a.initrd) if a.initrd_used else {"used": False},
        "cmdline": a.cmdline,
        "acpi": acpi,
    }


def _host_boot(r: _Reader) -> HostBoot:
    vm = _Reader(r.mapping("vm", object) or {}, "pins.vm")
    arts = _Reader(r.mapping("artifacts", object) or {}, "pins.artifacts")
    initrd_raw = arts.doc.get("initrd")
    initrd_used = not (isinstance(initrd_raw, dict) and initrd_raw.get("used") is False)
    acpi = None
    if arts.doc.get("acpi") is not None:
        ac = _Reader(arts.mapping("acpi", object) or {}, "pins.artifacts.acpi")
        acpi = AcpiPin(ac.text("source"), ac.text("table_loader"), ac.text("rsdp"), ac.text("tables"))
    return HostBoot(
        manifest=r.text("manifest"),
        page_add_order=r.text("pageAddOrder"),
        vcpus=vm.integer("vcpus"),
        memory_mib=vm.integer("memoryMiB"),
        artifacts=BootArtifacts(
            firmware=_artifact(arts, "firmware"),
            kernel=_artifact(arts, "kernel"),
            initrd=_artifact(arts, "initrd") if initrd_used else None,
            initrd_used=initrd_used,
            cmdline=arts.optional_text("cmdline"),
            acpi=acpi,
        ),
    )


def _artifact(arts: _Reader, role: str) -> ArtifactPin | None:
    raw = arts.mapping(role, object)
    if raw is None:
        return None
    a = _Reader(raw, f"{arts.where}.{role}")
    size = a.doc.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
        raise InputError(f"{a.where}.size: a number of bytes", repr(size))
    return ArtifactPin(
        name=a.optional_text("name"),
        version=a.optional_text("version"),
        source=a.optional_text("source"),
        file=a.optional_text("file"),
        size=size,
        sha256=a.optional_text("sha256"),
        sha384=a.optional_text("sha384"),
        authenticode_sha384_patched=a.optional_text("authenticodeSha384Patched"),
    )


class _Reader:
    """Typed reads from one JSON object; errors name the key (`pins.vm.vcpus`)."""

    def __init__(self, doc: Mapping[str, Any], where: str = "pins"):
        self.doc = doc
        self.where = where

    def _at(self, key: str) -> str:
        return f"{self.where}.{key}"

    def optional_text(self, key: str) -> str | None:
        value = self.doc.get(key)
        if value is not None and not isinstance(value, str):
            raise InputError(f"{self._at(key)}: a string", repr(value)[:80])
        return value

    def text(self, key: str) -> str:
        value = self.optional_text(key)
        if value is None:
            raise InputError(f"{self._at(key)}: a string", "nothing")
        return value

    def integer(self, key: str) -> int:
        value = self.doc.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{self._at(key)}: a whole number", repr(value)[:80])
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.doc.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise InputError(f"{self._at(key)}: a non-empty list of strings", repr(value)[:80])
        return tuple(value)

    def hex(self, key: str, size: int) -> str | None:
        """Lowercase hex of `size` bytes, or None (null)."""
        value = self.doc.get(key)
        return None if value is None else parse_hex(value, size, self._at(key), "a hex string or null").hex()

    def mapping(self, key: str, values: type) -> dict[str, Any] | None:
        value = self.doc.get(key)
        if value is None:
            return None
        if not isinstance(value, dict) or (
            values is not object and not all(isinstance(v, values) for v in value.values())
        ):
            raise InputError(f"{self._at(key)}: an object" + (" of strings" if values is str else ""), repr(value)[:80])
        return value
