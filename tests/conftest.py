"""Fixtures shared across test directories."""

import asyncio

import pytest

# standin_lib, nvml_gpu: the stand-in libnvidia-ml.so.1; loop, pki: the attested channel's servers
pytest_plugins = ["tests.support.nvml_standin", "tests.support.channel"]


@pytest.fixture(autouse=True)
def current_event_loop() -> None:
    """Pulumi's mocks and `@pulumi.runtime.test` run on the thread's current event loop; a test that
    ran `asyncio.run` before leaves the thread with none, so the next one gets a fresh loop."""
    try:
        asyncio.get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The `kube` tests last: tools/test.sh builds their toolchain in the background while the
    others run (a stable sort keeps every other order)."""
    items.sort(key=lambda item: item.get_closest_marker("kube") is not None)
