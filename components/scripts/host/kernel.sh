# kernel.sh: the kernel command line for TDX hosts, through a GRUB drop-in, then (after the
# reboot step) the running kernel must show KVM's TDX support initialised.
#
# Parameters: TDX_KERNEL_ARGS (space-separated), TDX_MODULE_VERSIONS (optional pin: the releases the
# host may run, space-separated, e.g. "1.5.16", or "1.5.28 1.5.34" during an upgrade),
# TDX_MODULE_BUILDS (version=build for the pinned releases whose build number
# firmware/tdx-module.yaml knows, e.g. "1.5.06=744").
#
# The kernel's TDX lines, by version (tests/fixtures/host/kernel/README.md has the format strings):
#   Linux >= 7.1:   virt/tdx: Module version: 1.5.16 ... virt/tdx: TDX-Module initialized
#   Linux <= 7.0:   virt/tdx: module initialized (no version line)
#   Ubuntu 25.10:   virt/tdx: TDX module 1.5.06.00, build number 744, build date 0134d817
#   Ubuntu 6.8:     virt/tdx: TDX module: attributes 0x0, vendor_id 0x8086, major_version 1,
#                   minor_version 5, build_date 20240725, build_num 784 (no update version)
#   Ubuntu 6.5:     the same lines with the older "tdx: " prefix
# and mainline's sysfs /sys/devices/faux/tdx_host/version ("1.5.16") where the kernel has it.

GRUB_DROPIN=/etc/default/grub.d/90-tdxgpu.cfg

dropin_content() {
  printf '# Managed by tdx-vllm (Pulumi): kernel arguments for Intel TDX hosts. Do not edit.\n'
  printf 'GRUB_CMDLINE_LINUX_DEFAULT="${GRUB_CMDLINE_LINUX_DEFAULT} %s"\n' "$TDX_KERNEL_ARGS"
}

check() {
  fact grub_dropin "$GRUB_DROPIN"
  fact kernel_args "$TDX_KERNEL_ARGS"
  local want; want=$(dropin_content)
  if [ ! -f "$GRUB_DROPIN" ]; then
    unmet "the GRUB drop-in is missing" "$GRUB_DROPIN" "no file" "apply writes it and runs update-grub"
  elif [ "$(cat "$GRUB_DROPIN")" != "$want" ]; then
    unmet "the GRUB drop-in differs" "args \"$TDX_KERNEL_ARGS\"" "$(grep -o '} .*"' "$GRUB_DROPIN" | tr -d '}"' || true)" \
      "apply rewrites it and runs update-grub"
  fi
  fact_raw reboot_required "$(cmdline_has_args && echo false || echo true)"
  [ "${#_UNMET[@]}" -eq 0 ]
}

apply() {
  # The drop-in is shell that GRUB's scripts source: one line of plain words (the config refuses
  # the rest; this holds for any caller of the step too).
  [[ "$TDX_KERNEL_ARGS" =~ ^[A-Za-z0-9_.,:/+=\ -]*$ ]] || refuse "the kernel arguments hold a character GRUB would interpret" \
    "letters, digits and _ . , : / + = - separated by spaces" "$(printf '%q' "$TDX_KERNEL_ARGS")" \
    "fix platform.extraKernelArgs (python -m components check names the item)"
  have update-grub || refuse "update-grub is missing" "GRUB (grub2-common)" "none" "install GRUB or boot with GRUB"
  write_file "$GRUB_DROPIN" "$(dropin_content)"$'\n'
  if ! update-grub >&2; then
    # Without this the next check would pass on the file alone and the boot entry would never update.
    rm -f "$GRUB_DROPIN"
    refuse "update-grub failed" "a regenerated GRUB configuration" "an error (shown above)" \
      "fix the GRUB configuration error in /etc/default/grub or /etc/default/grub.d/*.cfg, then run pulumi up again"
  fi
}

cmdline_has_args() {
  local cmdline arg; cmdline=" $(cat /proc/cmdline) "
  for arg in $TDX_KERNEL_ARGS; do
    case "$cmdline" in *" $arg "*) ;; *) return 1 ;; esac
  done
}

