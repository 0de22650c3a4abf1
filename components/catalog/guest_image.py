"""Pin a built guest image in the TD boot manifests, and check a build against the pins.

`tools/build-guest-image.sh` writes `manifest.json` next to each stack's artifacts; its
`firmwareTd` block holds the manifest sections for that image (kernel, initrd, cmdline, rootfs, and
gpuDriver: the NVIDIA driver it carries).
`pin` writes them into `firmware/td/` (prod: the manifest every non-dev stack launches; dev: its own,
on top of the prod one through `base:`) and copies the files into the artifact directory under the
names the sections give. `check` compares a build with the committed pins, which is how CI proves
the recipe still reproduces the pinned image bit for bit.

    .venv/bin/python -m components guest-image pin   artifacts/guest-image [--artifact-dir DIR]
    .venv/bin/python -m components guest-image check artifacts/guest-image

The rewrite is textual (one top-level section replaced at a time) so the manifests' comments survive.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from components.catalog.artifacts import default_artifact_dir
from components.catalog.pinfile import CatalogError, load_pin_yaml
from components.catalog.td_manifest import TD_BOOT_MANIFEST, load_boot_manifest, read_manifest, td_boot_manifest
from components.paths import FIRMWARE_DIR
from guest_agent import DEV_STACK
from tdxattest.core.errors import InputError
from tdxattest.core.files import hash_file

SECTIONS = ("kernel", "initrd", "cmdline", "rootfs", "gpuDriver")
# What `check` compares in each section (cmdline by value, the files by name and digests, the driver
# by version, CUDA ceiling, packages and module digests).
CHECKED_FIELDS = {
    "cmdline": ("value",),
    "gpuDriver": ("version", "cuda", "packages", "modules"),
}
FILE_FIELDS = ("file", "size", "sha256", "sha384")
# Which file of the build each pinned section names (cmdline is pinned by value).
BUILD_FILES = {"kernel": "vmlinuz", "initrd": "initrd.img", "rootfs": "rootfs.verity.img"}
STACKS = ("prod", DEV_STACK)


def pin_sections(image: Mapping[str, Any]) -> dict[str, dict]:
    """The TD boot manifest sections for one built image (its manifest.json). Pure."""
    block = image.get("firmwareTd")
    if not isinstance(block, Mapping) or set(block) != set(SECTIONS):
        raise CatalogError(
            f"manifest.json `firmwareTd` with exactly {', '.join(SECTIONS)} (rebuild with this "
            f"checkout's tools/build-guest-image.sh), seen {sorted(block) if isinstance(block, Mapping) else block!r}"
        )
    return {key: dict(block[key]) for key in SECTIONS}


def render_section(key: str, value: Mapping[str, Any]) -> str:
    return yaml.safe_dump({key: dict(value)}, sort_keys=False, width=400, allow_unicode=True)


def rewrite_sections(text: str, sections: Mapping[str, Mapping[str, Any]]) -> str:
    """`text` (a manifest) with each named top-level section replaced, or appended where absent.
    Comment and blank lines directly above the next top-level key stay with that key; everything
    else from `<key>:` up to there goes. Refuses a result that does not load back to exactly the
    new sections (a layout this line-based edit does not understand). Pure."""
    out = text
    for key, value in sections.items():
        block = render_section(key, value)
        lines = out.splitlines(keepends=True)
        start = next((i for i, line in enumerate(lines) if line.startswith(f"{key}:")), None)
        if start is None:
            out = out.rstrip("\n") + "\n" + block
            continue
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i][:1] not in ("", " ", "\t", "#", "\n")), len(lines)
        )
        while end > start + 1 and (lines[end - 1].startswith("#") or not lines[end - 1].strip()):
            end -= 1
        out = "".join(lines[:start]) + block + "".join(lines[end:])
    try:
        loaded = load_pin_yaml(out)
    except yaml.YAMLError as exc:
        raise CatalogError(
            f"the rewritten manifest does not load ({str(exc).splitlines()[0]}): a duplicate or "
            "quoted section key; write the section by hand"
        ) from None
    for key, value in sections.items():
        if not isinstance(loaded, Mapping) or loaded.get(key) != dict(value):
            raise CatalogError(
                f"rewriting `{key}` did not give the new values (an unusual layout of that section: "
                "put it back in the shape `pin` writes, or write the section by hand)"
            )
    return out


def differences(built: Mapping[str, Mapping[str, Any]], pinned: Mapping[str, Any]) -> list[str]:
    """One line per section where a build differs from the manifest's pins. Pure."""
    out = []
    for key in SECTIONS:
        want, have = pinned.get(key), built[key]
        if not isinstance(want, Mapping):
            shown = have.get("sha256") or have.get("value") or have.get("version")
            out.append(f"{key}: pinned {want!r}, built {shown!r}")
            continue
        for field in CHECKED_FIELDS.get(key, FILE_FIELDS):
            if field in have and want.get(field) != have[field]:
                out.append(f"{key}.{field}: pinned {want.get(field)!r}, built {have[field]!r}")
    return out


