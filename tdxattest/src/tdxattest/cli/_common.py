"""Server plumbing the long-running verbs share (a leading underscore: not a verb itself)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # aiohttp is imported by the verbs that serve (CLI start-up time)
    from aiohttp import web


def serve_until_interrupted(start: Callable[[], Awaitable[tuple[web.BaseRunner, dict[str, Any]]]]) -> int:
    """Run a server: `start()` returns (an aiohttp runner, the facts to print as one JSON line once
    listening); serve until SIGINT (SIGTERM ends the process as usual)."""
    import asyncio

    async def main() -> None:
        runner, facts = await start()
        print(json.dumps(facts), flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0


def parse_listen(text: str) -> tuple[str, int]:
    """`--listen HOST:PORT` (IPv6 in brackets)."""
    from tdxattest.core.errors import InputError

    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise InputError("--listen HOST:PORT", repr(text))
    return host, int(port)
