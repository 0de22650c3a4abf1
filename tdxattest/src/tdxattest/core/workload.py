"""The workload manifest: what a TD serves, in a canonical form that is measured into RTMR3.

The guest agent extends RTMR3 with `WorkloadManifest.digest()` before anything else runs, so a
quote from the TD proves which image, model files and vLLM arguments it serves. A verifier rebuilds
the manifest from the same config, calls `expected_rtmr3`, and compares with the quote's RTMR3.

Only things that cannot drift are accepted: images by digest, models by commit id and per-file
SHA-256. A tag or a branch name would make the same manifest mean different bytes tomorrow.

The GPU pins (accepted VBIOS versions, the guest driver) are part of the manifest, so the TD checks
its GPUs' evidence against measured values: a host that edits the agent's config cannot switch the
check off, and a quote's RTMR3 shows which pins the TD enforced. Pure.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from tdxattest.core import rtmr
from tdxattest.core.errors import InputError

WORKLOAD_EVENT = "tdx-vllm/workload-manifest/v1"
SCHEMA = 1
RTMR_INDEX = 3

IMAGE_BY_DIGEST = re.compile(r"^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$")  # `repository@sha256:<hex>`
_REVISION = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DIGEST48 = re.compile(r"^[0-9a-f]{96}$")
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")

_TOP_KEYS = frozenset({"schema", "image", "model", "vllmArgs", "tensorParallelSize", "gpu"})
_MODEL_KEYS = frozenset({"id", "revision", "files"})
_GPU_KEYS = frozenset({"vbios", "driver"})
_VBIOS = re.compile(r"^[0-9A-F]{2}(\.[0-9A-F]{2}){4}$")  # as NVIDIA prints it: 96.00.9F.00.01
_DRIVER = re.compile(r"^[0-9]{3}\.[0-9]{1,3}(\.[0-9]{1,3})?$")  # 570.86.15


@dataclass(frozen=True)
class GpuPins:
    """What the TD accepts from its GPUs' evidence: the VBIOS versions of the stack's GPU models
    (firmware/gpu/<sku>.yaml) and the guest driver versions. Sorted, non-empty."""

    vbios: tuple[str, ...]
    driver: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"vbios": list(self.vbios), "driver": list(self.driver)}


def gpu_pins(vbios: Iterable[str], drivers: Iterable[str]) -> GpuPins:
    """GpuPins from the pinned versions (upper-cased VBIOS, sorted, duplicates dropped)."""
    return gpu_pins_from_mapping({"vbios": sorted({v.upper() for v in vbios}), "driver": sorted(set(drivers))})


def gpu_pins_from_mapping(doc: Any) -> GpuPins:
    if not isinstance(doc, Mapping):
        raise InputError("workload.gpu as a mapping", _type_name(doc))
    unknown = sorted(set(doc) - _GPU_KEYS)
    if unknown:
        raise InputError(f"workload.gpu keys among {sorted(_GPU_KEYS)}", f"unknown key {unknown[0]!r}")
    out: dict[str, tuple[str, ...]] = {}
    for key, pattern, example in (("vbios", _VBIOS, "96.00.9F.00.01"), ("driver", _DRIVER, "570.86.15")):
        values = doc.get(key)
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise InputError(f"workload.gpu.{key} as a non-empty list of versions", repr(values)[:120])
        bad = [v for v in values if not pattern.match(v)]
        if bad:
            raise InputError(f"workload.gpu.{key} versions like {example}", repr(bad[0])[:120])
        if values != sorted(set(values)):
            raise InputError(f"workload.gpu.{key} sorted, without duplicates (one canonical form)", repr(values)[:120])
        out[key] = tuple(values)
    return GpuPins(vbios=out["vbios"], driver=out["driver"])


@dataclass(frozen=True)
class WorkloadManifest:
    image: str  # "<repository>@sha256:<64 lowercase hex>": by digest only
    model_id: str  # e.g. "Qwen/Qwen2.5-0.5B-Instruct"
    model_revision: str  # a commit id (40 hex), never a branch name
    model_files: tuple[tuple[str, str], ...]  # sorted (relative path, sha256 hex); non-empty
    vllm_args: tuple[str, ...]
    tensor_parallel_size: int  # = GPU count of the TD, >= 1
    gpu: GpuPins | None = None  # None: no GPU pins (a stack without GPU hosts, or the dev stand-in)

    def as_dict(self) -> dict[str, Any]:
        doc = {
            "schema": SCHEMA,
            "image": self.image,
            "model": {
                "id": self.model_id,
                "revision": self.model_revision,
                "files": {path: sha for path, sha in self.model_files},
            },
            "vllmArgs": list(self.vllm_args),
            "tensorParallelSize": self.tensor_parallel_size,
        }
        if self.gpu is not None:  # absent rather than null: a manifest without GPUs keeps its bytes
            doc["gpu"] = self.gpu.as_dict()
        return doc

    def canonical_bytes(self) -> bytes:
        # sort_keys makes the file map order-independent; ensure_ascii keeps the bytes one encoding.
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    def digest(self) -> bytes:
        return hashlib.sha384(self.canonical_bytes()).digest()


def _type_name(value: Any) -> str:
    return type(value).__name__


def _require_str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InputError(f"{key} as a string", f"{_type_name(value)} {value!r}"[:120])
    return value


def _check_path(key: str, path: object) -> str:
    path = _require_str(key, path)
    parts = PurePosixPath(path).parts
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or any(p in ("..", ".") for p in path.split("/"))
        or "" in path.split("/")
        or not parts
    ):
        # The agent joins this under the model directory: anything that could leave it, or that
        # names the same file two ways, is refused.
        raise InputError(
            f"{key} as a relative path inside the model directory (no '..', '.', empty or absolute parts)", repr(path)
        )
    return path


def manifest_from_mapping(doc: Mapping[str, Any]) -> WorkloadManifest:
    """Parse and validate the `as_dict()` shape. Every error names the key, what was expected, what was seen."""
    if not isinstance(doc, Mapping):
        raise InputError("workload as a mapping", _type_name(doc))
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise InputError(f"workload keys among {sorted(_TOP_KEYS)}", f"unknown key {unknown[0]!r}")
    for key in ("image", "model", "vllmArgs", "tensorParallelSize"):
        if key not in doc:
            raise InputError(f"workload.{key}", "the key missing")
    schema = doc.get("schema", SCHEMA)
    if schema != SCHEMA or isinstance(schema, bool):
        raise InputError(f"workload.schema {SCHEMA}", repr(schema))

    image = _require_str("workload.image", doc["image"])
    if not IMAGE_BY_DIGEST.fullmatch(image):
        raise InputError(
            "workload.image by digest: <repository>@sha256:<64 lowercase hex> (a tag can move; "
            "pin with `podman inspect --format '{{.Digest}}'`)",
            repr(image),
        )

    model = doc["model"]
    if not isinstance(model, Mapping):
        raise InputError("workload.model as a mapping", _type_name(model))
    unknown = sorted(set(model) - _MODEL_KEYS)
    if unknown:
        raise InputError(f"workload.model keys among {sorted(_MODEL_KEYS)}", f"unknown key {unknown[0]!r}")
    for key in sorted(_MODEL_KEYS):
        if key not in model:
            raise InputError(f"workload.model.{key}", "the key missing")
    model_id = _require_str("workload.model.id", model["id"])
    if not _MODEL_ID.fullmatch(model_id):
        raise InputError("workload.model.id like 'org/name'", repr(model_id))
    revision = _require_str("workload.model.revision", model["revision"])
    if not _REVISION.fullmatch(revision):
        raise InputError(
            "workload.model.revision as a commit id (40 lowercase hex; a branch name can move)", repr(revision)
        )
    files = model["files"]
    if not isinstance(files, Mapping) or not files:
        raise InputError(
            "workload.model.files as a non-empty mapping of relative path to sha256",
            repr(files)[:120] if isinstance(files, Mapping) else _type_name(files),
        )
    pairs = []
    for path, sha in files.items():
        _check_path(f"workload.model.files path {path!r}", path)
        sha = _require_str(f"workload.model.files[{path!r}]", sha)
        if not _SHA256.fullmatch(sha):
            raise InputError(f"workload.model.files[{path!r}] as sha256 (64 lowercase hex)", repr(sha))
        pairs.append((path, sha))

    args = doc["vllmArgs"]
    if not isinstance(args, (list, tuple)) or not all(isinstance(a, str) for a in args):
        raise InputError("workload.vllmArgs as a list of strings", repr(args)[:120])

    tp = doc["tensorParallelSize"]
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise InputError("workload.tensorParallelSize as an integer >= 1 (the TD's GPU count)", repr(tp))

    return WorkloadManifest(
        image=image,
        model_id=model_id,
        model_revision=revision,
        model_files=tuple(sorted(pairs)),
        vllm_args=tuple(args),
        tensor_parallel_size=tp,
        gpu=gpu_pins_from_mapping(doc["gpu"]) if "gpu" in doc else None,
    )


def rtmr3_events(manifest: WorkloadManifest) -> list[dict[str, Any]]:
    return [{"rtmr": RTMR_INDEX, "event": WORKLOAD_EVENT, "digest": manifest.digest().hex()}]


def replay_rtmr3(events: list[dict[str, Any]]) -> bytes:
    """RTMR3 after extending 48 zero bytes with each event's digest, in order."""
    digests = []
    for i, ev in enumerate(events):
        if not isinstance(ev, Mapping):
            raise InputError(f"event {i} as a mapping", _type_name(ev))
        if ev.get("rtmr") != RTMR_INDEX:
            raise InputError(f"event {i}.rtmr == {RTMR_INDEX}", repr(ev.get("rtmr")))
        digest = ev.get("digest")
        if not isinstance(digest, str) or not _DIGEST48.fullmatch(digest):
            raise InputError(f"event {i}.digest as SHA-384 (96 lowercase hex)", repr(digest)[:120])
        digests.append(bytes.fromhex(digest))
    return rtmr.replay(digests)


