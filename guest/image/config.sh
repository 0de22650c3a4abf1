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
  podman crun       # the agent runs vLLM with `podman run --device nvidia.com/gpu=all` (CDI, below)
  "linux-binary-${KERNEL_ABI}-${KERNEL_FLAVOUR}"
  "linux-modules-${KERNEL_ABI}-${KERNEL_FLAVOUR}"
)

# --- The NVIDIA GPU driver: one pin (docs/guest-image.md, "The GPU driver") ------------------------
# To swap it (e.g. NVIDIA's own R570+ packages, which B200 needs): change DRIVER_VERSION, DRIVER_CUDA
# and DRIVER_APT_SOURCES (plus DRIVER_KEYRING for a non-Debian archive), add
# guest/image/nvidia/<version>/series with the patches that version needs against the kernel
# above (an empty series is fine), run `--update-lock`, then re-pin firmware/td/ and
# firmware/gpu/*.yaml. Nothing else in the recipe names a driver version.
#
# The driver version as the driver reports it (nvidia-smi, NVML): the upstream part of every driver
# package's version. --update-lock prefers, for every package, the highest version `$DRIVER_VERSION-*`
# the sources below offer (an apt pin), so the whole driver comes from one release.
DRIVER_VERSION=550.163.01
# The newest CUDA runtime this driver serves (NVIDIA's CUDA toolkit release notes, "CUDA Driver"
# table: CUDA 12.4 needs >= 550.54.14, 12.5 needs >= 555.42.02). The stack config refuses a vLLM
# image built for a newer CUDA (workload.cudaVersion).
DRIVER_CUDA=12.4
# The driver's apt sources, one-line format without `deb` and options: URI SUITE [COMPONENT...].
# `@debian` / `@debian-security` are the build's Debian mirror and security archive (--mirror,
# --security-mirror), signed by the Debian archive keyring; any other URI is signed by
# DRIVER_KEYRING (a keyring file in guest/image/). Debian carries the driver in contrib, non-free
# and non-free-firmware; trixie-backports has the revision whose open modules know Linux >= 6.17.
DRIVER_APT_SOURCES=(
  "@debian ${SUITE} contrib non-free non-free-firmware"
  "@debian ${SUITE}-updates contrib non-free non-free-firmware"
  "@debian ${SUITE}-backports contrib non-free non-free-firmware"
  "@debian-security ${SUITE}-security contrib non-free non-free-firmware"
)
DRIVER_KEYRING=
# Userspace in the image, each at `$DRIVER_VERSION-*` (the build refuses a lock where one is not):
# NVML (the agent's GPU evidence), nvidia-smi, the CUDA driver library vLLM loads, the persistence
# daemon (UVM persistence mode, which CC needs) and the GSP firmware the open modules boot the GPU
# with.
DRIVER_PACKAGES=(libnvidia-ml1 nvidia-smi libcuda1 nvidia-persistenced firmware-nvidia-gsp)
# From the driver's sources but versioned on their own: nvidia-modprobe (loads the modules and makes
# the /dev/nvidia* nodes; one version serves every driver, trixie has 570.133.07).
DRIVER_TOOLS=(nvidia-modprobe)
# The package that ships the open kernel module source (a tarball or a tree under /usr/src holding
# conftest.sh). It is installed only where the modules are built, never in the image.
DRIVER_MODULE_SOURCE=nvidia-open-kernel-source
# The modules built and put in the image: CUDA needs these two (no display: no nvidia-modeset,
# nvidia-drm; no GPUDirect RDMA: no nvidia-peermem).
DRIVER_MODULES=(nvidia nvidia-uvm)
# What the module build needs besides the image's packages: the kernel's headers (and through
# them its compiler), make, a libc for the compiler's sanity check, binutils, patch, xz.
MODULE_BUILD_PACKAGES=(
  "linux-headers-${KERNEL_ABI}-${KERNEL_FLAVOUR}"
  make libc6-dev binutils patch xz-utils
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
