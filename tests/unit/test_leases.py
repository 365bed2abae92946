"""Giving a backend connection back: a session's ``Leases.release(conn, why)`` and the
``Pools`` that own every pool. Each reason ends in exactly one outcome (reset and reused,
closed, aborted), statements prepared on the connection are forgotten, and sessions waiting
for a connection are counted across pools. In-process, with stand-in connections."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from proxy.backend import Credentials
from proxy.config import BackendConfig, Config, ProxyConfig
from proxy.pool import PoolKey
from proxy.pools import Pools, Release
from proxy.protocol.constants import Command
from proxy.routing.statements import PreparedStatement, SessionStatements
from proxy.session.leases import Leases, Why

KEY = PoolKey("app", 0, 45)


class FakeTracker:
    error = None


class FakeConn:
    """The parts of a BackendConnection the pools and leases use."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.alive = True
        self.busy = False
        self.generation = 0
        self.pool_key: object = None
        self.last_used = 0.0
        self.schema: str | None = None
        self.schema_stale = False
        self.multi_option: int | None = None
        self.state_owner: object = None
        self.lessee: object = None
        self.commands: list[int] = []
        self.closed = False
        self.aborted = ""
        self.paused = False

    async def command(
        self, command: int, body: bytes = b"", timeout: float | None = None
    ) -> FakeTracker:
        self.commands.append(command)
        return FakeTracker()

    def close(self) -> None:
        self.closed = True
        self.alive = False

    def abort(self, reason: str) -> None:
        self.aborted = reason
        self.alive = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class Harness:
    def __init__(self, max_connections: int = 4) -> None:
        self.tasks: list[asyncio.Task[None]] = []
        self.waited: list[str] = []
        self.pools = Pools(self._spawn, self.waited.append)
        backends = (BackendConfig("db1", "127.0.0.1:1", "127.0.0.1", 1, role="master"),)
        proxy = ProxyConfig(max_backend_connections=max_connections)
        self.pools.configure(Config(backends, (), proxy=proxy))
        self.stmts = SessionStatements()
        self.leases = Leases(object(), self.pools, self.stmts)  # type: ignore[arg-type]

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.ensure_future(coro))

    def lease(self) -> FakeConn:
        """A connection the pool handed out and the session now holds."""
        conn = FakeConn("db1")
        pool = self.pools.get("db1")
        assert pool is not None
        pool._opened(conn, KEY)  # type: ignore[arg-type]
        self.leases.hold(conn)  # type: ignore[arg-type]
        return conn

    def prepared_on(self, conn: FakeConn) -> PreparedStatement:
        stmt = PreparedStatement(
            self.stmts.next_id(), b"SELECT ?", 1, 1, master_only=False, is_read=True
        )
        stmt.backend_ids[conn] = 7  # type: ignore[index]
        stmt.cursor_conn = conn  # type: ignore[assignment]
        self.stmts[stmt.client_id] = stmt
        return stmt

    async def settle(self) -> None:
        await asyncio.gather(*self.tasks)


def counts(h: Harness) -> tuple[int, int, int]:
    pool = h.pools.get("db1")
    assert pool is not None
    return pool.in_use, pool.idle, pool.stats.closed


def test_idle_resets_then_pools_the_connection() -> None:
    async def run() -> None:
        h = Harness()
        conn = h.lease()
        conn.state_owner = object()
        stmt = h.prepared_on(conn)
        h.leases.release(conn, Why.IDLE)  # type: ignore[arg-type]
        assert h.leases.conns == {} and conn.lessee is None and conn.state_owner is None
        assert stmt.backend_ids == {} and stmt.cursor_conn is None
        await h.settle()
        assert conn.commands == [Command.RESET_CONNECTION]
        assert counts(h) == (0, 1, 0) and not conn.closed

    asyncio.run(run())


def test_idle_with_a_multi_statement_option_is_closed_not_reset() -> None:
    h = Harness()
    conn = h.lease()
    conn.multi_option = 1  # COM_RESET_CONNECTION would not undo it
    h.leases.release(conn, Why.IDLE)  # type: ignore[arg-type]
    assert h.tasks == [] and conn.closed and counts(h) == (0, 0, 1)


@pytest.mark.parametrize("alive", [True, False])
def test_untrusted_is_closed_or_counted_out_never_pooled(alive: bool) -> None:
    h = Harness()
    conn = h.lease()
    conn.alive = alive
    h.leases.release(conn, Why.UNTRUSTED)  # type: ignore[arg-type]
    assert h.tasks == [] and not conn.aborted
    assert counts(h) == (0, 0, 1 if alive else 0)
    assert conn.closed is alive


def test_busy_is_aborted() -> None:
    h = Harness()
    conn = h.lease()
    conn.busy = True
    h.leases.release(conn, Why.BUSY)  # type: ignore[arg-type]
    assert conn.aborted == "released while busy" and counts(h) == (0, 0, 0)


def test_master_changed_closes_and_aborts() -> None:
    h = Harness()
    conn = h.lease()
    h.leases.release(conn, Why.MASTER_CHANGED)  # type: ignore[arg-type]
    assert conn.closed and conn.aborted == "master changed" and counts(h) == (0, 0, 1)


def test_a_backend_removed_from_the_config_aborts_its_connections() -> None:
    h = Harness()
    conn = h.lease()
    h.pools.configure(Config((), ()))
    h.leases.release(conn, Why.IDLE)  # type: ignore[arg-type]
    assert conn.aborted == "backend removed" and h.tasks == []


def test_release_only_forgets_the_connection_it_holds() -> None:
    h = Harness()
    held = h.lease()
    stranger = FakeConn("db1")
    h.pools.release(stranger, Release.DISCARD)  # type: ignore[arg-type]
    assert h.leases.conns == {"db1": held}


def test_backpressure_reaches_connections_acquired_later() -> None:
    h = Harness()
    first = h.lease()
    h.leases.pause_reading()
    assert first.paused
    h.leases.release(first, Why.UNTRUSTED)  # type: ignore[arg-type]
    second = h.lease()
    assert second.paused
    h.leases.resume_reading()
    assert not second.paused


def test_waiters_are_counted_across_pools_and_wanted_connections_go_back() -> None:
    async def run() -> None:
        h = Harness(max_connections=1)
        conn = h.lease()
        pool = h.pools.get("db1")
        assert pool is not None
        waiter = asyncio.ensure_future(pool.acquire(KEY, Credentials("app", b"", None), timeout=5))
        await asyncio.sleep(0)
        assert h.pools.waiters.n == 1 and pool.waiting == 1 and h.waited == ["db1"]
        h.leases.release_wanted()  # someone waits: the held connection goes back
        await h.settle()
        assert await waiter is conn  # reset, pooled, then handed to the waiter
        assert h.pools.waiters.n == 0 and h.leases.conns == {}

    asyncio.run(run())


def test_nothing_wanted_keeps_the_connection() -> None:
    h = Harness()
    conn = h.lease()
    h.leases.release_wanted()
    assert h.leases.conns == {"db1": conn}


def test_a_retired_generation_goes_back_and_is_closed() -> None:
    async def run() -> None:
        h = Harness()
        conn = h.lease()
        h.pools.retire("db1")
        h.leases.release_wanted()
        await h.settle()
        assert conn.closed and counts(h) == (0, 0, 1)

    asyncio.run(run())
