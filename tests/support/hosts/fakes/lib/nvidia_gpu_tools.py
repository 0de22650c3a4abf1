#!/usr/bin/env python3
"""Fake NVIDIA gpu-admin-tools `nvidia_gpu_tools.py` (shipped in a test-built wheel).

Keeps each device's CC and PPCIe mode in /var/lib/tdxfake/gpu.json (the fake host's state) and
prints what the real tool (v2025.11.21) prints (tests/fixtures/host/gpu/README.md): the version,
argument and topology lines plain on stdout, then timestamped log lines, e.g.
  2026-01-15,10:00:00.188 INFO     GPU 0000:b8:00.0 H100 0x2330 BAR0 0xa4000000 CC mode is on
Like the real tool it turns PPCIe off itself when CC is set, and ignores CC on an NVSwitch.
Every invocation is appended to /var/lib/tdxfake/gpu_tool.log (one JSON line, "set": true for
mode changes). A mode set without the matching --reset-after-* flag stays pending until a reset.
"""

import argparse
import json
import os
import sys
import time

VERSION = "@VERSION@"
STATE = os.environ.get("TDXFAKE_STATE", "/var/lib/tdxfake")
GPU_JSON = os.path.join(STATE, "gpu.json")


def log(level, msg):
    now = time.time()
    stamp = time.strftime("%Y-%m-%d,%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
    print(f"{stamp} {level:<8} {msg}", file=sys.stderr, flush=True)


def bar0(bdf):
    return f"0x{0x90000000 + int(bdf.split(':')[1], 16) * 0x200000:08x}"


def desc(bdf, dev):
    kind = "NvSwitch" if dev.get("kind") == "nvswitch" else "GPU"
    return f"{kind} {bdf} {dev.get('name', 'H100')} 0x{dev.get('device_id', '2330')} BAR0 {bar0(bdf)}"


def warn_modes(bdf, dev):
    for mode, key in (("CC", "cc"), ("PPCIe", "ppcie")):
        if dev.get(key, "off") != "off":
            log("WARNING", f"{desc(bdf, dev)} has {mode} mode {dev[key]}, some functionality may not work")


def save(devices):
    tmp = GPU_JSON + f".{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(devices, fh, indent=1, sort_keys=True)
    os.replace(tmp, GPU_JSON)


def main(argv):
    p = argparse.ArgumentParser(prog="nvidia_gpu_tools.py")
    p.add_argument("--devices", default=None)
    p.add_argument("--gpu-bdf", default=None)
    p.add_argument("--gpu", type=int, default=None)
    p.add_argument("--log", default="info")
    p.add_argument("--query-cc-mode", action="store_true")
    p.add_argument("--query-ppcie-mode", action="store_true")
    p.add_argument("--set-cc-mode", choices=["on", "off", "devtools"])
    p.add_argument("--set-ppcie-mode", choices=["on", "off"])
    p.add_argument("--reset-after-cc-mode-switch", action="store_true")
    p.add_argument("--reset-after-ppcie-mode-switch", action="store_true")
    p.add_argument("--reset-with-os", action="store_true")
    args = p.parse_args(argv)
    with open(os.path.join(STATE, "gpu_tool.log"), "a") as fh:
        fh.write(
            json.dumps({"argv": argv, "set": bool(args.set_cc_mode or args.set_ppcie_mode), "t": round(time.time(), 3)})
            + "\n"
        )
    with open(GPU_JSON) as fh:
        devices = json.load(fh)

    print(f"NVIDIA GPU Tools version {VERSION}")
    print(f"Command line arguments: {[os.path.abspath(__file__)] + argv}")
    print("Topo:")
    for bdf, dev in sorted(devices.items()):
        bus = int(bdf.split(":")[1], 16)
        print(f"  Intel root port {bdf[:5]}{bus - 3:02x}:01.0")
        print(f"   PciBridge {bdf[:5]}{bus - 2:02x}:00.0 c030:1000")
        print(f"    PciBridge {bdf[:5]}{bus - 1:02x}:00.0 c030:1000")
        print(f"     {desc(bdf, dev)}", flush=True)

    kinds = {"gpus": "gpu", "nvswitches": "nvswitch"}
    if args.gpu_bdf:
        if args.gpu_bdf not in devices:
            log("ERROR", f"No GPU or NvSwitch with BDF {args.gpu_bdf} found")
            return 1
        selected = [args.gpu_bdf]
    elif args.devices:
        want = {kinds.get(d.strip(), d.strip()) for d in args.devices.split(",")}
        selected = [b for b, d in sorted(devices.items()) if d.get("kind", "gpu") in want]
    else:
        gpus = [b for b, d in sorted(devices.items()) if d.get("kind", "gpu") == "gpu"]
        if len(gpus) != 1:
            log("ERROR", "More than one GPU found, select one with --gpu-bdf or use --devices")
            return 1
        selected = gpus
    for bdf in selected:
        log("INFO", f"Selected {desc(bdf, devices[bdf])}")
    for bdf in selected:
        warn_modes(bdf, devices[bdf])

    for bdf in selected:
        dev = devices[bdf]
        if args.set_ppcie_mode:
            dev["ppcie_pending"] = args.set_ppcie_mode
            log(
                "INFO",
                f"{desc(bdf, dev)} PPCIe mode set to {args.set_ppcie_mode}. It will be active after GPU or switch reset.",
            )
            if args.reset_after_ppcie_mode_switch:
                dev["ppcie"] = dev.pop("ppcie_pending")
                log("INFO", f"{desc(bdf, dev)} was reset to apply the new PPCIe mode.")
        if args.set_cc_mode and dev.get("kind") != "nvswitch":  # the real tool skips switches silently
            if args.set_cc_mode != "off" and dev.get("ppcie", "off") == "on":
                dev["ppcie"] = "off"  # the real tool turns PPCIe off before a CC switch
            dev["cc_pending"] = args.set_cc_mode
            log("INFO", f"{desc(bdf, dev)} CC mode set to {args.set_cc_mode}. It will be active after GPU reset.")
            if args.reset_after_cc_mode_switch:
                dev["cc"] = dev.pop("cc_pending")
                log("INFO", f"{desc(bdf, dev)} was reset to apply the new CC mode.")
                warn_modes(bdf, dev)
        if args.query_cc_mode and dev.get("kind", "gpu") == "gpu":
            log("INFO", f"{desc(bdf, dev)} CC mode is {dev.get('cc', 'off')}")
        if args.query_ppcie_mode:
            log("INFO", f"{desc(bdf, dev)} PPCIe mode is {dev.get('ppcie', 'off')}")
    save(devices)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
