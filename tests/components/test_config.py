"""Stack config validation: every rule, every error reported at once, with key path and fix."""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.catalog.tdx_module import tdx_module_releases
from components.config.model import Secret
from components.config.reader import ENCRYPTED, ConfigErrors, host_key_problem
from components.config.stack import load_stack_file, parse_stack, read_stack_file, secret_paths_of
from tests.support.paths import REPO
from tests.support.stacks import FPR, HOST_KEY, WL_IMAGE, WL_REV, good, replace_encrypted, workload


def errors_of(raw: dict, stack: str = "staging") -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        parse_stack(raw, stack)
    return [str(e) for e in info.value.errors]


def test_valid_config_builds_typed_frozen_values():
    cfg = parse_stack(good(), "staging")
    assert [h.name for h in cfg.hosts] == ["gpu-a", "gpu-b"]
    a = cfg.hosts[0]
    assert a.ssh.port == 22 and a.ssh.user == "root" and a.ssh.host_key == HOST_KEY
    assert isinstance(a.ssh.private_key, Secret) and "***" in repr(a.ssh.private_key)
    assert a.bmc is not None and a.bmc.vendor == "dell" and a.bmc.tls_fingerprint == FPR
    assert cfg.hosts[1].bmc is None and cfg.hosts[1].gpu == cfg.hosts[0].gpu
    assert cfg.platform.kernel_args[:3] == ("nohibernate", "kvm_intel.tdx=1", "intel_iommu=on")
    assert cfg.dcap.pccs_port == 8081 and cfg.dcap.qgs_port == 4050 and not cfg.dcap.use_secure_cert
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hosts[0].name = "x"  # type: ignore[misc]


def test_every_error_is_reported_at_once_with_path_and_fix():
    raw = good()
    raw["hosts"][0]["ssh"]["privateKey"] = "-----BEGIN OPENSSH PRIVATE KEY-----"  # plain-text secret
    del raw["hosts"][1]["ssh"]["hostKey"]  # missing pin
    raw["hosts"][1]["name"] = "gpu-a"  # duplicate
    raw["gpu"]["mode"] = "devtools"  # outside dev
    raw["hosts"][0]["bmc"]["vendor"] = "hpe"  # unknown vendor
    raw["hosts"][0]["bmc"]["endpoint"] = "https://bad host"  # malformed URL
    raw["hosts"][0]["ssh"]["address"] = "300.1.2.3.4."  # malformed address
    errs = errors_of(raw)
    assert len(errs) == 7, errs
    joined = "\n".join(errs)
    assert "hosts[0].ssh.privateKey: given in plain text" in joined
    assert "hosts[1].ssh.hostKey: required: the host key must be pinned" in joined
    assert "hosts[1].name: duplicate host name `gpu-a` (also hosts[0])" in joined
    assert "gpu.mode: `devtools`" in joined and "`staging`" in joined
    assert "hosts[0].bmc.vendor: `hpe` is not one of dell, intel, lenovo, supermicro" in joined
    assert "hosts[0].bmc.endpoint:" in joined
    assert "hosts[0].ssh.address: `300.1.2.3.4.` is not a valid IP address or host name" in joined
    assert all("; fix: " in e for e in errs)
    # The plain-text secret itself never appears in a message.
    assert "BEGIN OPENSSH" not in joined


def test_unknown_keys_get_did_you_mean():
    raw = good()
    raw["hosts"][0]["ssh"]["hostkey"] = raw["hosts"][0]["ssh"].pop("hostKey")
    raw["plattform"] = raw.pop("platform")
    errs = "\n".join(errors_of(raw))
    assert "hosts[0].ssh.hostkey: unknown key; fix: remove it or rename it (did you mean `hostKey`?)" in errs
    assert "plattform: unknown key" in errs and "did you mean `platform`?" in errs


@pytest.mark.parametrize(
    "path,value,needle",
    [
        (("hosts", 0, "bmc", "password"), "hunter2", "hosts[0].bmc.password: given in plain text"),
        (("dcap", "pccsApiKey"), "0123456789abcdef", "dcap.pccsApiKey: given in plain text"),
    ],
)
def test_every_secret_must_be_encrypted(path, value, needle):
    raw = good()
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    errs = errors_of(raw)
    assert any(needle in e for e in errs), errs
    assert all(value not in e for e in errs)


def test_runtime_mode_uses_secret_paths():
    raw = copy.deepcopy(good())
    secrets = secret_paths_of(raw)
    assert "hosts[0].ssh.privateKey" in secrets and "dcap.pccsApiKey" in secrets
    decrypted = replace_encrypted(raw, "k")
    cfg = parse_stack(decrypted, "staging", secret_paths=secrets)
    assert cfg.hosts[0].ssh.private_key.value == "k"
    with pytest.raises(ConfigErrors) as refused:
        parse_stack(decrypted, "staging", secret_paths=secrets - {"dcap.pccsApiKey"})
    errs = "\n".join(str(e) for e in refused.value.errors)
    assert "dcap.pccsApiKey: given in plain text" in errs


def test_secure_cert_defaults_follow_where_pccs_runs():
    raw = good()
    assert parse_stack(raw, "prod").dcap.use_secure_cert is False  # per-host PCCS on loopback
    raw["dcap"]["pccsUrl"] = "https://pccs.example.net:8081/sgx/certification/v4/"
    assert parse_stack(raw, "prod").dcap.use_secure_cert is True
    raw["dcap"]["useSecureCert"] = False
    assert parse_stack(raw, "dev").dcap.use_secure_cert is False


