#!/usr/bin/env bash
# The main job on a fresh machine: set everything up (venv, pinned requirements, the Pulumi
# toolchain, the pinned TD firmware from its Debian package, a local file backend under the
# project), validate the stack file offline, then show the whole plan of the `dev` example stack
# with `pulumi preview` (no host is contacted).
# Usage: tools/quickstart.sh [stack]     (default: dev)
set -euo pipefail
cd "$(dirname "$0")/.."
stack=${1:-dev}

tools/setup-venv.sh requirements.txt
tools/build-pulumi.sh >/dev/null
if [ -x tools/install-command-provider.sh ]; then tools/install-command-provider.sh >/dev/null; fi
# The pinned OVMF (firmware/td/*.yaml `firmware.debian`), checked against its sha256/sha384, so the
# `pins` output has real MRTD and RTMR0 values (docs/pins.md).
.venv/bin/python -m components firmware fetch >/dev/null

if [ "$stack" = dev ]; then
  export PULUMI_CONFIG_PASSPHRASE=${PULUMI_CONFIG_PASSPHRASE:-dev-only-passphrase}  # the example's own
fi
# The same environment the README has a user source (PATH, backend, the program's Python).
set +u
source tools/env.sh
set -u

# The stack it previews, offline (the staging/prod templates name their unfilled secrets here
# until you fill them in: python -m components.config stacks/Pulumi.staging.yaml).
.venv/bin/python -m components.config "stacks/Pulumi.$stack.yaml"

if ! command -v pulumi-resource-command >/dev/null 2>&1; then
  echo "quickstart: the command provider (pulumi-resource-command 1.2.1) is not installed, so pulumi cannot plan" >&2
  echo "quickstart: fix: run 'pulumi plugin install resource command 1.2.1' on a machine with access to Pulumi's plugin downloads" >&2
  exit 1
fi
pulumi stack select --create "$stack" --non-interactive >/dev/null
exec pulumi preview --stack "$stack" --non-interactive --diff
