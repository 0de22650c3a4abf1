"""Promotion: a stack (prod) deploys only the pins another stack (staging) exported as attested.

Pure, no Pulumi: `__main__.py` exports `promotable_pins(...)` as the `promotable` stack output (only
when every host step verified, else null) and, when `promotion.fromStack` is set, compares its own
promotable pins with the ones read from that stack through a StackReference (`compare`), refusing
with `refusal(...)` before any host step is registered.

What is compared (and nothing else): the TD measurements (MRTD, RTMR0-3, TD attributes), the sha256
of each TD boot artifact (firmware, kernel, initrd), the guest kernel command line, the VBIOS and
driver pins of every GPU SKU the stack uses, the gpu-admin-tools wheel (version and sha256), the
TDX module releases with their MRSEAM and, for a stack with a workload, the vLLM image digest and the model hash. Host
addresses, keys, BMCs and the number of hosts are per stack and never compared.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components.catalog.gpu import GpuAdminTools, GpuSku
from tdxattest.core.pins import StackPins

PROMOTABLE_SCHEMA = 1
FIX = "deploy and verify these pins in staging first, or point promotion.fromStack at a stack that has"
_ABSENT = object()


@dataclass(frozen=True)
class Difference:
    path: str  # e.g. `gpu.h100-sxm.vbios`
    promoted: Any  # what the promoting stack (staging) exported as attested; None when absent there
    this: Any  # this stack's value; None when absent here

    def render(self, from_stack: str, stack: str) -> str:
        return f"{self.path}: {from_stack} attested {_show(self.promoted)}, {stack} would deploy {_show(self.this)}"


def _show(value: Any) -> str:
    if value is None:
        return "nothing (not pinned)"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def promotable_pins(pins: StackPins, gpus: Mapping[str, GpuSku], tools: GpuAdminTools | None) -> dict[str, Any]:
    """The pins another stack may promote: from the `pins` (docs/pins.md, with the TDX module
    releases and their MRSEAM), the pins of the GPU SKUs the stack's hosts use (`gpus`, by model) and
    gpu-admin-tools (`tools`, with GPUs only). Pure."""
    artifacts = pins.boot.artifacts if pins.boot is not None else None

    def sha256(role: str) -> str | None:
        artifact = getattr(artifacts, role) if artifacts is not None else None
        return artifact.sha256 if artifact is not None else None

    out: dict[str, Any] = {
        "schema": PROMOTABLE_SCHEMA,
        "td": {
            "profile": pins.profile,
            "mrtd": pins.value("mrtd"),
            "rtmr0": pins.value("rtmr0"),
            "rtmr1": pins.value("rtmr1"),
            "rtmr2": pins.value("rtmr2"),
            "rtmr3": pins.value("rtmr3"),
            "tdAttributes": pins.value("tdAttributes"),
        },
        "artifacts": {
            "firmware": sha256("firmware"),
            "kernel": sha256("kernel"),
            "initrd": sha256("initrd"),
            "cmdline": artifacts.cmdline if artifacts is not None else None,
        },
        "gpu": {model: {"vbios": sku.vbios, "driver": sku.driver} for model, sku in sorted(gpus.items())},
        "gpuAdminTools": {"version": tools.version, "sha256": tools.sha256} if tools and gpus else None,
        "tdxModules": dict(pins.tdx_modules) if pins.tdx_modules is not None else None,
    }
    # Only with a workload (Pulumi drops null outputs, so an absent section equals a null one): a
    # stack without a workload promotes exactly what it did before workloads existed.
    if pins.image_digest is not None or pins.model_sha256 is not None:
        out["workload"] = {"imageDigest": pins.image_digest, "modelSha256": pins.model_sha256}
    return out


def compare(expected: Mapping[str, Any], promoted: Mapping[str, Any]) -> list[Difference]:
    """Every leaf where this stack's promotable pins (`expected`) differ from the promoted stack's
    (`promoted`), in a stable order. Mappings are compared key by key; anything else as a whole."""
    out: list[Difference] = []

    def walk(path: str, mine: Any, theirs: Any) -> None:
        if isinstance(mine, Mapping) and isinstance(theirs, Mapping):
            for key in sorted(set(mine) | set(theirs), key=str):
                walk(f"{path}.{key}" if path else str(key), mine.get(key, _ABSENT), theirs.get(key, _ABSENT))
            return
        if isinstance(mine, Mapping) and theirs is _ABSENT:
            for key in sorted(mine, key=str):
                walk(f"{path}.{key}", mine[key], _ABSENT)
            return
        if isinstance(theirs, Mapping) and mine is _ABSENT:
            for key in sorted(theirs, key=str):
                walk(f"{path}.{key}", _ABSENT, theirs[key])
            return
        # Pulumi drops null values from stack outputs: a null (not pinned) leaf equals an absent one.
        mine, theirs = (None if mine is _ABSENT else mine), (None if theirs is _ABSENT else theirs)
        if mine != theirs:
            out.append(Difference(path, theirs, mine))

    walk("", dict(expected), dict(promoted))
    return out


def refusal(from_stack: str, stack: str, promoted: Any, expected: Mapping[str, Any]) -> str | None:
    """None when `stack` may deploy `expected`; otherwise the refusal, one line per differing field."""
    if promoted is None or promoted is _ABSENT:
        # Pulumi drops null stack outputs, so "not exported" and "exported as null" look the same.
        return (
            f"promotion refused: {from_stack} has not exported its pins as attested (no `promotable` output: "
            f"its last `pulumi up` did not verify every host step, or it never ran this program); fix: {FIX}"
        )
    if not isinstance(promoted, Mapping) or promoted.get("schema") != PROMOTABLE_SCHEMA:
        return (
            f"promotion refused: {from_stack} exports `promotable` in an unknown form "
            f"(schema {promoted.get('schema') if isinstance(promoted, Mapping) else type(promoted).__name__}, "
            f"expected {PROMOTABLE_SCHEMA}); fix: {FIX}"
        )
    diffs = compare(expected, promoted)
    if not diffs:
        return None
    n = len(diffs)
    lines = [
        f"promotion refused: {n} pin{'s' if n != 1 else ''} of {stack} differ{'s' if n == 1 else ''} "
        f"from what {from_stack} exported as attested:"
    ]
    lines += [f"  - {d.render(from_stack, stack)}" for d in diffs]
    lines.append(f"fix: {FIX}")
    return "\n".join(lines)


def refusal_from_outputs(
    from_stack: str, stack: str, outputs: Mapping[str, Any], expected: Mapping[str, Any]
) -> str | None:
    """`refusal` given the promoted stack's whole output map (a missing `promotable` is refused too)."""
    return refusal(from_stack, stack, outputs.get("promotable", _ABSENT) if outputs is not None else _ABSENT, expected)
