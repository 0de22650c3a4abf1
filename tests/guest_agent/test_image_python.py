"""The TD image carries exactly the Python the guest agent and the gateway import
(guest/image/python-modules): the prod image no TEST PKI, no stand-in, no proxy; the dev image adds
the test doubles the dev stack runs. Checked against the modules' imports, so a new import fails here
until it is listed."""

from __future__ import annotations

from pathlib import Path

from tests.support.imports import SOURCE_ROOTS, import_closure
from tests.support.paths import REPO

LIST = REPO / "guest" / "image" / "python-modules"
# What runs in the TD: the agent (python3 -m guest_agent) and every module of it, and the gateway
# it starts (python3 -m tdxattest gateway).
AGENT = ["guest_agent.__main__", *(f"guest_agent.{p.stem}" for p in (REPO / "guest_agent").glob("*.py"))]
GATEWAY = ["tdxattest.__main__", "tdxattest.cli.gateway"]
# The dev stack's TDs also run the stand-in model server and sign with the TEST PKI.
DEV = ["tdxattest.testing.standin", "tdxattest.testing.testpki"]


def listed() -> tuple[set[str], set[str]]:
    prod: set[str] = set()
    dev: set[str] = set()
    part = prod
    for line in LIST.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line == "[dev]":
            part = dev
            continue
        part.add(line)
    return prod, dev


def in_image(path: Path) -> str:
    """The path a repository file has under /opt/tdx-vllm."""
    for top, root in SOURCE_ROOTS.items():
        if path.is_relative_to(root):
            return f"{top}/{path.relative_to(root)}"
    raise AssertionError(path)


def test_the_prod_image_has_exactly_what_the_agent_and_the_gateway_import():
    prod, _ = listed()
    # The software-test quote source is the dev stack's; in a prod image it is refused by name.
    need = {in_image(p) for p in import_closure(AGENT + GATEWAY, stop=("tdxattest.testing",)).values()}
    assert prod == need, f"guest/image/python-modules: add {sorted(need - prod)}, remove {sorted(prod - need)}"
    for module in ("tdxattest/testing/testpki.py", "tdxattest/testing/standin.py", "tdxattest/channel/proxy.py"):
        assert module not in prod


def test_the_dev_image_adds_the_test_doubles_and_what_they_import():
    prod, dev = listed()
    need = {in_image(p) for p in import_closure(AGENT + GATEWAY + DEV).values()}
    assert prod | dev == need, f"[dev]: add {sorted(need - prod - dev)}, remove {sorted((prod | dev) - need)}"
    assert not prod & dev