def test_devtools_is_allowed_in_dev_only():
    raw = good()
    raw["gpu"]["mode"] = "devtools"
    assert parse_stack(raw, "dev").hosts[0].gpu.mode == "devtools"
    raw["hosts"][1]["gpu"] = {"model": "h200-sxm", "mode": "devtools"}
    errs = errors_of(raw, "prod")
    assert any(e.startswith("hosts[1].gpu.mode:") for e in errs) and any(e.startswith("gpu.mode:") for e in errs)


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (
            lambda r: r["hosts"][0]["ssh"].__setitem__("hostKey", "ssh-ed25519 notbase64!!"),
            "hostKey: the key data is not valid base64",
        ),
        (lambda r: r["hosts"][0]["ssh"].__setitem__("hostKey", "ssh-dss AAAA"), "hostKey: unknown key type `ssh-dss`"),
        (
            lambda r: r["hosts"][0]["ssh"].__setitem__("port", 70000),
            "hosts[0].ssh.port: expected an integer in 1..65535",
        ),
        (lambda r: r["hosts"][0]["bmc"].__setitem__("endpoint", "http://192.0.2.110"), "scheme must be https"),
        (
            lambda r: r["hosts"][0]["bmc"].__setitem__("tlsFingerprint", "abc"),
            "tlsFingerprint: expected a SHA-256 fingerprint",
        ),
        (lambda r: r["hosts"][0]["bmc"].pop("tlsFingerprint"), "hosts[0].bmc: the BMC's TLS certificate is not pinned"),
        (
            lambda r: r["hosts"][0]["bmc"].__setitem__("system", "1"),
            "hosts[0].bmc.system: `1` is not a Redfish system path",
        ),
        (lambda r: r["gpu"].__setitem__("model", "h100-sxn"), "gpu.model: `h100-sxn` is not one of"),
        (lambda r: r["gpu"].update(mode="ppcie", count=4), "gpu.count: PPCIe needs all 8 Hopper GPUs"),
        (
            lambda r: r["platform"].__setitem__("tdxModule", "9.9.9"),
            "platform.tdxModule: `9.9.9` is not a pinned TDX module",
        ),
        (
            lambda r: r["platform"].__setitem__("extraKernelArgs", ["kvm_intel.tdx=0"]),
            "would turn KVM's TDX support off",
        ),
        (lambda r: r["platform"].__setitem__("extraKernelArgs", ["a b"]), "is not a single kernel argument"),
        (
            lambda r: r["dcap"].__setitem__("registration", "manual"),
            "dcap.registration: `manual` is not one of mpa, pckid, none",
        ),
        (
            lambda r: r["dcap"].update(
                useSecureCert=False, pccsUrl="https://pccs.example.net:8081/sgx/certification/v4/"
            ),
            "dcap.useSecureCert: TLS verification of the shared PCCS",
        ),
        (lambda r: r["dcap"].__setitem__("pccsUrl", "ftp://x"), "dcap.pccsUrl: scheme must be https"),
        (
            lambda r: r["dcap"].update(
                registration="pckid", pccsUrl="https://pccs.example.net:8081/sgx/certification/v4/"
            ),
            "dcap.registration: `pckid` registers through the per-host PCCS",
        ),
        (
            lambda r: r["hosts"][0]["bmc"].__setitem__("vendor", "supermicro"),
            "dcap.registration: `mpa` needs the BIOS setting 'SGX Auto MP Registration', which "
            "firmware/bios/supermicro.yaml (hosts[0].bmc.vendor) cannot set",
        ),
        (lambda r: r["hosts"][0].__setitem__("name", "GPU_A"), "hosts[0].name: `GPU_A` is not a valid host name"),
        (lambda r: r.__setitem__("hosts", []), "hosts: required: at least one host"),
        (lambda r: r.pop("dcap"), "dcap: required"),
        (lambda r: r.__setitem__("teeIo", "yes"), "teeIo: expected true or false"),
        (lambda r: r.__setitem__("restoreOnDestroy", 1), "restoreOnDestroy: expected true or false"),
    ],
)
def test_field_rules(mutate, needle):
    raw = good()
    mutate(raw)
    errs = errors_of(raw)
    assert any(needle in e for e in errs), errs


def test_host_key_problem_accepts_real_keys():
    assert host_key_problem(HOST_KEY) is None
    assert "says `ssh-ed25519`" in host_key_problem(HOST_KEY.replace("ssh-ed25519", "ssh-rsa"))


def test_read_stack_file_marks_secure_leaves(tmp_path):
    f = tmp_path / "Pulumi.staging.yaml"
    raw = replace_encrypted(good(), {"secure": "v1:abc"})
    f.write_text(yaml.safe_dump({"config": {f"tdx-vllm:{k}": v for k, v in raw.items()}}))
    assert read_stack_file(f)["dcap"]["pccsApiKey"] is ENCRYPTED
    assert load_stack_file(f).stack == "staging"


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_shipped_stack_files_are_valid(stack):
    load_stack_file(REPO / "stacks" / f"Pulumi.{stack}.yaml")


