"""The `workload:` block: what the TDs serve (image by digest, model by revision and file hashes,
vLLM arguments, the known-answer check) and, on the host target, the TD shape checked against the
TD boot manifest; on the Kubernetes target, the cluster block (components/config/kubernetes.py)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from components.catalog.gpu import gpu_sku
from components.catalog.td_manifest import BootManifest, cuda_tuple, load_boot_manifest, td_boot_manifest
from components.config.kubernetes import kubernetes_target_from_mapping
from components.config.model import HostConfig, KnownAnswer, TdShape, WorkloadConfig
from components.config.reader import Reader, is_secure_marker, join, kind_of
from components.paths import display_path
from guest_agent import DEV_STACK
from tdxattest.core.errors import InputError
from tdxattest.core.workload import IMAGE_BY_DIGEST, refused_vllm_args

WORKLOAD_TARGETS: tuple[str, ...] = ("host", "kubernetes")
WORKLOAD_KEYS = (
    "target",
    "image",
    "cudaVersion",
    "model",
    "modelSource",
    "vllmArgs",
    "gateway",
    "knownAnswer",
    "td",
    "kubernetes",
    "server",
)
SERVERS: tuple[str, ...] = ("vllm", "standin")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def parse_workload(
    r: Reader, value: Any, path: str, hosts: tuple[HostConfig, ...], raw_hosts: Any, firmware_dir: Path
) -> WorkloadConfig | None:
    before = len(r.errors)
    m = r.obj(value, path, WORKLOAD_KEYS)
    if not m:
        return None
    target = r.choice(m.get("target", "host"), join(path, "target"), WORKLOAD_TARGETS)
    server = _server(r, m, path, target)
    k8s = None
    if target == "kubernetes":
        # The cluster's Kata TDX guest is the TD (components/config/kubernetes.py, docs/kubernetes.md).
        k8s, errors = kubernetes_target_from_mapping(m.get("kubernetes"), join(path, "kubernetes"), stack=r.stack)
        r.errors.extend(errors)
        if m.get("td") is not None:
            r.error(
                join(path, "td"),
                "the TD shape is not ours to set with `target: kubernetes` (Kata sizes the TD from the pod's limits)",
                "remove `td:`; set `kubernetes.cpu`/`kubernetes.memory` instead",
            )
        if m.get("cudaVersion") is not None:
            r.error(
                join(path, "cudaVersion"),
                "only checked with `target: host`: on Kubernetes the Kata guest's driver is the GPU "
                "operator's, not our guest image's",
                "remove `cudaVersion`",
            )
    elif m.get("kubernetes") is not None:
        r.error(
            join(path, "kubernetes"),
            "only used with `target: kubernetes`",
            "set `target: kubernetes`, or remove the block to run the workload in a TD on each host",
        )

    fix_image = (
        "pin the image by digest: `<repository>@sha256:<64 hex>` (`podman pull IMAGE && podman image "
        "inspect --format '{{index .RepoDigests 0}}' IMAGE`); a tag can move"
    )
    image = r.string(r.required(m, "image", path, fix_image), join(path, "image"), fix_image)
    if image is not None and not IMAGE_BY_DIGEST.fullmatch(image):
        r.error(join(path, "image"), f"`{image}` is not an image reference by digest", fix_image)

    model_path = join(path, "model")
    mm = r.obj(
        r.required(m, "model", path, "add `model: {id, revision, files}`"), model_path, ("id", "revision", "files")
    )
    fix_id = "the model's repository id, e.g. `Qwen/Qwen2.5-0.5B-Instruct`"
    model_id = r.string(r.required(mm, "id", model_path, fix_id), join(model_path, "id"), fix_id) if mm else None
    if model_id is not None and not _MODEL_ID.fullmatch(model_id):
        r.error(join(model_path, "id"), f"`{model_id}` is not a model id like `org/name`", fix_id)
    fix_rev = (
        "the model repository's commit id (40 hex, from `git ls-remote` or the hub's commit list); a branch can move"
    )
    revision = (
        r.string(r.required(mm, "revision", model_path, fix_rev), join(model_path, "revision"), fix_rev) if mm else None
    )
    if revision is not None and not _COMMIT.fullmatch(revision):
        r.error(join(model_path, "revision"), f"`{revision}` is not a commit id", fix_rev)
    files = _model_files(
        r,
        r.required(
            mm,
            "files",
            model_path,
            "list every file the model needs with its sha256 (`sha256sum` in the downloaded snapshot)",
        )
        if mm
        else None,
        join(model_path, "files"),
    )

    fix_src = (
        "set the URL the TD downloads the model files from (`<modelSource>/<path>`; `{id}` and `{revision}` "
        "expand), e.g. `https://huggingface.co/{id}/resolve/{revision}`"
    )
    source = r.string(r.required(m, "modelSource", path, fix_src), join(path, "modelSource"), fix_src)
    if source is not None:
        r.url(
            source,
            join(path, "modelSource"),
            ("https", "http"),
            fix_src + " (the TD checks every file's sha256)",
            "remove them: the TD fetches the files without credentials and checks every sha256, so a "
            "mirror needs none (serve it on a network only the TDs reach)",
        )

    args = _vllm_args(r, m.get("vllmArgs"), join(path, "vllmArgs"))
    gw = r.obj(m.get("gateway"), join(path, "gateway"), ("port",))
    gateway_port = r.integer(gw.get("port"), join(path, "gateway.port"), 8443, 1, 65535)

    ka_path = join(path, "knownAnswer")
    fix_ka = (
        "add `knownAnswer: {prompt: ..., expect: ...}`: a prompt whose greedy answer you know, so a TD that "
        "serves garbage (vLLM under CC, vllm #57224) is caught before it is declared ready"
    )
    ka = r.obj(r.required(m, "knownAnswer", path, fix_ka), ka_path, ("prompt", "expect"))
    # Validated as non-empty strings but kept verbatim: leading spaces matter in a completion.
    prompt = (
        ka.get("prompt")
        if ka and r.string(r.required(ka, "prompt", ka_path, fix_ka), join(ka_path, "prompt"), fix_ka)
        else None
    )
    expect = (
        ka.get("expect")
        if ka and r.string(r.required(ka, "expect", ka_path, fix_ka), join(ka_path, "expect"), fix_ka)
        else None
    )

    shape: dict[str, Any]  # the target's own fields of WorkloadConfig
    if target == "kubernetes":
        if isinstance(source, str) and not source.startswith("https://"):
            r.error(
                join(path, "modelSource"),
                f"`{source}` is not https: the pod fetches the model over the cluster's network, outside the TD",
                "serve the model files over https (every file's sha256 is checked too)",
            )
        # The Kubernetes target's own render checks (render.kubernetes.workload_problems) hold by then:
        # images by digest and vLLM arguments are checked above, gpuCount is the manifest's tensor
        # parallel size by construction, and model.files is required.
        shape = {"td": None, "kubernetes": k8s}
        tensor_parallel = k8s.gpu_count if k8s is not None else 1
        complete = k8s is not None
    else:
        boot, td, tensor_parallel = _host_target(r, m, path, hosts, raw_hosts, firmware_dir, server)
        shape = {"td": td, "boot": boot, "cuda_version": _cuda_version(r, m, path, boot), "server": server}
        complete = boot is not None and td is not None

    if len(r.errors) > before or not complete:
        return None
    # No error recorded, so every required value was read (the checks say None only with an error).
    if image is None or model_id is None or revision is None or source is None or prompt is None or expect is None:
        return None
    wl = WorkloadConfig(
        target=str(target),
        image=image,
        model_id=model_id,
        model_revision=revision,
        model_files=files,
        model_source=source,
        vllm_args=args,
        gateway_port=gateway_port,
        known_answer=KnownAnswer(prompt=prompt, expect=expect),
        **shape,
    )
    try:
        wl.manifest(tensor_parallel)
    except InputError as exc:  # the manifest library's rules (kept in step with the checks above)
        r.error(path, f"not a valid workload manifest: {exc}", "correct the value named")
        return None
    return wl


def _server(r: Reader, m: Mapping[str, Any], path: str, target: str | None) -> str:
    """`workload.server`: vLLM, or the dev stack's stand-in model server (no GPU, echoes prompts)."""
    server = r.choice(m.get("server", "vllm"), join(path, "server"), SERVERS) or "vllm"
    if server == "standin" and r.stack != DEV_STACK:
        r.error(
            join(path, "server"),
            f"the stand-in model server echoes prompts; it serves on the `{DEV_STACK}` stack only, not `{r.stack}`",
            "remove `server` (vLLM serves)",
        )
    if server == "standin" and target == "kubernetes":
        r.error(join(path, "server"), "the Kubernetes target always runs vLLM", "remove `server`")
    return server


