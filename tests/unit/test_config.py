"""Stack config validation: every rule, every error reported at once, with key path and fix."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.config import (ENCRYPTED, ConfigErrors, Secret, host_key_problem, load_stack_file, parse_stack,
                               read_stack_file, secret_paths_of)

REPO = Path(__file__).resolve().parents[2]
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXLqEeM0oWyVAeZNUo7cAvhyTrMwvucBKo1IuFNITMJ"
FPR = "3f1a9c5e007b2d4491c60e8ab35712f06d29ce814ab5700ce913662fd8a45b07"


def good() -> dict:
    return {
        "platform": {"os": "ubuntu-26.04", "extraKernelArgs": ["modprobe.blacklist=nouveau"], "tdxModule": "1.5.34"},
        "gpu": {"model": "h100-sxm", "count": 1, "mode": "on"},
        "dcap": {"pccsApiKey": ENCRYPTED, "registration": "mpa"},
        "hosts": [
            {"name": "gpu-a", "ssh": {"address": "192.0.2.10", "hostKey": HOST_KEY, "privateKey": ENCRYPTED},
             "bmc": {"endpoint": "https://192.0.2.110", "vendor": "dell", "username": ENCRYPTED,
                     "password": ENCRYPTED, "tlsFingerprint": FPR}},
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
    with pytest.raises(Exception):
        cfg.hosts[0].name = "x"  # type: ignore[misc]


def test_every_error_is_reported_at_once_with_path_and_fix():
    raw = good()
    raw["hosts"][0]["ssh"]["privateKey"] = "-----BEGIN OPENSSH PRIVATE KEY-----"   # plain-text secret
    del raw["hosts"][1]["ssh"]["hostKey"]                                          # missing pin
    raw["hosts"][1]["name"] = "gpu-a"                                              # duplicate
    raw["gpu"]["mode"] = "devtools"                                                # outside dev
    raw["hosts"][0]["bmc"]["vendor"] = "hpe"                                       # unknown vendor
    raw["hosts"][0]["bmc"]["endpoint"] = "https://bad host"                        # malformed URL
    raw["hosts"][0]["ssh"]["address"] = "300.1.2.3.4."                             # malformed address
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


@pytest.mark.parametrize("path,value,needle", [
    (("hosts", 0, "bmc", "password"), "hunter2", "hosts[0].bmc.password: given in plain text"),
    (("hosts", 0, "bmc", "username"), "root", "hosts[0].bmc.username: given in plain text"),
    (("dcap", "pccsApiKey"), "0123456789abcdef", "dcap.pccsApiKey: given in plain text"),
])
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
    errs = "\n".join(str(e) for e in pytest.raises(ConfigErrors, parse_stack, decrypted, "staging",
                                                     secret_paths=secrets - {"dcap.pccsApiKey"}).value.errors)
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


@pytest.mark.parametrize("mutate,needle", [
    (lambda r: r["hosts"][0]["ssh"].__setitem__("hostKey", "ssh-ed25519 notbase64!!"), "hostKey: the key data is not valid base64"),
    (lambda r: r["hosts"][0]["ssh"].__setitem__("hostKey", "ssh-dss AAAA"), "hostKey: unknown key type `ssh-dss`"),
    (lambda r: r["hosts"][0]["ssh"].__setitem__("port", 70000), "hosts[0].ssh.port: expected an integer in 1..65535"),
    (lambda r: r["hosts"][0]["bmc"].__setitem__("endpoint", "http://192.0.2.110"), "scheme must be https"),
    (lambda r: r["hosts"][0]["bmc"].__setitem__("tlsFingerprint", "abc"), "tlsFingerprint: expected a SHA-256 fingerprint"),
    (lambda r: r["hosts"][0]["bmc"].pop("tlsFingerprint"), "hosts[0].bmc: the BMC's TLS certificate is not pinned"),
    (lambda r: r["hosts"][0]["bmc"].__setitem__("system", "1"), "hosts[0].bmc.system: `1` is not a Redfish system path"),
    (lambda r: r["gpu"].__setitem__("model", "h100-sxn"), "gpu.model: `h100-sxn` is not one of"),
    (lambda r: r["gpu"].update(mode="ppcie", count=4), "gpu.count: PPCIe needs all 8 Hopper GPUs"),
    (lambda r: r["platform"].__setitem__("tdxModule", "9.9.9"), "platform.tdxModule: `9.9.9` is not a pinned TDX module"),
    (lambda r: r["platform"].__setitem__("extraKernelArgs", ["kvm_intel.tdx=0"]), "would turn TDX off"),
    (lambda r: r["platform"].__setitem__("extraKernelArgs", ["a b"]), "is not a single kernel argument"),
    (lambda r: r["dcap"].__setitem__("registration", "manual"), "dcap.registration: `manual` is not one of mpa, pckid, none"),
    (lambda r: r["dcap"].update(useSecureCert=False, pccsUrl="https://pccs.example.net:8081/sgx/certification/v4/"),
     "dcap.useSecureCert: TLS verification of the shared PCCS"),
    (lambda r: r["dcap"].__setitem__("pccsUrl", "ftp://x"), "dcap.pccsUrl: scheme must be https"),
    (lambda r: r["hosts"][0].__setitem__("name", "GPU_A"), "hosts[0].name: `GPU_A` is not a valid host name"),
    (lambda r: r.__setitem__("hosts", []), "hosts: required: at least one host"),
    (lambda r: r.pop("dcap"), "dcap: required"),
    (lambda r: r.__setitem__("teeIo", "yes"), "teeIo: expected true or false"),
    (lambda r: r.__setitem__("restoreOnDestroy", 1), "restoreOnDestroy: expected true or false"),
])
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
    ok = subprocess.run([sys.executable, "-m", "components.config", "stacks/Pulumi.dev.yaml"], cwd=REPO,
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "valid" in ok.stdout
    bad = tmp_path / "Pulumi.prod.yaml"
    # The dev example with its GPUs in devtools mode, used as prod: refused.
    text = (REPO / "stacks" / "Pulumi.dev.yaml").read_text().replace('mode: "on"', "mode: devtools")
    bad.write_text(text)
    res = subprocess.run([sys.executable, "-m", "components.config", str(bad)], cwd=REPO, capture_output=True, text=True)
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
        with pytest.raises(Exception):
            cfg.promotion.from_stack = "x"  # frozen


@pytest.mark.parametrize("value, needle", [
    ({"fromStack": "organization/staging"}, "promotion.fromStack: `organization/staging` is not a stack reference"),
    ({"fromStack": "a/b/c/d"}, "promotion.fromStack: `a/b/c/d` is not a stack reference"),
    ({"fromStack": "organization/tdx vllm/staging"}, "is not a stack reference; fix: set `fromStack: organization/"),
    ({"fromStack": ""}, "promotion.fromStack: expected a non-empty string"),
    ({}, "promotion.fromStack: required; fix: set `fromStack: organization/tdx-vllm/staging`"),
    ({"fromStak": "staging"}, "promotion.fromStak: unknown key; fix: remove it or rename it (did you mean `fromStack`?)"),
    ("staging", "promotion: expected a mapping, got a string"),
    ({"fromStack": "prod"}, "promotion.fromStack: `prod` is this stack (`prod`): a stack cannot promote from itself"),
    ({"fromStack": "organization/tdx-vllm/prod"}, "a stack cannot promote from itself"),
])
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
    assert any(e.startswith("promotion.fromStack:") for e in errors) and any(e.startswith("hosts[0].name:") for e in errors)


def test_shipped_prod_stack_promotes_from_staging():
    cfg = load_stack_file(REPO / "stacks" / "Pulumi.prod.yaml")
    assert cfg.promotion is not None and cfg.promotion.from_stack == "organization/tdx-vllm/staging"
