"""guest_agent.driver: loading the image's NVIDIA kernel modules and reporting the kernel's verdict,
against a scripted modprobe/insmod/modinfo and kernel log. The kernel lines are the ones the real
image printed under QEMU without a GPU (tests/slow/test_guest_image.py checks the real thing)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from guest_agent import driver
from guest_agent.system import CommandResult, System

RELEASE = "7.3.4+deb13-cloud-amd64"
UVM_KO = f"/lib/modules/{RELEASE}/updates/nvidia/nvidia-uvm.ko"
NO_GPU = [
    "nvidia: loading out-of-tree module taints kernel.",
    "nvidia: module verification failed: signature and/or required key missing - tainting kernel",
    "nvidia-nvlink: Nvlink Core is being initialized, major device number 242",
    "NVRM: No NVIDIA GPU found.",
    "nvidia-nvlink: Unregistered Nvlink Core, major device number 242",
]
ENODEV = "modprobe: ERROR: could not insert 'nvidia': No such device"
NVIDIA_EXPORTS = ["nvUvmInterfaceSessionCreate", "nvUvmInterfaceGetGpuInfo", "nv_vma_start_write"]


class FakeKernel:
    """modprobe/insmod/modinfo as the image's kmod answers them, and the kernel lines each load writes."""

    def __init__(self, root: Path, *, gpu: bool, uvm_unknown: Sequence[str] = NVIDIA_EXPORTS[:2]):
        self.root, self.gpu, self.uvm_unknown = root, gpu, list(uvm_unknown)
        self.calls: list[list[str]] = []
        self.pending: list[str] = []  # what the next kmsg read returns

    def loaded(self, module: str) -> None:
        (self.root / "sys" / "module" / driver.module_dir_name(module)).mkdir(parents=True, exist_ok=True)

    def run(self, argv: Sequence[str], timeout_s: float) -> CommandResult:
        argv = list(argv)
        self.calls.append(argv)
        ok = CommandResult(tuple(argv), 0, "", "")
        if argv[:3] == ["modinfo", "-F", "depends"]:
            return CommandResult(tuple(argv), 0, "nvidia\n" if argv[3] == "nvidia-uvm" else "\n", "")
        if argv[:2] == ["modinfo", "-n"]:
            return CommandResult(tuple(argv), 0, UVM_KO + "\n", "")
        if argv[0] == "modprobe":
            if self.gpu:
                self.pending = ["NVRM: loading NVIDIA UNIX Open Kernel Module for x86_64  550.163.01"]
                self.loaded("nvidia")
                if argv[1] == "nvidia-uvm":
                    self.loaded("nvidia-uvm")
                return ok
            self.pending = list(NO_GPU[2:]) if (self.root / "taint").exists() else list(NO_GPU)
            (self.root / "taint").touch()
            # kmod names the module it was asked for, though the failing init is nvidia's
            return CommandResult(
                tuple(argv), 1, "", ENODEV.replace("'nvidia'", f"'{argv[1].replace('-', '_')}'") + "\n"
            )
        if argv[0] == "insmod":
            self.pending = [f"nvidia_uvm: Unknown symbol {s} (err -2)" for s in self.uvm_unknown]
            return CommandResult(
                tuple(argv), 1, "", f"insmod: ERROR: could not insert module {argv[1]}: Unknown symbol in module\n"
            )
        raise AssertionError(f"unexpected command {argv}")

    def kmsg(self) -> FakeKmsg:
        return FakeKmsg(self)


class FakeKmsg(driver.Kmsg):
    def __init__(self, kernel: FakeKernel):
        self.kernel = kernel

    def start(self) -> None:
        self.kernel.pending = []

    def read(self) -> list[str]:
        # /dev/kmsg records: "prio,seq,usec,flags;text", a continuation line after some
        records = [f"3,{i},{i * 1000},-;{text}\n SUBSYSTEM=pci\n" for i, text in enumerate(self.kernel.pending)]
        return driver.parse_kmsg(records)


def image(root: Path, gpu_driver: dict | None = None, symbols: Sequence[str] = NVIDIA_EXPORTS) -> None:
    facts: dict[str, object] = {"stack": "prod", "kernel": RELEASE}
    if gpu_driver is not None:
        facts["gpuDriver"] = gpu_driver
    (root / "etc" / "tdx-vllm").mkdir(parents=True)
    (root / "etc" / "tdx-vllm" / "image.json").write_text(json.dumps(facts))
    mods = root / "lib" / "modules" / RELEASE
    mods.mkdir(parents=True)
    (mods / "modules.symbols").write_text(
        "".join(f"alias symbol:{s} nvidia\n" for s in symbols) + "alias symbol:dm_get_device dm_mod\n"
    )


DRIVER = {"version": "550.163.01", "cuda": "12.4", "modules": ["nvidia", "nvidia-uvm"]}


