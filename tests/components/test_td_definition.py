"""The TD definition (components/td_definition.py): QEMU argv, systemd unit, agent config, boot
manifest reading. Pure: policy bits, GPU devices, no DEBUG anywhere, deterministic output."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace

import pytest
import yaml

from components.catalog.pinfile import CatalogError
from components.catalog.td_manifest import load_boot_manifest
from components.render.td_definition import (
    NO_TDX_ACCEL,
    DefinitionError,
    TdDefinition,
    agent_config,
    assert_no_debug,
    exec_start,
    qemu_argv,
    render_unit,
    tdx_guest_object,
)
from guest_agent import CONFIG_FW_CFG
from tests.support.paths import REPO
from tests.support.stacks import CMDLINE, INITRD_SHA, KERNEL_SHA, pinned_firmware_dir

GPU_A, GPU_B = "0000:b8:00.0", "0000:ba:00.0"


def definition(**changes) -> TdDefinition:
    d = TdDefinition(
        name="gpu-a",
        firmware="/var/lib/tdx-vllm/td/gpu-a/firmware.fd",
        kernel="/var/lib/tdx-vllm/td/gpu-a/vmlinuz",
        initrd="/var/lib/tdx-vllm/td/gpu-a/initrd.img",
        cmdline=CMDLINE,
        vcpus=16,
        memory_mib=65536,
        gpus=(GPU_A,),
        agent_config="/var/lib/tdx-vllm/td/gpu-a/agent.json",
        serial_log="/var/lib/tdx-vllm/td/gpu-a/serial.log",
        gateway_port=8443,
        qgs_port=4050,
        after_units=("qgsd.service",),
    )
    return replace(d, **changes)


def option_values(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == option]


def parse_exec_start(unit: str) -> list[str]:
    """ExecStart= back into argv, the way systemd reads it for the quoting the renderer uses
    (plain words and single-quoted words; %% and $$ escapes)."""
    text = unit.replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line[len("ExecStart=") :])]


# ---------------------------------------------------------------------------------------------
# policy


def test_tdx_guest_object_never_sets_debug_and_sets_sept_ve_disable():
    obj = json.loads(tdx_guest_object(4050))
    assert obj == {
        "qom-type": "tdx-guest",
        "id": "tdx",
        "sept-ve-disable": True,
        "quote-generation-socket": {"type": "vsock", "cid": "2", "port": "4050"},
    }
    argv = qemu_argv(definition())
    assert option_values(argv, "-object")[1] == tdx_guest_object(4050)
    assert "q35,kernel_irqchip=split,confidential-guest-support=tdx,memory-backend=mem0,hpet=off" in argv
    assert "memory-backend-ram,id=mem0,size=65536M" in argv


def test_no_debug_anywhere_in_the_rendered_unit():
    unit = render_unit(definition(gpus=(GPU_A, GPU_B)), {"firmware sha256": "11" * 32})
    assert "debug" not in unit.lower()
    assert "attributes" not in unit


def test_the_pinned_td_attributes_agree_with_the_rendered_policy():
    """The manifest's TD_ATTRIBUTES (what `pins.tdAttributes` exports) have DEBUG clear and
    SEPT_VE_DISABLE set, which is what the rendered tdx-guest object asks QEMU for."""
    from components.catalog.td_manifest import read_manifest

    manifest = read_manifest(REPO / "firmware" / "td" / "ovmf-debian-trixie.yaml")
    attrs = int.from_bytes(bytes.fromhex(manifest["td"]["attributes"]), "little")
    assert attrs & 1 == 0 and attrs & (1 << 28)
    assert json.loads(tdx_guest_object(4050))["sept-ve-disable"] is True


@pytest.mark.parametrize(
    "obj, message",
    [
        ('{"qom-type":"tdx-guest","id":"tdx","sept-ve-disable":true,"debug":true}', "never be debuggable"),
        ('{"qom-type":"tdx-guest","id":"tdx","sept-ve-disable":true,"attributes":268435457}', "never be debuggable"),
        ('{"qom-type":"tdx-guest","id":"tdx"}', "sept-ve-disable"),
        ('{"qom-type":"tdx-guest","id":"tdx","sept-ve-disable":false}', "sept-ve-disable"),
        ("tdx-guest,id=tdx,debug=on", "JSON"),
    ],
)
def test_assert_no_debug_refuses_unsafe_objects(obj, message):
    argv = qemu_argv(definition())
    argv[argv.index(tdx_guest_object(4050))] = obj
    with pytest.raises(DefinitionError, match=message):
        assert_no_debug(argv)


def test_assert_no_debug_needs_exactly_one_td_object_and_the_machine_link():
    argv = qemu_argv(definition())
    with pytest.raises(DefinitionError, match="exactly one"):
        assert_no_debug(argv + ["-object", tdx_guest_object(4050)])
    i = argv.index("-machine")
    argv[i + 1] = "q35,kernel_irqchip=split"
    with pytest.raises(DefinitionError, match="confidential-guest-support"):
        assert_no_debug(argv)


# ---------------------------------------------------------------------------------------------
# devices, boot, console, network


def test_direct_boot_console_agent_config_and_gateway_forward():
    argv = qemu_argv(definition())
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    assert option_values(argv, "-bios") == ["/var/lib/tdx-vllm/td/gpu-a/firmware.fd"]
    assert option_values(argv, "-kernel") == ["/var/lib/tdx-vllm/td/gpu-a/vmlinuz"]
    assert option_values(argv, "-initrd") == ["/var/lib/tdx-vllm/td/gpu-a/initrd.img"]
    assert option_values(argv, "-append") == [CMDLINE]
    assert option_values(argv, "-smp") == ["16"] and option_values(argv, "-m") == ["65536M"]
    assert "-nodefaults" in argv and "-nographic" in argv and "-no-reboot" in argv
    assert option_values(argv, "-serial") == ["file:/var/lib/tdx-vllm/td/gpu-a/serial.log"]
    assert f"name={CONFIG_FW_CFG},file=/var/lib/tdx-vllm/td/gpu-a/agent.json" in option_values(argv, "-fw_cfg")
    assert option_values(argv, "-netdev") == ["user,id=net0,hostfwd=tcp::8443-:8443"]
    assert "-pflash" not in argv  # TDVF cannot be pflash


def test_without_initrd_there_is_no_initrd_option():
    assert "-initrd" not in qemu_argv(definition(initrd=None))


def test_each_gpu_gets_an_iommufd_a_root_port_and_vfio_pci():
    argv = qemu_argv(definition(gpus=(GPU_A, GPU_B)))
    assert option_values(argv, "-device")[1:] == [
        "pcie-root-port,port=1,chassis=1,id=pci.1,bus=pcie.0",
        f"vfio-pci,host={GPU_A},bus=pci.1,iommufd=iommufd0",
        "pcie-root-port,port=2,chassis=2,id=pci.2,bus=pcie.0",
        f"vfio-pci,host={GPU_B},bus=pci.2,iommufd=iommufd1",
    ]
    assert option_values(argv, "-object")[2:] == ["iommufd,id=iommufd0", "iommufd,id=iommufd1"]
    assert "name=opt/ovmf/X-PciMmio64Mb,string=262144" in option_values(argv, "-fw_cfg")


def test_without_gpus_there_is_no_large_bar_window():
    argv = qemu_argv(definition(gpus=()))
    assert not any("vfio" in a or "iommufd" in a or "X-PciMmio64Mb" in a for a in argv)


def test_qgs_port_follows_the_dcap_config():
    obj = json.loads(option_values(qemu_argv(definition(qgs_port=4051)), "-object")[1])
    assert obj["quote-generation-socket"] == {"type": "vsock", "cid": "2", "port": "4051"}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"gpus": ("b8:00.0",)}, "not a PCI address"),
        ({"gpus": (GPU_A, GPU_A)}, "twice"),
        ({"kernel": "vmlinuz"}, "absolute"),
        ({"serial_log": "/var/log/td,1.log"}, "commas"),
        ({"name": "GPU_A"}, "lowercase"),
        ({"vcpus": 0}, "positive"),
        ({"gateway_port": 70000}, "port"),
    ],
)
def test_unsafe_inputs_are_refused(changes, message):
    with pytest.raises(DefinitionError, match=message):
        definition(**changes)


# ---------------------------------------------------------------------------------------------
# the unit


def test_unit_exec_start_round_trips_to_the_argv():
    d = definition(gpus=(GPU_A, GPU_B), cmdline="console=ttyS0 quiet 100%done $HOME")
    unit = render_unit(d, {})
    assert parse_exec_start(unit) == qemu_argv(d)
    assert "100%%done $$HOME" in unit  # systemd would expand % specifiers and $ variables


def test_unit_text_is_deterministic_and_carries_the_pins():
    pins = {"firmware sha256": "11" * 32, "expected rtmr3": "ab" * 48}
    a, b = render_unit(definition(), pins), render_unit(definition(), dict(reversed(list(pins.items()))))
    assert a == b
    assert f"# pin firmware sha256: {'11' * 32}\n" in a and f"# pin expected rtmr3: {'ab' * 48}\n" in a
    assert render_unit(definition(), {**pins, "firmware sha256": "12" * 32}) != a
    assert "After=network-online.target qgsd.service\n" in a
    assert "Restart=always\n" in a and "WantedBy=multi-user.target\n" in a
    assert a.endswith("\n")


def test_unit_refuses_arguments_systemd_cannot_carry():
    with pytest.raises(DefinitionError, match="quote"):
        render_unit(definition(cmdline="init=/bin/sh -c 'x'"), {})
    with pytest.raises(DefinitionError, match="backslash"):
        exec_start(["/usr/bin/qemu", "-append", "a\\b"])


def test_agent_config_is_canonical_json_in_the_agents_schema():
    """docs/guest-agent.md: the agent refuses unknown keys, so only its keys are rendered. The GPU
    pins are inside the (measured) manifest, never a config key of their own."""
    manifest = {"image": "x@sha256:" + "0" * 64, "model": {"id": "a/b"}, "gpu": {"vbios": ["96.00.9F.00.01"]}}
    text = agent_config(
        "prod", manifest, "https://huggingface.co/{id}/resolve/{revision}", 8443, {"prompt": "p", "expect": "e"}
    )
    doc = json.loads(text)
    assert doc == {
        "stack": "prod",
        "workload": manifest,
        "model": {"source": "https://huggingface.co/{id}/resolve/{revision}"},
        "gateway": {"port": 8443},
        "knownAnswer": {"prompt": "p", "expect": "e"},
    }
    assert text == json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n"


def test_root_and_data_disks_carry_the_serials_the_guest_initramfs_looks_for():
    argv = qemu_argv(
        definition(
            rootfs="/var/lib/tdx-vllm/td/gpu-a/rootfs.verity.img", data_disk="/var/lib/tdx-vllm/td/gpu-a/data.img"
        )
    )
    assert option_values(argv, "-drive") == [
        "file=/var/lib/tdx-vllm/td/gpu-a/rootfs.verity.img,if=none,id=root,format=raw,readonly=on",
        "file=/var/lib/tdx-vllm/td/gpu-a/data.img,if=none,id=data,format=raw",
    ]
    assert "virtio-blk-pci,drive=root,serial=tdx-vllm-root" in argv
    assert "virtio-blk-pci,drive=data,serial=tdx-vllm-data" in argv
    assert "-drive" not in qemu_argv(definition())


# ---------------------------------------------------------------------------------------------
# the boot manifest


def test_the_repository_manifests_pin_the_guest_image():
    prod = load_boot_manifest(REPO / "firmware" / "td" / "ovmf-debian-trixie.yaml")
    dev = load_boot_manifest(REPO / "firmware" / "td" / "ovmf-debian-trixie-dev.yaml")
    for boot, stack in ((prod, "prod"), (dev, "dev")):
        assert boot.launchable, boot.gaps
        assert [a.staged_name for a in boot.artifacts] == ["firmware.fd", "vmlinuz", "initrd.img", "rootfs.verity.img"]
        assert boot.vcpus == 16 and boot.memory_mib == 65536
        # the root disk is measured through the dm-verity root hash on the (RTMR2) command line
        root_hash = dict(a.split("=", 1) for a in boot.cmdline.split() if "=" in a)["tdx_vllm.roothash"]
        assert boot.rootfs.file == f"tdx-vllm-guest-{stack}-rootfs-{root_hash[:12]}.verity.img"
    # dev shares the firmware and the (unmodified Debian) kernel, not the initrd or the root
    assert (dev.firmware, dev.kernel) == (prod.firmware, prod.kernel)
    assert dev.initrd != prod.initrd and dev.rootfs != prod.rootfs and dev.cmdline != prod.cmdline


def test_an_unpinned_manifest_is_not_launchable_and_says_why(tmp_path):
    path = pinned_firmware_dir(tmp_path) / "td" / "ovmf-debian-trixie.yaml"
    data = yaml.safe_load(path.read_text())
    for key in ("kernel", "initrd"):
        data[key] = {"file": None, "reason": "guest image build not pinned yet"}
    data["cmdline"] = {"value": None, "reason": "guest image build not pinned yet"}
    path.write_text(yaml.safe_dump(data))
    boot = load_boot_manifest(path)
    assert not boot.launchable
    assert [g.split(":")[0] for g in boot.gaps] == ["kernel", "initrd", "cmdline"]
    assert boot.firmware is not None and boot.firmware.staged_name == "firmware.fd"


def test_a_rootfs_entry_is_staged_with_the_other_artifacts(tmp_path):
    path = pinned_firmware_dir(tmp_path) / "td" / "ovmf-debian-trixie.yaml"
    data = yaml.safe_load(path.read_text())
    data["rootfs"] = {"name": "rootfs", "version": "t", "source": "s", "file": "rootfs.verity.img", "sha256": "66" * 32}
    path.write_text(yaml.safe_dump(data))
    boot = load_boot_manifest(path)
    assert boot.rootfs is not None and boot.artifacts[-1].staged_name == "rootfs.verity.img"


def test_a_pinned_manifest_is_launchable(tmp_path):
    boot = load_boot_manifest(pinned_firmware_dir(tmp_path) / "td" / "ovmf-debian-trixie.yaml")
    assert boot.launchable and boot.cmdline == CMDLINE
    assert [(a.role, a.staged_name, a.sha256) for a in boot.artifacts] == [
        ("firmware", "firmware.fd", "14954040cc754ade0c625ac3470ea46d4c14318b5b1396de4ef77090203d76db"),
        ("kernel", "vmlinuz", KERNEL_SHA),
        ("initrd", "initrd.img", INITRD_SHA),
    ]


def test_bad_manifest_values_are_refused(tmp_path):
    path = pinned_firmware_dir(tmp_path) / "td" / "ovmf-debian-trixie.yaml"
    data = yaml.safe_load(path.read_text())
    data["kernel"]["sha256"] = "XYZ"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CatalogError, match="kernel.sha256"):
        load_boot_manifest(path)
    data["kernel"]["sha256"] = KERNEL_SHA
    data["vm"]["vcpus"] = 0
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CatalogError, match="vm.vcpus"):
        load_boot_manifest(path)


# ---------------------------------------------------------------------------------------------
# the dev stack's TD without TDX (workload.td.tdx: false)


def test_without_tdx_the_vm_runs_under_tcg_with_no_td_object():
    argv = qemu_argv(definition(tdx=False, gpus=(), vcpus=2, memory_mib=2048))
    assert option_values(argv, "-accel") == [NO_TDX_ACCEL] and option_values(argv, "-cpu") == ["max"]
    assert option_values(argv, "-machine") == ["q35,hpet=off"]
    assert not [a for a in argv if "tdx-guest" in a or "confidential-guest-support" in a]
    # the rest of the definition is the TD's: the pinned firmware, direct boot, agent config, gateway
    assert option_values(argv, "-bios") == ["/var/lib/tdx-vllm/td/gpu-a/firmware.fd"]
    assert option_values(argv, "-append") == [CMDLINE]
    assert f"name={CONFIG_FW_CFG},file=/var/lib/tdx-vllm/td/gpu-a/agent.json" in option_values(argv, "-fw_cfg")
    with pytest.raises(DefinitionError, match="exactly one tdx-guest object"):
        assert_no_debug(argv)  # so the TD path can never be rendered like this by mistake


def test_the_unit_of_a_vm_without_tdx_says_so_and_a_tds_does_not():
    assert "NO TDX (dev stack" in render_unit(definition(tdx=False, gpus=()), {})
    assert "NO TDX" not in render_unit(definition(), {})


def test_agent_config_names_the_standin_server_only_when_chosen():
    args = ("dev", {"image": "x"}, "https://m.example/{id}", 8443, {"prompt": "p", "expect": "p"})
    assert json.loads(agent_config(*args, "standin"))["server"] == "standin"
    assert "server" not in json.loads(agent_config(*args))
