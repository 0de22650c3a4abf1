"""Render a host step (a script from components/scripts/host/ plus its desired values) into the
command and stdin that run it. Pure: the Pulumi components and the test harness both call
`render`, so the harness runs byte-for-byte what `pulumi up` runs.

Why stdin: every desired value (secrets included) travels on stdin, never on the command line, so
nothing shows in the host's process list, and `stdin` is an input of the `remote.Command`: a
changed pin re-runs exactly the steps that use it.

Why the scripts are staged: the script files themselves (lib.sh, the step's script, its Python
helpers) are staged once per host by the `scripts` step (`render_stage`, every file under its
sha256 in /var/lib/tdx-vllm/scripts), and a step's stdin names each file it runs by that digest and
checks it before sourcing it. A changed script still changes the stdin of exactly the steps that
run it (its digest is in there), while the engine's state, which it rewrites after every resource
step, holds each script once per host instead of once per step: 1-2 KB of stdin per step instead
of 10-30 KB (bench/fleet.py).
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "scripts" / "host"
# Where the `scripts` step stages them on a host (each file under its sha256): root's, mode 0700.
STAGED_DIR = "/var/lib/tdx-vllm/scripts"

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


def _script_bytes(path: Path) -> bytes:
    # Read once per version of the file (a fleet renders each script hundreds of times).
    st = path.stat()
    return _read_cached(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=128)
def _read_cached(path: Path, _mtime_ns: int, _size: int) -> bytes:
    return path.read_bytes()


def script_digest(file_name: str) -> str:
    return _digest(_script_bytes(SCRIPTS_DIR / file_name))


@functools.lru_cache(maxsize=128)
def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@functools.lru_cache(maxsize=128)
def _packed(data: bytes) -> str:
    """The file as the `scripts` step carries it: base64 of gzip without a time stamp."""
    return base64.b64encode(gzip.compress(data, compresslevel=9, mtime=0)).decode()


def step_files(step: Step) -> tuple[str, ...]:
    """The script files `step` runs: the frame, its Python helpers, its own script."""
    return ("lib.sh", *step.helpers, step.script)


NEED_FUNCTION = (
    "_tdx_need() {\n"
    "  local seen; seen=$(sha256sum \"$TDX_SCRIPTS/$1\" 2>/dev/null | cut -d' ' -f1)\n"
    '  [ "$seen" = "$1" ] && return 0\n'
    "  printf 'error: %s: the host step scripts are not staged here; expected %s with sha256 %s in %s, seen %s; "
    "fix: pulumi up stages them first (its scripts step), then runs this step again\\n' \\\n"
    '    "$TDX_STEP" "$2" "$1" "$TDX_SCRIPTS" "${seen:+sha256 $seen}${seen:-no file}" >&2\n'
    "  return 1\n"
    "}"
)


def _preamble(step: Step, params: Mapping[str, str], action: str) -> list[str]:
    """The step's name, action and mode, then its values, as shell assignments."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    preamble = [
        "#!/usr/bin/env bash",
        f"# tdx-vllm step {step.name} ({step.script}, action {action})",
        shell_assign("TDX_STEP", step.name),
        f'TDX_ACTION="${{TDX_ACTION_OVERRIDE:-{action}}}"',
        shell_assign("TDX_MODE", step.mode),
    ]
    return preamble + [shell_assign(k, str(v)) for k, v in sorted(params.items())]


def render(step: Step, params: Mapping[str, str], action: str = "run", scripts_dir: str | None = None) -> Rendered:
    """The command line and stdin for `step` with its desired values `params`; the step's script
    files are read from `scripts_dir`, where the `scripts` step staged them (`render_stage`)."""
    preamble = _preamble(step, params, action)
    digest = {f: script_digest(f) for f in step_files(step)}
    # Sourcing a missing or changed file would run something else than what was rendered: each file's
    # digest is checked first, naming the fix (the scripts step stages them; a step re-runs after it).
    files = [shell_assign("TDX_SCRIPTS", scripts_dir or STAGED_DIR), NEED_FUNCTION]
    files += [f"_tdx_need {d} {shlex.quote(Path(f).name)} || exit 1" for f, d in digest.items()]
    body = [f'source "$TDX_SCRIPTS/{digest["lib.sh"]}"']
    # A Python helper is a shell function running its staged file.
    body += [f'{Path(h).stem}() {{ python3 "$TDX_SCRIPTS/{digest[h]}" "$@"; }}' for h in step.helpers]
    body += [f'source "$TDX_SCRIPTS/{digest[step.script]}"', "tdx_main\n"]
    return Rendered(command=STEP_COMMAND, stdin="\n".join([STEP_LOADER, *preamble, *files, *body]))


# The `scripts` step: it cannot source the staged frame it stages, so its own script and the frame
# travel inline, with the files as `<sha256> <name> <base64 of gzip>` lines (gzip without a time
# stamp: the same files give the same stdin, and a converged host runs nothing).
STAGE_STEP = Step("scripts", "scripts.sh")


def host_script_files() -> tuple[str, ...]:
    """Every file a host step may run (the whole of components/scripts/host/ but the stager)."""
    return tuple(sorted(p.name for p in SCRIPTS_DIR.iterdir() if p.is_file() and p.name != STAGE_STEP.script))


def stage_params(files: tuple[str, ...], scripts_dir: str | None = None) -> dict[str, str]:
    lines = []
    for name in files:
        data = _script_bytes(SCRIPTS_DIR / name)
        lines.append(f"{_digest(data)} {Path(name).name} {_packed(data)}")
    return {"TDX_SCRIPTS": scripts_dir or STAGED_DIR, "TDX_SCRIPT_FILES": "\n".join(lines)}


def render_stage(files: tuple[str, ...] | None = None, scripts_dir: str | None = None, action: str = "run") -> Rendered:
    """The `scripts` step staging `files` (default: every host script) under `scripts_dir`."""
    params = stage_params(host_script_files() if files is None else files, scripts_dir)
    parts = [
        "\n".join(_preamble(STAGE_STEP, params, action)),
        _script_bytes(SCRIPTS_DIR / "lib.sh").decode(),
        _script_bytes(SCRIPTS_DIR / STAGE_STEP.script).decode(),
        "tdx_main\n",
    ]
    return Rendered(command=STEP_COMMAND, stdin="\n".join([STEP_LOADER, *parts]))
