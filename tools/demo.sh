#!/usr/bin/env bash
# See the whole chain on one machine: set up what it needs (Debian packages, venv, Pulumi toolchain,
# the pinned TD firmware, the guest image), then tools/demo.py: one local fake TDX host, `pulumi up`
# of a dev stack that boots the pinned dev image on it (a VM without TDX), the verifying proxy on
# the stack's `pins`, one chat completion with the `openai` client, its answer and the proxy's
# verdict, `pulumi destroy`, and everything stopped. Root: network namespaces, mounts, the build.
# Usage: sudo tools/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "tools/demo.sh: needs root (a network namespace host, mounts, the guest image build); fix: sudo tools/demo.sh" >&2
  exit 1
fi
tools/install-debian-packages.sh >/dev/null
tools/setup-venv.sh requirements-test.txt   # the openai client and the harness come with the test set
tools/build-pulumi.sh >/dev/null
tools/install-command-provider.sh >/dev/null
.venv/bin/python -m components firmware fetch >/dev/null
PYTHONPATH="$PWD" exec .venv/bin/python tools/demo.py
