"""tdxattest.proxy.ConnectionPool: which idle connections are handed out, re-attested, and marked
as safe to retry a request on (`reused`)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from tdxattest.channel.proxy import ConnectionPool, ProxyConfig

CONFIG = ProxyConfig(upstream="https://127.0.0.1:8443", reattest_interval_s=300.0)


class IdleConnection:
    """An attested connection parked in the pool, attested `age_s` ago."""

    def __init__(self, age_s: float, *, closed: bool = False) -> None:
        self.closed = closed
        self.reader = SimpleNamespace(at_eof=lambda: False)
        self.attestation = SimpleNamespace(at=time.monotonic() - age_s)
        self.reused = False
        self.attested = 0

    def recycle(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True

    async def attest(self, appraiser) -> None:
        self.attested += 1
        self.attestation = SimpleNamespace(at=time.monotonic())


def acquire(pool: ConnectionPool):
    return asyncio.run(pool.acquire())  # tests/conftest.py gives the next test a current loop again


def test_a_kept_alive_connection_is_handed_out_as_reused_without_attesting():
    pool = ConnectionPool(CONFIG, appraiser=None)
    conn = IdleConnection(age_s=10)
    pool.release(conn)
    assert acquire(pool) is conn
    assert conn.reused and conn.attested == 0 and pool.attestations == 0


def test_a_reattested_connection_is_not_reused_so_its_request_is_never_retried():
    pool = ConnectionPool(CONFIG, appraiser=None)
    conn = IdleConnection(age_s=CONFIG.reattest_interval_s + 1)
    conn.reused = True  # it was handed out from the pool before
    pool.release(conn)
    assert acquire(pool) is conn
    assert not conn.reused and conn.attested == 1 and pool.attestations == 1


def test_closed_idle_connections_are_skipped():
    pool = ConnectionPool(CONFIG, appraiser=None)
    live, dead = IdleConnection(age_s=1), IdleConnection(age_s=1)
    pool.release(live)
    pool.release(dead)
    dead.closed = True  # the server closed it while idle
    assert acquire(pool) is live
