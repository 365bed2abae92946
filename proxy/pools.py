"""Every backend pool of the process, and the one way a connection goes back to one.

``Pools`` owns the per-backend ``BackendPool`` objects (built and re-sized from the config),
the count of sessions waiting for a connection across all of them, retiring a pool's
connections (a promotion, OFFLINE_HARD) and the periodic idle sweep. Sessions say *why*
they let a connection go (``Release``); what that means for the connection is decided here,
as pgbouncer's ``release_server``/``disconnect_server`` do.

A connection given back between statements is pooled at once, marked ``reset_pending``: the
next session's restore writes COM_RESET_CONNECTION ahead of its own schema and SETs (one round
trip, see ``routing.session_state.restore``), so no state leaks between clients and a handover
costs one round trip instead of two (reset, then restore). A connection is reset at once
instead (``Release.RESET``) when its session prepared statements on it (the server counts them
against max_prepared_stmt_count until a reset) or ended (named locks, LOCK TABLES and
temporary tables it left must not wait for the pool's next taker).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, ItemsView, Iterator, ValuesView
from enum import Enum
from typing import Any

from .backend import BackendConnection, BackendError
from .config import Config
from .pool import BackendPool, WaiterCount
from .protocol.constants import Command
from .tls import backend_security

log = logging.getLogger("baton.pool")


class Release(Enum):
    """How a connection a session lets go is treated."""

    REUSE = "reuse"  # healthy, between statements: pooled, reset by the next session's restore
    # healthy, but holding what should not wait for the next session (prepared statements,
    # a departed session's named locks or temporary tables): reset now, then pooled
    RESET = "reset"
    DISCARD = "discard"  # broke or cannot be trusted: closed (or just counted out if dead)
    ABORT = "abort"  # mid-statement or mid-transaction: aborted, never reused


class Pools:
    """The process's backend pools, by backend name."""

    def __init__(
        self,
        spawn: Callable[[Coroutine[Any, Any, None]], object],
        on_wait: Callable[[str], object],
    ) -> None:
        self._pools: dict[str, BackendPool] = {}
        self._spawn = spawn
        self._on_wait = on_wait
        # Read after every statement: lets a session skip checking every pool when nobody
        # waits for a connection (the usual case).
        self.waiters = WaiterCount()
        self.wait_timeout = 10.0  # how long a session waits for a connection when all are busy

    # -- the set of pools ---------------------------------------------------------------------

    def configure(self, config: Config) -> None:
        """Builds, re-sizes and removes pools to match the config (at start and on reload)."""
        proxy = config.proxy
        self.wait_timeout = max(10.0, proxy.connect_timeout_ms / 1000)
        wanted = {b.name for b in config.backends}
        for name in list(self._pools):
            if name not in wanted:
                self._pools.pop(name).close()
        for b in config.backends:
            pool = self._pools.get(b.name)
            security = backend_security(b)
            if (
                pool is None
                or (pool.host, pool.port) != (b.host, b.port)
                or pool.security is not security
            ):
                if pool is not None:
                    pool.close()
                self._pools[b.name] = BackendPool(
                    b.name,
                    b.host,
                    b.port,
                    proxy.max_backend_connections,
                    proxy.connect_timeout_ms / 1000,
                    proxy.idle_backend_timeout_s,
                    security,
                    waiters_total=self.waiters,
                    on_wait=self._on_wait,
                )
            else:
                pool.max_connections = proxy.max_backend_connections
                pool.connect_timeout = proxy.connect_timeout_ms / 1000
                pool.idle_timeout = proxy.idle_backend_timeout_s

    def get(self, name: str) -> BackendPool | None:
        return self._pools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._pools

    def __iter__(self) -> Iterator[str]:
        return iter(self._pools)

    def items(self) -> ItemsView[str, BackendPool]:
        return self._pools.items()

    def values(self) -> ValuesView[BackendPool]:
        return self._pools.values()

    # -- connections coming back --------------------------------------------------------------

    def release(self, conn: BackendConnection, how: Release) -> None:
        """A session is done with ``conn``; ``how`` says in what condition."""
        pool = self._pools.get(conn.backend)
        if how is Release.DISCARD:
            if pool is not None:
                if conn.alive:
                    pool.release(conn, reusable=False)
                else:
                    pool.forget(conn)
            return
        if pool is None:
            conn.abort("backend removed")
            return
        if how is Release.ABORT or not conn.alive:
            conn.abort("released while busy")
            pool.forget(conn)
            return
        if conn.multi_option is not None:  # an option COM_RESET_CONNECTION would not undo
            pool.release(conn, reusable=False)
            return
        conn.reset_pending = True
        conn.resume_reading()  # its session may have paused it (a client not reading replies)
        if how is Release.RESET:
            self._spawn(self._reset_and_release(pool, conn))
        else:
            pool.release(conn)

    async def _reset_and_release(self, pool: BackendPool, conn: BackendConnection) -> None:
        """Resets ``conn`` now, and selects its database again (the reset keeps it but sets
        character_set_database back to the server's), in one round trip: it is pooled clean,
        with nothing left for the next session's restore to reset."""
        commands = [(Command.RESET_CONNECTION, b"")]
        if conn.schema is not None:
            commands.append((Command.INIT_DB, conn.schema.encode()))
        try:
            ok = not any(await conn.pipeline(commands, timeout=2))
        except BackendError:
            ok = False
        conn.reset_pending = not ok  # (a connection that refused is closed, not pooled)
        pool.release(conn, reusable=ok)

    # -- maintenance --------------------------------------------------------------------------

    def retire(self, name: str) -> None:
        """asyncpg-style: ``name``'s idle connections close now, busy ones when released."""
        pool = self._pools.get(name)
        if pool is not None:
            pool.retire()

    def sweep_idle(self) -> None:
        """Closes pooled connections idle longer than their pool's idle timeout."""
        for pool in self._pools.values():
            pool.close_idle_older_than(pool.idle_timeout)

    async def janitor(self, release_idle_sessions: Callable[[float], None], every_s: float) -> None:
        """Runs forever: idle sessions give their connections back (``every_s``, with the
        cut-off time), and every ten rounds pooled connections idle too long are closed."""
        tick = 0
        while True:
            await asyncio.sleep(every_s / 2)
            release_idle_sessions(time.monotonic() - every_s)
            tick += 1
            if tick % 10 == 0:
                self.sweep_idle()

    def close(self, drain: bool = True) -> None:
        for pool in self._pools.values():
            pool.close(drain=drain)
