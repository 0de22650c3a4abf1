#!/usr/bin/env bash
# Link the stand-in command provider (tools/command-provider/pulumi-resource-command) into the
# repo's git-ignored bin/, unless a real pulumi-resource-command is already available: one in
# bin/, one on PATH, or the official plugin in the plugin cache ($PULUMI_HOME/plugins/
# resource-command-v<version>/). Idempotent. Prints one JSON line:
#   {"command_provider": PATH, "kind": "standin"|"existing", "action": ..., "version": ...}
# action: linked | already-linked | kept-existing (a real provider is in bin/) |
#         skipped (a real provider is on PATH or in the plugin cache; the engine finds it there)
set -euo pipefail

repo="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
launcher="$repo/tools/command-provider/pulumi-resource-command"
bin="$repo/bin"
target="$bin/pulumi-resource-command"
version="$(sed -n 's/^VERSION = "\(.*\)"$/\1/p' "$repo/tools/command-provider/pulumi_command_provider/__init__.py")"

json_str() { if [ -n "$1" ]; then printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; else printf 'null'; fi; }
report() { # $1 = provider path, $2 = kind, $3 = action
    printf '{"command_provider": %s, "kind": %s, "action": "%s", "version": "%s"}\n' \
        "$(json_str "$1")" "$(json_str "$2")" "$3" "$version"
}
is_ours() { [ -e "$1" ] && [ "$(readlink -f "$1")" = "$(readlink -f "$launcher")" ]; }

[ -x "$launcher" ] || { echo "install-command-provider: $launcher is missing or not executable" >&2; exit 1; }

# 1. bin/ already holds one.
if [ -e "$target" ]; then
    if is_ours "$target"; then
        report "$target" standin already-linked
    else
        report "$target" existing kept-existing
    fi
    exit 0
fi

# 2. A real one elsewhere that the engine would find (bin/ is first on PATH in this repo's
#    workflow, so a link there would shadow it).
found=""
IFS=: read -r -a path_dirs <<<"${PATH:-}"
for d in "${path_dirs[@]}"; do
    [ -n "$d" ] || continue
    c="$d/pulumi-resource-command"
    if [ -x "$c" ] && [ ! -d "$c" ] && ! is_ours "$c"; then found="$c"; break; fi
done
if [ -z "$found" ]; then
    cache="${PULUMI_HOME:-$HOME/.pulumi}/plugins/resource-command-v$version/pulumi-resource-command"
    if [ -x "$cache" ] && ! is_ours "$cache"; then found="$cache"; fi
fi
if [ -n "$found" ]; then
    report "$found" existing skipped
    exit 0
fi

# 3. Link the stand-in (relative, so the repo can move). A dangling link is replaced.
mkdir -p "$bin"
ln -sfn ../tools/command-provider/pulumi-resource-command "$target"
report "$target" standin linked
