"""One application connection: Baton acting as a MySQL server.

Life of a session: greeting and login (``ServerHandshake``), then commands one at a time. A
command is routed to a backend (``Router``), forwarded as bytes, and the backend's response is
streamed back while its ``ResponseTracker`` finds the end. Fast path: the session already holds
a live connection to the target, so forwarding is a synchronous ``writelines``. Slow path (a
connection must be acquired, state restored, or a failover waited out) runs in a task.

Backpressure: when the client's socket buffer fills (``pause_writing``), reading from its
backends pauses, so a huge result set streams at the client's pace instead of filling memory.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from dataclasses import dataclass
from enum import Enum, auto
from typing import TYPE_CHECKING

from . import errors
from .backend import BackendConnection, BackendError, Credentials
from .compressed import CompressedTransport
from .errors import BatonFailure
from .net import tcp_nodelay
from .pool import PoolExhausted, PoolKey
from .protocol.compression import CompressedStream
from .protocol.constants import (
    RESPONSE_SHAPING_CAPABILITIES,
    SUPPORTED_CAPABILITIES,
    Capability,
    Command,
    ServerStatus,
)
from .protocol.framing import PacketReader, PacketTooLarge, frame, frames
from .protocol.handshake import Authenticated, Failed, Send, ServerHandshake, StartTLS
from .protocol.packets import HandshakeResponse, OkPacket, encode_ok
from .protocol.wire import PayloadReader, ProtocolError
from .routing.classifier import Classification, Kind, Pin, classify
from .routing.session_state import SessionState, SessionStateKeeper, StateRestoreError
from .routing.statements import (
    PreparedStatement,
    execute_types,
    prepare_ok_ids,
    rewrite_execute,
    statement_id,
    with_statement_id,
)
from .tls import TLSTransport

if TYPE_CHECKING:
    from .app import Baton
    from .protocol.response import ResponseTracker

log = logging.getLogger("baton.client")

_IN_TRANS = int(ServerStatus.IN_TRANS)
_AUTOCOMMIT = int(ServerStatus.AUTOCOMMIT)
_CURSOR = int(ServerStatus.CURSOR_EXISTS)
# Status flags that describe the session; the rest (cursor, last row, more results, state
# changed) describe one response and must not leak into OK packets Baton builds itself.
_REPLY_STATUS = int(
    ServerStatus.IN_TRANS | ServerStatus.AUTOCOMMIT | ServerStatus.IN_TRANS_READONLY
    | ServerStatus.NO_BACKSLASH_ESCAPES
)
_QUERY = int(Command.QUERY)
_MULTI_STATEMENTS = int(Capability.MULTI_STATEMENTS)
_EXECUTE = int(Command.STMT_EXECUTE)
_ER_NEED_REPREPARE = 1615
# Pipelined commands queued before Baton stops reading the client's socket.
_MAX_QUEUED = 64
# Bytes inflated from a compressed client per pass; the rest waits until they are served.
_INFLATE_BUDGET = 4 << 20
_READ_ONLY_ERRORS = frozenset({1290, 1792})  # --read-only server / READ ONLY transaction
# Statements that change the schema (a replica that has not applied them fails reads).
_DDL_RE = re.compile(rb"\s*(?:/\*.*?\*/\s*|(?:--|#)[^\n]*\n\s*)*(?:CREATE|ALTER|DROP|RENAME|TRUNCATE)\b", re.I | re.S)
# KILL [QUERY | CONNECTION] <id>, possibly after comments (not KILL QUERY ID <query id>).
_KILL_RE = re.compile(rb"\s*(?:/\*.*?\*/\s*)*KILL\s+(?:(QUERY|CONNECTION)\s+)?(\d+)\s*;?\s*\Z", re.I | re.S)


class Phase(Enum):
    HANDSHAKE = auto()
    COMMAND = auto()
    INFILE = auto()  # forwarding LOCAL INFILE data from the client
    CLOSED = auto()


@dataclass(slots=True)
class Inflight:
    """The command being served right now."""

    command: int
    payload: bytes
    conn: BackendConnection | None = None
    started: float = 0.0
    forwarded: int = 0  # response bytes already sent to the client (no retry after the first)
    cls: Classification | None = None  # COM_QUERY classification
    stmt: PreparedStatement | None = None  # COM_STMT_EXECUTE / FETCH / RESET target
    read: bool = False  # a read: may be retried on another backend before any byte is sent
    causal: bool = False  # must wait for the session's last write on the chosen replica
    retries: int = 0
    swallowed_error: int = 0  # an ERR Baton handles itself (1615: re-prepare and retry)
    ddl: bool = False  # changes the schema: replicas get no reads until they have applied it


# Commands a client may send once logged in, and what Baton does with each.
_FORWARDED = frozenset(
    {
        Command.QUERY, Command.INIT_DB, Command.FIELD_LIST, Command.STATISTICS,
        Command.STMT_PREPARE, Command.STMT_EXECUTE, Command.STMT_SEND_LONG_DATA,
        Command.STMT_CLOSE, Command.STMT_RESET, Command.STMT_FETCH, Command.SET_OPTION,
        Command.PROCESS_INFO, Command.REFRESH, Command.DEBUG,
        Command.CREATE_DB, Command.DROP_DB, Command.SHUTDOWN,
    }
)


class ClientSession(asyncio.Protocol):
    def __init__(self, app: Baton) -> None:
        self.app = app
        self.id = app.next_connection_id()
        self.transport: asyncio.Transport | TLSTransport | CompressedTransport | None = None
        self._raw_transport: asyncio.Transport | None = None
        self._tls: TLSTransport | None = None
        self.peer = ""
        self.phase = Phase.HANDSHAKE
        self.reader = PacketReader(app.config.proxy.max_allowed_packet)
        self.hs: ServerHandshake | None = None
        self.user = ""
        self.credentials: Credentials | None = None
        self.capabilities = 0
        self.pool_key: PoolKey | None = None
        self.charset = 45
        self.state = SessionState()
        self.status = _AUTOCOMMIT
        self.conns: dict[str, BackendConnection] = {}
        self.queue: deque[tuple[int, bytes]] = deque()
        self.inflight: Inflight | None = None
        # Routing state
        self.trx_backend: str | None = None  # where the open transaction runs
        self.trx_lost: str | None = None  # backend whose death took the open transaction
        self.last_backend: str | None = None  # where the previous statement ran
        self.pins: dict[object, int] = {}  # reasons this session must stay on the master
        self.temp_tables: set[str] = set()
        self.pin_next = False  # FOUND_ROWS(): the next statement must see the previous one's
        self.pinned_on: str | None = None  # backend holding the pinned state
        self.state_lost: str | None = None  # pinned state that died with its backend (why)
        self.consistency: str | None = None  # SET @baton_consistency override
        self.causal_gtid: str | None = None  # GTID of the session's last write (session mode)
        self.stmts: dict[int, PreparedStatement] = {}
        self._stmt_ids = 0
        self.multi_option: int | None = None  # COM_SET_OPTION the session sent (0 on, 1 off)
        self.connected_at = time.time()
        self.last_active = time.monotonic()
        self.queries = 0
        self._writing_paused = False
        self._zstream: CompressedStream | None = None  # the client asked for compression
        self._task: asyncio.Task[None] | None = None
        self._handshake_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self._raw_transport = transport  # type: ignore[assignment]
        tcp_nodelay(transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        transport.set_write_buffer_limits(high=256 * 1024)  # type: ignore[attr-defined]
        app = self.app
        if not app.accepting or len(app.sessions) >= app.config.proxy.max_client_connections:
            reason = errors.SERVER_SHUTDOWN if not app.accepting else errors.TOO_MANY_CONNECTIONS
            transport.write(reason.frame(0))  # type: ignore[attr-defined]
            transport.close()
            self.phase = Phase.CLOSED
            return
        app.sessions[self.id] = self
        app.stats.client_connections += 1
        self.hs = ServerHandshake(
            server_version=app.server_version,
            connection_id=self.id,
            lookup=app.lookup_account,
            client_host=self.peer.rsplit(":", 1)[0],
            auth_plugin=app.config.proxy.auth_plugin,
            tls_available=app.tls_context is not None,
            rsa_key=app.rsa_key,
            sha2_cache=app.sha2_cache,
            capabilities=self._offered_capabilities(),
        )
        transport.write(self.hs.greeting())  # type: ignore[attr-defined]
        self._handshake_timer = asyncio.get_running_loop().call_later(10.0, self._handshake_timeout)

    def data_received(self, data: bytes) -> None:
        if self._tls is not None:
            try:
                data = self._tls.feed(data)
            except Exception as exc:  # ssl.SSLError and friends: this client only
                self._close(f"TLS error: {exc}")
                return
            if not data:
                return
        if self._zstream is not None:
            self._inflate(data)
            return
        self._stream_received(data)

    def _inflate(self, data: bytes = b"") -> None:
        """Compressed bytes in: inflate a budget's worth and serve it; more when it is served.

        While whole compressed packets wait (the budget ran out), the socket is not read:
        the client's own commands pace how much of its zlib Baton expands.
        """
        zstream = self._zstream
        if zstream is None or self.phase == Phase.CLOSED:
            return
        try:
            stream = zstream.unwrap(data, _INFLATE_BUDGET)
        except ProtocolError as exc:
            self._fatal(errors.MALFORMED_PACKET.frame(self.reader.last_seq + 1, reason=exc), f"malformed compressed packet: {exc}")
            return
        if stream:
            self._stream_received(stream)
        raw = self._raw_transport
        if self.phase == Phase.CLOSED or raw is None:
            return
        if zstream.backlog:
            raw.pause_reading()
            if self.phase == Phase.INFILE or (self.inflight is None and not self.queue):
                # Nothing queued will call back (a file upload, or a packet still partial).
                asyncio.get_running_loop().call_soon(self._inflate)
        elif len(self.queue) <= _MAX_QUEUED:
            raw.resume_reading()  # the backlog is gone; a partial packet needs the rest

    def _stream_received(self, data: bytes) -> None:
        """The plain packet stream (after TLS and compression, where the client uses them)."""
        self.last_active = time.monotonic()
        if self.phase == Phase.COMMAND and self.inflight is None and not self.queue:
            pkt = self.reader.take_whole(data)
            if pkt is not None:  # the usual case: one whole command, nothing queued
                self.queue.append(pkt)
                self._next()
                return
        self.reader.feed(data)
        try:
            self._drain()
        except PacketTooLarge:
            self._fatal(errors.PACKET_TOO_LARGE.frame(self.reader.last_seq + 1), "packet too large")
        except ProtocolError as exc:
            self._fatal(errors.MALFORMED_PACKET.frame(self.reader.last_seq + 1, reason=exc), f"malformed packet: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._close("client disconnected" if exc is None else f"client connection lost: {exc}")

    def pause_writing(self) -> None:
        self._writing_paused = True
        for conn in self.conns.values():
            conn.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        for conn in self.conns.values():
            conn.resume_reading()

    # -- packets in ---------------------------------------------------------------------------

    def _drain(self) -> None:
        reader = self.reader
        while self.phase != Phase.CLOSED and (pkt := reader.next_packet()) is not None:
            seq, payload = pkt
            phase = self.phase
            if phase == Phase.COMMAND:
                self.queue.append(pkt)
                if self.inflight is None:
                    self._next()
                elif len(self.queue) > _MAX_QUEUED:
                    self._raw_transport.pause_reading()  # type: ignore[union-attr]
            elif phase == Phase.INFILE:
                self._infile_packet(seq, payload)
            elif phase == Phase.HANDSHAKE:
                self._handshake_packet(seq, payload)

    def _handshake_packet(self, seq: int, payload: bytes) -> None:
        assert self.hs is not None
        for action in self.hs.receive(seq, payload):
            if isinstance(action, Send):
                self.transport.write(action.data)  # type: ignore[union-attr]
            elif isinstance(action, StartTLS):
                ctx = self.app.tls_context
                assert ctx is not None and self._raw_transport is not None
                self._tls = TLSTransport(ctx, self._raw_transport)
                self.transport = self._tls
                leftover = self.reader.take_raw()  # a ClientHello right behind the SSLRequest
                if leftover:
                    self.data_received(leftover)
                return
            elif isinstance(action, Failed):
                self.app.stats.auth_failures += 1
                user = self.hs._response.user if self.hs._response else ""
                log.info("login_refused client=%s user=%s peer=%s", self.id, user, self.peer)
                self._fatal(self.hs.failure_bytes, "authentication failed")
            elif isinstance(action, Authenticated):
                self._authenticated(action)

    def _authenticated(self, a: Authenticated) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        self.user = a.user
        self.capabilities = a.capabilities
        caps = (a.capabilities & int(RESPONSE_SHAPING_CAPABILITIES)) | int(self.app.backend_capabilities_base)
        self.pool_key = PoolKey(a.user, caps, a.charset)
        self.charset = a.charset
        self.state.schema = a.database
        self.credentials = Credentials(a.user, a.password, a.stage1)
        self.phase = Phase.COMMAND
        if a.capabilities & Capability.COMPRESS and self._zstream is None:
            # Everything the client sends after its login is compressed; what Baton sends is
            # from the OK on (an error before it, e.g. an unknown schema, is not).
            self._zstream = CompressedStream()
        self.inflight = Inflight(-1, b"")  # hold commands until the login is done
        self._spawn(self._finish_login(a.seq))

    async def _finish_login(self, seq: int) -> None:
        """Checks the default schema on a backend before saying OK, as a server would."""
        if self.state.schema:
            target = self.app.router.master() or self.app.router.read_target(self, Inflight(0, b""), None)
            if target is not None:
                try:
                    await self._connection_for(target)
                except BackendError as exc:
                    self._fatal(self._backend_error_frame(exc, seq), f"login: {exc}")
                    return
        self.transport.write(frame(encode_ok(OkPacket(status=self.status & _REPLY_STATUS), self.capabilities), seq))  # type: ignore[union-attr]
        if self._zstream is not None and not isinstance(self.transport, CompressedTransport):
            self.transport = CompressedTransport(self.transport, self._zstream)
        log.debug("client_logged_in client=%s user=%s peer=%s tls=%s compressed=%s", self.id, self.user, self.peer, self._tls is not None, self._zstream is not None)
        self.inflight = None
        self._after_response()

    def _offered_capabilities(self) -> int:
        compress = Capability.COMPRESS if self.app.config.proxy.compression else 0
        return int(SUPPORTED_CAPABILITIES | compress)

    def _handshake_timeout(self) -> None:
        if self.phase == Phase.HANDSHAKE:
            self._close("handshake timeout")

    # -- commands -----------------------------------------------------------------------------

    def _next(self) -> None:
        """Serves queued commands until one has to wait for a backend."""
        while self.inflight is None and self.queue and self.phase == Phase.COMMAND:
            seq, payload = self.queue.popleft()
            if seq != 0:
                self._fatal(errors.PACKETS_OUT_OF_ORDER.frame(seq + 1), f"command with sequence id {seq}")
                return
            if not payload:
                self._fatal(errors.MALFORMED_PACKET.frame(1, reason="empty command packet"), "empty command")
                return
            self.queries += 1
            try:
                self._command(payload[0], payload)
            except ProtocolError as exc:
                self._finish_with(errors.MALFORMED_PACKET.frame(1, reason=exc))
        if not self.queue and self._raw_transport is not None and self.phase == Phase.COMMAND:
            if self._zstream is not None and self._zstream.backlog:
                asyncio.get_running_loop().call_soon(self._inflate)
            else:
                self._raw_transport.resume_reading()

    def _command(self, command: int, payload: bytes) -> None:
        if command == Command.PROCESS_KILL:
            self._begin(command, payload)
            target = int.from_bytes(payload[1:5], "little") if len(payload) >= 5 else 0
            self._spawn(self._kill(target, query_only=False))
            return
        if command == _QUERY or command in _FORWARDED:
            handler = _STMT_HANDLERS.get(command)
            if handler is not None:
                handler(self, payload)
            else:
                self._route(self._begin(command, payload))
        elif command == Command.PING:
            self._reply_ok(1)
        elif command == Command.QUIT:
            self._close("client quit")
        elif command == Command.RESET_CONNECTION:
            self._reset_connection()
        elif command == Command.CHANGE_USER:
            self._begin(command, payload)
            self._change_user(payload)
        else:
            self.transport.write(errors.UNKNOWN_COMMAND.frame(1, command=command))  # type: ignore[union-attr]

    def _begin(self, command: int, payload: bytes) -> Inflight:
        self.inflight = inflight = Inflight(command, payload, started=time.monotonic())
        return inflight

    def _route(self, inflight: Inflight) -> None:
        payload = inflight.payload
        if inflight.command == _QUERY and (m := _KILL_RE.match(payload, 1)) is not None:
            self._spawn(self._kill(int(m.group(2)), query_only=(m.group(1) or b"").upper() == b"QUERY"))
            return
        if self.trx_backend is not None and self.app.topology.is_fenced(self.trx_backend):
            self._backend_gone(self.trx_backend)  # never run a statement on a fenced node
        if self.trx_lost is not None:
            self._transaction_lost_reply(inflight)
            return
        if self.state_lost is not None:
            reason, self.state_lost = self.state_lost, None
            self.finish_with_error(errors.SESSION_STATE_LOST, reason=reason)
            return
        try:
            target = self.app.router.route(self, inflight)
        except BatonFailure as exc:
            self.finish_with_error(exc.code, **exc.params)
            return
        cls = inflight.cls
        if cls is not None:
            kind = cls.kind
            if kind is Kind.SESSION and self._local_set(cls):
                return
            if kind is Kind.WRITE and _DDL_RE.match(payload, 1) is not None:
                inflight.ddl = True
                self.app.router.ddl_started()
        self._dispatch(target, inflight)

    def _dispatch(self, target: str | None, inflight: Inflight) -> None:
        conn = self.conns.get(target) if target is not None else None
        if (
            conn is not None
            and conn.alive
            and not conn.busy
            and not self.app.paused
            and not inflight.causal
            and inflight.stmt is None
            and SessionStateKeeper.in_sync(self, conn)
        ):
            self._forward(conn, inflight, inflight.payload)
        else:
            self._spawn(self._dispatch_slow(target, inflight))

    async def _dispatch_slow(self, target: str | None, inflight: Inflight) -> None:
        try:
            if self.app.paused and not await self.app.wait_resumed(self.app.pause_timeout_s):
                raise BatonFailure(errors.PAUSED_TIMEOUT, timeout_ms=int(self.app.pause_timeout_s * 1000))
            if target is None:
                target = await self.app.router.wait_for_target(self, inflight)
            if self.in_transaction and target == self.trx_backend and target not in self.conns:
                # The transaction's connection died between statements: the transaction
                # is gone with it; never start a fresh one there behind the client's back.
                self.lose_transaction(target)
                self._transaction_lost_reply(inflight)
                return
            conn = await self._connection_for(target)
            if inflight.causal and not await self._caught_up(conn):
                inflight.causal = False
                master = self.app.router.master() or await self.app.router.wait_for_target(self, inflight)
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
                self.app.router.suspect(exc.backend)
                self.retry(inflight)
                return
            self._finish_with(self._backend_error_frame(exc, 1))
            return
        except BatonFailure as exc:
            self.finish_with_error(exc.code, **exc.params)
            return
        self._forward(conn, inflight, payload)

    def _worth_retrying(self, exc: BackendError, inflight: Inflight) -> bool:
        """A backend could not be reached (no server error): a read tries elsewhere; a
        statement for an unreachable master is held, since a failover has most likely begun."""
        if exc.err is not None:
            return False
        if inflight.read and inflight.retries < 2:
            return True
        return not isinstance(exc, PoolExhausted | StateRestoreError) and self._may_hold(exc.backend, inflight)

    def _may_hold(self, backend: str, inflight: Inflight) -> bool:
        """Hold a statement whose master cannot be reached, while the buffer window lasts."""
        if backend != self.app.topology.master or self.in_transaction or not self.app.promotion_possible():
            return False
        if inflight.started + self.app.config.failover.buffer_window_ms / 1000 < time.monotonic():
            return False
        return inflight.retries < 1000

    def retry(self, inflight: Inflight) -> None:
        """Runs the current command again, elsewhere if need be (nothing reached the client)."""
        inflight.conn = None
        inflight.forwarded = 0
        self.inflight = inflight
        try:
            target = self.app.router.route(self, inflight)
        except BatonFailure as exc:
            self.finish_with_error(exc.code, **exc.params)
            return
        self._spawn(self._dispatch_slow(target, inflight))

    def _forward(self, conn: BackendConnection, inflight: Inflight, payload: bytes) -> None:
        inflight.conn = conn
        if self._writing_paused:
            conn.pause_reading()
        if not conn.send(frames(payload, 0), inflight.command, self):
            self.inflight = None  # no response expected (COM_STMT_CLOSE, SEND_LONG_DATA)
            self.app.stats.count(inflight.command, conn.backend)
            self._next()

    async def _connection_for(self, target: str) -> BackendConnection:
        """The session's connection to ``target``, acquiring and preparing one if needed."""
        conn = self.conns.get(target)
        if conn is not None and not conn.alive:
            self._drop_conn(target, conn)
            conn = None
        if conn is None:
            pool = self.app.pools.get(target)
            if pool is None:
                raise BackendError(target, "no such backend")
            assert self.credentials is not None and self.pool_key is not None
            conn = await pool.acquire(
                self.pool_key,
                self.credentials,
                timeout=self.app.pool_wait_timeout,
                database=self.state.schema,
            )
            if self.phase == Phase.CLOSED:
                self.app.recycle(conn)
                raise BackendError(target, "client went away")
            self.conns[target] = conn
            conn.lessee = self
            if self._writing_paused:
                conn.pause_reading()
        if not SessionStateKeeper.in_sync(self, conn):
            try:
                await self.app.session_state.restore(self, conn)
            except BackendError:
                self._drop_conn(target, conn)
                raise
        return conn

    def _drop_conn(self, target: str, conn: BackendConnection) -> None:
        """Forgets a connection that broke or cannot be trusted; it is closed, not pooled."""
        if self.conns.get(target) is conn:
            del self.conns[target]
        conn.lessee = None
        self._forget_statements(conn)
        pool = self.app.pools.get(target)
        if pool is not None:
            if conn.alive:
                pool.release(conn, reusable=False)
            else:
                pool.forget(conn)

    def _release(self, target: str, conn: BackendConnection) -> None:
        """Gives a healthy connection back to the pool (it is reset there)."""
        del self.conns[target]
        conn.lessee = None
        self._forget_statements(conn)
        conn.state_owner = None
        self.app.recycle(conn)

    # -- ResponseSink (called by the backend connection) ---------------------------------------

    def response_data(self, data: bytes | memoryview) -> None:
        inflight = self.inflight
        if inflight is not None:
            if not inflight.forwarded and len(data) > 6 and data[4] == 0xFF and not inflight.retries:
                code = data[5] | (data[6] << 8)
                if (code == _ER_NEED_REPREPARE and inflight.command == _EXECUTE) or (
                    code in _READ_ONLY_ERRORS and inflight.read
                ):
                    inflight.swallowed_error = code  # handled in response_done
                    return
            inflight.forwarded += len(data)
        self.transport.write(data)  # type: ignore[union-attr]

    def response_infile(self, conn: BackendConnection) -> None:
        self.phase = Phase.INFILE

    def response_done(self, conn: BackendConnection) -> None:
        inflight = self.inflight
        self.inflight = None
        tracker = conn.tracker
        status = tracker.status
        self.status = status
        backend = conn.backend
        self.last_backend = backend
        if status & _IN_TRANS:
            self.trx_backend = backend
        elif self.trx_backend is not None:
            self.trx_backend = None
        if inflight is None:
            self._after_response()
            return
        stats = self.app.stats
        stats.count(inflight.command, backend, tracker.error)
        stats.observe_latency(time.monotonic() - inflight.started)
        if inflight.swallowed_error:
            code, inflight.swallowed_error = inflight.swallowed_error, 0
            inflight.retries += 1
            self.inflight = inflight
            stmt = inflight.stmt
            if code == _ER_NEED_REPREPARE:  # the statement is stale on that backend: again
                assert stmt is not None
                stmt.backend_ids.pop(conn, None)
                stmt.types_sent.discard(conn)
                self._spawn(self._dispatch_slow(backend, inflight))
                return
            # A "read" that wrote (a stored function called from a SELECT) hit a read-only
            # replica: nothing was done there. Run it on the master, and remember to.
            if stmt is not None:
                stmt.master_only = True
            else:
                self.app.router.learn_master_only(inflight.payload)
            inflight.read = False
            self._spawn(self._dispatch_slow(self.app.router.master(), inflight))
            return
        error = tracker.error
        cls = inflight.cls
        if cls is not None:
            self._observe_query(cls, conn, error is None)
        elif inflight.command == Command.INIT_DB and error is None:
            self.state.schema = conn.schema = inflight.payload[1:].decode("utf-8", "replace")
            self._synced(conn)
        elif inflight.command == Command.SET_OPTION and error is None and len(inflight.payload) >= 3:
            self.multi_option = conn.multi_option = inflight.payload[1] | (inflight.payload[2] << 8)
        elif inflight.command == _EXECUTE and inflight.stmt is not None:
            stmt = inflight.stmt
            stmt.cursor_conn = conn if status & _CURSOR else None
            if error is None and not stmt.is_read and self.app.consistency_for(self) == "session":
                self._learn_gtid_then_continue(conn, inflight)
                return
        if backend == self.app.topology.master and error is None and not inflight.read:
            self.app.note_write_ok()
        if inflight.ddl:
            if error is None:
                self._learn_gtid_then_continue(conn, inflight, ddl=True)
                return
            self.app.router.ddl_finished(None)
        elif (
            cls is not None
            and error is None
            and cls.kind in (Kind.WRITE, Kind.COMMIT)
            and not status & _IN_TRANS
            and self.app.consistency_for(self) == "session"
        ):
            self._learn_gtid_then_continue(conn, inflight)
            return
        self._after_response()

    def backend_lost(self, conn: BackendConnection, reason: str) -> None:
        target = conn.backend
        self._drop_conn(target, conn)
        if self.phase == Phase.CLOSED:
            return
        inflight = self.inflight
        if inflight is None or inflight.conn is not conn:
            self._backend_gone(target)  # the next statement hears of it
            return
        log.warning("backend_lost_under_client client=%s backend=%s reason=%s", self.id, target, reason)
        if self.phase == Phase.INFILE:
            self.phase = Phase.COMMAND
        if inflight.forwarded:
            # Part of a result already reached the client: it cannot be taken back.
            self._close(f"backend {target} lost mid-response: {reason}")
            return
        self.app.router.on_backend_lost(self, inflight, target, reason)

    def _backend_gone(self, backend: str) -> None:
        """A backend (or our connection to it) died: state that lived only there is gone."""
        if self.trx_backend == backend and self.in_transaction:
            self.lose_transaction(backend)
        if self.pins and self.pinned_on == backend:
            reasons = self.pinned_reason()
            self.pins.clear()
            self.temp_tables.clear()
            self.pinned_on = None
            self.state_lost = f"{reasons} held on {backend} were lost with it"

    def lose_transaction(self, backend: str) -> None:
        """The open transaction died with its backend; the session itself carries on."""
        self.trx_lost = backend
        self.trx_backend = None
        self.status &= ~_IN_TRANS

    def _transaction_lost_reply(self, inflight: Inflight) -> None:
        backend = self.trx_lost
        self.trx_lost = None
        cls = inflight.cls
        if inflight.command == _QUERY and cls is None:
            cls = classify(inflight.payload[1:])
        if cls is not None and cls.kind is Kind.ROLLBACK:
            self._finish_with(frame(encode_ok(OkPacket(status=self.status & _REPLY_STATUS), self.capabilities), 1))
            return
        self.finish_with_error(errors.TRANSACTION_LOST, backend=backend)

    # -- what a statement changed -------------------------------------------------------------

    def _observe_query(self, cls: Classification, conn: BackendConnection, ok: bool) -> None:
        if not (cls.parts or cls.pin or cls.unpin or cls.session_vars or cls.schema
                or cls.temp_table or cls.dropped_tables):
            self.pin_next = False  # the usual statement: nothing to remember
            return
        parts = cls.parts or (cls,)
        if cls.parts and not ok:
            self._pin("multi_statement_error")  # some parts ran, some did not: stay put
            self.pinned_on = conn.backend
        for part in parts:
            self._apply_effects(part, conn, ok)
        self.pin_next = any(p.pin is Pin.FOUND_ROWS for p in parts)

    def _apply_effects(self, cls: Classification, conn: BackendConnection, ok: bool) -> None:
        if cls.unpin is not None:
            self._unpin(cls.unpin)
        if cls.pin is not None and cls.pin is not Pin.FOUND_ROWS:
            self._pin(cls.pin)
            self.pinned_on = conn.backend
        if cls.temp_table and ok:
            self.temp_tables.add(cls.temp_table.lower())
        if cls.dropped_tables and self.temp_tables and ok:
            for t in cls.dropped_tables:
                self.temp_tables.discard(t.lower())
            if not self.temp_tables:
                self.pins.pop(Pin.TEMP_TABLE, None)
        if not ok:
            return
        kind = cls.kind
        if kind is Kind.SESSION and cls.session_vars:
            was_synced = SessionStateKeeper.in_sync(self, conn)
            if not self.state.record(cls.session_vars):
                self._pin("unreplayable_set")
                self.pinned_on = conn.backend
            if was_synced:
                self._synced(conn)
        elif kind is Kind.USE and cls.schema:
            self.state.schema = conn.schema = cls.schema
            self._synced(conn)

    def _synced(self, conn: BackendConnection) -> None:
        conn.state_owner = self
        conn.state_version = self.state.version

    def _pin(self, reason: object) -> None:
        self.pins[reason] = self.pins.get(reason, 0) + 1

    def _unpin(self, reason: object) -> None:
        if reason is Pin.SQL_PREPARE:
            left = self.pins.get(reason, 0) - 1
            if left > 0:
                self.pins[reason] = left
                return
        self.pins.pop(reason, None)

    def _local_set(self, cls: Classification) -> bool:
        """``SET @baton_consistency = ...`` is Baton's own and never reaches a backend."""
        items = cls.session_vars
        if not items or any(i.scope != "user" or i.name != "baton_consistency" for i in items):
            return False
        value = items[-1].value.strip("'\"").lower()
        if value not in ("session", "eventual", "", "null", "default"):
            self._finish_with(errors.BAD_CONSISTENCY.frame(1, value=value))
            return True
        self.consistency = value if value in ("session", "eventual") else None
        self._finish_with(frame(encode_ok(OkPacket(status=self.status & _REPLY_STATUS), self.capabilities), 1))
        return True

    # -- KILL ----------------------------------------------------------------------------------

    async def _kill(self, client_id: int, query_only: bool) -> None:
        """KILL [QUERY|CONNECTION] <id>, where id is a Baton connection id (the one clients get
        in the greeting). Never forwarded as is: on a backend that id names another thread."""
        target = self.app.sessions.get(client_id)
        if target is None:
            self._finish_with(errors.UNKNOWN_THREAD.frame(1, id=client_id))
            return
        if target.user != self.user:
            self._finish_with(errors.NOT_OWNER.frame(1, id=client_id))
            return
        running = target.inflight.conn if target.inflight is not None else None
        if running is not None and running.busy and self.app.monitor is not None:
            try:  # stop the statement on its server, not just Baton's side of it
                await self.app.monitor.execute(running.backend, f"KILL QUERY {running.thread_id}", timeout=2)
            except Exception as exc:  # noqa: BLE001 - the kill is best effort; say so in the log
                log.warning("kill_query_failed client=%s backend=%s error=%r", client_id, running.backend, exc)
        if not query_only:
            target.kill(f"KILL from client {self.id}")
        if target is self and not query_only:
            return
        self._finish_with(frame(encode_ok(OkPacket(status=self.status & _REPLY_STATUS), self.capabilities), 1))

    # -- read-your-writes ---------------------------------------------------------------------

    def _learn_gtid_then_continue(self, conn: BackendConnection, inflight: Inflight, ddl: bool = False) -> None:
        # The session stays busy while Baton asks the connection: the client may already
        # have sent its next command, which must wait its turn (not share the connection).
        self.inflight = inflight
        self._spawn(self._learn_gtid(conn, ddl))

    async def _learn_gtid(self, conn: BackendConnection, ddl: bool = False) -> None:
        """After a write in "session" consistency, or any DDL: its GTID, for later reads."""
        gtid = None
        try:
            result = await conn.query("SELECT @@last_gtid", timeout=2)
            value = result.rows[0][0] if result.rows else None
            if value:
                gtid = value.decode()
        except BackendError:
            pass
        if gtid is not None and self.app.consistency_for(self) == "session":
            self.causal_gtid = gtid
        if ddl:
            self.app.router.ddl_finished(gtid)
        self.inflight = None
        self._after_response()

    async def _caught_up(self, conn: BackendConnection) -> bool:
        """Has this replica applied the session's last write? Waits a little if needed."""
        gtid = self.causal_gtid
        if gtid is None or self.app.replica_has(conn.backend, gtid):
            return True
        timeout = self.app.config.routing.causal_read_timeout_ms / 1000
        try:
            result = await conn.query(f"SELECT MASTER_GTID_WAIT('{gtid}', {timeout:.3f})", timeout=timeout + 2)
        except BackendError:
            return False
        return bool(result.rows) and result.rows[0][0] == b"0"

    # -- prepared statements ------------------------------------------------------------------

    def _stmt_prepare(self, payload: bytes) -> None:
        """Prepared where it will mostly run (a replica for a read); answered with Baton's own
        statement id. Runs through ``_dispatch_slow``: holding and retries are the same."""
        inflight = self._begin(Command.STMT_PREPARE, payload)
        if self.trx_lost is not None:
            self._transaction_lost_reply(inflight)
            return
        cls = classify(payload[1:])
        try:
            if cls.kind is Kind.READ and not cls.master_only and self.free_to_move_between_statements:
                target = self.app.router.read_target(self, inflight, None)
            else:
                target = self.app.router.route(self, inflight)
        except BatonFailure as exc:
            self.finish_with_error(exc.code, **exc.params)
            return
        inflight.read = True  # preparing changes nothing: safe to retry elsewhere
        self._spawn(self._dispatch_slow(target, inflight))

    def _prepared(self, conn: BackendConnection, inflight: Inflight, tracker: ResponseTracker) -> None:
        """Answers COM_STMT_PREPARE from the backend's answer, with Baton's statement id."""
        self.app.stats.count(Command.STMT_PREPARE, conn.backend, tracker.error)
        packets = tracker.packets
        if tracker.error is None and packets:
            cls = classify(inflight.payload[1:])
            backend_id, columns, params = prepare_ok_ids(packets[0])
            self._stmt_ids += 1
            stmt = PreparedStatement(
                self._stmt_ids, inflight.payload[1:], params, columns,
                master_only=cls.master_only or cls.kind is not Kind.READ,
                is_read=cls.kind is Kind.READ,
            )
            stmt.backend_ids[conn] = backend_id
            self.stmts[stmt.client_id] = stmt
            packets = [with_statement_id(packets[0], stmt.client_id), *packets[1:]]
        self._finish_with(b"".join(frame(p, i + 1) for i, p in enumerate(packets)))

    def _stmt_lookup(self, payload: bytes, command: int) -> PreparedStatement | None:
        stmt = self.stmts.get(statement_id(payload))
        if stmt is None and command not in (Command.STMT_CLOSE, Command.STMT_SEND_LONG_DATA):
            self._finish_with(errors.UNKNOWN_STMT.frame(1, stmt_id=statement_id(payload), command=Command(command).name))
        return stmt

    def _stmt_execute(self, payload: bytes) -> None:
        inflight = self._begin(_EXECUTE, payload)
        stmt = self._stmt_lookup(payload, _EXECUTE)
        if stmt is None:
            return
        types = execute_types(payload, stmt.params)
        if types is not None:
            stmt.param_types = types
        inflight.stmt = stmt
        self._route(inflight)

    async def _statement_payload(self, conn: BackendConnection, inflight: Inflight) -> bytes:
        """The command as this connection must see it: its statement id, types, long data."""
        stmt = inflight.stmt
        assert stmt is not None
        backend_id = stmt.backend_ids.get(conn)
        if backend_id is None:
            tracker = await conn.command(Command.STMT_PREPARE, stmt.sql, timeout=10)
            if tracker.error is not None:
                raise BackendError(conn.backend, f"re-prepare failed: {tracker.error.message}", tracker.error)
            backend_id = prepare_ok_ids(tracker.packets[0])[0]
            stmt.backend_ids[conn] = backend_id
        command = inflight.command
        if command == _EXECUTE:
            for chunk in stmt.long_data:
                conn.send([frame(with_statement_id(chunk, backend_id), 0)], Command.STMT_SEND_LONG_DATA, self)
            stmt.long_data.clear()
            add = None if conn in stmt.types_sent else stmt.param_types
            stmt.types_sent.add(conn)
            return rewrite_execute(inflight.payload, backend_id, stmt.params, add)
        return with_statement_id(inflight.payload, backend_id)

    def _stmt_send_long_data(self, payload: bytes) -> None:
        stmt = self.stmts.get(statement_id(payload))
        if stmt is not None:  # no response either way, as the server would do
            stmt.long_data.append(payload)
        self._next_after_silent()

    def _stmt_close(self, payload: bytes) -> None:
        stmt = self.stmts.pop(statement_id(payload), None)
        if stmt is not None:
            for conn, backend_id in stmt.backend_ids.items():
                if conn.alive and not conn.busy:  # type: ignore[attr-defined]
                    conn.send([frame(with_statement_id(payload, backend_id), 0)], Command.STMT_CLOSE, self)  # type: ignore[attr-defined]
        self._next_after_silent()

    def _next_after_silent(self) -> None:
        self.inflight = None
        self._next()

    def _stmt_reset(self, payload: bytes) -> None:
        inflight = self._begin(Command.STMT_RESET, payload)
        stmt = self._stmt_lookup(payload, Command.STMT_RESET)
        if stmt is None:
            return
        stmt.long_data.clear()
        conn = stmt.cursor_conn
        stmt.cursor_conn = None
        if conn is not None and conn.alive and conn in stmt.backend_ids:  # type: ignore[attr-defined]
            inflight.stmt = stmt
            self._forward(conn, inflight, with_statement_id(payload, stmt.backend_ids[conn]))  # type: ignore[arg-type]
        else:
            self._finish_with(frame(encode_ok(OkPacket(status=self.status & _REPLY_STATUS), self.capabilities), 1))

    def _stmt_fetch(self, payload: bytes) -> None:
        inflight = self._begin(Command.STMT_FETCH, payload)
        stmt = self._stmt_lookup(payload, Command.STMT_FETCH)
        if stmt is None:
            return
        conn = stmt.cursor_conn
        if conn is None or not conn.alive or conn not in stmt.backend_ids:  # type: ignore[attr-defined]
            self.finish_with_error(errors.NO_CURSOR, stmt_id=stmt.client_id)
            return
        inflight.stmt = stmt
        self._forward(conn, inflight, with_statement_id(payload, stmt.backend_ids[conn]))  # type: ignore[arg-type]

    def _forget_statements(self, conn: BackendConnection) -> None:
        for stmt in self.stmts.values():
            stmt.backend_ids.pop(conn, None)
            stmt.types_sent.discard(conn)
            if stmt.cursor_conn is conn:
                stmt.cursor_conn = None

    # -- pooling between statements -----------------------------------------------------------

    @property
    def free_to_move_between_statements(self) -> bool:
        """Nothing ties the next statement to one backend (transaction, autocommit=0, pins)."""
        return not self.status & _IN_TRANS and bool(self.status & _AUTOCOMMIT) and not self.pins

    @property
    def free_to_move(self) -> bool:
        """No state that lives on one connection: the session's connections may be pooled."""
        return (
            self.free_to_move_between_statements
            and not self.pin_next
            and self.inflight is None
            and not (self.stmts and any(s.cursor_conn is not None for s in self.stmts.values()))
        )

    def _after_response(self) -> None:
        """Gives connections back at once when others wait for them (the janitor gives back
        those of sessions idle for a while, see ``release_if_idle``)."""
        if self.conns and self.app.pool_waiters[0] and self.free_to_move:
            pools = self.app.pools
            for target, conn in list(self.conns.items()):
                pool = pools.get(target)
                if pool is None or pool.waiting or pool.generation != conn.generation:
                    self._release(target, conn)
        self._next()

    def give_back_idle(self, backend: str) -> bool:
        """Releases this session's connection to ``backend`` if it is idle and free to move."""
        conn = self.conns.get(backend)
        if conn is None or conn.busy or self.queue or self.phase != Phase.COMMAND or not self.free_to_move:
            return False
        self._release(backend, conn)
        return True

    def release_if_idle(self, idle_before: float) -> None:
        """Called periodically: a free-to-move session idle since ``idle_before`` lets go."""
        if (
            self.conns
            and self.phase == Phase.COMMAND
            and self.last_active < idle_before
            and not self.queue
            and self.free_to_move
        ):
            for target, conn in list(self.conns.items()):
                if not conn.busy:
                    self._release(target, conn)

    def on_master_change(self, old: str | None) -> None:
        """A promotion happened: connections to the old master are of no further use, and
        a transaction or pinned state on it is gone, whether or not we still hold a
        connection there."""
        if old is None:
            return
        self._backend_gone(old)
        conn = self.conns.get(old)
        if conn is None:
            return
        if self.inflight is not None and self.inflight.conn is conn:
            conn.abort("master changed")  # backend_lost decides what the client hears
            return
        self._drop_conn(old, conn)
        conn.abort("master changed")

    # -- Baton's own replies ------------------------------------------------------------------

    def _reply_ok(self, seq: int, info: bytes = b"") -> None:
        self.transport.write(frame(encode_ok(OkPacket(status=self.status & _REPLY_STATUS, info=info), self.capabilities), seq))  # type: ignore[union-attr]

    def _finish_with(self, data: bytes) -> None:
        """Ends the current command with Baton's own reply."""
        if self.phase == Phase.CLOSED:
            return
        self.inflight = None
        self.phase = Phase.COMMAND
        self.transport.write(data)  # type: ignore[union-attr]
        self._after_response()

    def finish_with_error(self, code: errors.ErrorCode, **params: object) -> None:
        self.app.stats.baton_errors[code.code] += 1
        self._finish_with(code.frame(1, **params))

    def _backend_error_frame(self, exc: BackendError, seq: int) -> bytes:
        from .protocol.packets import encode_err

        if exc.err is not None:  # the server's own answer (e.g. 1049 unknown database)
            return frame(encode_err(exc.err), seq)
        if isinstance(exc, StateRestoreError):
            code = errors.SESSION_STATE_UNRESTORABLE
            self.app.stats.baton_errors[code.code] += 1
            return code.frame(seq, backend=exc.backend, reason=exc.reason)
        if isinstance(exc, PoolExhausted):
            code = errors.POOL_EXHAUSTED
            self.app.stats.baton_errors[code.code] += 1
            return code.frame(seq, backend=exc.backend, timeout_ms=int(exc.timeout * 1000), limit=exc.limit)
        self.app.stats.baton_errors[errors.BACKEND_UNREACHABLE.code] += 1
        return errors.BACKEND_UNREACHABLE.frame(seq, backend=exc.backend, reason=exc.reason)

    # -- RESET_CONNECTION / CHANGE_USER -------------------------------------------------------

    def _forget_session_state(self) -> None:
        for target, conn in list(self.conns.items()):
            self._release(target, conn)
        self.stmts.clear()
        self.pins.clear()
        self.temp_tables.clear()
        self.pin_next = False
        self.pinned_on = None
        self.state_lost = None
        self.trx_backend = None
        self.trx_lost = None
        self.causal_gtid = None
        self.consistency = None
        self.multi_option = None
        self.state.clear()
        self.status = _AUTOCOMMIT

    def _reset_connection(self) -> None:
        """COM_RESET_CONNECTION: the session's connections go back to the pool (where they
        are reset); the session starts again from a clean state."""
        self._forget_session_state()
        self._reply_ok(1)
        self._after_response()

    def _change_user(self, payload: bytes) -> None:
        try:
            resp = _parse_change_user(payload, self.capabilities)
        except ProtocolError as exc:
            self._fatal(errors.MALFORMED_PACKET.frame(1, reason=exc), f"bad COM_CHANGE_USER: {exc}")
            return
        self._forget_session_state()
        self.state.schema = None
        hs = ServerHandshake(
            server_version=self.app.server_version,
            connection_id=self.id,
            lookup=self.app.lookup_account,
            client_host=self.peer.rsplit(":", 1)[0],
            auth_plugin=self.app.config.proxy.auth_plugin,
            rsa_key=self.app.rsa_key,
            sha2_cache=self.app.sha2_cache,
            nonce=self.hs.nonce if self.hs is not None else b"",
            capabilities=self._offered_capabilities(),
        )
        hs._tls = self._tls is not None
        hs.greeting()  # moves it to the state that expects a login response
        self.hs = hs
        self.phase = Phase.HANDSHAKE
        self._handshake_packet(0, _as_handshake_response(resp))

    # -- LOCAL INFILE -------------------------------------------------------------------------

    def _infile_packet(self, seq: int, payload: bytes) -> None:
        inflight = self.inflight
        conn = inflight.conn if inflight is not None else None
        if conn is None or not conn.alive:
            return  # the backend went away; backend_lost answers the client
        conn.send_more(frames(payload, seq))
        if not payload:  # the empty packet ends the file
            self.phase = Phase.COMMAND
            conn.tracker.infile_sent()

    # -- teardown -----------------------------------------------------------------------------

    def _fatal(self, data: bytes, reason: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
        self._close(reason)

    def kill(self, reason: str = "killed by admin") -> None:
        self._close(reason)

    def _close(self, reason: str) -> None:
        if self.phase == Phase.CLOSED:
            return
        self.phase = Phase.CLOSED
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        self.app.sessions.pop(self.id, None)
        if self.transport is not None:
            self.transport.close()
        inflight = self.inflight
        for target, conn in list(self.conns.items()):
            del self.conns[target]
            conn.lessee = None
            busy = inflight is not None and inflight.conn is conn and conn.busy
            if busy or self.status & _IN_TRANS:
                self.app.recycle(conn, busy=True)  # a running statement or transaction: close
            else:
                conn.state_owner = None
                self.app.recycle(conn)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        log.debug("client_closed client=%s reason=%s", self.id, reason)

    def _spawn(self, coro: object) -> None:
        self._task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("session_task_failed client=%s error=%r", self.id, exc, exc_info=exc)
            self._close(f"internal error: {exc!r}")

    # -- introspection ------------------------------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        return bool(self.status & _IN_TRANS)

    @property
    def multi_statements(self) -> bool:
        if self.multi_option is not None:
            return self.multi_option == 0
        return bool(self.capabilities & _MULTI_STATEMENTS)

    @property
    def autocommit(self) -> bool:
        return bool(self.status & _AUTOCOMMIT)

    @property
    def schema(self) -> str | None:
        return self.state.schema

    @property
    def link(self) -> str:
        """How the client is connected, for SHOW CLIENTS: tcp, tls, and/or compressed."""
        parts = [p for p, on in (("tls", self._tls is not None), ("compressed", self._zstream is not None)) if on]
        return "+".join(parts) or "tcp"

    def pinned_reason(self) -> str:
        return ",".join(str(getattr(p, "value", p)) for p in self.pins)


_STMT_HANDLERS = {
    int(Command.STMT_PREPARE): ClientSession._stmt_prepare,
    int(Command.STMT_EXECUTE): ClientSession._stmt_execute,
    int(Command.STMT_SEND_LONG_DATA): ClientSession._stmt_send_long_data,
    int(Command.STMT_CLOSE): ClientSession._stmt_close,
    int(Command.STMT_RESET): ClientSession._stmt_reset,
    int(Command.STMT_FETCH): ClientSession._stmt_fetch,
}


def _parse_change_user(payload: bytes, caps: int) -> dict[str, object]:
    r = PayloadReader(payload, 1)
    user = r.null_terminated().decode("utf-8", "replace")
    if caps & Capability.SECURE_CONNECTION:
        auth = r.bytes(r.int1())
    else:
        auth = r.null_terminated()
    database = r.null_terminated().decode("utf-8", "replace") if r.remaining() else ""
    charset = r.int2() if r.remaining() >= 2 else 45
    plugin = None
    if caps & Capability.PLUGIN_AUTH and r.remaining():
        plugin = r.null_terminated().decode("ascii", "replace")
    return {"user": user, "auth": auth, "database": database or None, "charset": charset, "plugin": plugin, "caps": caps}


def _as_handshake_response(fields: dict[str, object]) -> bytes:
    """COM_CHANGE_USER carries what a login carries; re-encode it so one code path checks it."""
    from .protocol.packets import encode_handshake_response

    caps = int(fields["caps"])  # type: ignore[arg-type]
    caps |= Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA | Capability.CONNECT_WITH_DB
    caps &= ~Capability.CONNECT_ATTRS
    if not fields["plugin"]:
        caps &= ~Capability.PLUGIN_AUTH
    return encode_handshake_response(
        HandshakeResponse(
            capabilities=caps,
            charset=int(fields["charset"]),  # type: ignore[arg-type]
            user=str(fields["user"]),
            auth_response=fields["auth"],  # type: ignore[arg-type]
            database=fields["database"],  # type: ignore[arg-type]
            auth_plugin=fields["plugin"],  # type: ignore[arg-type]
        )
    )
