# dcap.sh: Intel DCAP on the host, so a TD can get its quote signed: PCCS (collateral cache, holds
# the Intel PCS API key), QPL config (where quote generation finds PCCS), QGS (the quote generation
# service the TD reaches on vsock), and platform registration.
#
# Parameters: TDX_PCCS_API_KEY (secret), TDX_PCCS_LOCAL (true: run PCCS here), TDX_PCCS_PORT,
# TDX_PCCS_URL (what QPL uses), TDX_USE_SECURE_CERT (true|false), TDX_QGS_PORT,
# TDX_REGISTRATION (mpa|pckid|none), TDX_PACKAGES (space-separated apt names, "name" or "name=version"),
# TDX_SERVICE_PCCS, TDX_SERVICE_QGS, TDX_APT_URI / TDX_APT_COMPONENTS / TDX_APT_KEY_URL /
# TDX_APT_KEY_SHA256 (the apt repository the packages come from; empty URI: the host's own sources).
#
# What the packages do not do (tests/fixtures/host/dcap/postinst-notes.md): under
# DEBIAN_FRONTEND=noninteractive sgx-dcap-pccs's post-install skips its configuration, so there is
# no `npm install` (node_modules) and no HTTPS key and certificate (ssl_key/), and PCCS exits with
# "The private key or certificate for HTTPS server is missing". This step does that configuration.

PCCS_DIR=/opt/intel/sgx-dcap-pccs
PCCS_CONFIG=$PCCS_DIR/config/default.json
PCCS_USER=pccs  # the package's startup.sh creates it; pccs.service runs as User=pccs
APT_LIST=/etc/apt/sources.list.d/tdxgpu-intel-sgx.list
APT_KEY=/etc/apt/keyrings/tdxgpu-intel-sgx.asc
QCNL_CONFIG=/etc/sgx_default_qcnl.conf
QGS_CONFIG=/etc/qgs.conf
PCCS_USER_TOKEN=/etc/tdxgpu/pccs-user-token
# Packages this step installed (not those that were already there): what destroy may remove.
INSTALLED_LIST=/var/lib/tdxgpu/dcap-installed-packages

pkg_installed() { [ "$(dpkg-query -W -f '${Status}' "${1%%=*}" 2>/dev/null)" = "install ok installed" ]; }

apt_line() {
  local codename; codename=$( . /etc/os-release; echo "${VERSION_CODENAME:-}")
  printf 'deb [signed-by=%s arch=amd64] %s %s %s\n' "$APT_KEY" "$TDX_APT_URI" "${codename:-unknown}" "$TDX_APT_COMPONENTS"
}

# The PCCS certificate is made here (the package's interactive installer would have); renew it a
# month before it expires.
pccs_tls_ok() {
  [ -s "$PCCS_DIR/ssl_key/private.pem" ] && [ -s "$PCCS_DIR/ssl_key/file.crt" ] &&
    openssl x509 -checkend 2592000 -noout -in "$PCCS_DIR/ssl_key/file.crt" >/dev/null 2>&1
}
qgs_port() { sed -nE 's/^[[:space:]]*port[[:space:]]*=[[:space:]]*([0-9]+).*/\1/p' "$QGS_CONFIG" 2>/dev/null | tail -n1; }
curl_tls() { if [ "$TDX_USE_SECURE_CERT" = true ]; then echo ""; else echo "-k"; fi; }

pccs_answers() {
  # shellcheck disable=SC2046
  curl -sS $(curl_tls) -o /dev/null -w '%{http_code}' --max-time 10 "${TDX_PCCS_URL%/}/rootcacrl" 2>/dev/null || true
}

