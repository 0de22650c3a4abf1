#!/usr/bin/env bash
# Build the tdx-vllm TD guest image from Debian packages (recipe: guest/image/, docs/guest-image.md).
#
#   tools/build-guest-image.sh [--stack dev|prod|all] [--out DIR] [--cache DIR]
#                              [--mirror URL] [--security-mirror URL] [--update-lock] [--keep-work]
#   tools/build-guest-image.sh --print-recipe-hash
#   tools/build-guest-image.sh --preflight      # only check that this machine can build (exit 1: why)
#
# Outputs (in DIR, or DIR/<stack> with --stack all): vmlinuz, initrd.img, rootfs.verity.img
# (squashfs, then its dm-verity hash tree at a 4 KiB-aligned offset, no superblock), cmdline.txt
# (the exact QEMU -append text, no trailing newline) and manifest.json (sizes, sha256/sha384, verity
# parameters, package lock digest, the GPU driver, build time).
#
# The NVIDIA driver is one pin in guest/image/config.sh (DRIVER_*): its user space is installed
# from its apt sources like every package, and its open kernel modules are built here against the
# pinned kernel, with the patches in guest/image/nvidia/<driver version>/ (docs/guest-image.md).
#
# Mirror: --mirror / $TDX_VLLM_GUEST_MIRROR, else the first `.../debian` URI in this machine's apt
# sources; the security archive likewise (`.../debian-security`). Use a snapshot archive URL to
# rebuild an old lock after the mirror has moved on. Package versions are pinned in
# guest/image/packages.lock (the image's whole installed closure, then under `[module-build]` what
# the module build adds, name=version); --update-lock re-resolves guest/image/config.sh's package
# lists against the mirror and rewrites it.
#
# Needs root (debootstrap, chroot), debootstrap, mksquashfs (squashfs-tools), veritysetup
# (cryptsetup-bin), cpio, zstd, xz-utils, python3, debian-archive-keyring, and a Debian mirror plus
# its security archive. Downloads, the installed package set and the built driver modules are
# cached in --cache (default $TDX_VLLM_GUEST_CACHE or /var/cache/tdx-vllm-guest).
set -euo pipefail
umask 022  # file modes in the image must not depend on the caller's umask

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RECIPE=$REPO/guest/image
STACK=prod
OUT=
CACHE=${TDX_VLLM_GUEST_CACHE:-/var/cache/tdx-vllm-guest}
MIRROR=${TDX_VLLM_GUEST_MIRROR:-}
SECURITY_MIRROR=${TDX_VLLM_GUEST_SECURITY_MIRROR:-}
UPDATE_LOCK=0
KEEP_WORK=0
PRINT_HASH=0
PREFLIGHT=0
T0=$(date +%s)

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "build-guest-image: error: $*" >&2; exit 1; }
step() { echo "==> [$(( $(date +%s) - T0 ))s] $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --stack) STACK=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    --cache) CACHE=${2:?}; shift 2 ;;
    --mirror) MIRROR=${2:?}; shift 2 ;;
    --security-mirror) SECURITY_MIRROR=${2:?}; shift 2 ;;
    --update-lock) UPDATE_LOCK=1; shift ;;
    --keep-work) KEEP_WORK=1; shift ;;
    --print-recipe-hash) PRINT_HASH=1; shift ;;
    --preflight) PREFLIGHT=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage 2 ;;
  esac
done
case "$STACK" in dev|prod) STACKS=("$STACK") ;; all) STACKS=(prod dev) ;; *) die "--stack must be dev, prod or all" ;; esac

# shellcheck source=../guest/image/config.sh
. "$RECIPE/config.sh"
export SOURCE_DATE_EPOCH
LOCK=$RECIPE/packages.lock
KVER=${KERNEL_ABI}-${KERNEL_FLAVOUR}