def test_cli_exit_codes(tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "components.config", "stacks/Pulumi.dev.yaml"], cwd=REPO, capture_output=True, text=True
    )
    assert ok.returncode == 0 and "valid" in ok.stdout
    bad = tmp_path / "Pulumi.prod.yaml"
    # The dev example with its GPUs in devtools mode, used as prod: refused.
    text = (REPO / "stacks" / "Pulumi.dev.yaml").read_text().replace('mode: "on"', "mode: devtools")
    bad.write_text(text)
    res = subprocess.run(
        [sys.executable, "-m", "components.config", str(bad)], cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 1
    assert "gpu.mode: `devtools`" in res.stderr and "fix:" in res.stderr


# --------------------------------------------------------------------------------------------
# promotion (issue 3 item 4)


def test_promotion_is_optional_and_parsed():
    assert parse_stack(good(), "prod").promotion is None
    for ref in ("organization/tdx-vllm/staging", "staging", "acme/tdx-vllm/stage-2"):
        raw = good()
        raw["promotion"] = {"fromStack": ref}
        cfg = parse_stack(raw, "prod")
        assert cfg.promotion is not None and cfg.promotion.from_stack == ref
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.promotion.from_stack = "x"  # frozen


@pytest.mark.parametrize(
    "value, needle",
    [
        ({"fromStack": "organization/staging"}, "promotion.fromStack: `organization/staging` is not a stack reference"),
        ({"fromStack": "a/b/c/d"}, "promotion.fromStack: `a/b/c/d` is not a stack reference"),
        (
            {"fromStack": "organization/tdx vllm/staging"},
            "is not a stack reference; fix: set `fromStack: organization/",
        ),
        ({"fromStack": ""}, "promotion.fromStack: expected a non-empty string"),
        ({}, "promotion.fromStack: required; fix: set `fromStack: organization/tdx-vllm/staging`"),
        (
            {"fromStak": "staging"},
            "promotion.fromStak: unknown key; fix: remove it or rename it (did you mean `fromStack`?)",
        ),
        ("staging", "promotion: expected a mapping, got a string"),
        (
            {"fromStack": "prod"},
            "promotion.fromStack: `prod` is this stack (`prod`): a stack cannot promote from itself",
        ),
        ({"fromStack": "organization/tdx-vllm/prod"}, "a stack cannot promote from itself"),
    ],
)
def test_promotion_rules(value, needle):
    raw = good()
    raw["promotion"] = value
    errors = errors_of(raw, "prod")
    assert any(needle in e for e in errors), errors


def test_promotion_from_a_same_named_stack_of_another_project_is_allowed():
    raw = good()
    raw["promotion"] = {"fromStack": "organization/other-project/prod"}
    assert parse_stack(raw, "prod").promotion.from_stack == "organization/other-project/prod"


def test_promotion_errors_are_collected_with_the_others():
    raw = good()
    raw["promotion"] = {"fromStack": "a/b"}
    raw["hosts"][0]["name"] = "Bad_Name"
    errors = errors_of(raw, "prod")
    assert any(e.startswith("promotion.fromStack:") for e in errors) and any(
        e.startswith("hosts[0].name:") for e in errors
    )


def test_shipped_prod_stack_promotes_from_staging():
    cfg = load_stack_file(REPO / "stacks" / "Pulumi.prod.yaml")
    assert cfg.promotion is not None and cfg.promotion.from_stack == "organization/tdx-vllm/staging"


# --- workload ----------------------------------------------------------------------------------


@pytest.fixture
def fw(tmp_path):
    from tests.support.stacks import pinned_firmware_dir

    return pinned_firmware_dir(tmp_path)


def workload_errors(raw: dict, fw: Path, stack: str = "staging") -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        parse_stack(raw, stack, firmware_dir=fw)
    return [str(e) for e in info.value.errors]


def test_without_workload_nothing_changes():
    assert parse_stack(good(), "staging").workload is None


def test_workload_parses_into_typed_values(fw):
    raw = good()
    raw["workload"] = workload()
    cfg = parse_stack(raw, "staging", firmware_dir=fw)
    wl = cfg.workload
    assert wl is not None and wl.target == "host" and wl.image == WL_IMAGE
    assert wl.model_files == (("config.json", "bb" * 32), ("model.safetensors", "aa" * 32))
    assert wl.vllm_args == ("--max-model-len", "4096")  # numbers become strings
    assert wl.gateway_port == 8443 and wl.known_answer.expect == " Paris"
    assert wl.td.vcpus == 16 and wl.td.memory_mib == 65536 and wl.td.ready_timeout_s == 3600
    assert wl.td.artifact_source == "https://artifacts.example.net/td"
    assert wl.boot_manifest == fw / "td" / "ovmf-debian-trixie.yaml"
    assert cfg.tensor_parallel_size == 1
    m = wl.manifest(cfg.tensor_parallel_size)
    assert m.image == WL_IMAGE and m.tensor_parallel_size == 1 and m.vllm_args == ("--max-model-len", "4096")


def test_workload_vm_shape_defaults_to_the_boot_manifest(fw):
    raw = good()
    raw["workload"] = workload()
    del raw["workload"]["td"]["vcpus"], raw["workload"]["td"]["memoryMiB"]
    wl = parse_stack(raw, "staging", firmware_dir=fw).workload
    assert (wl.td.vcpus, wl.td.memory_mib) == (16, 65536)


def test_workload_vm_shape_must_equal_the_boot_manifest(fw):
    raw = good()
    raw["workload"] = workload()
    raw["workload"]["td"].update(vcpus=8, memoryMiB=32768)
    errors = workload_errors(raw, fw)
    assert len(errors) == 2, errors
    assert errors[0].startswith("workload.td.vcpus: 8 differs from `vm.vcpus: 16` in the TD boot manifest")
    assert "ovmf-debian-trixie.yaml" in errors[0] and "fix: set 16" in errors[0]
    assert errors[1].startswith("workload.td.memoryMiB: 32768 differs from `vm.memoryMiB: 65536`")


def test_workload_refuses_a_boot_manifest_that_cannot_launch(tmp_path):
    fw = tmp_path / "fw"
    shutil.copytree(REPO / "firmware", fw)
    path = fw / "td" / "ovmf-debian-trixie.yaml"
    data = yaml.safe_load(path.read_text())
    data["kernel"] = {"file": None, "reason": "guest image build not pinned yet"}
    path.write_text(yaml.safe_dump(data))
    raw = good()
    raw["workload"] = workload()
    with pytest.raises(ConfigErrors) as info:
        parse_stack(raw, "staging", firmware_dir=fw)
    errors = [str(e) for e in info.value.errors]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"workload: the TD boot manifest {path} cannot launch a TD yet")
    assert "kernel: guest image build not pinned yet" in errors[0] and "fix: pin the guest kernel" in errors[0]


def test_dev_launches_the_dev_image_and_every_other_stack_the_prod_one():
    raw = good()
    raw["workload"] = workload()
    assert parse_stack(raw, "staging").workload.boot_manifest == REPO / "firmware" / "td" / "ovmf-debian-trixie.yaml"
    assert parse_stack(raw, "prod").workload.boot_manifest == REPO / "firmware" / "td" / "ovmf-debian-trixie.yaml"
    assert parse_stack(raw, "dev").workload.boot_manifest == REPO / "firmware" / "td" / "ovmf-debian-trixie-dev.yaml"


