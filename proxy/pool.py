"""Backend connection pools, one per backend, shared by all sessions.

Connections are keyed by (user, response-shaping capabilities): Baton forwards response bytes
untouched, so a connection may only serve clients that negotiated the same response format, and
it is logged in as one user. Like asyncpg's pool, each pool has a *generation*: ``retire()``
bumps it (after a promotion, a reload or an admin OFFLINE_HARD) and connections from an older
generation are closed when released instead of being reused.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from .backend import BackendConnection, BackendError, Credentials, await_login, connect

log = logging.getLogger("baton.pool")


@dataclass(frozen=True, slots=True)
class PoolKey:
    """Connections are interchangeable only between clients that agree on all three:
    the login user, the capabilities that shape responses, and the handshake charset
    (which COM_RESET_CONNECTION restores)."""

    user: str
    capabilities: int
    charset: int


@dataclass
class PoolStats:
    connects: int = 0
    connect_errors: int = 0
    reused: int = 0
    waits: int = 0
    closed: int = 0


@dataclass(slots=True)
class WaiterCount:
    """Sessions waiting for a connection, all pools together (one instance shared by them)."""

    n: int = 0


@dataclass
class BackendPool:
    name: str
    host: str
    port: int
    max_connections: int
    connect_timeout: float
    idle_timeout: float = 300.0
    tls: ssl.SSLContext | None = None
    generation: int = 0
    stats: PoolStats = field(default_factory=PoolStats)
    # Waiters across all pools, shared: lets a session skip checking every pool after every
    # statement when nobody is waiting (the usual case).
    waiters_total: WaiterCount = field(default_factory=WaiterCount)
    # Called when a session starts waiting: lets idle sessions give a connection back now.
    on_wait: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        self._idle: dict[PoolKey, deque[BackendConnection]] = {}
        self._in_use: set[BackendConnection] = set()
        self._connecting = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.closed = False

    # -- counts (SHOW POOLS) ------------------------------------------------------------------

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    @property
    def idle(self) -> int:
        return sum(len(q) for q in self._idle.values())

    @property
    def total(self) -> int:
        return self.in_use + self.idle + self._connecting

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def counts_by_user(self) -> dict[str, tuple[int, int]]:
        """(in use, idle) connections per login user, for SHOW POOLS."""
        counts: dict[str, list[int]] = {}
        for conn in self._in_use:
            counts.setdefault(getattr(conn.pool_key, "user", ""), [0, 0])[0] += 1
        for key, q in self._idle.items():
            if q:
                counts.setdefault(key.user, [0, 0])[1] += len(q)
        return {user: (c[0], c[1]) for user, c in counts.items()}

    # -- acquire / release --------------------------------------------------------------------

    def try_acquire_idle(self, key: PoolKey, database: str | None = None) -> BackendConnection | None:
        """An idle, live connection for this key, without waiting; None if there is none.

        A session without a default schema needs a connection that never selected one (no
        command unselects a database, and COM_RESET_CONNECTION keeps it); any other session
        can take any connection, its schema is set with COM_INIT_DB. Among equals, the most
        recently used connection (warm) goes first; one already on the wanted schema wins.
        """
        q = self._idle.get(key)
        if not q:
            return None
        best = None
        stale = []
        for conn in reversed(q):  # most recently released first
            if not conn.alive or conn.generation != self.generation:
                stale.append(conn)
            elif conn.schema == database:
                best = conn
                break
            elif database is not None and best is None:
                best = conn
        for conn in stale:
            q.remove(conn)
            self._discard(conn)
        if best is None:
            return None
        q.remove(best)
        self._in_use.add(best)
        self.stats.reused += 1
        return best

    async def acquire(self, key: PoolKey, credentials: Credentials, *, timeout: float, database: str | None = None) -> BackendConnection:
        """A connection for ``key``: an idle one, a new one, or the next released one."""
        deadline = time.monotonic() + timeout
        while True:
            if self.closed:
                raise BackendError(self.name, "backend removed from configuration")
            conn = self.try_acquire_idle(key, database)
            if conn is not None:
                return conn
            if self.total < self.max_connections:
                return await self._open(key, credentials, max(0.05, min(self.connect_timeout, deadline - time.monotonic())), database)
            if self._evict_idle(key, database):
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PoolExhausted(self.name, self.max_connections, timeout)
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            self.waiters_total.n += 1
            self.stats.waits += 1
            if self.on_wait is not None:
                self.on_wait(self.name)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                raise PoolExhausted(self.name, self.max_connections, timeout) from None
            finally:
                self.waiters_total.n -= 1
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def _open(self, key: PoolKey, credentials: Credentials, timeout: float, database: str | None) -> BackendConnection:
        self._connecting += 1
        login = asyncio.ensure_future(
            connect(
                self.name, self.host, self.port, credentials, timeout=timeout,
                capabilities=key.capabilities, database=database, charset=key.charset, tls=self.tls,
            )
        )
        try:
            # A session that goes away mid-login (client hung up, shutdown) leaves the login
            # to finish; the connection then waits in the pool for the next session.
            conn = await await_login(self.name, login, lambda task: self._adopt(task, key))
        except asyncio.CancelledError:
            raise  # _adopt counts the login out when it is done
        except BackendError:
            self._connecting -= 1
            self.stats.connect_errors += 1
            self._wake()
            raise
        except BaseException:
            self._connecting -= 1
            raise
        self._connecting -= 1
        return self._opened(conn, key)

    def _opened(self, conn: BackendConnection, key: PoolKey) -> BackendConnection:
        self.stats.connects += 1
        conn.generation = self.generation
        conn.pool_key = key
        self._in_use.add(conn)
        return conn

    def _adopt(self, login: asyncio.Future[BackendConnection], key: PoolKey) -> None:
        """A login nobody waits for any more: pooled as idle if it succeeded."""
        self._connecting -= 1
        if login.cancelled() or login.exception() is not None:
            if not login.cancelled():
                self.stats.connect_errors += 1
            self._wake()
            return
        self.release(self._opened(login.result(), key))  # idle, or closed if the pool moved on

    def release(self, conn: BackendConnection, reusable: bool = True) -> None:
        """Gives a connection back. Reusable only if its state is clean for the next user."""
        self._in_use.discard(conn)
        if (
            reusable
            and conn.alive
            and not conn.busy
            and not self.closed
            and conn.generation == self.generation
        ):
            conn.last_used = time.monotonic()
            key = cast(PoolKey, conn.pool_key)  # set by _opened: a pooled connection has one
            self._idle.setdefault(key, deque()).append(conn)
        else:
            self._discard(conn)
        self._wake()

    def forget(self, conn: BackendConnection) -> None:
        """A connection that died while in use."""
        self._in_use.discard(conn)
        self._wake()

    def _discard(self, conn: BackendConnection) -> None:
        self.stats.closed += 1
        conn.close()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _evict_idle(self, key: PoolKey, database: str | None) -> bool:
        """At the cap, with idle connections that cannot serve this session (another user,
        or a schema it cannot shed): close the oldest to make room for a new one."""
        oldest: tuple[float, PoolKey, BackendConnection] | None = None
        for k, q in self._idle.items():
            for conn in q:
                unusable = k != key or (database is None and conn.schema is not None)
                if unusable and (oldest is None or conn.last_used < oldest[0]):
                    oldest = (conn.last_used, k, conn)
        if oldest is None:
            return False
        self._idle[oldest[1]].remove(oldest[2])
        self._discard(oldest[2])
        return True

    # -- maintenance --------------------------------------------------------------------------

    def retire(self) -> None:
        """New generation: idle connections close now, busy ones when released."""
        self.generation += 1
        for q in self._idle.values():
            while q:
                self._discard(q.pop())

    def close_idle_older_than(self, seconds: float) -> int:
        cutoff = time.monotonic() - seconds
        closed = 0
        for q in self._idle.values():
            keep = deque(c for c in q if c.last_used >= cutoff and c.alive)
            for c in q:
                if c not in keep:
                    self._discard(c)
                    closed += 1
            q.clear()
            q.extend(keep)
        return closed

    def close(self, drain: bool = True) -> None:
        """No new connections; idle ones close now; in-use ones when released (or now)."""
        self.closed = True
        self.retire()
        if not drain:
            for conn in list(self._in_use):
                conn.abort("pool closed")
        self._wake()


class PoolExhausted(BackendError):
    def __init__(self, backend: str, limit: int, timeout: float) -> None:
        super().__init__(backend, f"no free connection within {int(timeout * 1000)} ms (limit {limit})")
        self.limit = limit
        self.timeout = timeout
