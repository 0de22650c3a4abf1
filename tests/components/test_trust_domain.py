"""TrustDomain under Pulumi mocks: where it sits in the graph, what a changed pin replaces, what it
exports; and the workload pins (RTMR3, image digest, model hash) with promotion."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pulumi
import pytest

from components.catalog.gpu import gpu_pins_for, gpu_sku
from components.config.stack import parse_stack
from components.render.pins import workload_pins
from components.render.promotion import promotable_pins, refusal
from components.render.trust_domain import (
    definition,
    endpoint_url,
    launch_params,
    select_gpus,
    stage_params,
    wait_params,
    workload_manifest,
)
from components.resources.trust_domain import trust_domains
from tdxattest.core.pins import StackPins
from tdxattest.core.workload import expected_rtmr3, model_sha256, rtmr3_events
from tests.support.pulumi_mocks import SECRETS, Mocks, build_host, decrypted
from tests.support.pulumi_mocks import check as _assert
from tests.support.stacks import KERNEL_SHA, good, pinned_firmware_dir, workload

GPUS = [{"bdf": "0000:ba:00.0", "device_id": "2330"}, {"bdf": "0000:b8:00.0", "device_id": "2330"}]


class TdMocks(Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        rid, outs = super().new_resource(args)
        if args.typ == "command:remote:Command" and args.name.endswith("-preflight-check"):
            facts = json.loads(outs["stdout"])
            facts["gpus"] = GPUS
            outs["stdout"] = json.dumps(facts)
        if args.typ == "command:remote:Command" and args.name.endswith("-td-wait"):
            facts = json.loads(outs["stdout"])
            facts.update(state="ready", rtmr3="00" * 48)
            outs["stdout"] = json.dumps(facts)
        return rid, outs


@pytest.fixture(autouse=True)
def mocks():
    pulumi.runtime.set_mocks(TdMocks(), project="tdx-vllm", stack="staging", preview=False)
    yield


def stack_config(tmp_path, *, kernel_sha: str = KERNEL_SHA, **wl_changes):
    fw = pinned_firmware_dir(tmp_path, kernel_sha=kernel_sha)
    raw = good()
    raw["workload"] = {**workload(), **wl_changes}
    return parse_stack(decrypted(raw), "staging", secret_paths=set(SECRETS), firmware_dir=fw)


def build(cfg, host_index: int = 0):
    host, rec = build_host(cfg, host_index)
    one = type(cfg)(**{**cfg.__dict__, "hosts": (cfg.hosts[host_index],)})
    manifest = workload_manifest(cfg.workload, 1, [gpu_sku(h.gpu.model) for h in one.hosts if h.gpu])
    tds = trust_domains(one, [host], manifest, qgs_service="qgsd")
    return host, tds[cfg.hosts[host_index].name], rec


def td_stdins(rec) -> pulumi.Output[dict[str, str]]:
    return pulumi.Output.all(
        **{
            n: pulumi.Output.from_input(a.props["stdin"])
            for n, a in rec.resources.items()
            if a.type_ == "command:remote:Command" and "-td-" in n
        }
    )


# ---------------------------------------------------------------------------------------------
# the graph


@pulumi.runtime.test
def test_td_follows_kernel_gpu_and_dcap_and_its_steps_run_in_order(tmp_path):
    _, td, rec = build(stack_config(tmp_path))
    assert rec.resources["gpu-a-td"].type_ == "tdx-vllm:td:TrustDomain"
    assert rec.parent("gpu-a-td") == "gpu-a"
    assert rec.deps("gpu-a-td") == {"gpu-a-kernel", "gpu-a-dcap", "gpu-a-gpu"}
    assert rec.deps("gpu-a-td-launch") == {"gpu-a-td-stage"} and rec.deps("gpu-a-td-wait") == {"gpu-a-td-launch"}
    for step in ("stage", "launch", "wait"):
        assert rec.parent(f"gpu-a-td-{step}") == "gpu-a-td"
    return pulumi.Output.all(td.ready, td.endpoint).apply(lambda a: _assert(a == [True, "https://192.0.2.10:8443"]))


@pulumi.runtime.test
def test_a_changed_launch_replaces_the_td_stopping_the_old_one_first(tmp_path):
    _, _, rec = build(stack_config(tmp_path))
    launch, stage, wait = (rec.resources[f"gpu-a-td-{s}"] for s in ("launch", "stage", "wait"))
    assert "stdin" in launch.opts.replace_on_changes and launch.opts.delete_before_replace is True
    assert launch.props.get("delete") and stage.props.get("delete") and not wait.props.get("delete")
    assert wait.opts.custom_timeouts.create == f"{3600 + 120}s"
    assert stage.opts.custom_timeouts.create == "1800s"


@pulumi.runtime.test
def test_launch_input_carries_the_definition_gpus_and_pins(tmp_path):
    cfg = stack_config(tmp_path)
    _, _, rec = build(cfg)
    manifest = workload_manifest(cfg.workload, 1, [gpu_sku("h100-sxm")])

    def check(stdins):
        launch = stdins["gpu-a-td-launch"]
        assert '{"qom-type":"tdx-guest","id":"tdx","quote-generation-socket":{"type":"vsock","cid":"2",' in launch
        assert "vfio-pci,host=0000:b8:00.0,bus=pci.1,iommufd=iommufd0" in launch  # the first GPU preflight found
        assert "0000:ba:00.0" not in launch  # gpu.count is 1
        assert KERNEL_SHA in launch and manifest.digest().hex() in launch
        assert expected_rtmr3(manifest).hex() in stdins["gpu-a-td-wait"]
        assert KERNEL_SHA in stdins["gpu-a-td-stage"] and "https://artifacts.example.net/td" in stdins["gpu-a-td-stage"]
        for text in stdins.values():
            for secret in SECRETS.values():
                assert secret not in text

    return td_stdins(rec).apply(check)


@pulumi.runtime.test
def test_a_changed_pinned_artifact_restages_relaunches_and_waits_again(tmp_path):
    _, _, base = build(stack_config(tmp_path / "a"))
    _, _, kernel = build(stack_config(tmp_path / "b", kernel_sha="66" * 32))
    _, _, args = build(stack_config(tmp_path / "c", vllmArgs=["--max-model-len", "8192"]))

    def compare(all_stdins):
        a, b, c = ({n: hashlib.sha256(s.encode()).hexdigest() for n, s in d.items()} for d in all_stdins)
        assert {n for n in a if a[n] != b[n]} == {"gpu-a-td-stage", "gpu-a-td-launch", "gpu-a-td-wait"}
        assert {n for n in a if a[n] != c[n]} == {"gpu-a-td-launch", "gpu-a-td-wait"}

    return pulumi.Output.all(td_stdins(base), td_stdins(kernel), td_stdins(args)).apply(compare)


def test_no_workload_no_trust_domain():
    cfg = parse_stack(decrypted(good()), "staging", secret_paths=set(SECRETS))
    assert trust_domains(cfg, [], None) == {}


# ---------------------------------------------------------------------------------------------
# pure helpers


def test_gpus_come_from_preflight_in_pci_order():
    assert select_gpus({"gpus": GPUS}, 1) == ("0000:b8:00.0",)
    assert select_gpus({"gpus": GPUS}, 2) == ("0000:b8:00.0", "0000:ba:00.0")
    with pytest.raises(ValueError, match="preflight found 2 GPU"):
        select_gpus({"gpus": GPUS}, 3)


def test_step_parameters(tmp_path):
    cfg = stack_config(tmp_path)
    boot = cfg.workload.boot
    stage = stage_params("gpu-a", boot, cfg.workload.td.artifact_source)
    assert stage["TDX_TD_DIR"] == "/var/lib/tdx-vllm/td/gpu-a"
    assert stage["TDX_ARTIFACTS"].splitlines() == [
        "firmware.fd ovmf-debian13-trixie-2025.02-8-deb13u1.fd "
        "14954040cc754ade0c625ac3470ea46d4c14318b5b1396de4ef77090203d76db",
        f"vmlinuz vmlinuz-6.18.5-test {KERNEL_SHA}",
        f"initrd.img initrd-6.18.5-test.img {'44' * 32}",
    ]
    d = definition("gpu-a", boot, cfg.workload, ("0000:b8:00.0",))
    sku = gpu_sku("h100-sxm")
    manifest = workload_manifest(cfg.workload, 1, [sku])
    launch = launch_params(d, boot, cfg.workload, manifest, "staging")
    assert launch["TDX_UNIT"] == "tdx-vllm-td-gpu-a.service" and launch["TDX_DATA_DISK"] == ""
    agent = json.loads(launch["TDX_AGENT_CONFIG"])
    assert agent["stack"] == "staging" and agent["workload"] == manifest.as_dict()
    assert agent["knownAnswer"] == {"prompt": "The capital of France is", "expect": " Paris"}
    # The GPU pins travel inside the measured manifest, not as host-written agent config.
    assert agent["workload"]["gpu"] == {"vbios": [sku.vbios], "driver": [sku.driver]} and "gpu" not in agent
    with_disk = stack_config(tmp_path / "disk", td={**workload()["td"], "dataDiskGiB": 200})
    d2 = definition("gpu-a", boot, with_disk.workload, ("0000:b8:00.0",))
    assert d2.data_disk == "/var/lib/tdx-vllm/td/gpu-a/data.img"
    assert (
        launch_params(d2, boot, with_disk.workload, with_disk.workload.manifest(1), "staging")["TDX_DATA_DISK_GIB"]
        == "200"
    )
    wait = wait_params(d, cfg.workload.manifest(1), 3600)
    assert wait["TDX_TD_READY_TIMEOUT"] == "3600" and wait["TDX_SERIAL_LOG"] == "/var/lib/tdx-vllm/td/gpu-a/serial.log"


def test_endpoint_urls():
    assert endpoint_url("192.0.2.10", 8443) == "https://192.0.2.10:8443"
    assert endpoint_url("2001:db8::1", 8443) == "https://[2001:db8::1]:8443"
    assert endpoint_url("gpu-a.example.net", 443) == "https://gpu-a.example.net:443"


# ---------------------------------------------------------------------------------------------
# pins and promotion


def _pins() -> StackPins:
    firmware = {"name": "OVMF.fd", "version": "1", "source": "s", "file": "ovmf.fd", "size": 4,
                "sha256": "11" * 32, "sha384": "22" * 48}  # fmt: skip
    return StackPins.from_json(
        {
            "schema": 1,
            "profile": "p",
            "manifest": "firmware/td/p.yaml",
            "mrtd": "aa" * 48,
            "mrtdCandidates": {"single": "aa" * 48, "twoPass": "bb" * 48},
            "pageAddOrder": "single",
            "rtmr0": None,
            "rtmr1": None,
            "rtmr2": None,
            "rtmr3": None,
            "reasons": {"rtmr0": "x", "rtmr3": "workload manifest not pinned yet"},
            "events": {"rtmr0": []},
            "tdAttributes": "0000001000000000",
            "vm": {"vcpus": 16, "memoryMiB": 65536},
            "artifacts": {"firmware": firmware, "kernel": None, "initrd": None, "cmdline": None, "acpi": None},
        }
    )


def test_workload_pins_add_rtmr3_image_digest_and_model_hash(tmp_path):
    m = stack_config(tmp_path).workload.manifest(1)
    pins = workload_pins(_pins(), m).to_json()
    assert pins["rtmr3"] == expected_rtmr3(m).hex() and len(pins["rtmr3"]) == 96
    assert pins["events"]["rtmr3"] == rtmr3_events(m) and pins["events"]["rtmr0"] == []
    assert pins["reasons"] == {"rtmr0": "x"}
    assert pins["imageDigest"] == "sha256:" + "ab" * 32
    # sha256sum format, sorted by path: `sha256sum config.json model.safetensors | sha256sum`
    listing = f"{'bb' * 32}  config.json\n{'aa' * 32}  model.safetensors\n"
    assert pins["modelSha256"] == hashlib.sha256(listing.encode()).hexdigest() == model_sha256(m)
    assert pins["workload"]["manifestSha384"] == m.digest().hex()
    assert _pins().value("rtmr3") is None  # the input is not changed


def test_promotable_includes_the_workload_and_refuses_a_different_image(tmp_path):
    m = stack_config(tmp_path / "a").workload.manifest(1)
    other = stack_config(tmp_path / "b", image="docker.io/vllm/vllm-openai@sha256:" + "cd" * 32).workload.manifest(1)
    staging = promotable_pins(workload_pins(_pins(), m), *gpu_pins_for(["h100-sxm"]))
    prod = promotable_pins(workload_pins(_pins(), other), *gpu_pins_for(["h100-sxm"]))
    assert staging["workload"] == {"imageDigest": "sha256:" + "ab" * 32, "modelSha256": model_sha256(m)}
    assert staging["td"]["rtmr3"] == expected_rtmr3(m).hex()
    message = refusal("staging", "prod", staging, prod)
    assert (
        "workload.imageDigest: staging attested sha256:abab" in message and "prod would deploy sha256:cdcd" in message
    )
    assert "td.rtmr3:" in message
    # A stack without a workload promotes exactly what it did before (no `workload` section).
    plain = promotable_pins(_pins(), *gpu_pins_for(["h100-sxm"]))
    assert "workload" not in plain
    assert "workload.imageDigest: staging attested nothing (not pinned)" in refusal("staging", "prod", plain, staging)


def test_the_program_builds_a_td_per_host_and_exports_endpoints(tmp_path, monkeypatch):
    """__main__.py under mocks with a workload: one TrustDomain per host, `endpoints`, RTMR3 in `pins`."""
    import components.catalog.td_manifest as config_module
    from tests.support.pulumi_mocks import RecordingMocks, run_program

    fw = pinned_firmware_dir(tmp_path)
    # The program validates against the repository's firmware dir; point the workload's boot
    # manifest at the pinned copy (an absolute path wins over the directory it is joined to).
    monkeypatch.setattr(config_module, "TD_BOOT_MANIFEST_DEV", str(fw / "td" / "ovmf-debian-trixie.yaml"))

    class Both(RecordingMocks, TdMocks):
        pass

    mocks = Both()
    raw = good()
    raw["workload"] = workload()
    exported, seen = run_program(
        mocks, decrypted(raw), {"hosts", "dcap"}, monkeypatch, stack="dev", resolve=("endpoints", "ready")
    )
    tds = [name for typ, name in mocks.created if typ == "tdx-vllm:td:TrustDomain"]
    assert sorted(tds) == ["gpu-a-td", "gpu-b-td"]
    assert seen == {
        "endpoints": {"gpu-a": "https://192.0.2.10:8443", "gpu-b": "https://gpu-b.example.net:8443"},
        "ready": True,
    }
    pins = exported["pins"]
    assert pins["rtmr3"] is not None and "rtmr3" not in pins["reasons"]
    assert pins["imageDigest"] == "sha256:" + "ab" * 32


def test_workload_pins_tell_clients_what_the_gpus_must_show(tmp_path):
    from tdxattest.core.workload import gpu_pins

    m = replace(stack_config(tmp_path).workload.manifest(2), gpu=gpu_pins(["96.00.9f.00.01"], ["550.163.01"]))
    pins = workload_pins(_pins(), m).to_json()
    assert pins["gpu"] == {"count": 2, "vbios": ["96.00.9F.00.01"], "driver": ["550.163.01"], "mode": "on"}
    assert "gpu" not in workload_pins(_pins(), replace(m, gpu=None)).to_json()
    assert workload_pins(_pins(), m, "devtools").to_json()["gpu"]["mode"] == "devtools"
