"""Fixtures of tests/harness/. Sections are independent: each only defines names with its own prefix."""
from __future__ import annotations

# --- fake TDX hosts (nshost.NamespaceHost): real sshd in network namespaces ------------------------
from collections.abc import Callable, Iterator, Sequence

import pytest

from tests.harness.hosts import HostProfile
from tests.harness.nshost import NamespaceHost, namespace_hosts, unavailable_reason


@pytest.fixture(scope="session")
def nshost_required() -> None:
    """Skip (with the reason) where fake hosts cannot run: not root, or ip/sshd/unshare/fuse missing.
    CI runs as root with them installed, so there they run."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def nshost_factory(nshost_required: None) -> Iterator[Callable[[Sequence[HostProfile]], dict[str, NamespaceHost]]]:
    """Start fake hosts for a test module: factory(profiles) -> {profile.name: host}. Every host
    started is torn down (processes, mounts, veth, netns, files) when the module ends."""
    import contextlib

    with contextlib.ExitStack() as stack:
        def start(profiles: Sequence[HostProfile]) -> dict[str, NamespaceHost]:
            return stack.enter_context(namespace_hosts(profiles))
        yield start
