# Guest image recipe parameters, sourced by tools/build-guest-image.sh. Changing anything here or
# in this directory changes the recipe hash (the slow test's cache key) and, in general, the
# artifacts' digests: re-pin firmware/td/*.yaml afterwards (docs/guest-image.md).

# Debian release of the root filesystem. The kernel comes from ${SUITE}-backports (see KERNEL_*).
SUITE=trixie

# Kernel: Debian's cloud flavour from trixie-backports. 7.x has tdx_guest + configfs-tsm
# (TSM_REPORTS) and the RTMR sysfs extend ABI (TSM_MEASUREMENTS, Linux >= 6.16); trixie's own 6.12
# lacks the latter. The cloud flavour is a quarter of the generic one's size (modules: 23 vs 106 MB
# unpacked) and has everything a virtio TD guest needs; use KERNEL_FLAVOUR=amd64 if a GPU driver ever
# needs a subsystem it leaves out. The ABI name is pinned here and the package versions in
# packages.lock; `--update-lock` does not move the ABI, edit it here.
KERNEL_FLAVOUR=cloud-amd64
KERNEL_ABI=7.3.4+deb13
KERNEL_SUITE=${SUITE}-backports

# Fixed build timestamp (reproducible-builds.org SOURCE_DATE_EPOCH): file mtimes, squashfs and
# cpio times. Bump it together with packages.lock.
SOURCE_DATE_EPOCH=1764028800   # 2025-11-25T00:00:00Z

# Top-level packages (versions come from packages.lock, which lists the whole closure).
PACKAGES=(
  systemd systemd-sysv udev kmod
  iproute2 e2fsprogs dmsetup busybox-static
  ca-certificates   # Mozilla's roots as Debian ships them: HTTPS model sources (modelSource)
  python3 python3-aiohttp python3-h11 python3-cryptography python3-yaml
  "linux-binary-${KERNEL_ABI}-${KERNEL_FLAVOUR}"
  "linux-modules-${KERNEL_ABI}-${KERNEL_FLAVOUR}"
)

# Root filesystem compression (squashfs, zstd). Level 9 compresses a rootfs in seconds where the
# default (15) takes ~45 s on 2 CPUs, for a ~5% larger image (80.5 vs 76.8 MB); decompression
# speed is the same.
SQUASHFS_ZSTD_LEVEL=9

# Kernel modules the hand-written initramfs loads (dependencies are resolved at build time).
INITRAMFS_MODULES=(virtio_pci virtio_blk dm_mod dm_verity dm_crypt aesni_intel squashfs overlay ext4)

# Kernel command line. __ROOTHASH__ and __VERITY__ are filled in by the build.
#   tdx_vllm.roothash  dm-verity root hash of the root filesystem (hex, sha256)
#   tdx_vllm.verity    <data blocks>,<hash start block>,<salt hex> (4096-byte blocks, no superblock)
# A `tdx_vllm.` namespace, not `roothash=`: systemd's veritysetup generator in the real root would
# otherwise try to set up the (already open) verity root a second time.
CMDLINE_BASE="console=ttyS0 panic=-1 tdx_vllm.roothash=__ROOTHASH__ tdx_vllm.verity=__VERITY__"
