# td_launch.sh: the Trust Domain as a systemd unit running the rendered QEMU command
# (components/td_definition.py): the guest agent's config (served to the TD as fw_cfg
# opt/tdx-vllm/agent.json), the unit file, the GPUs bound to vfio-pci, the unit enabled and started.
#
# check: QEMU with TDX is installed, the staged artifacts still match their pins, the GPUs are on
# vfio-pci, the unit file and agent config are exactly the rendered ones, the running TD was started
# from them (a stamp written at start), and the unit is enabled and active.
#
# Parameters: TDX_TD_NAME, TDX_TD_DIR, TDX_UNIT, TDX_UNIT_TEXT, TDX_AGENT_CONFIG_PATH, TDX_AGENT_CONFIG,
# TDX_ARTIFACTS (`<staged name> <file> <sha256>` lines), TDX_QEMU, TDX_GPU_BDFS (space-separated),
# TDX_STAGE_URN (the td-stage resource, for the fix), TDX_SERIAL_LOG, TDX_GATEWAY_PORT, TDX_TD_TDX (false: a dev VM without TDX), TDX_DATA_DISK (path, empty: none) and TDX_DATA_DISK_GIB (its size:
# a sparse file; the guest formats it under a fresh dm-crypt key at every boot, so nothing on it survives).

UNIT_FILE="/etc/systemd/system/$TDX_UNIT"
STAMP="$TDX_TD_DIR/launched"
# The GPUs stay on vfio-pci across host reboots: driver_override is lost at boot, so vfio-pci claims
# the pinned PCI ids when it loads (its ids= option, vfio_pci_fill_ids) and loads at boot
# (modules-load.d), ahead of nvidia/nouveau (softdep). tests/fixtures/host/gpu/vfio-binding.md.
VFIO_MODPROBE=/etc/modprobe.d/tdxgpu-vfio.conf
VFIO_LOAD=/etc/modules-load.d/tdxgpu-vfio.conf

# vendor:device of the TD's GPUs, from sysfs ("10de:2330"), once each.
gpu_pci_ids() {
  local bdf ids=() id
  for bdf in $TDX_GPU_BDFS; do
    id="$(sed 's/^0x//' "/sys/bus/pci/devices/$bdf/vendor" 2>/dev/null):$(sed 's/^0x//' "/sys/bus/pci/devices/$bdf/device" 2>/dev/null)"
    [[ " ${ids[*]} " == *" $id "* ]] || ids+=("$id")
  done
  local IFS=,; printf '%s' "${ids[*]}"
}

# vfio_modprobe_content IDS: the modprobe.d file for these PCI ids.
vfio_modprobe_content() {
  printf '# Managed by tdx-vllm (Pulumi): the TD GPUs stay on vfio-pci across reboots. Do not edit.\n'
  printf 'options vfio-pci ids=%s\nsoftdep nvidia pre: vfio-pci\nsoftdep nouveau pre: vfio-pci\n' "$1"
}

# What the running TD must have been started from: the unit text and the agent config.
desired_stamp() { text_sha256 "$TDX_UNIT_TEXT"$'\n'"$TDX_AGENT_CONFIG"; }

