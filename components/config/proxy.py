"""`proxy:`: the verifying proxy that `pulumi up` deploys for the stack's clients.

proxy:
  ssh: {address: 10.0.0.5, hostKey: ssh-ed25519 AAAA..., privateKey: <secret>}  # the client's host
  python: /opt/tdxattest/bin/python   # an environment with tdxattest (pip install ./tdxattest)
  listen: 127.0.0.1:8080              # the first TD's; the next TDs take the next ports
  auditDir: /var/log/tdx-vllm/proxy   # <td>.jsonl per TD
  pccsUrl: https://pccs.example:8081/sgx/certification/v4/   # collateral (default: dcap.pccsUrl)
  tls: {certificate: <PEM>, privateKey: <secret PEM>}         # required to listen beyond loopback

or, instead of `ssh`, `python` and `listen`, in a cluster of the client's (each TD's proxy listens on
8443 in its pod, behind its Service; `tls` is required):

  kubernetes:
    image: ghcr.io/org/tdx-vllm-gateway@sha256:<64 hex>   # python3 with tdxattest installed
    namespace: tdx-vllm-proxy                              # default; created
    name: tdx-vllm-proxy                                   # default; <name>-<td> per TD
    kubeconfig: ~/.kube/clients                            # default: $KUBECONFIG, ~/.kube/config
    context: clients                                       # default: its current-context
    serviceType: ClusterIP                                 # ClusterIP | LoadBalancer
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from components.config.model import (
    PROXY_CLUSTER_PORT,
    ProxyCluster,
    ProxyTls,
    SshConfig,
    SshDefaults,
    VerifyingProxyConfig,
)
from components.config.reader import Reader, join

ABSOLUTE_PATH = re.compile(r"/[A-Za-z0-9._/-]{1,255}")
LISTEN = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253}):(?P<port>[0-9]{1,5})")
KEYS = ("ssh", "kubernetes", "python", "listen", "auditDir", "cacheDir", "pccsUrl", "tls")
CLUSTER_KEYS = ("image", "namespace", "name", "kubeconfig", "context", "serviceType")
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
IMAGE_BY_DIGEST = re.compile(r"[a-z0-9][a-z0-9._/:-]{0,254}@sha256:[0-9a-f]{64}")
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
    cluster = None
    ssh = None
    in_cluster = m.get("kubernetes") is not None  # the branch, even when the block itself has errors
    if in_cluster:
        cluster = _cluster(r, m["kubernetes"], join(path, "kubernetes"))
        for key in ("ssh", "python", "listen"):
            if key in m:
                r.error(
                    join(path, key),
                    "not used with `proxy.kubernetes` (the image's python3 serves each TD on port 8443 in its pod)",
                    f"remove `{key}`, or remove `kubernetes` to run the proxy on a host",
                )
        if m.get("tls") is None:
            r.error(
                join(path, "tls"),
                "required with `proxy.kubernetes`: behind a Service, prompts would cross the cluster's "
                "network in plain text",
                "set proxy.tls.certificate and proxy.tls.privateKey (a secret)",
            )
    else:
        ssh = parse_ssh(
            r,
            r.required(m, "ssh", path, "set the proxy host's `ssh:` block (address, hostKey), or `kubernetes:`"),
            join(path, "ssh"),
            ssh_defaults,
        )
    default_python = "python3" if in_cluster else "/opt/tdxattest/bin/python"
    python = default_python if in_cluster else _absolute(r, m.get("python", default_python), join(path, "python"))
    audit_dir = _absolute(r, m.get("auditDir", "/var/log/tdx-vllm/proxy"), join(path, "auditDir"))
    cache_dir = _absolute(r, m.get("cacheDir", "/var/cache/tdx-vllm/proxy"), join(path, "cacheDir"))
    default_listen = f"0.0.0.0:{PROXY_CLUSTER_PORT}" if in_cluster else "127.0.0.1:8080"
    listen = r.string(
        default_listen if in_cluster else m.get("listen", default_listen),
        join(path, "listen"),
        "set HOST:PORT, e.g. 127.0.0.1:8080",
    )
    host, port = "127.0.0.1", 8080
    if listen is not None:
        found = LISTEN.fullmatch(listen)
        if found is None or not 1 <= int(found["port"]) <= 65000:
            r.error(join(path, "listen"), f"`{listen}` is not HOST:PORT (port 1..65000)", "set e.g. 127.0.0.1:8080")
        else:
            host, port = found["host"], int(found["port"])
    tls = _tls(r, m.get("tls"), join(path, "tls")) if m.get("tls") is not None else None
    if not is_loopback(host) and tls is None and "tls" not in m and not in_cluster:
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
    if (ssh is None and cluster is None) or python is None or audit_dir is None or cache_dir is None:
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
        kubernetes=cluster,
    )


def _cluster(r: Reader, value: Any, path: str) -> ProxyCluster | None:
    before = len(r.errors)
    m = r.obj(value, path, CLUSTER_KEYS)
    image = r.string(
        r.required(m, "image", path, "set an image with python3 and tdxattest, by digest (the gateway image is one)"),
        join(path, "image"),
        "set `REPOSITORY@sha256:<64 hex>`",
    )
    if image is not None and not IMAGE_BY_DIGEST.fullmatch(image):
        r.error(
            join(path, "image"),
            f"`{image}` is not an image pinned by digest (a tag can move)",
            "use `REPOSITORY@sha256:<64 hex>`",
        )
    names = {}
    for key, default, max_len in (("namespace", "tdx-vllm-proxy", 63), ("name", "tdx-vllm-proxy", 30)):
        text = r.string(m.get(key, default), join(path, key), "set lowercase letters, digits and dashes")
        if text is not None and (not DNS_LABEL.fullmatch(text) or len(text) > max_len):
            r.error(
                join(path, key),
                f"`{text}` is not a DNS label of at most {max_len} characters",
                "use lowercase letters, digits and dashes",
            )
        names[key] = text
    kubeconfig = r.string(m.get("kubeconfig"), join(path, "kubeconfig"), "set the path of a kubeconfig file")
    context = r.string(m.get("context"), join(path, "context"), "set a context name from the kubeconfig")
    service_type = r.string(
        m.get("serviceType", "ClusterIP"), join(path, "serviceType"), "set ClusterIP or LoadBalancer"
    )
    if service_type not in (None, "ClusterIP", "LoadBalancer"):
        r.error(
            join(path, "serviceType"),
            f"`{service_type}` is not ClusterIP or LoadBalancer",
            "set ClusterIP or LoadBalancer",
        )
    if len(r.errors) > before or image is None or service_type is None:
        return None
    return ProxyCluster(
        image=image,
        namespace=names["namespace"] or "",
        name=names["name"] or "",
        kubeconfig=kubeconfig,
        context=context,
        service_type=service_type,
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
