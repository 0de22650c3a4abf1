# td_wait.sh (read-only): wait until the TD's guest agent reports `ready` on the serial console,
# bounded by TDX_TD_READY_TIMEOUT seconds, and check that it serves the expected workload manifest
# with the expected RTMR3. Fails at once when the agent refuses or fails (with its reason) or when
# the TD is no longer running.
#
# The agent (docs/guest-agent.md) writes its verdict to the serial console (QEMU -serial file:...),
# each line starting with TDX_AGENT_PREFIX (guest_agent.REPORT_PREFIX):
#   tdx-vllm-agent: {"state": "ready", "stack": ..., "rtmr3": "<96 hex>", "endpoint": ..., ...}
#   tdx-vllm-agent: {"state": "refused", "step": "model", "reason": "..."}   (or "failed")
# Other states (progress) are waited through; a `manifestSha384`, when reported, must match too.
# The serial console passes through the host, so this is a health check, not attestation: clients
# verify the TD's quote against the `pins` output (docs/trust-domain.md).
#
# Parameters: TDX_TD_NAME, TDX_UNIT, TDX_SERIAL_LOG, TDX_EXPECTED_MANIFEST_SHA384, TDX_EXPECTED_RTMR3,
# TDX_TD_READY_TIMEOUT, TDX_WAIT_POLL, TDX_LAUNCH_DIGEST (only ties this wait to its launch).

SEP=$'\x1f'

# The last agent line of the serial log as state SEP reason SEP manifestSha384 SEP rtmr3 SEP step SEP
# quoteSource ("none" if none).
agent_status() {
  python3 - "$TDX_SERIAL_LOG" "$TDX_AGENT_PREFIX" <<'PY'
import json
import sys

prefix, last = sys.argv[2], None
try:
    with open(sys.argv[1], "rb") as fh:
        for raw in fh:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            at = line.find(prefix)
            if at < 0:
                continue
            try:
                doc = json.loads(line[at + len(prefix):])
            except ValueError:
                continue
            if isinstance(doc, dict):
                last = doc
except OSError:
    pass
if last is None:
    print("none")
else:
    def clean(value):
        return " ".join(str("" if value is None else value).split())[:400].replace("\x1f", " ")
    print("\x1f".join(clean(last.get(k)) for k in ("state", "reason", "manifestSha384", "rtmr3", "step", "quoteSource")))
PY
}

check() {
  local deadline=$((SECONDS + TDX_TD_READY_TIMEOUT)) start=$SECONDS state reason digest rtmr3 step source active
  fact unit "$TDX_UNIT"; fact serial_log "$TDX_SERIAL_LOG"
  while :; do
    IFS="$SEP" read -r state reason digest rtmr3 step source <<<"$(agent_status)" || true
    fact state "${state:-none}"
    case "$state" in
      ready) break ;;
      refused|failed)
        refuse "the TD's guest agent $state to serve${step:+ (step $step)}" "state ready" "$state: ${reason:-no reason given}" \
          "fix what the agent names (full log: $TDX_SERIAL_LOG on the host), then run pulumi up again" ;;
    esac
    active=$(systemctl is-active "$TDX_UNIT" 2>/dev/null || true)
    case "$active" in
      active|activating|reloading) ;;
      *) refuse "the TD is not running" "unit $TDX_UNIT active" "${active:-unknown} (last agent state: ${state:-none})" \
           "see journalctl -u $TDX_UNIT and $TDX_SERIAL_LOG on the host" ;;
    esac
    if ((SECONDS >= deadline)); then
      unmet "the TD's guest agent did not report ready within ${TDX_TD_READY_TIMEOUT}s" \
        "a 'tdx-vllm-agent: {\"state\":\"ready\",...}' line in $TDX_SERIAL_LOG" "last agent state ${state:-none}" \
        "see $TDX_SERIAL_LOG on the host; raise workload.td.readyTimeoutSeconds if the model download is slow"
      return 1
    fi
    sleep "${TDX_WAIT_POLL:-5}"
  done
  fact rtmr3 "$rtmr3"; fact_raw waited_s "$((SECONDS - start))"
  # tsm: quotes from the TDX module; software-test: the dev stack's VM without TDX (TEST quotes).
  fact quote_source "${source:-unknown}"
  [ -z "$digest" ] || [ "$digest" = "$TDX_EXPECTED_MANIFEST_SHA384" ] || refuse "the TD serves another workload manifest" \
    "manifestSha384 $TDX_EXPECTED_MANIFEST_SHA384" "${digest:-none}" \
    "the agent config on the host was changed or is stale: run pulumi up again (td-launch rewrites it)"
  [ "$rtmr3" = "$TDX_EXPECTED_RTMR3" ] || refuse "the TD's RTMR3 differs from the pin" "rtmr3 $TDX_EXPECTED_RTMR3" \
    "${rtmr3:-none}" "the agent must extend RTMR3 with the manifest digest only; clients would refuse this TD"
  return 0
}