check() {
  local name file sha seen bdf drv version status enabled
  fact unit "$TDX_UNIT"; fact unit_sha256 "$(text_sha256 "$TDX_UNIT_TEXT")"; fact serial_log "$TDX_SERIAL_LOG"
  fact_raw gateway_port "$TDX_GATEWAY_PORT"
  [ -x "$TDX_QEMU" ] || refuse "QEMU is missing" "$TDX_QEMU" "no such executable" \
    "install QEMU with TDX support (Ubuntu 25.10+/26.04: apt-get install qemu-system-x86)"
  version=$("$TDX_QEMU" --version 2>/dev/null | head -n1 || true)
  fact qemu_version "${version:-unknown}"
  fact_raw tdx "${TDX_TD_TDX:-true}"
  # TDX_TD_TDX=false: the dev stack's plain VM under TCG (workload.td.tdx: false), no tdx-guest needed.
  [ "${TDX_TD_TDX:-true}" = false ] || "$TDX_QEMU" -object help 2>/dev/null | grep -qw tdx-guest || refuse "QEMU cannot run a TD" \
    "the tdx-guest object in $TDX_QEMU -object help" "${version:-unknown version} without tdx-guest" \
    "install a QEMU with TDX (upstream >= 10.1, or the distribution's TDX build)"

  # The staged artifacts: td-stage checked them; refuse if they changed since (nothing here fetches).
  while read -r name file sha; do
    [ -n "$name" ] || continue
    seen=$(file_sha256 "$TDX_TD_DIR/$name")
    [ "$seen" = "$sha" ] || refuse "staged TD artifact $TDX_TD_DIR/$name ($file) changed" "sha256 $sha" \
      "$([ -n "$seen" ] && echo "sha256 $seen" || echo "no file")" "find out who changed it, then stage the pinned files again: pulumi up --replace '${TDX_STAGE_URN:-<the td-stage resource>}'"
  done <<<"$TDX_ARTIFACTS"

  local gpus_json=""
  for bdf in $TDX_GPU_BDFS; do
    [ -e "/sys/bus/pci/devices/$bdf" ] || refuse "GPU $bdf is not on this host" "PCI device $bdf (from preflight)" \
      "no /sys/bus/pci/devices/$bdf" "check the GPUs' seating (lspci -D -d 10de:)"
    drv=$(pci_driver "$bdf")
    gpus_json+="${gpus_json:+,}{\"bdf\":$(json_str "$bdf"),\"driver\":$(json_str "$drv")}"
    case "$drv" in
      vfio-pci) ;;
      nvidia|nouveau) refuse "GPU $bdf is held by the host driver $drv" "vfio-pci" "$drv" \
        "blacklist nvidia/nouveau on the host (platform.extraKernelArgs modprobe.blacklist=nouveau,nvidia) and reboot" ;;
      *) unmet "GPU $bdf driver" vfio-pci "$drv" "apply binds it to vfio-pci" ;;
    esac
  done
  fact_raw gpus "[$gpus_json]"
  if [ -n "$TDX_GPU_BDFS" ]; then
    local ids; ids=$(gpu_pci_ids)
    fact vfio_ids "$ids"
    [ "$(cat "$VFIO_MODPROBE" 2>/dev/null)" = "$(vfio_modprobe_content "$ids")" ] && [ "$(cat "$VFIO_LOAD" 2>/dev/null)" = vfio-pci ] ||
      unmet "the GPUs' vfio-pci binding at boot" "$VFIO_MODPROBE (ids=$ids) and $VFIO_LOAD" "not both" \
        "apply writes them, so a host reboot brings the TD back with its GPUs"
  fi

  if [ -n "$TDX_DATA_DISK" ]; then
    local want=$((TDX_DATA_DISK_GIB * 1024 * 1024 * 1024)) size
    size=$(stat -c %s "$TDX_DATA_DISK" 2>/dev/null || echo none)
    [ "$size" = "$want" ] || unmet "data disk $TDX_DATA_DISK" "$want bytes (${TDX_DATA_DISK_GIB} GiB, sparse)" "$size" \
      "apply creates it (free space under $TDX_TD_DIR is needed as the guest writes)"
  fi

  [ "$(file_sha256 "$UNIT_FILE")" = "$(text_sha256 "$TDX_UNIT_TEXT")" ] ||
    unmet "unit $UNIT_FILE" "the rendered TD definition (sha256 $(text_sha256 "$TDX_UNIT_TEXT"))" \
      "$([ -f "$UNIT_FILE" ] && echo "sha256 $(file_sha256 "$UNIT_FILE")" || echo "no file")" "apply writes it and restarts the TD"
  [ "$(file_sha256 "$TDX_AGENT_CONFIG_PATH")" = "$(text_sha256 "$TDX_AGENT_CONFIG")" ] ||
    unmet "agent config $TDX_AGENT_CONFIG_PATH" "the rendered config" "a different or no file" "apply writes it and restarts the TD"
  [ "$(cat "$STAMP" 2>/dev/null)" = "$(desired_stamp)" ] ||
    unmet "the running TD's definition" "started from this unit and agent config" "started from another (or never)" \
      "apply restarts the TD"
  enabled=$(systemctl is-enabled "$TDX_UNIT" 2>/dev/null || true)
  status=$(systemctl is-active "$TDX_UNIT" 2>/dev/null || true)
  fact enabled "${enabled:-unknown}"; fact active "${status:-unknown}"
  [ "$enabled" = enabled ] || unmet "unit $TDX_UNIT enabled" enabled "${enabled:-unknown}" "apply enables it"
  [ "$status" = active ] || unmet "unit $TDX_UNIT" active "${status:-unknown}" \
    "apply starts it; if it does not stay up see journalctl -u $TDX_UNIT and $TDX_SERIAL_LOG"
  [ "${#_UNMET[@]}" -eq 0 ]
}

