"""Render a host step (a script from components/scripts/host/ plus its desired values) into the
command and stdin that run it. Pure: the Pulumi components and the test harness both call
`render`, so the harness runs byte-for-byte what `pulumi up` runs.

Why stdin: the script text and every desired value (secrets included) travel on stdin, never on
the command line, so nothing shows in the host's process list, and `stdin` is an input of the
`remote.Command`: a changed script or pin changes the input and re-runs exactly that step.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "scripts" / "host"

# The remote side is `bash -s`, and the first line of stdin is a loader that copies the rest of
# stdin into a private temp file, runs it, and always removes it: bash reads a script from a pipe
# one byte at a time, so `cat` gets exactly what follows the loader, and nothing the step runs can
# swallow the rest of the script. The short command keeps the provider's error headline (`running
# "bash -s"`) out of the way of the step's own `error: <step>: ...; fix: ...` lines.
STEP_LOADER = (
    'umask 077; f=$(mktemp /tmp/tdxgpu-step.XXXXXX) || exit 1; trap \'rm -f "$f"\' EXIT; cat >"$f"; bash "$f"; exit $?'
)
STEP_COMMAND = "bash -s"

# status: the read-only check phases (components/status/), never apply.
ACTIONS = ("run", "reboot", "wait", "status")

# `pulumi destroy` runs the same stdin with this command: the override makes the script remove
# what its step installed (its `remove` function) instead of applying.
DELETE_COMMAND = "TDX_ACTION_OVERRIDE=delete bash -s"
_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


@dataclass(frozen=True)
class Step:
    """One host step: `script` defines check/apply (and runtime_check for reboot steps)."""

    name: str
    script: str
    helpers: tuple[str, ...] = ()  # python helpers from scripts/ exposed as shell functions
    mode: str = "apply"  # "check": never apply, fail with the unmet list (read-only steps)

    def source(self) -> str:
        return (SCRIPTS_DIR / self.script).read_text()


@dataclass(frozen=True)
class Rendered:
    command: str
    stdin: str = field(repr=False)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.stdin.encode()).hexdigest()


def shell_assign(name: str, value: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"invalid step parameter name {name!r}")
    return f"{name}={shlex.quote(value)}"


def _helper_function(file_name: str) -> str:
    """Expose scripts/<name>.py as a shell function `<name>` running it with python3."""
    fn = Path(file_name).stem
    body = (SCRIPTS_DIR / file_name).read_text()
    if "\nPYEOF\n" in body:
        raise ValueError(f"{file_name} contains the heredoc terminator")
    return f"{fn}() {{\n  python3 - \"$@\" <<'PYEOF'\n{body}\nPYEOF\n}}\n"


def render(step: Step, params: Mapping[str, str], action: str = "run") -> Rendered:
    """The command line and stdin for `step` with its desired values `params`."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    preamble = [
        "#!/usr/bin/env bash",
        f"# tdx-vllm step {step.name} ({step.script}, action {action})",
        shell_assign("TDX_STEP", step.name),
        f'TDX_ACTION="${{TDX_ACTION_OVERRIDE:-{action}}}"',
        shell_assign("TDX_MODE", step.mode),
    ]
    preamble += [shell_assign(k, str(v)) for k, v in sorted(params.items())]
    parts = [
        "\n".join(preamble),
        (SCRIPTS_DIR / "lib.sh").read_text(),
        *(_helper_function(h) for h in step.helpers),
        step.source(),
        "tdx_main\n",
    ]
    return Rendered(command=STEP_COMMAND, stdin="\n".join([STEP_LOADER, *parts]))
