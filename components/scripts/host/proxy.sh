# proxy.sh: the verifying proxy (`tdxattest proxy`) for one TD, as a systemd unit on the client's proxy
# host, with the stack's pins (components/render/proxy.py renders the values and both unit texts).
#
# Two phases in one `pulumi up` (TDX_PROXY_PHASE), so that a pin rollover never refuses the live TD:
#   accept  the desired pins become pins.json; deployed pins that differ move to retiring.json and
#           the unit accepts both (TDX_PROXY_UNIT_ROLLING). Runs before any TD changes.
#   retire  retiring.json goes; the unit accepts the desired pins only (TDX_PROXY_UNIT_CURRENT).
#           Runs after every TD reports ready.
#
# check: tdxattest is installed at the pinned version, the pins, TLS files and unit are the rendered
# ones, the running proxy was started from them (a stamp written at restart), the unit is enabled and
# active, and it accepts connections on its listen address.
#
# Parameters: TDX_PROXY_PHASE, TDX_PROXY_TD, TDX_PROXY_DIR, TDX_PROXY_UNIT, TDX_PROXY_UNIT_CURRENT,
# TDX_PROXY_UNIT_ROLLING, TDX_PROXY_PINS, TDX_PROXY_PYTHON, TDX_PROXY_VERSION, TDX_PROXY_LISTEN_HOST,
# TDX_PROXY_LISTEN_PORT, TDX_PROXY_AUDIT_DIR, TDX_PROXY_CACHE_DIR, TDX_PROXY_TLS_CERT and
# TDX_PROXY_TLS_KEY (a secret; empty: no TLS), TDX_PROXY_WAIT (seconds to wait for the listener).

UNIT_FILE="/etc/systemd/system/$TDX_PROXY_UNIT"
PINS="$TDX_PROXY_DIR/pins.json"
RETIRING="$TDX_PROXY_DIR/retiring.json"
STAMP="$TDX_PROXY_DIR/started"

# The unit this phase wants: with the retiring pins while there are any (accept), else without.
wanted_unit() {
  if [ "$TDX_PROXY_PHASE" = accept ] && [ -f "$RETIRING" ]; then
    printf '%s' "$TDX_PROXY_UNIT_ROLLING"
  else
    printf '%s' "$TDX_PROXY_UNIT_CURRENT"
  fi
}

# What the running proxy must have been started from (the key by digest only).
desired_stamp() {
  local retiring=""
  [ ! -f "$RETIRING" ] || retiring=$(cat "$RETIRING")
  text_sha256 "$(wanted_unit)"$'\n'"$TDX_PROXY_PINS"$'\n'"$retiring"$'\n'"$TDX_PROXY_TLS_CERT"$'\n'"$(text_sha256 "$TDX_PROXY_TLS_KEY")"
}

# Does anything accept TCP connections on the listen address (a wildcard address is dialled on
# loopback)? Waits up to TDX_PROXY_WAIT seconds: a restarted proxy takes a moment to bind.
listening() {
  "$TDX_PROXY_PYTHON" - "$TDX_PROXY_LISTEN_HOST" "$TDX_PROXY_LISTEN_PORT" "${TDX_PROXY_WAIT:-15}" <<'PY'
import socket
import sys
import time

host, port, wait = sys.argv[1].strip("[]"), int(sys.argv[2]), float(sys.argv[3])
host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
deadline = time.monotonic() + wait
while True:
    try:
        socket.create_connection((host, port), timeout=2).close()
        sys.exit(0)
    except OSError:
        if time.monotonic() >= deadline:
            sys.exit(1)
        time.sleep(0.2)
PY
}

