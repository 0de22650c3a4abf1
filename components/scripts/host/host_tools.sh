# host_tools.sh: the Debian packages the later steps call (rdmsr, lspci, pip, curl, openssl), from
# firmware/host-tools.yaml. A fresh Ubuntu server lacks msr-tools and python3-pip, and a fresh
# cloud image has empty apt lists, so apply refreshes them before installing.
#
# Parameters: TDX_PACKAGES (space-separated apt names, "name" or "name=version").

pkg_version() { dpkg-query -W -f '${Status}\t${Version}' "$1" 2>/dev/null | awk -F'\t' '$1 == "install ok installed" {print $2}'; }

NEEDED=()  # the specs check found missing or at another version: what apply installs

check() {
  local spec name want seen versions="" missing=()
  NEEDED=()
  for spec in $TDX_PACKAGES; do
    name=${spec%%=*}; want=""; [ "$name" = "$spec" ] || want=${spec#*=}
    seen=$(pkg_version "$name")
    versions+="${versions:+,}$(json_str "$name"):$(json_str "${seen:-none}")"
    if [ -z "$seen" ]; then
      missing+=("$name"); NEEDED+=("$spec")
    # shellcheck disable=SC2053  # a pinned version ("1.3*") globs like apt's
    elif [ -n "$want" ] && [[ "$seen" != $want ]]; then
      NEEDED+=("$spec")
      unmet "package $name version" "$want" "$seen" "apply installs the pinned version (apt-get install $name=$want)"
    fi
  done
  fact_raw packages "{$versions}"
  [ "${#missing[@]}" -eq 0 ] || unmet "packages the host steps call are missing" "$TDX_PACKAGES" "missing ${missing[*]}" \
    "apply installs them with apt-get (after apt-get update)"
  [ "${#_UNMET[@]}" -eq 0 ]
}

apply() {
  apt-get update -q >&2 || refuse "apt-get update failed" "the host's apt sources reachable" "an error (see above)" \
    "check /etc/apt/sources.list.d and the host's network or mirror"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${NEEDED[@]}" >&2 || refuse \
    "cannot install ${NEEDED[*]}" "them from the host's apt sources" "apt-get failed (see above)" \
    "check the names and versions in firmware/host-tools.yaml against this OS release (apt-cache policy NAME)"
  fact_raw installed "$(json_list "${NEEDED[@]%%=*}")"
}
