"""The policy pack's rules (policy/validators.py) against hand-built properties, without starting
the pack (PolicyPack blocks serving at construction; policy/__main__.py is never imported here)."""

from __future__ import annotations

import pytest

pytest.importorskip("pulumi_policy")

from pulumi_policy import EnforcementLevel, ResourceValidationPolicy, Secret, StackValidationPolicy
from pulumi_policy.deserialize import deserialize_properties
from pulumi_policy.proxy import unknown_checking_proxy

from components.render.host_steps import GPU_STEP
from components.render.steps import render
from policy import validators as V

RC, LC = V.REMOTE_COMMAND, V.LOCAL_COMMAND
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG0O8eKjk+Eb5AtmKKsSv//f+M2wjuXqWH5+HbC1h9NS"
DIGEST = "sha256:" + "0123456789abcdef" * 4
SIG, SECRET_SIG = "4dabf18193072939515e22adb298388d", "1b47061264138c4ac30d75fd1eb44270"
UNKNOWN_STRING = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"


def gpu_stdin(mode: str) -> str:
    return render(GPU_STEP, {"TDX_GPU_MODE": mode, "TDX_GPU_COUNT": "1"}).stdin


# --- helpers --------------------------------------------------------------------------------------


def test_stack_of_urn() -> None:
    assert V.stack_of("urn:pulumi:prod::tdx-vllm::command:remote:Command::gpu-a-mode") == "prod"
    assert V.stack_of("urn:pulumi:dev::p::tdx-vllm:host:TdxHost$command:remote:Command::x") == "dev"
    with pytest.raises(ValueError):
        V.stack_of("prod::x")


# --- 1. GPU devtools ------------------------------------------------------------------------------


def test_rendered_devtools_step_outside_dev_is_refused() -> None:
    msgs = V.gpu_devtools_violations(RC, {"stdin": gpu_stdin("devtools")}, "prod")
    assert len(msgs) == 1 and "TDX_GPU_MODE=devtools in stack `prod`" in msgs[0]


@pytest.mark.parametrize(
    "line",
    [
        "TDX_GPU_MODE='devtools'",
        'TDX_GPU_MODE="devtools"',
        "export TDX_GPU_MODE=devtools",
        "TDX_GPU_MODE=devtools # comment",
    ],
)
def test_devtools_in_any_shell_spelling(line: str) -> None:
    assert V.gpu_devtools_violations(RC, {"stdin": f"#!/bin/bash\n{line}\nmain\n"}, "staging")


def test_devtools_in_dev_and_other_modes_pass() -> None:
    assert V.gpu_devtools_violations(RC, {"stdin": gpu_stdin("devtools")}, "dev") == []
    for mode in ("on", "ppcie"):
        assert V.gpu_devtools_violations(RC, {"stdin": gpu_stdin(mode)}, "prod") == []
    # only remote commands' step scripts; unknown or secret stdin
    assert V.gpu_devtools_violations(LC, {"stdin": gpu_stdin("devtools")}, "prod") == []
    assert V.gpu_devtools_violations(RC, {"stdin": V.UNKNOWN}, "prod") == []
    assert V.gpu_devtools_violations(RC, {}, "prod") == []
    assert V.gpu_devtools_violations(RC, {"stdin": Secret(gpu_stdin("devtools"))}, "prod")
    assert V.gpu_devtools_violations(RC, {"stdin": "echo TDX_GPU_MODE=devtools\n"}, "prod") == []


# --- 2. TD DEBUG ----------------------------------------------------------------------------------


def test_td_attributes_debug_bit_refused() -> None:
    msgs = V.td_debug_violations("pulumi:pulumi:Stack", {"pins": {"tdAttributes": "0100001000000000"}})
    assert len(msgs) == 1 and msgs[0].startswith("pins.tdAttributes = 0100001000000000 has DEBUG")
    # a future TD resource's `attributes` with TD_ATTRIBUTES shape
    assert V.td_debug_violations("tdx:td:TrustDomain", {"td": {"attributes": "0100001000000000"}})
    assert V.td_debug_violations("x", {"tds": [{"tdAttributes": Secret("0100000000000000")}]})


