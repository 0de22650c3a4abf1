"""`proxy:`: the verifying proxy that `pulumi up` deploys for the stack's clients.

proxy:
  ssh: {address: 10.0.0.5, hostKey: ssh-ed25519 AAAA..., privateKey: <secret>}  # the client's host
  python: /opt/tdxattest/bin/python   # an environment with tdxattest (pip install ./tdxattest)
  listen: 127.0.0.1:8080              # the first TD's; the next TDs take the next ports
  auditDir: /var/log/tdx-vllm/proxy   # <td>.jsonl per TD
  pccsUrl: https://pccs.example:8081/sgx/certification/v4/   # collateral (default: dcap.pccsUrl)
  tls: {certificate: <PEM>, privateKey: <secret PEM>}         # required to listen beyond loopback
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from components.config.model import ProxyTls, SshConfig, SshDefaults, VerifyingProxyConfig
from components.config.reader import Reader, join

ABSOLUTE_PATH = re.compile(r"/[A-Za-z0-9._/-]{1,255}")
LISTEN = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253}):(?P<port>[0-9]{1,5})")
KEYS = ("ssh", "python", "listen", "auditDir", "cacheDir", "pccsUrl", "tls")
PEM_CERT = "-----BEGIN CERTIFICATE-----"

SshParser = Callable[[Reader, Any, str, SshDefaults], SshConfig | None]


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_proxy(
    r: Reader,
    value: Any,
    path: str,
    ssh_defaults: SshDefaults,
    parse_ssh: SshParser,
    *,
    dev_test_quotes: bool,
    default_pccs: str | None,
) -> VerifyingProxyConfig | None:
    """`dev_test_quotes`: the workload's TDs run without TDX (the dev stack), so the proxy takes the
    TEST root each answer carries and needs no collateral source."""
    m = r.obj(value, path, KEYS)
    ssh = parse_ssh(
        r,
        r.required(m, "ssh", path, "set the proxy host's `ssh:` block (address, hostKey)"),
        join(path, "ssh"),
        ssh_defaults,
    )
    python = _absolute(r, m.get("python", "/opt/tdxattest/bin/python"), join(path, "python"))
    audit_dir = _absolute(r, m.get("auditDir", "/var/log/tdx-vllm/proxy"), join(path, "auditDir"))
    cache_dir = _absolute(r, m.get("cacheDir", "/var/cache/tdx-vllm/proxy"), join(path, "cacheDir"))
    listen = r.string(m.get("listen", "127.0.0.1:8080"), join(path, "listen"), "set HOST:PORT, e.g. 127.0.0.1:8080")
    host, port = "127.0.0.1", 8080
    if listen is not None:
        found = LISTEN.fullmatch(listen)
        if found is None or not 1 <= int(found["port"]) <= 65000:
            r.error(join(path, "listen"), f"`{listen}` is not HOST:PORT (port 1..65000)", "set e.g. 127.0.0.1:8080")
        else:
            host, port = found["host"], int(found["port"])
    tls = _tls(r, m.get("tls"), join(path, "tls")) if m.get("tls") is not None else None
    if not is_loopback(host) and tls is None and "tls" not in m:
        r.error(
            join(path, "listen"),
            f"`{host}` is not a loopback address, and without `tls` prompts would cross the network in plain text",
            "listen on 127.0.0.1, or set proxy.tls.certificate and proxy.tls.privateKey (a secret)",
        )
    pccs = r.pccs_url(
        m.get("pccsUrl"), join(path, "pccsUrl"), "remove them: collateral is public, read without credentials"
    )
    if pccs is None and not dev_test_quotes:
        pccs = default_pccs
        if pccs is None:
            r.error(
                join(path, "pccsUrl"),
                "required: the proxy verifies quotes against Intel's collateral, from a PCCS or Intel's PCS",
                "set a PCCS the proxy host reaches, or Intel's PCS: https://api.trustedservices.intel.com/tdx/certification/v4/",
            )
    if ssh is None or python is None or audit_dir is None or cache_dir is None:
        return None
    return VerifyingProxyConfig(
        ssh=ssh,
        python=python,
        listen_host=host,
        listen_port=port,
        audit_dir=audit_dir,
        pccs_url=None if dev_test_quotes else pccs,
        tls=tls,
        cache_dir=cache_dir,
    )


def _absolute(r: Reader, value: Any, path: str) -> str | None:
    text = r.string(value, path, "set an absolute path")
    if text is not None and (not ABSOLUTE_PATH.fullmatch(text) or "/../" in f"{text}/"):
        r.error(
            path, f"`{text}` is not an absolute path of letters, digits, `._-/`", "set e.g. /opt/tdxattest/bin/python"
        )
        return None
    return text


def _tls(r: Reader, value: Any, path: str) -> ProxyTls | None:
    m = r.obj(value, path, ("certificate", "privateKey"))
    cert = r.string(
        r.required(m, "certificate", path, "set the PEM certificate chain the proxy serves"),
        join(path, "certificate"),
        "set the PEM certificate chain",
    )
    if cert is not None and not cert.startswith(PEM_CERT):
        r.error(join(path, "certificate"), "is not a PEM certificate", f"set the chain, starting `{PEM_CERT}`")
    key = r.secret(
        r.required(
            m,
            "privateKey",
            path,
            f"run `pulumi config set --secret --path '{join(path, 'privateKey')}' < proxy.key`",
        ),
        join(path, "privateKey"),
        " < proxy.key",
    )
    if cert is None or key is None:
        return None
    return ProxyTls(cert + "\n", key)
