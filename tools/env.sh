# The environment `pulumi` needs in this checkout. Source it, do not run it:
#     source tools/env.sh
# It puts the built toolchain (bin/) and the project's .venv on PATH, keeps state in a local file
# backend (.pulumi-state/) unless PULUMI_BACKEND_URL is already set, names the program's Python
# (PULUMI_PYTHON_CMD), and turns off update checks and plugin downloads (the toolchain is pinned).
# No `set -euo pipefail` here, unlike every other script: it would change the caller's own shell.
# Your stack's passphrase stays yours to set: export PULUMI_CONFIG_PASSPHRASE=...
_tdx_vllm_root=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
export PATH="$_tdx_vllm_root/bin:$_tdx_vllm_root/.venv/bin:$PATH"
export PULUMI_PYTHON_CMD="${PULUMI_PYTHON_CMD:-$_tdx_vllm_root/.venv/bin/python}"
export PULUMI_SKIP_UPDATE_CHECK=true
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION="${PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION:-true}"
if [ -z "${PULUMI_BACKEND_URL:-}" ]; then
    export PULUMI_BACKEND_URL="file://$_tdx_vllm_root/.pulumi-state"
    mkdir -p "$_tdx_vllm_root/.pulumi-state"
fi
if [ ! -x "$_tdx_vllm_root/.venv/bin/python" ] || [ ! -x "$_tdx_vllm_root/bin/pulumi" ]; then
    echo "tools/env.sh: .venv or bin/pulumi is missing; fix: run tools/quickstart.sh once" >&2
fi
[ -n "${PULUMI_CONFIG_PASSPHRASE:-}" ] ||
    echo "tools/env.sh: PULUMI_CONFIG_PASSPHRASE is not set; fix: export PULUMI_CONFIG_PASSPHRASE=<your stack's passphrase>" >&2
unset _tdx_vllm_root
