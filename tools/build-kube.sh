#!/usr/bin/env bash
# Build what the e2e tests of the Kubernetes target run, from Go modules, into the git-ignored bin/:
#   bin/kube/kube-apiserver, kube-controller-manager, kube-scheduler   k8s.io/kubernetes (tools/kube-toolchain)
#   bin/kube/etcd                                                      go.etcd.io/etcd/server/v3 (same module)
#   bin/kube/kwok, bin/kube/kwok-stages.yaml                           sigs.k8s.io/kwok (same module)
#   bin/pulumi-resource-kubernetes                                     the pulumi-kubernetes provider
#                                                                      (tools/kubernetes-provider)
# Versions are pinned by each wrapper module's go.mod and go.sum (README.md there says why these).
#
# Idempotent: when bin/ already holds binaries built from the same inputs, it does nothing.
# Progress goes to stderr; one JSON line of facts goes to stdout.
#
# Environment:
#   KUBE_TOOLCHAIN_BIN     where to put the binaries (default: <repo>/bin)
#   KUBE_TOOLCHAIN_FORCE   non-empty: rebuild even when bin/ is up to date
#   GOMODCACHE, GOCACHE    Go's own defaults are used, so a second build on one machine is warm
# Holds $BIN/.kube-toolchain.lock (flock) while it runs.
set -euo pipefail

start=$(date +%s)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KT="$ROOT/tools/kube-toolchain"
KP="$ROOT/tools/kubernetes-provider"
BIN="${KUBE_TOOLCHAIN_BIN:-$ROOT/bin}"
KUBE_BIN="$BIN/kube"
STAMP="$BIN/.kube-toolchain.stamp"

# shellcheck source=tools/go-wrapper.sh
source "$ROOT/tools/go-wrapper.sh" build-kube
KUBE_VERSION="$(gomod_version "$KT/go.mod" k8s.io/kubernetes)"
KWOK_VERSION="$(gomod_version "$KT/go.mod" sigs.k8s.io/kwok)"
ETCD_VERSION="$(gomod_version "$KT/go.mod" go.etcd.io/etcd/server/v3)"
PROVIDER_MODULE=github.com/pulumi/pulumi-kubernetes/provider/v4
PROVIDER_PSEUDO="$(gomod_version "$KP/go.mod" "$PROVIDER_MODULE")"
# The provider reports the version of the Python SDK it pairs with: the SDK asks the engine for
# that plugin version, and the schema it embeds says the same.
PROVIDER_VERSION="$(req_pin "$ROOT" pulumi-kubernetes)"
[ -n "$KUBE_VERSION" ] && [ -n "$KWOK_VERSION" ] && [ -n "$ETCD_VERSION" ] && [ -n "$PROVIDER_PSEUDO" ] ||
    die "cannot read versions from $KT/go.mod and $KP/go.mod"
[ -n "$PROVIDER_VERSION" ] || die "requirements.txt pins no pulumi-kubernetes==X"

KUBE_TOOLS="kube-apiserver kube-controller-manager kube-scheduler etcd kwok"

inputs_hash() {
    {
        echo "format 1"
        echo "pulumi-kubernetes==$PROVIDER_VERSION"
        cat "$KT/go.mod" "$KT/go.sum" "$KP/go.mod" "$KP/go.sum" "$KP/main.go"
    } | sha256sum | cut -d' ' -f1
}
INPUTS="$(inputs_hash)"

finish() { # $1 = built (true/false)
    printf '{"kubernetes": "%s", "etcd": "%s", "kwok": "%s", "pulumi_kubernetes": "%s", "bin": "%s", "built": %s, "seconds": %d}\n' \
        "$KUBE_VERSION" "$ETCD_VERSION" "$KWOK_VERSION" "$PROVIDER_VERSION" "$BIN" "$1" "$(($(date +%s) - start))"
}

