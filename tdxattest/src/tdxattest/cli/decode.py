"""`decode` and `pckinfo`: a quote's fields, or its PCK leaf's identity, as text or JSON (no
verification: `verify` decides whether to trust any of it)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tdxattest.core.decode import MAX_QUOTE_BYTES, decode_quote, pck_info
from tdxattest.core.errors import InputError

_HEX = b"0123456789abcdefABCDEF \t\r\n"


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Print every header and body field of a TDX quote, the decoded TD attributes, the TDX module "
        "release its MRSEAM belongs to, and the PCK chain summarised (subjects, validity, FMSPC, "
        "PCESVN, CPUSVN, PCE-ID, PPID). Nothing is verified."
    )
    p.add_argument("quote", metavar="QUOTE", help="a quote file: raw bytes or hex text")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_decode)


def configure_pckinfo(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Print the PCK leaf's PPID, CPUSVN, PCESVN, TCB components, PCE-ID and FMSPC, from a quote "
        "(raw or hex) or a PCK certificate (PEM or DER). Nothing is verified."
    )
    p.add_argument("input", metavar="QUOTE|CERT", help="a quote, or a PCK certificate")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_pckinfo)


def read_input(path: str) -> bytes:
    """At most MAX_QUOTE_BYTES of quote (twice that as hex text), refused beyond that before anything
    is parsed: one bounded read, never the whole of an oversized file."""
    limit = 2 * MAX_QUOTE_BYTES + 2
    try:
        with Path(path).open("rb") as f:
            data = f.read(limit + 1)
    except IsADirectoryError:
        raise InputError("a file", "a directory", file=path) from None
    except OSError as exc:
        raise InputError("a readable file", exc.strerror or str(exc), file=path) from None
    if len(data) > limit:
        raise InputError(f"a quote of at most {MAX_QUOTE_BYTES} bytes", "a larger file", file=path)
    stripped = data.strip()
    if stripped and len(stripped) % 2 == 0 and not stripped.translate(None, _HEX):  # hex text only
        try:
            return bytes.fromhex(stripped.decode())
        except ValueError:
            pass
    return data


def run_decode(args: argparse.Namespace) -> int:
    return _run(args.quote, decode_quote, args.json)


def run_pckinfo(args: argparse.Namespace) -> int:
    return _run(args.input, pck_info, args.json)


def _run(path: str, read: Callable[[bytes], dict[str, Any]], as_json: bool) -> int:
    data = read_input(path)
    try:
        doc = read(data)
    except InputError as exc:
        raise exc.with_file(path) from None
    _print(doc, as_json)
    return 0


def _print(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    for line in render_text(doc):
        print(line)


def render_text(value: Any, indent: str = "") -> list[str]:
    """`key: value` lines, nested objects indented, list items numbered. Pure."""
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item and not _flat_list(item):
                lines.append(f"{indent}{key}:")
                lines.extend(render_text(item, indent + "  "))
            else:
                lines.append(f"{indent}{key}: {_scalar(item)}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            lines.append(f"{indent}[{i}]")
            lines.extend(render_text(item, indent + "  "))
    else:
        lines.append(f"{indent}{_scalar(value)}")
    return lines


def _flat_list(item: Any) -> bool:
    return isinstance(item, list) and all(not isinstance(v, (dict, list)) for v in item)


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return " ".join("-" if v is None else str(v) for v in value)
    if isinstance(value, dict):
        return "{}"
    return str(value)