def expected_rtmr3(manifest: WorkloadManifest) -> bytes:
    return replay_rtmr3(rtmr3_events(manifest))


def image_digest(image: str) -> str:
    """`sha256:<hex>` of an image reference by digest (`repo@sha256:<hex>`)."""
    return image.rsplit("@", 1)[1]


def model_sha256(manifest: WorkloadManifest) -> str:
    """`pins.modelSha256`: SHA-256 of the model's file list in `sha256sum` format, sorted by path
    (`<sha256>  <path>\\n` per file). Reproduce it in a snapshot directory with
    `sha256sum $(printf '%s\\n' FILES | LC_ALL=C sort) | sha256sum`."""
    text = "".join(f"{sha}  {path}\n" for path, sha in sorted(manifest.model_files))
    return hashlib.sha256(text.encode()).hexdigest()


# vLLM arguments no deployment of a manifest may carry (one list for the stack config, the guest
# agent and the Kubernetes target):
# - offload to CPU memory: it pins host memory with cudaHostRegister, which CC mode refuses (vllm
#   #55428), and every GPU<->CPU transfer would go through encrypted bounce buffers anyway;
# - what the deployment sets itself: the model is the verified in-TD copy, vLLM listens on loopback
#   behind the attested gateway, and the tensor-parallel size is the TD's GPU count.
CPU_OFFLOAD_VLLM_FLAGS = (
    "--cpu-offload-gb",
    "--swap-space",
    "--kv-offloading-size",
    "--kv-offloading-backend",
    "--kv-transfer-config",
    "--offload-backend",
)
DEPLOYMENT_OWNED_VLLM_FLAGS = (
    "--model",
    "--served-model-name",
    "--host",
    "--port",
    "--tensor-parallel-size",
    "-tp",
    "--uds",
    "--download-dir",
    "--revision",
    "--tokenizer",
)


