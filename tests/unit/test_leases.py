"""Giving a backend connection back: a session's ``Leases.release(conn, why)`` and the
``Pools`` that own every pool. Each reason ends in exactly one outcome (pooled for a reset by
the next session, closed, aborted), statements prepared on the connection are forgotten, and sessions waiting
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
from proxy.protocol.packets import ErrPacket
from proxy.routing.session_state import SessionState, StateRestoreError, in_sync, restore
from proxy.routing.statements import PreparedStatement, SessionStatements
from proxy.session.leases import Leases, Why

KEY = PoolKey("app", 0, 45)


class FakeTracker:
    def __init__(self, error: ErrPacket | None = None) -> None:
        self.error = error


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
        self.reset_pending = False
        self.multi_option: int | None = None
        self.state_owner: object = None
        self.state_version = -1
        self.lessee: object = None
        self.commands: list[int] = []
        self.closed = False
        self.aborted = ""
        self.paused = False
        self.fail: set[int] = set()  # commands the server refuses

    async def command(
        self, command: int, body: bytes = b"", timeout: float | None = None
    ) -> FakeTracker:
        self.commands.append(command)
        return FakeTracker(ErrPacket(1047, "08S01", "refused") if command in self.fail else None)

    async def pipeline(
        self, commands: list[tuple[int, bytes]], timeout: float
    ) -> list[ErrPacket | None]:
        self.commands += [command for command, _ in commands]
        self.bodies = [body for _, body in commands]
        refused = ErrPacket(1047, "08S01", "refused")
        return [refused if command in self.fail else None for command, _ in commands]

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
        self.waited: list[str] = []
        self.spawned: list[Coroutine[Any, Any, None]] = []
        self.pools = Pools(self.spawned.append, self.waited.append)
        backends = (BackendConfig("db1", "127.0.0.1:1", "127.0.0.1", 1, role="master"),)
        proxy = ProxyConfig(max_backend_connections=max_connections)
        self.pools.configure(Config(backends, (), proxy=proxy))
        self.stmts = SessionStatements()
        self.leases = Leases(object(), self.pools, self.stmts)  # type: ignore[arg-type]

    def run_spawned(self) -> None:
        """The background work (an eager reset) the pools started."""
        while self.spawned:
            asyncio.run(self.spawned.pop(0))

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


def counts(h: Harness) -> tuple[int, int, int]:
    pool = h.pools.get("db1")
    assert pool is not None
    return pool.in_use, pool.idle, pool.stats.closed


def test_idle_is_pooled_at_once_with_its_reset_left_to_the_next_session() -> None:
    """No round trip between sessions: the connection is idle in the pool as soon as it is
    given back, marked so that the next session's restore resets it first."""
    h = Harness()
    conn = h.lease()
    conn.state_owner = object()
    h.leases.release(conn, Why.IDLE)  # type: ignore[arg-type]
    assert h.leases.conns == {} and conn.lessee is None and conn.state_owner is None
    assert conn.commands == [] and conn.reset_pending and h.spawned == []
    assert counts(h) == (0, 1, 0) and not conn.closed


def test_a_connection_holding_prepared_statements_is_reset_before_it_is_pooled() -> None:
    """The server keeps a session's statements (counted against max_prepared_stmt_count)
    until a reset: such a connection is reset at once, its database selected again in the
    same write (the reset sets character_set_database back to the server's), and pooled
    clean: the next session's restore has nothing to reset."""
    h = Harness()
    conn = h.lease()
    conn.schema = "test"
    stmt = h.prepared_on(conn)
    h.leases.release(conn, Why.IDLE)  # type: ignore[arg-type]
    assert stmt.backend_ids == {} and stmt.cursor_conn is None
    assert counts(h) == (1, 0, 0)  # out of the pool while the reset runs
    h.run_spawned()
    assert conn.commands == [Command.RESET_CONNECTION, Command.INIT_DB]
    assert conn.bodies == [b"", b"test"] and not conn.reset_pending
    assert counts(h) == (0, 1, 0) and not conn.closed
    asyncio.run(restore(object(), SessionState(schema="test"), conn))  # type: ignore[arg-type]
    assert conn.commands == [Command.RESET_CONNECTION, Command.INIT_DB]  # nothing more to send


