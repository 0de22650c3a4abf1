# bios_verify.sh: verify from the running host that the BIOS settings for TDX are in effect, by
# reading the MSRs they control. Used after the Redfish phases, and as the only BIOS step on rented
# hosts without BMC access: there a missing setting fails with the exact change to ask for.
#
# Parameters: TDX_BIOS_ASK_<SETTING> = "<display name> = <value>" for the host's vendor table
# (TME, TME_MT, SGX, TDX, SEAM_LOADER, KEY_SPLIT), TDX_BIOS_VENDOR.

# ask CHECK...: the BIOS change(s) to request, from the vendor table's display names.
ask() {
  local check var settings=()
  for check in "$@"; do var="TDX_BIOS_ASK_$check"; settings+=("\"${!var:-$check}\""); done
  local joined; joined=$(printf '%s and ' "${settings[@]}")
  printf 'ask the provider to set BIOS %s (%s table in firmware/bios/), then reboot' "${joined% and }" "${TDX_BIOS_VENDOR:-intel}"
}

check() {
  # IA32_TME_ACTIVATE (0x982): bit 1 = TME enabled; bits 35:32 = KeyID bits for TME-MT.
  local tme keyid_bits seamrr tdx_keys sgx_status sgx_debug flags
  read_msr tme 0x982 1 1; read_msr keyid_bits 0x982 35 32
  # IA32_SEAMRR_PHYS_MASK (0x1401) bit 11: SEAM range enabled (TDX + SEAM loader).
  read_msr seamrr 0x1401 11 11
  # IA32_MKTME_KEYID_PARTITIONING (0x87) bits 63:32: KeyIDs reserved for TDX (the key split). The
  # kernel reads it with rdmsr_safe (arch/x86/virt/vmx/tdx/tdx.c, record_keyid_partitioning): it
  # may fault without TME-MT, and a fault here is reported as TME-MT off.
  read_msr_or_fault tdx_keys 0x87 63 32
  # SGX_AND_MCHECK_STATUS (0xA0): 0 = SGX registration state healthy.
  read_msr sgx_status 0xa0
  flags=" $(awk -F': *' '/^flags/ {print $2; exit}' /proc/cpuinfo) "

  fact_raw tme_enabled "$([ "$tme" = 1 ] && echo true || echo false)"
  fact_raw tme_mt_keyid_bits "$keyid_bits"
  fact_raw seamrr_enabled "$([ "$seamrr" = 1 ] && echo true || echo false)"
  fact_raw tdx_private_keyids "$([ "$tdx_keys" = fault ] && echo 0 || echo "$tdx_keys")"
  fact_raw sgx_mcheck_status "$sgx_status"
  case "$flags" in *" tdx_host_platform "*) fact_raw tdx_host_platform true ;; *) fact_raw tdx_host_platform false ;; esac

  [ "$tme" = 1 ] || unmet "TME is off (MSR 0x982 bit 1)" 1 "$tme" "$(ask TME)"
  [ "$keyid_bits" -gt 0 ] || unmet "TME-MT has no KeyID bits (MSR 0x982 bits 35:32)" ">0" "$keyid_bits" "$(ask TME_MT)"
  case "$flags" in
    *" sgx "*)
      # SGX debug unlock (MSR 0x503): read only once SGX is on, i.e. after the BIOS phases; before
      # that the MSR may not be readable at all.
      read_msr_or_fault sgx_debug 0x503
      fact sgx_debug_msr "$([ "$sgx_debug" = fault ] && echo unreadable || printf '0x%x' "$sgx_debug")"
      [ "$sgx_debug" = fault ] || [ "$sgx_debug" = 0 ] || unmet "SGX is unlocked for debug (MSR 0x503)" 0 \
        "$(printf '0x%x' "$sgx_debug")" "disable SGX debug unlock in BIOS; quotes from a debug-unlocked platform are not trusted"
      ;;
    *) unmet "SGX is off (no sgx CPU flag)" "sgx flag" "none" "$(ask SGX)" ;;
  esac
  [ "$seamrr" = 1 ] || unmet "the SEAM range is not enabled (MSR 0x1401 bit 11)" 1 "$seamrr" "$(ask TDX SEAM_LOADER)"
  if [ "$tdx_keys" = fault ]; then
    unmet "the TDX key split cannot be read (MSR 0x87 faults: TME-MT is off)" "TDX private KeyIDs in MSR 0x87" \
      "a fault reading MSR 0x87" "$(ask TME_MT KEY_SPLIT)"
  elif [ "$tdx_keys" -lt 2 ]; then
    # The kernel needs at least 2 TDX KeyIDs ("too few private KeyIDs available").
    unmet "too few TDX private KeyIDs (MSR 0x87 bits 63:32)" ">=2" "$tdx_keys" "$(ask KEY_SPLIT)"
  fi
  [ "$sgx_status" = 0 ] || unmet "SGX registration state is unhealthy (MSR 0xA0)" 0 "$sgx_status" \
    "run the BIOS's one-shot SGX Factory Reset, then re-register the platform (1861 = corrupt UEFI variables)"
  [ "${#_UNMET[@]}" -eq 0 ]
}
