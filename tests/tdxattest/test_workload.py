"""The workload manifest: canonical bytes, digest, RTMR3 replay, and every validation refusal."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest

from tdxattest.core.errors import InputError
from tdxattest.core.workload import (
    WORKLOAD_EVENT,
    GpuPins,
    WorkloadManifest,
    expected_rtmr3,
    gpu_pins,
    manifest_from_mapping,
    refused_vllm_arg,
    replay_rtmr3,
    rtmr3_events,
)

IMAGE = "docker.io/vllm/vllm-openai@sha256:" + "ab" * 32
REV = "0123456789abcdef0123456789abcdef01234567"
SHA_A = "aa" * 32
SHA_B = "bb" * 32


def doc() -> dict:
    return {
        "image": IMAGE,
        "model": {
            "id": "Qwen/Qwen2.5-0.5B-Instruct",
            "revision": REV,
            "files": {"model.safetensors": SHA_A, "config.json": SHA_B},
        },
        "vllmArgs": ["--max-model-len", "4096"],
        "tensorParallelSize": 1,
    }


def test_round_trip_and_canonical_form():
    m = manifest_from_mapping(doc())
    assert m.model_files == (("config.json", SHA_B), ("model.safetensors", SHA_A))
    assert m.as_dict() == {**doc(), "schema": 1}
    assert manifest_from_mapping(m.as_dict()) == m
    # The exact bytes are a contract with verifiers elsewhere: pin them.
    expected = json.dumps(
        {
            "schema": 1,
            "image": IMAGE,
            "model": {
                "id": "Qwen/Qwen2.5-0.5B-Instruct",
                "revision": REV,
                "files": {"config.json": SHA_B, "model.safetensors": SHA_A},
            },
            "vllmArgs": ["--max-model-len", "4096"],
            "tensorParallelSize": 1,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode()
    assert m.canonical_bytes() == expected
    assert m.canonical_bytes().startswith(b'{"image":"docker.io/vllm/vllm-openai@sha256:abab')
    assert b" " not in m.canonical_bytes()
    assert m.digest() == hashlib.sha384(expected).digest() and len(m.digest()) == 48


def test_canonical_form_is_independent_of_file_order():
    a = doc()
    b = doc()
    b["model"]["files"] = dict(reversed(list(b["model"]["files"].items())))
    assert list(a["model"]["files"]) != list(b["model"]["files"])
    assert manifest_from_mapping(a).canonical_bytes() == manifest_from_mapping(b).canonical_bytes()
    # Constructing directly with unsorted pairs gives the same bytes too.
    m = manifest_from_mapping(a)
    swapped = WorkloadManifest(
        m.image, m.model_id, m.model_revision, tuple(reversed(m.model_files)), m.vllm_args, m.tensor_parallel_size
    )
    assert swapped.canonical_bytes() == m.canonical_bytes()


def test_everything_that_matters_changes_the_digest():
    base = manifest_from_mapping(doc()).digest()
    variants = []
    for mutate in (
        lambda d: d.update(image=IMAGE[:-1] + "c"),
        lambda d: d["model"].update(revision=REV[:-1] + "8"),
        lambda d: d["model"]["files"].update({"config.json": "cc" * 32}),
        lambda d: d["model"]["files"].update({"extra.json": SHA_A}),
        lambda d: d.update(vllmArgs=["--max-model-len", "8192"]),
        lambda d: d.update(vllmArgs=["4096", "--max-model-len"]),  # argument order matters
        lambda d: d.update(tensorParallelSize=2),
        lambda d: d["model"].update(id="Qwen/Qwen2.5-1.5B-Instruct"),
    ):
        d = doc()
        mutate(d)
        variants.append(manifest_from_mapping(d).digest())
    assert base not in variants and len(set(variants)) == len(variants)


def test_events_and_replay():
    m = manifest_from_mapping(doc())
    events = rtmr3_events(m)
    assert events == [{"rtmr": 3, "event": WORKLOAD_EVENT, "digest": m.digest().hex()}]
    assert WORKLOAD_EVENT == "tdx-vllm/workload-manifest/v1"
    want = hashlib.sha384(bytes(48) + m.digest()).digest()
    assert expected_rtmr3(m) == want == replay_rtmr3(events)
    assert replay_rtmr3([]) == bytes(48)
    two = events + [{"rtmr": 3, "event": "other", "digest": "11" * 48}]
    assert replay_rtmr3(two) == hashlib.sha384(want + bytes.fromhex("11" * 48)).digest()
    # The events survive a JSON-lines round trip (that is how the agent stores them).
    assert replay_rtmr3([json.loads(json.dumps(e)) for e in events]) == want


@pytest.mark.parametrize(
    "events, key",
    [
        ([{"rtmr": 2, "digest": "00" * 48}], "event 0.rtmr"),
        ([{"rtmr": 3, "digest": "00" * 32}], "event 0.digest"),
        ([{"rtmr": 3, "digest": "ZZ" * 48}], "event 0.digest"),
        ([{"rtmr": 3}], "event 0.digest"),
        (["nope"], "event 0 as a mapping"),
    ],
)
def test_replay_refuses_malformed_events(events, key):
    with pytest.raises(InputError) as err:
        replay_rtmr3(events)
    assert key in str(err.value)


def _set(path: str, value):
    def mutate(d: dict):
        target = d
        keys = path.split(".")
        for k in keys[:-1]:
            target = target[k]
        if value is _DELETE:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value

    return mutate


_DELETE = object()


@pytest.mark.parametrize(
    "mutate, expected, seen",
    [
        (_set("image", "docker.io/vllm/vllm-openai:v0.10.1"), "workload.image by digest", "v0.10.1"),
        (_set("image", "vllm@sha256:" + "AB" * 32), "workload.image by digest", "ABAB"),
        (_set("image", "vllm@sha256:" + "ab" * 31), "workload.image by digest", "vllm@sha256"),
        (_set("image", 7), "workload.image as a string", "int"),
        (_set("image", _DELETE), "workload.image", "the key missing"),
        (_set("model.revision", "main"), "workload.model.revision as a commit id", "'main'"),
        (_set("model.revision", REV[:-1]), "workload.model.revision as a commit id", REV[:-1]),
        (_set("model.revision", _DELETE), "workload.model.revision", "the key missing"),
        (_set("model.id", "../etc"), "workload.model.id", "'../etc'"),
        (_set("model.files", {}), "workload.model.files as a non-empty mapping", "{}"),
        (_set("model.files", ["a"]), "workload.model.files as a non-empty mapping", "list"),
        (_set("model.files", {"a.json": "cafe"}), "workload.model.files['a.json'] as sha256", "'cafe'"),
        (_set("model.files", {"a.json": SHA_A.upper()}), "workload.model.files['a.json'] as sha256", SHA_A.upper()),
        (_set("model.files", {"../a.json": SHA_A}), "relative path inside the model directory", "'../a.json'"),
        (_set("model.files", {"sub/../../a": SHA_A}), "relative path inside the model directory", "sub/../../a"),
        (_set("model.files", {"/etc/passwd": SHA_A}), "relative path inside the model directory", "'/etc/passwd'"),
        (_set("model.files", {"a//b": SHA_A}), "relative path inside the model directory", "'a//b'"),
        (_set("model.files", {"./a": SHA_A}), "relative path inside the model directory", "'./a'"),
        (_set("model.extra", 1), "workload.model keys among", "unknown key 'extra'"),
        (_set("model", "Qwen"), "workload.model as a mapping", "str"),
        (_set("vllmArgs", "--enforce-eager"), "workload.vllmArgs as a list of strings", "'--enforce-eager'"),
        (_set("vllmArgs", ["--x", 1]), "workload.vllmArgs as a list of strings", "1"),
        (_set("tensorParallelSize", 0), "workload.tensorParallelSize as an integer >= 1", "0"),
        (_set("tensorParallelSize", "2"), "workload.tensorParallelSize as an integer >= 1", "'2'"),
        (_set("tensorParallelSize", True), "workload.tensorParallelSize as an integer >= 1", "True"),
        (_set("schema", 2), "workload.schema 1", "2"),
        (_set("tag", "latest"), "workload keys among", "unknown key 'tag'"),
    ],
)
def test_validation_errors_name_key_expected_and_seen(mutate, expected, seen):
    d = copy.deepcopy(doc())
    mutate(d)
    with pytest.raises(InputError) as err:
        manifest_from_mapping(d)
    assert expected in err.value.expected, err.value
    assert seen in err.value.seen, err.value


def test_not_a_mapping():
    with pytest.raises(InputError, match="workload as a mapping"):
        manifest_from_mapping(["image"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "arg, flag",
    [
        ("--cpu-offload-gb=4", "--cpu-offload-gb"),
        ("--cpu_offload_gb=4", "--cpu-offload-gb"),  # vLLM's parser turns _ into -
        ("--served_model_name", "--served-model-name"),
        ("--kv-transfer-config.kv_connector=X", "--kv-transfer-config"),  # one key of a JSON option
        ("--served", "--served"),  # argparse takes an unambiguous prefix
        ("-tp", "-tp"),
        ("--config", "--config"),  # more arguments from an unmeasured file
    ],
)
def test_refused_vllm_args_in_every_spelling(arg, flag):
    reason = refused_vllm_arg(arg)
    assert reason is not None and reason.startswith(f"`{flag}`")


@pytest.mark.parametrize(
    "arg",
    [
        "--max-model-len",
        "4096",
        "--tokenizer-mode",
        "--model-impl",
        "--config-format",
        "--compilation-config.level=3",
        "--tokenizer-revision",
        "--enable-prefix-caching",
    ],
)
def test_allowed_vllm_args(arg):
    assert refused_vllm_arg(arg) is None


# ---- GPU pins: measured with the rest, so a host cannot change what the TD checks --------------


def test_gpu_pins_are_measured_and_absent_pins_keep_the_old_bytes():
    plain = manifest_from_mapping(doc())
    assert "gpu" not in plain.as_dict() and plain.gpu is None
    pinned = manifest_from_mapping({**doc(), "gpu": {"vbios": ["96.00.9F.00.01"], "driver": ["570.86.15"]}})
    assert pinned.gpu == GpuPins(vbios=("96.00.9F.00.01",), driver=("570.86.15",))
    assert manifest_from_mapping(pinned.as_dict()) == pinned
    other = manifest_from_mapping({**doc(), "gpu": {"vbios": ["96.00.30.00.01"], "driver": ["570.86.15"]}})
    assert len({expected_rtmr3(plain), expected_rtmr3(pinned), expected_rtmr3(other)}) == 3


def test_gpu_pins_have_one_canonical_form():
    assert gpu_pins(["96.00.a5.00.03", "96.00.9F.00.01", "96.00.9F.00.01"], ["570.86.15"]) == GpuPins(
        vbios=("96.00.9F.00.01", "96.00.A5.00.03"), driver=("570.86.15",)
    )


@pytest.mark.parametrize(
    "gpu,expected",
    [
        ({"vbios": [], "driver": ["570.86.15"]}, "workload.gpu.vbios as a non-empty list"),
        ({"vbios": ["96.00.9F.00.01"], "driver": ["latest"]}, "workload.gpu.driver versions like 570.86.15"),
        ({"vbios": ["96.00.9f.00.01"], "driver": ["570.86.15"]}, "workload.gpu.vbios versions like 96.00.9F.00.01"),
        ({"vbios": ["96.00.A5.00.03", "96.00.9F.00.01"], "driver": ["570.86.15"]}, "sorted, without duplicates"),
        ({"vbios": ["96.00.9F.00.01"], "driver": ["570.86.15"], "cc": "off"}, "unknown key 'cc'"),
        ("on", "workload.gpu as a mapping"),
    ],
)
def test_gpu_pin_errors_name_the_key(gpu, expected):
    with pytest.raises(InputError, match=expected):
        manifest_from_mapping({**doc(), "gpu": gpu})


@pytest.mark.parametrize(
    "args, index, needle",
    [
        (["meta-llama/Other-Model"], 0, "is a positional argument"),  # `vllm serve X Y`: the model
        (["--max-model-len", "4096", "Other/Model"], 2, "is a positional argument"),
        (["--load-format", "dummy"], 1, "`--load-format dummy` does not load the measured model files"),
        (["--load-format=tensorizer"], 0, "`--load-format tensorizer` does not load the measured model files"),
        (["--lora-modules", "sql=/data/sql-lora"], 0, "`--lora-modules` makes vLLM serve weights"),
        (['--speculative-config={"model": "x/draft"}'], 0, "`--speculative-config` makes vLLM serve weights"),
        (["--speculative_config.model", "x/draft"], 0, "`--speculative-config` makes vLLM serve weights"),
    ],
)
def test_vllm_args_that_change_what_is_served_are_refused(args, index, needle) -> None:
    # issue 17: these passed; each serves something other than the measured model files.
    from tdxattest.core.workload import refused_vllm_args

    refused = refused_vllm_args(args)
    assert [i for i, _ in refused] == [index] and needle in refused[0][1], refused


def test_vllm_args_with_values_and_allowed_load_formats_pass() -> None:
    from tdxattest.core.workload import refused_vllm_args

    ok = ["--max-model-len", "4096", "--load-format", "safetensors", "--enforce-eager", "--dtype=bfloat16"]
    assert refused_vllm_args(ok) == []
