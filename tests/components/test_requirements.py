"""The venv holds exactly the pinned versions (issue 17, item 7): installing the test requirements
after the runtime ones used to downgrade protobuf (pulumi-policy needs ~=5.29.5, pulumi brought 6.x),
so the program ran under tests with another protobuf than a user's `pulumi up` had."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version

from tests.support.paths import REPO


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / name).read_text().splitlines():
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s#]+)\s*(#.*)?", line.strip())
        if m:
            pins[m.group(1)] = m.group(2)
    return pins


def test_every_pinned_requirement_is_installed_at_its_pin() -> None:
    pins = _pins("requirements.txt") | _pins("requirements-test.txt")
    assert "protobuf" in pins
    wrong = {name: (pin, version(name)) for name, pin in pins.items() if version(name) != pin}
    assert wrong == {}, f"installed versions differ from the pins (pin, installed): {wrong}"


def test_pip_finds_no_conflict() -> None:
    p = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