def test_without_a_gpu_nvidia_finds_no_device_and_uvm_needs_only_nvidias_symbols(tmp_path: Path):
    image(tmp_path, DRIVER)
    kernel = FakeKernel(tmp_path, gpu=False)
    doc, status = driver.report(System(root=tmp_path, run=kernel.run), RELEASE, kernel.kmsg)
    assert status == 1
    assert doc["driver"] == "550.163.01" and doc["kernel"] == RELEASE and doc["nvidiaPciFunctions"] == 0
    nvidia, uvm = doc["modules"]
    assert nvidia == {
        "module": "nvidia",
        "command": "modprobe nvidia",
        "exit": 1,
        "stderr": ENODEV,
        "kernel": NO_GPU,
        "loaded": False,
    }
    assert uvm["module"] == "nvidia-uvm" and uvm["loaded"] is False and uvm["exit"] == 1
    assert uvm["stderr"] == "modprobe: ERROR: could not insert 'nvidia_uvm': No such device"
    assert uvm["alone"] == {
        "command": f"insmod {UVM_KO}",
        "exit": 1,
        "stderr": f"insmod: ERROR: could not insert module {UVM_KO}: Unknown symbol in module",
        "kernel": [f"nvidia_uvm: Unknown symbol {s} (err -2)" for s in NVIDIA_EXPORTS[:2]],
        "unknownSymbols": 2,
        "unknownNotFromDriver": [],
    }
    assert ["insmod", UVM_KO] in kernel.calls


def test_a_module_built_for_another_kernel_shows_its_foreign_unknown_symbols(tmp_path: Path):
    image(tmp_path, DRIVER)
    kernel = FakeKernel(tmp_path, gpu=False, uvm_unknown=["nvUvmInterfaceSessionCreate", "vm_flags_set_removed"])
    doc, _ = driver.report(System(root=tmp_path, run=kernel.run), RELEASE, kernel.kmsg)
    assert doc["modules"][1]["alone"]["unknownNotFromDriver"] == ["vm_flags_set_removed"]


def test_without_modules_symbols_every_unknown_symbol_counts_as_foreign(tmp_path: Path):
    image(tmp_path, DRIVER)
    (tmp_path / "lib" / "modules" / RELEASE / "modules.symbols").unlink()
    kernel = FakeKernel(tmp_path, gpu=False)
    doc, _ = driver.report(System(root=tmp_path, run=kernel.run), RELEASE, kernel.kmsg)
    assert doc["modules"][1]["alone"]["unknownNotFromDriver"] == sorted(NVIDIA_EXPORTS[:2])


def test_with_a_gpu_every_module_loads(tmp_path: Path):
    image(tmp_path, DRIVER)
    dev = tmp_path / "sys" / "bus" / "pci" / "devices" / "0000:00:05.0"
    dev.mkdir(parents=True)
    (dev / "vendor").write_text("0x10de\n")
    kernel = FakeKernel(tmp_path, gpu=True)
    doc, status = driver.report(System(root=tmp_path, run=kernel.run), RELEASE, kernel.kmsg)
    assert status == 0 and doc["nvidiaPciFunctions"] == 1
    assert [(m["module"], m["loaded"], m["exit"], "alone" in m) for m in doc["modules"]] == [
        ("nvidia", True, 0, False),
        ("nvidia-uvm", True, 0, False),
    ]
    assert not any(c[0] == "insmod" for c in kernel.calls)


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (None, "with a `gpuDriver` object"),
        ({"version": "", "modules": ["nvidia"]}, "gpuDriver.version as a string"),
        ({"version": "550.163.01", "modules": []}, "gpuDriver.modules as a non-empty list"),
    ],
)
def test_an_image_without_a_driver_record_is_reported_not_guessed(tmp_path: Path, facts, expected):
    image(tmp_path, facts)
    kernel = FakeKernel(tmp_path, gpu=False)
    doc, status = driver.report(System(root=tmp_path, run=kernel.run), RELEASE, kernel.kmsg)
    assert status == 2 and expected in doc["error"] and kernel.calls == []


def test_kmsg_records_and_unknown_symbols_parse():
    lines = driver.parse_kmsg(["4,1,2,-;nvidia_uvm: Unknown symbol a (err -2)\n SUBSYSTEM=x\n", "6,2,3,c;plain\n"])
    assert lines == ["nvidia_uvm: Unknown symbol a (err -2)", "plain"]
    assert driver.unknown_symbols([*lines, "nvidia_uvm: Unknown symbol a (err -2)"]) == ["a"]
    assert driver.driver_exports("alias symbol:x nvidia_uvm\nalias symbol:y nvidia\nbad\n", ["nvidia"]) == {"y"}


def test_the_fact_line_is_one_json_line():
    text = driver.line({"driver": "550.163.01", "modules": []})
    assert text.startswith(driver.PREFIX) and "\n" not in text
    assert json.loads(text[len(driver.PREFIX) :]) == {"driver": "550.163.01", "modules": []}
