"""The guest image's NVIDIA driver is one pin (guest/image/config.sh DRIVER_*), and everything that
names the driver agrees with it: packages.lock, the patch series, the TD boot manifests' `gpuDriver`
(written from a build) and the guest driver each GPU SKU pins (firmware/gpu/*.yaml, measured into
RTMR3 and checked by the TD against its GPUs). Also the image's CDI spec generator
(guest/image/cdi_spec.py) on a tree laid out like the image."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from components.catalog.gpu import gpu_sku, known_gpu_models
from components.catalog.td_manifest import TD_BOOT_MANIFEST, TD_BOOT_MANIFEST_DEV, load_boot_manifest
from tests.support.paths import REPO

RECIPE = REPO / "guest" / "image"


def recipe() -> dict[str, list[str]]:
    """The DRIVER_* settings of config.sh as bash sees them, each as a list of words."""
    script = (
        f". {RECIPE / 'config.sh'}; "
        "for v in DRIVER_VERSION DRIVER_CUDA DRIVER_MODULE_SOURCE DRIVER_PACKAGES DRIVER_TOOLS DRIVER_MODULES "
        'DRIVER_APT_SOURCES; do n="$v[@]"; for x in "${!n}"; do printf "%s\\t%s\\n" "$v" "$x"; done; done'
    )
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    values: dict[str, list[str]] = {}
    for line in out.splitlines():
        key, _, value = line.partition("\t")
        values.setdefault(key, []).append(value)
    return values


def lock() -> tuple[dict[str, str], dict[str, str]]:
    """(image set, module-build set) of packages.lock, name -> version."""
    image: dict[str, str] = {}
    build: dict[str, str] = {}
    part = image
    for line in (RECIPE / "packages.lock").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line == "[module-build]":
            part = build
            continue
        name, _, version = line.partition("=")
        part[name] = version
    return image, build


def test_the_lock_carries_the_pinned_driver_in_the_image_and_its_source_only_in_the_module_build():
    r = recipe()
    version = r["DRIVER_VERSION"][0]
    image, build = lock()
    assert build, "packages.lock has no [module-build] section"
    for pkg in r["DRIVER_PACKAGES"]:
        assert image.get(pkg, "").startswith(f"{version}-"), f"{pkg}={image.get(pkg)} is not at {version}-*"
    for pkg in r["DRIVER_TOOLS"]:
        assert pkg in image, pkg
    source = r["DRIVER_MODULE_SOURCE"][0]
    assert build.get(source, "").startswith(f"{version}-") and source not in image
    # the compiler and headers build the modules; none of them is in the measured image
    assert {"make", "binutils", "libc6-dev"} <= set(build) and not {"make", "gcc-14", "binutils"} & set(image)
    assert not set(build) & set(image), "a package in both sets"


def test_every_gpu_sku_pins_the_driver_the_image_carries():
    version = recipe()["DRIVER_VERSION"][0]
    models = known_gpu_models()
    assert models, "no firmware/gpu/*.yaml"
    assert {m: gpu_sku(m).driver for m in models} == {m: version for m in models}


def test_the_td_boot_manifests_record_the_driver_of_the_recipe():
    r = recipe()
    image, build = lock()
    pinned = sorted(
        [f"{p}={image[p]}" for p in r["DRIVER_PACKAGES"] + r["DRIVER_TOOLS"]]
        + [f"{r['DRIVER_MODULE_SOURCE'][0]}={build[r['DRIVER_MODULE_SOURCE'][0]]}"]
    )
    for name in (TD_BOOT_MANIFEST, TD_BOOT_MANIFEST_DEV):
        driver = load_boot_manifest(REPO / "firmware" / "td" / name).gpu_driver
        assert driver is not None, f"firmware/td/{name} has no gpuDriver: re-pin the guest image"
        assert (driver.version, driver.cuda) == (r["DRIVER_VERSION"][0], r["DRIVER_CUDA"][0]), name
        assert list(driver.packages) == pinned, name
        assert sorted(driver.modules) == sorted(f"{m}.ko" for m in r["DRIVER_MODULES"]), name


def test_the_patch_series_of_the_pinned_driver_exists():
    version = recipe()["DRIVER_VERSION"][0]
    series = RECIPE / "nvidia" / version / "series"
    patches = [p for p in series.read_text().splitlines() if p.strip() and not p.startswith("#")]
    assert patches and all((series.parent / p).is_file() for p in patches)
    # every patch is a unified diff for `patch -p1` in the module tree, and says where it comes from
    for p in patches:
        text = (series.parent / p).read_text()
        head = text.split("\ndiff ", 1)[0]
        assert "diff -ruN a/" in text and len(head.strip().splitlines()) >= 5, p


def test_the_driver_sources_name_debian_through_placeholders_only():
    # The recipe never names a mirror host: the build substitutes its own --mirror.
    for entry in recipe()["DRIVER_APT_SOURCES"]:
        assert entry.split()[0] in ("@debian", "@debian-security"), entry


# --- the CDI spec --------------------------------------------------------------------------------


def cdi_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cdi_spec", RECIPE / "cdi_spec.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_image(root: Path, *, ml: bool = True) -> None:
    """Debian's layout: libraries in nvidia/current, reached through /etc/alternatives links."""
    lib = root / "usr/lib/x86_64-linux-gnu"
    cur = lib / "nvidia/current"
    cur.mkdir(parents=True)
    (root / "etc/alternatives").mkdir(parents=True)
    (root / "usr/lib/nvidia/current").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    names = ["libcuda", "libnvidia-ptxjitcompiler"] + (["libnvidia-ml"] if ml else [])
    for name in names:
        (cur / f"{name}.so.550.163.01").write_bytes(b"\x7fELF")
        os.symlink(f"{name}.so.550.163.01", cur / f"{name}.so.1")
        os.symlink(f"/usr/lib/x86_64-linux-gnu/nvidia/current/{name}.so.1", root / f"etc/alternatives/{name}.so.1")
        os.symlink(f"/etc/alternatives/{name}.so.1", lib / f"{name}.so.1")
    os.symlink("/etc/alternatives/libcuda.so.1", lib / "libcuda.so")  # a development link: not mounted
    (lib / "libnvidia-pkcs11-openssl3.so.550.163.01").write_bytes(b"\x7fELF")
    (root / "usr/lib/nvidia/current/nvidia-smi").write_bytes(b"\x7fELF")
    os.symlink("/usr/lib/nvidia/current/nvidia-smi", root / "usr/bin/nvidia-smi")


