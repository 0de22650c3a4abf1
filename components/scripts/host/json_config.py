"""Read and update the JSON config files of Intel's DCAP services in place.

Usage:
  json_config get FILE KEY                  print the value as JSON (null when absent)
  json_config set FILE KEY=JSON...          update keys, keep the rest; exit 3 when nothing changed
  json_config secret-matches FILE KEY VAR   exit 0 when FILE's KEY equals env VAR (never printed)
  json_config set-secret FILE KEY VAR       set KEY from env VAR (never on the command line)

Intel ships sgx_default_qcnl.conf with `//` comment lines, which JSON does not allow: they are
ignored on read and dropped on write.
"""
from __future__ import annotations

import hmac
import json
import os
import sys
import tempfile
from pathlib import Path


def load(path: Path) -> dict:
    if not path.exists():
        return {}
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("//")]
    text = "\n".join(lines).strip()
    return json.loads(text) if text else {}


def save(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    verb, path = argv[0], Path(argv[1])
    data = load(path)
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
