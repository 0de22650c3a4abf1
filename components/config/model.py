"""The stack configuration as frozen dataclasses: what `parse_stack` (components/config/stack.py)
builds from `Pulumi.<stack>.yaml` once, and every other layer reads. No parsing here."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from components.catalog.td_manifest import BootManifest
from tdxattest.core.workload import GpuPins, WorkloadManifest, manifest_from_mapping

PROJECT = "tdx-vllm"

GpuMode = Literal["on", "ppcie", "devtools"]
GPU_MODES: tuple[str, ...] = ("on", "ppcie", "devtools")
REGISTRATION_METHODS: tuple[str, ...] = ("mpa", "pckid", "none")
SUPPORTED_OS: tuple[str, ...] = ("ubuntu-25.10", "ubuntu-26.04", "ubuntu-24.04")
HOST_KEY_TYPES: tuple[str, ...] = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
# Kernel arguments every TDX host needs; `platform.extraKernelArgs` adds to these.
BASE_KERNEL_ARGS: tuple[str, ...] = ("nohibernate", "kvm_intel.tdx=1", "intel_iommu=on")


# The TD (and so its unit and directory) is named after its host: 1-32 lowercase letters, digits, dashes.
HOST_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")

# Kubernetes target defaults (sources in docs/kubernetes.md).
# NVIDIA's runtime class for confidential GPU pods on Intel TDX, installed by the kata-deploy chart.
# `kata-qemu-nvidia-gpu` (no suffix) is the non-confidential class: it does not start the GPU in CC mode.
DEFAULT_RUNTIME_CLASS = "kata-qemu-nvidia-gpu-tdx"
# The extended resource the NVIDIA Kata sandbox device plugin advertises for a passthrough GPU
# (P_GPU_ALIAS can rename it per model; `nvidia.com/gpu` is the name of the non-Kata device plugin).
DEFAULT_GPU_RESOURCE = "nvidia.com/pgpu"
# Its NVSwitch resource (NVSWITCH_ALIAS, default "nvswitch"): an 8-GPU TD in protected PCIe mode
# takes all four switches of an HGX board too (NVIDIA/sandbox-device-plugin cmd/main.go).
DEFAULT_NVSWITCH_RESOURCE = "nvidia.com/nvswitch"
PPCIE_NVSWITCHES = 4
# GPUs per Kata TD that NVIDIA supports: one passthrough GPU, or all eight with their NVSwitches
# in protected PCIe (PPCIe) mode.
KUBERNETES_GPU_COUNTS: tuple[int, ...] = (1, 8)
# kata-containers src/runtime/Makefile, DEFAULTMEMORY_NV / DEFAULTVCPUS_NV: the base the NVIDIA
# GPU runtime classes add the pod's limits to (static_sandbox_resource_mgmt = true).
KATA_DEFAULT_MEMORY_MIB = 8192
KATA_DEFAULT_VCPUS = 1
# The pod's fixed memory limits besides vLLM's: the model fetcher (init container; it streams to a
# disk volume, so page cache, not the model, fills it) and the gateway.
FETCH_MEMORY_LIMIT = "2Gi"
GATEWAY_MEMORY_LIMIT = "1Gi"
GATEWAY_PORT = 8443  # the attested gateway in the pod (and the Service's default port)


# --------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class Secret:
    """A value that must stay a Pulumi secret. `repr` never shows it."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret(***)"


@dataclass(frozen=True)
class SshConfig:
    address: str
    port: int
    user: str
    host_key: str
    private_key: Secret


@dataclass(frozen=True)
class SshDefaults:
    """`ssh:` at the top of the stack: what every host's `ssh:` block takes unless it sets its own.
    A fleet that logs in with one key sets it once: Pulumi hands the whole config to the program in
    one environment variable, which Linux caps at 128 KiB, and a private key per host fills that
    at about 210 hosts (an ed25519 key each; measured)."""

    user: str = "root"
    port: int = 22
    private_key: Secret | None = None


@dataclass(frozen=True)
class BmcConfig:
    endpoint: str
    vendor: str
    username: str  # plain config: a user name is not a secret, and Pulumi masks every occurrence of one
    password: Secret
    tls_fingerprint: str | None
    ca_file: str | None
    system: str | None


@dataclass(frozen=True)
class GpuConfig:
    model: str
    count: int
    mode: GpuMode


@dataclass(frozen=True)
class HostConfig:
    name: str
    ssh: SshConfig
    bmc: BmcConfig | None
    gpu: GpuConfig | None


@dataclass(frozen=True)
class TdxModulePin:
    """One TDX module release the stack accepts (`platform.tdxModule`, firmware/tdx-module.yaml)."""

    version: str  # major.minor.update, as the kernel prints it
    mrseam: str  # Intel's published MRSEAM, lowercase hex: what the TD quotes must carry
    # The release's build number where a source gives it: the only way to match the pin on kernels
    # that log major.minor and a build number.
    build: int | None = None