@pytest.mark.parametrize(
    "change, needle",
    [
        (
            lambda w: w.update(image="docker.io/vllm/vllm-openai:v0.11.0"),
            "workload.image: `docker.io/vllm/vllm-openai:v0.11.0` is not an image reference by digest; fix: pin the image by digest",
        ),
        (lambda w: w["model"].update(revision="main"), "workload.model.revision: `main` is not a commit id"),
        (lambda w: w["model"].update(id="not a model"), "workload.model.id: `not a model` is not a model id"),
        (lambda w: w["model"].update(files={}), "workload.model.files: expected a non-empty mapping"),
        (
            lambda w: w["model"]["files"].update({"../etc/passwd": "aa" * 32}),
            "is not a relative path inside the model directory",
        ),
        (lambda w: w["model"]["files"].update({"x.bin": "md5:abc"}), "workload.model.files.x.bin: expected a sha256"),
        (lambda w: w.update(modelSource="ftp://mirror"), "workload.modelSource: scheme must be https or http"),
        (
            lambda w: w.update(vllmArgs=["--tensor-parallel-size", "2"]),
            "workload.vllmArgs[0]: refused: `--tensor-parallel-size` is set by the deployment",
        ),
        (
            lambda w: w.update(vllmArgs=["--host=0.0.0.0"]),
            "workload.vllmArgs[0]: refused: `--host` is set by the deployment",
        ),
        (lambda w: w.update(vllmArgs=["--kv-offloading-size=8"]), "cudaHostRegister"),
        (lambda w: w.update(vllmArgs="--max-model-len 4096"), "workload.vllmArgs: expected a list"),
        (lambda w: w["gateway"].update(port=0), "workload.gateway.port: expected an integer in 1..65535"),
        (
            lambda w: w.pop("knownAnswer"),
            "workload.knownAnswer: required; fix: add `knownAnswer: {prompt: ..., expect: ...}`",
        ),
        (lambda w: w["knownAnswer"].pop("expect"), "workload.knownAnswer.expect: required"),
        (lambda w: w["knownAnswer"].update(expect="  "), "workload.knownAnswer.expect: expected a non-empty string"),
        (lambda w: w["td"].pop("artifactSource"), "workload.td.artifactSource: required"),
        (
            lambda w: w["td"].update(artifactSource="artifacts/td"),
            "workload.td.artifactSource: scheme must be https or http",
        ),
        (
            lambda w: w["td"].update(readyTimeoutSeconds=5),
            "workload.td.readyTimeoutSeconds: expected an integer in 60..86400",
        ),
        (lambda w: w.update(target="k8s"), "workload.target: `k8s` is not one of host, kubernetes"),
        (lambda w: w.update(target="kubernetes"), "workload.kubernetes: required for `target: kubernetes`"),
        (lambda w: w.update(kubernetes={"namespace": "x"}), "workload.kubernetes: only used with `target: kubernetes`"),
        (
            lambda w: w.update(modelSorce="x"),
            "workload.modelSorce: unknown key; fix: remove it or rename it (did you mean `modelSource`?)",
        ),
    ],
)
def test_workload_rules(fw, change, needle):
    raw = good()
    raw["workload"] = workload()
    change(raw["workload"])
    errors = workload_errors(raw, fw)
    assert any(needle in e for e in errors), errors


def test_workload_cuda_version_must_fit_the_guest_image_driver(fw):
    raw = good()
    raw["workload"] = workload()
    assert parse_stack(raw, "staging", firmware_dir=fw).workload.cuda_version == "12.4"
    raw["workload"]["cudaVersion"] = "12.3"  # older runtimes run on a newer driver
    assert parse_stack(raw, "staging", firmware_dir=fw).workload.cuda_version == "12.3"
    raw["workload"]["cudaVersion"] = "12.8"
    assert workload_errors(raw, fw) == [
        "workload.cudaVersion: expected CUDA <= 12.4 (the newest the guest image's driver 550.163.01 serves, "
        f"`gpuDriver` in {fw / 'td' / 'ovmf-debian-trixie.yaml'}), seen 12.8: vLLM would stop at start with "
        "'CUDA driver version is insufficient for CUDA runtime version'; fix: pin a vLLM image built for CUDA "
        "12.4 or older (and set cudaVersion to it), or build the guest image with a newer driver "
        "(guest/image/config.sh DRIVER_*, docs/guest-image.md) and re-pin"
    ]
    raw["workload"]["cudaVersion"] = "12.10"  # compared as numbers, not strings
    assert any(e.startswith("workload.cudaVersion: expected CUDA <= 12.4") for e in workload_errors(raw, fw))


@pytest.mark.parametrize(
    "value, needle",
    [
        (None, "workload.cudaVersion: required; fix: set the CUDA version the vLLM image was built for"),
        (12.4, 'workload.cudaVersion: expected a string like "12.4", got float 12.4'),
        ("12.4.1", "workload.cudaVersion: expected a CUDA version MAJOR.MINOR like 12.4, not '12.4.1'"),
        ("cu124", "workload.cudaVersion: expected a CUDA version MAJOR.MINOR like 12.4, not 'cu124'"),
    ],
)
def test_workload_cuda_version_is_required_as_major_minor(fw, value, needle):
    raw = good()
    raw["workload"] = workload()
    raw["workload"]["cudaVersion"] = value
    errors = workload_errors(raw, fw)
    assert len(errors) == 1 and errors[0].startswith(needle), errors


def test_workload_cuda_version_needs_a_manifest_that_records_the_driver(fw):
    path = fw / "td" / "ovmf-debian-trixie.yaml"
    data = yaml.safe_load(path.read_text())
    del data["gpuDriver"]
    path.write_text(yaml.safe_dump(data))
    raw = good()
    raw["workload"] = workload()
    errors = workload_errors(raw, fw)
    assert len(errors) == 1 and errors[0].startswith(
        f"workload.cudaVersion: expected the TD boot manifest {path} to record the guest image's GPU driver "
        "(`gpuDriver`) so CUDA 12.4 can be checked against it, seen none; fix: re-pin the guest image"
    ), errors


def test_workload_gpu_skus_must_pin_the_driver_the_image_carries(fw):
    sku = fw / "gpu" / "h100-sxm.yaml"
    sku.write_text(sku.read_text().replace('driver: "550.163.01"', 'driver: "570.86.15"'))
    raw = good()
    raw["workload"] = workload()
    assert workload_errors(raw, fw) == [
        "hosts[0].gpu.model: expected firmware/gpu/h100-sxm.yaml to pin the guest driver the TD image carries, "
        f"550.163.01 (`gpuDriver` in {fw / 'td' / 'ovmf-debian-trixie.yaml'}), seen 570.86.15: every TD would "
        'refuse its GPUs at step `gpu`; fix: set `driver: "550.163.01"` in firmware/gpu/h100-sxm.yaml, or build '
        "the guest image with that driver (guest/image/config.sh DRIVER_*) and re-pin firmware/td/"
    ]
    # without a workload the hosts still provision: the pin is only checked against an image that runs
    raw.pop("workload")
    assert parse_stack(raw, "staging", firmware_dir=fw).workload is None


