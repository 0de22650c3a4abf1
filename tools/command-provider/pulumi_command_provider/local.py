"""Run one command on this machine the way pulumi-command's `local.Command` does
(provider/pkg/provider/local/commandOutputs.go):

- argv = `interpreter` (default `/bin/sh -c`) + [command]; working directory `dir`, else the
  provider's own (the engine starts plugins in the project directory);
- environment = the provider's environment + `environment` + PULUMI_COMMAND_STDOUT/STDERR of the
  previous run (when `addPreviousOutputInEnv` and non-empty);
- `stdin` written to the process, then closed;
- stdout and stderr captured separately (one trailing newline trimmed) and, in arrival order,
  into a combined buffer for the error text "exit status N: running <%q command>:\\n<output>".

Commands stay in the provider's process group (as upstream's), so the engine's kill of the plugin
reaches them. Difference: a deadline (the engine's custom timeout) or a cancellation kills the
command and all its descendants (upstream's exec.CommandContext kills only the process it started).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Mapping, Sequence

from . import CancelledError, CommandError, DeadlineError, format_run_error

DEFAULT_INTERPRETER = ("/bin/sh", "-c")

# The launcher sets PYTHONPATH (and PYTHONSAFEPATH) for the provider itself; commands must see
# the environment the engine gave the provider. __main__ records the original values here.
_ENV_RESTORE: dict[str, str | None] = {}


def set_env_restore(original: Mapping[str, str | None]) -> None:
    _ENV_RESTORE.clear()
    _ENV_RESTORE.update(original)


def base_environment() -> dict[str, str]:
    env = dict(os.environ)
    for k, v in _ENV_RESTORE.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def _exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name.removeprefix("SIG").lower()
        except ValueError:
            name = f"signal {-returncode}"
        names = {
            "kill": "killed",
            "term": "terminated",
            "int": "interrupt",
            "hup": "hangup",
            "segv": "segmentation fault",
            "abrt": "aborted",
            "pipe": "broken pipe",
        }
        return f"signal: {names.get(name, name)}"
    return f"exit status {returncode}"


async def run(
    command: str,
    *,
    interpreter: Sequence[str] | None,
    directory: str | None,
    environment: Mapping[str, str],
    previous: Mapping[str, str],
    stdin: str | None,
    log_stdout: bool,
    log_stderr: bool,
    output: Callable[[str], None],
    timeout_s: float | None,
    cancelled: asyncio.Event,
) -> tuple[str, str]:
    argv = list(interpreter) if interpreter else list(DEFAULT_INTERPRETER)
    argv.append(command)
    env = base_environment()
    env.update(environment)
    env.update(previous)
    cwd = directory if directory else os.getcwd()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        what = f"chdir {cwd}" if not os.path.isdir(cwd) else f"exec: {argv[0]!r}"
        raise CommandError(format_run_error(f"{what}: {(exc.strerror or str(exc)).lower()}", command, "")) from None

    out, err, both = bytearray(), bytearray(), bytearray()
    partial = {"buf": b""}

    def log(data: bytes) -> None:
        partial["buf"] += data
        while b"\n" in partial["buf"]:
            line, partial["buf"] = partial["buf"].split(b"\n", 1)
            output(line.decode("utf-8", "replace").rstrip("\r"))

    async def pump(stream: asyncio.StreamReader, into: bytearray, logged: bool) -> None:
        while True:
            data = await stream.read(65536)
            if not data:
                return
            into += data
            both.extend(data)
            if logged:
                log(data)

    async def feed() -> None:
        assert proc.stdin is not None
        try:
            if stdin:
                proc.stdin.write(stdin.encode())
                await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            try:
                proc.stdin.close()
            except (BrokenPipeError, ConnectionResetError):
                pass

    async def complete() -> int:
        assert proc.stdout is not None and proc.stderr is not None  # started with PIPE
        await asyncio.gather(pump(proc.stdout, out, log_stdout), pump(proc.stderr, err, log_stderr), feed())
        return await proc.wait()

    work = asyncio.ensure_future(complete())
    stop = asyncio.ensure_future(cancelled.wait())
    try:
        done, _ = await asyncio.wait(
            {work, stop}, timeout=timeout_s if timeout_s else None, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        stop.cancel()
    if work not in done:
        _kill_tree(proc)
        try:
            await asyncio.wait_for(work, 5)
        except (TimeoutError, Exception):
            work.cancel()
        if partial["buf"]:
            output(partial["buf"].decode("utf-8", "replace"))
        text = both.decode("utf-8", "replace")
        if cancelled.is_set():
            raise CancelledError(format_run_error("cancelled", command, text))
        raise DeadlineError(
            format_run_error(f"timed out after {timeout_s:g}s (the resource's custom timeout)", command, text)
        )
    returncode = work.result()
    if partial["buf"]:
        output(partial["buf"].decode("utf-8", "replace").rstrip("\r"))
    if returncode != 0:
        raise CommandError(format_run_error(_exit_reason(returncode), command, both.decode("utf-8", "replace")))
    return out.decode("utf-8", "replace").removesuffix("\n"), err.decode("utf-8", "replace").removesuffix("\n")


def _descendants(pid: int) -> list[int]:
    """pid's descendants, from /proc (Linux); [] where /proc cannot be read."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(proc: asyncio.subprocess.Process) -> None:
    """Kill the command and everything it started."""
    for pid in [proc.pid, *_descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