def test_the_cdi_spec_mounts_the_libraries_the_image_resolves_and_every_gpu_node(tmp_path: Path):
    cdi = cdi_module()
    fake_image(tmp_path)
    doc = cdi.spec(str(tmp_path))
    assert doc["kind"] == "nvidia.com/gpu" and [d["name"] for d in doc["devices"]] == ["all"]
    mounts = {m["containerPath"]: m["hostPath"] for m in doc["containerEdits"]["mounts"]}
    cur = "/usr/lib/x86_64-linux-gnu/nvidia/current"
    assert mounts == {
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1": f"{cur}/libcuda.so.550.163.01",
        "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1": f"{cur}/libnvidia-ml.so.550.163.01",
        "/usr/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so.1": f"{cur}/libnvidia-ptxjitcompiler.so.550.163.01",
        "/usr/lib/x86_64-linux-gnu/libnvidia-pkcs11-openssl3.so.550.163.01": (
            "/usr/lib/x86_64-linux-gnu/libnvidia-pkcs11-openssl3.so.550.163.01"
        ),
        "/usr/bin/nvidia-smi": "/usr/lib/nvidia/current/nvidia-smi",
    }
    assert all(m["options"] == ["ro", "nosuid", "nodev", "bind"] for m in doc["containerEdits"]["mounts"])
    nodes = doc["devices"][0]["containerEdits"]["deviceNodes"]
    # taken from the TD when the container starts (nvidia-uvm's major is dynamic) ...
    assert nodes[:3] == [{"path": "/dev/nvidiactl"}, {"path": "/dev/nvidia-uvm"}, {"path": "/dev/nvidia-uvm-tools"}]
    # ... and one character device per possible GPU, 195:N
    assert [(n["path"], n["type"], n["major"], n["minor"]) for n in nodes[3:]] == [
        (f"/dev/nvidia{i}", "c", 195, i) for i in range(8)
    ]


def test_the_cdi_spec_refuses_an_image_without_nvml(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    cdi = cdi_module()
    fake_image(tmp_path, ml=False)
    with pytest.raises(cdi.SpecError, match="libnvidia-ml.so.1 does not resolve to a file in the image"):
        cdi.spec(str(tmp_path))
    assert cdi.main([str(tmp_path)]) == 1
    assert "cdi_spec: /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1 does not resolve" in capsys.readouterr().err


def test_the_cdi_spec_resolves_inside_the_image_not_on_the_build_machine(tmp_path: Path):
    cdi = cdi_module()
    fake_image(tmp_path)
    # an absolute link resolves under the image root, whatever the build machine has at that path
    os.symlink("/etc/hostname", tmp_path / "usr/lib/x86_64-linux-gnu/libnvidia-nvvm.so.4")
    assert cdi.resolve(str(tmp_path), "/usr/lib/x86_64-linux-gnu/libnvidia-nvvm.so.4") is None
    mounts = [m["containerPath"] for m in cdi.spec(str(tmp_path))["containerEdits"]["mounts"]]
    assert "/usr/lib/x86_64-linux-gnu/libnvidia-nvvm.so.4" not in mounts
    # a loop of links does not hang
    os.symlink("loop-b", tmp_path / "loop-a")
    os.symlink("loop-a", tmp_path / "loop-b")
    assert cdi.resolve(str(tmp_path), "/loop-a") is None
    json.dumps(cdi.spec(str(tmp_path)))  # serialisable as written into the image
