"""The one YAML loader (issue 17, item 4): no key twice, bounded size and alias expansion, and a
clear refusal for what is not YAML."""

from __future__ import annotations

import time

import pytest

from tdxattest.core.safe_yaml import YamlRefused, load_yaml


def alias_bomb(levels: int = 9, width: int = 10) -> str:
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_plain_yaml_and_merges_load_as_safe_load_would() -> None:
    assert load_yaml("a: 1\nb: [x, y]\n") == {"a": 1, "b": ["x", "y"]}
    assert load_yaml("base: &b {x: 1}\nuse:\n  <<: *b\n  y: 2\n") == {"base": {"x": 1}, "use": {"x": 1, "y": 2}}
    assert load_yaml("") is None and load_yaml(b"k: v\n") == {"k": "v"}


def test_a_key_given_twice_is_refused_with_its_name() -> None:
    with pytest.raises(YamlRefused, match=r"duplicate key 'hostKey'"):
        load_yaml("ssh:\n  hostKey: ssh-ed25519 AAAA1\n  hostKey: ssh-ed25519 AAAA2\n")


def test_an_alias_bomb_is_refused_at_once() -> None:
    bomb = alias_bomb()
    assert len(bomb) < 3000
    t = time.perf_counter()
    with pytest.raises(YamlRefused, match="expands to more than 100000 nodes"):
        load_yaml(bomb)
    assert time.perf_counter() - t < 1.0  # it took 70 s and 1.2 GB when something walked it
    assert load_yaml(alias_bomb(levels=2))["a2"][0] == [["lol"]] * 10  # a few aliases are fine


def test_size_encoding_depth_and_cycles_are_refused() -> None:
    with pytest.raises(YamlRefused, match="more than the 1048576"):
        load_yaml("k: " + "x" * (1 << 20))
    with pytest.raises(YamlRefused, match="not UTF-8"):
        load_yaml(b"k: \xff\xfe\n")
    with pytest.raises(YamlRefused, match="nested deeper"):
        load_yaml("[" * 100_000 + "]" * 100_000)
    with pytest.raises(YamlRefused):
        load_yaml("a: &x [*x]\n")
    with pytest.raises(YamlRefused):
        load_yaml("a: [unclosed\n")
