"""The `tdxattest` command (also `python -m tdxattest`): one entry point, an explicit verb registry.

`VERBS` names every verb, the module that implements it and its one-line summary. Only the module of
the verb being run is imported, so `tdxattest verify` pays for quote verification and nothing else,
and `tdxattest --help` lists the verbs from this table alone. A verb module defines
`configure(parser)`: its description, its arguments and `run=<callable(args) -> int>` as a default.
A new verb is one module and one line here.

Exit codes, shared by every verb: 0 ok; 1 a comparison failed (the verb ran, the evidence does not
match); 2 unusable input, with one line on stderr: `error: FILE: offset N: expected X, seen Y`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from tdxattest.core.errors import InputError

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_BAD_INPUT = 2


@dataclass(frozen=True)
class Verb:
    module: str
    summary: str
    configure: str = "configure"  # the module's function that sets up the verb's parser


VERBS: dict[str, Verb] = {
    "measure": Verb(
        "tdxattest.cli.measure", "compute MRTD and RTMR0-2 offline from firmware, kernel, initrd and cmdline"
    ),
    "eventlog": Verb("tdxattest.cli.eventlog", "TD event logs: replay RTMR0-3 (and compare with a quote)"),
    "verify": Verb("tdxattest.cli.verify", "verify a TDX quote (DCAP, offline) and appraise it against a policy"),
    "decode": Verb("tdxattest.cli.decode", "print every field of a TDX quote and its PCK chain (no verification)"),
    "pckinfo": Verb(
        "tdxattest.cli.decode",
        "print a PCK leaf's PPID, CPUSVN, PCESVN, PCE-ID and FMSPC (from a quote or a certificate)",
        "configure_pckinfo",
    ),
    "collateral": Verb("tdxattest.cli.collateral", "DCAP collateral: fetch into the verified on-disk cache"),
    "gateway": Verb("tdxattest.cli.gateway", "serve the attested TLS front of vLLM (inside the TD)"),
    "proxy": Verb(
        "tdxattest.cli.proxy", "serve a local OpenAI-compatible endpoint that forwards only to an attested gateway"
    ),
}


class UsageError(Exception):
    """A verb's options do not fit together; shown as `error: <message>` with exit code 2."""


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the full sub-parser of `verb` (any other verb is listed, not loaded)."""
    parser = argparse.ArgumentParser(
        prog="tdxattest",
        description="Intel TDX attestation: offline measurements, event-log replay, quote verification, "
        "collateral, and the attested channel (gateway in the TD, verifying proxy on the client).",
        epilog="exit status: 0 ok, 1 comparison failed, 2 unusable input",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, entry in VERBS.items():
        p = sub.add_parser(name, help=entry.summary, description=entry.summary)
        if name == verb:
            try:
                module = importlib.import_module(entry.module)
            except ModuleNotFoundError as exc:
                if exc.name != entry.module:
                    raise
                # A TD image carries only the gateway verb (guest/image/python-modules).
                parser.error(f"the `{name}` verb is not part of this installation of tdxattest")
            getattr(module, entry.configure)(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in args_list if not a.startswith("-")), None)
    args = build_parser(verb).parse_args(args_list)
    try:
        return int(args.run(args) or EXIT_OK)
    except (InputError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        return EXIT_OK
