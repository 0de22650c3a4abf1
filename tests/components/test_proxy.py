"""`proxy:` (components/config/proxy.py), its rendered step (components/render/proxy.py) and the
VerifyingProxy component in the program under mocks. The step itself runs on a fake host in
tests/harness/test_proxy_host.py; the rollover order under the real engine is in the journey."""

from __future__ import annotations

import copy

import pytest

from components.config.reader import ConfigErrors
from components.config.stack import parse_stack
from components.render.proxy import PROXY_STEP, ProxyInstance, proxy_instances, proxy_params, render_unit
from components.render.steps import render
from tests.support.pulumi_mocks import decrypted
from tests.support.stacks import HOST_KEY, good, workload

SECRETS = {"dcap.pccsApiKey", "hosts[0].ssh.privateKey", "hosts[0].bmc.password", "hosts[1].ssh.privateKey"}
PCCS = "https://pccs.example.net:8081/sgx/certification/v4/"
CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"


def raw_stack(**proxy: object) -> dict:
    raw = decrypted(good())
    raw["workload"] = workload()
    block = {"ssh": {"address": "192.0.2.50", "hostKey": HOST_KEY, "privateKey": "PROXY-KEY"}, "pccsUrl": PCCS}
    raw["proxy"] = {**block, **proxy}
    return raw


def parse(raw: dict, secrets: set[str] = frozenset({"proxy.ssh.privateKey"})):  # type: ignore[assignment]
    return parse_stack(raw, "staging", secret_paths=SECRETS | set(secrets))


def errors(raw: dict, secrets: set[str] = frozenset({"proxy.ssh.privateKey"})) -> list[str]:  # type: ignore[assignment]
    with pytest.raises(ConfigErrors) as info:
        parse(raw, secrets)
    return [f"{e.path}: {e.problem}" for e in info.value.errors]


def flat(unit: str) -> str:
    """The unit with ExecStart='s continuation lines joined, as systemd reads it."""
    return unit.replace(" \\\n    ", " ")


def test_a_proxy_block_with_its_defaults() -> None:
    p = parse(raw_stack()).proxy
    assert p is not None
    assert (p.python, p.listen_host, p.listen_port, p.audit_dir) == (
        "/opt/tdxattest/bin/python",
        "127.0.0.1",
        8080,
        "/var/log/tdx-vllm/proxy",
    )
    assert p.pccs_url == PCCS and p.tls is None and p.ssh.address == "192.0.2.50"


def test_the_proxy_takes_dcap_pccs_url_and_the_fleets_ssh_key() -> None:
    raw = raw_stack()
    del raw["proxy"]["pccsUrl"], raw["proxy"]["ssh"]["privateKey"]
    raw["dcap"].update(pccsUrl=PCCS, useSecureCert=True)
    raw["ssh"] = {"privateKey": "FLEET-KEY"}
    p = parse(raw, {"ssh.privateKey"}).proxy
    assert p is not None and p.pccs_url == PCCS and p.ssh.private_key.value == "FLEET-KEY"


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"listen": "0.0.0.0:8080"}, "proxy.listen: `0.0.0.0` is not a loopback address, and without `tls`"),
        ({"listen": "8080"}, "proxy.listen: `8080` is not HOST:PORT"),
        ({"python": "venv/bin/python"}, "proxy.python: `venv/bin/python` is not an absolute path"),
        ({"pccsUrl": None}, "proxy.pccsUrl: required: the proxy verifies quotes against Intel's collateral"),
        ({"pccsUrl": "https://u:p@pccs.example.net/"}, "proxy.pccsUrl: "),
        ({"tls": {"certificate": "x", "privateKey": "K"}}, "proxy.tls.certificate: is not a PEM certificate"),
        ({"nope": 1}, "proxy.nope: unknown key"),
    ],
)
def test_proxy_config_errors_name_the_key(change: dict, said: str) -> None:
    raw = raw_stack()
    for key, value in change.items():
        if value is None:
            raw["proxy"].pop(key)
        else:
            raw["proxy"][key] = value
    found = errors(raw, {"proxy.ssh.privateKey", "proxy.tls.privateKey"})
    assert any(e.startswith(said) for e in found), found


def test_a_tls_key_in_plain_text_is_refused() -> None:
    found = errors(raw_stack(listen="0.0.0.0:8443", tls={"certificate": CERT, "privateKey": "PLAIN"}))
    assert found == ["proxy.tls.privateKey: given in plain text; secrets must be Pulumi secrets"], found


def test_a_proxy_needs_host_target_tds() -> None:
    raw = raw_stack()
    del raw["workload"]
    assert errors(raw) == ["proxy: a verifying proxy needs the TDs it fronts"]


def test_the_dev_stacks_proxy_takes_the_test_root() -> None:
    raw = raw_stack()
    raw["workload"]["td"]["tdx"] = False
    raw["workload"]["server"] = "standin"
    cfg = parse_stack(raw, "dev", secret_paths=SECRETS | {"proxy.ssh.privateKey"})
    assert cfg.proxy is not None and cfg.proxy.pccs_url is None
    (inst,) = proxy_instances(cfg.proxy, [("gpu-a", "192.0.2.10", 8443)])
    unit = flat(render_unit(cfg.proxy, inst, retiring=False))
    assert "--accept-dev-test-root" in unit and "--pccs" not in unit


