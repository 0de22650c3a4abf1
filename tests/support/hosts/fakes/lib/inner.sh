#!/usr/bin/env bash
# inner.sh: PID 1 of one fake TDX host. NamespaceHost (tests/support/hosts/nshost.py) runs it as
#   ip netns exec NS unshare --mount --uts --pid --fork --kill-child --mount-proc --propagation private \
#     bash inner.sh BASE STATE FAKEBIN LIB HOSTNAME ROMMODE ROMSPECS
# so every mount below is private to this host and every process it starts dies with it.
# It fakes the hardware facts (bind mounts from the state dir over /proc and /sys files), makes the
# directories the scripts write copy-on-write (overlays whose upper dirs live under BASE), puts the
# fake tools first on PATH (overlay on /usr/local/bin), serves the GPU ROMs, starts sshd, then
# stays as init: reaping orphans until the host is torn down.
set -euo pipefail
BASE=$1 STATE=$2 FAKEBIN=$3 LIB=$4 HOST=$5 ROMMODE=$6 ROMSPECS=$7

readlink /proc/self/ns/pid >"$STATE/run/pidns"

# Hardware and boot facts.
mount --bind "$STATE/boot/cpuinfo" /proc/cpuinfo
mount --bind "$STATE/boot/cmdline" /proc/cmdline
mount --bind "$STATE/boot/boot_id" /proc/sys/kernel/random/boot_id
mount --bind "$STATE/boot/osrelease" /proc/sys/kernel/osrelease
mount --bind "$STATE/sysfs/module" /sys/module
mount --bind "$STATE/sysfs/firmware" /sys/firmware
mount --bind "$STATE/sysfs/iommu_groups" /sys/kernel/iommu_groups
mount --bind "$STATE/sysfs/pci_devices" /sys/bus/pci/devices
# No TEE-IO: hide the PCI TSM class and Intel's tdx_host TSM device should this kernel have them.
if [ -d /sys/class/tsm ]; then mount -t tmpfs -o size=4k,mode=0755 tdxfake-notsm /sys/class/tsm; fi
if [ -e /sys/devices/faux/tdx_host ]; then mount -t tmpfs -o size=4k,mode=0755 tdxfake-nofaux /sys/devices/faux; fi

# Copy-on-write views: the real machine's files are never changed. The upper dirs live on a tmpfs
# private to this host (seeded from BASE/ovl), so any filesystem under BASE works.
mount -t tmpfs -o mode=0755,size=1g tdxfake-ovl "$BASE/ovl-live"
cp -a "$BASE/ovl/." "$BASE/ovl-live/"
for d in etc opt var/lib tmp root usr/local/sbin; do  # usr/local/sbin: where the fake apt-get installs package tools
  n=${d//\//_}
  mount -t overlay "tdxfake-$n" -o "lowerdir=/$d,upperdir=$BASE/ovl-live/$n/upper,workdir=$BASE/ovl-live/$n/work" "/$d"
done
mount --bind "$STATE" /var/lib/tdxfake  # the mount point was created in the var_lib upper dir
mount -t overlay tdxfake-bin -o "lowerdir=$FAKEBIN:/usr/local/bin" /usr/local/bin
mount -t tmpfs -o mode=0755,size=16m tdxfake-run /run
mkdir -p /run/sshd
hostname "$HOST"

# The GPUs' expansion ROMs with sysfs semantics (FUSE, or named pipes without /dev/fuse); the server
# is kept alive across simulated reboots.
: >"$STATE/run/keep.pids"
if [ -n "$ROMSPECS" ]; then
  # shellcheck disable=SC2086
  python3 -B "$LIB/romfs.py" $([ "$ROMMODE" = fifo ] && echo --fifo) "$STATE/run/romfs.ready" $ROMSPECS 2>>"$BASE/romfs.log" &
  echo $! >>"$STATE/run/keep.pids"
  for _ in $(seq 200); do [ -s "$STATE/run/romfs.ready" ] && break; sleep 0.02; done
  [ -s "$STATE/run/romfs.ready" ] || { echo "inner: the ROM server did not start" >&2; exit 1; }
fi

/usr/sbin/sshd -t -f "$(dirname "$STATE")/state/sshd/sshd_config"
TDXFAKE_STATE="$STATE" python3 -B -c 'import sys; sys.path.insert(0, sys.argv[1]); import tdxfake; tdxfake.start_sshd()' "$FAKEBIN"
echo ok >"$STATE/run/ready"

# init: reap whatever gets reparented to us until the host is torn down.
trap '' TERM INT HUP
while :; do
  sleep 3600 &
  wait $! || true
done
