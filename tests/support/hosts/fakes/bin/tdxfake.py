"""Shared code of the fake host tools (a module, not a tool: the tools next to it import it).

Inside a fake host this directory is overlaid on /usr/local/bin, so every file here shadows the
real tool of the same name on sshd's PATH. All fake state lives in one directory, seen inside the
host at STATE (/var/lib/tdxfake, a bind mount) and by the test at NamespaceHost.state_dir:

  profile.json     static facts of the host profile (grub prefix, TDX module version, ...)
  msr.json         {"0x982": "0x...", ...}: what rdmsr reads
  pci.json         PCI devices lspci lists
  gpu.json         {bdf: {"cc": "off", "ppcie": "off", ...}}: what gpu-admin-tools reads/sets
  modules.json     loaded kernel modules that tools care about (msr)
  grub.json        update-grub runs and the command line the next boot gets
  services.json, packages.json   systemd units / Debian packages (DCAP fakes)
  calls.log        one JSON line per fake tool call {"tool", "argv"}
  boots.log        one JSON line per (simulated) boot
  dmesg.log        the kernel log of the current boot
  boot/            cpuinfo, cmdline, boot_id, osrelease: bind-mounted over /proc files
  sysfs/           module, firmware, iommu_groups, pci_devices: bind-mounted over /sys dirs
  rom/<bdf>.bin    GPU expansion ROMs (served through a FUSE file at .../<bdf>/rom)
  pypi/            the offline package index (find-links) for pip
  run/             sshd.pid, sshd.argv, keep.pids (never killed by a reboot), pidns, ready

Functions that change host state take the state directory explicitly so the harness can use them
from outside the host (to build the first boot) with the real path.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

STATE = Path(os.environ.get("TDXFAKE_STATE", "/var/lib/tdxfake"))


# ----------------------------------------------------------------------------------------------
# state helpers


def load(name: str, default=None, state: Path = STATE):
    try:
        return json.loads((state / name).read_text())
    except FileNotFoundError:
        return default


def save(name: str, data, state: Path = STATE) -> None:
    path = state / name
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_inplace(path: Path, text: str) -> None:
    """Rewrite a file keeping its inode: bind mounts (over /proc files) follow the inode."""
    with open(path, "r+" if path.exists() else "w") as fh:
        fh.seek(0)
        fh.write(text)
        fh.truncate()


def append_line(name: str, record: dict, state: Path = STATE) -> None:
    with open(state / name, "a") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")


def log_call(tool: str, argv: list[str], state: Path = STATE) -> None:
    append_line("calls.log", {"tool": tool, "argv": argv, "t": round(time.time(), 3)}, state)


def msrs(state: Path = STATE) -> dict[int, int]:
    return {int(k, 16): int(v, 16) for k, v in load("msr.json", {}, state).items()}


def cpu_flags(state: Path = STATE) -> set[str]:
    for line in (state / "boot/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def msr_implemented(reg: int, m: dict[int, int], state: Path = STATE) -> bool:
    """Whether the CPU answers a read of this MSR in its current BIOS configuration, instead of a
    #GP (msr-tools: "cannot read MSR"). IA32_MKTME_KEYID_PARTITIONING (0x87) exists only with
    TME-MT active: IA32_TME_ACTIVATE (0x982) bit 1 and KeyID bits 35:32 non-zero. The kernel reads
    it with rdmsr_safe (tests/fixtures/host/kernel/README.md); no source says when it faults, so
    the fault here follows the review's finding, and with TME-MT on and TDX off it reads 0 TDX keys
    as canonical/tdx#144 shows. The SGX debug MSR 0x503 is modelled as unreadable while SGX is
    off (no sgx CPU flag): no source gives its behaviour then, so the scripts read it only after
    the BIOS phases."""
    if reg == 0x87:
        tme = m.get(0x982, 0)
        return bool((tme >> 1) & 1) and bool((tme >> 32) & 0xF)
    if reg == 0x503:
        return "sgx" in cpu_flags(state)
    return True


def detach() -> bool:
    """Double-fork into a new session with stdio on /dev/null (so an SSH session that started us
    can end). Returns True in the detached grandchild, False in the caller."""
    if os.fork():
        return False
    os.setsid()
    if os.fork():
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    return True


# ----------------------------------------------------------------------------------------------
# boot: what a (re)boot makes of the pending state


def grub_cmdline(state: Path = STATE, etc: Path = Path("/etc")) -> str:
    """The kernel command line GRUB would generate from /etc/default/grub and grub.d/*.cfg (they
    are shell fragments, so source them like grub-mkconfig does)."""
    prefix = load("profile.json", {}, state).get("grub_prefix", "")
    script = (  # grub-mkconfig is a /bin/sh script with `set -e`: a broken fragment fails it
        'GRUB_CMDLINE_LINUX=""; GRUB_CMDLINE_LINUX_DEFAULT=""\n'
        f"if [ -f {etc}/default/grub ]; then . {etc}/default/grub; fi\n"
        f'for f in {etc}/default/grub.d/*.cfg; do if [ -f "$f" ]; then . "$f"; fi; done\n'
        'printf "%s %s" "$GRUB_CMDLINE_LINUX" "$GRUB_CMDLINE_LINUX_DEFAULT"\n'
    )
    out = subprocess.run(["sh", "-ec", script], capture_output=True, text=True, check=True).stdout
    return " ".join([prefix, *out.split()]).strip()


# The successful TDX boot each kernel generation logs (tests/fixtures/host/kernel/README.md).
KERNEL_LOGS = {
    "mainline-7.1": "mainline-module-version.dmesg",  # Module version: 1.5.16 ... TDX-Module initialized
    "mainline-7.0": "mainline-6.16-7.0-module-initialized.dmesg",  # no version line
    "ubuntu-25.10": "ubuntu-25.10-module-build-number.dmesg",  # TDX module 1.5.06.00, build number 744
    "ubuntu-6.8": "ubuntu-6.8-major-version.dmesg",  # major_version 1, minor_version 5, ... build_num 784
}


def fixture_log(name: str, state: Path = STATE) -> list[str]:
    """The kernel lines of a recorded or upstream-format sample, without its timestamps and its
    own command line (the boot writes the one GRUB generated)."""
    lines = (fixtures(state) / "kernel" / name).read_text().splitlines()
    body = [ln.split("] ", 1)[1] if ln.startswith("[") else ln for ln in lines]
    return [ln for ln in body if not ln.startswith(("Command line:", "Kernel command line:"))]


def tdx_boot(m: dict[int, int], cmdline: str, profile: dict, state: Path = STATE) -> tuple[bool, list[str]]:
    """(KVM's TDX on?, the kernel's TDX lines) for these MSRs and command line, from the samples.
    Linux >= 7.1 initialises the module at boot whatever kvm_intel says; older kernels only when
    kvm_intel loads with tdx=1, and print just the BIOS lines otherwise."""
    args = cmdline.split()
    tme = m.get(0x982, 0)
    tme_mt = bool((tme >> 1) & 1) and bool((tme >> 32) & 0xF)
    seamrr = bool((m.get(0x1401, 0) >> 11) & 1)
    tdx_keys = (m.get(0x87, 0) >> 32) if tme_mt else 0
    flavour = profile.get("kernel_flavour", "mainline-7.1")
    early = flavour == "mainline-7.1"
    if not tme_mt or (not seamrr and tdx_keys == 0):
        return False, fixture_log("tdx-disabled-in-bios.dmesg", state) if early else []
    if tdx_keys < 2:
        return False, fixture_log("too-few-keyids.dmesg", state)
    if "kvm_intel.tdx=1" not in args and not early:
        return False, fixture_log("ubuntu-6.8-bios-only-no-init.dmesg", state)
    if not seamrr:
        return False, fixture_log("module-not-loaded.dmesg", state)
    if "nohibernate" not in args:
        return False, fixture_log("hibernation-enabled.dmesg", state)
    if profile.get("tdx_failure_log"):
        return False, fixture_log(profile["tdx_failure_log"], state)
    return "kvm_intel.tdx=1" in args, fixture_log(KERNEL_LOGS[flavour], state)


def boot(state: Path = STATE) -> dict:
    """Make the state look like a fresh boot: new boot id, the command line GRUB generated last,
    kvm_intel/TDX as the MSRs and command line allow, the kernel log, unloaded msr module."""
    profile = load("profile.json", {}, state)
    grub = load("grub.json", {}, state)
    cmdline = grub.get("next_cmdline") or load("profile.json", {}, state).get("grub_prefix", "")
    ok, tdx_lines = tdx_boot(msrs(state), cmdline, profile, state)
    boot_id = str(uuid.uuid4())
    write_inplace(state / "boot/boot_id", boot_id + "\n")
    write_inplace(state / "boot/cmdline", cmdline + "\n")
    param = state / "sysfs/module/kvm_intel/parameters"
    param.mkdir(parents=True, exist_ok=True)
    (param / "tdx").write_text("Y\n" if ok else "N\n")
    release = profile.get("kernel_release", "7.1.0-generic")
    log = [
        f"Linux version {release} (buildd@lcy02-amd64-001) (gcc 13.3.0) #28-Ubuntu SMP PREEMPT_DYNAMIC",
        f"Command line: {cmdline}",
        "DMAR: IOMMU enabled" if "intel_iommu=on" in cmdline.split() else "DMAR: IOMMU disabled",
        *tdx_lines,
    ]
    (state / "dmesg.log").write_text("".join(f"[{i * 0.731:12.6f}] {line}\n" for i, line in enumerate(log)))
    save("modules.json", {"msr": False}, state)
    record = {"boot_id": boot_id, "cmdline": cmdline, "tdx": ok, "t": round(time.time(), 3)}
    append_line("boots.log", record, state)
    return record


# ----------------------------------------------------------------------------------------------
# sshd and the simulated reboot (only inside the host's own pid namespace)


def _in_own_pidns(state: Path) -> bool:
    try:
        return os.readlink("/proc/self/ns/pid") == (state / "run/pidns").read_text().strip()
    except OSError:
        return False


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def sshd_pid(state: Path = STATE) -> int | None:
    try:
        pid = int((state / "run/sshd.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive(pid) else None


def start_sshd(state: Path = STATE) -> None:
    if sshd_pid(state):
        return
    argv = load("run/sshd.argv", None, state)
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)  # sshd daemonises and writes its pid file


def stop_sshd(state: Path = STATE) -> None:
    """SIGTERM the listener only, as systemd does with ssh.service (KillMode=process): sessions
    already open keep running."""
    pid = sshd_pid(state)
    if pid:
        os.kill(pid, signal.SIGTERM)
        for _ in range(200):
            if not alive(pid):
                break
            time.sleep(0.01)


def kill_all_but_keepers(state: Path = STATE) -> int:
    """SIGKILL every process of this host except its init, ourselves and the keepers (the FUSE ROM
    server): what a power cycle does to sshd and the sessions."""
    if not _in_own_pidns(state):
        raise RuntimeError("refusing to kill processes outside the fake host's pid namespace")
    keep = {1, os.getpid()}
    try:
        keep |= {int(x) for x in (state / "run/keep.pids").read_text().split()}
    except OSError:
        pass
    killed = 0
    for _ in range(20):
        victims = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in keep and alive(int(p))]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        killed += len(victims)
        if not victims:
            break
        time.sleep(0.05)
    return killed


def simulated_reboot(state: Path = STATE) -> None:
    """Power-cycle the fake host: everything but init dies, the pending state becomes the new boot,
    and sshd (same host key) comes back after the profile's restart delay."""
    profile = load("profile.json", {}, state)
    append_line("boots.log", {"event": "reboot", "t": round(time.time(), 3)}, state)
    kill_all_but_keepers(state)
    try:
        (state / "run/sshd.pid").unlink()
    except FileNotFoundError:
        pass
    rebind_pci(state)
    boot(state)
    time.sleep(float(profile.get("sshd_restart_delay", 1.0)))
    start_sshd(state)
    services = load("services.json", {}, state)
    for unit, svc in services.items():  # what systemd starts at boot
        svc["active"] = bool(svc.get("enabled")) and unit != "mpa_registration_tool"
    save("services.json", services, state)
    if services.get("pccs", {}).get("active"):
        start_pccs(state)


def _conf_words(directory: Path) -> list[list[str]]:
    """The lines of directory/*.conf as words (dangling links and unreadable files skipped)."""
    lines: list[list[str]] = []
    for f in sorted(directory.glob("*.conf")) if directory.is_dir() else ():
        try:
            lines += [ln.split() for ln in f.read_text().splitlines()]
        except OSError:
            continue
    return lines


def vfio_ids_at_boot(etc: Path = Path("/etc")) -> set[str]:
    """The PCI ids vfio-pci claims when it loads at boot: `options vfio-pci ids=...` in
    modprobe.d, with vfio-pci listed in modules-load.d (else nothing loads it at boot)."""
    if not any(words[:1] in (["vfio-pci"], ["vfio_pci"]) for words in _conf_words(etc / "modules-load.d")):
        return set()
    ids: set[str] = set()
    for words in _conf_words(etc / "modprobe.d"):
        if words[:2] in (["options", "vfio-pci"], ["options", "vfio_pci"]):
            ids |= {i for w in words[2:] if w.startswith("ids=") for i in w[4:].split(",")}
    return ids


def rebind_pci(state: Path = STATE) -> None:
    """What a boot does to the GPUs' drivers: driver_override and runtime binds are gone; vfio-pci
    takes the devices whose ids it was told at boot; nothing else binds (nvidia is blacklisted on
    these hosts, and a host with the driver loaded is its own profile)."""
    ids = vfio_ids_at_boot()
    for dev in (state / "sysfs/pci_devices").iterdir():
        (dev / "driver_override").unlink(missing_ok=True)
        link = dev / "driver"
        if link.is_symlink() and os.readlink(link).endswith("/nvidia"):
            continue
        link.unlink(missing_ok=True)
        pci_id = f"{(dev / 'vendor').read_text().strip()[2:]}:{(dev / 'device').read_text().strip()[2:]}"
        if pci_id in ids:
            link.symlink_to("../../../../bus/pci/drivers/vfio-pci")


def schedule_reboot(delay: float, state: Path = STATE) -> None:
    if detach():
        try:
            time.sleep(max(0.0, delay))
            simulated_reboot(state)
        finally:
            os._exit(0)


# ----------------------------------------------------------------------------------------------
# Intel DCAP: packages, units, the PCCS stand-in


# Files the DCAP packages install, verbatim from upstream (tests/fixtures/host/dcap/README.md).
# default.json is the January 2026 one: a `//`-commented block after `},` (trailing comma).
def fixtures(state: Path = STATE) -> Path:
    """tests/fixtures/host (inside a host this file's own path is the /usr/local/bin overlay)."""
    return Path(load("profile.json", {}, state)["fakes_dir"]).parents[2] / "fixtures/host"


# package -> (systemd unit or None, {path: fixture file}) as the Debian packages install them
DCAP_PACKAGES = {
    "sgx-dcap-pccs": ("pccs", {"/opt/intel/sgx-dcap-pccs/config/default.json": "pccs-default-1.25.json"}),
    "tdx-qgs": ("qgsd", {"/etc/qgs.conf": "qgs.conf"}),
    "libsgx-dcap-default-qpl": (None, {"/etc/sgx_default_qcnl.conf": "sgx_default_qcnl.conf"}),
    "libsgx-dcap-ql": (None, {}),
    "sgx-ra-service": ("mpa_registration_tool", {}),
    "sgx-pck-id-retrieval-tool": (None, {}),
}
# Packages only Intel's SGX apt repository (or canonical's PPA) carries: stock Ubuntu has none.
INTEL_REPO_MARK = "sgx_repo"
PCCS_DIR = Path("/opt/intel/sgx-dcap-pccs")

# Packages whose tools the fakes provide (fakes/pkg/<package>/<tool>): the fake apt-get links them
# into /usr/local/sbin on install, so `command -v rdmsr` finds nothing until msr-tools is installed.
PACKAGE_TOOLS = {"msr-tools": ("rdmsr",), "pciutils": ("lspci",)}
# Versions as Ubuntu 24.04 (noble) carries them, in Debian's version syntax (illustrative values).
PACKAGE_VERSIONS = {
    "msr-tools": "1.3-5build1",
    "pciutils": "1:3.10.0-2build1",
    "python3-pip": "24.0+dfsg-1ubuntu1.1",
    "curl": "8.5.0-2ubuntu10.6",
    "openssl": "3.0.13-0ubuntu3.5",
}
SBIN = Path("/usr/local/sbin")


def version_tuple(v: str) -> tuple[int, ...]:
    """The numeric core of a Debian version ("1:18.19.1+dfsg-6ubuntu5") or an npm range (">= 22.13.0")."""
    core = v.split(":", 1)[-1].split("+", 1)[0].split("-", 1)[0].lstrip(">= v")
    return tuple(int(x) for x in core.split(".") if x.isdigit())


def link_package_tools(name: str, fakes_dir: Path, sbin: Path = SBIN) -> None:
    for tool in PACKAGE_TOOLS.get(name, ()):
        link = sbin / tool
        link.unlink(missing_ok=True)
        link.symlink_to(fakes_dir / "pkg" / name / tool)


def unlink_package_tools(name: str, sbin: Path = SBIN) -> None:
    for tool in PACKAGE_TOOLS.get(name, ()):
        (sbin / tool).unlink(missing_ok=True)


def installed(pkg: str, state: Path = STATE) -> bool:
    return pkg in load("packages.json", {}, state)


def pccs_pid(state: Path = STATE) -> int | None:
    try:
        pid = int((state / "run/pccs.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def pccs_startup_error(pccs_dir: Path = PCCS_DIR) -> str | None:
    """Why the real PCCS (node pccs_server.js as User=pccs) would exit at start, in its own words,
    or None. Sources: tests/fixtures/host/dcap/postinst-notes.md (pccs_server.js, node-config)."""
    config = pccs_dir / "config/default.json"
    try:
        st = config.stat()
    except FileNotFoundError:
        return f"Config file {config} cannot be read. Error code is: ENOENT"
    uid = _user_id("pccs")
    readable = (
        (st.st_uid == uid and st.st_mode & 0o400)
        or (st.st_gid == _group_id("pccs") and st.st_mode & 0o040)
        or (st.st_mode & 0o004)
    )
    if not readable:
        return (
            f"Config file {config} cannot be read. Error code is: EACCES. "
            f"Error message is: EACCES: permission denied, open '{config}'"
        )
    if not (pccs_dir / "node_modules").is_dir():
        return f"Error [ERR_MODULE_NOT_FOUND]: Cannot find package 'express' imported from {pccs_dir}/pccs_server.js"
    if not ((pccs_dir / "ssl_key/private.pem").is_file() and (pccs_dir / "ssl_key/file.crt").is_file()):
        return "The private key or certificate for HTTPS server is missing."
    return None


def _user_id(name: str) -> int:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return -1


def _group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return -1


# ---- units that really run (services.json {"run": true}): systemd's ExecStart=, detached ---------


def unit_exec_start(unit: str) -> list[str]:
    """The ExecStart= argv of /etc/systemd/system/<unit>.service, split as systemd splits it
    (backslash-newline continues the line, quotes group, %% and $$ are a literal % and $)."""
    import shlex

    text = Path(f"/etc/systemd/system/{unit}.service").read_text()
    line = next(ln for ln in text.replace("\\\n", " ").splitlines() if ln.startswith("ExecStart="))
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line[len("ExecStart=") :])]


def unit_pid(unit: str, state: Path = STATE) -> int | None:
    try:
        pid = int((state / f"run/unit-{unit}.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def start_unit(unit: str, state: Path = STATE) -> None:
    """What `systemctl start` does for a simple service: run ExecStart= in a session of its own,
    stdin from /dev/null, its output to the unit's log (the journal's stand-in)."""
    if unit_pid(unit, state):
        return
    (state / "run").mkdir(exist_ok=True)
    with open(state / f"unit-{unit}.log", "ab") as log:
        proc = subprocess.Popen(
            unit_exec_start(unit), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    (state / f"run/unit-{unit}.pid").write_text(str(proc.pid))


def stop_unit(unit: str, state: Path = STATE, timeout_s: float = 60) -> None:
    """SIGTERM, then SIGKILL after TimeoutStopSec (60 s in the TD unit), as systemd stops a service."""
    pid = unit_pid(unit, state)
    if not pid:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while unit_pid(unit, state) and time.monotonic() < deadline:
        time.sleep(0.05)
    if unit_pid(unit, state):
        os.kill(pid, signal.SIGKILL)
        while unit_pid(unit, state):
            time.sleep(0.05)


def start_pccs(state: Path = STATE) -> bool:
    """Start the PCCS stand-in (tdxfake-pccs, HTTPS) detached; True once it listens. False, with
    the real server's message in pccs.log, when the real one would exit at start."""
    stop_pccs(state)
    problem = pccs_startup_error()
    if problem:
        with open(state / "pccs.log", "a") as log:
            log.write(f"[error]: {problem}\n")
        return False
    ready = state / "run/pccs.ready"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-B", str(Path(__file__).with_name("tdxfake-pccs"))],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(state / "pccs.log", "a"),
        start_new_session=True,
    )
    (state / "run/pccs.pid").write_text(str(proc.pid))
    for _ in range(100):
        if ready.exists():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def stop_pccs(state: Path = STATE) -> None:
    pid = pccs_pid(state)
    if pid:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if pccs_pid(state) is None:
                break
            time.sleep(0.02)