def _host_target(
    r: Reader,
    m: Mapping[str, Any],
    path: str,
    hosts: tuple[HostConfig, ...],
    raw_hosts: Any,
    firmware_dir: Path,
    server: str = "vllm",
) -> tuple[BootManifest | None, TdShape | None, int]:
    """The host target's part of `workload`: the TD boot manifest, the TD shape checked against it,
    and the hosts that run it (all with GPUs, the same count: the tensor parallel size it returns;
    the dev stack's stand-in server needs no GPU)."""
    boot = r.catalog(
        path,
        lambda: load_boot_manifest(td_boot_manifest(r.stack, firmware_dir)),
        "the TD boot manifest",
        "fix the manifest in firmware/td/",
    )
    td = _td_shape(r, m.get("td"), join(path, "td"), boot)
    if boot is not None and not boot.launchable:
        r.error(
            path,
            f"the TD boot manifest {display_path(boot.path)} cannot launch a TD yet ({'; '.join(boot.gaps)})",
            "pin the guest kernel, initrd and command line in that manifest (docs/trust-domain.md), "
            "or remove `workload` until the guest image is built",
        )

    # One workload per stack: every host runs the same TD shape, so every host needs GPUs, the
    # same number of them (tensorParallelSize is measured), and single-GPU CC mode.
    raw_list = raw_hosts if isinstance(raw_hosts, list) else []
    counts: dict[int, str] = {}
    for h in hosts:
        i = next((n for n, item in enumerate(raw_list) if isinstance(item, Mapping) and item.get("name") == h.name), 0)
        if h.gpu is None and server == "standin":
            continue  # the stand-in uses no GPU (the agent skips GPU attestation for it)
        if h.gpu is None:
            r.error(
                f"hosts[{i}].gpu",
                f"host `{h.name}` has no GPUs but `workload` is set",
                "give the host a `gpu:` block (or the stack a default `gpu:`), or remove it from this stack",
            )
            continue
        if h.gpu.mode == "ppcie":
            r.error(
                f"hosts[{i}].gpu.mode",
                "a workload with `ppcie` (8 GPUs + NVSwitches in one TD) is not yet "
                "supported: the TD definition does not pass the NVSwitches through",
                "use `mode: on`",
            )
        counts.setdefault(h.gpu.count, h.name)
    if len(counts) > 1:
        shown = ", ".join(f"`{name}` has {count}" for count, name in sorted(counts.items()))
        r.error(
            "hosts",
            f"hosts with a workload must have the same GPU count (tensorParallelSize is measured into "
            f"RTMR3 and the stack pins one RTMR3): {shown}",
            "give every host the same `gpu.count`",
        )
    _gpu_driver_pins(r, hosts, raw_list, boot, firmware_dir)
    return boot, td, max(counts) if counts else 1


