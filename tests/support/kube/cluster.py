"""A real Kubernetes control plane on loopback for the e2e tests of the Kubernetes target.

etcd, then kube-apiserver (TLS, client certificates, RBAC, service-account keys), then
kube-controller-manager (Deployments -> ReplicaSets -> Pods, namespaces, service accounts),
kube-scheduler, and kwok, which plays the kubelet of the fake nodes: it marks them Ready and keeps
their leases, and moves the pods bound to them to Running/Ready. Everything above the kubelet is
the real thing, built by tools/build-kube.sh into bin/kube/; `start_cluster` stops all of it.

What kwok cannot show: containers, probes, images. A pod is Ready as soon as it is scheduled, so
the known-answer readiness probe never runs here (it runs in the harness and journey tiers).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.paths import REPO

KUBE_BIN = REPO / "bin" / "kube"
TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"  # the `kubernetes` Service: first address of SERVICE_CIDR


BUILD_LOCK = REPO / "bin" / ".kube-toolchain.lock"
BUILD_LOG = REPO / "bin" / ".build-kube.log"  # where tools/test.sh's background build writes
BUILD_WAIT_S = 45 * 60


def missing_tools() -> list[str]:
    """What tools/build-kube.sh has not built (empty when the cluster can start)."""
    want = [KUBE_BIN / t for t in TOOLS] + [KUBE_BIN / "kwok-stages.yaml", REPO / "bin" / "pulumi-resource-kubernetes"]
    return [str(p.relative_to(REPO)) for p in want if not p.exists()]


def await_toolchain(timeout: float = BUILD_WAIT_S) -> None:
    """Wait while tools/build-kube.sh holds its lock (tools/test.sh runs it in the background),
    then fail with the fix, and the build's log, if a binary is missing."""
    if BUILD_LOCK.exists():
        with open(BUILD_LOCK) as lock:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"tools/build-kube.sh still running after {timeout:.0f}s") from None
                    time.sleep(2)
            fcntl.flock(lock, fcntl.LOCK_UN)
    missing = missing_tools()
    if missing:
        log = BUILD_LOG.read_text(errors="replace")[-3000:] if BUILD_LOG.exists() else ""
        raise AssertionError(
            f"{', '.join(missing)} missing; fix: run tools/build-kube.sh"
            + (f"\nits last build said:\n{log}" if log else "")
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------
# PKI: one CA; the apiserver's serving certificate; an admin client (group system:masters); the
# service-account signing key.


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
    client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer or (subject, key)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
    else:
        usage = x509.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.ExtendedKeyUsageOID.SERVER_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def self_signed_pem(dns_name: str) -> tuple[str, str]:
    """A server certificate for `dns_name`, self-signed, and its key (PEM): a TLS pair for a test."""
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)])
    cert = _cert(name, key, None, sans=[x509.DNSName(dns_name)])
    return _pem_cert(cert).decode(), _pem_key(key).decode()


@dataclass(frozen=True)
class Pki:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @classmethod
    def create(cls, d: Path) -> Pki:
        d.mkdir(parents=True, exist_ok=True)
        ca_key = _key()
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tdx-vllm e2e cluster CA")])
        ca = _cert(ca_name, ca_key, None, ca=True)
        names = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", SERVICE_IP)]
        server_key, admin_key, sa_key = _key(), _key(), _key()
        server = _cert(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
            server_key,
            (ca_name, ca_key),
            sans=sans,
        )
        admin = _cert(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "tdx-vllm-e2e-admin"),
                ]
            ),
            admin_key,
            (ca_name, ca_key),
            client=True,
        )
        files = {
            "ca.crt": _pem_cert(ca),
            "ca.key": _pem_key(ca_key),
            "apiserver.crt": _pem_cert(server),
            "apiserver.key": _pem_key(server_key),
            "admin.crt": _pem_cert(admin),
            "admin.key": _pem_key(admin_key),
            "sa.key": _pem_key(sa_key),
            "sa.pub": sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        }
        for name, data in files.items():
            (d / name).write_bytes(data)
            (d / name).chmod(0o600)
        return cls(d)

    def kubeconfig(self, server: str, user: str = "admin") -> dict[str, Any]:
        def b64(name: str) -> str:
            return base64.b64encode((self.dir / name).read_bytes()).decode()

        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")}}],
            "users": [
                {
                    "name": user,
                    "user": {"client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key")},
                }
            ],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
            "current-context": "e2e",
        }


# --------------------------------------------------------------------------------------------
# The cluster


class ApiError(RuntimeError):
    def __init__(self, status: int, body: dict[str, Any]):
        super().__init__(f"{status}: {body.get('message', body)}")
        self.status = status
        self.body = body