# After reboot: the running kernel shows the arguments and an initialised TDX module.
runtime_check() {
  local cmdline tdx_param log version=""
  cmdline=$(cat /proc/cmdline)
  fact cmdline "$cmdline"
  cmdline_has_args || unmet "the running kernel lacks TDX arguments" "\"$TDX_KERNEL_ARGS\" in /proc/cmdline" "\"$cmdline\"" \
    "reboot into the updated GRUB entry (check GRUB_DEFAULT if another entry boots)"
  tdx_param=$(cat /sys/module/kvm_intel/parameters/tdx 2>/dev/null || echo missing)
  fact kvm_intel_tdx "$tdx_param"
  log=$(dmesg 2>/dev/null | grep -E '(^|[] ])(virt/)?tdx: ' || true)
  version=$(tdx_module_version "$log")
  fact tdx_module_version "$version"
  [ "$tdx_param" = Y ] || unmet "KVM's TDX support is off" "/sys/module/kvm_intel/parameters/tdx = Y" "$tdx_param" "$(tdx_diagnosis "$log")"
  local initialized=false
  grep -qE '(module|TDX-Module) initialized' <<<"$log" && initialized=true
  if ! $initialized; then
    unmet "the TDX module is not initialised" "'virt/tdx: module initialized' (or 'TDX-Module initialized') in dmesg" \
      "$(tail -n1 <<<"${log:-none}")" "$(tdx_diagnosis "$log")"
  fi
  local pinned=${TDX_MODULE_VERSIONS:-}
  if [ -n "$pinned" ] && ! module_pinned "$version"; then
    if [ -z "$version" ] && $initialized; then
      unmet "the TDX module version cannot be read" "$pinned" "a kernel that logs no module version (Linux 6.16 to 7.0)" \
        "run a kernel that logs it (Linux >= 7.1, Ubuntu >= 25.10, Ubuntu 6.8 with buildNumber pinned), or remove platform.tdxModule (then the quotes' MRSEAM is not pinned either)"
    elif [[ "$version" == *" build "* ]]; then
      unmet "the TDX module version cannot be compared with the pin" "$pinned" "$version" \
        "this kernel logs only major.minor and a build number: add buildNumber to release ${pinned// / or } in firmware/tdx-module.yaml (from the module's release notes) or run a kernel that logs the update version (Linux >= 7.1, Ubuntu >= 25.10)"
    else
      unmet "the TDX module version differs from the pin" "${pinned// / or }" "${version:-unknown}" \
        "install a pinned module (BIOS update, or TDX-SEAM.so in /boot/efi/EFI/TDX/) and reboot, or change platform.tdxModule"
    fi
  fi
  compgen -G "/sys/kernel/iommu_groups/*" >/dev/null || unmet "the IOMMU is off" "entries in /sys/kernel/iommu_groups" "none" \
    "enable VT-d in BIOS and keep intel_iommu=on"
  [ "${#_UNMET[@]}" -eq 0 ]
}

# major.minor.update of the running module: sysfs where the kernel has it, else the kernel log in
# any of the formats above. The Ubuntu 6.8 form has no update version: it matches the pin only
# through the pinned release's build number, else it reads "1.5 build 784".
tdx_module_version() {
  local log=$1 v major minor build
  v=$(cat /sys/devices/faux/tdx_host/version 2>/dev/null || true)
  [[ "$v" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] && { printf '%s' "$v"; return; }
  v=$(sed -nE 's/.*tdx: Module version: ([0-9]+\.[0-9]+\.[0-9]+).*/\1/p' <<<"$log" | head -n1)
  [ -n "$v" ] || v=$(sed -nE 's/.*tdx: TDX module ([0-9]+\.[0-9]+\.[0-9]+)(\.[0-9]+)?,.*/\1/p' <<<"$log" | head -n1)
  if [ -z "$v" ]; then
    read -r major minor build < <(sed -nE 's/.*major_version ([0-9]+), minor_version ([0-9]+),.*build_num ([0-9]+).*/\1 \2 \3/p' <<<"$log" | head -n1) || true
    if [ -n "${build:-}" ]; then
      local pair
      v="$major.$minor build $build"
      for pair in ${TDX_MODULE_BUILDS:-}; do
        if [ "${pair#*=}" = "$build" ] && [[ "${pair%%=*}" == "$major.$minor."* ]]; then
          v=${pair%%=*}
          break
        fi
      done
    fi
  fi
  printf '%s' "$v"
}

# Whether the running module's version is one of TDX_MODULE_VERSIONS.
module_pinned() {
  local running=$1 v
  for v in ${TDX_MODULE_VERSIONS:-}; do
    [ "$v" = "$running" ] && return 0
  done
  return 1
}

# Map the kernel's TDX failure messages to their fix (research: tdx-host-stack.md section 7; the
# format strings: tests/fixtures/host/kernel/README.md).
tdx_diagnosis() {
  local log=$1
  case "$log" in
    *"too few private KeyIDs"*) echo "set the BIOS TME-MT/TDX key split to a non-zero value" ;;
    *"Hibernation support is enabled"*) echo "add nohibernate to the kernel command line" ;;
    *"frame pointer (RBP) clobber bug present"*) echo "upgrade the TDX module (BIOS update, or a newer TDX-SEAM.so): this one has the RBP clobber bug the kernel refuses" ;;
    *"module not loaded"*) echo "enable the BIOS SEAM Loader and power-cycle; if it persists, update the BIOS (SEAMRR lock)" ;;
    *"SEAMCALL"*"failed"*) echo "update the BIOS/TDX module: the module is too old for this kernel" ;;
    *"initialization failed (-5)"*|*"module initialization failed"*|*"TDX-Module initialization failed"*) echo "update the TDX module (platform.tdxModule pin)" ;;
    *"not supported by the host platform"*) echo "enable TDX, TME-MT and the key split in BIOS" ;;
    *"BIOS enabled"*) echo "load kvm_intel with tdx=1 (kernel argument kvm_intel.tdx=1) and check /sys/module/kvm_intel" ;;
    *) echo "enable TDX in BIOS (TME, TME-MT, TDX, SEAM Loader, key split), then boot with kvm_intel.tdx=1" ;;
  esac
}

# On destroy: the kernel arguments stay unless the stack asks to restore them
# (TDX_RESTORE_ON_DESTROY=true); then the drop-in goes and GRUB is regenerated. No reboot: the
# running kernel keeps TDX until the operator reboots.
remove() {
  if [ "${TDX_RESTORE_ON_DESTROY:-false}" != true ]; then
    fact left_in_place "$GRUB_DROPIN (restoreOnDestroy is false)"
    return 0
  fi
  if [ -f "$GRUB_DROPIN" ]; then
    rm -f "$GRUB_DROPIN"
    update-grub >&2
  fi
  fact removed_paths "$GRUB_DROPIN"
  fact left_in_place "the running kernel's TDX arguments until the next reboot"
}