def test_one_unit_per_td_on_consecutive_ports_with_or_without_the_retiring_pins() -> None:
    cfg = parse(raw_stack(listen="[::1]:9000"))
    assert cfg.proxy is not None
    a, b = proxy_instances(cfg.proxy, [("gpu-a", "192.0.2.10", 8443), ("gpu-b", "2001:db8::2", 8443)])
    assert (a.upstream, a.listen_port, b.upstream, b.listen_port) == (
        "https://192.0.2.10:8443",
        9000,
        "https://[2001:db8::2]:8443",
        9001,
    )
    current, rolling = flat(render_unit(cfg.proxy, a, retiring=False)), flat(render_unit(cfg.proxy, a, retiring=True))
    assert "--retiring-pins /etc/tdx-vllm/proxy/gpu-a/retiring.json" in rolling and "--retiring-pins" not in current
    assert f"--pccs {PCCS}" in current and "--listen [::1]:9000" in current
    assert "--audit /var/log/tdx-vllm/proxy/gpu-a.jsonl" in current and "--tls-cert" not in current


def test_a_percent_in_a_url_is_not_a_systemd_specifier() -> None:
    cfg = parse(raw_stack(pccsUrl="https://pccs.example.net:8081/sgx/certification/v4/%41/"))
    assert cfg.proxy is not None
    (inst,) = proxy_instances(cfg.proxy, [("gpu-a", "192.0.2.10", 8443)])
    assert "v4/%%41/ " in flat(render_unit(cfg.proxy, inst, retiring=False))


KEY_CHANGES = {
    "ssh": None,  # the connection, not the step's values: the component's Connection
    "python": "/srv/tdxattest/bin/python",
    "listen": "127.0.0.1:9090",
    "auditDir": "/srv/audit",
    "cacheDir": "/srv/cache",
    "pccsUrl": "https://other.example.net/sgx/certification/v4/",
    "tls": {"certificate": CERT, "privateKey": "TLS-KEY"},
}


@pytest.mark.parametrize("key", sorted(k for k, v in KEY_CHANGES.items() if v is not None))
def test_every_proxy_key_reaches_the_rendered_step(key: str) -> None:
    def stdin(raw: dict) -> str:
        cfg = parse(raw, {"proxy.ssh.privateKey", "proxy.tls.privateKey"})
        assert cfg.proxy is not None
        (inst,) = proxy_instances(cfg.proxy, [("gpu-a", "192.0.2.10", 8443)])
        return render(PROXY_STEP, proxy_params(cfg.proxy, inst, {"mrtd": None}, "accept", "0.1.0")).stdin

    changed = copy.deepcopy(raw_stack())
    changed["proxy"][key] = KEY_CHANGES[key]
    assert stdin(changed) != stdin(raw_stack())


def test_the_tls_key_is_a_secret_of_the_step() -> None:
    raw = raw_stack(tls={"certificate": CERT, "privateKey": "TLS-KEY"})
    cfg = parse(raw, {"proxy.ssh.privateKey", "proxy.tls.privateKey"})
    assert cfg.proxy is not None and cfg.proxy.tls is not None
    assert "TLS-KEY" not in repr(cfg.proxy)
    params = proxy_params(cfg.proxy, ProxyInstance("gpu-a", "https://x:1", "127.0.0.1", 8080), {}, "retire", "0.1.0")
    assert params["TDX_PROXY_TLS_KEY"] == "TLS-KEY" and params["TDX_PROXY_PHASE"] == "retire"


def test_the_program_deploys_the_proxy_around_the_tds(tmp_path, monkeypatch) -> None:
    import components.catalog.td_manifest as config_module
    import components.config.stack as stack_module
    from tests.components.test_trust_domain import TdMocks
    from tests.support.pulumi_mocks import RecordingMocks, run_program
    from tests.support.stacks import pinned_firmware_dir

    fw = pinned_firmware_dir(tmp_path)
    monkeypatch.setattr(config_module, "TD_BOOT_MANIFEST_DEV", str(fw / "td" / "ovmf-debian-trixie.yaml"))
    # The dev stack file has no `proxy:`: every leaf under a secret top-level key is a secret here.
    leaves = stack_module._secret_leaves
    monkeypatch.setattr(stack_module, "_secret_leaves", lambda raw, top, _file: leaves(raw, top, fw / "none"))

    class Both(RecordingMocks, TdMocks):
        pass

    mocks = Both()
    raw = raw_stack(tls={"certificate": CERT, "privateKey": "TLS-KEY"}, listen="0.0.0.0:8443")
    _, seen = run_program(mocks, raw, {"hosts", "dcap", "proxy"}, monkeypatch, stack="dev", resolve=("proxies",))
    assert seen["proxies"] == {"gpu-a": "https://0.0.0.0:8443", "gpu-b": "https://0.0.0.0:8444"}
    names = [name for typ, name in mocks.created if typ == "command:remote:Command" and name.startswith("proxy-")]
    assert sorted(names) == [
        "proxy-gpu-a-accept",
        "proxy-gpu-a-retire",
        "proxy-gpu-b-accept",
        "proxy-gpu-b-retire",
        "proxy-scripts",
    ]
    # the TLS key reaches the proxy host inside the step's stdin only, which is a secret
    assert "TLS-KEY" not in repr(seen)
