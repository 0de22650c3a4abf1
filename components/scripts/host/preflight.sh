# preflight.sh: read-only facts about the host, and a refusal (with the fix) when the hardware can
# never run a confidential GPU TD. Nothing here changes the host; settings that later steps fix
# (BIOS, kernel, GPU mode) are reported as facts, not failures.
#
# Parameters: TDX_GPU_COUNT (GPUs the stack expects), TDX_GPU_DEVICE_IDS (space-separated PCI device
# ids of the pinned SKU), TDX_TEE_IO (true|false), TDX_TEE_IO_BIOS (vendor TDX Connect attributes known,
# space-separated; empty when the vendor table names none), TDX_OS (platform.os, e.g. ubuntu-26.04;
# empty: not checked).

# Family 6 models with TDX (canonical/tdx attestation/check-production.sh; Intel TDX enabling guide).
declare -A TDX_CPU_MODELS=([143]="Sapphire Rapids" [207]="Emerald Rapids" [173]="Granite Rapids" [175]="Sierra Forest")

cpu_field() { awk -F': *' -v k="$1" '$1 ~ "^"k"[ \t]*$" {print $2; exit}' /proc/cpuinfo; }

check() {
  local vendor family model name flags
  vendor=$(cpu_field vendor_id); family=$(cpu_field "cpu family"); model=$(cpu_field model)
  name=$(cpu_field "model name"); flags=" $(cpu_field flags) "
  fact cpu_vendor "$vendor"; fact cpu_model_name "$name"; fact_raw cpu_family "${family:-0}"; fact_raw cpu_model "${model:-0}"
  if [ "$vendor" != GenuineIntel ] || [ "$family" != 6 ] || [ -z "${TDX_CPU_MODELS[$model]:-}" ]; then
    refuse "CPU does not support Intel TDX" "an Intel Xeon with TDX (family 6, model 143/207/173/175)" \
      "$vendor family $family model $model ($name)" "use a 4th/5th Gen Xeon Scalable or Xeon 6 host"
  fi
  fact cpu_generation "${TDX_CPU_MODELS[$model]}"
  case "$flags" in *" tdx_host_platform "*) fact_raw tdx_host_platform true ;; *) fact_raw tdx_host_platform false ;; esac

  # Production silicon: pre-production parts cannot produce quotes that verify against Intel's PCS.
  # (SGX's debug-unlock MSR 0x503 is checked by bios-verify: before the BIOS phases turn SGX on it
  # may not be readable.)
  local fuse ucode
  read_msr fuse 0xce 27 27; read_msr ucode 0x8b 63 32
  fact_raw production_silicon "$([ "$fuse" = 0 ] && [ "$((ucode >> 31))" = 0 ] && echo true || echo false)"
  fact microcode "$(printf '0x%x' "$ucode")"
  [ "$fuse" = 0 ] || refuse "pre-production CPU (MSR 0xCE bit 27 set)" "production silicon" "a pre-production part" \
    "use production CPUs; pre-production parts only register with Intel's sandbox PCS"
  [ "$((ucode >> 31))" = 0 ] || refuse "pre-production microcode (MSR 0x8B MSB set)" "production microcode" \
    "$(printf '0x%x' "$ucode")" "update the BIOS to a release with production microcode"

  # What the OS and kernel are (kernel settings are fixed later; this is for the outputs).
  fact kernel "$(cat /proc/sys/kernel/osrelease)"
  local os; os="$( . /etc/os-release; echo "${ID:-unknown}-${VERSION_ID:-unknown}")"
  fact os "$os"
  # The stack was written for platform.os (a release whose kernel has TDX host support and for
  # which Intel ships DCAP): a host on another release is refused before anything changes on it,
  # instead of ending `ready` on an OS nobody chose.
  [ -z "${TDX_OS:-}" ] || [ "$os" = "$TDX_OS" ] || refuse "the host runs another OS than the stack says" \
    "platform.os $TDX_OS" "$os (/etc/os-release)" \
    "set platform.os: $os in the stack if that release is supported (python -m components.config lists them), or reinstall the host with $TDX_OS"
  fact boot_id "$(boot_id)"

  # GPUs of the pinned SKU.
  local line bdf id gpus=() gpu_json=""
  have lspci || refuse "lspci is missing" "pciutils installed" "no lspci" "apt-get install -y pciutils"
  while read -r bdf _ id _; do
    id=${id#10de:}
    for want in ${TDX_GPU_DEVICE_IDS:-}; do
      if [ "$id" = "$want" ]; then gpus+=("$bdf"); gpu_json+="${gpu_json:+,}{\"bdf\":$(json_str "$bdf"),\"device_id\":$(json_str "$id")}"; fi
    done
  done < <(lspci -D -n -d 10de: 2>/dev/null)
  fact_raw gpus "[$gpu_json]"
  if [ "${#gpus[@]}" -lt "${TDX_GPU_COUNT:-0}" ]; then
    refuse "too few GPUs of the pinned model" "${TDX_GPU_COUNT} with PCI id 10de:{${TDX_GPU_DEVICE_IDS// /,}}" \
      "${#gpus[@]}" "check gpu.model/gpu.count in the stack, or the GPUs' seating (lspci -d 10de:)"
  fi

  tee_io_check
  return 0
}

# TEE-IO (TDX Connect) is enabled only where every piece really exists; otherwise refuse and list
# what is missing. Upstream Linux carries the PCI TSM core (6.19) but not Intel's tdx_host TSM driver.
tee_io_check() {
  local tsm=false tdx_host=false bios=false missing=()
  compgen -G "/sys/class/tsm/tsm*" >/dev/null && tsm=true
  [ -e /sys/devices/faux/tdx_host ] && tdx_host=true
  [ -n "${TDX_TEE_IO_BIOS:-}" ] && bios=true
  fact_raw tee_io "{\"requested\":${TDX_TEE_IO:-false},\"pci_tsm\":$tsm,\"tdx_host_tsm\":$tdx_host,\"bios_attributes_known\":$bios,\"enabled\":false}"
  [ "${TDX_TEE_IO:-false}" = true ] || return 0
  $tsm || missing+=("the PCI TSM interface (/sys/class/tsm, Linux >= 6.19 with CONFIG_PCI_TSM)")
  $tdx_host || missing+=("Intel's tdx_host TSM driver (/sys/devices/faux/tdx_host; not in upstream Linux yet)")
  $bios || missing+=("TDX Connect BIOS attributes for this vendor (none known in firmware/bios/)")
  if [ "${#missing[@]}" -gt 0 ]; then
    local IFS=';'
    refuse "TEE-IO (TDX Connect) requested but not available" "PCI TSM + tdx_host TSM + TDX Connect BIOS support" \
      "missing: ${missing[*]}" "set teeIo: false (GPUs then use CC bounce-buffer mode), or use a platform and kernel with TDX Connect"
  fi
  fact_raw tee_io "{\"requested\":true,\"pci_tsm\":true,\"tdx_host_tsm\":true,\"bios_attributes_known\":true,\"enabled\":true}"
}
