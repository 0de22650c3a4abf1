"""Fixtures of tests/harness/. Sections are independent: each imports what it needs and only
defines names with its own prefix."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

# --- fake TDX hosts (nshost.NamespaceHost): real sshd in network namespaces -----------------------


@pytest.fixture(scope="session")
def nshost_required() -> None:
    """Skip (with the reason) where fake hosts cannot run: not root, or ip/sshd/unshare missing.
    CI runs as root with them installed, so there they run."""
    from tests.support.hosts.nshost import unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def nshost_factory(nshost_required: None) -> Iterator[Callable[[Sequence[Any]], dict[str, Any]]]:
    """Start fake hosts for a test module: factory(profiles) -> {profile.name: NamespaceHost}, all
    started in parallel. Every host started is torn down (processes, mounts, veth, netns, files)
    when the module ends, also after failures."""
    from tests.support.hosts.nshost import namespace_hosts

    with contextlib.ExitStack() as stack:

        def start(profiles: Sequence[Any], **kwargs: Any) -> dict[str, Any]:
            return stack.enter_context(namespace_hosts(profiles, **kwargs))

        yield start