def _stack_dirs(image_dir: Path) -> dict[str, Path]:
    """{stack: dir} for a `--stack all` output (prod/, dev/) or one stack's directory."""
    if (image_dir / "manifest.json").is_file():
        return {_read_image(image_dir)["stack"]: image_dir}
    found = {s: image_dir / s for s in STACKS if (image_dir / s / "manifest.json").is_file()}
    if not found:
        raise CatalogError(
            f"{image_dir}: no manifest.json here or in prod/ or dev/; build the image first "
            "(tools/build-guest-image.sh --stack all --out DIR)"
        )
    return found


def _read_image(stack_dir: Path) -> dict:
    try:
        data = json.loads((stack_dir / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise CatalogError(f"{stack_dir}/manifest.json: {exc}") from None
    if data.get("stack") not in STACKS:
        raise CatalogError(f"{stack_dir}/manifest.json: `stack` one of {STACKS}, seen {data.get('stack')!r}")
    return data


def _dev_manifest_text(sections: Mapping[str, Mapping[str, Any]]) -> str:
    head = (
        "# TD boot artifacts of the `dev` stack: the dev guest image (serial autologin, software quotes\n"
        "# allowed; docs/guest-image.md) on the firmware, VM shape and ACPI pins of the prod manifest.\n"
        "# Written by `python -m components guest-image pin`; do not edit the sections by hand.\n"
        "schema: 1\n"
        "name: debian-trixie-ovmf-direct-boot-dev\n"
        f"base: {TD_BOOT_MANIFEST}\n"
    )
    return head + "".join(render_section(k, v) for k, v in sections.items())


def _same(entry: Mapping[str, Any], path: Path) -> bool:
    """Whether `path` has the size, sha256 and sha384 the build recorded for it."""
    try:
        h = hash_file(path)
    except InputError:
        return False
    return (h.size, h.sha256, h.sha384) == (entry["size"], entry["sha256"], entry["sha384"])


def _copy_verified(src: Path, entry: Mapping[str, Any], dest: Path) -> None:
    """Copy `src` to `dest` if it is the file the build recorded (a stale build dir is refused) and
    `dest` does not already hold it."""
    if not _same(entry, src):
        raise CatalogError(
            f"{src}: not the file manifest.json records (size {entry['size']}, sha256 {entry['sha256']}); rebuild"
        )
    if _same(entry, dest):
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def pin(image_dir: Path, firmware_dir: Path = FIRMWARE_DIR, artifact_dir: Path | None = None) -> list[str]:
    """Copy each built stack's files into the artifact directory, then write its sections into its
    TD boot manifest; the lines to print."""
    artifact_dir = artifact_dir or default_artifact_dir()
    lines = []
    for stack, stack_dir in _stack_dirs(image_dir).items():
        sections = pin_sections(_read_image(stack_dir))
        target = td_boot_manifest(stack, firmware_dir)
        if target.exists():
            text = rewrite_sections(target.read_text(), sections)
        elif stack == DEV_STACK:
            text = _dev_manifest_text(sections)
        else:
            raise CatalogError(f"{target}: no prod TD boot manifest to pin into")
        for key, name in BUILD_FILES.items():
            _copy_verified(stack_dir / name, sections[key], artifact_dir / sections[key]["file"])
        # Validated before it replaces the pinned manifest (next to it, so `base:` resolves the same).
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text)
        try:
            load_boot_manifest(tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        lines.append(
            f"{stack}: pinned in {target} (root hash {sections['rootfs']['version']}); files in {artifact_dir}"
        )
    return lines


def check(image_dir: Path, firmware_dir: Path = FIRMWARE_DIR) -> list[str]:
    """Every difference between the built stacks and their pinned manifests (empty: reproduced)."""
    problems = []
    for stack, stack_dir in _stack_dirs(image_dir).items():
        target = td_boot_manifest(stack, firmware_dir)
        for line in differences(pin_sections(_read_image(stack_dir)), read_manifest(target)):
            problems.append(f"{stack} ({target.name}): {line}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m components guest-image", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("pin", "check"))
    ap.add_argument(
        "image_dir", type=Path, help="tools/build-guest-image.sh --out directory (prod/, dev/) or one stack's"
    )
    ap.add_argument("--firmware-dir", type=Path, default=FIRMWARE_DIR)
    ap.add_argument("--artifact-dir", type=Path, default=None, help="default: $TDX_VLLM_ARTIFACT_DIR or artifacts/")
    args = ap.parse_args(argv)
    try:
        if args.command == "pin":
            print("\n".join(pin(args.image_dir, args.firmware_dir, args.artifact_dir)))
            return 0
        problems = check(args.image_dir, args.firmware_dir)
    except CatalogError as exc:
        print(f"guest image: {exc}", file=sys.stderr)
        return 2
    if problems:
        print(
            "the build differs from the pinned image:\n  " + "\n  ".join(problems) + "\nfix: if the recipe change "
            "is intended, re-pin (`.venv/bin/python -m components guest-image pin DIR`) and commit "
            "firmware/td/; otherwise find what made the build drift (docs/guest-image.md, Reproducibility)",
            file=sys.stderr,
        )
        return 1
    print("the build reproduces the pinned image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