def test_workload_accepts_a_directory_on_the_host_as_artifact_source(fw):
    raw = good()
    raw["workload"] = workload()
    raw["workload"]["td"]["artifactSource"] = "/srv/tdx-artifacts/"
    assert parse_stack(raw, "staging", firmware_dir=fw).workload.td.artifact_source == "/srv/tdx-artifacts"


def test_workload_hosts_need_the_same_gpu_count_and_single_gpu_cc_mode(fw):
    raw = good()
    raw["workload"] = workload()
    raw["hosts"][1]["gpu"] = {"model": "h100-sxm", "count": 2}
    errors = workload_errors(raw, fw)
    assert any(
        e.startswith("hosts: hosts with a workload must have the same GPU count")
        and "`gpu-a` has 1" in e
        and "`gpu-b` has 2" in e
        for e in errors
    ), errors
    raw["hosts"][1]["gpu"] = {"model": "h100-sxm", "count": 8, "mode": "ppcie"}
    errors = workload_errors(raw, fw)
    assert any(e.startswith("hosts[1].gpu.mode: a workload with `ppcie`") and "not yet supported" in e for e in errors)


def test_workload_hosts_without_gpus_are_refused(fw):
    raw = good()
    del raw["gpu"]
    raw["hosts"][0]["gpu"] = {"model": "h100-sxm", "count": 1}
    raw["workload"] = workload()
    errors = workload_errors(raw, fw)
    assert errors == [
        "hosts[1].gpu: host `gpu-b` has no GPUs but `workload` is set; fix: give the host a `gpu:` "
        "block (or the stack a default `gpu:`), or remove it from this stack"
    ]


def _dev_without_tdx() -> dict:
    """The journey's dev stack: a TD without TDX, the stand-in server, a host without GPUs, a small VM."""
    raw = good()
    del raw["gpu"]
    raw["workload"] = workload()
    raw["workload"]["server"] = "standin"
    raw["workload"]["td"].update(tdx=False, vcpus=2, memoryMiB=2048)
    return raw


def test_dev_stack_may_run_a_td_without_tdx_with_the_standin_and_no_gpu(fw):
    cfg = parse_stack(_dev_without_tdx(), "dev", firmware_dir=fw)
    wl = cfg.workload
    assert wl is not None and wl.server == "standin" and wl.td is not None and wl.td.tdx is False
    # nothing measures the VM shape without TDX, so a small dev VM may differ from the manifest's
    assert (wl.td.vcpus, wl.td.memory_mib) == (2, 2048)
    assert cfg.tensor_parallel_size == 1 and all(h.gpu is None for h in cfg.hosts)


def test_a_td_without_tdx_and_the_standin_are_refused_outside_dev(fw):
    errors = workload_errors(_dev_without_tdx(), fw, stack="staging")
    assert any(
        e.startswith("workload.td.tdx: a TD without TDX proves nothing") and "not `staging`" in e for e in errors
    ), errors
    assert any(e.startswith("workload.server: the stand-in model server echoes prompts") for e in errors), errors
    # and the shape check stays for a TD with TDX, GPUs stay required for vLLM
    raw = _dev_without_tdx()
    raw["workload"]["td"]["tdx"] = True
    del raw["workload"]["server"]
    errors = workload_errors(raw, fw, stack="dev")
    assert any(e.startswith("workload.td.vcpus: 2 differs from `vm.vcpus: 16`") for e in errors), errors
    assert any("has no GPUs but `workload` is set" in e for e in errors), errors


def test_td_tdx_must_be_a_boolean(fw):
    raw = _dev_without_tdx()
    raw["workload"]["td"]["tdx"] = "no"
    errors = workload_errors(raw, fw, stack="dev")
    # (read as the default, true, so the TD shape is then checked against the manifest too)
    assert errors[0] == "workload.td.tdx: expected true or false, got 'no'; fix: write `true` or `false`"


def test_workload_errors_are_reported_with_the_others(fw):
    raw = good()
    raw["workload"] = workload()
    raw["workload"]["image"] = "vllm:latest"
    raw["workload"]["td"]["vcpus"] = 4
    raw["hosts"][0]["name"] = "Bad_Name"
    errors = workload_errors(raw, fw)
    assert [e.split(":")[0] for e in errors] == ["hosts[0].name", "workload.image", "workload.td.vcpus"]


def test_shipped_stacks_still_validate_with_the_commented_workload_example():
    for stack in ("dev", "staging", "prod"):
        assert load_stack_file(REPO / "stacks" / f"Pulumi.{stack}.yaml").workload is None


def test_the_commented_workload_example_in_the_dev_stack_validates(fw):
    lines = (REPO / "stacks" / "Pulumi.dev.yaml").read_text().splitlines()
    start = lines.index("  # tdx-vllm:workload:")
    block = []
    for ln in lines[start + 1 :]:
        if not ln.startswith("  #   "):
            break
        block.append(ln[len("  #   ") :])
    text = "\n".join(block).replace("<64 hex>", "ab" * 32).replace("<40-hex commit id>", WL_REV)
    example = yaml.safe_load(text)
    raw = good()
    raw["workload"] = example
    wl = parse_stack(raw, "staging", firmware_dir=fw).workload
    assert wl is not None and wl.vllm_args == ("--max-model-len", "4096") and wl.td.ready_timeout_s == 3600


def test_a_broken_pin_file_is_a_config_error_not_a_traceback(tmp_path):
    # `pulumi up` and `check` report a firmware/ file they cannot use with the other config errors.
    fw = tmp_path / "fw"
    shutil.copytree(REPO / "firmware", fw)
    (fw / "tdx-module.yaml").write_text("releases: [unclosed\n")
    with pytest.raises(ConfigErrors) as info:
        parse_stack(good(), "staging", firmware_dir=fw)
    errors = [str(e) for e in info.value.errors]
    assert len(errors) == 1, errors
    assert errors[0].startswith("platform.tdxModule: firmware/tdx-module.yaml is unusable: ")
    assert "tdx-module.yaml" in errors[0] and "fix: fix firmware/tdx-module.yaml" in errors[0]