def test_a_connection_paused_by_its_session_is_read_again_once_pooled() -> None:
    """A session whose client stopped reading pauses its backends; the next session's
    restore must hear its answers."""
    h = Harness()
    conn = h.lease()
    h.leases.pause_reading()
    assert conn.paused
    h.leases.release(conn, Why.IDLE)  # type: ignore[arg-type]
    assert counts(h) == (0, 1, 0) and not conn.paused


def test_a_session_that_ends_has_its_connection_reset_at_once() -> None:
    """What a departed session leaves (named locks, LOCK TABLES, temporary tables) must not
    wait for the pool's next taker."""
    h = Harness()
    conn = h.lease()
    conn.state_owner = object()
    h.leases.release(conn, Why.ENDED)  # type: ignore[arg-type]
    assert conn.state_owner is None and counts(h) == (1, 0, 0)
    h.run_spawned()
    assert conn.commands == [Command.RESET_CONNECTION] and counts(h) == (0, 1, 0)
    assert not conn.reset_pending


def test_a_connection_whose_eager_reset_is_refused_is_closed() -> None:
    h = Harness()
    conn = h.lease()
    h.prepared_on(conn)
    conn.fail.add(Command.RESET_CONNECTION)
    h.leases.release(conn, Why.IDLE)  # type: ignore[arg-type]
    h.run_spawned()
    assert counts(h) == (0, 0, 1) and conn.closed


def restored(conn: FakeConn, state: SessionState, owner: object) -> list[tuple[int, bytes]]:
    """What restore() wrote to ``conn``, as (command, body)."""
    asyncio.run(restore(owner, state, conn))  # type: ignore[arg-type]
    return list(zip(conn.commands, conn.bodies, strict=True))


def test_the_next_session_resets_the_connection_in_its_restore_write() -> None:
    """COM_RESET_CONNECTION first, then the schema again (the reset keeps the database but
    sets character_set_database back to the server's), then the session's SETs: one write."""
    conn = FakeConn("db1")
    conn.schema, conn.reset_pending = "test", True
    state = SessionState(schema="test")
    state.items["@@autocommit"] = "@@session.autocommit = 0"
    owner = object()
    assert restored(conn, state, owner) == [
        (Command.RESET_CONNECTION, b""),
        (Command.INIT_DB, b"test"),
        (Command.QUERY, b"SET @@session.autocommit = 0"),
    ]
    assert not conn.reset_pending and conn.state_owner is owner and in_sync(owner, state, conn)


def test_a_refused_reset_leaves_the_connection_marked_and_no_state_restored() -> None:
    conn = FakeConn("db1")
    conn.reset_pending = True
    conn.fail = {Command.RESET_CONNECTION}
    with pytest.raises(StateRestoreError, match="cannot reset"):
        restored(conn, SessionState(), object())
    assert conn.reset_pending and conn.state_owner is None


def test_idle_with_a_multi_statement_option_is_closed_not_reset() -> None:
    h = Harness()
    conn = h.lease()
    conn.multi_option = 1  # COM_RESET_CONNECTION would not undo it
    h.leases.release(conn, Why.IDLE)  # type: ignore[arg-type]
    assert not conn.reset_pending and conn.closed and counts(h) == (0, 0, 1)


@pytest.mark.parametrize("alive", [True, False])
def test_untrusted_is_closed_or_counted_out_never_pooled(alive: bool) -> None:
    h = Harness()
    conn = h.lease()
    conn.alive = alive
    h.leases.release(conn, Why.UNTRUSTED)  # type: ignore[arg-type]
    assert not conn.reset_pending and not conn.aborted
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
    assert conn.aborted == "backend removed" and not conn.reset_pending


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
        assert await waiter is conn  # pooled, then handed to the waiter (which resets it)
        assert conn.reset_pending
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
        assert conn.closed and counts(h) == (0, 0, 1)

    asyncio.run(run())
