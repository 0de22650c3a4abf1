"""proxy.sh (the VerifyingProxy's host step) against a fake host over real SSH: the rendered steps, as
`pulumi up` renders them (components/render/proxy.py), with the real `tdxattest proxy` run by the
fake systemctl as its unit, in front of a real software-test gateway and stand-in vLLM on the same
host (each a unit too).

The rollover, step by step as `pulumi up` orders it: the proxy serves TD A on pins A; the accept
phase of pins B keeps A accepted (as retiring) while B is current; the TD is replaced by B; the
retire phase drops A; a TD measured as A is then refused.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from components.config.model import ProxyTls, Secret, SshConfig, VerifyingProxyConfig
from components.render.proxy import PROXY_STEP, ProxyInstance, pins_document, proxy_params
from components.render.status import step_status
from components.render.steps import DELETE_COMMAND, Rendered, render
from tdxattest.testing.testpki import TdIdentity
from tests.support.hosts import profiles as H
from tests.support.hosts import sshrun
from tests.support.hosts.sshrun import CommandFailed
from tests.support.paths import REPO

pytestmark = pytest.mark.harness

PYTHON = str(REPO / ".venv" / "bin" / "python")
TD = "td-a"
UNIT = f"tdx-vllm-proxy-{TD}"
GATEWAY, STANDIN = "tdx-vllm-test-gateway", "tdx-vllm-test-standin"
GATEWAY_PORT, STANDIN_PORT, PROXY_PORT = 18443, 18000, 18080
RTMR3_A, RTMR3_B = bytes(range(48)), bytes(range(48, 96))
VERSION = "0.1.0"


def dev_pins(rtmr3: bytes) -> dict:
    """What a dev stack (TDs without TDX) exports: RTMR3 pinned, `tdx: false`."""
    from dataclasses import replace

    from tdxattest.core.pins import RegisterPin

    unpinned = RegisterPin(None, "no TDX")
    pins = replace(
        TdIdentity(rtmr3=rtmr3).stack_pins(), tdx=False, mrtd=unpinned, rtmr0=unpinned, rtmr1=unpinned, rtmr2=unpinned
    )
    return pins.to_json()


def proxy_config(*, tls: ProxyTls | None = None, python: str = PYTHON) -> VerifyingProxyConfig:
    # the step's values do not include the SSH settings (the connection is the component's)
    return VerifyingProxyConfig(
        ssh=SshConfig("192.0.2.1", 22, "root", "ssh-ed25519 AAAA", Secret("unused")),
        python=python,
        listen_host="127.0.0.1",
        listen_port=PROXY_PORT,
        audit_dir="/var/log/tdx-vllm/proxy",
        pccs_url=None,  # the dev stack's TEST quotes
        tls=tls,
    )


INSTANCE = ProxyInstance(TD, f"https://127.0.0.1:{GATEWAY_PORT}", "127.0.0.1", PROXY_PORT)


def step(host, pins: dict, phase: str, action: str = "run", **kw) -> sshrun.Result:
    params = proxy_params(proxy_config(**kw), INSTANCE, pins, phase, VERSION)  # type: ignore[arg-type]
    return sshrun.run(host.target(), render(PROXY_STEP, params, action), deadline_s=90)


def shell(host, script: str) -> str:
    return sshrun.run(host.target(), Rendered(command="bash -s", stdin=script), deadline_s=60).stdout


def start_test_unit(host, unit: str, argv: list[str]) -> None:
    """A unit the fake systemctl runs for real (services.json `run: true`), (re)started now."""
    text = "[Service]\nExecStart=" + " ".join(shlex.quote(a) for a in argv) + "\n"
    shell(
        host,
        f"printf '%s' {shlex.quote(text)} >/etc/systemd/system/{unit}.service\nsystemctl restart {unit}\n",
    )


def serve_td(host, rtmr3: bytes) -> None:
    """The "TD": a software-test gateway measuring `rtmr3`, in front of the stand-in vLLM."""
    argv = [PYTHON, "-m", "tdxattest", "gateway", "--listen", f"127.0.0.1:{GATEWAY_PORT}"]
    argv += ["--upstream", f"http://127.0.0.1:{STANDIN_PORT}", "--quote-source", "software-test"]
    argv += ["--test-pki-dir", "/var/lib/test-gateway-pki", "--test-rtmr3", rtmr3.hex()]
    start_test_unit(host, GATEWAY, argv)
    shell(
        host,
        f"for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/{GATEWAY_PORT}) 2>/dev/null && exit 0; sleep 0.1; done; exit 1\n",
    )


def through_proxy(host) -> tuple[int, dict]:
    """GET /v1/models through the proxy, from the proxy host: the status and the JSON answer."""
    script = (
        "import json, urllib.request, urllib.error\n"
        "try:\n"
        f"    r = urllib.request.urlopen('http://127.0.0.1:{PROXY_PORT}/v1/models', timeout=30)\n"
        "    print(json.dumps([r.status, json.loads(r.read())]))\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(json.dumps([e.code, json.loads(e.read())]))\n"
    )
    out = shell(host, f"{PYTHON} -c {shlex.quote(script)}\n")
    status, body = json.loads(out.strip().splitlines()[-1])
    return status, body


def audit_tail(host) -> dict:
    return json.loads(host.host_path(f"/var/log/tdx-vllm/proxy/{TD}.jsonl").read_text().splitlines()[-1])


@pytest.fixture(scope="module")
def host(nshost_factory):
    h = nshost_factory([H.TDX_READY.replace(name="proxy_host", hostname="proxy-host")])["proxy_host"]
    services = h.read_json("services.json", {})
    for unit in (UNIT, GATEWAY, STANDIN):
        services[unit] = {"run": True}
    h._save("services.json", services)
    start_test_unit(h, STANDIN, [PYTHON, "-m", "tdxattest.testing.standin", "--listen", f"127.0.0.1:{STANDIN_PORT}"])
    serve_td(h, RTMR3_A)
    return h


def test_the_proxy_serves_the_td_its_pins_accept(host) -> None:
    first = step(host, dev_pins(RTMR3_A), "accept")
    assert first.facts and first.facts["ok"] and first.facts["changed"] and first.facts["state"] == "active"
    assert first.facts["retiring"] is False and first.facts["tdxattest_version"] == VERSION
    unit = host.host_path(f"/etc/systemd/system/{UNIT}.service").read_text()
    assert "--accept-dev-test-root" in unit and "--retiring-pins" not in unit
    assert through_proxy(host)[0] == 200
    assert audit_tail(host)["pin_set"] == "current"
    # converged: both phases find nothing to do
    for phase in ("accept", "retire"):
        again = step(host, dev_pins(RTMR3_A), phase)
        assert again.facts and again.facts["changed"] is False, again.stderr


def test_a_rollover_never_refuses_the_live_td_and_ends_refusing_the_retired_one(host) -> None:
    pins_a, pins_b = dev_pins(RTMR3_A), dev_pins(RTMR3_B)
    # 1. accept: B current, A retiring; the live TD (A) is still served
    accepted = step(host, pins_b, "accept")
    assert accepted.facts and accepted.facts["changed"] and accepted.facts["retiring"] is True
    assert host.host_path(f"/etc/tdx-vllm/proxy/{TD}/retiring.json").read_text() == pins_document(pins_a)
    assert "--retiring-pins" in host.host_path(f"/etc/systemd/system/{UNIT}.service").read_text()
    assert through_proxy(host)[0] == 200
    assert audit_tail(host)["pin_set"] == "retiring"
    # `status` of the retire phase meanwhile names the retiring pins as the drift
    r = step(host, pins_b, "retire", action="status")
    s = step_status("proxy", "proxy-td-a-retire", r.exit_status, r.stdout, r.stderr)
    assert s.state == "drifted" and any(p.startswith("retiring pins are still accepted") for p in s.problems), s
    # 2. the TD is replaced by B: served, by the current pins
    serve_td(host, RTMR3_B)
    assert through_proxy(host)[0] == 200 and audit_tail(host)["pin_set"] == "current"
    # 3. retire: A is dropped
    retired = step(host, pins_b, "retire")
    assert retired.facts and retired.facts["changed"] and retired.facts["retiring"] is False
    assert not host.host_path(f"/etc/tdx-vllm/proxy/{TD}/retiring.json").exists()
    assert through_proxy(host)[0] == 200
    # 4. a TD measured as A is now refused, naming the pin
    serve_td(host, RTMR3_A)
    status, body = through_proxy(host)
    assert status == 502 and body["error"]["code"] == "pin.rtmr3", body
    serve_td(host, RTMR3_B)


def test_a_missing_tdxattest_is_refused_with_the_install_command(host) -> None:
    with pytest.raises(CommandFailed) as info:
        step(host, dev_pins(RTMR3_B), "accept", python="/opt/tdxattest/bin/python")
    said = "\n".join(ln for ln in info.value.stderr.splitlines() if ln.startswith("error: "))
    assert said == (
        "error: proxy: the proxy's Python is missing; expected /opt/tdxattest/bin/python with tdxattest "
        f"{VERSION}, seen no such executable; fix: on the proxy host: python3 -m venv /opt/tdxattest && "
        "/opt/tdxattest/bin/pip install ./tdxattest (from this checkout), or set proxy.python"
    ), said


def test_tls_towards_clients_with_the_key_written_0600(host, tmp_path: Path) -> None:
    from tests.tdxattest.test_proxy_rollover import _self_signed

    cert, key = _self_signed(tmp_path)
    tls = ProxyTls(cert.read_text(), Secret(key.read_text()))
    done = step(host, dev_pins(RTMR3_B), "accept", tls=tls)
    assert done.facts and done.facts["tls"] is True and done.facts["state"] == "active"
    assert key.read_text() not in done.stdout + done.stderr
    key_file = host.host_path(f"/etc/tdx-vllm/proxy/{TD}/tls.key")
    assert oct(key_file.stat().st_mode & 0o777) == "0o600" and key_file.read_text() == key.read_text()
    assert "--tls-cert" in host.host_path(f"/etc/systemd/system/{UNIT}.service").read_text()
    answer = shell(
        host,
        f"{PYTHON} -c \"import ssl, urllib.request; c = ssl.create_default_context(cafile='/etc/tdx-vllm/proxy/{TD}/tls.crt'); "
        f"print(urllib.request.urlopen('https://localhost:{PROXY_PORT}/v1/models', context=c, timeout=30).status)\"\n",
    )
    assert answer.strip().splitlines()[-1] == "200"


def test_destroy_removes_the_unit_and_keeps_the_audit_log(host) -> None:
    rendered = render(PROXY_STEP, proxy_params(proxy_config(), INSTANCE, dev_pins(RTMR3_B), "accept", VERSION))
    r = sshrun.run(host.target(), Rendered(command=DELETE_COMMAND, stdin=rendered.stdin), deadline_s=60)
    assert r.facts and r.facts["removed_paths"] == [f"/etc/systemd/system/{UNIT}.service", f"/etc/tdx-vllm/proxy/{TD}"]
    assert not host.host_path(f"/etc/systemd/system/{UNIT}.service").exists()
    assert host.host_path(f"/var/log/tdx-vllm/proxy/{TD}.jsonl").exists()
