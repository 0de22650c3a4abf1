"""The `workload:` block: what the TDs serve (image by digest, model by revision and file hashes,
vLLM arguments, the known-answer check) and, on the host target, the TD shape checked against the
TD boot manifest; on the Kubernetes target, the cluster block (components/config/kubernetes.py)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.catalog.td_manifest import BootManifest, load_boot_manifest, td_boot_manifest
from components.config.kubernetes import kubernetes_target_from_mapping
from components.config.model import HostConfig, KnownAnswer, TdShape, WorkloadConfig
from components.config.reader import Reader, is_secure_marker, join, kind_of, url_problem
from components.paths import display_path
from tdxattest.core.errors import InputError
from tdxattest.core.workload import IMAGE_BY_DIGEST, refused_vllm_arg

WORKLOAD_TARGETS: tuple[str, ...] = ("host", "kubernetes")
WORKLOAD_KEYS = ("target", "image", "model", "modelSource", "vllmArgs", "gateway", "knownAnswer", "td", "kubernetes")
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
    if image is not None and not IMAGE_BY_DIGEST.match(image):
        r.error(join(path, "image"), f"`{image}` is not an image reference by digest", fix_image)

    model_path = join(path, "model")
    mm = r.obj(
        r.required(m, "model", path, "add `model: {id, revision, files}`"), model_path, ("id", "revision", "files")
    )
    fix_id = "the model's repository id, e.g. `Qwen/Qwen2.5-0.5B-Instruct`"
    model_id = r.string(r.required(mm, "id", model_path, fix_id), join(model_path, "id"), fix_id) if mm else None
    if model_id is not None and not _MODEL_ID.match(model_id):
        r.error(join(model_path, "id"), f"`{model_id}` is not a model id like `org/name`", fix_id)
    fix_rev = (
        "the model repository's commit id (40 hex, from `git ls-remote` or the hub's commit list); a branch can move"
    )
    revision = (
        r.string(r.required(mm, "revision", model_path, fix_rev), join(model_path, "revision"), fix_rev) if mm else None
    )
    if revision is not None and not _COMMIT.match(revision):
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
        problem = url_problem(source, ("https", "http"))
        if problem:
            r.error(join(path, "modelSource"), problem, fix_src + " (the TD checks every file's sha256)")

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
        boot, td, tensor_parallel = _host_target(r, m, path, hosts, raw_hosts, firmware_dir)
        shape = {"td": td, "boot": boot}
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


def _host_target(
    r: Reader, m: Mapping[str, Any], path: str, hosts: tuple[HostConfig, ...], raw_hosts: Any, firmware_dir: Path
) -> tuple[BootManifest | None, TdShape | None, int]:
    """The host target's part of `workload`: the TD boot manifest, the TD shape checked against it,
    and the hosts that run it (all with GPUs, the same count: the tensor parallel size it returns)."""
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
    return boot, td, max(counts) if counts else 1


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
        if not isinstance(sha, str) or not _SHA256_HEX.match(sha.strip().lower()):
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
    out = []
    for i, arg in enumerate(value):
        if isinstance(arg, (int, float)) and not isinstance(arg, bool):
            arg = str(arg)
        if not isinstance(arg, str) or not arg:
            r.error(f"{path}[{i}]", f"expected a string, got {kind_of(arg)}", "quote the argument")
            continue
        reason = refused_vllm_arg(arg)
        if reason is not None:
            r.error(f"{path}[{i}]", f"refused: {reason}", "remove it")
            continue
        out.append(arg)
    return tuple(out)


def _td_shape(r: Reader, value: Any, path: str, boot: BootManifest | None) -> TdShape | None:
    """`workload.td`; `boot` is the TD boot manifest (catalog.td_manifest.BootManifest), None when
    unusable (reported by the caller)."""
    m = r.obj(value, path, ("vcpus", "memoryMiB", "artifactSource", "readyTimeoutSeconds", "dataDiskGiB"))
    want = {"vcpus": boot.vcpus, "memoryMiB": boot.memory_mib} if boot is not None else {}
    shape = {}
    for key, lo, hi in (("vcpus", 1, 512), ("memoryMiB", 1024, 4 * 1024 * 1024)):
        shape[key] = r.integer(m.get(key), join(path, key), want.get(key, lo), lo, hi)
        if m.get(key) is not None and boot is not None and shape[key] != want[key]:
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
        problem = url_problem(source, ("https", "http"))
        if problem:
            r.error(join(path, "artifactSource"), problem, fix_src + " (the host checks every file's sha256)")
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
    )