bind_vfio() {
  local bdf drv
  [ -n "$TDX_GPU_BDFS" ] || return 0
  modprobe vfio-pci >&2
  for bdf in $TDX_GPU_BDFS; do
    drv=$(pci_driver "$bdf")
    [ "$drv" = vfio-pci ] && continue
    [ "$drv" = none ] || echo "$bdf" >"/sys/bus/pci/devices/$bdf/driver/unbind"
    echo vfio-pci >"/sys/bus/pci/devices/$bdf/driver_override"
    echo "$bdf" >/sys/bus/pci/drivers_probe
  done
}

apply() {
  if [ -n "$TDX_GPU_BDFS" ]; then
    write_file "$VFIO_MODPROBE" "$(vfio_modprobe_content "$(gpu_pci_ids)")"$'\n'
    write_file "$VFIO_LOAD" "vfio-pci"$'\n'
  fi
  bind_vfio
  mkdir -p "$TDX_TD_DIR"
  if [ -n "$TDX_DATA_DISK" ]; then
    rm -f "$TDX_DATA_DISK"
    truncate -s "${TDX_DATA_DISK_GIB}G" "$TDX_DATA_DISK"
    chmod 0600 "$TDX_DATA_DISK"
  fi
  write_file "$TDX_AGENT_CONFIG_PATH" "$TDX_AGENT_CONFIG"
  write_file "$UNIT_FILE" "$TDX_UNIT_TEXT"
  systemctl daemon-reload >&2
  # QEMU truncates the serial log at start; removing it first means no status line of an earlier
  # TD can be read as this one's.
  rm -f "$TDX_SERIAL_LOG"
  systemctl enable "$TDX_UNIT" >&2
  systemctl restart "$TDX_UNIT" >&2
  write_file "$STAMP" "$(desired_stamp)"
}

# On destroy (and before a replacement launches the new TD): stop the TD and remove its unit and
# config. The GPUs stay on vfio-pci (no host driver may take them in a CC deployment).
remove() {
  systemctl disable --now "$TDX_UNIT" >&2 || true
  rm -f "$UNIT_FILE" "$TDX_AGENT_CONFIG_PATH" "$STAMP" ${TDX_DATA_DISK:+"$TDX_DATA_DISK"} "$VFIO_MODPROBE" "$VFIO_LOAD"
  systemctl daemon-reload >&2 || true
  fact removed_paths "$UNIT_FILE $TDX_AGENT_CONFIG_PATH"
  fact left_in_place "GPUs bound to vfio-pci until the next reboot; the staged artifacts and serial log (removed by td-stage on destroy)"
}