@pytest.mark.parametrize("module,build", [("2.0.08", None), ("1.5.16", None), ("1.5.06", 744)])
def test_granite_rapids_and_emerald_rapids_modules_pin_with_their_build_numbers(module, build):
    raw = good()
    raw["platform"]["tdxModule"] = module
    (pin,) = parse_stack(raw, "staging").platform.tdx_modules
    assert (pin.version, pin.build) == (module, build)
    assert pin.mrseam == tdx_module_releases()[module].mrseam and len(pin.mrseam) == 96


def test_an_upgrade_pins_two_releases_in_the_order_given():
    raw = good()
    raw["platform"]["tdxModule"] = ["1.5.28", "1.5.34"]
    pins = parse_stack(raw, "staging").platform.tdx_modules
    assert [p.version for p in pins] == ["1.5.28", "1.5.34"]
    assert pins[1].mrseam.startswith("ab62561a")


@pytest.mark.parametrize(
    "value,error",
    [
        ([], "platform.tdxModule: expected 1 to 4 distinct releases, got 0 items"),
        (["1.5.16", "1.5.16"], "platform.tdxModule: expected 1 to 4 distinct releases, got 2 items"),
        (["1.5.16"] + [f"1.5.{n:02d}" for n in (20, 24, 28, 34)], "expected 1 to 4 distinct releases, got 5 items"),
        (["1.5.16", "1.5.99"], "platform.tdxModule[1]: `1.5.99` is not a pinned TDX module release"),
        (["1.5.16", None], "platform.tdxModule[1]: expected a release, got null"),
        (["1.5.16", 1.5], "platform.tdxModule[1]: expected a non-empty string, got"),
        (["2.0.05"], "platform.tdxModule[0]: `2.0.05` has no published MRSEAM"),
    ],
    ids=["empty", "duplicate", "too-many", "unknown", "null", "number", "unhashed"],
)
def test_a_bad_tdx_module_list_is_refused_by_item(value, error):
    raw = good()
    raw["platform"]["tdxModule"] = value
    with pytest.raises(ConfigErrors) as info:
        parse_stack(raw, "staging")
    errors = [str(e) for e in info.value.errors]
    assert len(errors) == 1 and error in errors[0], errors


def test_a_kernel_argument_split_by_a_yaml_flow_list_is_refused_naming_the_split():
    # `extraKernelArgs: [modprobe.blacklist=nouveau,nvidia]` reads as two items (issue 16)
    flow = yaml.safe_load("extraKernelArgs: [modprobe.blacklist=nouveau,nvidia]")["extraKernelArgs"]
    assert flow == ["modprobe.blacklist=nouveau", "nvidia"]
    raw = good()
    raw["platform"]["extraKernelArgs"] = flow
    (error,) = errors_of(raw)
    assert error.startswith(
        "platform.extraKernelArgs[1]: `nvidia` is not a kernel flag we know "
        "(did a comma split `modprobe.blacklist=nouveau,nvidia` into two items?)"
    ), error
    assert "fix: write each argument on its own `- ` line" in error


def test_known_kernel_flags_and_whole_arguments_pass():
    raw = good()
    raw["platform"]["extraKernelArgs"] = ["modprobe.blacklist=nouveau,nvidia", "nosmt", "quiet", "iommu=pt"]
    cfg = parse_stack(raw, "staging")
    assert cfg.platform.extra_kernel_args == ("modprobe.blacklist=nouveau,nvidia", "nosmt", "quiet", "iommu=pt")
    raw["platform"]["extraKernelArgs"] = ["nvidia"]
    (error,) = errors_of(raw)
    assert "`nvidia` is not a kernel flag we know; the kernel would ignore it" in error


def test_the_shipped_templates_keep_the_blacklist_one_argument():
    for name in ("staging", "prod"):
        doc = yaml.safe_load((REPO / "stacks" / f"Pulumi.{name}.yaml").read_text())
        assert doc["config"]["tdx-vllm:platform"]["extraKernelArgs"] == ["modprobe.blacklist=nouveau,nvidia"], name


# --- what still stops `pulumi up` of a filled-in file (issue 16) -------------------------------