@dataclass
class KubeCluster:
    root: Path
    pki: Pki
    server: str
    kubeconfig: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    # -- the API, as the cluster admin (urllib: the tests need no Kubernetes client library)

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca))
        ctx.load_cert_chain(self.pki.dir / "admin.crt", self.pki.dir / "admin.key")
        return ctx

    def request(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json") -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self._context(), timeout=30) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = {"message": raw.decode(errors="replace")}
            raise ApiError(e.code, doc) from None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def exists(self, path: str) -> bool:
        try:
            self.get(path)
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        return True

    def create(self, collection: str, obj: dict[str, Any], *, dry_run: bool = False) -> Any:
        return self.request("POST", collection + ("?dryRun=All" if dry_run else ""), obj)

    def wait(self, what: str, cond: Callable[[], Any], timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            with contextlib.suppress(ApiError, OSError):
                last = cond()
                if last:
                    return last
            self._check_alive()
            time.sleep(0.2)
        raise AssertionError(
            f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r}); logs: {self.root}/logs"
        )

    def _check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                log = (self.root / "logs" / f"{name}.log").read_text(errors="replace")[-4000:]
                raise AssertionError(f"{name} exited with {p.returncode}:\n{log}")

    # -- processes

    def _start(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "logs" / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()

    def stop(self) -> None:
        """Each in turn, last started first: an apiserver whose etcd went first retries for many
        seconds before it exits."""
        for name in reversed(list(self.procs)):
            p = self.procs[name]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


def _curl_ok(url: str, ctx: ssl.SSLContext | None = None) -> bool:
    """A health endpoint (etcd /health, the apiserver's /readyz) answers 200 only when healthy."""
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def kwok_stages(dest: Path, pod_ready_delay_ms: int) -> Path:
    """kwok's stages (tools/build-kube.sh copied them from its module) with the pod-ready stage
    delayed: a pod becomes Ready `pod_ready_delay_ms` after it was bound, as a real one does only
    after its probe passed, so a test can tell a client that awaited the rollout from one that
    did not."""
    docs = [d for d in yaml.safe_load_all((KUBE_BIN / "kwok-stages.yaml").read_text()) if d]
    names = [d["metadata"]["name"] for d in docs]
    assert "pod-ready" in names, f"kwok-stages.yaml has no pod-ready stage: {names}"
    for d in docs:
        if d["metadata"]["name"] == "pod-ready" and pod_ready_delay_ms:
            d["spec"]["delay"] = {"durationMilliseconds": pod_ready_delay_ms}
    dest.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return dest


@contextlib.contextmanager
def start_cluster(
    root: Path, nodes: list[dict[str, Any]] | None = None, *, pod_ready_delay_ms: int = 0
) -> Iterator[KubeCluster]:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on 127.0.0.1, state
    under `root`; `nodes` (Node objects) are created and awaited Ready. All stopped on exit."""
    await_toolchain()
    (root / "logs").mkdir(parents=True, exist_ok=True)
    pki = Pki.create(root / "pki")
    b = KUBE_BIN
    etcd_client, etcd_peer, api_port = free_port(), free_port(), free_port()
    server = f"https://127.0.0.1:{api_port}"
    kubeconfig = root / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(pki.kubeconfig(server)))
    kubeconfig.chmod(0o600)
    cluster = KubeCluster(root, pki, server, kubeconfig)
    try:
        etcd_url = f"http://127.0.0.1:{etcd_client}"
        peer_url = f"http://127.0.0.1:{etcd_peer}"
        cluster._start(
            "etcd",
            [
                str(b / "etcd"),
                "--name=e2e",
                f"--data-dir={root / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=e2e={peer_url}",
                "--listen-metrics-urls=",
                "--unsafe-no-fsync",  # a test's etcd: durability is not the point, and fsync dominates
            ],
        )
        cluster.wait("etcd /health", lambda: _curl_ok(etcd_url + "/health"), 30)
        p = pki.dir
        cluster._start(
            "kube-apiserver",
            [
                str(b / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--profiling=false",
            ],
        )
        ctx = cluster._context()
        cluster.wait("kube-apiserver /readyz", lambda: _curl_ok(server + "/readyz", ctx), 90)
        kc = str(kubeconfig)
        cluster._start(
            "kube-controller-manager",
            [
                str(b / "kube-controller-manager"),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--service-account-private-key-file={p / 'sa.key'}",
                f"--root-ca-file={p / 'ca.crt'}",
                "--leader-elect=false",
                "--controllers=*",
            ],
        )
        sched = root / "scheduler.yaml"
        sched.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {"kubeconfig": kc},
                    "leaderElection": {"leaderElect": False},
                }
            )
        )
        cluster._start(
            "kube-scheduler",
            [
                str(b / "kube-scheduler"),
                f"--config={sched}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
            ],
        )
        cluster._start(
            "kwok",
            [
                str(b / "kwok"),
                f"--kubeconfig={kc}",
                f"--config={kwok_stages(root / 'kwok-stages.yaml', pod_ready_delay_ms)}",
                "--manage-all-nodes=true",
                # kwok's default lease (40 s) is what the heartbeat stage renews against
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{free_port()}",
                "--node-ip=10.0.0.100",
                "--cidr=10.244.0.0/16",
            ],
        )
        # The service-account controller's default ServiceAccount: kube-controller-manager is up.
        cluster.wait(
            "the default ServiceAccount",
            lambda: cluster.exists("/api/v1/namespaces/default/serviceaccounts/default"),
            60,
        )
        for node in nodes or []:
            cluster.create("/api/v1/nodes", node)
        for node in nodes or []:
            name: str = node["metadata"]["name"]

            def node_ready(name: str = name) -> bool:
                return _ready(cluster.get(f"/api/v1/nodes/{name}"))

            cluster.wait(f"node {name} Ready", node_ready, 60)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root / "etcd", ignore_errors=True)


def _ready(obj: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in obj.get("status", {}).get("conditions", []))
