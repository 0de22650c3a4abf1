#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian machine (as root), then run them all.
# Usage: tools/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

# Go (for the Pulumi toolchain) must be on PATH: this machine kind has it. The Debian packages the
# harness, the image build and QEMU need:
tools/install-debian-packages.sh >/dev/null
# The Kubernetes target's e2e toolchain (control plane, kwok, the pulumi-kubernetes provider) takes
# about 20 minutes of CPU when cold, so it builds in the background at low priority while the rest
# is set up and the other tests run; tests/e2e/test_kubernetes.py runs last and waits for it (the
# lock in bin/), and fails with the build's log if the build failed.
mkdir -p bin
nice -n 10 tools/build-kube.sh >bin/.build-kube.json 2>bin/.build-kube.log &
tools/setup-venv.sh requirements-test.txt
# The standing checks (configured in pyproject.toml) first, so they fail fast: lint and format,
# the architecture's import contracts (docs/architecture.md), types.
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
.venv/bin/lint-imports --no-cache >.venv/lint-imports.log || { cat .venv/lint-imports.log >&2; exit 1; }
.venv/bin/mypy
# The client package's dependencies as wheels: tests/tdxattest/test_install.py installs `tdxattest`
# into a fresh venv from them, offline (tests talk to loopback only).
wheels=.venv/wheelhouse
stamp=$wheels/.stamp-$(cat requirements.txt tdxattest/pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  rm -rf "$wheels" && mkdir -p "$wheels"
  grep -vE '^(-e|#)' requirements.txt | grep . > "$wheels/constraints.txt"
  .venv/bin/python -m pip download --quiet --dest "$wheels" -c "$wheels/constraints.txt" ./tdxattest "setuptools>=68" >&2
  touch "$stamp"
fi
# The real Pulumi engine for tests/e2e: CLI and language host from Go modules (minutes when cold),
# and a command provider (the stand-in when the official plugin is not available).
tools/build-pulumi.sh >/dev/null
# The pinned TD firmware from its Debian package (the tests that compute pins read it from artifacts/).
.venv/bin/python -m components firmware fetch >/dev/null
tools/install-command-provider.sh >/dev/null
# The slow tier runs too (a few minutes: image build cached under /var/cache/tdx-vllm-guest and
# artifacts/); TDX_VLLM_SLOW=0 leaves it out.
export TDX_VLLM_SLOW=${TDX_VLLM_SLOW:-1}
exec .venv/bin/python -m pytest "$@"
