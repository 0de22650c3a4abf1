"""The agent's steps, in the order that makes the TD's quote mean something:

  1. detect TDX           refuse without it (the dev stack goes on with software TEST quotes, loudly)
  2. measure the workload RTMR3 <- manifest digest, before anything else runs
  3. attest the GPUs      verify evidence and pins, only then set them ready
  4. fetch the model      every file hashed against the manifest
  5. start the server     vLLM by digest (or the dev stand-in), wait for /health
  6. start the gateway    attested TLS in front of it, wait for /health through it
  7. known answer         one greedy completion through the gateway, compared exactly
  8. report               one line on stdout and the serial console

Any refusal stops what was started and reports; `supervise` then watches the processes.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from . import DEV_STACK
from .config import AgentConfig
from .gpu import attest_gpus
from .knownanswer import check_known_answer, check_runner, check_sampled
from .model import fetch_model
from .report import Report, emit
from .server import (
    Supervisor,
    gateway_argv,
    insecure_loopback_tls,
    standin_argv,
    vllm_argv,
    vllm_cleanup_argv,
    wait_http,
)
from .system import Refused, System
from .tdx import Rtmr3, SoftwareRtmr3, SysfsRtmr3, detect_tdx, measure_workload

EVENT_LOG = "rtmr3-events.jsonl"
GATEWAY_START_TIMEOUT_S = 60.0
STANDIN_START_TIMEOUT_S = 30.0
SOFTWARE_QUOTES = "software-test"


IMAGE_FACTS = "/etc/tdx-vllm/image.json"  # written by tools/build-guest-image.sh into the verity root


def check_image_stack(stack: str, system: System) -> None:
    """The stack comes from the host (fw_cfg), which is not trusted; the image's own record of the
    stack it was built for is measured (dm-verity root, root hash in RTMR2). A host that hands a
    prod image a `dev` config, to get software quotes or a skipped GPU check, is refused here, and
    so is a dev image (serial autologin) given any other stack. The prod image serves every stack
    but dev (staging boots the image prod will, so the two share their pins)."""
    path = system.path(IMAGE_FACTS)
    try:
        built_for = json.loads(path.read_text()).get("stack")
    except FileNotFoundError:
        return  # not our image (tests, or the agent run by hand): the config's stack stands
    except (OSError, ValueError, AttributeError) as exc:
        raise Refused("image", f"a readable {IMAGE_FACTS}; seen: {exc}") from None
    wanted = DEV_STACK if stack == DEV_STACK else "prod"
    if built_for != wanted:
        raise Refused(
            "image",
            f"an image built for stack {wanted!r} (the host's config says {stack!r}), seen one "
            f"built for {built_for!r}; boot the {wanted} image (tools/build-guest-image.sh "
            f"--stack {wanted}) or fix the stack config",
        )


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        system: System = System(),
        *,
        stdout: TextIO | None = None,
        gpu_nonce: Callable[[], bytes] = lambda: secrets.token_bytes(32),
    ):
        self.config = config
        self.system = system
        self.stdout = stdout
        self.gpu_nonce = gpu_nonce
        self.state_dir = Path(config.state_dir)
        self.supervisor = Supervisor(self.state_dir / "logs")
        self.rtmr3: str | None = None
        self.quote_source: str | None = None
        self.notes: list[str] = []

    # ---- paths and addresses -------------------------------------------------------------------

    @property
    def event_log(self) -> Path:
        return self.state_dir / EVENT_LOG

    @property
    def test_pki_dir(self) -> Path:
        return self.state_dir / "test-pki"

    @property
    def endpoint(self) -> str:
        return f"https://{self.config.gateway_listen}:{self.config.gateway_port}"

    @property
    def local_gateway(self) -> str:
        # The agent's own calls stay on loopback when the gateway listens on every interface.
        host = self.config.gateway_listen
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        return f"https://{host}:{self.config.gateway_port}"

    def _report(self, state: str, **kw) -> Report:
        return Report(
            state=state,
            stack=self.config.stack,
            rtmr3=self.rtmr3,
            endpoint=self.endpoint,
            quote_source=self.quote_source,
            notes=tuple(self.notes),
            manifest_sha384=self.config.workload.digest().hex(),
            **kw,
        )

    # ---- the steps ----------------------------------------------------------------------------

    def start(self) -> Report:
        """Steps 1-8. Returns the report (already emitted); on refusal nothing is left running."""
        try:
            self._start()
            report = self._report("ready")
        except Refused as exc:
            self.stop()
            report = self._report("refused", reason=str(exc), step=exc.step)
        except Exception as exc:
            self.stop()
            report = self._report("refused", reason=f"unexpected {type(exc).__name__}: {exc}", step="internal")
        except BaseException:
            self.stop()
            raise
        emit(report, self.system, self.stdout)
        return report

    def _start(self) -> None:
        cfg = self.config
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o755)

        check_image_stack(cfg.stack, self.system)
        facts = detect_tdx(self.system)
        register: Rtmr3
        if facts.present and facts.rtmr3 is not None:
            register = SysfsRtmr3(facts.rtmr3)
            self.quote_source = "tsm"
        elif not cfg.dev:
            raise Refused(
                "tdx",
                f"a TDX TD; missing: {'; '.join(facts.missing)}. Stack {cfg.stack!r} serves "
                "only from hardware TDX (software TEST quotes exist for the 'dev' stack only)",
            )
        else:
            register = SoftwareRtmr3()
            self.quote_source = SOFTWARE_QUOTES
            self.notes.append(
                "NO TDX: RTMR3 is simulated in software and quotes are signed by a TEST PKI; "
                "this endpoint proves nothing (dev stack only)"
            )
            print("WARNING: " + self.notes[-1], file=sys.stderr, flush=True)
            # A software register starts at zero in every run, so an earlier run's log cannot match it.
            self.event_log.unlink(missing_ok=True)

        measured = measure_workload(cfg.workload, register, self.event_log)
        self.rtmr3 = measured.rtmr3.hex()

        gpu = attest_gpus(cfg, self.system, self.state_dir, self.gpu_nonce)
        if gpu.skipped:
            self.notes.append(f"GPU attestation skipped: {gpu.skipped}")

        fetch_model(cfg.workload, cfg.model.source, Path(cfg.model.dir))

        if cfg.server == "vllm":
            server = self.supervisor.start(
                "vllm",
                vllm_argv(cfg.workload, cfg.model.dir, cfg.server_port, cfg.podman),
                cleanup=vllm_cleanup_argv(cfg.podman),
            )
            server_timeout = cfg.server_start_timeout_s
        else:
            server = self.supervisor.start(
                "standin", standin_argv(self.system.python, cfg.server_port, cfg.workload.model_id)
            )
            server_timeout = min(cfg.server_start_timeout_s, STANDIN_START_TIMEOUT_S)
        wait_http(f"http://127.0.0.1:{cfg.server_port}/health", server, server_timeout, f"{server.name} /health")

        gateway = self.supervisor.start(
            "gateway",
            gateway_argv(
                self.system.python,
                listen=cfg.gateway_listen,
                port=cfg.gateway_port,
                upstream_port=cfg.server_port,
                quote_source=self.quote_source,
                test_pki_dir=str(self.test_pki_dir) if self.quote_source == SOFTWARE_QUOTES else None,
                event_log=str(self.event_log),
                gpu_evidence=str(gpu.evidence_path) if gpu.evidence_path else None,
                # The gateway asks the same collector for fresh evidence per client nonce.
                gpu_collect=tuple(a.replace("{python}", self.system.python) for a in cfg.gpu.evidence_command),
                test_rtmr3=self.rtmr3 if self.quote_source == SOFTWARE_QUOTES else None,
            ),
        )
        wait_http(
            f"{self.local_gateway}/health",
            gateway,
            GATEWAY_START_TIMEOUT_S,
            "/health through the gateway",
            context=insecure_loopback_tls(),
        )

        greedy = check_known_answer(self.local_gateway, cfg.known_answer, cfg.workload.model_id)
        if cfg.server == "vllm":
            check_runner(server.log)
            check_sampled(self.local_gateway, cfg.known_answer, cfg.workload.model_id, greedy)

    # ---- after ready -------------------------------------------------------------------------

    def supervise(self, stop: threading.Event, poll_s: float = 1.0) -> Report | None:
        """Watch the processes until `stop` is set (returns None) or one exits (returns the "failed" report)."""
        while not stop.wait(poll_s):
            child = self.supervisor.exited()
            if child is not None:
                reason = (
                    f"{child.name} exited {child.process.returncode} after the TD was ready: "
                    f"{child.log_tail() or 'no output'} (log {child.log})"
                )
                self.stop()
                report = self._report("failed", reason=reason, step=child.name)
                emit(report, self.system, self.stdout)
                return report
        self.stop()
        return None

    def stop(self) -> None:
        self.supervisor.stop_all()
