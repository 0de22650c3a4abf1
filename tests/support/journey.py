"""The world of the journey (tests/slow/test_journey.py) and of `tools/demo.sh`: one fake TDX host
(tests/support/hosts/nshost.py) whose QEMU is the real qemu-system-x86_64 and whose fake `systemctl`
runs the TD unit for real, an HTTP server on that host's loopback serving the pinned dev image and a
two-file model, and the real Pulumi engine with a `dev` stack pointed at the host (`workload.td.tdx:
false`, the stand-in model server). Plus what a user types afterwards: the `pins` output, the
verifying proxy, the `openai` client.

Everything started here is stopped when `journey_world` exits: the proxies, the artifact server, the
host (its pid namespace takes QEMU with it), the engine's temp dir stays for reading."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.catalog.td_manifest import load_boot_manifest, td_boot_manifest
from components.render.steps import Rendered
from tests.support.engine import Engine, host_stack_config, host_stack_secrets
from tests.support.hosts import profiles as H
from tests.support.hosts import sshrun
from tests.support.hosts.nshost import NamespaceHost, namespace_hosts
from tests.support.paths import ARTIFACTS, REPO

STACK = "dev"  # the only stack that may run a TD without TDX
NAME = "td-a"
TD_DIR = f"/var/lib/tdx-vllm/td/{NAME}"
UNIT = f"tdx-vllm-td-{NAME}"
GATEWAY_PORT = 8443
SERVE_PORT = 8099  # the artifact server, on the host's loopback
PROXY_PORT = 8080  # the deployed verifying proxy, on the host's loopback
PROXY_UNIT = f"tdx-vllm-proxy-{NAME}"
MODEL_ID = "standin/echo"
REV_A = "a" * 40
REV_B = "b" * 40
# The stand-in serves no weights; the agent still fetches and checks every listed file.
MODEL_FILES = {
    "config.json": b'{"model_type": "standin-echo", "note": "tdx-vllm journey test"}\n',
    "tokenizer.json": b'{"version": "1.0", "model": {"type": "WordLevel"}}\n',
}
PROMPT = "Say OK"  # the stand-in echoes: its greedy answer begins with the prompt
UP_TIMEOUT_S = 900  # one TCG boot of the guest image, with the host steps before it
PYTHON = REPO / ".venv" / "bin" / "python"


@dataclass
class Journey:
    eng: Engine
    host: NamespaceHost
    root: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    endpoint: str = ""
    # what the journey test carries from one step to the next
    pins_a: Path | None = None
    proxy_a: str = ""
    restage: re.Match[str] | None = None  # the `pulumi up --replace` the tamper refusal names


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def artifact_dir(dest: Path, dev_image: Path) -> Path:
    """The TD boot artifacts by the file names the dev TD boot manifest pins, and the model files
    laid out as `<modelSource>/<path>` with `{id}/resolve/{revision}` expanded, for both revisions."""
    boot = load_boot_manifest(td_boot_manifest(STACK))
    built = {"kernel": "vmlinuz", "initrd": "initrd.img", "rootfs": "rootfs.verity.img"}
    td = dest / "td"
    td.mkdir(parents=True)
    for a in boot.artifacts:
        src = ARTIFACTS / a.file if a.role == "firmware" else dev_image / built[a.role]
        (td / a.file).symlink_to(src)
    for rev in (REV_A, REV_B):
        model = dest / MODEL_ID / "resolve" / rev
        model.mkdir(parents=True)
        for name, data in MODEL_FILES.items():
            (model / name).write_bytes(data)
    return dest


def stack_config(host: NamespaceHost) -> dict[str, str]:
    base = {
        **host_stack_config(host, NAME, gpu=False),
        # the workload: what README's dev example shows, on a host without TDX or GPU
        "workload.target": "host",
        "workload.server": "standin",
        "workload.image": "docker.io/vllm/vllm-openai@sha256:" + "0" * 64,
        "workload.cudaVersion": "12.4",
        "workload.model.id": MODEL_ID,
        "workload.model.revision": REV_A,
        "workload.modelSource": f"http://10.0.2.2:{SERVE_PORT}/{{id}}/resolve/{{revision}}",
        "workload.gateway.port": str(GATEWAY_PORT),
        "workload.knownAnswer.prompt": PROMPT,
        "workload.knownAnswer.expect": PROMPT,
        "workload.td.tdx": "false",
        "workload.td.vcpus": "2",
        "workload.td.memoryMiB": "2048",
        "workload.td.artifactSource": f"http://127.0.0.1:{SERVE_PORT}/td",
        "workload.td.readyTimeoutSeconds": "600",
        "workload.td.dataDiskGiB": "1",
    }
    for name, data in MODEL_FILES.items():
        base[f'workload.model.files["{name}"]'] = sha256(data)
    # The verifying proxy `pulumi up` deploys (components/resources/proxy.py), on the same host here:
    # its Python is this checkout's environment (where `pip install ./tdxattest` put tdxattest).
    base.update(
        {
            "proxy.ssh.address": host.address,
            "proxy.ssh.hostKey": host.host_key,
            "proxy.python": str(PYTHON),
            "proxy.listen": f"127.0.0.1:{PROXY_PORT}",
        }
    )
    return base


@contextlib.contextmanager
def journey_world(root: Path, dev_image: Path) -> Iterator[Journey]:
    """The host, the artifact server and the engine with its `dev` stack configured (nothing deployed)."""
    served = artifact_dir(root / "served", dev_image)
    profile = H.TDX_READY.replace(name="journey", hostname="journey-host", gpus=())
    with namespace_hosts([profile]) as hosts, contextlib.ExitStack() as stack:
        host = hosts["journey"]
        services = host.read_json("services.json", {})
        services[UNIT] = {"run": True}  # the fake systemctl runs this unit's ExecStart= for real
        services[PROXY_UNIT] = {"run": True}
        host._save("services.json", services)
        server = subprocess.Popen(
            ["ip", "netns", "exec", str(host.netns), sys.executable, "-m", "http.server", "--bind", "127.0.0.1"]
            + [str(SERVE_PORT), "--directory", str(served)],
            stdout=subprocess.DEVNULL,
            stderr=(root / "artifact-server.log").open("wb"),
        )
        stack.callback(_stop, server)
        eng = Engine(root / "engine")
        eng.env["TDX_VLLM_ARTIFACT_DIR"] = str(served / "td")  # `pins` from the served files
        # The tracked dev example points at documentation addresses under another passphrase: this
        # user made their own `dev` stack, as its header says to.
        (eng.project / "stacks" / f"Pulumi.{STACK}.yaml").unlink()
        eng.pulumi("stack", "init", stack=STACK)
        eng.config_set(
            STACK,
            stack_config(host),
            secret={**host_stack_secrets(host), "proxy.ssh.privateKey": host.client_private_key},
        )
        j = Journey(eng, host, root)
        try:
            yield j
        finally:
            for proc in j.procs:
                _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


# ---- what a user types ---------------------------------------------------------------------------


def pins_file(j: Journey, name: str) -> Path:
    """`pulumi stack output pins --json > pins.json`"""
    out = j.root / name
    out.write_text(j.eng.pulumi("stack", "output", "pins", "--json", stack=STACK).stdout)
    return out


class ProxyDidNotStart(RuntimeError):
    pass


def start_proxy(j: Journey, pins: Path, audit: Path, *extra: str) -> str:
    """`tdxattest proxy --upstream <endpoint> --pins pins.json --accept-dev-test-root --listen ...`;
    its URL once it listens."""
    port = free_port()
    argv = [str(PYTHON), "-m", "tdxattest", "proxy", "--upstream", j.endpoint, "--pins", str(pins)]
    argv += ["--accept-dev-test-root", "--listen", f"127.0.0.1:{port}", "--audit", str(audit), *extra]
    log = j.root / f"proxy-{port}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "NO_PROXY": "*"})
    j.procs.append(proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ProxyDidNotStart(f"the proxy exited {proc.returncode}: {log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return f"http://127.0.0.1:{port}"
        time.sleep(0.1)
    raise ProxyDidNotStart(f"the proxy did not listen within 30 s: {log.read_text()}")


def client(url: str) -> Any:
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def audit_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def host_sh(j: Journey, command: str) -> str:
    return sshrun.run(j.host.target(), Rendered(command=command, stdin=""), deadline_s=60).stdout


def serial_log(j: Journey) -> str:
    path = j.host.host_path(f"{TD_DIR}/serial.log")
    return path.read_text(errors="replace") if path.exists() else ""


def deployed_proxy_get(j: Journey, path: str = "/v1/models") -> tuple[int, str]:
    """GET through the proxy `pulumi up` deployed (on the host's loopback): status and error code
    ("" when answered). Connection failures count as status 0 (the proxy restarting)."""
    script = (
        "import json, urllib.request, urllib.error\n"
        "try:\n"
        f"    r = urllib.request.urlopen('http://127.0.0.1:{PROXY_PORT}{path}', timeout=60)\n"
        "    print(json.dumps([r.status, '']))\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(json.dumps([e.code, json.loads(e.read()).get('error', {}).get('code', '')]))\n"
        "except OSError as e:\n"
        "    print(json.dumps([0, str(e)]))\n"
    )
    done = subprocess.run(
        ["ip", "netns", "exec", str(j.host.netns), str(PYTHON), "-c", script],
        capture_output=True,
        text=True,
        timeout=90,
    )
    status, code = json.loads(done.stdout.strip().splitlines()[-1])
    return int(status), str(code)
