# scripts.sh: stage the host step scripts (components/render/steps.py `render_stage`), each file under
# its sha256 in TDX_SCRIPTS, so every other step's stdin carries only its values and the digests of
# the files it runs. Files are only ever added: a step rendered from an older checkout still finds
# its own files until `pulumi destroy` removes them.
#
# Parameters: TDX_SCRIPTS (the directory), TDX_SCRIPT_FILES (`<sha256> <name> <base64 of gzip>` lines).

check() {
  local sha name packed seen n=0
  while read -r sha name packed; do
    [ -n "$sha" ] || continue
    n=$((n + 1))
    seen=$(file_sha256 "$TDX_SCRIPTS/$sha")
    [ "$seen" = "$sha" ] || unmet "host step script $name" "$TDX_SCRIPTS/$sha" "$([ -n "$seen" ] && echo "sha256 $seen" || echo "no file")" \
      "apply stages it"
  done <<<"$TDX_SCRIPT_FILES"
  fact scripts_dir "$TDX_SCRIPTS"; fact_raw files "$n"
  [ "${#_UNMET[@]}" -eq 0 ]
}

apply() {
  local sha name packed tmp
  mkdir -p "$TDX_SCRIPTS"
  chmod 0700 "$TDX_SCRIPTS"
  while read -r sha name packed; do
    [ -n "$sha" ] || continue
    [ "$(file_sha256 "$TDX_SCRIPTS/$sha")" = "$sha" ] && continue
    tmp=$(mktemp "$TDX_SCRIPTS/.stage.XXXXXX")
    printf '%s' "$packed" | base64 -d | gzip -dc >"$tmp"
    [ "$(file_sha256 "$tmp")" = "$sha" ] || { rm -f "$tmp"; refuse "staging $name" "sha256 $sha" "sha256 $(file_sha256 "$tmp")" "check the host's base64 and gzip"; }
    chmod 0600 "$tmp"
    mv -f "$tmp" "$TDX_SCRIPTS/$sha"
  done <<<"$TDX_SCRIPT_FILES"
}

remove() {
  local sha name packed removed=()
  while read -r sha name packed; do
    [ -n "$sha" ] || continue
    [ ! -e "$TDX_SCRIPTS/$sha" ] || { rm -f "$TDX_SCRIPTS/$sha"; removed+=("$TDX_SCRIPTS/$sha"); }
  done <<<"$TDX_SCRIPT_FILES"
  rmdir "$TDX_SCRIPTS" 2>/dev/null || true
  fact_raw removed_paths "$(json_list "${removed[@]}")"
}
