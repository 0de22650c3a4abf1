"""One CLI, `python -m tdxattest <verb>`, assembled from verb modules.

Every module in the `tdxattest.commands` package that defines `register(subparsers)` is a verb:
`register` adds its sub-parser and sets `run=<callable(args) -> int>` as a default. Adding a verb
(verify, collateral, proxy, ...) means adding one module there; this file does not change. Keep a
verb module's top-level imports light: every verb module is imported to build `--help`.

Exit codes, shared by every verb: 0 ok; 1 a comparison failed (the verb ran, the evidence does not
match); 2 unusable input, with one line on stderr: `error: FILE: offset N: expected X, seen Y`.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from types import ModuleType
from typing import Sequence

from .errors import InputError

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """A verb's options do not fit together; shown as `error: <message>` with exit code 2."""


def verb_modules() -> list[ModuleType]:
    from . import commands

    modules = []
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "register"):
            modules.append(module)
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tdxattest",
        description="Intel TDX attestation tools: offline measurements, event-log replay.",
        epilog="exit status: 0 ok, 1 comparison failed, 2 unusable input",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for module in verb_modules():
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or EXIT_OK)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        return EXIT_OK