@dataclass(frozen=True)
class PlatformConfig:
    os: str
    extra_kernel_args: tuple[str, ...]
    # One release, or a few while hosts move from one to the next; empty: no module pinned.
    tdx_modules: tuple[TdxModulePin, ...] = ()

    @property
    def kernel_args(self) -> tuple[str, ...]:
        return BASE_KERNEL_ARGS + tuple(a for a in self.extra_kernel_args if a not in BASE_KERNEL_ARGS)


@dataclass(frozen=True)
class DcapConfig:
    pccs_api_key: Secret
    registration: str
    pccs_port: int
    qgs_port: int
    pccs_url: str | None  # an external PCCS; None = run PCCS on each host
    use_secure_cert: bool


@dataclass(frozen=True)
class PromotionConfig:
    from_stack: str  # `organization/<project>/<stack>` or a bare stack name of this project


@dataclass(frozen=True)
class KnownAnswer:
    """The readiness check on both targets: the greedy completion of `prompt` (at most `max_tokens`)
    must begin with `expect` (guest_agent/knownanswer.py)."""

    prompt: str
    expect: str
    max_tokens: int = 16


@dataclass(frozen=True)
class TdShape:
    vcpus: int
    memory_mib: int
    artifact_source: str  # https://... base URL, or an absolute directory on the host
    ready_timeout_s: int
    data_disk_gib: int = 0  # scratch disk for the model (encrypted in the TD with a fresh key); 0: TD memory
    # False (dev stack only): the TD runs as a plain VM under TCG, with software TEST quotes and no
    # boot measurements (docs/trust-domain.md, "A dev TD without TDX").
    tdx: bool = True


@dataclass(frozen=True)
class KataShape:
    """A Kata TD's size under static sandbox sizing: what RTMR0 (the TD's ACPI tables) depends on."""

    memory_mib: int
    vcpus: int
    gpus: int

    def to_json(self) -> dict[str, int]:
        return {"memoryMiB": self.memory_mib, "vcpus": self.vcpus, "gpus": self.gpus}


@dataclass(frozen=True)
class ReferenceValues:
    """The Kata guest's expected registers (lowercase hex): they become the pins."""

    mrtd: str
    rtmr0: str
    rtmr1: str
    rtmr2: str
    shape: KataShape  # the TD size these registers were measured for
    td_attributes: str | None = None  # the quote's TD_ATTRIBUTES bytes (16 hex), when known


_BINARY_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}


def memory_bytes(quantity: str) -> int:
    """`64Gi` -> bytes (the config accepts only binary-suffixed memory quantities)."""
    return int(quantity[:-2]) * _BINARY_UNITS[quantity[-2:]]


def millicpu(quantity: str) -> int:
    """`8`, `7500m` or `7.5` -> millicores."""
    if quantity.endswith("m"):
        return int(quantity[:-1])
    whole, _, frac = quantity.partition(".")
    return int(whole) * 1000 + int((frac + "000")[:3])