have_toolchain() {
    local f
    for f in $KUBE_TOOLS; do [ -x "$KUBE_BIN/$f" ] || return 1; done
    [ -f "$KUBE_BIN/kwok-stages.yaml" ] && [ -x "$BIN/pulumi-resource-kubernetes" ] || return 1
    [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$INPUTS" ]
}

mkdir -p "$KUBE_BIN"
# One build at a time: tools/test.sh starts this in the background, and the Kubernetes e2e tests
# wait on the same lock (tests/support/kube/cluster.py) before they look for the binaries.
exec 9>"$BIN/.kube-toolchain.lock"
flock 9
if [ -z "${KUBE_TOOLCHAIN_FORCE:-}" ] && have_toolchain; then
    log "bin/ already holds the Kubernetes test toolchain built from the current inputs; nothing to do"
    finish false
    exit 0
fi

export CGO_ENABLED=0
tmp="$(mktemp -d "$BIN/.build-kube.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
module_dir() { # $1 = module dir, $2 = module path -> its directory in the module cache
    go -C "$1" mod download -json "$2" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

log "go: $(go version | cut -d' ' -f3-); downloading modules (GOMODCACHE=$(go env GOMODCACHE))"
t=$(date +%s)
go -C "$KT" mod download
go -C "$KP" mod download
log "  modules in $(($(date +%s) - t))s"

# 1. The control plane: one `go build` of the five mains, so shared packages compile once.
# -s -w: no symbol tables or DWARF (these are test servers; linking DWARF for five binaries of
# 100+ MB each costs minutes). The -X flags give the version strings a release build has: without
# them kube-apiserver reports gitVersion v0.0.0-master.
minor="$(printf '%s' "$KUBE_VERSION" | cut -d. -f2)"
kver=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kver="$kver -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
log "building kubernetes $KUBE_VERSION (apiserver, controller-manager, scheduler), etcd $ETCD_VERSION, kwok $KWOK_VERSION; GOCACHE=$(go env GOCACHE)"
t=$(date +%s)
mkdir -p "$tmp/kube"
go -C "$KT" build -trimpath -buildvcs=false -ldflags "-s -w$kver" -o "$tmp/kube/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler sigs.k8s.io/kwok/cmd/kwok go.etcd.io/etcd/server/v3
mv "$tmp/kube/server" "$tmp/kube/etcd" # go names a main at .../server/v3 "server"
log "  control plane built in $(($(date +%s) - t))s"

# kwok simulates nothing without Stage objects; the ones for "nodes become Ready at once, keep a
# lease, pods become Ready at once" ship as YAML in its module, not in the binary.
kwok_dir="$(module_dir "$KT" "sigs.k8s.io/kwok@$KWOK_VERSION")"
for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    [ -f "$kwok_dir/kustomize/stage/$f" ] || die "kwok $KWOK_VERSION has no stage $f"
    printf -- '---\n# sigs.k8s.io/kwok@%s kustomize/stage/%s\n' "$KWOK_VERSION" "$f"
    cat "$kwok_dir/kustomize/stage/$f"
done >"$tmp/kube/kwok-stages.yaml"

# 2. The provider. Its package embeds the schema with the version set, which upstream's
# `go generate` writes from schema.json; the same, in Python, next to a copy of our main.go.
log "building pulumi-resource-kubernetes $PROVIDER_VERSION ($PROVIDER_MODULE $PROVIDER_PSEUDO)"
t=$(date +%s)
pdir="$(module_dir "$KP" "$PROVIDER_MODULE@$PROVIDER_PSEUDO")"
[ -f "$pdir/cmd/pulumi-resource-kubernetes/schema.json" ] || die "no schema.json in $pdir"
mkdir -p "$tmp/provider"
cp "$KP/go.mod" "$KP/go.sum" "$KP/main.go" "$tmp/provider/"
python3 - "$pdir/cmd/pulumi-resource-kubernetes" "$tmp/provider" "$PROVIDER_VERSION" <<'PY'
import json, sys
src, dst, version = sys.argv[1:]
schema = json.load(open(f"{src}/schema.json"))
schema["version"] = version
with open(f"{dst}/schema-embed.json", "w") as f:
    json.dump(schema, f, separators=(",", ":"))
with open(f"{dst}/terraform-mapping-embed.json", "w") as f:
    json.dump(json.load(open(f"{src}/terraform-mapping.json")), f, separators=(",", ":"))
PY
go -C "$tmp/provider" build -trimpath -buildvcs=false \
    -ldflags "-s -w -X $PROVIDER_MODULE/pkg/version.Version=$PROVIDER_VERSION" \
    -o "$tmp/pulumi-resource-kubernetes" .
log "  provider built in $(($(date +%s) - t))s"

"$tmp/kube/kube-apiserver" --version >/dev/null || die "the built kube-apiserver does not run"
for f in $KUBE_TOOLS kwok-stages.yaml; do mv -f "$tmp/kube/$f" "$KUBE_BIN/$f"; done
mv -f "$tmp/pulumi-resource-kubernetes" "$BIN/pulumi-resource-kubernetes"
printf '%s\n' "$INPUTS" >"$STAMP"
log "done: $KUBE_BIN, $BIN/pulumi-resource-kubernetes"
finish true