# The Python files of the image (guest/image/python-modules), as `<path in the image>` lines; the
# [dev] part only for the dev stack. tdxattest comes from its distribution's src/ directory.
python_files() { # STACK
  awk -v stack="$1" '/^#/ || /^[[:space:]]*$/ { next } /^\[dev\]$/ { dev = 1; next } !dev || stack == "dev" { print }' \
    "$RECIPE/python-modules"
}
python_source() { # PATH-IN-IMAGE -> path in this repository
  case "$1" in tdxattest/*) echo "tdxattest/src/$1" ;; *) echo "$1" ;; esac
}

# The recipe hash: everything that goes into the image from this repository. The slow test keys its
# cached build on it; manifest.json records it.
recipe_hash() {
  (cd "$REPO" && { find guest/image tools/build-guest-image.sh -type f ! -name '*.pyc' ! -path '*/__pycache__/*'
                   python_files dev | while read -r f; do python_source "$f"; done; } | LC_ALL=C sort -u \
    | while read -r f; do printf '%s\0' "$f"; sha256sum < "$f"; done) | sha256sum | cut -d' ' -f1
}
if [ "$PRINT_HASH" = 1 ]; then recipe_hash; exit 0; fi

# --- step 0: preflight ---------------------------------------------------------------------------
step "preflight"
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, mounts)"
for c in debootstrap mksquashfs veritysetup cpio zstd xz python3 chroot flock sha256sum; do
  command -v "$c" >/dev/null || die "missing tool: $c (apt-get install debootstrap squashfs-tools cryptsetup-bin cpio zstd xz-utils)"
done
[ -n "$OUT" ] || OUT=$REPO/artifacts/guest-image
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$KEYRING" ] || die "no $KEYRING (apt-get install debian-archive-keyring)"

# First `.../$1` URI in the machine's apt sources (one-line and deb822 formats).
apt_source_uri() {
  grep -hsE '^[[:space:]]*(deb[[:space:]]|URIs:)' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
      /etc/apt/sources.list.d/*.sources \
    | grep -oE '(https?|file)://[^[:space:]]+' | sed 's:/*$::' | grep -E "/$1\$" | head -n1
}
[ -n "$MIRROR" ] || MIRROR=$(apt_source_uri debian) || true
[ -n "$MIRROR" ] || die "no Debian mirror: pass --mirror URL or set TDX_VLLM_GUEST_MIRROR"
[ -n "$SECURITY_MIRROR" ] || SECURITY_MIRROR=$(apt_source_uri debian-security) || true
[ -n "$SECURITY_MIRROR" ] || die "no Debian security mirror: pass --security-mirror URL or set TDX_VLLM_GUEST_SECURITY_MIRROR"
echo "    mirror: $MIRROR  security: $SECURITY_MIRROR  suite: $SUITE  kernel: $KVER ($KERNEL_SUITE)" >&2
if [ "$PREFLIGHT" = 1 ]; then exit 0; fi

mkdir -p "$CACHE/debs" "$CACHE/chroot" "$CACHE/modules" "$CACHE/work"
exec 9>"$CACHE/.lock"
flock 9 || die "cannot lock $CACHE"
WORK=$(mktemp -d "$CACHE/work/build.XXXXXX")
MOUNTS=()
cleanup() {
  local i
  for (( i=${#MOUNTS[@]}-1; i>=0; i-- )); do umount -l "${MOUNTS[i]}" 2>/dev/null || true; done
  if [ "$KEEP_WORK" = 1 ]; then echo "work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

in_root() { # DIR CMD...: run in the chroot with a clean environment
  local root=$1; shift
  chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 HOME=/root \
    DEBIAN_FRONTEND=noninteractive SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" PYTHONDONTWRITEBYTECODE=1 "$@"
}
bind() { mount "$@"; MOUNTS+=("${@: -1}"); }
unbind_all() {
  local i
  for (( i=${#MOUNTS[@]}-1; i>=0; i-- )); do umount "${MOUNTS[i]}"; done
  MOUNTS=()
}

# --- step 1: the package set (debootstrap + pinned apt install), cached ---------------------------
# packages.lock holds two sets: the image's whole installed closure, then after a `[module-build]`
# line what the chroot that builds the driver's kernel modules adds to it (never in the image).
lock_image() { [ -f "$LOCK" ] && awk '/^\[module-build\]$/ { exit } !/^[[:space:]]*(#|$)/' "$LOCK"; }
lock_build() { [ -f "$LOCK" ] && awk 'f && !/^[[:space:]]*(#|$)/ { print } /^\[module-build\]$/ { f = 1 }' "$LOCK"; }

# The driver's apt sources (config.sh DRIVER_APT_SOURCES) as sources.list lines.
driver_source_lines() {
  local entry uri rest keyring
  for entry in "${DRIVER_APT_SOURCES[@]}"; do
    read -r uri rest <<< "$entry"
    case "$uri" in
      @debian) uri=$MIRROR; keyring=/etc/apt/keyrings/debian.gpg ;;
      @debian-security) uri=$SECURITY_MIRROR; keyring=/etc/apt/keyrings/debian.gpg ;;
      *) keyring=/etc/apt/keyrings/tdx-vllm-driver.gpg ;;
    esac
    echo "deb [signed-by=$keyring] $uri $rest"
  done
}
needs_driver_keyring() { driver_source_lines | grep -q 'tdx-vllm-driver.gpg'; }
if needs_driver_keyring; then
  [ -n "$DRIVER_KEYRING" ] && [ -f "$RECIPE/$DRIVER_KEYRING" ] \
    || die "DRIVER_APT_SOURCES names a non-Debian archive but DRIVER_KEYRING (${DRIVER_KEYRING:-unset}) is not a file in guest/image/; add the archive's signing keyring there and set DRIVER_KEYRING"
fi

# apt sources (the distribution's `main`, the driver's sources), the keyrings, and the driver pin:
# every package's `$DRIVER_VERSION-*` versions are preferred, so --update-lock takes the whole
# driver from one release (the highest Debian revision of it the sources offer).
apt_setup() { # ROOT
  local root=$1
  cat > "$root/etc/apt/sources.list" <<SRC
deb [signed-by=/etc/apt/keyrings/debian.gpg] $MIRROR $SUITE main
deb [signed-by=/etc/apt/keyrings/debian.gpg] $MIRROR $SUITE-updates main
deb [signed-by=/etc/apt/keyrings/debian.gpg] $MIRROR $SUITE-backports main
deb [signed-by=/etc/apt/keyrings/debian.gpg] $SECURITY_MIRROR $SUITE-security main
SRC
  driver_source_lines > "$root/etc/apt/sources.list.d/tdx-vllm-driver.list"
  install -D -m 0644 "$KEYRING" "$root/etc/apt/keyrings/debian.gpg"
  if needs_driver_keyring; then
    install -D -m 0644 "$RECIPE/$DRIVER_KEYRING" "$root/etc/apt/keyrings/tdx-vllm-driver.gpg"
  fi
  mkdir -p "$root/etc/apt/preferences.d"
  printf 'Package: /./\nPin: version %s-*\nPin-Priority: 990\n' "$DRIVER_VERSION" \
    > "$root/etc/apt/preferences.d/tdx-vllm-driver"
}

# linux-* packages come from the kernel's suite.
with_kernel_suite() { local p; for p in "$@"; do case "$p" in linux-*) echo "$p/$KERNEL_SUITE" ;; *) echo "$p" ;; esac; done; }

# install_locked ROOT LOG WHAT EXPECTED PKG=VERSION...: install exactly the pinned versions into ROOT,
# then refuse unless the installed set equals EXPECTED (a file of name=version lines: the pins, and
# for the module build also the image set it starts from).
install_locked() {
  local root=$1 log=$2 what=$3 expected=$4; shift 4
  in_root "$root" "${APT_INSTALL[@]}" --allow-downgrades "$@" >> "$log" 2>&1 \
    || { tail -n 30 "$log" >&2; die "apt-get install of the locked $what failed (mirror moved on? use a snapshot mirror, or --update-lock)"; }
  if ! diff -u <(LC_ALL=C sort "$expected") \
      <(in_root "$root" dpkg-query -W -f '${Package}=${Version}\n' | LC_ALL=C sort) > "$log.diff"; then
    cat "$log.diff" >&2
    die "the installed $what differ from packages.lock (diff above); run --update-lock if intended"
  fi
}

# Every driver package installed at `$DRIVER_VERSION-*`: the one pin says what the image carries.
check_driver_versions() { # ROOT
  local p v bad=()
  for p in "${DRIVER_PACKAGES[@]}"; do
    v=$(in_root "$1" dpkg-query -W -f '${Version}' "$p" 2>/dev/null) || v="(not installed)"
    case "$v" in "$DRIVER_VERSION"-*) ;; *) bad+=("$p=$v") ;; esac
  done
  [ "${#bad[@]}" = 0 ] || die "driver packages not at DRIVER_VERSION $DRIVER_VERSION-*: ${bad[*]}; fix: make DRIVER_APT_SOURCES offer $DRIVER_VERSION for each (config.sh), or set DRIVER_VERSION to what they offer, then --update-lock"
}

APT_INSTALL=(apt-get -q -y -o Dpkg::Use-Pty=0 -o APT::Install-Recommends=false -o APT::Keep-Downloaded-Packages=true install)

# The cache key of the package set: suite, kernel, package lists, driver pin and sources, debootstrap,
# dpkg's path-exclude policy and the lock's image set (with --update-lock, the new lock once it is resolved).
chroot_tar() {
  local key
  key=$( { printf '%s\n' "$SUITE" "$KERNEL_SUITE" "$KVER" "${PACKAGES[@]}" "$DRIVER_VERSION" \
      "${DRIVER_PACKAGES[@]}" "${DRIVER_TOOLS[@]}" "${DRIVER_APT_SOURCES[@]}"; debootstrap --version;
    cat "$RECIPE"/rootfs/etc/dpkg/dpkg.cfg.d/*; lock_image;
    if needs_driver_keyring; then cat "$RECIPE/$DRIVER_KEYRING"; fi; } | sha256sum | cut -c1-16)
  echo "$CACHE/chroot/$SUITE-$key.tar"
}
CHROOT_TAR=
if [ "$UPDATE_LOCK" = 0 ]; then
  [ -f "$LOCK" ] || die "no $LOCK: run once with --update-lock to resolve and pin the package set"
  grep -qx '\[module-build\]' "$LOCK" \
    || die "$LOCK has no [module-build] section (the driver module build's packages); run --update-lock"
  CHROOT_TAR=$(chroot_tar)
fi
if [ -n "$CHROOT_TAR" ] && [ -f "$CHROOT_TAR" ]; then
  step "package set: cached ($CHROOT_TAR)"
else
  BASE=$WORK/base
  step "debootstrap $SUITE (minbase) into $BASE"
  debootstrap --variant=minbase --arch=amd64 --components=main --keyring="$KEYRING" \
    --cache-dir="$CACHE/debs" "$SUITE" "$BASE" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
    || { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log above)"; }

  step "apt sources (driver: $DRIVER_VERSION), dpkg path-excludes (docs, unused files), no service starts"
  install -D -m 0644 -t "$BASE/etc/dpkg/dpkg.cfg.d" "$RECIPE"/rootfs/etc/dpkg/dpkg.cfg.d/*
  apt_setup "$BASE"
  printf '#!/bin/sh\nexit 101\n' > "$BASE/usr/sbin/policy-rc.d"; chmod 755 "$BASE/usr/sbin/policy-rc.d"
  bind -t proc proc "$BASE/proc"
  bind --bind "$CACHE/debs" "$BASE/var/cache/apt/archives"
  in_root "$BASE" apt-get -q update > "$WORK/apt.log" 2>&1 || { tail -n 30 "$WORK/apt.log" >&2; die "apt-get update failed"; }

  if [ "$UPDATE_LOCK" = 1 ]; then
    ALL=("${PACKAGES[@]}" "${DRIVER_PACKAGES[@]}" "${DRIVER_TOOLS[@]}")
    step "resolve and install ${#ALL[@]} packages (kernel from $KERNEL_SUITE, driver $DRIVER_VERSION)"
    mapfile -t pkgs < <(with_kernel_suite "${ALL[@]}")
    in_root "$BASE" "${APT_INSTALL[@]}" "${pkgs[@]}" >> "$WORK/apt.log" 2>&1 \
      || { tail -n 30 "$WORK/apt.log" >&2; die "apt-get install failed"; }
    check_driver_versions "$BASE"
    in_root "$BASE" dpkg-query -W -f '${Package}=${Version}\n' | LC_ALL=C sort > "$WORK/lock.image"
    { echo "# guest/image/packages.lock: every package in the guest root filesystem, name=version."
      echo "# Generated by tools/build-guest-image.sh --update-lock; the build installs exactly this set."
      cat "$WORK/lock.image"; } > "$LOCK.new"
    mv "$LOCK.new" "$LOCK"   # the image set now; the module build's set is appended below
    CHROOT_TAR=$(chroot_tar)
  else
    mapfile -t PINS < <(lock_image)
    step "install the ${#PINS[@]} pinned packages from packages.lock"
    printf '%s\n' "${PINS[@]}" > "$WORK/expect.image"
    install_locked "$BASE" "$WORK/apt.log" "image packages" "$WORK/expect.image" "${PINS[@]}"
    check_driver_versions "$BASE"
  fi
  rm -f "$BASE/usr/sbin/policy-rc.d"
  unbind_all
  step "cache the package set as $CHROOT_TAR"
  tar -C "$BASE" --numeric-owner --xattrs --xattrs-include='security.*' -cf "$CHROOT_TAR.tmp" .
  mv "$CHROOT_TAR.tmp" "$CHROOT_TAR"
  rm -rf "$BASE"
fi

# --- step 1b: the driver's kernel modules, built against the pinned kernel, cached ----------------
# In a chroot of the package set plus the [module-build] packages: the open module source from
# DRIVER_MODULE_SOURCE, patched with guest/image/nvidia/$DRIVER_VERSION/series, built for $KVER at a
# fixed path with a fixed timestamp and without BTF (pahole fails on nvidia-modeset's C++), stripped of
# debug info. Checked: each module's vermagic is the kernel's, and depmod finds every symbol they use
# in the kernel's Module.symvers or in each other.
PATCHES=$RECIPE/nvidia/$DRIVER_VERSION
[ -f "$PATCHES/series" ] || die "no guest/image/nvidia/$DRIVER_VERSION/series: the module patches for driver $DRIVER_VERSION (an empty series if it builds against $KVER as it is); see docs/guest-image.md"
mapfile -t SERIES < <(grep -vE '^[[:space:]]*(#|$)' "$PATCHES/series")
for p in "${SERIES[@]}"; do [ -f "$PATCHES/$p" ] || die "guest/image/nvidia/$DRIVER_VERSION/series lists $p, which is not there"; done

build_modules() { # ROOT OUTDIR
  local root=$1 out=$2 files src tree p m v mods=/build/out/lib/modules/$KVER
  files=$(in_root "$root" dpkg -L "$DRIVER_MODULE_SOURCE") || die "$DRIVER_MODULE_SOURCE is not installed in the module build chroot"
  rm -rf "$root/build"; mkdir -p "$root/build/unpack" "$root$mods/updates/nvidia"
  src=$(printf '%s\n' "$files" | grep -E '^/usr/src/.*\.tar(\.(xz|gz|bz2|zst))?$' | head -n1) || true
  if [ -n "$src" ]; then
    in_root "$root" tar -C /build/unpack -xf "$src"
    tree=$(cd "$root/build/unpack" && find . -name conftest.sh -printf '%h\n' | LC_ALL=C sort)
  else
    tree=$(printf '%s\n' "$files" | grep -E '^/usr/src/.*/conftest\.sh$' | sed 's:/conftest\.sh$::' | LC_ALL=C sort) || true
    if [ "$(printf '%s' "$tree" | grep -c .)" = 1 ]; then cp -a "$root$tree/." "$root/build/unpack/"; tree=.; fi
  fi
  [ "$(printf '%s' "$tree" | grep -c .)" = 1 ] \
    || die "$DRIVER_MODULE_SOURCE: expected one module tree (a directory with conftest.sh) in its /usr/src tarball or tree, found: ${tree:-none}"
  mv "$root/build/unpack/$tree" "$root/build/nvidia"; rm -rf "$root/build/unpack"
  mkdir -p "$root/build/patches"
  for p in "${SERIES[@]}"; do
    cp "$PATCHES/$p" "$root/build/patches/$p"
    in_root "$root" patch -d /build/nvidia -p1 -F0 --no-backup-if-mismatch -s -i "/build/patches/$p" \
      || die "patch $p does not apply to $DRIVER_MODULE_SOURCE's module tree (guest/image/nvidia/$DRIVER_VERSION/)"
  done
  in_root "$root" env KBUILD_BUILD_TIMESTAMP="@$SOURCE_DATE_EPOCH" KBUILD_BUILD_USER=tdx-vllm KBUILD_BUILD_HOST=tdx-vllm \
    make -C /build/nvidia -j"$(nproc)" modules KERNEL_UNAME="$KVER" CONFIG_DEBUG_INFO_BTF_MODULES= \
    NV_KERNEL_MODULES="${DRIVER_MODULES[*]}" > "$WORK/modules.log" 2>&1 \
    || { grep -E 'error:|Error [0-9]' "$WORK/modules.log" | head -n 30 >&2; die "the driver's kernel modules do not build against $KVER (full log: --keep-work, $WORK/modules.log)"; }
  for m in "${DRIVER_MODULES[@]}"; do
    [ -f "$root/build/nvidia/$m.ko" ] || die "the module build made no $m.ko (DRIVER_MODULES in config.sh)"
    in_root "$root" strip --strip-debug -o "$mods/updates/nvidia/$m.ko" "/build/nvidia/$m.ko"
    v=$(in_root "$root" modinfo -F vermagic "$mods/updates/nvidia/$m.ko")
    case "$v" in "$KVER "*) ;; *) die "$m.ko: vermagic '$v', the kernel's begins '$KVER '" ;; esac
  done
  # Every symbol the modules use is exported by the kernel (its Module.symvers) or by one of them.
  touch "$root$mods/modules.order" "$root$mods/modules.builtin" "$root$mods/modules.builtin.modinfo"
  in_root "$root" depmod -b /build/out -e -E "/usr/src/linux-headers-$KVER/Module.symvers" "$KVER" > "$WORK/depmod.log" 2>&1 \
    || { cat "$WORK/depmod.log" >&2; die "depmod failed on the driver's modules"; }
  if grep -E 'unknown symbol|disagrees' "$WORK/depmod.log" >&2; then
    die "the driver's modules use symbols the kernel $KVER does not export (above)"
  fi
  rm -rf "$out"; mkdir -p "$out"
  cp -a "$root$mods/updates/nvidia/." "$out/"
  rm -rf "$root/build"
}