# `--config FILE` reads more arguments from a file the manifest does not measure.
FILE_ARGS_VLLM_FLAGS = ("--config",)

# Options that make vLLM serve weights other than the measured model files, in every stack (the
# dev stack's way to run without weights is the stand-in server, `workload.server: standin`):
# - `--lora-modules`: adapters loaded from paths the manifest does not list;
# - `--speculative-config` (and the older `--speculative-model`): a draft model from elsewhere.
# `--load-format` is allowed only with the formats that read the measured files as they are.
OTHER_WEIGHTS_VLLM_FLAGS = ("--lora-modules", "--speculative-config", "--speculative-model")
LOAD_FORMATS_ALLOWED = ("auto", "safetensors")


def vllm_flag_name(arg: str) -> str:
    """The option `arg` names as vLLM's parser reads it: `--a_b=1` and `--a-b.key v` are `--a-b`
    (underscores become dashes, a dotted suffix sets one key of a JSON option). Other strings as they are."""
    if not arg.startswith("--"):
        return arg.split("=", 1)[0]
    return "--" + arg[2:].split("=", 1)[0].split(".", 1)[0].replace("_", "-")


def _names(flag: str, flags: tuple[str, ...]) -> bool:
    # argparse also takes an unambiguous prefix of a long option (`--served` for --served-model-name)
    return flag in flags or (flag.startswith("--") and len(flag) > 2 and any(f.startswith(flag) for f in flags))


