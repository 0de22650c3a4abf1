"""The processes the agent runs: vLLM (by digest, in podman) or the dev stand-in, and the gateway.

Command lines are built by pure functions; `Supervisor` starts them in their own process groups
(podman's children die with it), logs each to a file, notices when one exits, and stops them all
in reverse order.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tdxattest.core.workload import WorkloadManifest

from .system import Refused, run_command

LOOPBACK = "127.0.0.1"
VLLM_ENV = {
    # Until vllm #57224 / PR #50671: under CC, pinned host memory comes back unpinned and the V2
    # model runner's UVA views go stale, so vLLM answers with silent garbage.
    "VLLM_USE_V2_MODEL_RUNNER": "0",
    # INFO is vLLM's default; pinned because the agent reads which runner ran from this log.
    "VLLM_LOGGING_LEVEL": "INFO",
    # Weights come only from the verified model directory, never from the Hub at run time.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    # No usage reports from inside a TD, whatever outbound network the host gives it.
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
STOP_GRACE_S = 15.0


CONTAINER_NAME = "tdx-vllm"


def vllm_argv(manifest: WorkloadManifest, model_dir: str, port: int, podman: str = "podman") -> list[str]:
    """`podman run` of the pinned image. Pure. vLLM binds loopback: only the gateway is reachable."""
    env = [a for k, v in sorted(VLLM_ENV.items()) for a in ("--env", f"{k}={v}")]
    return [
        podman,
        "run",
        "--rm",
        "--replace",
        "--name",
        CONTAINER_NAME,
        "--pull=missing",
        "--network=host",
        "--device",
        "nvidia.com/gpu=all",
        "--security-opt=label=disable",
        "--ipc=host",
        "--volume",
        f"{model_dir}:{model_dir}:ro",
        *env,
        manifest.image,
        "--model",
        model_dir,
        "--served-model-name",
        manifest.model_id,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--tensor-parallel-size",
        str(manifest.tensor_parallel_size),
        *manifest.vllm_args,
    ]


def vllm_cleanup_argv(podman: str = "podman") -> list[str]:
    """Removes the vLLM container (named by `vllm_argv`) if it outlived `podman run`."""
    return [podman, "rm", "--force", "--time", str(int(STOP_GRACE_S)), CONTAINER_NAME]


def standin_argv(python: str, port: int, model_id: str) -> list[str]:
    return [python, "-m", "tdxattest.testing.standin", "--listen", f"{LOOPBACK}:{port}", "--model", model_id]


def gateway_argv(
    python: str,
    *,
    listen: str,
    port: int,
    upstream_port: int,
    quote_source: str,
    test_pki_dir: str | None,
    event_log: str,
    gpu_evidence: str | None,
    gpu_collect: tuple[str, ...] = (),
    test_rtmr3: str | None = None,
) -> list[str]:
    argv = [
        python,
        "-m",
        "tdxattest",
        "gateway",
        "--upstream",
        f"http://{LOOPBACK}:{upstream_port}",
        "--listen",
        f"{listen}:{port}",
        "--quote-source",
        quote_source,
        "--event-log",
        event_log,
    ]
    if quote_source == "software-test":
        if not test_pki_dir:
            raise ValueError("software-test quotes need a test PKI directory")
        argv += ["--test-pki-dir", test_pki_dir]
        if test_rtmr3:  # the software register: TEST quotes carry the RTMR3 the agent measured
            argv += ["--test-rtmr3", test_rtmr3]
    if gpu_evidence:
        argv += ["--gpu-evidence", gpu_evidence, "--gpu-collect", json.dumps(list(gpu_collect))]
    return argv


@dataclass
class Managed:
    name: str
    process: subprocess.Popen
    log: Path
    cleanup: tuple[str, ...] = ()  # run after the process is stopped (a container outlives `podman run`)

    def log_tail(self, lines: int = 5) -> str:
        try:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return ""
        return " | ".join(tail)


class Supervisor:
    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.children: list[Managed] = []

    def start(self, name: str, argv: Sequence[str], cleanup: Sequence[str] = ()) -> Managed:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with open(log, "wb") as out:
            try:
                proc = subprocess.Popen(
                    list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            except OSError as exc:
                raise Refused(name, f"`{argv[0]}` to start: {exc.strerror or exc}") from None
        child = Managed(name, proc, log, tuple(cleanup))
        self.children.append(child)
        return child

    def exited(self) -> Managed | None:
        return next((c for c in self.children if c.process.poll() is not None), None)

    def stop_all(self, grace_s: float = STOP_GRACE_S) -> None:
        for child in reversed(self.children):
            _stop(child.process, grace_s)
            if child.cleanup:
                # podman runs the container under conmon in its own session: signalling `podman run`
                # does not reliably stop vLLM, which would keep holding the GPUs. Best effort: the
                # agent is stopping, and there is nobody left to tell.
                run_command(child.cleanup, grace_s + STOP_GRACE_S)
        self.children.clear()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(proc: subprocess.Popen, grace_s: float) -> None:
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
    # Leftovers of the group (a podman conmon, a worker) go too.
    _signal_group(proc, signal.SIGKILL)


def insecure_loopback_tls() -> ssl.SSLContext:
    """For the agent's own calls to the gateway over loopback inside this TD: the gateway's key was
    made moments ago in this TD and its certificate is self-signed; the quote, not a CA, vouches for it."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def loopback_open(request, timeout_s: float, context: ssl.SSLContext | None = None):
    """urlopen that never goes through an HTTP proxy from the environment: these calls stay in the TD."""
    handlers: list = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers).open(request, timeout=timeout_s)


def wait_http(
    url: str, child: Managed, timeout_s: float, what: str, context: ssl.SSLContext | None = None, poll_s: float = 0.2
) -> None:
    """Until `url` answers 200; refuse early when the process behind it exits."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise Refused(
                child.name,
                f"{what} at {url}, the process exited {child.process.returncode}: "
                f"{child.log_tail() or 'no output'} (log {child.log})",
            )
        try:
            with loopback_open(url, 5, context) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        time.sleep(poll_s)
    raise Refused(child.name, f"{what} at {url} within {timeout_s:g}s, seen {last} (log {child.log})")
