"""The `pins` stack output of the host target: what a quote from the stack's TDs must say (docs/pins.md).

`boot_pins(boot, files)` is pure: from a TD boot manifest (catalog.td_manifest) and its verified
artifact files (catalog.artifacts) it computes MRTD and, where their inputs are pinned, RTMR0-2 with
`tdxattest`, and returns a `StackPins`. `expected_pins(manifest, ...)` reads both first (the one
function here that touches files); `workload_pins` adds RTMR3 and the workload's digests. Offline
and deterministic, so it runs at preview time; `__main__.py` exports `to_json()`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from components.catalog.artifacts import ArtifactData, MeasuredFiles, measured_files
from components.catalog.pinfile import CatalogError
from components.catalog.td_manifest import BootArtifact, BootManifest, load_boot_manifest
from components.paths import display_path
from tdxattest.core.bzimage import check_efi_kernel
from tdxattest.core.errors import InputError
from tdxattest.core.events import sha384
from tdxattest.core.measure import (
    AcpiDigests,
    InitrdInfo,
    kernel_measurement,
    rtmr0_register,
    rtmr1_register,
    rtmr2_register,
)
from tdxattest.core.mrtd import compute_mrtd_both
from tdxattest.core.pins import (
    ArtifactPin,
    BootArtifacts,
    GpuExpectation,
    HostBoot,
    JsonValue,
    MrtdCandidates,
    RegisterPin,
    StackPins,
    WorkloadSummary,
)
from tdxattest.core.tdhob import td_hob_digest
from tdxattest.core.tdvf import cfv_bytes, parse_tdvf
from tdxattest.core.workload import WorkloadManifest, expected_rtmr3, image_digest, model_sha256, rtmr3_events

MIB = 1 << 20
T = TypeVar("T")
RTMR3_REASON = "workload manifest not pinned yet"


def expected_pins(
    manifest: str | Path | BootManifest,
    artifact_dir: str | Path | None = None,
    *,
    require_artifacts: bool = True,
    require_guest: bool = True,
) -> StackPins:
    """The pins of one TD boot manifest, its artifact files read from `artifact_dir` (default:
    `$TDX_VLLM_ARTIFACT_DIR` or artifacts/). See catalog.artifacts.measured_files for the two flags."""
    boot = manifest if isinstance(manifest, BootManifest) else load_boot_manifest(manifest)
    files = measured_files(
        boot,
        Path(artifact_dir) if artifact_dir is not None else None,
        require_artifacts=require_artifacts,
        require_guest=require_guest,
    )
    return boot_pins(boot, files)


def boot_pins(boot: BootManifest, files: MeasuredFiles) -> StackPins:
    """MRTD and RTMR0-2 of `boot`'s TD from its verified files; a register whose inputs are not
    pinned or not here is null with the first missing input's reason. Pure."""
    reasons = {**boot.reasons, **files.reasons}
    memory = boot.memory_mib * MIB
    ok = {
        "firmware": files.firmware is not None,
        "kernel": files.kernel is not None,
        "initrd": not boot.initrd_used or files.initrd is not None,
        "cmdline": boot.cmdline is not None,
        "acpi": boot.acpi is not None,
    }

    def first_gap(*needs: str) -> str | None:
        return next((f"{need}: {reasons.get(need, 'not pinned')}" for need in needs if not ok[need]), None)

    gaps = {
        "mrtd": first_gap("firmware"),
        "rtmr0": first_gap("firmware", "acpi"),
        "rtmr1": first_gap("kernel", "initrd", "cmdline"),
        "rtmr2": first_gap("cmdline", "initrd"),
    }
    initrd_info = None
    if files.initrd is not None:  # its size and SHA-384 were just checked against the pin
        initrd_info = InitrdInfo(size=files.initrd.hashes.size, sha384=bytes.fromhex(files.initrd.hashes.sha384))

    mrtd = candidates = hob = cfv = None
    if files.firmware is not None:
        fw = files.firmware.data
        meta = _parsed(boot, files.firmware, parse_tdvf)
        both = compute_mrtd_both(fw, meta, boot.page_add_order)
        mrtd = both.value.hex()
        candidates = MrtdCandidates(both.single.hex(), both.two_pass.hex())
        try:
            hob = td_hob_digest(meta, memory)
            cfv = sha384(cfv_bytes(fw, meta))
        except InputError as exc:
            where = f"`firmware.file` with `vm.memoryMiB` {boot.memory_mib}"
            raise CatalogError(f"{boot.path}: {where}: {exc.with_file(str(files.firmware.path))}") from None
    kernel_digest = None
    if gaps["rtmr1"] is None and files.kernel is not None and boot.cmdline is not None:
        kernel = files.kernel
        _parsed(boot, kernel, check_efi_kernel)
        try:
            kernel_digest = kernel_measurement(kernel.data, memory, initrd_info, boot.cmdline)
        except InputError as exc:
            raise CatalogError(f"{boot.path}: `kernel.file`: {exc.with_file(str(kernel.path))}") from None
    acpi = None
    if boot.acpi is not None:
        a = boot.acpi
        acpi = AcpiDigests(bytes.fromhex(a.table_loader), bytes.fromhex(a.rsdp), bytes.fromhex(a.tables))
    registers = {
        "rtmr0": rtmr0_register(hob, cfv, acpi, boot.separator),
        "rtmr1": rtmr1_register(kernel_digest, boot.separator),
        "rtmr2": rtmr2_register(boot.cmdline if gaps["rtmr2"] is None else None, initrd_info),
    }
    pins: dict[str, RegisterPin] = {}
    events: dict[str, JsonValue] = {}
    for name, reg in registers.items():
        value = reg.value.hex() if reg.value is not None else None
        pins[name] = RegisterPin(value, None if value is not None else gaps[name] or "inputs not pinned")
        events[name] = [e.as_dict() for e in reg.events]
    return StackPins(
        profile=boot.name,
        mrtd=RegisterPin(mrtd, None if mrtd is not None else gaps["mrtd"]),
        rtmr0=pins["rtmr0"],
        rtmr1=pins["rtmr1"],
        rtmr2=pins["rtmr2"],
        mrtd_candidates=candidates,
        rtmr3=RegisterPin(None, RTMR3_REASON),
        td_attributes=RegisterPin(boot.td_attributes),
        events=events,
        boot=HostBoot(
            manifest=display_path(boot.path),
            page_add_order=boot.page_add_order,
            vcpus=boot.vcpus,
            memory_mib=boot.memory_mib,
            artifacts=BootArtifacts(
                firmware=_describe(boot.firmware),
                kernel=_describe(boot.kernel, kernel_digest.hex() if kernel_digest is not None else None),
                initrd=_describe(boot.initrd),
                initrd_used=boot.initrd_used,
                cmdline=boot.cmdline,
                acpi=boot.acpi,
            ),
        ),
    )


