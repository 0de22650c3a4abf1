"""A stack's expected measurements, as `pulumi up` exports them and as `python -m components pins`
prints them offline: one function, so the two cannot differ.

Why the stack output leaves out `events`: the expected event log (every RTMR event's digest, about
150 lines) is evidence for explaining a mismatch, not something a client compares; printed in every
`pulumi preview` and `up` it buried the plan. The output keeps every register, reason and artifact;
`python -m components pins STACK_FILE --events` prints the whole document, events included.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from components.catalog.gpu import GpuAdminTools, GpuSku, gpu_pins_for
from components.catalog.pinfile import CatalogError
from components.catalog.td_manifest import td_boot_manifest
from components.config.model import StackConfig
from components.render.kubernetes import KubernetesWorkloadArgs, args_from_workload
from components.render.kubernetes import expected_pins as kubernetes_pins
from components.render.pins import expected_pins, with_tdx_modules, without_tdx, workload_pins
from components.render.trust_domain import workload_manifest
from guest_agent import DEV_STACK
from tdxattest.core.pins import JsonValue, StackPins
from tdxattest.core.workload import WorkloadManifest


@dataclass(frozen=True)
class StackMeasurements:
    pins: StackPins
    manifest: WorkloadManifest | None  # the workload manifest measured into RTMR3 (None: no workload)
    kubernetes: KubernetesWorkloadArgs | None  # set for `workload.target: kubernetes`
    gpu_skus: Mapping[str, GpuSku]
    gpu_tools: GpuAdminTools | None


def stack_measurements(stack: StackConfig) -> StackMeasurements:
    """On hosts: computed offline from the pinned TD boot artifacts (the dev example may lack the
    artifact files: their registers are then null with the reason), and with a workload RTMR3 too
    (the replay of the guest agent's events). On Kubernetes: the cluster's Kata guest reference
    values, MRCONFIGID from the init data. Raises CatalogError when a pinned file is unusable."""
    workload = stack.workload
    gpu_skus, gpu_tools = gpu_pins_for(h.gpu.model for h in stack.hosts if h.gpu)
    # The manifest carries the GPU pins of the stack's GPU models: measured into RTMR3 with the rest.
    manifest = (
        workload_manifest(workload, stack.tensor_parallel_size, gpu_skus.values()) if workload is not None else None
    )
    modules = {m.version: m.mrseam for m in stack.platform.tdx_modules}
    if workload is not None and manifest is not None and workload.kubernetes is not None:
        k8s = args_from_workload(workload, manifest)
        return StackMeasurements(with_tdx_modules(kubernetes_pins(k8s), modules), manifest, k8s, gpu_skus, gpu_tools)
    # Outside dev every pinned file must be here. A stack that launches no TD (hosts only) does not
    # measure the guest image at all: RTMR1/RTMR2 are null with the reason.
    pins = expected_pins(
        workload.boot if workload is not None and workload.boot is not None else td_boot_manifest(stack.stack),
        require_artifacts=stack.stack != DEV_STACK,
        require_guest=workload is not None,
    )
    pins = with_tdx_modules(pins, modules)
    if manifest is not None:
        # The CC mode clients expect of the GPUs: devtools only where a (dev) host sets it.
        modes = {h.gpu.mode for h in stack.hosts if h.gpu}
        pins = workload_pins(pins, manifest, next((m for m in ("devtools", "ppcie") if m in modes), "on"))
        if workload is not None and workload.td is not None and not workload.td.tdx:
            pins = without_tdx(pins)  # the dev stack's VM: TEST quotes, no boot measurements
    return StackMeasurements(pins, manifest, None, gpu_skus, gpu_tools)


def pins_output(pins: StackPins) -> dict[str, JsonValue]:
    """The `pins` stack output: the pins document without the expected event log (module doc)."""
    return {k: v for k, v in pins.to_json().items() if k != "events"}


def main(argv: list[str] | None = None) -> int:
    from components.config.stack import load_for_command, stack_file_parser

    parser = stack_file_parser(
        "python -m components pins",
        "Print a stack's `pins` document offline, as `pulumi up` exports it (validating the stack file first).",
    )
    parser.add_argument(
        "--events", action="store_true", help="include the expected event log of each RTMR (not in the stack output)"
    )
    args = parser.parse_args(argv)
    stack = load_for_command(args.stack_file)
    if stack is None:
        return 1
    try:
        pins = stack_measurements(stack).pins
    except CatalogError as exc:
        print(f"pins: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(pins.to_json() if args.events else pins_output(pins), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
