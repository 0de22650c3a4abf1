"""`python3 -m guest_agent [--config FILE] [--root DIR]`: run the agent, then supervise until SIGTERM.

Exit status: 0 stopped by a signal after ready; 1 refused or a supervised process died; 2 the
config is unusable (also reported as "refused")."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from tdxattest.core.errors import InputError

from .agent import Agent
from .config import DEFAULT_CONFIG_PATH, load_config
from .report import Report, emit
from .system import System


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m guest_agent", description=__doc__)
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG_PATH, help="agent config JSON (default: the fw_cfg file %(default)s)"
    )
    parser.add_argument("--root", default="/", help=argparse.SUPPRESS)  # tests: a fake /sys, /dev tree
    args = parser.parse_args(argv)
    system = System(root=Path(args.root))
    try:
        config = load_config(args.config)
    except InputError as exc:
        emit(Report(state="refused", stack=None, reason=f"config: {exc}", step="config"), system)
        return 2

    stop = threading.Event()
    ready = False

    def on_signal(signum, _frame):
        # Before ready, unwind out of whatever step is running (start() stops what it began);
        # after ready, let supervise() stop the processes in order.
        if not ready:
            raise SystemExit(128 + signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    agent = Agent(config, system)
    report = agent.start()
    ready = True
    if report.state != "ready":
        return 1
    failed = agent.supervise(stop)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
