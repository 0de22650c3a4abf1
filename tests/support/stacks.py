"""Stack config documents and pinned firmware trees the tests build on: a valid stack (`good()`), a
host workload (`workload()`), a Kubernetes target block (`target_doc()`), a firmware/ copy whose TD
boot manifest pins a kernel, an initrd and a command line (`pinned_firmware_dir`)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import yaml

from components.catalog.td_manifest import td_boot_manifest
from components.config.kubernetes import kubernetes_target_from_mapping
from components.config.model import KnownAnswer, KubernetesTarget
from components.config.reader import ENCRYPTED
from components.render.kubernetes import KubernetesWorkloadArgs
from tdxattest.core.workload import WorkloadManifest, manifest_from_mapping
from tests.support.paths import REPO

DEFAULT_MANIFEST = td_boot_manifest("prod")  # the prod guest image's TD boot manifest
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXLqEeM0oWyVAeZNUo7cAvhyTrMwvucBKo1IuFNITMJ"


FPR = "3f1a9c5e007b2d4491c60e8ab35712f06d29ce814ab5700ce913662fd8a45b07"


def good() -> dict:
    return {
        "platform": {"os": "ubuntu-26.04", "extraKernelArgs": ["modprobe.blacklist=nouveau"], "tdxModule": "1.5.16"},
        "gpu": {"model": "h100-sxm", "count": 1, "mode": "on"},
        "dcap": {"pccsApiKey": ENCRYPTED, "registration": "mpa"},
        "hosts": [
            {
                "name": "gpu-a",
                "ssh": {"address": "192.0.2.10", "hostKey": HOST_KEY, "privateKey": ENCRYPTED},
                "bmc": {
                    "endpoint": "https://192.0.2.110",
                    "vendor": "dell",
                    "username": "root",
                    "password": ENCRYPTED,
                    "tlsFingerprint": FPR,
                },
            },
            {"name": "gpu-b", "ssh": {"address": "gpu-b.example.net", "hostKey": HOST_KEY, "privateKey": ENCRYPTED}},
        ],
    }


def replace_encrypted(value, repl):
    if value is ENCRYPTED:
        return copy.deepcopy(repl)
    if isinstance(value, dict):
        return {k: replace_encrypted(v, repl) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_encrypted(v, repl) for v in value]
    return value


WL_IMAGE = "docker.io/vllm/vllm-openai@sha256:" + "ab" * 32


WL_REV = "0123456789abcdef0123456789abcdef01234567"


def workload() -> dict:
    return {
        "image": WL_IMAGE,
        "cudaVersion": "12.4",
        "model": {
            "id": "Qwen/Qwen2.5-0.5B-Instruct",
            "revision": WL_REV,
            "files": {"model.safetensors": "aa" * 32, "config.json": "bb" * 32},
        },
        "modelSource": "https://huggingface.co/{id}/resolve/{revision}",
        "vllmArgs": ["--max-model-len", 4096],
        "gateway": {"port": 8443},
        "knownAnswer": {"prompt": "The capital of France is", "expect": " Paris"},
        "td": {"vcpus": 16, "memoryMiB": 65536, "artifactSource": "https://artifacts.example.net/td/"},
    }


KERNEL_SHA = "22" * 32


INITRD_SHA = "44" * 32


CMDLINE = "console=ttyS0 root=/dev/vda1 ro tdx_vllm.agent=1"


# The driver the GPU SKU pins name (firmware/gpu/*.yaml) and a synthetic manifest says its image carries.
GPU_DRIVER_VERSION = "550.163.01"


def pinned_firmware_dir(dest: Path, *, kernel_sha: str = KERNEL_SHA, cmdline: str = CMDLINE) -> Path:
    """A copy of firmware/ whose TD boot manifest pins a synthetic kernel, initrd and command line
    instead of the guest image's (and no root disk), for tests that need small known values."""
    fw = dest / "fw"
    if fw.exists():
        shutil.rmtree(fw)
    shutil.copytree(REPO / "firmware", fw)
    path = fw / "td" / "ovmf-debian-trixie.yaml"
    data = yaml.safe_load(path.read_text())
    data["kernel"] = {
        "name": "vmlinuz",
        "version": "6.18.5-test",
        "source": "test guest build",
        "file": "vmlinuz-6.18.5-test",
        "sha256": kernel_sha,
        "sha384": "33" * 48,
    }
    data["initrd"] = {
        "name": "initrd.img",
        "version": "6.18.5-test",
        "source": "test guest build",
        "file": "initrd-6.18.5-test.img",
        "sha256": INITRD_SHA,
        "sha384": "55" * 48,
    }
    data["cmdline"] = {"value": cmdline}
    data.pop("rootfs", None)
    data["gpuDriver"] = {"version": GPU_DRIVER_VERSION, "cuda": "12.4"}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return fw


GATEWAY = "ghcr.io/example/tdx-vllm-gateway@sha256:" + "cd" * 32


POLICY = "package agent_policy\n\ndefault ExecProcessRequest := false\n"


def manifest_doc(**over: Any) -> dict:
    doc = {
        "image": WL_IMAGE,
        "model": {
            "id": "Qwen/Qwen2.5-0.5B-Instruct",
            "revision": WL_REV,
            "files": {"config.json": "aa" * 32, "model.safetensors": "bb" * 32},
        },
        "vllmArgs": ["--max-model-len", "4096", "--gpu-memory-utilization=0.9"],
        "tensorParallelSize": 1,
    }
    doc.update(over)
    return doc


# The Kata guest's reference values of the Kubernetes target's tests.
KATA_MRTD, KATA_RTMR0, KATA_RTMR1, KATA_RTMR2 = ("11" * 48, "22" * 48, "33" * 48, "44" * 48)
# The TD those were "measured" for: Kata's 8192 MiB and 1 vCPU plus the default limits (vLLM 64Gi and
# 8 CPUs, the gateway's 1Gi), one GPU.
KATA_SHAPE = {"memoryMiB": 8192 + 65536 + 1024, "vcpus": 1 + 8, "gpus": 1}


def target_doc(**over: Any) -> dict:
    doc = {
        "gatewayImage": GATEWAY,
        "referenceValues": {
            "mrtd": KATA_MRTD,
            "rtmr0": KATA_RTMR0,
            "rtmr1": KATA_RTMR1,
            "rtmr2": KATA_RTMR2,
            "shape": dict(KATA_SHAPE),
        },
    }
    doc.update(over)
    return doc


def target(**over: Any) -> KubernetesTarget:
    t, errors = kubernetes_target_from_mapping(target_doc(**over))
    assert errors == [] and t is not None
    return t


def make_args(manifest: WorkloadManifest | None = None, **target_over: Any) -> KubernetesWorkloadArgs:
    m = manifest or manifest_from_mapping(manifest_doc())
    return KubernetesWorkloadArgs(
        manifest=m, target=target(**target_over), known_answer=KnownAnswer("The capital of France is", "Paris")
    )
