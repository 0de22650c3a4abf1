#!/usr/bin/env bash
# The Debian packages the tests and the demo drive for real, installed when missing (as root):
# OpenSSH servers in network namespaces and what the production scripts call on a host (pip for
# the gpu-admin-tools wheel, curl for PCCS); the guest image build (debootstrap, squashfs, verity)
# and QEMU to boot it; a C compiler for the stand-in libnvidia-ml.so.1 of the agent's NVML tests.
# Usage: tools/install-debian-packages.sh      (facts on stdout: {"installed": [...]})
set -euo pipefail

need=()
for pkg in openssh-server openssh-client iproute2 python3-pip curl util-linux \
           debootstrap debian-archive-keyring squashfs-tools cryptsetup-bin cpio zstd xz-utils qemu-system-x86 \
           gcc libc6-dev; do
  dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "$0: missing Debian packages ${need[*]}; fix: run as root (apt-get installs them)" >&2
    exit 1
  fi
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
list=""
for pkg in "${need[@]}"; do list+="${list:+, }\"$pkg\""; done
printf '{"installed": [%s]}\n' "$list"