def workload_pins(pins: StackPins, manifest: WorkloadManifest, gpu_mode: str = "on") -> StackPins:
    """`pins` with the workload: RTMR3 (the replay of the guest agent's events), its events, the image
    digest, the model hash and the manifest's SHA-384 (docs/pins.md); with GPU pins in the manifest,
    what each TD's GPU evidence must show (`gpu`: count, VBIOS and driver pins, the hosts' CC mode)."""
    gpu = None
    if manifest.gpu is not None:
        gpu = GpuExpectation(manifest.tensor_parallel_size, manifest.gpu.vbios, manifest.gpu.driver, gpu_mode)
    return replace(
        pins,
        rtmr3=RegisterPin(expected_rtmr3(manifest).hex()),
        events={**pins.events, "rtmr3": rtmr3_events(manifest)},  # type: ignore[dict-item]
        image_digest=image_digest(manifest.image),
        model_sha256=model_sha256(manifest),
        workload=WorkloadSummary(
            image=manifest.image,
            model_id=manifest.model_id,
            model_revision=manifest.model_revision,
            tensor_parallel_size=manifest.tensor_parallel_size,
            manifest_sha384=manifest.digest().hex(),
        ),
        gpu=gpu,
    )


NO_MODULE_REASON = (
    "platform.tdxModule is not set: a quote from any TDX module would pass; set it to the release the "
    "hosts run (firmware/tdx-module.yaml)"
)


def with_tdx_modules(pins: StackPins, modules: Mapping[str, str]) -> StackPins:
    """`pins` holding the quotes' MRSEAM to the stack's TDX module releases (release -> Intel's MRSEAM),
    or with MRSEAM not pinned, and why, when the stack names none."""
    if not modules:
        return replace(pins, mrseam=RegisterPin(None, NO_MODULE_REASON), tdx_modules=None)
    return replace(pins, mrseam=None, tdx_modules=dict(modules))


NO_TDX_REASON = (
    "the dev stack runs its TDs without TDX (workload.td.tdx: false): nothing measures the boot, "
    "and the quotes are TEST quotes that prove nothing"
)


def without_tdx(pins: StackPins) -> StackPins:
    """The `pins` of TDs that run without TDX (the dev stack only): MRTD and RTMR0-2 are not pinned
    (a plain VM measures nothing; the values a TD would show stay under `artifacts`), RTMR3 still is
    (the agent keeps it in software and the TEST quote carries it), and `tdx: false` says so, so a
    verifier can take a TEST root for these pins and for no others."""
    unpinned = RegisterPin(None, NO_TDX_REASON)
    return replace(
        pins,
        tdx=False,
        mrtd=unpinned,
        rtmr0=unpinned,
        rtmr1=unpinned,
        rtmr2=unpinned,
        mrtd_candidates=None,
        mrseam=unpinned,  # no TDX module runs a plain VM
        tdx_modules=None,
    )


def _describe(a: BootArtifact | None, authenticode: str | None = None) -> ArtifactPin | None:
    if a is None:
        return None
    return ArtifactPin(a.name, a.version, a.source, a.file, a.size, a.sha256, a.sha384, authenticode)


def _parsed(boot: BootManifest, artifact: ArtifactData, parse: Callable[[bytes], T]) -> T:
    try:
        return parse(artifact.data)
    except InputError as exc:
        raise CatalogError(
            f"{boot.path}: `{artifact.artifact.role}.file`: {exc.with_file(str(artifact.path))}"
        ) from None
