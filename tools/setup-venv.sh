#!/usr/bin/env bash
# Create .venv (Python 3.11) and install the pinned requirements, once; quiet when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
req=${1:-requirements.txt}
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# requirements.txt installs ./tdxattest (editable): its dependencies are part of the stamp too.
stamp=.venv/.installed-$(cat requirements*.txt tdxattest/pyproject.toml | sha256sum | cut -c1-16)-$(basename "$req")
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip >&2
  .venv/bin/python -m pip install --quiet -r "$req" >&2
  touch "$stamp"
fi
