"""Mutation testing of the security-critical modules (issue 17, item 9): how many of mutmut's
mutants of each module the fast tests kill, message-only mutants set apart.

    .venv/bin/python tools/mutation.py [--module NAME ...] [--threshold 90] [--json FILE]

Why a separate workspace and venv: mutmut 3 copies the sources into `mutants/` and needs them to be
the ones imported, and the project's venv imports `tdxattest` through its editable install first.
So this builds `.mutation/venv` (the pinned requirements without the editable install, plus
mutmut; once) and, per module, a workspace `.mutation/<module>/` with `src/tdxattest`, the tests and
the code they import, and runs mutmut there with `PYTHONPATH` at the mutated copy.

A surviving mutant is *message-only* when its diff changes nothing but the wording of string
literals that are prose (an error text, a log line: a literal with a space in it); a changed key,
check name or encoding still counts as logic. The logic-only score is
killed / (killed + other survivors). Prints a table, writes JSON, and exits 1 when a module's
logic-only score is below the threshold.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tokenize
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".mutation"
MUTMUT = "mutmut==3.8.1"
# What the tests read besides the package: their support code and fixtures, the Pulumi side they
# import, and the docs and pins some of them check.
COPIED = ("tests", "components", "guest_agent", "docs", "firmware", "stacks", "policy", "guest")

# module -> the fast tests that exercise it (unit, conformance, channel)
MODULES: dict[str, tuple[str, ...]] = {
    "channel/binding.py": ("tests/tdxattest/test_binding.py", "tests/tdxattest/test_mutation_kills.py"),
    "core/policy.py": (
        "tests/tdxattest/test_policy.py",
        "tests/tdxattest/test_policy_refusals.py",
        "tests/tdxattest/test_peer_checks.py",
        "tests/tdxattest/test_mrseam_pins.py",
        "tests/tdxattest/test_quotes.py",
        "tests/tdxattest/test_testpki.py",
    ),
    "core/gpu_evidence.py": (
        "tests/tdxattest/test_gpu_evidence.py",
        "tests/tdxattest/test_gpu_evidence_refusals.py",
        "tests/tdxattest/test_gpu_policy.py",
    ),
    "channel/proxy.py": (
        "tests/tdxattest/test_channel.py",
        "tests/tdxattest/test_channel_edges.py",
        "tests/tdxattest/test_channel_gpu.py",
        "tests/tdxattest/test_mutation_kills.py",
        "tests/tdxattest/test_proxy_refusals.py",
        "tests/tdxattest/test_hostile_input.py",
        "tests/tdxattest/test_connection_pool.py",
    ),
}


@dataclass(frozen=True)
class Score:
    module: str
    mutants: int
    killed: int
    survived: int
    message_only: int
    no_tests: int
    other: int

    @property
    def logic_only(self) -> float:
        """Killed / (killed + survivors that change logic); 0 when mutmut judged none (it could not run
        the tests: `other` counts those mutants), so a broken run never reads as a pass."""
        logic_survivors = self.survived - self.message_only
        judged = self.killed + logic_survivors
        return 100.0 * self.killed / judged if judged else 0.0


def venv() -> Path:
    """`.mutation/venv` with the pinned requirements (no editable tdxattest) and mutmut."""
    lines = [ln for ln in (REPO / "requirements.txt").read_text().splitlines() if not ln.startswith("-e")]
    lines += [ln for ln in (REPO / "requirements-test.txt").read_text().splitlines() if not ln.startswith("-r")]
    lines.append(MUTMUT)
    wanted = "\n".join(lines) + "\n"
    stamp_value = hashlib.sha256(wanted.encode()).hexdigest()
    env_dir = WORK / "venv"
    stamp = env_dir / ".stamp"
    if stamp.exists() and stamp.read_text() == stamp_value:
        return env_dir
    shutil.rmtree(env_dir, ignore_errors=True)
    WORK.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    req = WORK / "requirements.txt"
    req.write_text(wanted)
    subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(req)], check=True)
    stamp.write_text(stamp_value)
    return env_dir


def workspace(module: str, tests: tuple[str, ...], env_dir: Path) -> Path:
    ws = WORK / module.replace("/", "_").removesuffix(".py")
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    shutil.copytree(REPO / "tdxattest" / "src", ws / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in COPIED:
        shutil.copytree(REPO / name, ws / name, ignore=shutil.ignore_patterns("__pycache__"), symlinks=True)
    config = (REPO / "pyproject.toml").read_text()
    config += (
        "\n[tool.mutmut]\n"
        f'source_paths = ["src/tdxattest/{module}"]\n'
        f"pytest_add_cli_args_test_selection = {json.dumps(list(tests))}\n"
        f"also_copy = {json.dumps(['src/', *(f'{name}/' for name in COPIED)])}\n"
    )
    (ws / "pyproject.toml").write_text(config)
    (ws / ".venv").symlink_to(env_dir)
    (ws / "mutants" / "src").mkdir(parents=True)  # on PYTHONPATH from the interpreter's start
    return ws


def _tokens(line: str) -> tuple[list[str], list[str]]:
    """One line of code split into its non-string tokens and its string literals."""
    code: list[str] = []
    strings: list[str] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(line.strip() + "\n").readline):
            if tok.type == tokenize.STRING:
                strings.append(tok.string)
            elif tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE):
                code.append(tok.string)
    except (tokenize.TokenError, IndentationError):
        return [line.strip()], []
    return code, strings


def _is_prose(literal: str) -> bool:
    """A string literal with a space in it is text for people (an error, a log line). One without is a
    key, a check name, an encoding or a header, and changing it changes what the code does."""
    return any(ch.isspace() for ch in literal)


def message_only(diff: str) -> bool:
    """True when the diff changes nothing but the wording of messages: the same code tokens, and every
    string literal it changes is prose (`_is_prose`)."""
    removed = [ln[1:] for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    added = [ln[1:] for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    if not removed or len(removed) != len(added):
        return False
    for before, after in zip(removed, added, strict=True):
        code_before, strings_before = _tokens(before)
        code_after, strings_after = _tokens(after)
        if code_before != code_after or len(strings_before) != len(strings_after):
            return False
        changed = [old for old, new in zip(strings_before, strings_after, strict=True) if old != new]
        if not all(_is_prose(old) for old in changed):
            return False
    return True


def run_module(module: str, tests: tuple[str, ...], env_dir: Path) -> Score:
    ws = workspace(module, tests, env_dir)
    env = {**os.environ, "PYTHONPATH": str(ws / "mutants" / "src"), "TDX_VLLM_SLOW": "0"}
    mutmut = str(env_dir / "bin" / "mutmut")
    subprocess.run([mutmut, "run"], cwd=ws, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = subprocess.run([mutmut, "results", "--all", "true"], cwd=ws, env=env, capture_output=True, text=True)
    states: dict[str, str] = {}
    for line in results.stdout.splitlines():
        m = re.fullmatch(r"\s*(\S+__mutmut_\d+): (.+)", line)
        if m:
            states[m.group(1)] = m.group(2).strip()
    survivors = [name for name, state in states.items() if state == "survived"]
    messages = 0
    for name in survivors:
        shown = subprocess.run([mutmut, "show", name], cwd=ws, env=env, capture_output=True, text=True).stdout
        messages += message_only(shown)
    count = {s: sum(1 for v in states.values() if v == s) for s in ("killed", "survived", "no tests")}
    return Score(
        module=module,
        mutants=len(states),
        killed=count["killed"],
        survived=count["survived"],
        message_only=messages,
        no_tests=count["no tests"],
        other=len(states) - sum(count.values()),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--module", action="append", choices=sorted(MODULES), help="default: all")
    p.add_argument("--threshold", type=float, default=90.0, help="logic-only score each module needs (%%)")
    p.add_argument("--json", type=Path, default=WORK / "mutation.json")
    args = p.parse_args(argv)
    env_dir = venv()
    scores = [run_module(m, MODULES[m], env_dir) for m in (args.module or list(MODULES))]
    heads = ("mutants", "killed", "survived", "msg-only", "no tests", "not run", "logic-only")
    print(f"{'module':<24} " + " ".join(f"{h:>{max(len(h), 8)}}" for h in heads))
    for s in scores:
        values = (s.mutants, s.killed, s.survived, s.message_only, s.no_tests, s.other, f"{s.logic_only:.1f}%")
        print(f"{s.module:<24} " + " ".join(f"{v:>{max(len(h), 8)}}" for h, v in zip(heads, values, strict=True)))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([asdict(s) | {"logic_only": round(s.logic_only, 1)} for s in scores], indent=2))
    low = [s.module for s in scores if s.logic_only < args.threshold]
    if low:
        print(f"below {args.threshold:g}% logic-only: {', '.join(low)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
