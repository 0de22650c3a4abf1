"""The verifying proxy's host step (components/scripts/host/proxy.sh), rendered: one systemd unit per
TD endpoint running `tdxattest proxy` on the client's proxy host, with the stack's pins.

Pin rollover. The step runs twice in one `pulumi up`, in two phases:

  accept  before any TD changes: the new pins become `pins.json`; pins that were deployed and differ
          move to `retiring.json`, and the unit accepts both (`--retiring-pins`, each set as a
          whole). The live TD, still measured by the old pins, keeps being served.
  retire  after every TD reports ready: `retiring.json` goes, the unit accepts the new pins only.

So the live TD is never refused, and once `up` ends no retired TD is accepted. On a converged stack
neither phase's inputs change, and neither runs. Pure: the VerifyingProxy component and the harness
tests call these, so the harness runs exactly what `pulumi up` runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from components.config.model import VerifyingProxyConfig
from components.render.steps import Step
from components.render.trust_domain import endpoint_url

PROXY_STEP = Step("proxy", "proxy.sh")
CONFIG_ROOT = "/etc/tdx-vllm/proxy"
Phase = Literal["accept", "retire"]


@dataclass(frozen=True)
class ProxyInstance:
    """One proxy service: the TD it fronts and where it listens."""

    td: str
    upstream: str  # https://HOST:PORT of the TD's attested gateway
    listen_host: str
    listen_port: int

    @property
    def unit(self) -> str:
        return f"tdx-vllm-proxy-{self.td}.service"

    @property
    def config_dir(self) -> str:
        return f"{CONFIG_ROOT}/{self.td}"


def proxy_instances(proxy: VerifyingProxyConfig, tds: Sequence[tuple[str, str, int]]) -> tuple[ProxyInstance, ...]:
    """One instance per TD (`(name, gateway address, gateway port)`, in `hosts` order), on
    consecutive ports from `proxy.listen`."""
    return tuple(
        ProxyInstance(name, endpoint_url(address, port), proxy.listen_host, proxy.listen_port + i)
        for i, (name, address, port) in enumerate(tds)
    )


def instance_url(proxy: VerifyingProxyConfig, inst: ProxyInstance) -> str:
    """What the stack's clients use (the `proxies` output)."""
    scheme = "https" if proxy.tls is not None else "http"
    return f"{scheme}://{inst.listen_host}:{inst.listen_port}"


def _systemd_word(word: str) -> str:
    # Every value is validated (paths, URLs, addresses: no spaces or quotes); systemd reads `%` and
    # `$` as specifiers and variables, so they are doubled.
    return word.replace("%", "%%").replace("$", "$$")


def proxy_argv(proxy: VerifyingProxyConfig, inst: ProxyInstance, *, retiring: bool) -> list[str]:
    d = inst.config_dir
    argv = [proxy.python, "-m", "tdxattest", "proxy", "--upstream", inst.upstream, "--pins", f"{d}/pins.json"]
    if retiring:
        argv += ["--retiring-pins", f"{d}/retiring.json"]
    if proxy.pccs_url is None:
        argv += ["--accept-dev-test-root"]  # the dev stack's TDs without TDX: their TEST quotes prove nothing
    else:
        argv += ["--pccs", proxy.pccs_url, "--cache-dir", f"{proxy.cache_dir}/{inst.td}"]
    argv += ["--listen", f"{inst.listen_host}:{inst.listen_port}", "--audit", f"{proxy.audit_dir}/{inst.td}.jsonl"]
    if proxy.tls is not None:
        argv += ["--tls-cert", f"{d}/tls.crt", "--tls-key", f"{d}/tls.key"]
    return argv


def render_unit(proxy: VerifyingProxyConfig, inst: ProxyInstance, *, retiring: bool) -> str:
    exec_start = " \\\n    ".join(_systemd_word(w) for w in proxy_argv(proxy, inst, retiring=retiring))
    return (
        "# Managed by tdx-vllm (Pulumi): the verifying proxy for TD "
        f"{inst.td}. Do not edit; pulumi up rewrites it.\n"
        "[Unit]\n"
        f"Description=tdx-vllm verifying proxy for TD {inst.td}\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n"
        "\n"
        "[Service]\n"
        f"ExecStart={exec_start}\n"
        "Restart=on-failure\n"
        "RestartSec=2\n"
        "NoNewPrivileges=yes\n"
        "PrivateTmp=yes\n"
        "ProtectSystem=strict\n"
        f"ReadWritePaths={proxy.audit_dir} {proxy.cache_dir}\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def pins_document(pins: Mapping[str, object]) -> str:
    """The `pins` output as the proxy reads it (--pins): canonical JSON, so equal pins are equal bytes."""
    return json.dumps(pins, sort_keys=True, separators=(",", ":")) + "\n"


def proxy_params(
    proxy: VerifyingProxyConfig,
    inst: ProxyInstance,
    pins: Mapping[str, object],
    phase: Phase,
    tdxattest_version: str,
) -> dict[str, str]:
    """The values of one proxy step (the TLS key, when set, is the one secret: the step is secret then)."""
    tls = proxy.tls
    return {
        "TDX_PROXY_PHASE": phase,
        "TDX_PROXY_TD": inst.td,
        "TDX_PROXY_DIR": inst.config_dir,
        "TDX_PROXY_UNIT": inst.unit,
        "TDX_PROXY_UNIT_CURRENT": render_unit(proxy, inst, retiring=False),
        "TDX_PROXY_UNIT_ROLLING": render_unit(proxy, inst, retiring=True),
        "TDX_PROXY_PINS": pins_document(pins),
        "TDX_PROXY_PYTHON": proxy.python,
        "TDX_PROXY_VERSION": tdxattest_version,
        "TDX_PROXY_LISTEN_HOST": inst.listen_host,
        "TDX_PROXY_LISTEN_PORT": str(inst.listen_port),
        "TDX_PROXY_AUDIT_DIR": proxy.audit_dir,
        "TDX_PROXY_CACHE_DIR": proxy.cache_dir,
        "TDX_PROXY_TLS_CERT": tls.certificate if tls is not None else "",
        "TDX_PROXY_TLS_KEY": tls.private_key.value if tls is not None else "",
    }
