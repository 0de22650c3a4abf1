#!/usr/bin/env bash
# Build the Pulumi toolchain from Go modules into the git-ignored bin/ of this repo:
#   bin/pulumi                          CLI (pkg/v3, version from tools/pulumi-toolchain/go.mod)
#   bin/pulumi-language-python          Python language host (tools/pulumi-toolchain/langhost-python)
#   bin/pulumi-language-python-exec     its shim script, from the sdk/v3 module at the Python SDK's version
#   bin/pulumi-resource-pulumi-python   dynamic-provider shim, same source
#   bin/pulumi-resource-command         only linked in when one is found (it cannot be built here, see
#                                       tools/pulumi-toolchain/README.md)
#
# Idempotent: when bin/ already holds a toolchain built from the same inputs, it does nothing.
# Progress goes to stderr; one JSON line of facts goes to stdout.
#
# Environment:
#   PULUMI_TOOLCHAIN_BIN    where to put the binaries (default: <repo>/bin)
#   PULUMI_TOOLCHAIN_FORCE  non-empty: rebuild even when bin/ is up to date
#   GOMODCACHE, GOCACHE     Go's own defaults are used, so a second build on one machine is warm
set -euo pipefail

start=$(date +%s)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TC="$ROOT/tools/pulumi-toolchain"
LH="$TC/langhost-python"
BIN="${PULUMI_TOOLCHAIN_BIN:-$ROOT/bin}"
STAMP="$BIN/.pulumi-toolchain.stamp"

# shellcheck source=tools/go-wrapper.sh
source "$ROOT/tools/go-wrapper.sh" build-pulumi
CLI_VERSION="$(gomod_version "$TC/go.mod" github.com/pulumi/pulumi/pkg/v3)"
CLI_SDK_VERSION="$(gomod_version "$TC/go.mod" github.com/pulumi/pulumi/sdk/v3)"
LANGHOST_VERSION="$(gomod_version "$LH/go.mod" github.com/pulumi/pulumi/sdk/v3)"
PY_SDK_VERSION="$(req_pin "$ROOT" pulumi)"
COMMAND_VERSION="$(req_pin "$ROOT" pulumi-command)"
[ -n "$CLI_VERSION" ] && [ -n "$LANGHOST_VERSION" ] || die "cannot read versions from $TC/go.mod and $LH/go.mod"
[ "$CLI_VERSION" = "$CLI_SDK_VERSION" ] || die "pkg/v3 ($CLI_VERSION) and sdk/v3 ($CLI_SDK_VERSION) differ in $TC/go.mod"
[ -n "$PY_SDK_VERSION" ] || die "requirements.txt pins no pulumi==X"

# Everything the binaries are made from; a change in any of them means a rebuild.
inputs_hash() {
    {
        echo "format 2" # 2: the language host behind its .venv wrapper
        echo "pulumi==$PY_SDK_VERSION"
        cat "$TC/go.mod" "$TC/go.sum" "$LH/go.mod" "$LH/go.sum"
    } | sha256sum | cut -d' ' -f1
}
INPUTS="$(inputs_hash)"

# A command provider that is already around (bin/, next to pulumi on PATH, PATH, plugin cache).
find_command_provider() {
    local c
    for c in "$BIN/pulumi-resource-command" \
        "$(command -v pulumi-resource-command 2>/dev/null || true)" \
        "${PULUMI_HOME:-$HOME/.pulumi}/plugins/resource-command-v${COMMAND_VERSION}/pulumi-resource-command"; do
        if [ -n "$c" ] && [ -x "$c" ]; then
            printf '%s\n' "$c"
            return 0
        fi
    done
    return 1
}

