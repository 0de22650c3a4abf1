"""components/resources/sdk_patches.py: the SDK's end-of-program wait made linear, and its debug log
lines sent without blocking, without changing what it waits for, when it raises, or how any other
log line is sent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from components.resources import sdk_patches


async def _sleep_then(delay: float, value: object = None, error: Exception | None = None) -> object:
    await asyncio.sleep(delay)
    if error is not None:
        raise error
    return value


def test_first_completed_becomes_all_or_the_first_error() -> None:
    shim = sdk_patches._Asyncio("asyncio")

    async def run() -> tuple[int, int, int, int]:
        tasks = [asyncio.ensure_future(_sleep_then(d, d)) for d in (0.0, 0.01, 0.02)]
        done, pending = await shim.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        failing = [
            asyncio.ensure_future(_sleep_then(0.0, error=ValueError("x"))),
            asyncio.ensure_future(_sleep_then(5.0)),
        ]
        done_err, pending_err = await shim.wait(failing, return_when=asyncio.FIRST_COMPLETED)
        pending_err.pop().cancel()
        return len(done), len(pending), len(done_err), len(pending_err)

    # Every task in one call (not one per call), and back at once when one fails.
    assert asyncio.run(run()) == (3, 0, 1, 0)


def test_other_waits_and_attributes_are_asyncios() -> None:
    shim = sdk_patches._Asyncio("asyncio")
    assert shim.sleep is asyncio.sleep and shim.FIRST_COMPLETED == asyncio.FIRST_COMPLETED

    async def run() -> int:
        tasks = [asyncio.ensure_future(_sleep_then(d)) for d in (0.0, 0.05)]
        done, _ = await shim.wait(tasks, return_when=asyncio.ALL_COMPLETED)
        return len(done)

    assert asyncio.run(run()) == 2


class _Call:
    """A gRPC unary method: called (blocking) or `.future()` (not)."""

    def __init__(self) -> None:
        self.blocking: list[Any] = []
        self.futures: list[Any] = []

    def __call__(self, request: Any) -> str:
        self.blocking.append(request)
        return "answered"

    def future(self, request: Any) -> Any:
        self.futures.append(request)
        return _Future()


class _Future:
    """A gRPC call future that stays in flight until `answer()`."""

    def __init__(self) -> None:
        self.callbacks: list[Any] = []

    def add_done_callback(self, fn: Any) -> None:
        self.callbacks.append(fn)

    def answer(self) -> None:
        for fn in self.callbacks:
            fn(self)


class _Stub:
    def __init__(self) -> None:
        self.Log = _Call()
        self.GetRootResource = lambda request: ("root", request)


class _Request:
    def __init__(self, severity: int) -> None:
        self.severity = severity


def test_only_debug_lines_stop_blocking() -> None:
    from pulumi.runtime.proto import engine_pb2

    stub = _Stub()
    engine = sdk_patches._Engine(stub, engine_pb2.DEBUG)
    assert engine.Log(_Request(engine_pb2.DEBUG)) is None
    for severity in (engine_pb2.INFO, engine_pb2.WARNING, engine_pb2.ERROR):
        assert engine.Log(_Request(severity)) == "answered"
    assert len(stub.Log.futures) == 1 and [r.severity for r in stub.Log.blocking] == [
        engine_pb2.INFO,
        engine_pb2.WARNING,
        engine_pb2.ERROR,
    ]
    assert engine.GetRootResource("r") == ("root", "r")  # every other call is the stub's
    # A debug line in flight is held until answered, then let go.
    assert len(engine._pending) == 1
    next(iter(engine._pending)).answer()
    assert engine._pending == set()


def test_install_patches_once_and_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from pulumi.runtime import settings, stack

    monkeypatch.setattr(stack, "asyncio", asyncio)
    monkeypatch.setattr(settings.SETTINGS, "engine", _Stub())
    monkeypatch.setenv("TDX_VLLM_SDK_PATCHES", "off")
    assert sdk_patches.install() == {"linear_wait": False, "async_debug_logs": False}
    assert stack.asyncio is asyncio and isinstance(settings.SETTINGS.engine, _Stub)
    monkeypatch.delenv("TDX_VLLM_SDK_PATCHES")
    assert sdk_patches.install() == {"linear_wait": True, "async_debug_logs": True}
    assert isinstance(stack.asyncio, sdk_patches._Asyncio) and isinstance(settings.SETTINGS.engine, sdk_patches._Engine)
    assert sdk_patches.install() == {"linear_wait": True, "async_debug_logs": True}  # idempotent
    # An SDK that waits some other way, or no engine (mocks): left alone.
    monkeypatch.setattr(stack, "asyncio", object())
    monkeypatch.setattr(settings.SETTINGS, "engine", None)
    assert sdk_patches.install() == {"linear_wait": False, "async_debug_logs": False}
