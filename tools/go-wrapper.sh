# Shared by tools/build-pulumi.sh and tools/build-kube.sh, which build binaries from Go wrapper
# modules (tools/*/go.mod). Sourced, not run: `source tools/go-wrapper.sh NAME` defines
# log/die (prefixed NAME), gives Go a HOME in a bare CI environment, and checks that go is on PATH.

_go_wrapper_name=$1
log() { printf '%s: %s\n' "$_go_wrapper_name" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Go derives GOCACHE/GOMODCACHE from HOME; a bare CI environment may lack it.
if [ -z "${HOME:-}" ]; then HOME="$(getent passwd "$(id -u)" | cut -d: -f6)"; export HOME; fi
command -v go >/dev/null 2>&1 || die "go is not on PATH (Go >= 1.26.6 is needed)"

# Version of a requirement in one of our go.mod files: gomod_version GO_MOD MODULE
gomod_version() {
    awk -v m="$2" '($1 == m && $2 ~ /^v/) { print $2; exit } ($1 == "require" && $2 == m) { print $3; exit }' "$1"
}

# Exact pin of a package in requirements.txt (pkg==X): req_pin REPO_ROOT PACKAGE
req_pin() {
    sed -n "s/^$2==\([0-9][0-9A-Za-z.+-]*\).*/\1/p" "$1/requirements.txt" | head -n1
}