registration_status() {
  case "$TDX_REGISTRATION" in
    # mpa_manage exits with the status itself (1 = completed), so its output decides, not its exit.
    mpa) local out; out=$(mpa_manage -get_registration_status 2>&1 || true)
         if grep -q "completed successfully" <<<"$out"; then echo registered; else echo unregistered; fi ;;
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
  if [ -n "$TDX_APT_URI" ]; then
    fact apt_source "$(apt_line)"
    [ "$(cat "$APT_LIST" 2>/dev/null)" = "$(apt_line)" ] ||
      unmet "the DCAP apt repository" "$APT_LIST with \"$(apt_line)\"" "$([ -f "$APT_LIST" ] && echo "another line" || echo "no file")" \
        "apply writes it with Intel's signing key and runs apt-get update"
    [ -s "$APT_KEY" ] || unmet "the DCAP repository's signing key" "$APT_KEY" "no file" "apply downloads it from $TDX_APT_KEY_URL"
    [ -s "$APT_KEY" ] && fact apt_key_sha256 "$(file_sha256 "$APT_KEY")"
  fi
  for pkg in $TDX_PACKAGES; do pkg_installed "$pkg" || missing+=("${pkg%%=*}"); done
  fact_raw packages_missing "$(json_list "${missing[@]}")"
  if [ "${#missing[@]}" -gt 0 ]; then
    unmet "DCAP packages are missing" "$TDX_PACKAGES" "missing ${missing[*]}" "apply installs them with apt-get"
    return 1  # the config files below belong to these packages
  fi

  if [ "$TDX_PCCS_LOCAL" = true ]; then
    # The configuration the package's post-install skipped (non-interactive install).
    [ -d "$PCCS_DIR/node_modules" ] || unmet "PCCS's Node.js modules are not installed" "$PCCS_DIR/node_modules" "none" \
      "apply runs npm install as $PCCS_USER in $PCCS_DIR (the host needs access to an npm registry or mirror)"
    pccs_tls_ok || unmet "PCCS's HTTPS key and certificate" "$PCCS_DIR/ssl_key/private.pem and file.crt, valid 30 more days" \
      "$([ -s "$PCCS_DIR/ssl_key/file.crt" ] && echo "a certificate expiring within 30 days" || echo "none")" \
      "apply makes a self-signed pair for localhost (QPL uses it with use_secure_cert false)"
    local owner; owner=$(stat -c '%U:%G %a' "$PCCS_CONFIG" 2>/dev/null || echo none)
    fact pccs_config_owner "$owner"
    [ "$owner" = "$PCCS_USER:$PCCS_USER 640" ] || unmet "PCCS config ownership" "$PCCS_USER:$PCCS_USER 640 (pccs.service runs as $PCCS_USER)" \
      "$owner" "apply restores the package's owner and mode"
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
         "$([ "$TDX_REGISTRATION" = mpa ] && echo "enable BIOS 'SGX Auto MP Registration' (the BIOS step does for registration: mpa) and see /var/log/mpa_registration.log" || echo "apply runs PCKIDRetrievalTool against the local PCCS")" ;;
  esac
  [ "${#_UNMET[@]}" -eq 0 ]
}

apt_source_current() {
  [ -z "$TDX_APT_URI" ] || { [ "$(cat "$APT_LIST" 2>/dev/null)" = "$(apt_line)" ] && [ -s "$APT_KEY" ]; }
}

# Intel's repository and its key, then `apt-get update` (also without a repository of ours: a
# fresh image's lists are empty).
apt_source() {
  local tmp sha
  if [ -z "$TDX_APT_URI" ]; then
    apt-get update -q >&2 || refuse "apt-get update failed" "the host's apt sources reachable" "an error (see above)" \
      "check /etc/apt/sources.list.d and the host's network or mirror"
    return 0
  fi
  if [ ! -s "$APT_KEY" ]; then
    tmp=$(mktemp)
    curl -fsSL --max-time 60 -o "$tmp" "$TDX_APT_KEY_URL" || { rm -f "$tmp"; refuse "cannot download the DCAP repository key" \
      "$TDX_APT_KEY_URL" "curl failed" "give the host HTTPS access to it, or set aptSource.uri to a mirror in firmware/dcap.yaml"; }
    sha=$(file_sha256 "$tmp")
    if [ -n "$TDX_APT_KEY_SHA256" ] && [ "$sha" != "$TDX_APT_KEY_SHA256" ]; then
      rm -f "$tmp"
      refuse "the DCAP repository key differs from the pin" "sha256 $TDX_APT_KEY_SHA256" "sha256 $sha" \
        "do not trust this key; check the mirror, or update aptSource.keySha256 in firmware/dcap.yaml after review"
    fi
    mkdir -p "$(dirname "$APT_KEY")"; chmod 0644 "$tmp"; mv -f "$tmp" "$APT_KEY"
  fi
  write_file "$APT_LIST" "$(apt_line)"$'\n'
  apt-get update -q >&2 || refuse "apt-get update failed" "the DCAP repository's index for this release" "an error (see above)" \
    "check that $TDX_APT_URI has a suite for this OS release (VERSION_CODENAME in /etc/os-release)"
}

# apt's error, with the fix for the known cause: sgx-dcap-pccs 1.27+ depends on nodejs >= 22.13,
# which Ubuntu 24.04 does not carry.
apt_fix() {
  case "$1" in
    *"Depends: nodejs"*) echo "sgx-dcap-pccs needs a newer Node.js than this OS offers: add a Node.js 22 apt source, or pin packages.pccs.version in firmware/dcap.yaml to a DCAP release whose nodejs dependency this OS meets (1.26 needs >= 18.17)" ;;
    *"Unable to locate package"*) echo "add the DCAP repository (aptSource in firmware/dcap.yaml) or the distribution's DCAP packages to the host's apt sources" ;;
    *) echo "fix the apt error shown above, then run pulumi up again" ;;
  esac
}

