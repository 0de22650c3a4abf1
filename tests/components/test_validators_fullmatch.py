"""A regex that validates must match the whole value (issue 17, item 3): with `.match` a pattern
ending in `$` also accepts the value followed by a newline (`quiet\\n` passed as a kernel argument,
and the GRUB drop-in then carried a line break). Every validator in the production code is called
with `.fullmatch`; this test finds any that is not."""

from __future__ import annotations

import ast
import re

from tests.support.paths import REPO

ROOTS = ("components", "tdxattest/src/tdxattest", "guest_agent", "policy")


def _anchored_patterns(tree: ast.AST) -> set[str]:
    """Names bound at module level to `re.compile("^...")`."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            call = node.value
            if (
                isinstance(call.func, ast.Attribute)
                and call.func.attr == "compile"
                and call.args
                and isinstance(call.args[0], ast.Constant)
                and str(call.args[0].value).startswith("^")
            ):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def test_no_anchored_regex_validates_with_match() -> None:
    offenders = []
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            anchored = _anchored_patterns(tree)
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                func = node.func
                if func.attr == "match" and isinstance(func.value, ast.Name) and func.value.id in anchored:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {func.value.id}.match")
                if (
                    func.attr in ("match", "search")
                    and isinstance(func.value, ast.Name)
                    and func.value.id == "re"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and str(node.args[0].value).endswith("$")
                ):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} re.{func.attr}(...$)")
    assert offenders == [], "use .fullmatch (a `$` matches before a trailing newline):\n" + "\n".join(offenders)


def test_the_reason_in_one_line() -> None:
    assert re.compile(r"^quiet$").match("quiet\n") and not re.compile(r"^quiet$").fullmatch("quiet\n")
