# dcap.sh: Intel DCAP on the host, so a TD can get its quote signed: PCCS (collateral cache, holds
# the Intel PCS API key), QPL config (where quote generation finds PCCS), QGS (the quote generation
# service the TD reaches on vsock), and platform registration.
#
# Parameters: TDX_PCCS_API_KEY (secret), TDX_PCCS_LOCAL (true: run PCCS here), TDX_PCCS_PORT,
# TDX_PCCS_URL (what QPL uses), TDX_USE_SECURE_CERT (true|false), TDX_QGS_PORT,
# TDX_REGISTRATION (mpa|pckid|none), TDX_PACKAGES (space-separated apt names, "name" or "name=version"),
# TDX_SERVICE_PCCS, TDX_SERVICE_QGS.

PCCS_CONFIG=/opt/intel/sgx-dcap-pccs/config/default.json
QCNL_CONFIG=/etc/sgx_default_qcnl.conf
QGS_CONFIG=/etc/qgs.conf
PCCS_USER_TOKEN=/etc/tdxgpu/pccs-user-token
# Packages this step installed (not those that were already there): what destroy may remove.
INSTALLED_LIST=/var/lib/tdxgpu/dcap-installed-packages

pkg_installed() { [ "$(dpkg-query -W -f '${Status}' "${1%%=*}" 2>/dev/null)" = "install ok installed" ]; }
qgs_port() { sed -nE 's/^[[:space:]]*port[[:space:]]*=[[:space:]]*([0-9]+).*/\1/p' "$QGS_CONFIG" 2>/dev/null | tail -n1; }
curl_tls() { if [ "$TDX_USE_SECURE_CERT" = true ]; then echo ""; else echo "-k"; fi; }

pccs_answers() {
  # shellcheck disable=SC2046
  curl -sS $(curl_tls) -o /dev/null -w '%{http_code}' --max-time 10 "${TDX_PCCS_URL%/}/rootcacrl" 2>/dev/null || true
}

registration_status() {
  case "$TDX_REGISTRATION" in
    mpa) if have mpa_manage && mpa_manage -get_registration_status 2>&1 | grep -q "completed successfully"; then echo registered; else echo unregistered; fi ;;
    pckid) if [ -s /var/lib/tdxgpu/pckid-registered ]; then echo registered; else echo unregistered; fi ;;
    none) echo "not managed" ;;
  esac
}

# What to look at when PCCS does not answer: curl reports 000 when no HTTP exchange happened
# (TLS verification failed, or nothing listens).
pccs_fix() {
  if [ "${1:-000}" = 000 ] && [ "$TDX_USE_SECURE_CERT" = true ]; then
    echo "the PCCS certificate did not verify or nothing listens: give PCCS a certificate this host trusts (or, for a per-host PCCS on loopback, set dcap.useSecureCert: false), and check journalctl -u $TDX_SERVICE_PCCS"
  elif [ "$TDX_PCCS_LOCAL" = true ]; then
    echo "check journalctl -u $TDX_SERVICE_PCCS and the ApiKey"
  else
    echo "check dcap.pccsUrl, the PCCS's TLS certificate and that this host can reach it"
  fi
}

