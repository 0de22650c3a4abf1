"""A stand-in for pulumi-command's resource provider plugin (`pulumi-resource-command`), in Python.

It serves the subset of pulumi-command v1.2.1 that the `pulumi_command` Python SDK sends:
`command:local:Command`, `command:remote:Command` and the `command:local:run` function. See
../README.md for why it exists and where it differs from upstream.
"""

from __future__ import annotations

import unicodedata

PACKAGE = "command"
VERSION = "1.2.1"


class ProviderError(Exception):
    """An error meant for the user: reported to the engine without a Python traceback."""


class CommandError(ProviderError):
    """A command could not run or exited non-zero."""


class DeadlineError(CommandError):
    """The operation's custom timeout passed."""


class CancelledError(CommandError):
    """The engine cancelled the operation."""


_GO_ESCAPES = {
    "\a": r"\a",
    "\b": r"\b",
    "\f": r"\f",
    "\n": r"\n",
    "\r": r"\r",
    "\t": r"\t",
    "\v": r"\v",
    "\\": r"\\",
    '"': r"\"",
}


def go_quote(s: str) -> str:
    """Go's strconv.Quote (`%q`), which upstream uses to quote the command in its error text."""
    out = ['"']
    for ch in s:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch == " " or (ch.isprintable() and unicodedata.category(ch)[0] != "Z"):
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def format_run_error(reason: str, command: str, combined_output: str) -> str:
    """Upstream: fmt.Errorf("%w: running %q:\\n%s", err, cmd, stdout+stderr)."""
    return f"{reason}: running {go_quote(command)}:\n{combined_output}"