def _cuda_version(r: Reader, m: Mapping[str, Any], path: str, boot: BootManifest | None) -> str | None:
    """`workload.cudaVersion`: the CUDA runtime the vLLM image was built for, which the guest image's
    driver must serve (docs/decisions.md, "CUDA ceiling"). A digest says nothing about it and the
    image is not pulled at preview, so the stack states it next to the pin."""
    key = join(path, "cudaVersion")
    fix = (
        "set the CUDA version the vLLM image was built for, MAJOR.MINOR as a string: its CUDA_VERSION "
        "(`podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' IMAGE | grep "
        'CUDA_VERSION`: CUDA_VERSION=12.4.1 is "12.4")'
    )
    value = r.required(m, "cudaVersion", path, fix)
    if value is None:
        return None
    if not isinstance(value, str):
        r.error(key, f'expected a string like "12.4", got {kind_of(value)} {value!r}', fix + " (quote it)")
        return None
    try:
        wanted = cuda_tuple(value)
    except ValueError as exc:
        r.error(key, f"expected {exc}", fix)
        return None
    if boot is None:
        return value  # the TD boot manifest's own error is reported
    driver = boot.gpu_driver
    if driver is None:
        r.error(
            key,
            f"expected the TD boot manifest {display_path(boot.path)} to record the guest image's GPU driver "
            f"(`gpuDriver`) so CUDA {value} can be checked against it, seen none",
            "re-pin the guest image with this checkout (`sudo tools/build-guest-image.sh --stack all --out DIR "
            "&& .venv/bin/python -m components guest-image pin DIR`, docs/guest-image.md)",
        )
    elif wanted > cuda_tuple(driver.cuda):
        r.error(
            key,
            f"expected CUDA <= {driver.cuda} (the newest the guest image's driver {driver.version} serves, "
            f"`gpuDriver` in {display_path(boot.path)}), seen {value}: vLLM would stop at start with "
            "'CUDA driver version is insufficient for CUDA runtime version'",
            f"pin a vLLM image built for CUDA {driver.cuda} or older (and set cudaVersion to it), or build the "
            "guest image with a newer driver (guest/image/config.sh DRIVER_*, docs/guest-image.md) and re-pin",
        )
    return value