check() {
  local pkg missing=() code status port
  fact pccs_url "$TDX_PCCS_URL"; fact_raw pccs_local "$TDX_PCCS_LOCAL"; fact_raw qgs_port "$TDX_QGS_PORT"
  for pkg in $TDX_PACKAGES; do pkg_installed "$pkg" || missing+=("${pkg%%=*}"); done
  fact_raw packages_missing "$(json_list "${missing[@]}")"
  if [ "${#missing[@]}" -gt 0 ]; then
    unmet "DCAP packages are missing" "$TDX_PACKAGES" "missing ${missing[*]}" "apply installs them with apt-get"
    return 1  # the config files below belong to these packages
  fi

  if [ "$TDX_PCCS_LOCAL" = true ]; then
    [ "$(json_config get "$PCCS_CONFIG" HTTPS_PORT)" = "$TDX_PCCS_PORT" ] ||
      unmet "PCCS port" "$TDX_PCCS_PORT" "$(json_config get "$PCCS_CONFIG" HTTPS_PORT)" "apply sets HTTPS_PORT in $PCCS_CONFIG"
    [ "$(json_config get "$PCCS_CONFIG" hosts)" = '"127.0.0.1"' ] ||
      unmet "PCCS listen address" '"127.0.0.1" (only this host'"'"'s QGS uses it)' "$(json_config get "$PCCS_CONFIG" hosts)" "apply sets hosts in $PCCS_CONFIG"
    TDX_SECRET="$TDX_PCCS_API_KEY" json_config secret-matches "$PCCS_CONFIG" ApiKey TDX_SECRET ||
      unmet "PCCS ApiKey" "the key in dcap.pccsApiKey" "a different or empty key" "apply writes the key (it is never printed)"
    [ "$(json_config get "$PCCS_CONFIG" CachingFillMode)" = '"LAZY"' ] ||
      unmet "PCCS CachingFillMode" '"LAZY"' "$(json_config get "$PCCS_CONFIG" CachingFillMode)" "apply sets it"
  fi
  [ "$(json_config get "$QCNL_CONFIG" pccs_url)" = "\"$TDX_PCCS_URL\"" ] ||
    unmet "QPL pccs_url" "$TDX_PCCS_URL" "$(json_config get "$QCNL_CONFIG" pccs_url)" "apply sets it in $QCNL_CONFIG"
  [ "$(json_config get "$QCNL_CONFIG" use_secure_cert)" = "$TDX_USE_SECURE_CERT" ] ||
    unmet "QPL use_secure_cert" "$TDX_USE_SECURE_CERT" "$(json_config get "$QCNL_CONFIG" use_secure_cert)" "apply sets it in $QCNL_CONFIG"
  port=$(qgs_port)
  [ "$port" = "$TDX_QGS_PORT" ] || unmet "QGS port" "$TDX_QGS_PORT (vsock)" "${port:-none}" "apply sets port in $QGS_CONFIG"

  local unit
  for unit in $([ "$TDX_PCCS_LOCAL" = true ] && echo "$TDX_SERVICE_PCCS") "$TDX_SERVICE_QGS"; do
    status=$(systemctl is-active "$unit" 2>/dev/null || true)
    fact "service_$unit" "${status:-unknown}"
    [ "$status" = active ] || unmet "service $unit" active "${status:-unknown}" "apply enables and restarts it; see journalctl -u $unit"
  done

  code=$(pccs_answers)
  fact pccs_http_status "${code:-none}"
  [ "$code" = 200 ] || unmet "PCCS does not answer" "HTTP 200 from ${TDX_PCCS_URL%/}/rootcacrl" "${code:-no answer}" "$(pccs_fix "$code")"

  status=$(registration_status)
  fact registration "$TDX_REGISTRATION"; fact registration_status "$status"
  case "$status" in
    registered|"not managed") ;;
    *) unmet "platform registration ($TDX_REGISTRATION)" registered "$status" \
         "$([ "$TDX_REGISTRATION" = mpa ] && echo "enable BIOS 'SGX Auto MP Registration' and see /var/log/mpa_registration.log" || echo "apply runs PCKIDRetrievalTool against the local PCCS")" ;;
  esac
  [ "${#_UNMET[@]}" -eq 0 ]
}