modules_tar() {
  local key
  key=$( { printf '%s\n' "$KVER" "$DRIVER_VERSION" "$DRIVER_MODULE_SOURCE" "${DRIVER_MODULES[@]}";
    lock_image; echo '[module-build]'; lock_build; declare -f build_modules;
    for p in "${SERIES[@]}"; do printf '%s\n' "$p"; cat "$PATCHES/$p"; done; } | sha256sum | cut -c1-16)
  echo "$CACHE/modules/$DRIVER_VERSION-$key.tar"
}
MODULES_TAR=
[ "$UPDATE_LOCK" = 1 ] || MODULES_TAR=$(modules_tar)
if [ -n "$MODULES_TAR" ] && [ -f "$MODULES_TAR" ]; then
  step "driver modules: cached ($MODULES_TAR)"
else
  MB=$WORK/modbuild
  step "module build chroot: the package set plus the [module-build] packages"
  mkdir -p "$MB"
  tar -C "$MB" --numeric-owner -xf "$CHROOT_TAR"
  apt_setup "$MB"
  printf '#!/bin/sh\nexit 101\n' > "$MB/usr/sbin/policy-rc.d"; chmod 755 "$MB/usr/sbin/policy-rc.d"
  bind -t proc proc "$MB/proc"
  bind --bind "$CACHE/debs" "$MB/var/cache/apt/archives"
  in_root "$MB" apt-get -q update > "$WORK/apt-mb.log" 2>&1 || { tail -n 30 "$WORK/apt-mb.log" >&2; die "apt-get update failed (module build chroot)"; }
  in_root "$MB" dpkg-query -W -f '${Package}=${Version}\n' | LC_ALL=C sort > "$WORK/set.image"
  if [ "$UPDATE_LOCK" = 1 ]; then
    mapfile -t pkgs < <(with_kernel_suite "${MODULE_BUILD_PACKAGES[@]}" "$DRIVER_MODULE_SOURCE")
    step "resolve and install the module build's ${#pkgs[@]} packages"
    in_root "$MB" "${APT_INSTALL[@]}" "${pkgs[@]}" >> "$WORK/apt-mb.log" 2>&1 \
      || { tail -n 30 "$WORK/apt-mb.log" >&2; die "apt-get install failed (module build chroot)"; }
    v=$(in_root "$MB" dpkg-query -W -f '${Version}' "$DRIVER_MODULE_SOURCE")
    case "$v" in "$DRIVER_VERSION"-*) ;; *) die "$DRIVER_MODULE_SOURCE=$v is not at DRIVER_VERSION $DRIVER_VERSION-*; fix DRIVER_APT_SOURCES or DRIVER_VERSION (config.sh)" ;; esac
    in_root "$MB" dpkg-query -W -f '${Package}=${Version}\n' | LC_ALL=C sort > "$WORK/set.build"
    changed=$(LC_ALL=C comm -23 "$WORK/set.image" "$WORK/set.build")
    [ -z "$changed" ] || die "installing the module build's packages changed image packages: $changed"
    { echo "[module-build]"
      echo "# Not in the image: what the chroot that builds the driver's kernel modules adds to the set above."
      LC_ALL=C comm -13 "$WORK/set.image" "$WORK/set.build"; } >> "$LOCK"
    MODULES_TAR=$(modules_tar)
  else
    mapfile -t BPINS < <(lock_build)
    step "install the ${#BPINS[@]} pinned module build packages"
    { cat "$WORK/set.image"; printf '%s\n' "${BPINS[@]}"; } > "$WORK/expect.build"
    install_locked "$MB" "$WORK/apt-mb.log" "module build packages" "$WORK/expect.build" "${BPINS[@]}"
  fi
  step "build ${DRIVER_MODULES[*]} $DRIVER_VERSION for $KVER (-j$(nproc))"
  build_modules "$MB" "$WORK/modules"   # with /proc mounted: objtool reads its stack limit there
  unbind_all
  mkdir -p "$CACHE/modules"
  tar -C "$WORK/modules" --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
    -cf "$MODULES_TAR.tmp" .
  mv "$MODULES_TAR.tmp" "$MODULES_TAR"
  rm -rf "$MB" "$WORK/modules"
  step "driver modules cached as $MODULES_TAR"