def _cli(path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "components.config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_the_templates_unfilled_secrets_are_named_with_the_command_that_sets_them(stack):
    done = _cli(REPO / "stacks" / f"Pulumi.{stack}.yaml")
    assert done.returncode == 1
    errors = [ln.strip()[2:] for ln in done.stderr.splitlines() if ln.strip().startswith("- ")]
    # the placeholders, and nothing else: the rest of each template is valid as shipped
    assert [e.split(":")[0] for e in errors] == [
        "dcap.pccsApiKey",
        "hosts[0].ssh.privateKey",
        "hosts[0].bmc.password",
    ], done.stderr
    assert errors[0] == (
        "dcap.pccsApiKey: `secure: v1:REPLACE` is a placeholder, not a value `pulumi config set --secret` "
        "wrote; fix: pulumi config set --secret --path 'dcap.pccsApiKey' (it prompts; `< FILE` for a key file)"
    )
    assert "Traceback" not in done.stderr


def test_real_ciphertext_passes_and_a_missing_pinned_firmware_is_named(tmp_path):
    dev = (REPO / "stacks" / "Pulumi.dev.yaml").read_text()
    staging = tmp_path / "Pulumi.staging.yaml"  # the dev example's (real) ciphertexts, as a staging stack
    staging.write_text(dev.replace("useSecureCert: false", "useSecureCert: true"))
    assert _cli(staging).returncode == 0, _cli(staging).stderr
    done = _cli(staging, TDX_VLLM_ARTIFACT_DIR=str(tmp_path / "empty"))
    assert done.returncode == 1
    assert (
        "- pins: the pinned TD firmware ovmf-debian13-trixie-2025.02-8-deb13u1.fd is not in "
        f"{tmp_path / 'empty'} (the `pins` of a `staging` stack are computed from it); "
        "fix: python -m components firmware fetch"
    ) in done.stderr, done.stderr
    # the dev example may preview without it (its pins say why they are null)
    dev_file = tmp_path / "Pulumi.dev.yaml"
    dev_file.write_text(dev)
    assert _cli(dev_file, TDX_VLLM_ARTIFACT_DIR=str(tmp_path / "empty")).returncode == 0


def test_raw_ssh_keyscan_output_is_accepted_as_the_host_key():
    raw = good()
    raw["hosts"][0]["ssh"]["hostKey"] = f"192.0.2.10 {HOST_KEY}"  # `ssh-keyscan -t ed25519 192.0.2.10`
    raw["hosts"][1]["ssh"]["hostKey"] = f"[gpu-b.example.net]:2222 {HOST_KEY} a comment"
    cfg = parse_stack(raw, "staging")
    assert [h.ssh.host_key for h in cfg.hosts] == [HOST_KEY, HOST_KEY]


@pytest.mark.parametrize("name", ["root", "admin"])
def test_the_bmc_user_is_plain_config_and_a_secret_one_is_refused_with_why(name):
    # issue 16: a secret `admin` masked `gpu-admin-tools` as `gpu-[secret]-tools`, a secret `root` every `root=`
    raw = good()
    raw["hosts"][0]["bmc"]["username"] = name
    bmc = parse_stack(raw, "staging").hosts[0].bmc
    assert bmc is not None and bmc.username == name and isinstance(bmc.password, Secret)
    raw["hosts"][0]["bmc"]["username"] = ENCRYPTED
    (error,) = errors_of(raw)
    assert error.startswith("hosts[0].bmc.username: a BMC user name is plain config, not a secret"), error
    assert "fix: pulumi config rm --path 'hosts[0].bmc.username' && pulumi config set --path" in error


URL_FIELDS = {
    "hosts[0].bmc.endpoint": ("hosts", 0, "bmc", "endpoint"),
    "dcap.pccsUrl": ("dcap", "pccsUrl"),
    "workload.modelSource": ("workload", "modelSource"),
    "workload.td.artifactSource": ("workload", "td", "artifactSource"),
}
URL_FIXES = {
    "hosts[0].bmc.endpoint": "fix: remove them: the BMC user goes in `hosts[0].bmc.username`, its password in `hosts[0].bmc.password`",
    "dcap.pccsUrl": "fix: remove them: Intel's QPL and the verifying proxy read collateral from a PCCS without credentials",
    "workload.modelSource": "fix: remove them: the TD fetches the files without credentials",
    "workload.td.artifactSource": "fix: remove them: the host fetches the artifacts without credentials",
}


@pytest.mark.parametrize("field", URL_FIELDS)
@pytest.mark.parametrize("userinfo", ["alice:s3cret-pw@", "alice@", ":s3cret-pw@"])
def test_no_url_field_takes_credentials(field, userinfo):
    # issue 17: `https://user:pass@host/` passed, then showed in plain outputs, curl's command line
    # and the TD's config. Every URL field refuses it, names the secret field instead, never echoes it.
    raw = good()
    raw["workload"] = workload()
    *parents, leaf = URL_FIELDS[field]
    node = raw
    for key in parents:
        node = node[key]
    node[leaf] = f"https://{userinfo}example.net:8443/base/"
    errors = errors_of(raw)
    assert len(errors) == 1 and errors[0].startswith(f"{field}: carries credentials"), errors
    assert URL_FIXES[field] in errors[0]
    assert "s3cret" not in errors[0] and "alice" not in errors[0]


@pytest.mark.parametrize("field", URL_FIELDS)
def test_url_fields_take_no_query_or_fragment(field):
    raw = good()
    raw["workload"] = workload()
    *parents, leaf = URL_FIELDS[field]
    node = raw
    for key in parents:
        node = node[key]
    for tail in ("?token=abc", "#x"):
        node[leaf] = f"https://example.net/base/{tail}"
        errors = errors_of(raw)
        assert len(errors) == 1 and "has a query or fragment" in errors[0], errors


@pytest.mark.parametrize(
    "arg, needle",
    [
        ("quiet\n", "is not a single kernel argument"),  # `$` used to match before the newline
        ("modprobe.blacklist=nouveau\nrecordfail", "is not a single kernel argument"),
        ("kvm-intel.tdx=0", "would turn KVM's TDX support off"),  # the kernel reads - as _
        ("kvm_intel.tdx=N", "would turn KVM's TDX support off"),
        ("kvm_intel.tdx=off", "would turn KVM's TDX support off"),
        ("kvm-intel.ept=0", "would turn EPT off"),
        ("intel_iommu=off", "would turn the Intel IOMMU off"),
        ("intel-iommu=sm_on,off", "would turn the Intel IOMMU off"),
        ("iommu=off", "would turn every IOMMU off"),
        ("modprobe.blacklist=nouveau,kvm-intel", "would keep kvm_intel from loading"),
        ("module_blacklist=kvm", "would keep kvm_intel from loading"),
    ],
)
def test_a_kernel_argument_that_undoes_a_required_one_is_refused(arg, needle):
    raw = good()
    raw["platform"]["extraKernelArgs"] = [arg]
    errors = errors_of(raw)
    assert len(errors) == 1 and needle in errors[0], errors
    assert errors[0].startswith("platform.extraKernelArgs[0]: ")


@pytest.mark.parametrize("arg", ["kvm-intel.tdx=1", "kvm_intel.tdx=Y", "intel_iommu=on,sm_on", "iommu=pt"])
def test_kernel_arguments_that_keep_tdx_on_pass(arg):
    raw = good()
    raw["platform"]["extraKernelArgs"] = [arg]
    assert arg in parse_stack(raw, "staging").platform.kernel_args


@pytest.mark.parametrize(
    "text, needle",
    [
        ("config: []\n", "config: expected a mapping of `tdx-vllm:<key>: value` lines, got a list"),
        ("config: hello\n", "config: expected a mapping of `tdx-vllm:<key>: value` lines, got"),
        ("- config\n", "holds a list at the top level, not a mapping with `config:`"),
        (
            "config:\n  tdx-vllm:hosts:\n    - name: a\n      ssh:\n        hostKey: ssh-ed25519 AAAA1\n"
            "        hostKey: ssh-ed25519 AAAA2\n",
            "Pulumi.staging.yaml is not a stack file we read: duplicate key 'hostKey' at line 6, column 9",
        ),
    ],
)
def test_a_stack_file_of_the_wrong_shape_is_named_not_a_traceback(tmp_path, text, needle):
    # issue 17: these crashed with AttributeError, and a second hostKey silently replaced the first.
    path = tmp_path / "Pulumi.staging.yaml"
    path.write_text(text)
    p = subprocess.run(
        [sys.executable, "-m", "components", "check", str(path)], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert needle in p.stderr, p.stderr
    if "hostKey" in text:
        assert "duplicate key 'hostKey'" in p.stderr


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("address", "gpu-a.example.net\u212a", "is not a valid IP address or host name"),  # Kelvin sign K
        ("address", "gpu-\u0430.example.net", "is not a valid IP address or host name"),  # Cyrillic a
        ("address", "\u0661\u0660.0.0.1", "is not a valid IP address or host name"),  # Arabic-Indic digits
        ("address", "fe80::1%eth0;reboot", "is not a valid IP address or host name"),
        ("address", "fe80::1%$(reboot)", "is not a valid IP address or host name"),
        ("user", "$(reboot)", "user: is not a login name"),
        ("user", "root\nProxyCommand x", "user: is not a login name"),
        ("user", "R\u00f6\u00f6t", "user: is not a login name"),
    ],
)
def test_ssh_fields_refuse_look_alikes_zones_and_shell(field, value, needle):
    # issue 17: each of these passed validation.
    raw = good()
    raw["hosts"][0]["ssh"][field] = value
    errors = errors_of(raw)
    assert len(errors) == 1 and needle in errors[0] and errors[0].startswith(f"hosts[0].ssh.{field}"), errors