def _gpu_driver_pins(
    r: Reader, hosts: tuple[HostConfig, ...], raw_list: list, boot: BootManifest | None, firmware_dir: Path
) -> None:
    """The guest driver each GPU model pins (firmware/gpu/<sku>.yaml `driver`, measured into RTMR3 and
    checked by the TD against its GPUs' evidence) must be the one the guest image carries, or every
    TD refuses at step `gpu`."""
    if boot is None or boot.gpu_driver is None:
        return  # cudaVersion reports a manifest without `gpuDriver`
    seen: set[str] = set()
    for h in hosts:
        if h.gpu is None or h.gpu.model in seen:
            continue
        seen.add(h.gpu.model)
        i = next((n for n, item in enumerate(raw_list) if isinstance(item, Mapping) and item.get("name") == h.name), 0)
        model = h.gpu.model
        sku = r.catalog(
            f"hosts[{i}].gpu.model",
            partial(gpu_sku, model, firmware_dir),
            f"the GPU pins of `{h.gpu.model}`",
            f"fix firmware/gpu/{h.gpu.model}.yaml",
        )
        if sku is not None and sku.driver != boot.gpu_driver.version:
            r.error(
                f"hosts[{i}].gpu.model",
                f"expected firmware/gpu/{sku.sku}.yaml to pin the guest driver the TD image carries, "
                f"{boot.gpu_driver.version} (`gpuDriver` in {display_path(boot.path)}), seen {sku.driver}: "
                "every TD would refuse its GPUs at step `gpu`",
                f'set `driver: "{boot.gpu_driver.version}"` in firmware/gpu/{sku.sku}.yaml, or build the guest '
                "image with that driver (guest/image/config.sh DRIVER_*) and re-pin firmware/td/",
            )


def _model_files(r: Reader, value: Any, path: str) -> tuple[tuple[str, str], ...]:
    fix = "map each file's path in the model snapshot to its sha256, e.g. `model.safetensors: <64 hex>`"
    if value is None:
        return ()
    if not isinstance(value, Mapping) or not value or is_secure_marker(value):
        r.error(path, f"expected a non-empty mapping of file path to sha256, got {kind_of(value)}", fix)
        return ()
    out = []
    for name, sha in value.items():
        fp = f"{path}[{name!r}]" if not re.fullmatch(r"[A-Za-z0-9_.\-/]+", str(name)) else join(path, name)
        parts = str(name).split("/")
        if (
            not isinstance(name, str)
            or not name
            or name.startswith("/")
            or "\\" in name
            or any(p in ("", ".", "..") for p in parts)
        ):
            r.error(
                fp,
                f"`{name}` is not a relative path inside the model directory",
                "use the path as in the snapshot, without `..`, `.`, empty or absolute parts",
            )
            continue
        if not isinstance(sha, str) or not _SHA256_HEX.fullmatch(sha.strip().lower()):
            r.error(fp, f"expected a sha256 (64 hex digits), got {sha!r}", "use the `sha256sum` of the file")
            continue
        out.append((name, sha.strip().lower()))
    return tuple(sorted(out))


