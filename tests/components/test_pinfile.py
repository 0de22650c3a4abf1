"""components.pinfile: every pin file under firmware/ refuses a key given twice."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from components.catalog.bios import load_vendor_table
from components.catalog.pinfile import CatalogError, load_pin_yaml, read_pin_file
from tests.support.paths import REPO


def test_duplicate_keys_are_refused_at_any_depth():
    assert load_pin_yaml("a: 1\nb: {c: 2}\n") == {"a": 1, "b": {"c": 2}}
    for text in ("a: 1\na: 2\n", "b:\n  c: 1\n  c: 2\n"):
        with pytest.raises(yaml.YAMLError, match="duplicate key"):
            load_pin_yaml(text)


def test_merge_keys_load_and_unhashable_keys_are_yaml_errors():
    # what yaml.safe_load reads, this reads the same; what it cannot, is a YAMLError (never a TypeError)
    text = "base: &b {x: 1, y: 2}\nchild:\n  <<: *b\n  y: 3\n"
    assert load_pin_yaml(text) == yaml.safe_load(text) == {"base": {"x": 1, "y": 2}, "child": {"x": 1, "y": 3}}
    with pytest.raises(yaml.YAMLError, match="unhashable key"):
        load_pin_yaml("? [a, b]\n: 1\n")


def test_gpu_pins_and_bios_tables_use_it(tmp_path):
    gpu = tmp_path / "h100.yaml"
    gpu.write_text((REPO / "firmware/gpu/h100-sxm.yaml").read_text() + "\nvbios: 96.00.00.00.00\n")
    with pytest.raises(CatalogError, match="duplicate key 'vbios'"):
        read_pin_file(gpu)
    fw = tmp_path / "fw"
    shutil.copytree(REPO / "firmware", fw)
    table = next((fw / "bios").glob("*.yaml"))
    first_key = next(iter(yaml.safe_load(table.read_text())))
    table.write_text(table.read_text() + f"\n{first_key}: again\n")
    with pytest.raises(CatalogError, match=f"duplicate key '{first_key}'"):
        load_vendor_table(table.stem, fw)


def test_a_pin_file_is_parsed_once_per_content_and_callers_get_their_own_copy(tmp_path: Path, monkeypatch) -> None:
    # 64 hosts read the same few pin files once per host and step: 388 parses, 2.5 s of a preview.
    import components.catalog.pinfile as pinfile

    calls: list[str] = []
    real = pinfile.load_yaml

    def counting(text: str) -> object:
        calls.append(text)
        return real(text)

    monkeypatch.setattr(pinfile, "load_yaml", counting)
    pinfile._parse.cache_clear()
    path = tmp_path / "pins.yaml"
    path.write_text("releases:\n  a: 1\n")
    first = pinfile.read_pin_file(path)
    first["releases"]["a"] = 99  # a caller's edit stays its own
    assert pinfile.read_pin_file(path) == {"releases": {"a": 1}} and len(calls) == 1
    path.write_text("releases:\n  a: 2\n")
    assert pinfile.read_pin_file(path) == {"releases": {"a": 2}} and len(calls) == 2