@dataclass(frozen=True)
class KubernetesTarget:
    namespace: str
    gateway_image: str  # runs `python -m tdxattest gateway`; by digest only
    reference_values: ReferenceValues
    name: str = "vllm"  # Deployment/Service name and label
    create_namespace: bool = True
    runtime_class_name: str = DEFAULT_RUNTIME_CLASS
    gpu_count: int = 1  # GPUs in the one TD; must equal tensorParallelSize
    gpu_resource: str = DEFAULT_GPU_RESOURCE
    nvswitch_resource: str = DEFAULT_NVSWITCH_RESOURCE  # with 8 GPUs (PPCIe): the four NVSwitches
    memory: str = "64Gi"  # vLLM container limit: Kata sizes the TD's RAM from limits
    cpu: str = "8"
    model_cache_size: str | None = None  # sizeLimit of the in-TD (memory-backed) model volume
    service_type: str = "ClusterIP"
    service_port: int = GATEWAY_PORT
    node_port: int | None = None
    kubeconfig: str | None = None  # a kubeconfig file path; None = the ambient one
    context: str | None = None
    agent_policy_file: str | None = None
    agent_policy: str | None = field(default=None, repr=False)  # the Rego text, read at parse time
    # The runtime class's Kata configuration (configuration-qemu-nvidia-gpu-tdx.toml): the TD's size
    # is these plus the pod's limits (static sandbox sizing).
    kata_default_memory_mib: int = KATA_DEFAULT_MEMORY_MIB
    kata_default_vcpus: int = KATA_DEFAULT_VCPUS

    def td_shape(self) -> KataShape:
        """The TD Kata starts for this pod under static sandbox sizing (the NVIDIA GPU runtime
        classes): the configuration's default memory and vCPUs plus the pod's limits, i.e. the larger
        of the app containers' sum and the init container's (the kubelet's pod resources; the
        RuntimeClass overhead counts for scheduling only). Sources: docs/kubernetes.md, Sizing the TD."""
        app_memory = memory_bytes(self.memory) + memory_bytes(GATEWAY_MEMORY_LIMIT)
        memory = max(app_memory, memory_bytes(FETCH_MEMORY_LIMIT))
        return KataShape(
            memory_mib=self.kata_default_memory_mib + memory // (1 << 20),
            vcpus=self.kata_default_vcpus + -(-millicpu(self.cpu) // 1000),  # vLLM's is the only CPU limit
            gpus=self.gpu_count,
        )


@dataclass(frozen=True)
class WorkloadConfig:
    """What the TDs serve (`workload:`). The measured part is `manifest(tp)` (tdxattest.core.workload)."""

    target: str  # "host" (the TD runs vLLM itself)
    image: str  # <repository>@sha256:<64 hex>
    model_id: str
    model_revision: str  # a commit id (40 hex)
    model_files: tuple[tuple[str, str], ...]  # sorted (relative path, sha256)
    model_source: str  # where the TD fetches the files (verified there)
    vllm_args: tuple[str, ...]
    gateway_port: int
    known_answer: KnownAnswer
    td: TdShape | None  # host target: the TD shape (None for kubernetes)
    boot: BootManifest | None = None  # host target: the TD boot manifest, read once
    # host target: the CUDA runtime the image was built for ("12.4"), checked against the guest
    # image's driver (`gpuDriver` in the boot manifest); not measured.
    cuda_version: str | None = None
    kubernetes: KubernetesTarget | None = None  # kubernetes target: the cluster and its Kata guest
    # host target: "vllm", or "standin" (dev stack only): the echoing stand-in model server, no GPU
    server: str = "vllm"

    @property
    def boot_manifest(self) -> Path | None:
        """The TD boot manifest's path (firmware/td/); None for kubernetes."""
        return self.boot.path if self.boot is not None else None

    def manifest_mapping(self, tensor_parallel_size: int, gpu: GpuPins | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "image": self.image,
            "model": {"id": self.model_id, "revision": self.model_revision, "files": dict(self.model_files)},
            "vllmArgs": list(self.vllm_args),
            "tensorParallelSize": tensor_parallel_size,
        }
        if gpu is not None:
            doc["gpu"] = gpu.as_dict()
        return doc

    def manifest(self, tensor_parallel_size: int, gpu: GpuPins | None = None) -> WorkloadManifest:
        """The workload manifest measured into RTMR3 (tdxattest.core.workload), with the GPU pins
        the TD checks its GPUs' evidence against (render.trust_domain.workload_manifest)."""
        return manifest_from_mapping(self.manifest_mapping(tensor_parallel_size, gpu))


@dataclass(frozen=True)
class ProxyTls:
    """The TLS the verifying proxy serves its clients with (`proxy.tls`)."""

    certificate: str  # PEM certificate chain (public)
    private_key: Secret  # PEM private key


@dataclass(frozen=True)
class ProxyCluster:
    """`proxy.kubernetes`: the proxy as one Deployment and Service per TD in a cluster of the
    client's (components/resources/proxy_kubernetes.py)."""

    image: str  # by digest: python3 with tdxattest installed (the gateway image is one)
    namespace: str = "tdx-vllm-proxy"
    name: str = "tdx-vllm-proxy"  # each TD's Deployment and Service: <name>-<td>
    kubeconfig: str | None = None  # a kubeconfig file; None: $KUBECONFIG, then ~/.kube/config
    context: str | None = None
    service_type: str = "ClusterIP"


PROXY_CLUSTER_PORT = 8443  # the port of each proxy pod and Service


@dataclass(frozen=True)
class VerifyingProxyConfig:
    """`proxy:`: the client's verifying proxy (`tdxattest proxy`), one systemd service per TD
    endpoint on a host of the client's (components/resources/proxy.py), or one Deployment and
    Service per TD in the client's cluster (`kubernetes`; components/resources/proxy_kubernetes.py)."""

    ssh: SshConfig | None  # None with `kubernetes`
    python: str  # the interpreter of an environment with tdxattest installed
    listen_host: str
    listen_port: int  # the first TD's; the next TDs (in `hosts` order) take the ports after it
    audit_dir: str  # one `<td>.jsonl` audit log per TD
    pccs_url: str | None  # where collateral comes from; None: the dev stack's TEST quotes (tdx: false)
    tls: ProxyTls | None = None
    cache_dir: str = "/var/cache/tdx-vllm/proxy"
    kubernetes: ProxyCluster | None = None


@dataclass(frozen=True)
class StackConfig:
    stack: str
    hosts: tuple[HostConfig, ...]
    platform: PlatformConfig
    dcap: DcapConfig | None  # None only in a stack without hosts (a kubernetes-only workload)
    tee_io: bool
    restore_on_destroy: bool
    reboot_timeout_s: int
    promotion: PromotionConfig | None = None
    workload: WorkloadConfig | None = None
    proxy: VerifyingProxyConfig | None = None

    @property
    def tensor_parallel_size(self) -> int:
        """GPUs per TD: every host's `gpu.count` (validation makes them equal when a workload is set)."""
        if self.workload is not None and self.workload.kubernetes is not None:
            return self.workload.kubernetes.gpu_count
        counts = {h.gpu.count for h in self.hosts if h.gpu}
        if not counts and self.workload is not None and self.workload.server == "standin":
            return 1  # the dev stand-in on hosts without GPUs: one process, as vLLM's default
        return counts.pop() if len(counts) == 1 else 0