def test_td_attributes_without_debug_pass() -> None:
    assert V.td_debug_violations("pulumi:pulumi:Stack", {"pins": {"tdAttributes": "0000001000000000"}}) == []
    # bit 0 is the first byte's low bit (little-endian bytes as in the quote), not the last hex digit
    assert V.td_debug_violations("x", {"tdAttributes": "0000000000000001"}) == []
    assert V.td_debug_violations("x", {"tdAttributes": V.UNKNOWN}) == []
    # `attributes` of another shape belongs to some other resource
    assert V.td_debug_violations("x", {"attributes": {"env": "prod"}}) == []
    assert V.td_debug_violations("x", {"attributes": "0100"}) == []


def test_unreadable_td_attributes_refused() -> None:
    msgs = V.td_debug_violations("x", {"tdAttributes": "debug-off"})
    assert msgs and "cannot check DEBUG" in msgs[0]


# --- 3. images by digest --------------------------------------------------------------------------


def test_images_by_tag_refused_at_any_depth() -> None:
    props = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.9.0"}],
                    "initContainers": [{"name": "init", "image": "busybox"}],
                }
            }
        }
    }
    msgs = V.image_digest_violations("kubernetes:apps/v1:Deployment", props)
    assert len(msgs) == 2
    assert msgs[0].startswith("spec.template.spec.containers[0].image = 'vllm/vllm-openai:v0.9.0'")
    assert "initContainers[0].image" in msgs[1]


@pytest.mark.parametrize(
    "image",
    [
        f"vllm/vllm-openai@sha256:{'A' * 64}",
        "vllm@sha256:abc",
        f"vllm@sha512:{'a' * 64}",
        f"@{DIGEST}",
        f"a b@{DIGEST}",
    ],
)
def test_malformed_digests_refused(image: str) -> None:
    assert V.image_digest_violations("x", {"image": image})


def test_images_by_digest_pass() -> None:
    for image in (f"vllm/vllm-openai@{DIGEST}", f"nvcr.io/nvidia/vllm:24.10@{DIGEST}"):
        assert V.image_digest_violations("kubernetes:core/v1:Pod", {"spec": {"containers": [{"image": image}]}}) == []
    assert V.image_digest_violations("x", {"image": V.UNKNOWN}) == []
    assert V.image_digest_violations("x", {"imageName": "nginx:latest"}) == []


# --- 4. host keys pinned --------------------------------------------------------------------------


def test_missing_or_empty_host_key_refused() -> None:
    for conn in ({"host": "192.0.2.1"}, {"host": "192.0.2.1", "hostKey": ""}, {"host": "h", "hostKey": "  "}):
        msgs = V.host_key_violations(RC, {"connection": conn})
        assert len(msgs) == 1 and msgs[0].startswith("connection.hostKey is not set")
    assert V.host_key_violations("command:remote:CopyToRemote", {"connection": {"host": "h"}})
    assert V.host_key_violations(RC, {}) == ["connection is missing: cannot pin the host key"]
    msgs = V.host_key_violations(RC, {"connection": {"hostKey": KEY, "proxy": {"host": "bastion"}}})
    assert len(msgs) == 1 and msgs[0].startswith("connection.proxy.hostKey")


def test_pinned_host_keys_pass() -> None:
    assert V.host_key_violations(RC, {"connection": {"host": "h", "hostKey": KEY}}) == []
    assert V.host_key_violations(RC, {"connection": Secret({"host": "h", "hostKey": KEY})}) == []
    assert V.host_key_violations(RC, {"connection": {"hostKey": KEY, "proxy": {"hostKey": KEY}}}) == []
    assert V.host_key_violations(RC, {"connection": V.UNKNOWN}) == []
    assert V.host_key_violations(LC, {}) == []


# --- 5. secrets never plain -----------------------------------------------------------------------


def test_plain_credentials_refused() -> None:
    msgs = V.plain_secret_violations(
        RC, {"connection": {"host": "h", "hostKey": KEY, "privateKey": "-----BEGIN", "password": "pw"}}
    )
    assert [m.split(" ")[0] for m in msgs] == ["connection.privateKey", "connection.password"]
    msgs = V.plain_secret_violations(
        LC,
        {
            "environment": {
                "TDXGPU_BMC_PASSWORD": "pw",
                "TDXGPU_BMC_USERNAME": "root",
                "TDXGPU_BMC_ADDRESS": "192.0.2.20",
            }
        },
    )
    # the user name is plain config by design (docs/decisions.md, Config); the password is a credential
    assert [m.split(" ")[0] for m in msgs] == ["environment.TDXGPU_BMC_PASSWORD"]
    msgs = V.plain_secret_violations(RC, {"stdin": "TDX_STEP=dcap\nTDX_PCCS_API_KEY='k-123'\n"})
    assert len(msgs) == 1 and "TDX_PCCS_API_KEY" in msgs[0]
    for msg in V.plain_secret_violations(LC, {"environment": {"API_TOKEN": "tok-value-9"}}):
        assert "tok-value-9" not in msg  # the message never carries the value