json_str() { if [ -n "$1" ]; then printf '"%s"' "$1"; else printf 'null'; fi; }
finish() { # $1 = built (true/false), $2 = source (bin|path|build), $3 = language host version
    local cmd
    cmd="$(find_command_provider || true)"
    if [ -z "$cmd" ]; then
        log "note: no pulumi-resource-command found; programs using pulumi_command need one (see tools/pulumi-toolchain/README.md)"
    fi
    printf '{"pulumi": "%s", "bin": "%s", "built": %s, "seconds": %d, "source": "%s", "language_host": "%s", "python_sdk": "%s", "command_provider": %s}\n' \
        "$("$BIN/pulumi" version 2>/dev/null || echo unknown)" "$BIN" "$1" "$(($(date +%s) - start))" "$2" \
        "${3:-$LANGHOST_VERSION}" "$PY_SDK_VERSION" "$(json_str "$cmd")"
}

have_toolchain() {
    local f
    for f in pulumi pulumi-language-python pulumi-language-python-exec pulumi-resource-pulumi-python; do
        [ -x "$BIN/$f" ] || return 1
    done
    [ "$("$BIN/pulumi" version 2>/dev/null || true)" = "$CLI_VERSION" ] || return 1
    [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$INPUTS" ]
}

mkdir -p "$BIN"

# 1. Already built from the same inputs: nothing to do.
if [ -z "${PULUMI_TOOLCHAIN_FORCE:-}" ] && have_toolchain; then
    log "bin/ already holds pulumi $CLI_VERSION built from the current inputs; nothing to do"
    finish false bin
    exit 0
fi

# 2. A pulumi of the wanted version on PATH, with its Python language host and the command provider.
if [ -z "${PULUMI_TOOLCHAIN_FORCE:-}" ]; then
    p="$(command -v pulumi 2>/dev/null || true)"
    if [ -n "$p" ] && [ "$(cd "$(dirname "$p")" && pwd -P)" != "$(cd "$BIN" && pwd -P)" ]; then
        pv="$("$p" version 2>/dev/null || true)"
        if [ "$pv" = "$CLI_VERSION" ] || [ "$pv" = "v$PY_SDK_VERSION" ]; then
            pdir="$(dirname "$p")"
            lh="$pdir/pulumi-language-python"
            [ -x "$lh" ] || lh="$(command -v pulumi-language-python 2>/dev/null || true)"
            cmdp="$(find_command_provider || true)"
            if [ -n "$lh" ] && [ -x "$(dirname "$lh")/pulumi-language-python-exec" ] && [ -n "$cmdp" ]; then
                log "using pulumi $pv found at $p (language host $lh, command provider $cmdp)"
                ln -sfn "$p" "$BIN/pulumi"
                ln -sfn "$lh" "$BIN/pulumi-language-python"
                ln -sfn "$(dirname "$lh")/pulumi-language-python-exec" "$BIN/pulumi-language-python-exec"
                [ -x "$pdir/pulumi-resource-pulumi-python" ] && ln -sfn "$pdir/pulumi-resource-pulumi-python" "$BIN/pulumi-resource-pulumi-python"
                [ "$cmdp" = "$BIN/pulumi-resource-command" ] || ln -sfn "$cmdp" "$BIN/pulumi-resource-command"
                rm -f "$STAMP" # not built from our inputs: checked again (and relinked) on every run
                finish false path external
                exit 0
            fi
            log "pulumi $pv on PATH lacks the Python language host or the command provider; building instead"
        fi
    fi
fi

# 3. Build.
export CGO_ENABLED=0 # static binaries, like upstream's release builds; no C toolchain needed
VERSION_VAR=github.com/pulumi/pulumi/sdk/v3/go/common/version.Version
tmp="$(mktemp -d "$BIN/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

log "go: $(go version | cut -d' ' -f3-)"
log "downloading modules (GOMODCACHE=$(go env GOMODCACHE))"
go -C "$TC" mod download
go -C "$LH" mod download

log "building pulumi $CLI_VERSION (pkg/v3 $CLI_VERSION; GOCACHE=$(go env GOCACHE)); a cold build takes a while"
t=$(date +%s)
go -C "$TC" build -trimpath -buildvcs=false -ldflags "-s -w -X $VERSION_VAR=$CLI_VERSION" \
    -o "$tmp/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi
log "  pulumi built in $(($(date +%s) - t))s"

log "building pulumi-language-python (sdk/v3 $LANGHOST_VERSION)"
t=$(date +%s)
go -C "$LH" build -trimpath -buildvcs=false -ldflags "-s -w -X $VERSION_VAR=$LANGHOST_VERSION" \
    -o "$tmp/pulumi-language-python-bin" github.com/pulumi/pulumi/sdk/v3/python/cmd/pulumi-language-python
log "  pulumi-language-python built in $(($(date +%s) - t))s"
# This language host predates the CLI handing it Pulumi.yaml's `virtualenv` option, so on its own it
# runs the program with whatever `python` is on PATH ("No module named 'pulumi'"). Its wrapper
# defaults PULUMI_PYTHON_CMD to this checkout's .venv, and names the fix when that is missing.
cat >"$tmp/pulumi-language-python" <<'WRAPPER'
#!/bin/sh
# Written by tools/build-pulumi.sh: the language host built there, with the project's .venv as its
# Python unless PULUMI_PYTHON_CMD says otherwise.
here=$(cd "$(dirname "$0")" && pwd -P)
if [ -z "${PULUMI_PYTHON_CMD:-}" ]; then
    venv=$(dirname "$here")/.venv
    if [ ! -x "$venv/bin/python" ]; then
        echo "error: the program's Python environment $venv is missing; fix: run tools/setup-venv.sh (or tools/quickstart.sh) in $(dirname "$here"), or set PULUMI_PYTHON_CMD" >&2
        exit 1
    fi
    PULUMI_PYTHON_CMD=$venv/bin/python
    export PULUMI_PYTHON_CMD
fi
exec "$here/pulumi-language-python-bin" "$@"
WRAPPER
chmod 0755 "$tmp/pulumi-language-python"

# The shims are plain files in the sdk/v3 module tree; take them from the version the Python SDK is
# pinned to (they run inside the Python SDK), or from the CLI's sdk/v3 if that version is not served.
module_dir() { # module@version -> its directory in the module cache (downloading it if needed)
    go -C "$TC" mod download -json "$1" 2>/dev/null | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}
shim_version="v$PY_SDK_VERSION"
sdk_dir="$(module_dir "github.com/pulumi/pulumi/sdk/v3@$shim_version" || true)"
if [ -z "$sdk_dir" ] || [ ! -f "$sdk_dir/python/cmd/pulumi-language-python-exec" ]; then
    log "sdk/v3 $shim_version not available; taking the shims from sdk/v3 $CLI_VERSION"
    shim_version="$CLI_VERSION"
    sdk_dir="$(module_dir "github.com/pulumi/pulumi/sdk/v3@$shim_version")"
fi
log "shims from sdk/v3 $shim_version"
install -m 0755 "$sdk_dir/python/cmd/pulumi-language-python-exec" "$tmp/pulumi-language-python-exec"
install -m 0755 "$sdk_dir/python/dist/pulumi-resource-pulumi-python" "$tmp/pulumi-resource-pulumi-python"

"$tmp/pulumi" version >/dev/null || die "the built pulumi does not run"
for f in pulumi pulumi-language-python-bin pulumi-language-python pulumi-language-python-exec pulumi-resource-pulumi-python; do
    mv -f "$tmp/$f" "$BIN/$f"
done
printf '%s\n' "$INPUTS" >"$STAMP"

cmdp="$(find_command_provider || true)"
if [ -n "$cmdp" ] && [ "$cmdp" != "$BIN/pulumi-resource-command" ]; then
    log "linking the command provider found at $cmdp"
    ln -sfn "$cmdp" "$BIN/pulumi-resource-command"
fi
log "done: $BIN"
finish true build