apply() {
  local pkg missing=() restart=false
  for pkg in $TDX_PACKAGES; do pkg_installed "$pkg" || missing+=("$pkg"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 || refuse "cannot install DCAP packages" \
      "${missing[*]} from the configured apt sources" "apt-get failed" \
      "add Intel's SGX/DCAP apt repository (or the distribution's DCAP packages) to the host's apt sources"
    mkdir -p "$(dirname "$INSTALLED_LIST")"
    printf '%s\n' "${missing[@]%%=*}" >>"$INSTALLED_LIST"
  fi
  if [ "$TDX_PCCS_LOCAL" = true ]; then
    local pccs_changed=false
    json_config set "$PCCS_CONFIG" "HTTPS_PORT=$TDX_PCCS_PORT" 'hosts="127.0.0.1"' 'CachingFillMode="LAZY"' && pccs_changed=true
    if ! TDX_SECRET="$TDX_PCCS_API_KEY" json_config secret-matches "$PCCS_CONFIG" ApiKey TDX_SECRET; then
      TDX_SECRET="$TDX_PCCS_API_KEY" json_config set-secret "$PCCS_CONFIG" ApiKey TDX_SECRET
      pccs_changed=true
    fi
    chmod 0640 "$PCCS_CONFIG"
    if $pccs_changed || [ "$(systemctl is-active "$TDX_SERVICE_PCCS" 2>/dev/null || true)" != active ]; then
      systemctl enable "$TDX_SERVICE_PCCS" >&2 && systemctl restart "$TDX_SERVICE_PCCS" >&2
      restart=true
    fi
  fi
  json_config set "$QCNL_CONFIG" "pccs_url=\"$TDX_PCCS_URL\"" "use_secure_cert=$TDX_USE_SECURE_CERT" && restart=true
  if [ "$(qgs_port)" != "$TDX_QGS_PORT" ]; then
    write_file "$QGS_CONFIG" "$(printf '# Managed by tdx-vllm (Pulumi)\nport = %s\nnumber_threads = 4\n' "$TDX_QGS_PORT")"$'\n'
    restart=true
  fi
  # QGS reads QPL's config at start: restart it after any change (Intel TDX enabling guide).
  if $restart || [ "$(systemctl is-active "$TDX_SERVICE_QGS" 2>/dev/null || true)" != active ]; then
    systemctl enable "$TDX_SERVICE_QGS" >&2 && systemctl restart "$TDX_SERVICE_QGS" >&2
  fi
  wait_for_pccs
  register
}

wait_for_pccs() {
  local i
  for i in $(seq 1 30); do [ "$(pccs_answers)" = 200 ] && return 0; sleep 1; done
  return 0  # verify reports the failure with its fix
}

register() {
  [ "$(registration_status)" = unregistered ] || return 0
  case "$TDX_REGISTRATION" in
    mpa) systemctl restart mpa_registration_tool >&2 || true ;;
    pckid)
      # A per-host PCCS user token: its SHA-512 goes into PCCS, the token stays on this host.
      if [ ! -s "$PCCS_USER_TOKEN" ]; then
        mkdir -p "$(dirname "$PCCS_USER_TOKEN")"
        head -c 32 /dev/urandom | sha256sum | awk '{print $1}' >"$PCCS_USER_TOKEN"
        chmod 0600 "$PCCS_USER_TOKEN"
      fi
      TDX_SECRET="$(printf '%s' "$(cat "$PCCS_USER_TOKEN")" | sha512sum | awk '{print $1}')" json_config set-secret "$PCCS_CONFIG" UserTokenHash TDX_SECRET
      systemctl restart "$TDX_SERVICE_PCCS" >&2; wait_for_pccs
      PCKIDRetrievalTool -url "https://127.0.0.1:$TDX_PCCS_PORT" -use_secure_cert "$TDX_USE_SECURE_CERT" \
        -user_token "$(cat "$PCCS_USER_TOKEN")" >&2 || refuse "PCKIDRetrievalTool failed" "the platform registered with PCCS" \
        "an error (see above)" "check the CPU is production silicon and PCCS reaches Intel PCS with the ApiKey"
      mkdir -p /var/lib/tdxgpu && date -u +%FT%TZ >/var/lib/tdxgpu/pckid-registered ;;
  esac
}

# On destroy: stop the services and remove the packages this step installed (with their config),
# and the registration files it created. Packages that were on the host before stay.
remove() {
  local unit pkgs=()
  for unit in "$TDX_SERVICE_QGS" $([ "$TDX_PCCS_LOCAL" = true ] && echo "$TDX_SERVICE_PCCS"); do
    systemctl disable --now "$unit" >&2 || true
  done
  [ -f "$INSTALLED_LIST" ] && mapfile -t pkgs < <(sort -u "$INSTALLED_LIST")
  if [ "${#pkgs[@]}" -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -q "${pkgs[@]}" >&2
  fi
  rm -f "$INSTALLED_LIST" "$PCCS_USER_TOKEN" /var/lib/tdxgpu/pckid-registered
  fact_raw removed_packages "$(json_list "${pkgs[@]}")"
  fact left_in_place "platform registration with Intel (it belongs to the CPU, not to this host's software)"
}
