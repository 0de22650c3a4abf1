"""Write the image's static CDI spec for the NVIDIA GPUs (run by tools/build-guest-image.sh).

    python3 guest/image/cdi_spec.py ROOT > ROOT/etc/cdi/nvidia.json

The guest agent starts vLLM with `podman run --device nvidia.com/gpu=all` (guest_agent/server.py).
Debian has no nvidia-container-toolkit to generate a spec at boot, so the build writes one from the
driver files it installed: it is part of the measured root filesystem, like everything else.

`nvidia.com/gpu=all` gives the container
  * /dev/nvidiactl, /dev/nvidia-uvm and /dev/nvidia-uvm-tools, taken from the TD when the container
    starts (they exist once nvidia-persistenced's unit has loaded the modules; nvidia-uvm's major
    number is assigned at load time), and /dev/nvidia0 .. /dev/nvidia{MAX_GPUS-1} as character
    devices 195:N: a static spec cannot know how many GPUs the host passes through, and CUDA opens
    only the nodes of the GPUs the driver reports;
  * the driver's user-space libraries vLLM loads, bind-mounted read-only from where the image's
    alternatives resolve them to the multiarch directory the container's loader searches, and
    nvidia-smi.

The paths are resolved inside ROOT (absolute symlinks such as /etc/alternatives/... too), so the
spec names files of the image, never of the build machine. A required library that does not resolve
fails the build. Pure Python, standard library only.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import PurePosixPath

CDI_VERSION = "0.5.0"
KIND = "nvidia.com/gpu"
LIB_DIR = "/usr/lib/x86_64-linux-gnu"
# NVML (vLLM's platform detection) and the CUDA driver library: without them nothing runs.
REQUIRED_LIBS = ("libcuda.so.1", "libnvidia-ml.so.1")
# What libcuda loads when present: the PTX JIT, NVVM (LTO), and the PKCS #11 module CC mode uses.
OPTIONAL_LIB_PREFIXES = ("libnvidia-ptxjitcompiler.so.1", "libnvidia-nvvm.so.4", "libnvidia-pkcs11")
BINARIES = ("/usr/bin/nvidia-smi",)
NVIDIA_MAJOR = 195  # /dev/nvidiaN (character devices 195:N; nvidiactl is 195:255)
MAX_GPUS = 8  # an HGX board: 8 GPUs (ppcie)
MOUNT_OPTIONS = ["ro", "nosuid", "nodev", "bind"]


class SpecError(RuntimeError):
    pass


def resolve(root: str, path: str, limit: int = 40) -> str | None:
    """`path` with every symlink resolved inside `root` (the image's view); None if it does not
    resolve to a regular file there."""
    parts = list(PurePosixPath(path).parts[1:])
    done: list[str] = []
    hops = 0
    while parts:
        name = parts.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(root, *done, name)
        if os.path.islink(here):
            hops += 1
            if hops > limit:
                return None
            target = os.readlink(here)
            parts = (
                list(PurePosixPath(target).parts[1:] if target.startswith("/") else PurePosixPath(target).parts) + parts
            )
            if target.startswith("/"):
                done = []
            continue
        if not os.path.lexists(here):
            return None
        done.append(name)
    full = os.path.join(root, *done)
    return "/" + "/".join(done) if done and os.path.isfile(full) else None


def library_mounts(root: str) -> list[dict]:
    mounts = []
    names = sorted(os.listdir(os.path.join(root, LIB_DIR.lstrip("/"))))
    wanted = list(REQUIRED_LIBS) + [
        n for n in names if n.startswith(OPTIONAL_LIB_PREFIXES) and ".so" in n and n not in REQUIRED_LIBS
    ]
    seen: set[str] = set()
    for name in wanted:
        container = f"{LIB_DIR}/{name}"
        host = resolve(root, container)
        if host is None:
            if name in REQUIRED_LIBS:
                raise SpecError(
                    f"{container} does not resolve to a file in the image (is the driver's {name} installed?)"
                )
            continue
        if name.endswith(".so") or container in seen:
            continue  # development symlinks (libfoo.so) are not what a program loads
        seen.add(container)
        mounts.append({"hostPath": host, "containerPath": container, "options": MOUNT_OPTIONS})
    for binary in BINARIES:
        host = resolve(root, binary)
        if host is not None:
            mounts.append({"hostPath": host, "containerPath": binary, "options": MOUNT_OPTIONS})
    return mounts


def spec(root: str) -> dict:
    nodes: list[dict] = [{"path": "/dev/nvidiactl"}, {"path": "/dev/nvidia-uvm"}, {"path": "/dev/nvidia-uvm-tools"}]
    nodes += [
        {"path": f"/dev/nvidia{i}", "type": "c", "major": NVIDIA_MAJOR, "minor": i, "permissions": "rw"}
        for i in range(MAX_GPUS)
    ]
    return {
        "cdiVersion": CDI_VERSION,
        "kind": KIND,
        "devices": [{"name": "all", "containerEdits": {"deviceNodes": nodes}}],
        "containerEdits": {"mounts": library_mounts(root)},
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: cdi_spec.py ROOT", file=sys.stderr)
        return 2
    try:
        doc = spec(argv[0])
    except (SpecError, OSError) as exc:
        print(f"cdi_spec: {exc}", file=sys.stderr)
        return 1
    json.dump(doc, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