configure_pccs() {
  if [ ! -d "$PCCS_DIR/node_modules" ]; then
    (cd "$PCCS_DIR" && runuser -u "$PCCS_USER" -- npm install --engine-strict --no-audit --no-fund --omit=dev >&2) || refuse \
      "npm install of PCCS failed" "$PCCS_DIR/node_modules" "npm failed (see above)" \
      "give the host access to an npm registry or mirror (npm config set registry URL as user $PCCS_USER), or a Node.js that meets package.json's engines"
  fi
  if ! pccs_tls_ok; then
    mkdir -p "$PCCS_DIR/ssl_key"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 -subj "/CN=localhost" \
      -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$PCCS_DIR/ssl_key/private.pem" \
      -out "$PCCS_DIR/ssl_key/file.crt" 2>/dev/null
    chown -R "$PCCS_USER:$PCCS_USER" "$PCCS_DIR/ssl_key"; chmod 0600 "$PCCS_DIR/ssl_key/private.pem"
  fi
  chown "$PCCS_USER:$PCCS_USER" "$PCCS_CONFIG"; chmod 0640 "$PCCS_CONFIG"
}

apply() {
  local pkg missing=() restart=false out
  for pkg in $TDX_PACKAGES; do pkg_installed "$pkg" || missing+=("$pkg"); done
  if [ "${#missing[@]}" -gt 0 ] || ! apt_source_current; then
    apt_source
  fi
  if [ "${#missing[@]}" -gt 0 ]; then
    # --force-confold: our edits to PCCS's default.json (a dpkg conffile) must not stop an upgrade at
    # dpkg's conffile question.
    if ! out=$(DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Options::=--force-confold "${missing[@]}" 2>&1); then
      printf '%s\n' "$out" >&2
      refuse "cannot install DCAP packages" "${missing[*]} from the configured apt sources" \
        "$(grep -m1 -E '^E: |Depends: ' <<<"$out" | sed 's/^ *//' || echo "apt-get failed")" "$(apt_fix "$out")"
    fi
    printf '%s\n' "$out" >&2
    mkdir -p "$(dirname "$INSTALLED_LIST")"
    printf '%s\n' "${missing[@]%%=*}" >>"$INSTALLED_LIST"
  fi
  if [ "$TDX_PCCS_LOCAL" = true ]; then
    local pccs_changed=false
    configure_pccs
    json_config set "$PCCS_CONFIG" "HTTPS_PORT=$TDX_PCCS_PORT" 'hosts="127.0.0.1"' 'CachingFillMode="LAZY"' && pccs_changed=true
    if ! TDX_SECRET="$TDX_PCCS_API_KEY" json_config secret-matches "$PCCS_CONFIG" ApiKey TDX_SECRET; then
      TDX_SECRET="$TDX_PCCS_API_KEY" json_config set-secret "$PCCS_CONFIG" ApiKey TDX_SECRET
      pccs_changed=true
    fi
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

pckid_fix() {
  case "$1" in
    *"password is not correct"*) echo "the PCCS user token does not match UserTokenHash: remove $PCCS_USER_TOKEN and run pulumi up again" ;;
    *"network error"*) echo "PCCS did not answer PCKIDRetrievalTool: check journalctl -u $TDX_SERVICE_PCCS" ;;
    *) echo "check the CPU is production silicon and PCCS reaches Intel PCS with the ApiKey" ;;
  esac
}

register() {
  local out
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
      # The tool exits 0 even when the upload failed ("Error: the data couldn't be sent to cache
      # server!"), so its success line decides.
      # The token goes in on stdin, where the tool reads it when -user_token is absent (a 0600
      # file as input: it never shows on a command line). It ends with the newline the tool waits for.
      out=$(PCKIDRetrievalTool -url "https://127.0.0.1:$TDX_PCCS_PORT" -use_secure_cert "$TDX_USE_SECURE_CERT" \
        <"$PCCS_USER_TOKEN" 2>&1) || true
      printf '%s\n' "$out" >&2
      grep -q "sent to cache server successfully" <<<"$out" || refuse "PCKIDRetrievalTool did not register the platform" \
        "\"the data has been sent to cache server successfully!\"" "$(grep -m1 '^Error: ' <<<"$out" || echo "no success line")" \
        "$(pckid_fix "$out")"
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
  rm -f "$INSTALLED_LIST" "$PCCS_USER_TOKEN" /var/lib/tdxgpu/pckid-registered "$APT_LIST" "$APT_KEY"
  fact_raw removed_packages "$(json_list "${pkgs[@]}")"
  fact left_in_place "platform registration with Intel (it belongs to the CPU, not to this host's software)"
}
