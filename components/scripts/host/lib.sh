# lib.sh: the frame every host step runs in (sourced ahead of the step's own script by
# components/steps.py, so a step file only defines `check` and `apply`, and optionally
# `runtime_check` for steps whose effect needs a reboot).
#
# Phases: check (read-only; exit 0 when already in the desired state) -> apply (only when check
# failed) -> verify (check again). stdout carries exactly one JSON object of observed facts;
# human-readable progress and errors go to stderr. Secrets arrive as shell variables in the
# rendered preamble and are never printed.
set -euo pipefail
export LC_ALL=C
umask 077

declare -A _FACTS=()
_FACT_ORDER=()
_UNMET=()

# fact KEY VALUE: record a string fact.
fact() { _fact_raw "$1" "$(json_str "$2")"; }
# fact_raw KEY JSON: record a fact that is already JSON (number, bool, array, object).
fact_raw() { _fact_raw "$1" "$2"; }
_fact_raw() {
  [[ -v "_FACTS[$1]" ]] || _FACT_ORDER+=("$1")
  _FACTS[$1]=$2
}

json_str() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  s=${s//$'\t'/\\t}
  s=$(printf '%s' "$s" | tr -d '\000-\010\013\014\016-\037')
  printf '"%s"' "$s"
}

# json_list A B C -> ["A","B","C"]
json_list() {
  local out="" x
  for x in "$@"; do out+="${out:+,}$(json_str "$x")"; done
  printf '[%s]' "$out"
}

# unmet WHAT EXPECTED SEEN FIX: the desired state is not there yet (apply may fix it).
unmet() {
  _UNMET+=("$1; expected $2, seen $3; fix: $4")
  return 1
}

# refuse WHAT EXPECTED SEEN FIX: a problem apply cannot fix; stop now with the fix.
refuse() {
  printf 'error: %s: %s; expected %s, seen %s; fix: %s\n' "$TDX_STEP" "$1" "$2" "$3" "$4" >&2
  _emit false false
  exit 1
}

_emit() {
  local ok=$1 changed=$2 body="" k
  body+="\"step\":$(json_str "$TDX_STEP"),\"ok\":$ok,\"changed\":$changed"
  for k in "${_FACT_ORDER[@]}"; do body+=",$(json_str "$k"):${_FACTS[$k]}"; done
  printf '{%s}\n' "$body"
}

_fail_unmet() {
  local phase=$1 line
  for line in "${_UNMET[@]}"; do
    printf 'error: %s (%s): %s\n' "$TDX_STEP" "$phase" "$line" >&2
  done
  _emit false "${2:-false}"
  exit 1
}

have() { command -v "$1" >/dev/null 2>&1; }
boot_id() { cat /proc/sys/kernel/random/boot_id; }
file_sha256() { sha256sum "$1" 2>/dev/null | awk '{print $1}'; }      # empty when unreadable
text_sha256() { printf '%s' "$1" | sha256sum | awk '{print $1}'; }
pci_driver() { basename "$(readlink "/sys/bus/pci/devices/$1/driver" 2>/dev/null || echo none)"; }  # BDF -> driver

# read_msr VAR ADDR [HIGH LOW]: set VAR to the MSR of CPU 0 (or its bit field), in decimal.
# Runs in the calling shell so an unreadable MSR refuses the step instead of reading as 0.
read_msr() { _read_msr refuse "$@"; }

# read_msr_or_fault VAR ADDR [HIGH LOW]: as read_msr, but an MSR the CPU refuses to read (#GP,
# msr-tools' "cannot read MSR") sets VAR to "fault": some MSRs exist only once a BIOS setting is
# on (0x87 needs TME-MT), and the caller names that setting. Lockdown and a missing msr module
# still refuse, with their own fix.
read_msr_or_fault() { _read_msr fault "$@"; }

_read_msr() {
  local on_fault=$1 var=$2 addr=$3 raw
  shift
  have rdmsr || refuse "rdmsr is missing" "msr-tools installed" "no rdmsr" "the host-tools step installs msr-tools; run pulumi up again"
  modprobe msr 2>/dev/null || true
  raw=$(rdmsr -p 0 -0 "$addr" 2>&1 | tr 'A-F' 'a-f') || true
  if [ "$on_fault" = fault ] && [[ "$raw" == *"cannot read MSR"* ]]; then
    printf -v "$var" '%s' fault
    return 0
  fi
  [[ "$raw" =~ ^[0-9a-f]{16}$ ]] || refuse "cannot read MSR $addr" "16 hex digits from rdmsr" "${raw:-nothing}" \
    "$(msr_fix "$raw")"
  local value=$((16#${raw:0:8} << 32 | 16#${raw:8:8}))
  # Fields are at most 32 bits wide here; the mask also drops the sign bash's shift carries.
  [ $# -eq 4 ] && value=$(( (value >> $4) & ((1 << ($3 - $4 + 1)) - 1) ))
  printf -v "$var" '%s' "$value"
}

# The fix for an rdmsr failure, by its cause: msr-tools prints "open: ..." when /dev/cpu/0/msr
# cannot be opened (no module, no root, lockdown) and "cannot read MSR" when the CPU faults.
msr_fix() {
  case "$1" in
    *"cannot read MSR"*) echo "the CPU does not implement this MSR in its current BIOS configuration: apply the BIOS settings first (the bios step names them)" ;;
    *"Operation not permitted"*) echo "kernel lockdown blocks MSR reads: boot without lockdown (Secure Boot integrity mode) or allow msr access" ;;
    *) echo "run as root with the msr module loaded (modprobe msr)" ;;
  esac
}