def _vllm_args(r: Reader, value: Any, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        r.error(
            path,
            f"expected a list of arguments, got {kind_of(value)}",
            'write it as a YAML list: `[--max-model-len, "8192"]`',
        )
        return ()
    args = [str(a) if isinstance(a, (int, float)) and not isinstance(a, bool) else a for a in value]
    for i, arg in enumerate(args):
        if not isinstance(arg, str) or not arg:
            r.error(f"{path}[{i}]", f"expected a string, got {kind_of(arg)}", "quote the argument")
    if not all(isinstance(a, str) and a for a in args):
        return ()  # judged again once every item is a string: a missing one shifts what takes a value
    for i, reason in refused_vllm_args(args):
        r.error(f"{path}[{i}]", f"refused: {reason}", "remove it")
    return tuple(args)


def _td_shape(r: Reader, value: Any, path: str, boot: BootManifest | None) -> TdShape | None:
    """`workload.td`; `boot` is the TD boot manifest (catalog.td_manifest.BootManifest), None when
    unusable (reported by the caller)."""
    m = r.obj(value, path, ("vcpus", "memoryMiB", "artifactSource", "readyTimeoutSeconds", "dataDiskGiB", "tdx"))
    tdx = r.boolean(m.get("tdx"), join(path, "tdx"), True)
    if not tdx and r.stack != DEV_STACK:
        r.error(
            join(path, "tdx"),
            f"a TD without TDX proves nothing (software TEST quotes, no boot measurements); only the "
            f"`{DEV_STACK}` stack may run one, not `{r.stack}`",
            "remove `tdx: false`: the host must run TDX (docs/trust-domain.md)",
        )
    want = {"vcpus": boot.vcpus, "memoryMiB": boot.memory_mib} if boot is not None else {}
    shape = {}
    for key, lo, hi in (("vcpus", 1, 512), ("memoryMiB", 1024, 4 * 1024 * 1024)):
        shape[key] = r.integer(m.get(key), join(path, key), want.get(key, lo), lo, hi)
        # Without TDX nothing measures the VM shape (no RTMR0), so a small dev VM may differ.
        if tdx and m.get(key) is not None and boot is not None and shape[key] != want[key]:
            r.error(
                join(path, key),
                f"{shape[key]} differs from `vm.{key}: {want[key]}` in the TD boot manifest "
                f"{display_path(boot.path)} (RTMR0 and RTMR1 are computed for that VM shape)",
                f"set {want[key]}, or change `vm.{key}` in the manifest and capture its ACPI digests again",
            )
    fix_src = (
        "set where the host fetches the TD boot artifacts (the manifest's `file` names under it): "
        "an `https://` base URL, or an absolute directory on the host"
    )
    source = r.string(r.required(m, "artifactSource", path, fix_src), join(path, "artifactSource"), fix_src)
    if source is not None and not source.startswith("/"):
        r.url(
            source,
            join(path, "artifactSource"),
            ("https", "http"),
            fix_src + " (the host checks every file's sha256)",
            "remove them: the host fetches the artifacts without credentials and checks every sha256; "
            "serve them without, or copy them to a directory on the host and name its absolute path",
        )
    if source is not None and re.search(r"[\s'\"\\]", source):
        r.error(join(path, "artifactSource"), "contains spaces, quotes or backslashes", fix_src)
    timeout = r.integer(m.get("readyTimeoutSeconds"), join(path, "readyTimeoutSeconds"), 3600, 60, 86400)
    data_disk = r.integer(m.get("dataDiskGiB"), join(path, "dataDiskGiB"), 0, 0, 65536)
    if source is None:
        return None
    return TdShape(
        vcpus=shape["vcpus"],
        memory_mib=shape["memoryMiB"],
        artifact_source=source.rstrip("/") or "/",
        ready_timeout_s=timeout,
        data_disk_gib=data_disk,
        tdx=tdx,
    )
