"""Two remedies for the Pulumi Python SDK's costs at fleet scale (issue 19: 64 hosts must preview in
seconds), measured with bench/fleet.py on pulumi 3.272.0 (the newest). Each changes one behaviour
from outside, without copying SDK code, and stands down when the SDK no longer looks as expected.

1. A linear end-of-program wait. After the program body, `pulumi.runtime.stack.wait_for_rpcs`
   drains every outstanding Output with `asyncio.wait(pending, return_when=FIRST_COMPLETED)` in a
   loop: each call hangs a callback on every pending task and returns after one of them finishes,
   so N outputs cost about N^2/2 callbacks (1.6 million for the 15,000 outputs of 64 hosts).
   `stack` gets an `asyncio` whose `wait` turns FIRST_COMPLETED into FIRST_EXCEPTION: one call
   returns when every task is done, or as soon as one fails. A failure is still raised at once;
   the SDK still awaits what is done and re-queues what is not.
2. Debug logs that do not block. The SDK sends a debug-level log line to the engine for every
   registration, as a blocking gRPC call (5,453 of them for 64 hosts: 40 % of the program's time).
   The engine shows them only under `--debug`. Debug lines now go out as non-blocking calls on the
   same channel; every other severity (info, warning, error) stays synchronous, so nothing a user
   must see can be lost at exit.

`TDX_VLLM_SDK_PATCHES=off` keeps the SDK as it is (bench/fleet.py --sdk-patches off compares).
"""

from __future__ import annotations

import asyncio
import os
import types
from collections.abc import Iterable
from typing import Any


class _Asyncio(types.ModuleType):
    """`asyncio`, except that `wait(..., return_when=FIRST_COMPLETED)` waits for all or the first error."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    async def wait(fs: Iterable[Any], *, timeout: float | None = None, return_when: str = asyncio.ALL_COMPLETED) -> Any:
        if return_when == asyncio.FIRST_COMPLETED:
            return_when = asyncio.FIRST_EXCEPTION
        return await asyncio.wait(fs, timeout=timeout, return_when=return_when)


class _Engine:
    """The engine stub, with DEBUG-severity `Log` calls sent without waiting for the answer."""

    def __init__(self, stub: Any, debug: int) -> None:
        self._stub = stub
        self._debug = debug
        self._pending: set[Any] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    def Log(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(request, "severity", None) != self._debug or args or kwargs:
            return self._stub.Log(request, *args, **kwargs)
        future = self._stub.Log.future(request)
        # Kept until answered, so a call in flight is not dropped with its last reference.
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return None


def linear_wait() -> bool:
    from pulumi.runtime import stack

    current = getattr(stack, "asyncio", None)
    if isinstance(current, _Asyncio):
        return True
    if current is not asyncio or not hasattr(stack, "wait_for_rpcs"):
        return False  # the SDK changed how it waits: leave it alone
    stack.asyncio = _Asyncio("asyncio")  # type: ignore[attr-defined]
    return True


def async_debug_logs() -> bool:
    from pulumi.runtime import settings
    from pulumi.runtime.proto import engine_pb2

    engine = settings.SETTINGS.engine
    if isinstance(engine, _Engine):
        return True
    log = getattr(engine, "Log", None)
    if engine is None or not callable(getattr(log, "future", None)):
        return False  # no engine (unit tests, mocks) or not a gRPC stub: leave it alone
    settings.SETTINGS.engine = _Engine(engine, engine_pb2.DEBUG)
    return True


def install() -> dict[str, bool]:
    """Both remedies; which of them are in place."""
    if os.environ.get("TDX_VLLM_SDK_PATCHES", "on") == "off":
        return {"linear_wait": False, "async_debug_logs": False}
    return {"linear_wait": linear_wait(), "async_debug_logs": async_debug_logs()}
