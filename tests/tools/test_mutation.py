"""tools/mutation.py's scoring: which surviving mutants count as message-only, and that a module whose
tests never ran scores 0 rather than passing."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.support.paths import REPO


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutation_tool", REPO / "tools" / "mutation.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


mutation = _tool()


def _diff(before: str, after: str) -> str:
    return f"--- a.py\n+++ a.py\n@@ -1 +1 @@\n-{before}\n+{after}\n"


def test_a_changed_error_text_is_message_only() -> None:
    assert mutation.message_only(
        _diff('raise InputError("a nonce of 16 bytes", seen)', 'raise InputError("XXa nonce of 16 bytesXX", seen)')
    )
    assert mutation.message_only(_diff('log(f"seen {n} bytes")', 'log(f"XXseen {n} bytesXX")'))


def test_a_changed_operator_or_argument_is_logic() -> None:
    assert not mutation.message_only(_diff("if n <= MAX:", "if n < MAX:"))
    assert not mutation.message_only(_diff('raise InputError("a b", seen)', "raise InputError(None, seen)"))


def test_a_changed_key_check_name_or_encoding_is_logic() -> None:
    # Strings without a space are data the code acts on, not text for people.
    assert not mutation.message_only(_diff('d.get("min_tee_tcb_svn")', 'd.get("XXmin_tee_tcb_svnXX")'))
    assert not mutation.message_only(_diff('findings("pin.mrtd", ok)', 'findings("PIN.MRTD", ok)'))
    assert not mutation.message_only(_diff('s.encode("ascii", "strict")', 's.encode("ascii", "XXstrictXX")'))


def test_a_removed_line_is_logic() -> None:
    assert not mutation.message_only("--- a.py\n+++ a.py\n@@ -1 +0 @@\n-check(x)\n")


def test_the_logic_only_score_leaves_message_survivors_out() -> None:
    score = mutation.Score("m.py", mutants=100, killed=80, survived=20, message_only=10, no_tests=0, other=0)
    assert round(score.logic_only, 1) == 88.9  # 80 / (80 + 10)


def test_a_module_whose_tests_never_ran_scores_zero() -> None:
    score = mutation.Score("m.py", mutants=50, killed=0, survived=0, message_only=0, no_tests=0, other=50)
    assert score.logic_only == 0.0