fi

# --- step 2..6 per stack -------------------------------------------------------------------------
python_snippet_manifest() { # OUTDIR STACK ROOTHASH DATA_BLOCKS HASH_START SALT
  python3 - "$@" <<'PY'
import hashlib, json, os, sys, time
out, stack, roothash, data_blocks, hash_start, salt = sys.argv[1:7]
env = os.environ
# How to get the file, as the pinned manifests' `source` (quoted when a pinned file is missing).
how = "sudo tools/build-guest-image.sh --stack all --out DIR && .venv/bin/python -m components guest-image pin DIR"
files = {}
for name in ("vmlinuz", "initrd.img", "rootfs.verity.img", "cmdline.txt"):
    p = os.path.join(out, name)
    h256, h384 = hashlib.sha256(), hashlib.sha384()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h256.update(chunk); h384.update(chunk)
    files[name] = {"size": os.path.getsize(p), "sha256": h256.hexdigest(), "sha384": h384.hexdigest()}
manifest = {
    "schema": 1,
    "stack": stack,
    "suite": env["SUITE"],
    "kernel": {"release": env["KVER"], "suite": env["KERNEL_SUITE"]},
    "sourceDateEpoch": int(env["SOURCE_DATE_EPOCH"]),
    "packagesLockSha256": env["LOCK_SHA256"],
    "recipeSha256": env["RECIPE_SHA256"],
    "cmdline": open(os.path.join(out, "cmdline.txt")).read(),
    "verity": {
        "rootHash": roothash, "hashAlgorithm": "sha256", "salt": salt,
        "dataBlockSize": 4096, "hashBlockSize": 4096, "dataBlocks": int(data_blocks),
        "hashStartBlock": int(hash_start), "superblock": False,
        "squashfsSize": int(env["SQUASHFS_SIZE"]),
    },
    "files": files,
    # The TD boot manifest sections for this image (firmware/td/*.yaml), with the artifact file
    # names they expect; `python -m components guest-image pin` writes them and copies the files.
    "firmwareTd": {
        "kernel": {"name": "vmlinuz", "version": env["KVER"], "source": f"{how}: vmlinuz (Debian linux-binary-{env['KVER']}, unmodified)",
                   "file": f"tdx-vllm-guest-vmlinuz-{env['KVER']}-{files['vmlinuz']['sha256'][:12]}",
                   **{k: files["vmlinuz"][k] for k in ("size", "sha256", "sha384")}},
        "initrd": {"name": "initrd.img", "version": f"{stack}-{files['initrd.img']['sha256'][:12]}",
                   "source": f"{how}: {stack}/initrd.img",
                   "file": f"tdx-vllm-guest-{stack}-initrd-{files['initrd.img']['sha256'][:12]}.img",
                   **{k: files["initrd.img"][k] for k in ("size", "sha256", "sha384")}},
        "cmdline": {"value": open(os.path.join(out, "cmdline.txt")).read()},
        "rootfs": {"name": "rootfs.verity.img", "version": f"{stack}-{roothash[:12]}",
                   "source": f"{how}: {stack}/rootfs.verity.img (squashfs + dm-verity, "
                             f"root hash {roothash[:12]}… on the command line)",
                   "file": f"tdx-vllm-guest-{stack}-rootfs-{roothash[:12]}.verity.img",
                   **{k: files["rootfs.verity.img"][k] for k in ("size", "sha256", "sha384")}},
        # What the TD's GPUs run: the driver version (NVML's), the newest CUDA it serves, its
        # locked packages and the modules built for the kernel (guest/image/config.sh DRIVER_*).
        "gpuDriver": {"version": env["DRIVER_VERSION"], "cuda": env["DRIVER_CUDA"],
                      "packages": env["DRIVER_LOCKED"].split(),
                      "modules": dict(line.split("=", 1) for line in env["DRIVER_MODULE_SHA256"].split())},
    },
    # Not part of the image: how long this build took (everything above is reproducible).
    "build": {"seconds": int(time.time()) - int(env["T0"]), "finishedAt": int(time.time())},
}
with open(os.path.join(out, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=2, sort_keys=False)
    f.write("\n")
PY
}

build_initramfs() { # ROOTFS STACK DEST
  local root=$1 stack=$2 dest=$3 ir=$WORK/initramfs-$2 m line ko rel lib
  step "[$stack] initramfs: busybox, dmsetup, mke2fs, ${#INITRAMFS_MODULES[@]} modules"
  rm -rf "$ir"; mkdir -p "$ir"/{bin,sbin,etc,proc,sys,dev,run,sysroot,lib/modules,lib64}
  install -m 0755 "$RECIPE/initramfs/init" "$ir/init"
  echo "$stack" > "$ir/etc/tdx-vllm-stack"
  install -m 0755 "$root/usr/bin/busybox" "$ir/bin/busybox"
  for a in $(in_root "$root" busybox --list); do
    [ -e "$ir/bin/$a" ] || ln -s busybox "$ir/bin/$a"
  done
  for b in /usr/sbin/dmsetup /usr/sbin/mke2fs; do
    install -m 0755 "$root$b" "$ir/sbin/${b##*/}"
    in_root "$root" ldd "$b" | grep -oE '/[^ ]+\.so[^ ]*' | while read -r lib; do
      mkdir -p "$ir$(dirname "$lib")"
      cp -L "$root$lib" "$ir$lib"
    done
  done
  cp "$root/etc/mke2fs.conf" "$ir/etc/mke2fs.conf"
  : > "$ir/etc/modules.order"
  for m in "${INITRAMFS_MODULES[@]}"; do
    in_root "$root" modprobe -S "$KVER" --show-depends "$m" | while read -r line; do
      case "$line" in
        insmod\ *)
          ko=$(echo "$line" | awk '{print $2}'); rel=${ko#/lib/modules/"$KVER"/}; rel=${rel#/usr/lib/modules/"$KVER"/}
          rel=${rel%.xz}; rel=${rel%.zst}
          grep -qxF "$rel" "$ir/etc/modules.order" && continue
          mkdir -p "$ir/lib/modules/$(dirname "$rel")"
          case "$ko" in
            *.xz) xz -dc "$root$ko" > "$ir/lib/modules/$rel" ;;
            *.zst) zstd -qdc "$root$ko" > "$ir/lib/modules/$rel" ;;
            *) cp "$root$ko" "$ir/lib/modules/$rel" ;;
          esac
          echo "$rel" >> "$ir/etc/modules.order" ;;
      esac
    done
  done
  find "$ir" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  (cd "$ir" && find . -print0 | LC_ALL=C sort -z \
     | cpio --quiet --null --reproducible -o -H newc -R 0:0 | zstd -q -19 -T1) > "$dest"
}

