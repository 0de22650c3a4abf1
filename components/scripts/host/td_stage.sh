# td_stage.sh: the pinned TD boot artifacts (TDVF, kernel, initrd of the TD boot manifest) in the
# TD's directory on the host, each checked against its sha256 HERE, on the host, after the copy:
# what QEMU loads is exactly what the expected measurements were computed from.
#
# Parameters: TDX_TD_NAME, TDX_UNIT (the TD's unit), TDX_TD_DIR (/var/lib/tdx-vllm/td/<name>), TDX_ARTIFACT_SOURCE (an
# http(s) base URL, or an absolute directory on this host), TDX_ARTIFACTS (one line per artifact:
# `<staged name> <file under the source> <sha256>`).


# The artifact lines as three arrays (names, source files, digests).
read_artifacts() {
  NAMES=(); FILES=(); SHAS=()
  local name file sha
  while read -r name file sha; do
    [ -n "$name" ] || continue
    NAMES+=("$name"); FILES+=("$file"); SHAS+=("$sha")
  done <<<"$TDX_ARTIFACTS"
}

check() {
  local i seen json=""
  read_artifacts
  fact td_dir "$TDX_TD_DIR"; fact artifact_source "$TDX_ARTIFACT_SOURCE"
  for i in "${!NAMES[@]}"; do
    seen=$(file_sha256 "$TDX_TD_DIR/${NAMES[$i]}")
    json+="${json:+,}{\"name\":$(json_str "${NAMES[$i]}"),\"file\":$(json_str "${FILES[$i]}"),\"sha256\":$(json_str "${seen:-missing}")}"
    [ "$seen" = "${SHAS[$i]}" ] || unmet "staged ${NAMES[$i]} ($TDX_TD_DIR/${NAMES[$i]})" "sha256 ${SHAS[$i]}" \
      "${seen:-no file}" "apply fetches ${FILES[$i]} from $TDX_ARTIFACT_SOURCE"
  done
  fact_raw artifacts "[$json]"
  [ "${#_UNMET[@]}" -eq 0 ]
}

fetch() {  # fetch SOURCE-FILE DEST
  case "$TDX_ARTIFACT_SOURCE" in
    /*) cp -- "$TDX_ARTIFACT_SOURCE/$1" "$2" ;;
    http://*|https://*) curl -fsSL --retry 3 --connect-timeout 20 -o "$2" -- "${TDX_ARTIFACT_SOURCE%/}/$1" ;;
    *) return 2 ;;
  esac
}

apply() {
  local i tmp seen
  read_artifacts
  mkdir -p "$TDX_TD_DIR"
  chmod 0755 "$TDX_TD_DIR"
  for i in "${!NAMES[@]}"; do
    [ "$(file_sha256 "$TDX_TD_DIR/${NAMES[$i]}")" = "${SHAS[$i]}" ] && continue
    tmp=$(mktemp "$TDX_TD_DIR/.incoming.XXXXXX")
    if ! fetch "${FILES[$i]}" "$tmp" >&2; then
      rm -f "$tmp"
      refuse "cannot fetch TD artifact ${FILES[$i]}" "${FILES[$i]} under $TDX_ARTIFACT_SOURCE" "the copy or download failed" \
        "put the pinned file there (its source is named in the TD boot manifest), or fix workload.td.artifactSource"
    fi
    seen=$(file_sha256 "$tmp")
    if [ "$seen" != "${SHAS[$i]}" ]; then
      rm -f "$tmp"
      refuse "TD artifact ${FILES[$i]} from $TDX_ARTIFACT_SOURCE does not match its pin" "sha256 ${SHAS[$i]}" \
        "sha256 $seen" "do not launch it: replace the file at the source with the pinned one (the TD boot manifest names its source), or review and change the pin"
    fi
    chmod 0644 "$tmp"
    mv -f "$tmp" "$TDX_TD_DIR/${NAMES[$i]}"
  done
}

# On destroy: the TD's directory goes (td-launch has stopped the TD and removed its unit first).
remove() {
  # `pulumi up --replace` of this step creates the new one first, then deletes this one: the TD's
  # unit (td-launch, which `pulumi destroy` removes before this step) still runs from these files.
  if [ -f "/etc/systemd/system/$TDX_UNIT" ]; then
    fact left_in_place "$TDX_TD_DIR: the TD unit $TDX_UNIT still runs from it (this step was replaced, the TD was not)"
    return 0
  fi
  case "$TDX_TD_DIR" in /var/lib/tdx-vllm/td/?*) rm -rf -- "$TDX_TD_DIR" ;; esac
  rmdir --ignore-fail-on-non-empty /var/lib/tdx-vllm/td /var/lib/tdx-vllm 2>/dev/null || true
  fact removed_paths "$TDX_TD_DIR"
}
