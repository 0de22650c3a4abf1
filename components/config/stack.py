"""Typed stack configuration: parse once, validate everything, report every error at once.

The same `parse_stack` runs in two places:

* offline, `python -m components.config stacks/Pulumi.<stack>.yaml`, where secrets are still
  `{secure: ...}` ciphertext markers in the YAML;
* at the start of `pulumi preview/up` (`load_from_pulumi`), where Pulumi has decrypted them and we
  learn which leaves were secret from the stack file itself.

Either way a secret given in plain text is an error: a key such as `hosts[0].ssh.privateKey` that
reached the stack file unencrypted is already leaked to whoever reads the repository.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import yaml

from components.catalog.artifacts import default_artifact_dir
from components.catalog.bios import list_vendors, load_vendor_table
from components.catalog.gpu import known_gpu_models
from components.catalog.pinfile import CatalogError
from components.catalog.td_manifest import load_boot_manifest, td_boot_manifest
from components.catalog.tdx_module import tdx_module_releases
from components.config.model import (
    BASE_KERNEL_ARGS,
    GPU_MODES,
    HOST_NAME,
    PROJECT,
    REGISTRATION_METHODS,
    SUPPORTED_OS,
    BmcConfig,
    DcapConfig,
    GpuConfig,
    GpuMode,
    HostConfig,
    PlatformConfig,
    PromotionConfig,
    Secret,
    SshConfig,
    SshDefaults,
    StackConfig,
    TdxModulePin,
)
from components.config.proxy import parse_proxy
from components.config.reader import (
    ENCRYPTED,
    SSH_USER,
    ConfigError,
    ConfigErrors,
    Reader,
    host_key_problem,
    is_secure_marker,
    is_valid_address,
    join,
    kind_of,
    known_hosts_key,
    normalise_fingerprint,
)
from components.config.workload import parse_workload
from components.paths import FIRMWARE_DIR, REPO_ROOT
from guest_agent import DEV_STACK
from tdxattest.core.safe_yaml import YamlRefused, load_yaml

_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
_KERNEL_ARG = re.compile(r"^[A-Za-z0-9_.\-]+(=[A-Za-z0-9_.,:/+\-]+)?$")
# Kernel parameters that take no value (Documentation/admin-guide/kernel-parameters.txt) and that a
# TDX GPU host may plausibly set. A bare word outside this list is refused: it is far more often
# the tail of an argument a YAML flow list split at its comma (`[modprobe.blacklist=nouveau,nvidia]`
# is two items) than a flag, and the kernel ignores unknown words silently.
KNOWN_KERNEL_FLAGS = frozenset(
    {
        "debug", "earlyprintk", "ignore_loglevel", "nofb", "nohibernate", "nokaslr", "nomce", "nomodeset",
        "nopat", "nopti", "noresume", "nosmt", "nosoftlockup", "nowatchdog", "nox2apic", "pti", "quiet",
        "ro", "rw", "single", "splash", "nosplash", "threadirqs", "norandmaps", "nohugevmalloc",
    }
)  # fmt: skip


def _kernel_param_name(name: str) -> str:
    # The kernel treats `-` and `_` in parameter names alike (kernel/params.c, parameqn).
    return name.replace("-", "_")


def _kstrtobool(value: str) -> bool | None:
    """How the kernel reads a bool parameter (lib/kstrtox.c, kstrtobool): None when it is neither."""
    v = value.lower()
    if v[:1] in ("y", "1") or v == "on":
        return True
    if v[:1] in ("n", "0") or v == "off":
        return False
    return None


def kernel_arg_undoes(arg: str) -> str | None:
    """Why `arg` would undo what a TDX host needs (the base arguments, or KVM's TDX prerequisites),
    or None. Names are compared as the kernel compares them, so `kvm-intel.tdx=0` is caught too."""
    name, _, value = arg.partition("=")
    name = _kernel_param_name(name)
    items = [_kernel_param_name(v) for v in value.split(",")]
    if name == "kvm_intel.tdx" and _kstrtobool(value) is not True:
        return "would turn KVM's TDX support off (kvm_intel.tdx must be 1)"
    if name == "kvm_intel.ept" and _kstrtobool(value) is False:
        return "would turn EPT off, and KVM refuses TDX without it (`Cannot enable TDX with EPT disabled`)"
    if name == "intel_iommu" and "off" in items:
        return "would turn the Intel IOMMU off, which GPU passthrough to a TD needs (intel_iommu=on)"
    if name == "iommu" and "off" in items:
        return "would turn every IOMMU off, which GPU passthrough to a TD needs"
    if name in ("modprobe.blacklist", "module_blacklist") and {"kvm", "kvm_intel"} & set(items):
        return "would keep kvm_intel from loading, and with it TDX"
    return None


# --------------------------------------------------------------------------------------------
# The schema


_TOP_KEYS = (
    "hosts",
    "ssh",
    "gpu",
    "platform",
    "dcap",
    "teeIo",
    "restoreOnDestroy",
    "rebootTimeoutSeconds",
    "promotion",
    "workload",
    "proxy",
)


def parse_stack(
    raw: Mapping[str, Any], stack: str, *, secret_paths: Iterable[str] | None = None, firmware_dir: Path = FIRMWARE_DIR
) -> StackConfig:
    """Validate `raw` (config keys without the project prefix) and build a StackConfig.

    `secret_paths`: the key paths Pulumi decrypted (runtime); None means the values still carry
    `{secure: ...}` markers (offline). Raises ConfigErrors listing every problem found.
    """
    r = Reader(stack, frozenset(secret_paths) if secret_paths is not None else None)
    top = r.obj(raw, "", _TOP_KEYS + tuple(k for k in raw if k.startswith("_")))

    gpu_models = known_gpu_models(firmware_dir)
    default_gpu = _gpu(r, top.get("gpu"), "gpu", gpu_models) if top.get("gpu") is not None else None
    platform = _platform(r, top.get("platform"), "platform", firmware_dir)
    # A workload on Kubernetes runs in the cluster's TDs: such a stack may have no hosts (and then
    # needs no DCAP block). Otherwise at least one host is required.
    wl_raw = top.get("workload")
    k8s_only = isinstance(wl_raw, Mapping) and wl_raw.get("target") == "kubernetes" and top.get("hosts") in (None, [])
    default_ssh = _ssh_defaults(r, top.get("ssh"), "ssh")
    if k8s_only:
        hosts: tuple[HostConfig, ...] = ()
        dcap = _dcap(r, top["dcap"], "dcap") if top.get("dcap") is not None else None
    else:
        dcap = _dcap(
            r, r.required(top, "dcap", "", "add a `dcap:` block with at least `pccsApiKey` (a secret)"), "dcap"
        )
        hosts = _hosts(r, top.get("hosts"), "hosts", gpu_models, list_vendors(firmware_dir), default_gpu, default_ssh)
        if dcap is not None and dcap.registration == "mpa":
            _registration_agent_known(r, hosts, firmware_dir)
    tee_io = r.boolean(top.get("teeIo"), "teeIo", False)
    restore = r.boolean(top.get("restoreOnDestroy"), "restoreOnDestroy", False)
    reboot_timeout = r.integer(top.get("rebootTimeoutSeconds"), "rebootTimeoutSeconds", 1800, 60, 7200)
    promotion = _promotion(r, top.get("promotion"), "promotion") if top.get("promotion") is not None else None
    workload = (
        parse_workload(r, top.get("workload"), "workload", hosts, top.get("hosts"), firmware_dir)
        if top.get("workload") is not None
        else None
    )
    proxy = None
    if top.get("proxy") is not None:
        if workload is None:
            r.error("proxy", "a verifying proxy needs the TDs it fronts", "add a `workload:` block, or remove `proxy:`")
        elif workload.kubernetes is not None and not (
            isinstance(top["proxy"], dict) and top["proxy"].get("kubernetes") is not None
        ):
            r.error(
                "proxy",
                "a proxy on a host cannot reach the Kubernetes workload's in-cluster Service",
                "run the proxy in the cluster: set `proxy.kubernetes` (docs/kubernetes.md, The verifying proxy)",
            )
        else:
            proxy = parse_proxy(
                r,
                top["proxy"],
                "proxy",
                default_ssh,
                _ssh,
                dev_test_quotes=workload.td is not None and not workload.td.tdx,
                default_pccs=dcap.pccs_url if dcap is not None else None,
            )

    if r.errors:
        raise ConfigErrors(r.errors)
    assert platform is not None and (dcap is not None or not hosts)
    return StackConfig(
        stack=stack,
        hosts=hosts,
        platform=platform,
        dcap=dcap,
        tee_io=tee_io,
        restore_on_destroy=restore,
        reboot_timeout_s=reboot_timeout,
        promotion=promotion,
        workload=workload,
        proxy=proxy,
    )


def _registration_agent_known(r: Reader, hosts: tuple[HostConfig, ...], firmware_dir: Path) -> None:
    """`registration: mpa` needs the BIOS's SGX Auto MP Registration agent on; a host whose BMC
    vendor table cannot set it would end up unregistered. Rented hosts (no `bmc:`) run the
    provider's BIOS: the dcap step reports their registration state."""
    first_host: dict[str, int] = {}
    for i, host in enumerate(hosts):
        if host.bmc is not None:
            first_host.setdefault(host.bmc.vendor, i)
    for vendor, i in first_host.items():
        table = r.catalog(
            f"hosts[{i}].bmc.vendor",
            functools.partial(load_vendor_table, vendor, firmware_dir),
            f"firmware/bios/{vendor}.yaml",
            f"fix firmware/bios/{vendor}.yaml",
        )
        if table is not None and not table.sets_registration_agent:
            r.error(
                "dcap.registration",
                f"`mpa` needs the BIOS setting 'SGX Auto MP Registration', which firmware/bios/{vendor}.yaml "
                f"(hosts[{i}].bmc.vendor) cannot set: no public source names its {vendor} attribute",
                "use `registration: pckid` (PCKIDRetrievalTool through the per-host PCCS), or `none` after enabling "
                "the setting by hand, or add the attribute to the table (setting sgx_auto_registration)",
            )


_STACK_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")


def _promotion(r: Reader, value: Any, path: str) -> PromotionConfig | None:
    m = r.obj(value, path, ("fromStack",))
    fix = f"set `fromStack: organization/{PROJECT}/staging` (file backend) or a bare stack name such as `staging`"
    ref = r.string(r.required(m, "fromStack", path, fix), join(path, "fromStack"), fix)
    if ref is None:
        return None
    parts = ref.split("/")
    if len(parts) not in (1, 3) or not all(_STACK_NAME.fullmatch(p) for p in parts):
        r.error(join(path, "fromStack"), f"`{ref}` is not a stack reference", fix)
        return None
    if parts[-1] == r.stack and (len(parts) == 1 or parts[1] == PROJECT):
        r.error(
            join(path, "fromStack"),
            f"`{ref}` is this stack (`{r.stack}`): a stack cannot promote from itself",
            "name the stack whose attested pins this one deploys, e.g. `staging` for `prod`",
        )
        return None
    return PromotionConfig(from_stack=ref)


def _hosts(
    r: Reader,
    value: Any,
    path: str,
    gpu_models: tuple[str, ...],
    vendors: tuple[str, ...],
    default_gpu: GpuConfig | None,
    default_ssh: SshDefaults,
) -> tuple[HostConfig, ...]:
    if value is None or value == []:
        r.error(path, "required: at least one host", "add a `hosts:` list (see stacks/Pulumi.dev.yaml)")
        return ()
    if not isinstance(value, list):
        r.error(
            path, f"expected a list of hosts, got {kind_of(value)}", "write `hosts:` as a YAML list (`- name: ...`)"
        )
        return ()
    hosts: list[HostConfig] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(value):
        hp = f"{path}[{i}]"
        m = r.obj(item, hp, ("name", "ssh", "bmc", "gpu"))
        name = r.string(
            r.required(m, "name", hp, "give the host a short name, e.g. `gpu-a`"),
            join(hp, "name"),
            "use lowercase letters, digits and dashes",
        )
        if name is not None:
            if not HOST_NAME.fullmatch(name):
                r.error(
                    join(hp, "name"),
                    f"`{name}` is not a valid host name",
                    "use 1-32 lowercase letters, digits and dashes (it names Pulumi resources)",
                )
            elif name in seen:
                r.error(
                    join(hp, "name"),
                    f"duplicate host name `{name}` (also hosts[{seen[name]}])",
                    "give every host a unique name",
                )
            else:
                seen[name] = i
        ssh = _ssh(
            r,
            r.required(m, "ssh", hp, "add an `ssh:` block with address, hostKey and privateKey"),
            join(hp, "ssh"),
            default_ssh,
        )
        bmc = _bmc(r, m.get("bmc"), join(hp, "bmc"), vendors) if m.get("bmc") is not None else None
        gpu = _gpu(r, m.get("gpu"), join(hp, "gpu"), gpu_models) if m.get("gpu") is not None else default_gpu
        if ssh is not None and name is not None:
            hosts.append(HostConfig(name=name, ssh=ssh, bmc=bmc, gpu=gpu))
    return tuple(hosts)


def _ssh_defaults(r: Reader, value: Any, path: str) -> SshDefaults:
    if value is None:
        return SshDefaults()
    m = r.obj(value, path, ("port", "user", "privateKey"))
    port = r.integer(m.get("port"), join(path, "port"), 22, 1, 65535)
    user = _ssh_user(r, m.get("user", "root"), join(path, "user"))
    key = None
    if m.get("privateKey") is not None:
        key = r.secret(m["privateKey"], join(path, "privateKey"), " < ~/.ssh/id_ed25519")
    return SshDefaults(user=user, port=port, private_key=key)


def _ssh_user(r: Reader, value: Any, path: str) -> str:
    user = r.string(value, path, "set the SSH user (root or a sudoer)") or "root"
    if not SSH_USER.fullmatch(user):
        r.error(
            path,
            "is not a login name (lowercase letters, digits, `_` and `-`, starting with a letter or `_`, at most 32)",
            "set the SSH user's login name, e.g. `root`",
        )
    return user


def _ssh(r: Reader, value: Any, path: str, defaults: SshDefaults) -> SshConfig | None:
    if value is None:
        return None
    m = r.obj(value, path, ("address", "port", "user", "hostKey", "privateKey"))
    address = r.string(
        r.required(m, "address", path, "set the host's IP address or DNS name"),
        join(path, "address"),
        "set the host's IP address or DNS name",
    )
    if address is not None and not is_valid_address(address):
        r.error(
            join(path, "address"),
            f"`{address}` is not a valid IP address or host name",
            "use an IPv4/IPv6 address or a DNS name such as gpu-a.example.net",
        )
    port = r.integer(m.get("port"), join(path, "port"), defaults.port, 1, 65535)
    user = _ssh_user(r, m.get("user", defaults.user), join(path, "user"))
    host_key = None
    if "hostKey" not in m or m["hostKey"] is None:
        r.error(
            join(path, "hostKey"),
            "required: the host key must be pinned (no trust on first use)",
            "copy it from the console (`cat /etc/ssh/ssh_host_ed25519_key.pub`) and set `hostKey: ssh-ed25519 "
            "AAAA...`; a line of `ssh-keyscan -t ed25519 HOST` works as is (check it on the console too)",
        )
    else:
        host_key = r.string(m["hostKey"], join(path, "hostKey"), "set `ssh-ed25519 AAAA...`")
        host_key = known_hosts_key(host_key) if host_key else host_key  # raw `ssh-keyscan` output
        problem = host_key_problem(host_key) if host_key else None
        if problem:
            r.error(join(path, "hostKey"), problem, "paste the public host key as `ssh-ed25519 AAAA...`")
    if m.get("privateKey") is None and defaults.private_key is not None:
        private_key: Secret | None = defaults.private_key
    else:
        private_key = r.secret(
            r.required(
                m,
                "privateKey",
                path,
                f"run `pulumi config set --secret --path '{join(path, 'privateKey')}' < ~/.ssh/id_ed25519`, "
                "or once for every host: `pulumi config set --secret --path 'ssh.privateKey' < ~/.ssh/id_ed25519`",
            ),
            join(path, "privateKey"),
            " < ~/.ssh/id_ed25519",
        )
    if address is None or host_key is None or private_key is None:
        return None
    return SshConfig(
        address=address, port=port, user=user, host_key=" ".join(host_key.split()[:2]), private_key=private_key
    )


def _bmc_username(r: Reader, value: Any, path: str) -> str | None:
    """`bmc.username`, plain: Pulumi masks every occurrence of a secret in its output, so a secret
    `admin` turns `gpu-admin-tools` into `gpu-[secret]-tools` and a secret `root` every `root=` of a
    kernel command line. The password stays a secret."""
    key = join(path, "username")
    encrypted = value is ENCRYPTED or is_secure_marker(value) or (r.secret_paths is not None and key in r.secret_paths)
    if encrypted:
        r.error(
            key,
            "a BMC user name is plain config, not a secret (Pulumi would mask every occurrence of it in all "
            "output, e.g. `admin` in `gpu-admin-tools`)",
            f"pulumi config rm --path '{key}' && pulumi config set --path '{key}' NAME",
        )
        return None
    return r.string(value, key, "set the BMC user, e.g. `username: root`")


def _bmc(r: Reader, value: Any, path: str, vendors: tuple[str, ...]) -> BmcConfig | None:
    before = len(r.errors)
    m = r.obj(value, path, ("endpoint", "vendor", "username", "password", "tlsFingerprint", "caFile", "system"))
    endpoint = r.string(
        r.required(m, "endpoint", path, "set `endpoint: https://BMC-ADDRESS`"),
        join(path, "endpoint"),
        "set `endpoint: https://BMC-ADDRESS`",
    )
    if endpoint is not None:
        r.url(
            endpoint,
            join(path, "endpoint"),
            ("https",),
            "use `https://BMC-ADDRESS[:PORT]` (plain http would expose the BMC password)",
            f"remove them: the BMC user goes in `{join(path, 'username')}`, its password in "
            f"`{join(path, 'password')}` (pulumi config set --secret)",
        )
    vendor = r.choice(r.required(m, "vendor", path, f"set one of: {', '.join(vendors)}"), join(path, "vendor"), vendors)
    username = _bmc_username(r, r.required(m, "username", path, "set the BMC user, e.g. `username: root`"), path)
    password = r.secret(r.required(m, "password", path, "set the BMC password as a secret"), join(path, "password"), "")
    fingerprint = r.string(
        m.get("tlsFingerprint"), join(path, "tlsFingerprint"), "set the SHA-256 of the BMC certificate"
    )
    if fingerprint is not None:
        fingerprint = normalise_fingerprint(fingerprint)
        if not _FINGERPRINT.fullmatch(fingerprint):
            r.error(
                join(path, "tlsFingerprint"),
                "expected a SHA-256 fingerprint (64 hex digits, colons allowed)",
                "run `openssl s_client -connect BMC:443 </dev/null | openssl x509 -noout -fingerprint -sha256`",
            )
    ca_file = r.string(
        m.get("caFile"), join(path, "caFile"), "set the path of the CA bundle that signs the BMC certificate"
    )
    if fingerprint is None and ca_file is None:
        r.error(
            path,
            "the BMC's TLS certificate is not pinned",
            "set `tlsFingerprint` (SHA-256 of the BMC certificate) or `caFile` (a CA bundle)",
        )
    system = r.string(m.get("system"), join(path, "system"), "set the Redfish system path, e.g. /redfish/v1/Systems/1")
    if system is not None and not system.startswith("/redfish/v1/Systems/"):
        r.error(
            join(path, "system"),
            f"`{system}` is not a Redfish system path",
            "use the full path, e.g. /redfish/v1/Systems/System.Embedded.1 (a bare id is not accepted)",
        )
    if len(r.errors) > before or endpoint is None or vendor is None or username is None or password is None:
        return None
    return BmcConfig(
        endpoint=endpoint,
        vendor=vendor,
        username=username,
        password=password,
        tls_fingerprint=fingerprint,
        ca_file=ca_file,
        system=system,
    )


def _gpu(r: Reader, value: Any, path: str, models: tuple[str, ...]) -> GpuConfig | None:
    m = r.obj(value, path, ("model", "count", "mode"))
    model = r.choice(r.required(m, "model", path, f"set one of: {', '.join(models)}"), join(path, "model"), models)
    count = r.integer(m.get("count"), join(path, "count"), 1, 1, 16)
    mode = r.choice(m.get("mode", "on"), join(path, "mode"), GPU_MODES)
    if mode == "devtools" and r.stack != DEV_STACK:
        r.error(
            join(path, "mode"),
            f"`devtools` unblocks GPU debugging and is refused outside the `dev` stack (this is `{r.stack}`)",
            "use `on` (one GPU per TD) or `ppcie` (8 Hopper GPUs + NVSwitch)",
        )
    if mode == "ppcie" and count != 8:
        r.error(
            join(path, "count"),
            f"PPCIe needs all 8 Hopper GPUs in one TD, got {count}",
            "set `count: 8`, or use `mode: on` for single-GPU TDs",
        )
    if model is None or mode is None:
        return None
    return GpuConfig(model=model, count=count, mode=cast(GpuMode, mode))  # choice() checked it is a GpuMode


def _platform(r: Reader, value: Any, path: str, firmware_dir: Path) -> PlatformConfig | None:
    m = r.obj(value, path, ("os", "extraKernelArgs", "tdxModule"))
    os_name = r.choice(m.get("os", "ubuntu-26.04"), join(path, "os"), SUPPORTED_OS) or "ubuntu-26.04"
    args_value = m.get("extraKernelArgs") or []
    extra: list[str] = []
    if not isinstance(args_value, list):
        r.error(
            join(path, "extraKernelArgs"),
            f"expected a list, got {kind_of(args_value)}",
            "write it as a YAML list: `[modprobe.blacklist=nouveau]`",
        )
    else:
        for i, arg in enumerate(args_value):
            ap = f"{join(path, 'extraKernelArgs')}[{i}]"
            if not isinstance(arg, str) or not _KERNEL_ARG.fullmatch(arg):
                r.error(
                    ap,
                    f"`{arg}` is not a single kernel argument",
                    "use `name` or `name=value` without spaces or quotes",
                )
            elif "=" not in arg and arg not in KNOWN_KERNEL_FLAGS:
                before = args_value[i - 1] if i > 0 and isinstance(args_value[i - 1], str) else ""
                split = f" (did a comma split `{before},{arg}` into two items?)" if "=" in before else ""
                r.error(
                    ap,
                    f"`{arg}` is not a kernel flag we know{split}; the kernel would ignore it silently",
                    "write each argument on its own `- ` line (a comma inside `[ ]` separates items), "
                    "e.g. `- modprobe.blacklist=nouveau,nvidia`; a real flag missing from our list goes "
                    "into KNOWN_KERNEL_FLAGS in components/config/stack.py",
                )
            elif (undoes := kernel_arg_undoes(arg)) is not None:
                r.error(ap, f"`{arg}` {undoes}", f"remove it; `{' '.join(BASE_KERNEL_ARGS)}` are always set")
            else:
                extra.append(arg)
    modules = _tdx_modules(r, m.get("tdxModule"), join(path, "tdxModule"), firmware_dir)
    return PlatformConfig(os=os_name, extra_kernel_args=tuple(extra), tdx_modules=modules)


MAX_TDX_MODULES = 4


def _tdx_modules(r: Reader, value: Any, path: str, firmware_dir: Path) -> tuple[TdxModulePin, ...]:
    """`platform.tdxModule`: one release, or a list while hosts move from one release to the next.
    Each must be in firmware/tdx-module.yaml with Intel's MRSEAM: that is what the TD quotes are held to."""
    if value is None:
        return ()
    if isinstance(value, list):
        if not 1 <= len(value) <= MAX_TDX_MODULES or len(set(map(str, value))) != len(value):
            r.error(
                path,
                f"expected 1 to {MAX_TDX_MODULES} distinct releases, got {len(value)} items",
                "list the release the hosts run now and the one they move to, e.g. `[1.5.28, 1.5.34]`",
            )
            return ()
        items = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    else:
        items = [(path, value)]
    releases = r.catalog(
        path, lambda: tdx_module_releases(firmware_dir), "firmware/tdx-module.yaml", "fix firmware/tdx-module.yaml"
    )
    out: list[TdxModulePin] = []
    for item_path, item in items:
        if item is None:
            r.error(item_path, "expected a release, got null", "set a version such as 1.5.16")
            continue
        version = r.string(item, item_path, "set a version such as 1.5.16")
        if version is None or releases is None:
            continue
        release = releases.get(version)
        if release is None:
            r.error(
                item_path,
                f"`{version}` is not a pinned TDX module release",
                f"use one of {', '.join(sorted(releases))} (1.5.x: Sapphire/Emerald Rapids, Sierra Forest; "
                "2.0.x: Granite Rapids) or add the release to firmware/tdx-module.yaml",
            )
        elif release.mrseam is None:
            r.error(
                item_path,
                f"`{version}` has no published MRSEAM ({release.reason}), so no quote from it could be checked",
                "pin a release that Intel publishes an MRSEAM for (firmware/tdx-module.yaml)",
            )
        else:
            out.append(TdxModulePin(version=version, mrseam=release.mrseam, build=release.build_number))
    return tuple(out)


def _dcap(r: Reader, value: Any, path: str) -> DcapConfig | None:
    if value is None:
        return None
    m = r.obj(value, path, ("pccsApiKey", "registration", "pccsPort", "qgsPort", "pccsUrl", "useSecureCert"))
    key = r.secret(
        r.required(
            m,
            "pccsApiKey",
            path,
            "run `pulumi config set --secret --path 'dcap.pccsApiKey' KEY` with your Intel PCS subscription key",
        ),
        join(path, "pccsApiKey"),
        " KEY",
    )
    registration = r.choice(m.get("registration", "mpa"), join(path, "registration"), REGISTRATION_METHODS) or "mpa"
    pccs_port = r.integer(m.get("pccsPort"), join(path, "pccsPort"), 8081, 1, 65535)
    qgs_port = r.integer(m.get("qgsPort"), join(path, "qgsPort"), 4050, 1, 65535)
    pccs_url = r.pccs_url(
        m.get("pccsUrl"),
        join(path, "pccsUrl"),
        "remove them: Intel's QPL and the verifying proxy read collateral from a PCCS without "
        "credentials (the PCCS API key is `dcap.pccsApiKey`, a secret)",
    )
    if registration == "pckid" and pccs_url is not None:
        # PCKIDRetrievalTool uploads to the PCCS with that PCCS's user token, which only a per-host
        # PCCS (made by the dcap step) gives us; a shared one's token is its operator's.
        r.error(
            join(path, "registration"),
            "`pckid` registers through the per-host PCCS, but dcap.pccsUrl points at a shared PCCS",
            "use `registration: mpa` (or `none` and register the platforms with the shared PCCS's own "
            "tooling), or remove dcap.pccsUrl to run a PCCS on each host",
        )
    # A per-host PCCS listens on loopback only and serves Intel-signed collateral with the
    # self-signed certificate its package generates: verification is off by default there. A
    # shared PCCS crosses the network: its certificate must verify outside `dev`.
    secure = r.boolean(m.get("useSecureCert"), join(path, "useSecureCert"), pccs_url is not None)
    if not secure and pccs_url is not None and r.stack != DEV_STACK:
        r.error(
            join(path, "useSecureCert"),
            f"TLS verification of the shared PCCS at dcap.pccsUrl may only be off in `dev` (this is `{r.stack}`)",
            "give the PCCS a certificate the hosts trust and set `useSecureCert: true`",
        )
    if key is None:
        return None
    return DcapConfig(
        pccs_api_key=key,
        registration=registration,
        pccs_port=pccs_port,
        qgs_port=qgs_port,
        pccs_url=pccs_url,
        use_secure_cert=secure,
    )


# --------------------------------------------------------------------------------------------
# Input sources


def stack_from_filename(path: Path) -> str:
    m = re.fullmatch(r"Pulumi\.(.+)\.yaml", path.name)
    if not m:
        raise ValueError(f"{path}: expected a stack file named Pulumi.<stack>.yaml")
    return m.group(1)


def stack_file_config(path: Path) -> Mapping[str, Any]:
    """The `config:` mapping of a stack file, read with the project's one safe YAML loader (no key
    twice, bounded size and aliases). Raises ConfigErrors naming what is wrong with the file."""

    def refuse(problem: str, fix: str) -> ConfigErrors:
        return ConfigErrors((ConfigError("config", problem, fix),))

    try:
        doc = load_yaml(path.read_bytes())
    except YamlRefused as exc:
        raise refuse(f"{path.name} is not a stack file we read: {exc}", "fix the YAML at that place") from None
    if doc is not None and not isinstance(doc, Mapping):
        raise refuse(
            f"{path.name} holds {kind_of(doc)} at the top level, not a mapping with `config:`",
            "start the file with `config:` and the `tdx-vllm:<key>: value` lines under it",
        )
    config = (doc or {}).get("config")
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise refuse(
            f"expected a mapping of `tdx-vllm:<key>: value` lines, got {kind_of(config)}",
            "write each key under `config:` as `  tdx-vllm:hosts: ...` (see stacks/Pulumi.dev.yaml)",
        )
    return config


def read_stack_file(path: Path) -> Mapping[str, Any]:
    """The stack file's `config:` with the project prefix removed and secure leaves as ENCRYPTED."""
    return _project_keys(stack_file_config(path))


def _project_keys(config: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        ns, _, name = str(key).partition(":")
        if ns != PROJECT or not name:
            out[f"_{key}"] = value  # other namespaces (e.g. pulumi:*) are not ours to check
            continue
        out[name] = _mark_encrypted(value)
    return out


def _mark_encrypted(value: Any) -> Any:
    if is_secure_marker(value):
        return ENCRYPTED
    if isinstance(value, Mapping):
        return {k: _mark_encrypted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mark_encrypted(v) for v in value]
    return value


def secret_paths_of(value: Any, prefix: str = "") -> set[str]:
    """Key paths (as used in error messages) of every ENCRYPTED leaf."""
    if value is ENCRYPTED:
        return {prefix}
    paths: set[str] = set()
    if isinstance(value, Mapping):
        for k, v in value.items():
            paths |= secret_paths_of(v, join(prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            paths |= secret_paths_of(v, f"{prefix}[{i}]")
    return paths


# What `pulumi config set --secret` writes under `secure:` (the passphrase provider's "v1:<salt>:<data>",
# base64); anything else, e.g. a template's `v1:REPLACE`, was never set and fails only at `preview`
# with a message that names no key.
_CIPHERTEXT = re.compile(r"v1:[A-Za-z0-9+/]+=*:[A-Za-z0-9+/]+=*")


def placeholder_secrets(value: Any, prefix: str = "") -> list[ConfigError]:
    """A `secure:` leaf of the stack file that is not ciphertext: one error each, naming the key."""
    if is_secure_marker(value):
        text = value["secure"]
        if isinstance(text, str) and _CIPHERTEXT.fullmatch(text):
            return []
        shown = text if isinstance(text, str) and len(text) <= 24 else "..."
        return [
            ConfigError(
                prefix,
                f"`secure: {shown}` is a placeholder, not a value `pulumi config set --secret` wrote",
                f"pulumi config set --secret --path '{prefix}' (it prompts; `< FILE` for a key file)",
            )
        ]
    if isinstance(value, Mapping):
        return [e for k, v in value.items() for e in placeholder_secrets(v, join(prefix, k))]
    if isinstance(value, list):
        return [e for i, v in enumerate(value) for e in placeholder_secrets(v, f"{prefix}[{i}]")]
    return []


# Pulumi hands the program the stack's whole config in one environment variable (PULUMI_CONFIG, JSON
# with every value decrypted), and Linux refuses to start a program with any one variable over
# 128 KiB (MAX_ARG_STRLEN): `pulumi preview` then stops with "argument list too long" before the
# program runs. A private key per host reaches it at about 210 hosts: 200 start, 230 do not (an ed25519 key each).
MAX_CONFIG_ENV = 128 * 1024


def _plain_estimate(value: Any) -> Any:
    """`value` with each `secure:` leaf replaced by a string as long as its plain text."""
    if is_secure_marker(value):
        data = str(value["secure"]).rpartition(":")[2]
        return "x" * max(0, len(data) * 3 // 4 - 16)  # base64 of plain text + a 16-byte GCM tag
    if isinstance(value, Mapping):
        return {k: _plain_estimate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_estimate(v) for v in value]
    return value


def config_size_problem(config: Mapping[str, Any]) -> list[ConfigError]:
    """The stack's config too large for the one environment variable Pulumi passes it in."""
    env = {str(k): v if isinstance(v, str) else json.dumps(_plain_estimate(v)) for k, v in config.items()}
    size = len("PULUMI_CONFIG=") + len(json.dumps(env))
    if size < MAX_CONFIG_ENV:
        return []
    return [
        ConfigError(
            "hosts",
            f"the stack's config is about {size // 1024} KiB: Pulumi passes it to the program in one environment "
            "variable, which Linux caps at 128 KiB (`pulumi preview` would stop with 'argument list too long')",
            "set the SSH key once for every host (`pulumi config set --secret --path 'ssh.privateKey' < "
            "~/.ssh/id_ed25519`) and remove the per-host `privateKey`s, or split the fleet into stacks",
        )
    ]


def missing_pinned_firmware(stack: str, firmware_dir: Path) -> list[ConfigError]:
    """Outside `dev`, `pulumi up` computes the pins from the pinned TD firmware and refuses without it;
    say so offline too."""
    if stack == DEV_STACK:
        return []
    try:
        firmware = load_boot_manifest(td_boot_manifest(stack, firmware_dir)).firmware
    except CatalogError:
        return []  # reported by the workload check, with the manifest's own words
    where = default_artifact_dir()
    if firmware.file is None or (where / firmware.file).is_file():
        return []
    return [
        ConfigError(
            "pins",
            f"the pinned TD firmware {firmware.file} is not in {where} (the `pins` of a `{stack}` stack are "
            "computed from it)",
            "python -m components firmware fetch (tools/quickstart.sh does it)",
        )
    ]


def load_stack_file(path: Path, firmware_dir: Path = FIRMWARE_DIR) -> StackConfig:
    """The stack file's config, parsed and validated as `pulumi preview` would (templates included)."""
    return _parse_file_config(stack_file_config(path), path, firmware_dir)


def _parse_file_config(config: Mapping[str, Any], path: Path, firmware_dir: Path) -> StackConfig:
    raw = _project_keys(config)
    return parse_stack(
        {k: v for k, v in raw.items() if not k.startswith("_")}, stack_from_filename(path), firmware_dir=firmware_dir
    )


def check_stack_file(path: Path, firmware_dir: Path = FIRMWARE_DIR) -> StackConfig:
    """`load_stack_file`, and what would still stop `pulumi up` of a filled-in file: secrets left as
    template placeholders, and (outside `dev`) the pinned TD firmware missing. Every error at once."""
    config = stack_file_config(path)
    extra = [
        e
        for key, value in config.items()
        if str(key).startswith(f"{PROJECT}:")
        for e in placeholder_secrets(value, str(key).partition(":")[2])
    ]
    extra += missing_pinned_firmware(stack_from_filename(path), firmware_dir)
    extra += config_size_problem(config)
    try:
        cfg = _parse_file_config(config, path, firmware_dir)  # the file read once
    except ConfigErrors as exc:
        raise ConfigErrors((*exc.errors, *extra)) from None
    if extra:
        raise ConfigErrors(extra)
    return cfg


def load_from_pulumi(stack_file_dir: Path = REPO_ROOT / "stacks") -> StackConfig:
    """Read the running stack's decrypted config and validate it (used by __main__.py)."""
    import pulumi
    from pulumi.runtime import config as rt_config

    stack = pulumi.get_stack()
    config = pulumi.Config(PROJECT)
    raw: dict[str, Any] = {}
    secret_top: set[str] = set()
    for key in _TOP_KEYS:
        text = config.get(key)
        if text is None:
            continue
        raw[key] = _json_or_text(text)
        if rt_config.is_config_secret(f"{PROJECT}:{key}"):
            secret_top.add(key)
    leaves = _secret_leaves(raw, secret_top, stack_file_dir / f"Pulumi.{stack}.yaml")
    return parse_stack(raw, stack, secret_paths=leaves)


def load_from_cli_json(doc: Mapping[str, Any], stack: str, stack_file_dir: Path = REPO_ROOT / "stacks") -> StackConfig:
    """The same config as the program reads, from `pulumi config --json --show-secrets` (for the
    commands that read a stack from outside a Pulumi run: `python -m components status`)."""
    raw: dict[str, Any] = {}
    secret_top: set[str] = set()
    for full, entry in doc.items():
        ns, _, key = str(full).partition(":")
        if ns != PROJECT or key not in _TOP_KEYS or not isinstance(entry, Mapping):
            continue
        raw[key] = entry["objectValue"] if "objectValue" in entry else _json_or_text(str(entry.get("value", "")))
        if entry.get("secret"):
            secret_top.add(key)
    leaves = _secret_leaves(raw, secret_top, stack_file_dir / f"Pulumi.{stack}.yaml")
    return parse_stack(raw, stack, secret_paths=leaves)


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _secret_leaves(raw: Mapping[str, Any], secret_top: set[str], stack_file: Path) -> set[str]:
    # Pulumi tells us only which top-level keys hold secrets; the stack file says which leaves.
    if stack_file.exists():
        return secret_paths_of({k: v for k, v in read_stack_file(stack_file).items() if not k.startswith("_")})
    # Without the file, every leaf under a secret top-level key counts as secret, except those that
    # are plain by design (a BMC user name: a secret one is refused only where the file says so).
    return {
        p
        for p in _all_leaf_paths(raw)
        if p.split(".")[0].split("[")[0] in secret_top and not p.endswith(".bmc.username")
    }


def _all_leaf_paths(value: Any, prefix: str = "") -> set[str]:
    if isinstance(value, Mapping):
        return set().union(*(_all_leaf_paths(v, join(prefix, k)) for k, v in value.items())) if value else set()
    if isinstance(value, list):
        return set().union(*(_all_leaf_paths(v, f"{prefix}[{i}]") for i, v in enumerate(value))) if value else set()
    return {prefix}


def load_for_command(path: Path) -> StackConfig | None:
    """`load_stack_file` for a command line: every problem printed on stderr (and None), never a
    traceback."""
    try:
        return check_stack_file(path)
    except ConfigErrors as exc:
        print(f"{path}: {exc.render()}", file=sys.stderr)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"{path}: cannot read the stack file: {exc}", file=sys.stderr)
    return None


def stack_file_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("stack_file", type=Path, metavar="stacks/Pulumi.<stack>.yaml")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = stack_file_parser(
        "python -m components check",
        "Check a stack file offline, as `pulumi preview` would, and list every error at once "
        "(also `python -m components.config FILE`).",
    ).parse_args(argv)
    cfg = load_for_command(args.stack_file)
    if cfg is None:
        return 1
    n = len(cfg.hosts)
    print(f"{args.stack_file}: valid ({n} host{'s' if n != 1 else ''}, stack `{cfg.stack}`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