def refused_vllm_args(args: Sequence[str]) -> list[tuple[int, str]]:
    """(index, why) of every argument of a manifest's vLLM arguments that may not be there: each
    one on its own (`refused_vllm_arg`), a positional argument (vLLM's positional is the model,
    which the deployment gives: another one would change what is served), and a `--load-format`
    value that reads something other than the measured files."""
    out: list[tuple[int, str]] = []
    for i, arg in enumerate(args):
        reason = refused_vllm_arg(arg)
        if reason is not None:
            out.append((i, reason))
            continue
        previous = args[i - 1] if i > 0 else ""
        takes_value = previous.startswith("-") and "=" not in previous
        if not arg.startswith("-") and not takes_value:
            out.append(
                (i, f"`{arg}` is a positional argument: vLLM's positional is the model, which the deployment gives")
            )
        elif takes_value and vllm_flag_name(previous) == "--load-format" and arg not in LOAD_FORMATS_ALLOWED:
            out.append((i, _load_format_reason(arg)))
    return out


def _load_format_reason(value: str) -> str:
    return (
        f"`--load-format {value}` does not load the measured model files as they are (`dummy` serves random "
        f"weights); use {' or '.join(LOAD_FORMATS_ALLOWED)}"
    )


def refused_vllm_arg(arg: str) -> str | None:
    """Why `arg` may not be among a manifest's vLLM arguments, or None when it may."""
    flag = vllm_flag_name(arg)
    if _names(flag, OTHER_WEIGHTS_VLLM_FLAGS):
        return f"`{flag}` makes vLLM serve weights the workload manifest does not measure"
    if flag == "--load-format" and "=" in arg and arg.split("=", 1)[1] not in LOAD_FORMATS_ALLOWED:
        return _load_format_reason(arg.split("=", 1)[1])
    if _names(flag, FILE_ARGS_VLLM_FLAGS):
        return (
            f"`{flag}` reads vLLM arguments from a file the workload manifest does not measure; list them in vllmArgs"
        )
    if _names(flag, CPU_OFFLOAD_VLLM_FLAGS):
        return (
            f"`{flag}` offloads to CPU memory: cudaHostRegister fails in CC mode (vllm #55428) and every "
            "GPU<->CPU transfer goes through encrypted bounce buffers"
        )
    if _names(flag, DEPLOYMENT_OWNED_VLLM_FLAGS):
        return (
            f"`{flag}` is set by the deployment (the model is the verified in-TD copy, vLLM listens on "
            "loopback behind the attested gateway, the tensor-parallel size is the TD's GPU count)"
        )
    return None
