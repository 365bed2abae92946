"""The backend connections one session holds, and the one way it lets each go.

A session keeps at most one connection per backend. ``release(conn, why)`` is the only exit:
``why`` says what happened, and that decides whether the connection is reset and reused,
closed, or aborted (``pools.Release``), as pgbouncer's ``release_server`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING

from ..backend import BackendError
from ..pools import Release
from ..routing.session_state import in_sync, restore

if TYPE_CHECKING:
    from ..backend import BackendConnection, Credentials, ResponseSink
    from ..pool import PoolKey
    from ..pools import Pools
    from ..routing.session_state import SessionState
    from ..routing.statements import SessionStatements


class Why(Enum):
    IDLE = "idle"  # between statements, nothing ties the session to it: reused (reset later)
    # the session ended or started over (COM_RESET_CONNECTION, COM_CHANGE_USER): what it left
    # there (named locks, LOCK TABLES, temporary tables) must go now: reset, then reused
    ENDED = "ended"
    UNTRUSTED = "untrusted"  # broke, or its state cannot be trusted: close it
    BUSY = "busy"  # the session ends mid-statement or mid-transaction: abort it
    MASTER_CHANGED = "master_changed"  # on the demoted master: close and abort at once


_HOW = {
    Why.IDLE: Release.REUSE,
    Why.ENDED: Release.RESET,
    Why.UNTRUSTED: Release.DISCARD,
    Why.BUSY: Release.ABORT,
    Why.MASTER_CHANGED: Release.DISCARD,
}


class Leases:
    """A session's connections by backend name."""

    __slots__ = ("conns", "_holder", "_pools", "_statements", "paused")

    def __init__(self, holder: ResponseSink, pools: Pools, statements: SessionStatements) -> None:
        self.conns: dict[str, BackendConnection] = {}
        self._holder = holder
        self._pools = pools
        self._statements = statements
        self.paused = False  # the client reads slowly: connections do not read either

    async def acquire(
        self,
        target: str,
        key: PoolKey,
        credentials: Credentials,
        state: SessionState,
        gone: Callable[[], bool],
        user_limit: int = 0,
    ) -> BackendConnection:
        """The connection to ``target``, from the pool if the session holds none, with the
        session's ``state`` restored on it. ``gone``: the client left while it waited;
        ``user_limit``: the user's share of the pool (``[[users]] max_backend_connections``)."""
        conn = self.conns.get(target)
        if conn is not None and not conn.alive:
            self.release(conn, Why.UNTRUSTED)
            conn = None
        if conn is None:
            pools = self._pools
            pool = pools.get(target)
            if pool is None:
                raise BackendError(target, "no such backend")
            conn = await pool.acquire(
                key,
                credentials,
                timeout=pools.wait_timeout,
                database=state.schema,
                user_limit=user_limit,
            )
            if gone():
                pools.release(conn, Release.REUSE)
                raise BackendError(target, "client went away")
            self.hold(conn)
        if not in_sync(self._holder, state, conn):
            try:
                await restore(self._holder, state, conn)
            except BackendError:
                self.release(conn, Why.UNTRUSTED)
                raise
        return conn

    def hold(self, conn: BackendConnection) -> None:
        """A connection the session just acquired."""
        self.conns[conn.backend] = conn
        conn.lessee = self._holder
        if self.paused:
            conn.pause_reading()

    def release(self, conn: BackendConnection, why: Why) -> None:
        """The session lets ``conn`` go, for reason ``why``."""
        if self.conns.get(conn.backend) is conn:
            del self.conns[conn.backend]
        conn.lessee = None
        how = _HOW[why]
        if self._statements.forget(conn) and how is Release.REUSE:
            how = Release.RESET  # free its statements on the server now
        if why is Why.IDLE or why is Why.ENDED:
            conn.state_owner = None
        self._pools.release(conn, how)
        if why is Why.MASTER_CHANGED:
            conn.abort("master changed")

    def release_all(self, why: Why) -> None:
        for conn in list(self.conns.values()):
            self.release(conn, why)

    def release_idle(self) -> None:
        """Every connection not running a command goes back to its pool."""
        for conn in list(self.conns.values()):
            if not conn.busy:
                self.release(conn, Why.IDLE)

    def release_wanted(self) -> None:
        """Connections others wait for, or from a retired generation, go back now."""
        pools = self._pools
        for target, conn in list(self.conns.items()):
            pool = pools.get(target)
            if pool is None or pool.waiting or pool.generation != conn.generation:
                self.release(conn, Why.IDLE)

    def pause_reading(self) -> None:
        self.paused = True
        for conn in self.conns.values():
            conn.pause_reading()

    def resume_reading(self) -> None:
        self.paused = False
        for conn in self.conns.values():
            conn.resume_reading()
