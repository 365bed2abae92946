"""Backend connection pools, one per backend, shared by all sessions.

Connections are keyed by (user, response-shaping capabilities): Baton forwards response bytes
untouched, so a connection may only serve clients that negotiated the same response format, and
it is logged in as one user. Like asyncpg's pool, each pool has a *generation*: ``retire()``
bumps it (after a promotion, a reload or an admin OFFLINE_HARD) and connections from an older
generation are closed when released instead of being reused.

A user may be held to a share of each pool (``[[users]] max_backend_connections``, passed to
``acquire`` as ``user_limit``): at most that many of its connections, in use, idle or logging in.
A session that finds its user's share busy waits for one of that user's connections, not for
the pool: ``release`` wakes a waiter of the same user first, so a user at its share neither takes
other users' connections nor is starved by them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from .backend import BackendConnection, BackendError, Credentials, await_login, connect
from .net import within
from .tls import NO_TLS, BackendSecurity

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
    security: BackendSecurity = NO_TLS  # TLS and RSA-key policy for logins (proxy/tls.py)
    generation: int = 0
    stats: PoolStats = field(default_factory=PoolStats)
    # Waiters across all pools, shared: lets a session skip checking every pool after every
    # statement when nobody is waiting (the usual case).
    waiters_total: WaiterCount = field(default_factory=WaiterCount)
    # Called when a session starts waiting: lets idle sessions give a connection back now.
    on_wait: Callable[[str], object] | None = None

    def __post_init__(self) -> None:
        self._idle: dict[PoolKey, deque[BackendConnection]] = {}
        self._in_use: set[BackendConnection] = set()
        self._connecting = 0
        self._connecting_users: Counter[str] = Counter()
        self._waiters: deque[asyncio.Future[None]] = deque()  # for the pool's cap
        self._user_waiters: dict[str, deque[asyncio.Future[None]]] = {}  # for a user's share
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
        return len(self._waiters) + sum(len(q) for q in self._user_waiters.values())

    def user_total(self, user: str) -> int:
        """The user's connections in this pool: in use, idle or logging in."""
        in_use = sum(1 for c in self._in_use if getattr(c.pool_key, "user", "") == user)
        idle = sum(len(q) for k, q in self._idle.items() if k.user == user)
        return in_use + idle + self._connecting_users[user]

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

    async def acquire(
        self, key: PoolKey, credentials: Credentials, *, timeout: float,
        database: str | None = None, user_limit: int = 0,
    ) -> BackendConnection:
        """A connection for ``key``: an idle one, a new one, or the next released one.

        user_limit: the most connections ``key.user`` may have in this pool (0: no limit).
        Raises PoolExhausted (UserShareExhausted for the user's share) after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.closed:
                raise BackendError(self.name, "backend removed from configuration")
            conn = self.try_acquire_idle(key, database)
            if conn is not None:
                return conn
            at_share = bool(user_limit) and self.user_total(key.user) >= user_limit
            if at_share:
                if self._evict_idle(key, database, only_user=key.user):
                    continue  # one of its own idle connections that cannot serve: replace it
            elif self.total < self.max_connections:
                return await self._open(key, credentials, max(0.05, min(self.connect_timeout, deadline - time.monotonic())), database)
            elif self._evict_idle(key, database):
                continue
            queue = self._user_waiters.setdefault(key.user, deque()) if at_share else self._waiters
            exhausted = (
                UserShareExhausted(self.name, key.user, user_limit, timeout)
                if at_share
                else PoolExhausted(self.name, self.max_connections, timeout)
            )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise exhausted
            waiter = asyncio.get_running_loop().create_future()
            queue.append(waiter)
            self.waiters_total.n += 1
            self.stats.waits += 1
            if self.on_wait is not None:
                self.on_wait(self.name)
            try:
                await within(waiter, remaining)
            except TimeoutError:
                raise exhausted from None
            finally:
                self.waiters_total.n -= 1
                if waiter in queue:
                    queue.remove(waiter)
                if at_share and not queue and self._user_waiters.get(key.user) is queue:
                    del self._user_waiters[key.user]  # (a newer queue may have replaced it)

    async def _open(self, key: PoolKey, credentials: Credentials, timeout: float, database: str | None) -> BackendConnection:
        self._connecting += 1
        self._connecting_users[key.user] += 1
        login = asyncio.ensure_future(
            connect(
                self.name, self.host, self.port, credentials, timeout=timeout,
                capabilities=key.capabilities, database=database, charset=key.charset,
                security=self.security,
            )
        )
        try:
            # A session that goes away mid-login (client hung up, shutdown) leaves the login
            # to finish; the connection then waits in the pool for the next session.
            conn = await await_login(self.name, login, lambda task: self._adopt(task, key))
        except asyncio.CancelledError:
            raise  # _adopt counts the login out when it is done
        except BackendError:
            self._login_ended(key)
            self.stats.connect_errors += 1
            self._wake(key.user)
            raise
        except BaseException:
            self._login_ended(key)
            raise
        self._login_ended(key)
        return self._opened(conn, key)

    def _login_ended(self, key: PoolKey) -> None:
        self._connecting -= 1
        self._connecting_users[key.user] -= 1
        if self._connecting_users[key.user] <= 0:
            del self._connecting_users[key.user]

    def _opened(self, conn: BackendConnection, key: PoolKey) -> BackendConnection:
        self.stats.connects += 1
        conn.generation = self.generation
        conn.pool_key = key
        self._in_use.add(conn)
        return conn

    def _adopt(self, login: asyncio.Future[BackendConnection], key: PoolKey) -> None:
        """A login nobody waits for any more: pooled as idle if it succeeded."""
        self._login_ended(key)
        if login.cancelled() or login.exception() is not None:
            if not login.cancelled():
                self.stats.connect_errors += 1
            self._wake(key.user)
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
        self._wake(getattr(conn.pool_key, "user", None))

    def forget(self, conn: BackendConnection) -> None:
        """A connection that died while in use."""
        self._in_use.discard(conn)
        self._wake(getattr(conn.pool_key, "user", None))

    def _discard(self, conn: BackendConnection) -> None:
        self.stats.closed += 1
        conn.close()

    def _wake(self, user: str | None = None) -> None:
        """A connection was freed (of ``user``): wake one waiter it can serve, a waiter held
        by that user's share first, as only that user's connections can end that wait."""
        queues = [self._waiters]
        if user is not None and user in self._user_waiters:
            queues.insert(0, self._user_waiters[user])
        for queue in queues:
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return

    def _evict_idle(self, key: PoolKey, database: str | None, only_user: str | None = None) -> bool:
        """At the cap, with idle connections that cannot serve this session (another user,
        or a schema it cannot shed): close the oldest to make room for a new one. With
        ``only_user``, only that user's (at its share, it may not take another user's room)."""
        oldest: tuple[float, PoolKey, BackendConnection] | None = None
        for k, q in self._idle.items():
            if only_user is not None and k.user != only_user:
                continue
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


class UserShareExhausted(PoolExhausted):
    """The user's share of the pool (``[[users]] max_backend_connections``) stayed busy."""

    def __init__(self, backend: str, user: str, limit: int, timeout: float) -> None:
        BackendError.__init__(
            self, backend, f"user {user!r} had all {limit} of its connections busy for "
            f"{int(timeout * 1000)} ms",
        )
        self.user = user
        self.limit = limit
        self.timeout = timeout
