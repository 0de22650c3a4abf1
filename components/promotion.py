"""Promotion: a stack (prod) deploys only the pins another stack (staging) exported as attested.

Pure, no Pulumi: `__main__.py` exports `promotable_pins(...)` as the `promotable` stack output (only
when every host step verified, else null) and, when `promotion.fromStack` is set, compares its own
promotable pins with the ones read from that stack through a StackReference (`compare`), refusing
with `refusal(...)` before any host step is registered.

What is compared (and nothing else): the TD measurements (MRTD, RTMR0-3, TD attributes), the sha256
of each TD boot artifact (firmware, kernel, initrd), the guest kernel command line, the VBIOS and
driver pins of every GPU SKU the stack uses, the gpu-admin-tools wheel (version and sha256), the
TDX module pin and, for a stack with a workload, the vLLM image digest and the model hash. Host addresses, keys, BMCs and the number of hosts are per stack and never compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

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
    import json

    return json.dumps(value, sort_keys=True)


def _sha256(artifact: Any) -> str | None:
    return artifact.get("sha256") if isinstance(artifact, Mapping) else None


def promotable_pins(
    pins: Mapping[str, Any],
    gpu_models: list[str] | tuple[str, ...],
    tdx_module: str | None,
    firmware_dir: Path | None = None,
) -> dict[str, Any]:
    """The pins another stack may promote: from the `pins` output (docs/pins.md), the GPU SKUs the
    stack's hosts use (`firmware/gpu/<sku>.yaml`), gpu-admin-tools and `platform.tdxModule`."""
    from .firmware import gpu_admin_tools, gpu_sku
    from .paths import FIRMWARE_DIR

    fw = firmware_dir if firmware_dir is not None else FIRMWARE_DIR
    artifacts = pins.get("artifacts") or {}
    gpus: dict[str, Any] = {}
    for model in sorted(set(gpu_models)):
        sku = gpu_sku(model, fw)
        gpus[model] = {"vbios": sku.vbios, "driver": sku.driver}
    tools = gpu_admin_tools(fw) if gpus else None
    out = {
        "schema": PROMOTABLE_SCHEMA,
        "td": {
            "profile": pins.get("profile"),
            "mrtd": pins.get("mrtd"),
            "rtmr0": pins.get("rtmr0"),
            "rtmr1": pins.get("rtmr1"),
            "rtmr2": pins.get("rtmr2"),
            "rtmr3": pins.get("rtmr3"),
            "tdAttributes": pins.get("tdAttributes"),
        },
        "artifacts": {
            "firmware": _sha256(artifacts.get("firmware")),
            "kernel": _sha256(artifacts.get("kernel")),
            "initrd": _sha256(artifacts.get("initrd")),
            "cmdline": artifacts.get("cmdline"),
        },
        "gpu": gpus,
        "gpuAdminTools": {"version": tools.version, "sha256": tools.sha256} if tools else None,
        "tdxModule": tdx_module,
    }
    # Only with a workload (Pulumi drops null outputs, so an absent section equals a null one): a
    # stack without a workload promotes exactly what it did before workloads existed.
    if pins.get("imageDigest") is not None or pins.get("modelSha256") is not None:
        out["workload"] = {"imageDigest": pins.get("imageDigest"), "modelSha256": pins.get("modelSha256")}
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
