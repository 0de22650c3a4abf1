"""Promotion (components/render/promotion.py): what a stack exports as promotable, the comparison, the refusal."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from components.catalog.gpu import gpu_admin_tools, gpu_pins_for, gpu_sku
from components.catalog.tdx_module import tdx_module_releases
from components.paths import FIRMWARE_DIR
from components.render.pins import with_tdx_modules
from components.render.promotion import FIX, Difference, compare, promotable_pins, refusal, refusal_from_outputs
from tdxattest.core.pins import StackPins
from tests.support.paths import ARTIFACTS, REPO

FROM = "organization/tdx-vllm/staging"
MRTD = "ab" * 48


def pins(**changes) -> dict:
    p = {
        "schema": 1,
        "profile": "debian-trixie-ovmf-direct-boot",
        "manifest": "firmware/td/x.yaml",
        "mrtd": MRTD,
        "mrtdCandidates": {"single": MRTD, "twoPass": "cd" * 48},
        "pageAddOrder": "single",
        "rtmr0": None,
        "rtmr1": None,
        "rtmr2": None,
        "rtmr3": None,
        "reasons": {"rtmr3": "not pinned"},
        "events": {"rtmr0": []},
        "tdAttributes": "0000001000000000",
        "vm": {"vcpus": 16, "memoryMiB": 65536},
        "artifacts": {
            "firmware": {"name": "OVMF.fd", "sha256": "11" * 32, "sha384": "22" * 48},
            "kernel": None,
            "initrd": None,
            "cmdline": None,
            "acpi": None,
        },
    }
    p.update(changes)
    return p


def mrseam(release: str) -> str:
    value = tdx_module_releases()[release].mrseam
    assert value is not None
    return value


def promote(doc: dict, models: list[str], tdx_module: str | None, firmware_dir: Path = FIRMWARE_DIR) -> dict:
    """What __main__.py exports as `promotable` for a stack with this `pins` output, GPU models and
    `platform.tdxModule`."""
    if tdx_module is not None:
        doc = {**doc, "tdxModules": {tdx_module: mrseam(tdx_module)}}
    return promotable_pins(StackPins.from_json(doc), *gpu_pins_for(models, firmware_dir))


def promotable(**changes) -> dict:
    return promote(pins(**changes), ["h100-sxm"], "1.5.34")


def test_promotable_pins_selects_the_compared_fields():
    p = promotable()
    sku, tools = gpu_sku("h100-sxm"), gpu_admin_tools()
    assert p == {
        "schema": 1,
        "td": {
            "profile": "debian-trixie-ovmf-direct-boot",
            "mrtd": MRTD,
            "rtmr0": None,
            "rtmr1": None,
            "rtmr2": None,
            "rtmr3": None,
            "tdAttributes": "0000001000000000",
        },
        "artifacts": {"firmware": "11" * 32, "kernel": None, "initrd": None, "cmdline": None},
        "gpu": {"h100-sxm": {"vbios": sku.vbios, "driver": sku.driver}},
        "gpuAdminTools": {"version": tools.version, "sha256": tools.sha256},
        "tdxModules": {"1.5.34": mrseam("1.5.34")},
    }
    # per-stack facts (events, reasons, the manifest path, VM shape) are not promotion pins
    assert promotable(events={"rtmr0": [{"x": 1}]}, manifest="elsewhere.yaml") == p


def test_promotable_pins_reads_the_given_firmware_dir(tmp_path):
    fw = tmp_path / "fw"
    (fw / "gpu").mkdir(parents=True)
    for name in ("h100-sxm.yaml", "gpu-admin-tools.yaml"):
        (fw / "gpu" / name).write_text((REPO / "firmware" / "gpu" / name).read_text())
    sku = fw / "gpu" / "h100-sxm.yaml"
    data = yaml.safe_load(sku.read_text())
    sku.write_text(sku.read_text().replace(data["vbios"], "96.00.AA.00.01"))
    p = promote(pins(), ["h100-sxm", "h100-sxm"], None, fw)
    assert p["gpu"] == {"h100-sxm": {"vbios": "96.00.AA.00.01", "driver": str(data["driver"])}}
    assert p["tdxModules"] is None


def test_no_gpu_hosts_pin_no_gpu_and_no_tools():
    p = promote(pins(), [], "1.5.34")
    assert p["gpu"] == {} and p["gpuAdminTools"] is None


def test_equal_pins_compare_equal():
    assert compare(promotable(), promotable()) == []
    assert refusal(FROM, "prod", promotable(), promotable()) is None


def test_every_differing_leaf_is_named_with_both_values():
    staging = promotable()
    mine = copy.deepcopy(staging)
    mine["td"]["mrtd"] = "ef" * 48
    mine["gpu"]["h100-sxm"]["vbios"] = "96.00.AA.00.01"
    mine["tdxModules"] = {"1.5.20": mrseam("1.5.20")}
    diffs = compare(mine, staging)
    assert diffs == [
        Difference("gpu.h100-sxm.vbios", staging["gpu"]["h100-sxm"]["vbios"], "96.00.AA.00.01"),
        Difference("td.mrtd", MRTD, "ef" * 48),
        Difference("tdxModules.1.5.20", None, mrseam("1.5.20")),
        Difference("tdxModules.1.5.34", mrseam("1.5.34"), None),
    ]


def test_a_gpu_sku_staging_never_deployed_is_a_difference():
    staging = promotable()
    mine = promote(pins(), ["h100-sxm", "h200-sxm"], "1.5.34")
    diffs = compare(mine, staging)
    assert [d.path for d in diffs] == ["gpu.h200-sxm.driver", "gpu.h200-sxm.vbios"]
    assert all(d.promoted is None for d in diffs)
    msg = refusal(FROM, "prod", staging, mine)
    assert "gpu.h200-sxm.vbios: organization/tdx-vllm/staging attested nothing (not pinned), prod would deploy" in msg


def test_null_and_absent_leaves_are_equal():
    """Pulumi drops null values from stack outputs: an unpinned register comes back absent."""
    staging = promotable()
    del staging["td"]["rtmr1"]
    del staging["artifacts"]["kernel"]
    assert compare(promotable(), staging) == []
    staging["td"]["rtmr2"] = "aa" * 48  # pinned there, not here
    assert compare(promotable(), staging) == [Difference("td.rtmr2", "aa" * 48, None)]


def test_refusal_lists_one_line_per_field_and_the_fix():
    staging = promotable()
    mine = copy.deepcopy(staging)
    mine["artifacts"]["firmware"] = "33" * 32
    mine["gpuAdminTools"]["sha256"] = "44" * 32
    msg = refusal(FROM, "prod", staging, mine)
    lines = msg.splitlines()
    assert lines[0] == f"promotion refused: 2 pins of prod differ from what {FROM} exported as attested:"
    assert lines[1] == f"  - artifacts.firmware: {FROM} attested {'11' * 32}, prod would deploy {'33' * 32}"
    assert lines[2].startswith("  - gpuAdminTools.sha256: ")
    assert lines[3] == f"fix: {FIX}"
    one = copy.deepcopy(staging)
    one["gpuAdminTools"]["version"] = "0.0.0"
    assert refusal(FROM, "prod", staging, one).splitlines()[0] == (
        f"promotion refused: 1 pin of prod differs from what {FROM} exported as attested:"
    )


@pytest.mark.parametrize("outputs", [{}, {"promotable": None}, {"ready": False, "pins": {}}])
def test_a_stack_that_has_not_attested_is_refused(outputs):
    msg = refusal_from_outputs(FROM, "prod", outputs, promotable())
    assert msg.startswith(f"promotion refused: {FROM} has not exported its pins as attested")
    assert msg.endswith(f"fix: {FIX}")


def test_an_unknown_promotable_schema_is_refused():
    msg = refusal(FROM, "prod", {"schema": 99}, promotable())
    assert "unknown form (schema 99, expected 1)" in msg
    assert refusal_from_outputs(FROM, "prod", {"promotable": promotable()}, promotable()) is None


# --------------------------------------------------------------------------------------------
# __main__.py under Pulumi mocks: the gate in front of every host


def _run_program(monkeypatch, staging_outputs: dict, created: list[tuple[str, str]]) -> None:
    from tests.support.pulumi_mocks import RecordingMocks, decrypted, run_program
    from tests.support.stacks import good

    class Mocks(RecordingMocks):
        def new_resource(self, args):
            if args.typ == "pulumi:pulumi:StackReference":
                self.created.append((args.typ, args.name))
                return [args.name, {"name": args.name, "outputs": staging_outputs, "secretOutputNames": []}]
            return super().new_resource(args)

    monkeypatch.setenv("TDX_VLLM_ARTIFACT_DIR", str(ARTIFACTS))
    mocks = Mocks()
    mocks.created = created
    # a stack without a stack file: its secret leaves are those of the secret top-level keys
    raw = decrypted(good())
    raw["promotion"] = {"fromStack": FROM}
    run_program(mocks, raw, {"hosts", "dcap"}, monkeypatch, stack="prod-mock", preview=True)


def _own_promotable(monkeypatch) -> dict:
    from components.render.pins import expected_pins
    from tests.support.stacks import DEFAULT_MANIFEST

    monkeypatch.setenv("TDX_VLLM_ARTIFACT_DIR", str(ARTIFACTS))
    # as the program computes them for a stack without a workload: the guest image's files may be absent
    pins = expected_pins(DEFAULT_MANIFEST, ARTIFACTS, require_guest=False)
    return promotable_pins(with_tdx_modules(pins, {"1.5.16": mrseam("1.5.16")}), *gpu_pins_for(["h100-sxm"]))


def test_program_with_attested_pins_builds_the_hosts(monkeypatch):
    created: list = []
    _run_program(monkeypatch, {"promotable": _own_promotable(monkeypatch), "ready": True}, created)
    assert ("pulumi:pulumi:StackReference", FROM) in created
    assert sorted(n for t, n in created if t == "tdx-vllm:host:TdxHost") == ["gpu-a", "gpu-b"]
    assert len([t for t, _ in created if t.startswith("command:")]) == 13 + 10  # ssh-check, scripts, steps, BIOS


def test_program_refuses_before_any_host_step(monkeypatch):
    staging = _own_promotable(monkeypatch)
    staging["tdxModules"] = {"1.5.16": "ab" * 48}
    created: list = []
    with pytest.raises(
        Exception,
        match=r"promotion refused: 1 pin of prod-mock differs .*\n  - tdxModules\.1\.5\.16: "
        rf"organization/tdx-vllm/staging attested {'ab' * 48}, prod-mock would deploy {mrseam('1.5.16')}",
    ) as info:
        _run_program(monkeypatch, {"promotable": staging}, created)
    assert "fix: deploy and verify these pins in staging first" in str(info.value)
    assert ("pulumi:pulumi:StackReference", FROM) in created
    assert not [t for t, _ in created if t.startswith(("command:", "tdx-vllm:"))], created
