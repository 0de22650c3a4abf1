"""Reading the pin files under firmware/ (TD boot manifests, GPU and tool pins, BIOS tables, TDX
module releases) with the project's one safe YAML loader (tdxattest.core.safe_yaml), which refuses a
key given twice in one mapping: plain YAML keeps the last of two equal keys without a word, so a
stale pin left below a new one would silently win."""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tdxattest.core.safe_yaml import load_yaml


class CatalogError(ValueError):
    """A pin file (or a file it pins) is missing or malformed; one line naming the file, the key,
    what was expected and what was seen."""


def load_pin_yaml(text: str) -> Any:
    """YAML through the project's one safe loader (tdxattest.core.safe_yaml): a duplicate key, an
    oversized file or an alias bomb is a `yaml.YAMLError`.

    Memoised on the text: the program reads the same few pin files once per host and step (388
    parses for 64 hosts, 2.5 s of a preview), and a deep copy keeps one caller's edits from
    reaching the next."""
    return copy.deepcopy(_parse(text))


@functools.lru_cache(maxsize=64)
def _parse(text: str) -> Any:
    return load_yaml(text)


def read_pin_file(path: Path, what: str = "manifest") -> Mapping[str, Any]:
    """A pin file's top-level mapping. Raises CatalogError."""
    try:
        data = load_pin_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, Mapping):
        raise CatalogError(f"{path}: expected a mapping at the top level")
    return data


def require(data: object, key: str, path: Path, pattern: str | None = None) -> str:
    """`data[key]` as a non-empty string (matching `pattern`), else CatalogError naming the key."""
    if not isinstance(data, Mapping):
        raise CatalogError(f"{path}: expected a mapping with `{key}`, not {data!r}")
    value = data.get(key)
    if value is None or str(value).strip() == "":
        raise CatalogError(f"{path}: `{key}` is required")
    if pattern and not re.fullmatch(pattern, str(value)):
        raise CatalogError(f"{path}: `{key}` = {value!r} does not match {pattern}")
    return str(value)
