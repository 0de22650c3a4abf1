"""Fixtures the channel tests share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tdxattest.testing.testpki import TestPki
from tests.support.channel import Channel, LoopThread, start_channel


@pytest.fixture
def channel_factory(loop: LoopThread, tmp_path: Path) -> Iterator[Callable[..., Channel]]:
    """Start whole channels (tests/support/channel.py: start_channel); every one is stopped after the test."""
    started: list[Channel] = []

    def make(pki: TestPki, **kw: Any) -> Channel:
        ch = loop.run(start_channel(tmp_path, pki, **kw))
        started.append(ch)
        return ch

    yield make
    for ch in started:
        loop.run(ch.stop())