configure_rootfs() { # ROOTFS STACK
  local root=$1 stack=$2
  step "[$stack] configure: overlay files, units, no login$( [ "$stack" = dev ] && echo ' (dev: serial autologin)')"
  # Modes from the checkout follow the umask of whoever cloned it: normalised to 0644/0755.
  local norm=(--owner=0 --group=0 --mode=u=rwX,go=rX)
  tar -C "$RECIPE/rootfs" "${norm[@]}" --mtime="@$SOURCE_DATE_EPOCH" -cf - . | tar -C "$root" -xf -
  if [ "$stack" = dev ]; then
    tar -C "$RECIPE/rootfs-dev" "${norm[@]}" --mtime="@$SOURCE_DATE_EPOCH" -cf - . | tar -C "$root" -xf -
  fi
  mkdir -p "$root/opt/tdx-vllm" "$root/var/lib/tdx-vllm" "$root/etc/tdx-vllm"
  # Only the listed modules (the prod image has no TEST PKI, no stand-in and no proxy).
  local py=$WORK/python-$stack f
  rm -rf "$py"; mkdir -p "$py"
  python_files "$stack" | while read -r f; do
    [ -f "$REPO/$(python_source "$f")" ] || die "guest/image/python-modules lists $f, but $(python_source "$f") does not exist"
    mkdir -p "$py/$(dirname "$f")"; cp "$REPO/$(python_source "$f")" "$py/$f"
  done
  tar -C "$py" "${norm[@]}" --mtime="@$SOURCE_DATE_EPOCH" -cf - . | tar -C "$root/opt/tdx-vllm" -xf -
  python3 -c 'import json,sys; print(json.dumps({"stack": sys.argv[1], "suite": sys.argv[2], "kernel": sys.argv[3], "packagesLockSha256": sys.argv[4], "gpuDriver": {"version": sys.argv[5], "cuda": sys.argv[6], "modules": sys.argv[7].split()}}, sort_keys=True))' \
    "$stack" "$SUITE" "$KVER" "$LOCK_SHA256" "$DRIVER_VERSION" "$DRIVER_CUDA" "${DRIVER_MODULES[*]}" > "$root/etc/tdx-vllm/image.json"
  # The driver's kernel modules (step 1b), in updates/ where depmod looks first.
  mkdir -p "$root/usr/lib/modules/$KVER/updates/nvidia"
  tar -C "$root/usr/lib/modules/$KVER/updates/nvidia" -xf "$MODULES_TAR"
  in_root "$root" depmod -a "$KVER"
  # The CDI spec podman hands vLLM the GPUs with (guest/image/cdi_spec.py), from the driver's files.
  mkdir -p "$root/etc/cdi"
  python3 "$RECIPE/cdi_spec.py" "$root" > "$root/etc/cdi/nvidia.json" \
    || die "cannot write the CDI spec (guest/image/cdi_spec.py, above)"
  in_root "$root" systemctl enable --quiet systemd-networkd.service tdx-vllm-boot-marker.service tdx-vllm-agent.service \
    tdx-vllm-gpu-driver.service nvidia-persistenced.service
  if [ "$stack" != dev ]; then
    # No console login at all (root is locked anyway): no gettys.
    in_root "$root" systemctl mask --quiet getty.target serial-getty@.service getty@.service console-getty.service
  fi
  # Root password locked ('!'), and password-age fields pinned for reproducibility.
  local days=$(( SOURCE_DATE_EPOCH / 86400 ))
  awk -F: -v OFS=: -v d="$days" '$1 == "root" { $2 = "!" } $3 != "" { $3 = d } { print }' \
    "$root/etc/shadow" > "$root/etc/shadow.new"
  cat "$root/etc/shadow.new" > "$root/etc/shadow"; rm -f "$root/etc/shadow.new"
  : > "$root/etc/machine-id"
  # The build host's archive keyring (apt's during the build) leaves with the sources: the image
  # must not depend on which keyring package the build machine has.
  rm -f "$root/var/lib/dbus/machine-id" "$root/etc/apt/sources.list" "$root"/etc/apt/sources.list.d/* \
        "$root/etc/apt/keyrings/debian.gpg" "$root/etc/apt/keyrings/tdx-vllm-driver.gpg" \
        "$root/etc/apt/preferences.d/tdx-vllm-driver" \
        "$root"/etc/*- "$root"/var/lib/dpkg/*-old "$root"/var/cache/debconf/*-old \
        "$root/var/cache/ldconfig/aux-cache" "$root/var/lib/systemd/catalog/database" \
        "$root"/var/cache/apt/*.bin "$root/etc/resolv.conf" \
        "$root/var/lib/apt/extended_states"   # auto/manual marks: differ between --update-lock and locked installs
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/* "$root"/tmp/* "$root"/var/tmp/*
  find "$root/var/log" -type f -delete
  # Documentation that debootstrap unpacked before the no-docs policy existed.
  find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian "$root"/usr/share/bug
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  # The kernel image leaves the root filesystem (it is an artifact of its own).
  rm -f "$root/usr/lib/modules/$KVER/vmlinuz" "$root/usr/lib/modules/$KVER/System.map" "$root"/boot/*
  step "[$stack] smoke test: the gateway's imports under the image's python3"
  local smoke='import aiohttp, h11, yaml, cryptography, tdxattest.cli.gateway, tdxattest.channel.gateway, guest_agent.agent'
  [ "$stack" = dev ] && smoke="$smoke, tdxattest.testing.standin, tdxattest.testing.testpki"
  in_root "$root" env PYTHONPATH=/opt/tdx-vllm python3 -c "$smoke" \
    || die "the image's python cannot import the gateway and the agent (see above; guest/image/python-modules?)"
  # The agent fetches model files over HTTPS (and podman would pull over it): Python's default
  # context must find Debian's CA bundle, or every https:// model source fails in the TD.
  in_root "$root" python3 -c 'import ssl,sys; n=ssl.create_default_context().cert_store_stats()["x509_ca"]; sys.exit(0 if n >= 100 else f"{n} CA certificates in the default TLS context")' \
    || die "the image has no usable CA bundle for HTTPS (ca-certificates)"
  # The agent's NVML collector and vLLM load the driver's libraries by soname.
  in_root "$root" python3 -c 'import ctypes; ctypes.CDLL("libnvidia-ml.so.1"); ctypes.CDLL("libcuda.so.1")' \
    || die "the image's loader cannot find libnvidia-ml.so.1 / libcuda.so.1 (driver packages, alternatives, ld.so.cache?)"
}

LOCK_SHA256=$(sha256sum "$LOCK" | cut -d' ' -f1)
RECIPE_SHA256=$(recipe_hash)
# The driver the image carries, for manifest.json (and the TD boot manifests' `gpuDriver` pin): its
# locked packages and the sha256 of each module.
DRIVER_LOCKED=$( { for p in "${DRIVER_PACKAGES[@]}" "${DRIVER_TOOLS[@]}"; do lock_image | grep -E "^$p=" || die "packages.lock lacks $p"; done
  lock_build | grep -E "^$DRIVER_MODULE_SOURCE=" || die "packages.lock [module-build] lacks $DRIVER_MODULE_SOURCE"; } | LC_ALL=C sort)
DRIVER_MODULE_SHA256=$(for m in "${DRIVER_MODULES[@]}"; do printf '%s.ko=%s\n' "$m" "$(tar -xOf "$MODULES_TAR" "./$m.ko" | sha256sum | cut -d' ' -f1)"; done)
export SUITE KVER KERNEL_SUITE LOCK_SHA256 RECIPE_SHA256 T0 DRIVER_VERSION DRIVER_CUDA DRIVER_LOCKED DRIVER_MODULE_SHA256
for stack in "${STACKS[@]}"; do
  if [ "${#STACKS[@]}" -gt 1 ]; then dest=$OUT/$stack; else dest=$OUT; fi
  root=$WORK/rootfs-$stack
  step "[$stack] unpack the package set"
  mkdir -p "$root"
  # security.* xattrs (file capabilities) only: squashfs cannot store ACLs, so none are carried.
  tar -C "$root" --numeric-owner --xattrs --xattrs-include='security.*' -xf "$CHROOT_TAR"
  mkdir -p "$dest.tmp"; rm -f "$dest.tmp"/*
  install -m 0644 "$root/usr/lib/modules/$KVER/vmlinuz" "$dest.tmp/vmlinuz"
  configure_rootfs "$root" "$stack"
  build_initramfs "$root" "$stack" "$dest.tmp/initrd.img"

  step "[$stack] squashfs root filesystem"
  SQ=$WORK/root-$stack.squashfs
  mksquashfs "$root" "$SQ" -noappend -quiet -no-progress -comp zstd -Xcompression-level "$SQUASHFS_ZSTD_LEVEL" \
    -b 131072 -processors "$(nproc)" >/dev/null
  SQUASHFS_SIZE=$(stat -c %s "$SQ"); export SQUASHFS_SIZE
  HASH_OFFSET=$(( (SQUASHFS_SIZE + 4095) / 4096 * 4096 ))
  DATA_BLOCKS=$(( HASH_OFFSET / 4096 ))
  HASH_START=$DATA_BLOCKS
  SALT=$(sha256sum "$SQ" | cut -d' ' -f1)
  truncate -s "$HASH_OFFSET" "$SQ"
  mv "$SQ" "$dest.tmp/rootfs.verity.img"
  rm -rf "$root"

  step "[$stack] dm-verity hash tree (sha256, 4 KiB blocks, no superblock, appended at $HASH_OFFSET)"
  VOUT=$(veritysetup format --no-superblock --hash=sha256 --data-block-size=4096 --hash-block-size=4096 \
    --data-blocks="$DATA_BLOCKS" --hash-offset="$HASH_OFFSET" --salt="$SALT" \
    "$dest.tmp/rootfs.verity.img" "$dest.tmp/rootfs.verity.img")
  ROOTHASH=$(echo "$VOUT" | awk -F: '/^Root hash:/ {gsub(/[[:space:]]/, "", $2); print $2}')
  [ -n "$ROOTHASH" ] || die "veritysetup printed no root hash: $VOUT"
  veritysetup verify --no-superblock --hash=sha256 --data-block-size=4096 --hash-block-size=4096 \
    --data-blocks="$DATA_BLOCKS" --hash-offset="$HASH_OFFSET" --salt="$SALT" \
    "$dest.tmp/rootfs.verity.img" "$dest.tmp/rootfs.verity.img" "$ROOTHASH" || die "verity self-check failed"

  step "[$stack] cmdline and manifest"
  CMDLINE=${CMDLINE_BASE//__ROOTHASH__/$ROOTHASH}
  CMDLINE=${CMDLINE//__VERITY__/$DATA_BLOCKS,$HASH_START,$SALT}
  printf '%s' "$CMDLINE" > "$dest.tmp/cmdline.txt"
  python_snippet_manifest "$dest.tmp" "$stack" "$ROOTHASH" "$DATA_BLOCKS" "$HASH_START" "$SALT"
  rm -rf "$dest"; mv "$dest.tmp" "$dest"
  step "[$stack] done: $dest"
  (cd "$dest" && ls -l vmlinuz initrd.img rootfs.verity.img cmdline.txt manifest.json) >&2
done
step "built ${STACKS[*]} in $(( $(date +%s) - T0 ))s"
