"""Which of this repository's modules a set of entry modules imports, statically: every `import`
and `from ... import` in their source, at the top level or in a function (an import a code path may
run counts), except under `if TYPE_CHECKING:`."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

from tests.support.paths import REPO

SOURCE_ROOTS = {"tdxattest": REPO / "tdxattest" / "src" / "tdxattest", "guest_agent": REPO / "guest_agent"}


def module_file(module: str) -> Path | None:
    top, *rest = module.split(".")
    if top not in SOURCE_ROOTS:
        return None
    base = SOURCE_ROOTS[top].joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str) -> Iterator[str]:
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)] + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_closure(entries: Iterable[str], *, stop: tuple[str, ...] = ()) -> dict[str, Path]:
    """module -> file of every repository module `entries` import (with their packages), not
    following into a module under one of the `stop` prefixes."""
    found: dict[str, Path] = {}
    todo = list(entries)
    while todo:
        module = todo.pop()
        if module in found or any(module == s or module.startswith(s + ".") for s in stop):
            continue
        path = module_file(module)
        if path is None:
            continue
        found[module] = path
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += _imports(path, module)
    return found