@pytest.mark.parametrize("field, value", [("address", "fe80::1%eth0"), ("address", "10.0.0.7"), ("user", "ubuntu")])
def test_ssh_fields_take_zones_that_name_an_interface_and_login_names(field, value):
    raw = good()
    raw["hosts"][0]["ssh"][field] = value
    assert getattr(parse_stack(raw, "staging").hosts[0].ssh, field) == value


def test_vllm_args_that_change_what_is_served_are_refused_in_the_stack():
    raw = good()
    raw["workload"] = workload()
    raw["workload"]["vllmArgs"] = ["--max-model-len", 4096, "--load-format", "dummy"]
    errors = errors_of(raw)
    assert len(errors) == 1 and errors[0].startswith("workload.vllmArgs[3]: refused: `--load-format dummy`"), errors


def test_a_refused_vllm_arg_is_named_at_its_own_index():
    raw = good()
    raw["workload"] = workload()
    raw["workload"]["vllmArgs"] = ["--enforce-eager", "--lora-modules", "a=/x"]
    errors = errors_of(raw)
    assert len(errors) == 1 and errors[0].startswith("workload.vllmArgs[1]: refused: `--lora-modules`"), errors
    raw["workload"]["vllmArgs"] = [{"x": 1}, "--lora-modules", "a=/x"]
    errors = errors_of(raw)
    assert len(errors) == 1 and errors[0].startswith("workload.vllmArgs[0]: expected a string"), errors


def test_a_fleet_sets_its_ssh_login_once_and_a_host_may_override_it():
    raw = good()
    raw["ssh"] = {"user": "deploy", "port": 2200, "privateKey": ENCRYPTED}
    for host in raw["hosts"]:
        del host["ssh"]["privateKey"]
    raw["hosts"][1]["ssh"].update(user="admin", port=22, privateKey=ENCRYPTED)
    a, b = parse_stack(raw, "staging").hosts
    assert (a.ssh.user, a.ssh.port, a.ssh.private_key.value) == ("deploy", 2200, "<encrypted>")
    assert (b.ssh.user, b.ssh.port) == ("admin", 22)


def test_a_host_without_a_key_of_its_own_or_the_stacks_names_both_fixes():
    raw = good()
    del raw["hosts"][0]["ssh"]["privateKey"]
    with pytest.raises(ConfigErrors) as info:
        parse_stack(raw, "staging")
    (error,) = [str(e) for e in info.value.errors]
    assert error.startswith("hosts[0].ssh.privateKey: required")
    assert "pulumi config set --secret --path 'hosts[0].ssh.privateKey'" in error
    assert "once for every host: `pulumi config set --secret --path 'ssh.privateKey'" in error


def test_the_stack_wide_key_must_be_a_secret_and_its_user_a_login_name():
    raw = good()
    raw["ssh"] = {"privateKey": "-----BEGIN OPENSSH PRIVATE KEY-----", "user": "$(reboot)"}
    with pytest.raises(ConfigErrors) as info:
        parse_stack(raw, "staging")
    errors = [str(e) for e in info.value.errors]
    assert any(e.startswith("ssh.privateKey: given in plain text; secrets must be Pulumi secrets") for e in errors)
    assert any(e.startswith("ssh.user: is not a login name") for e in errors), errors


def test_a_config_too_large_for_one_environment_variable_is_refused_offline(tmp_path):
    # 256 hosts with a key each: Pulumi would stop with "argument list too long" before the program runs.
    from components.config.stack import config_size_problem

    ciphertext = {"secure": "v1:" + "A" * 16 + ":" + "B" * 600}  # a ~430-byte private key, encrypted
    host = {"name": "h", "ssh": {"address": "192.0.2.1", "hostKey": HOST_KEY, "privateKey": ciphertext}}
    big = {"tdx-vllm:hosts": [host] * 256}
    (problem,) = config_size_problem(big)
    assert problem.path == "hosts" and "which Linux caps at 128 KiB" in problem.problem
    assert "--path 'ssh.privateKey'" in problem.fix
    lean = {**host, "ssh": {k: v for k, v in host["ssh"].items() if k != "privateKey"}}
    assert config_size_problem({"tdx-vllm:ssh": {"privateKey": ciphertext}, "tdx-vllm:hosts": [lean] * 256}) == []
