"""Read and update the JSON config files of Intel's DCAP services in place.

Usage:
  json_config get FILE KEY                  print the value as JSON (null when absent)
  json_config set FILE KEY=JSON...          update keys, keep the rest; exit 3 when nothing changed
  json_config secret-matches FILE KEY VAR   exit 0 when FILE's KEY equals env VAR (never printed)
  json_config set-secret FILE KEY VAR       set KEY from env VAR (never on the command line)

Intel ships these files as JSON with comments: sgx_default_qcnl.conf has `//` comment lines, and
PCCS's default.json (2026) has a `//`-commented block after a `},`, so the text left once comments
go has a trailing comma. Both are read (comments and trailing commas dropped in one linear pass);
a rewrite drops the comments. A rewrite keeps the file's owner, group and mode: pccs.service runs
as User=pccs and must still read default.json afterwards.
"""
from __future__ import annotations

import hmac
import json
import os
import sys
import tempfile
from pathlib import Path

MAX_BYTES = 1 << 20  # these files are a few KiB; anything larger is not a DCAP config


class ConfigError(ValueError):
    pass


def _string_end(text: str, i: int) -> int:
    """The index just past the JSON string that starts at text[i] (a quote)."""
    j, n = i + 1, len(text)
    while j < n and text[j] != '"':
        j += 2 if text[j] == "\\" else 1
    return j + 1


def strip_jsonc(text: str) -> str:
    """JSON from JSON-with-comments: drop // and /* */ comments outside strings, then commas that
    only precede a closing bracket. One pass over the text, then one over the result."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = _string_end(text, i)
            out.append(text[i:j])
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise ConfigError("unterminated /* comment")
            i = j + 2
        else:
            out.append(c)
            i += 1
    stripped = "".join(out)
    # Trailing commas: a comma whose next non-space character closes an object or array.
    result: list[str] = []
    pending = ""  # a comma and the whitespace after it, held until the next token decides
    i, n = 0, len(stripped)
    while i < n:
        c = stripped[i]
        if c == '"':
            j = _string_end(stripped, i)
            result.append(pending + stripped[i:j])
            pending = ""
            i = j
            continue
        if pending and c in " \t\r\n":
            pending += c
        elif c == ",":
            result.append(pending)
            pending = c
        elif c in "}]":
            result.append(pending[1:] if pending else "")
            result.append(c)
            pending = ""
        else:
            result.append(pending + c)
            pending = ""
        i += 1
    result.append(pending)
    return "".join(result)


def load(path: Path) -> dict:
    if not path.exists():
        return {}
    raw = path.read_bytes()
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{len(raw)} bytes, more than a DCAP config ever has ({MAX_BYTES})")
    text = strip_jsonc(raw.decode("utf-8")).strip()
    if not text:
        return {}
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError("the top level is not a JSON object")
    return data


def save(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    st = path.stat() if path.exists() else None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        if st is not None:
            os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, st.st_mode & 0o7777 if st is not None else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    verb, path = argv[0], Path(argv[1])
    try:
        data = load(path)
    except (ConfigError, ValueError, UnicodeDecodeError) as exc:
        print(f"{path}: not a readable JSON config: {exc}", file=sys.stderr)
        return 4
    if verb == "get":
        print(json.dumps(data.get(argv[2])))
        return 0
    if verb == "set":
        changed = False
        for item in argv[2:]:
            key, _, raw = item.partition("=")
            value = json.loads(raw)
            if data.get(key) != value:
                data[key] = value
                changed = True
        if changed:
            save(path, data)
        return 0 if changed else 3
    if verb in ("secret-matches", "set-secret"):
        key, var = argv[2], argv[3]
        secret = os.environ.get(var, "")
        if verb == "secret-matches":
            return 0 if hmac.compare_digest(str(data.get(key, "")), secret) else 1
        data[key] = secret
        save(path, data)
        return 0
    print(f"unknown verb {verb}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