check() {
  local version active enabled
  fact unit "$TDX_PROXY_UNIT"; fact phase "$TDX_PROXY_PHASE"; fact td "$TDX_PROXY_TD"
  fact listen "$TDX_PROXY_LISTEN_HOST:$TDX_PROXY_LISTEN_PORT"; fact_raw tls "$([ -n "$TDX_PROXY_TLS_CERT" ] && echo true || echo false)"
  [ -x "$TDX_PROXY_PYTHON" ] || refuse "the proxy's Python is missing" "$TDX_PROXY_PYTHON with tdxattest $TDX_PROXY_VERSION" \
    "no such executable" "on the proxy host: python3 -m venv ${TDX_PROXY_PYTHON%/bin/*} && ${TDX_PROXY_PYTHON%/*}/pip install ./tdxattest (from this checkout), or set proxy.python"
  version=$("$TDX_PROXY_PYTHON" -c 'import importlib.metadata as m; print(m.version("tdxattest"))' 2>/dev/null || true)
  fact tdxattest_version "${version:-none}"
  [ "$version" = "$TDX_PROXY_VERSION" ] || refuse "the proxy host's tdxattest is not this checkout's" \
    "tdxattest $TDX_PROXY_VERSION in $TDX_PROXY_PYTHON" "${version:-no tdxattest}" \
    "${TDX_PROXY_PYTHON%/*}/pip install ./tdxattest (from this checkout) on the proxy host"
  fact pins_sha256 "$(text_sha256 "$TDX_PROXY_PINS")"
  fact_raw retiring "$([ -f "$RETIRING" ] && echo true || echo false)"

  [ "$(cat "$PINS" 2>/dev/null)"$'\n' = "$TDX_PROXY_PINS" ] || unmet "the proxy's pins" "$PINS with the stack's pins (sha256 $(text_sha256 "$TDX_PROXY_PINS"))" \
    "$([ -f "$PINS" ] && echo "sha256 $(file_sha256 "$PINS")" || echo "no file")" "apply writes them (the deployed pins are kept as retiring until the TDs are ready)"
  if [ "$TDX_PROXY_PHASE" = retire ] && [ -f "$RETIRING" ]; then
    unmet "retiring pins are still accepted" "only the current pins" "$RETIRING (sha256 $(file_sha256 "$RETIRING"))" \
      "apply drops them: every TD reported ready with the current pins"
  fi
  if [ -n "$TDX_PROXY_TLS_CERT" ]; then
    [ "$(cat "$TDX_PROXY_DIR/tls.crt" 2>/dev/null)"$'\n' = "$TDX_PROXY_TLS_CERT" ] || unmet "the proxy's TLS certificate" \
      "proxy.tls.certificate" "another or no $TDX_PROXY_DIR/tls.crt" "apply writes it"
    [ "$(file_sha256 "$TDX_PROXY_DIR/tls.key")" = "$(text_sha256 "$TDX_PROXY_TLS_KEY")" ] || unmet "the proxy's TLS key" \
      "proxy.tls.privateKey" "another or no $TDX_PROXY_DIR/tls.key" "apply writes it (mode 0600)"
  fi
  [ "$(cat "$UNIT_FILE" 2>/dev/null)" = "$(wanted_unit)" ] || unmet "unit file $UNIT_FILE" \
    "the rendered unit (sha256 $(text_sha256 "$(wanted_unit)"))" \
    "$([ -f "$UNIT_FILE" ] && echo "sha256 $(file_sha256 "$UNIT_FILE")" || echo "no file")" "apply writes it"
  enabled=$(systemctl is-enabled "$TDX_PROXY_UNIT" 2>/dev/null || true)
  active=$(systemctl is-active "$TDX_PROXY_UNIT" 2>/dev/null || true)
  fact state "${active:-unknown}"
  [ "$enabled" = enabled ] || unmet "$TDX_PROXY_UNIT enabled" enabled "${enabled:-unknown}" "apply enables it"
  [ "$active" = active ] || unmet "$TDX_PROXY_UNIT running" active "${active:-unknown}" \
    "apply starts it; if it stops again, read its log: journalctl -u $TDX_PROXY_UNIT"
  [ "$(cat "$STAMP" 2>/dev/null)" = "$(desired_stamp)" ] || unmet "the running proxy's configuration" \
    "started from the files above" "started from other files, or never" "apply restarts it"
  if [ "$active" = active ]; then
    listening || unmet "the proxy listening on $TDX_PROXY_LISTEN_HOST:$TDX_PROXY_LISTEN_PORT" "a TCP listener" \
      "none after ${TDX_PROXY_WAIT:-15} s" "read its log: journalctl -u $TDX_PROXY_UNIT (another service on that port?)"
  fi
  [ "${#_UNMET[@]}" -eq 0 ]
}

apply() {
  mkdir -p "$TDX_PROXY_DIR" "$TDX_PROXY_AUDIT_DIR" "$TDX_PROXY_CACHE_DIR"
  chmod 0755 "$TDX_PROXY_DIR"
  chmod 0700 "$TDX_PROXY_AUDIT_DIR" "$TDX_PROXY_CACHE_DIR"
  if [ "$TDX_PROXY_PHASE" = accept ]; then
    # The deployed pins, when they differ, stay accepted until the retire phase: the live TD is
    # measured by them until it is replaced.
    if [ -f "$PINS" ] && [ "$(cat "$PINS")"$'\n' != "$TDX_PROXY_PINS" ]; then
      mv -f "$PINS" "$RETIRING"
      fact retired_pins_sha256 "$(file_sha256 "$RETIRING")"
    fi
  else
    rm -f "$RETIRING"
  fi
  write_file "$PINS" "$TDX_PROXY_PINS"
  if [ -n "$TDX_PROXY_TLS_CERT" ]; then
    write_file "$TDX_PROXY_DIR/tls.crt" "$TDX_PROXY_TLS_CERT"
    (umask 077; printf '%s' "$TDX_PROXY_TLS_KEY" >"$TDX_PROXY_DIR/tls.key.new")
    mv -f "$TDX_PROXY_DIR/tls.key.new" "$TDX_PROXY_DIR/tls.key"
  else
    rm -f "$TDX_PROXY_DIR/tls.crt" "$TDX_PROXY_DIR/tls.key"
  fi
  write_file "$UNIT_FILE" "$(wanted_unit)"
  systemctl daemon-reload
  systemctl enable "$TDX_PROXY_UNIT" >/dev/null 2>&1
  systemctl restart "$TDX_PROXY_UNIT"
  desired_stamp >"$STAMP"
}

remove() {
  systemctl disable --now "$TDX_PROXY_UNIT" >/dev/null 2>&1 || true
  rm -f "$UNIT_FILE"
  rm -rf "$TDX_PROXY_DIR"
  systemctl daemon-reload
  fact_raw removed_paths "$(json_list "$UNIT_FILE" "$TDX_PROXY_DIR")"
  fact left_in_place "the audit logs under $TDX_PROXY_AUDIT_DIR"
}