# Write FILE atomically with CONTENT (mode 0644) unless it already holds exactly that.
write_file() {
  local file=$1 content=$2 tmp
  mkdir -p "$(dirname "$file")"
  tmp=$(mktemp "$file.XXXXXX")
  printf '%s' "$content" >"$tmp"
  chmod 0644 "$tmp"
  mv -f "$tmp" "$file"
}

# A command that fails while changing the host ends the step with the command, its status and
# the facts so far, instead of a bare non-zero exit.
_on_error() {
  printf 'error: %s (%s): `%s` failed with exit status %s; fix: correct the cause shown above on the host, then run pulumi up again\n' \
    "$TDX_STEP" "$1" "$2" "$3" >&2
  _emit false true
  exit 1
}
_trap_errors() { set -E; trap '_on_error '"$1"' "$BASH_COMMAND" "$?"' ERR; }

_run_step() {
  _UNMET=()
  if check; then _emit true false; return 0; fi
  if [ "${TDX_MODE:-apply}" = check ]; then _fail_unmet check; fi
  printf '%s: applying (%d change%s)\n' "$TDX_STEP" "${#_UNMET[@]}" "$([ "${#_UNMET[@]}" = 1 ] || echo s)" >&2
  _UNMET=()
  _trap_errors apply
  apply
  trap - ERR
  _UNMET=()
  if check; then _emit true true; return 0; fi
  _fail_unmet verify true
}

# Reboot only when the running system does not show the step's effect yet. The listener is
# stopped first so the wait step cannot reach the old boot; open sessions (this one) survive.
_reboot() {
  fact boot_id "$(boot_id)"
  _UNMET=()
  if runtime_check; then fact_raw rebooting false; _emit true false; return 0; fi
  local why; why=$(printf '%s | ' "${_UNMET[@]}")
  printf '%s: rebooting: %s\n' "$TDX_STEP" "${why% | }" >&2
  _trap_errors reboot
  systemd-run --quiet --on-active="${TDX_REBOOT_DELAY:-3}" --unit="tdxgpu-reboot-$(date +%s)" systemctl reboot
  systemctl stop ssh.socket ssh.service >/dev/null 2>&1 || true
  fact_raw rebooting true
  _emit true true
}

# After a reboot: the boot id must have changed, then the step's runtime check must pass
# within TDX_WAIT_TIMEOUT seconds (services may still be starting when SSH answers).
_wait() {
  local now; now=$(boot_id)
  fact boot_id "$now"
  if [ "${TDX_REBOOTING:-false}" = true ] && [ "$now" = "${TDX_PREV_BOOT_ID:-}" ]; then
    refuse "the host did not reboot" "a new boot id" "the old boot id $now" \
      "check the console; a reboot was scheduled with systemd-run and may have been blocked"
  fi
  local deadline=$((SECONDS + ${TDX_WAIT_TIMEOUT:-600}))
  while :; do
    _UNMET=()
    if runtime_check; then _emit true false; return 0; fi
    if ((SECONDS >= deadline)); then _fail_unmet "after reboot, ${TDX_WAIT_TIMEOUT:-600}s"; fi
    sleep "${TDX_WAIT_POLL:-5}"
  done
}

# On `pulumi destroy`: the step's `remove` undoes what its apply installed and names it
# (`removed_paths`, `removed_packages`) and what it keeps (`left_in_place`); a step without one
# deliberately leaves the host as it is, and says so.
_delete() {
  if declare -F remove >/dev/null; then
    _trap_errors delete
    remove
    trap - ERR
  else
    fact left_in_place "everything this step did (it has nothing to remove)"
  fi
  _emit true true
}

# `python -m components status`: the read-only phases only (check, and runtime_check where the
# step has one), never apply; the facts say whether the host is in sync and list what is not.
_status() {
  local in_sync=true
  _UNMET=()
  check || in_sync=false
  if declare -F runtime_check >/dev/null; then runtime_check || in_sync=false; fi
  fact_raw in_sync "$in_sync"
  fact_raw unmet "$(json_list "${_UNMET[@]}")"
  _emit true false
}

tdx_main() {
  case "${TDX_ACTION:-run}" in
    run) _run_step ;;
    status) _status ;;
    reboot) _reboot ;;
    wait) _wait ;;
    delete) _delete ;;
    *) echo "error: unknown TDX_ACTION ${TDX_ACTION}" >&2; exit 2 ;;
  esac
}