def test_secret_credentials_pass() -> None:
    assert V.plain_secret_violations(RC, {"connection": Secret({"privateKey": "k", "password": "p"})}) == []
    assert V.plain_secret_violations(RC, {"connection": {"hostKey": KEY, "privateKey": Secret("k")}}) == []
    assert V.plain_secret_violations(LC, {"environment": {"TDXGPU_BMC_PASSWORD": Secret("pw"), "X": "plain"}}) == []
    assert V.plain_secret_violations(LC, {"environment": Secret({"TDXGPU_BMC_PASSWORD": "pw"})}) == []
    assert V.plain_secret_violations(RC, {"stdin": Secret("TDX_PCCS_API_KEY=k\n")}) == []
    assert V.plain_secret_violations(RC, {"stdin": "TDX_PCCS_API_KEY=\n"}) == []  # empty: nothing to hide
    assert V.plain_secret_violations(RC, {"stdin": gpu_stdin("on")}) == []
    assert V.plain_secret_violations(LC, {"environment": {"TDXGPU_BMC_PASSWORD": V.UNKNOWN}}) == []


# --- adapters -------------------------------------------------------------------------------------


def _wire(props: dict) -> dict:
    """`props` as the engine sends them: secrets as signature objects."""

    def enc(v):
        if isinstance(v, Secret):
            return {SIG: SECRET_SIG, "value": enc(v.value)}
        if isinstance(v, dict):
            return {k: enc(x) for k, x in v.items()}
        if isinstance(v, list):
            return [enc(x) for x in v]
        return v

    return enc(props)


def test_plain_props_through_the_sdk_proxies() -> None:
    props = {
        "connection": Secret({"privateKey": "k", "hostKey": KEY}),
        "environment": {"TDXGPU_BMC_PASSWORD": Secret("pw"), "X": "plain"},
        "stdout": UNKNOWN_STRING,
        "list": [Secret("a"), "b"],
    }
    # the validate path: secrets unwrapped, unknowns checked
    validate_view = V.plain_props(unknown_checking_proxy(deserialize_properties(_wire(props))))
    assert validate_view == {
        "connection": {"privateKey": "k", "hostKey": KEY},
        "environment": {"TDXGPU_BMC_PASSWORD": "pw", "X": "plain"},
        "stdout": V.UNKNOWN,
        "list": ["a", "b"],
    }
    # the remediation path: secret-preserving proxies; plain_props keeps secretness
    remediate_view = V.plain_props(
        unknown_checking_proxy(deserialize_properties(_wire(props), True)), keep_secrets=True
    )
    assert isinstance(remediate_view["connection"], Secret)
    assert remediate_view["connection"].value == {"privateKey": "k", "hostKey": KEY}
    assert isinstance(remediate_view["environment"]["TDXGPU_BMC_PASSWORD"], Secret)
    assert remediate_view["environment"]["X"] == "plain" and remediate_view["stdout"] is V.UNKNOWN
    assert V.plain_secret_violations(LC, remediate_view) == []
    plain = V.plain_props(
        deserialize_properties(_wire({"environment": {"TDXGPU_BMC_PASSWORD": "pw"}}), True), keep_secrets=True
    )
    assert V.plain_secret_violations(LC, plain)


def test_policies_and_enforcement_levels() -> None:
    pols = V.policies()
    names = [p.name for p in pols]
    assert names == [
        "no-gpu-devtools-outside-dev",
        "no-debug-td",
        "no-debug-td-outputs",
        "images-by-digest",
        "host-keys-pinned",
        "secrets-never-plain",
    ]
    for p in pols:
        assert isinstance(p, (ResourceValidationPolicy, StackValidationPolicy))
        # secrets-never-plain sees secretness only in the remediation path; its validate findings
        # are reported as mandatory by the SDK
        expected = EnforcementLevel.REMEDIATE if p.name == "secrets-never-plain" else EnforcementLevel.MANDATORY
        assert p.enforcement_level == expected, p.name
