"""Running one command on a backend: route it, forward it, stream the response back.

Fast path: the session already holds a live, idle connection to the target with its state in
sync, so forwarding is a synchronous write (``_dispatch`` -> ``_forward``). Slow path
(a connection must be acquired, state restored, a PAUSE or a failover waited out, a replica
caught up, a prepared statement re-prepared) runs in a task (``_dispatch_slow``). The router
decides (``Route``, and ``Retry``/``Fail``/``Close`` after a backend loss); this layer acts.
The session is the backend connection's ``ResponseSink`` while a command runs.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final

from .. import errors
from ..backend import BackendConnection, BackendError, Credentials
from ..errors import BatonFailure
from ..pool import PoolExhausted, PoolKey
from ..protocol.constants import Command, ServerStatus
from ..protocol.framing import frames
from ..routing.classifier import Classification, Kind
from ..routing.router import Close, Fail, Route
from ..routing.session_state import StateRestoreError, in_sync
from . import causal
from .effects import StatementEffects
from .leases import Leases, Why
from .state import ClientState, Inflight

if TYPE_CHECKING:
    from ..protocol.response import ResponseTracker
    from .context import SessionContext

log = logging.getLogger("baton.client")

_IN_TRANS: Final = int(ServerStatus.IN_TRANS)
_CURSOR: Final = int(ServerStatus.CURSOR_EXISTS)
_QUERY: Final = int(Command.QUERY)
_EXECUTE: Final = int(Command.STMT_EXECUTE)
_INIT_DB: Final = int(Command.INIT_DB)
_SET_OPTION: Final = int(Command.SET_OPTION)
_ER_NEED_REPREPARE: Final = 1615
_READ_ONLY_ERRORS: Final = frozenset({1290, 1792})  # --read-only server / READ ONLY transaction
_WRITE: Final = Kind.WRITE
_COMMIT: Final = Kind.COMMIT
_IDLE: Final = ClientState.IDLE
_ACTIVE: Final = ClientState.ACTIVE
_WAITING: Final = ClientState.WAITING
_INFILE: Final = ClientState.INFILE
_CLOSED: Final = ClientState.CLOSED


class Execution(StatementEffects):
    """Routing, dispatch, the response sink and what a response changed."""

    def __init__(self, ctx: SessionContext) -> None:
        super().__init__(ctx)
        self.leases = Leases(self, ctx.pools, self.stmts)
        self.conns = self.leases.conns  # the same dict: read on every statement
        self.credentials: Credentials | None = None
        self.pool_key: PoolKey | None = None
        self.user_share = 0  # [[users]] max_backend_connections at login (0: the whole pool)

    # -- routing ------------------------------------------------------------------------------

    def _begin(self, command: int, payload: bytes) -> Inflight:
        self.inflight = inflight = Inflight(command, payload, started=time.monotonic())
        self.change_state(_ACTIVE)
        return inflight

    def _route_of(self, inflight: Inflight) -> Route:
        """The router's verdict for ``inflight``; marks it a read or causal read if so."""
        route = self.ctx.router.route(
            self.routing, inflight.cls, inflight.command, inflight.payload, inflight.stmt
        )
        if route.read:
            inflight.read = True
            if route.causal:
                inflight.causal = True
        return route

    def _route(self, inflight: Inflight) -> None:
        """Routes a command (COM_QUERY already classified) and dispatches it."""
        routing = self.routing
        trx = routing.trx_backend
        if trx is not None and self.ctx.topology.is_fenced(trx):
            routing.backend_gone(trx)  # never run a statement on a fenced node
        if routing.trx_lost is not None:
            self._transaction_lost_reply(inflight)
            return
        if routing.state_lost is not None:
            reason, routing.state_lost = routing.state_lost, None
            self.finish_with_error(errors.SESSION_STATE_LOST, reason=reason)
            return
        cls = inflight.cls
        if cls is not None and cls.local:
            self._route_local(cls)  # SET @baton_consistency: Baton's own
            return
        try:
            route = self._route_of(inflight)
        except BatonFailure as exc:
            self.finish_with_error(exc.code, **exc.params)
            return
        if cls is not None and cls.ddl:
            inflight.ddl = True
            self.ctx.router.ddl_started()
        self._dispatch(route.target, inflight)

    def _dispatch(self, target: str | None, inflight: Inflight) -> None:
        conn = self.conns.get(target) if target is not None else None
        if (
            conn is not None
            and conn.alive
            and not conn.busy
            and not self.ctx.host.paused
            and not inflight.causal
            and inflight.stmt is None
            and in_sync(self, self.state, conn)
        ):
            self._forward(conn, inflight, inflight.payload)
        else:
            self._wait_for(target, inflight)

    def _wait_for(self, target: str | None, inflight: Inflight) -> None:
        """The slow path, in a task: the session waits (and its next commands queue)."""
        if self.client_state is _CLOSED:
            return  # the client went away while its command was being served
        self.change_state(_WAITING)
        self._spawn(self._dispatch_slow(target, inflight))

    async def _dispatch_slow(self, target: str | None, inflight: Inflight) -> None:
        ctx = self.ctx
        router = ctx.router
        try:
            if ctx.host.paused and not await ctx.host.wait_resumed(ctx.pause_timeout_s):
                raise BatonFailure(
                    errors.PAUSED_TIMEOUT, timeout_ms=int(ctx.pause_timeout_s * 1000)
                )
            if target is None:
                target = (await router.wait_for_target(lambda: self._route_of(inflight))).target
                assert target is not None
            routing = self.routing
            if (
                routing.in_transaction
                and target == routing.trx_backend
                and target not in self.conns
            ):
                # The transaction's connection died between statements: the transaction
                # is gone with it; never start a fresh one there behind the client's back.
                routing.lose_transaction(target)
                self._transaction_lost_reply(inflight)
                return
            conn = await self._connection_for(target)
            timeout_s = ctx.config.routing.causal_read_timeout_ms / 1000
            if inflight.causal and not await causal.caught_up(
                conn, routing.causal_gtid, ctx.host, timeout_s
            ):
                inflight.causal = False
                master = (
                    router.master()
                    or (await router.wait_for_target(lambda: self._route_of(inflight))).target
                )
                assert master is not None
                conn = await self._connection_for(master)
            payload = inflight.payload
            if inflight.stmt is not None:
                payload = await self._statement_payload(conn, inflight)
            elif inflight.command == Command.STMT_PREPARE:
                tracker = await conn.command(Command.STMT_PREPARE, payload[1:])
                self._prepared(conn, inflight, tracker)
                return
        except BackendError as exc:
            if self._worth_retrying(exc, inflight):
                inflight.retries += 1
                router.suspect(exc.backend)
                self.retry(inflight)
                return
            self._finish_with(self._backend_error_frame(exc, 1))
            return
        except BatonFailure as failure:  # (not "exc" again: mypyc gives a name one type)
            self.finish_with_error(failure.code, **failure.params)
            return
        self._forward(conn, inflight, payload)

    def _route_local(self, cls: Classification) -> None:
        """Answers a statement Baton handles itself (``commands``)."""
        raise NotImplementedError

    async def _statement_payload(self, conn: BackendConnection, inflight: Inflight) -> bytes:
        """A prepared statement's command as ``conn`` must see it (``prepared``)."""
        raise NotImplementedError

    def _prepared(
        self, conn: BackendConnection, inflight: Inflight, tracker: ResponseTracker
    ) -> None:
        """Answers COM_STMT_PREPARE from the backend's answer (``prepared``)."""
        raise NotImplementedError

    def _worth_retrying(self, exc: BackendError, inflight: Inflight) -> bool:
        """A backend could not be reached (no server error): a read tries elsewhere; a
        statement for an unreachable master is held, since a failover has most likely begun."""
        if exc.err is not None:
            return False
        if inflight.read and inflight.retries < 2:
            return True
        return not isinstance(exc, PoolExhausted | StateRestoreError) and self._may_hold(
            exc.backend, inflight
        )

    def _may_hold(self, backend: str, inflight: Inflight) -> bool:
        """Hold a statement whose master cannot be reached, while the buffer window lasts."""
        ctx = self.ctx
        if (
            backend != ctx.topology.master
            or self.routing.in_transaction
            or not ctx.host.promotion_possible()
        ):
            return False
        if inflight.started + ctx.config.failover.buffer_window_ms / 1000 < time.monotonic():
            return False
        return inflight.retries < 1000

    def retry(self, inflight: Inflight) -> None:
        """Runs the current command again, elsewhere if need be (nothing reached the client)."""
        inflight.conn = None
        inflight.forwarded = 0
        self.inflight = inflight
        try:
            route = self._route_of(inflight)
        except BatonFailure as exc:
            self.finish_with_error(exc.code, **exc.params)
            return
        self._wait_for(route.target, inflight)

    def _forward(self, conn: BackendConnection, inflight: Inflight, payload: bytes) -> None:
        inflight.conn = conn
        if self.client_state is not _ACTIVE:
            self.change_state(_ACTIVE)
        if self.leases.paused:
            conn.pause_reading()
        cls = inflight.cls  # a lock function's value is read from the response (its row)
        if not conn.send(
            frames(payload, 0), inflight.command, self, cls is not None and cls.lock_calls_exact
        ):
            self.inflight = None  # no response expected (COM_STMT_CLOSE, SEND_LONG_DATA)
            self.change_state(_IDLE)
            self.ctx.stats.count(inflight.command, conn.backend)
            self._next()

    async def _connection_for(self, target: str) -> BackendConnection:
        """The session's connection to ``target``, acquiring and preparing one if needed."""
        assert self.credentials is not None and self.pool_key is not None
        return await self.leases.acquire(
            target, self.pool_key, self.credentials, self.state, self._gone, self.user_share
        )

    def _gone(self) -> bool:
        return self.client_state is _CLOSED

    # -- ResponseSink (called by the backend connection) ---------------------------------------

    def response_data(self, data: bytes | memoryview) -> None:
        inflight = self.inflight
        if inflight is not None:
            if (
                not inflight.forwarded
                and len(data) > 6
                and data[4] == 0xFF
                and not inflight.retries
            ):
                code = data[5] | (data[6] << 8)
                if (code == _ER_NEED_REPREPARE and inflight.command == _EXECUTE) or (
                    code in _READ_ONLY_ERRORS and inflight.read
                ):
                    inflight.swallowed_error = code  # handled in response_done
                    return
            inflight.forwarded += len(data)
        if self._output_paused and self._output_overflowed():
            return
        self.transport.write(data)  # type: ignore[union-attr]

    def response_infile(self, conn: BackendConnection) -> None:
        self.change_state(_INFILE)

    def response_done(self, conn: BackendConnection) -> None:
        inflight = self.inflight
        self.inflight = None
        tracker = conn.tracker
        status = tracker.status
        backend = conn.backend
        self.routing.responded(status, backend)
        if inflight is None:
            if self.client_state is not _IDLE:
                self.change_state(_IDLE)
            self._after_response()
            return
        ctx = self.ctx
        stats = ctx.stats
        error = tracker.error
        stats.count(inflight.command, backend, error)
        stats.observe_latency(time.monotonic() - inflight.started)
        if inflight.swallowed_error:
            self._handle_swallowed(conn, inflight)
            return
        cls = inflight.cls
        if cls is not None:
            self._observe_query(cls, conn, error is None)
        elif inflight.command == _INIT_DB and error is None:
            self.state.schema = conn.schema = inflight.payload[1:].decode("utf-8", "replace")
            self._synced(conn)
        elif (
            inflight.command == _SET_OPTION and error is None and len(inflight.payload) >= 3
        ):
            self.state.multi_option = conn.multi_option = inflight.payload[1] | (
                inflight.payload[2] << 8
            )
        elif inflight.command == _EXECUTE and inflight.stmt is not None:
            stmt = inflight.stmt
            stmt.cursor_conn = conn if status & _CURSOR else None
            if error is None and not stmt.is_read and self._session_consistency():
                self._learn_gtid_then_continue(conn, inflight)
                return
        if backend == ctx.topology.master and error is None and not inflight.read:
            ctx.host.note_write_ok()
        if inflight.ddl:
            if error is None:
                self._learn_gtid_then_continue(conn, inflight, ddl=True)
                return
            ctx.router.ddl_finished(None)
        elif (
            cls is not None
            and error is None
            and (cls.kind is _WRITE or cls.kind is _COMMIT)
            and not status & _IN_TRANS
            and self._session_consistency()
        ):
            self._learn_gtid_then_continue(conn, inflight)
            return
        if self.client_state is not _INFILE:  # else the rest of the upload is still to come
            self.change_state(_IDLE)
        self._after_response()

    def _handle_swallowed(self, conn: BackendConnection, inflight: Inflight) -> None:
        """An ERR Baton kept from the client: run the command again where it can succeed."""
        code, inflight.swallowed_error = inflight.swallowed_error, 0
        inflight.retries += 1
        self.inflight = inflight
        stmt = inflight.stmt
        if code == _ER_NEED_REPREPARE:  # the statement is stale on that backend: again
            assert stmt is not None
            stmt.backend_ids.pop(conn, None)
            stmt.types_sent.discard(conn)
            self._wait_for(conn.backend, inflight)
            return
        # A "read" that wrote (a stored function called from a SELECT) hit a read-only
        # replica: nothing was done there. Run it on the master, and remember to.
        if stmt is not None:
            stmt.master_only = True
        else:
            self.ctx.router.learn_master_only(inflight.payload)
        inflight.read = False
        self._wait_for(self.ctx.router.master(), inflight)

    def backend_lost(self, conn: BackendConnection, reason: str) -> None:
        target = conn.backend
        self.leases.release(conn, Why.UNTRUSTED)
        if self.client_state is _CLOSED:
            return
        inflight = self.inflight
        if inflight is None or inflight.conn is not conn:
            self.routing.backend_gone(target)  # the next statement hears of it
            return
        log.warning(
            "backend_lost_under_client client=%s backend=%s reason=%s", self.id, target, reason
        )
        if self.client_state is _INFILE:
            self.change_state(_ACTIVE)
        verdict = self.ctx.router.after_loss(
            self.routing,
            target,
            inflight.command,
            inflight.read,
            inflight.retries,
            inflight.forwarded,
        )
        if isinstance(verdict, Close):
            # Part of a result already reached the client: it cannot be taken back.
            self._close(f"{verdict.reason}: {reason}")
        elif isinstance(verdict, Fail):
            if verdict.transaction_lost:
                self.routing.lose_transaction(target)
            self.finish_with_error(verdict.code, backend=target)
        else:
            inflight.retries += 1
            self.retry(inflight)

    def _transaction_lost_reply(self, inflight: Inflight) -> None:
        routing = self.routing
        backend = routing.trx_lost
        routing.trx_lost = None
        cls = inflight.cls
        if cls is not None and cls.kind is Kind.ROLLBACK:
            self._finish_with(self._ok(1))
            return
        self.finish_with_error(errors.TRANSACTION_LOST, backend=backend)

    # -- LOCAL INFILE -------------------------------------------------------------------------

    def upload_paused(self, paused: bool) -> None:
        """The backend's socket is full (an upload faster than the server takes it): the
        client is not read meanwhile, so Baton never holds more than a socket's worth."""
        self._upload_paused = paused
        if paused:
            self._pause_intake()
        else:
            self._resume_intake()

    def _infile_packet(self, seq: int, payload: bytes) -> None:
        inflight = self.inflight
        if inflight is None:  # the server answered before the upload ended: drop the rest
            if not payload:
                self.change_state(_IDLE)
                self._next()
            return
        conn = inflight.conn
        if conn is None or not conn.alive:
            return  # the backend went away; backend_lost answers the client
        conn.send_more(frames(payload, seq))
        if not payload:  # the empty packet ends the file
            self.change_state(_ACTIVE)
            conn.tracker.infile_sent()
