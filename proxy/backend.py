"""One connection from Baton to a MariaDB/MySQL server: login, then commands.

The hot path is ``send()`` + ``data_received()``: command bytes go out in one write, and
response bytes are handed to the sink (normally the client's session) as they arrive, while a
``ResponseTracker`` reads only packet headers to see where the response ends. Baton's own
queries (``query()``) use the same path with a collecting sink.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

from mypy_extensions import mypyc_attr

from .net import tcp_nodelay, within
from .protocol.constants import SUPPORTED_CAPABILITIES, Command
from .protocol.framing import PacketReader, frame
from .protocol.handshake import ClientHandshake, Failed, Ready, Send, StartTLS
from .protocol.packets import ErrPacket, parse_column, parse_err, parse_ok, parse_text_row
from .protocol.response import AWAITING_INFILE as _AWAITING_INFILE
from .protocol.response import DONE as _RESPONSE_DONE
from .protocol.response import ResponseTracker
from .protocol.wire import PayloadReader, ProtocolError
from .tls import NO_TLS, BackendSecurity

log = logging.getLogger("baton.backend")


@mypyc_attr(allow_interpreted_subclasses=True)  # pool.PoolExhausted (pool.py is not compiled)
class BackendError(Exception):
    """A backend could not be reached, refused a login, or broke a connection."""

    def __init__(self, backend: str, reason: str, err: ErrPacket | None = None) -> None:
        super().__init__(f"{backend}: {reason}")
        self.backend = backend
        self.reason = reason
        self.err = err  # the server's own error, when it sent one


class QueryError(Exception):
    """A query Baton ran for itself got an ERR packet."""

    def __init__(self, err: ErrPacket) -> None:
        super().__init__(str(err))
        self.err = err


class ResponseSink(Protocol):
    """Where a backend connection delivers the response to a command."""

    def response_data(self, data: bytes | memoryview) -> None: ...
    def response_infile(self, conn: BackendConnection) -> None: ...
    def response_done(self, conn: BackendConnection) -> None: ...
    def backend_lost(self, conn: BackendConnection, reason: str) -> None: ...
    def upload_paused(self, paused: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class Credentials:
    user: str
    password: bytes | None = field(repr=False)
    stage1: bytes | None = field(repr=False)  # SHA1(password): enough for mysql_native_password


@dataclass(slots=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[bytes | None, ...]]
    status: int
    affected_rows: int = 0
    state_oks: list[bytes] | None = None

    def dicts(self) -> list[dict[str, str | None]]:
        return [
            {c: (v.decode("utf-8", "replace") if v is not None else None) for c, v in zip(self.columns, row, strict=False)}
            for row in self.rows
        ]


class _Collector:
    """A sink that keeps the whole response, for Baton's own queries."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[None] = loop.create_future()

    def response_data(self, data: bytes | memoryview) -> None:
        pass

    def response_infile(self, conn: BackendConnection) -> None:
        conn.abort("LOCAL INFILE requested by an internal query")

    def response_done(self, conn: BackendConnection) -> None:
        if not self.future.done():
            self.future.set_result(None)

    def backend_lost(self, conn: BackendConnection, reason: str) -> None:
        if not self.future.done():
            self.future.set_exception(BackendError(conn.backend, reason))

    def upload_paused(self, paused: bool) -> None:
        pass


class _Pipeline(_Collector):
    """Collects the responses to several commands written at once, one after the other:
    each finished response re-arms the connection for the next (``data_received`` goes on
    with the bytes that follow)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, commands: list[int]) -> None:
        super().__init__(loop)
        self._next = commands[1:]
        self.errors: list[ErrPacket | None] = []

    def response_done(self, conn: BackendConnection) -> None:
        self.errors.append(conn.tracker.error)
        if self._next:
            conn.expect(self._next.pop(0), self)
        else:
            super().response_done(conn)


class BackendConnection(asyncio.Protocol):
    """A logged-in connection to one backend. Created by ``connect()``."""

    def __init__(self, backend: str, loop: asyncio.AbstractEventLoop) -> None:
        self.backend = backend
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.alive = False
        self.capabilities = 0
        self.server_version = ""
        self.thread_id = 0
        self.status = 0
        self.tracker = ResponseTracker(0)
        self.sink: ResponseSink | None = None
        self.created_at = time.monotonic()
        # When it went idle in the pool (set by ``Pool.release``): the idle reaper and the
        # eviction at the cap read it of pooled connections only, so the hot path, where a
        # session holds the connection, leaves it alone.
        self.last_used = self.created_at
        self.generation = 0  # the pool's generation when this connection was made
        self.pool_key: object = None
        self.user = ""
        self.schema: str | None = None  # the connection's current default database
        # The last session's state is still on it (pooled without a reset): the next session's
        # restore sends COM_RESET_CONNECTION first, and the schema again (the reset keeps the
        # database but sets character_set_database back to the server's).
        self.reset_pending = False
        # COM_SET_OPTION sent on this connection (0 multi-statements on, 1 off), None if never:
        # COM_RESET_CONNECTION does not undo it, so such a connection is never pooled.
        self.multi_option: int | None = None
        # Which session's state this connection holds, and which version of it (session layer).
        self.state_owner: object = None
        self.state_version = -1
        self.lessee: ResponseSink | None = None  # the session holding this connection, if any
        self._login_packets: asyncio.Queue[tuple[int, bytes] | None] | None = asyncio.Queue()
        self._login_reader: PacketReader | None = PacketReader()
        self._lost_reason = ""
        self._paused = False

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        tcp_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is not None:
            tracker = self.tracker
            used = tracker.feed(data)
            if used == len(data):
                sink.response_data(data)
            else:
                if used:
                    sink.response_data(memoryview(data)[:used])
                if tracker.state == _RESPONSE_DONE:
                    self.sink = None
                    sink.response_done(self)
                    # (busy, not self.sink: the type checker, and mypyc with it, would take
                    # self.sink for the None assigned above, though response_done may re-arm it)
                    if self.busy:  # the next pipelined command's response
                        self.data_received(data[used:])
                    else:  # bytes beyond the end of a response: the server broke protocol
                        self.abort("unexpected bytes after the end of a response")
                    return
            state = tracker.state
            if state == _RESPONSE_DONE:
                self.sink = None
                sink.response_done(self)
            elif state == _AWAITING_INFILE:
                sink.response_infile(self)
            return
        if self._login_reader is not None:
            self._login_reader.feed(data)
            try:
                while (pkt := self._login_reader.next_packet()) is not None:
                    assert self._login_packets is not None
                    self._login_packets.put_nowait(pkt)
            except ProtocolError as exc:
                self.abort(f"bad packet during login: {exc}")
            return
        # Unsolicited bytes on an idle connection: usually ERR (seq 0) "server shutdown" or
        # "connection killed". The connection is unusable either way.
        reason = "unsolicited data from server"
        if len(data) > 4 and data[4] == 0xFF:
            try:
                reason = f"server sent error while idle: {parse_err(data[4:])}"
            except ProtocolError:
                pass
        self.abort(reason)

    def connection_lost(self, exc: Exception | None) -> None:
        was_alive = self.alive
        self.alive = False
        reason = self._lost_reason or (str(exc) if exc else "connection closed by server")
        self._lost_reason = reason
        if self._login_packets is not None:
            self._login_packets.put_nowait(None)
        sink = self.sink
        self.sink = None
        if sink is not None:
            sink.backend_lost(self, reason)
        elif self.lessee is not None and was_alive:
            self.lessee.backend_lost(self, reason)  # idle, but a session holds it: tell it
        elif was_alive:
            log.debug("backend connection closed backend=%s thread=%s reason=%s", self.backend, self.thread_id, reason)

    def pause_writing(self) -> None:
        """The server is slow to take what a client sends (a LOCAL INFILE upload, a big
        packet): the session holding it stops reading its client until it drains."""
        if self.lessee is not None:
            self.lessee.upload_paused(True)

    def resume_writing(self) -> None:
        if self.lessee is not None:
            self.lessee.upload_paused(False)

    # -- login --------------------------------------------------------------------------------

    async def _login(self, hs: ClientHandshake, security: BackendSecurity) -> None:
        assert self._login_packets is not None
        while True:
            pkt = await self._login_packets.get()
            if pkt is None:
                raise BackendError(self.backend, self._lost_reason or "connection closed during login")
            seq, payload = pkt
            for action in hs.receive(seq, payload):
                if isinstance(action, Send):
                    assert self.transport is not None
                    self.transport.write(action.data)
                elif isinstance(action, StartTLS):
                    assert security.tls is not None and self.transport is not None
                    self.transport = await self.loop.start_tls(
                        self.transport, self, security.tls, server_hostname=security.server_name
                    )
                elif isinstance(action, Ready):
                    self.capabilities = action.capabilities
                    self.server_version = action.handshake.server_version
                    self.thread_id = action.handshake.connection_id
                    self.status = action.status
                    self.tracker = ResponseTracker(action.capabilities)
                    self.tracker.status = action.status
                    self._login_packets = None
                    self._login_reader = None
                    self.alive = True
                    return
                elif isinstance(action, Failed):
                    raise BackendError(self.backend, f"login refused: {action.error}", action.error)

    # -- commands -----------------------------------------------------------------------------

    def send(self, buffers: Sequence[bytes | memoryview], command: int, sink: ResponseSink, collect: bool = False) -> bool:
        """Writes a command; the response goes to ``sink``. False if no response will come."""
        assert self.transport is not None
        tracker = self.tracker
        tracker.start(command, collect)
        if tracker.state != _RESPONSE_DONE:  # a response is expected (expects_response)
            self.sink = sink
        self._write(buffers)
        return self.sink is not None

    def send_more(self, buffers: Sequence[bytes | memoryview]) -> None:
        """More bytes of the current command (LOCAL INFILE data)."""
        self._write(buffers)

    def _write(self, buffers: Sequence[bytes | memoryview]) -> None:
        """One buffer (a small command, see ``frames``) takes the transport's direct write;
        several (a large one, as views) take ``writelines``."""
        assert self.transport is not None
        if len(buffers) == 1:
            self.transport.write(buffers[0])
        else:
            self.transport.writelines(buffers)

    async def query(self, sql: str | bytes, timeout: float | None = None) -> QueryResult:
        """Runs a statement for Baton itself and returns its (last) result."""
        if isinstance(sql, str):
            sql = sql.encode("utf-8", "surrogateescape")
        collector = _Collector(self.loop)
        self.send([frame(b"\x03" + sql, 0)], Command.QUERY, collector, collect=True)
        await self._collected(collector, timeout, "query")
        tracker = self.tracker
        if tracker.error is not None:
            raise QueryError(tracker.error)
        return _result_from_packets(tracker.packets, self.capabilities, tracker.status, tracker.state_oks)

    async def command(self, command: int, body: bytes = b"", timeout: float | None = None) -> ResponseTracker:
        """Runs a simple command (PING, INIT_DB, RESET_CONNECTION, STMT_PREPARE...) for Baton."""
        collector = _Collector(self.loop)
        if self.send([frame(bytes((command,)) + body, 0)], command, collector, collect=True):
            await self._collected(collector, timeout, "command")
        return self.tracker

    async def pipeline(self, commands: Sequence[tuple[int, bytes]], timeout: float) -> list[ErrPacket | None]:
        """Runs Baton's own commands written at once, for one round trip instead of one each
        (reset + schema at release, schema + SETs before a session's statement); the server
        answers them in order. Each command's error, or None; a BackendError if the
        connection fails or the answers take longer than ``timeout``."""
        assert commands
        pipeline = _Pipeline(self.loop, [command for command, _ in commands])
        buffers = [frame(bytes((command,)) + body, 0) for command, body in commands]
        self.send(buffers, commands[0][0], pipeline, collect=True)
        await self._collected(pipeline, timeout, "commands")
        return pipeline.errors

    async def _collected(self, collector: _Collector, timeout: float | None, what: str) -> None:
        """Waits for Baton's own command(s) to be answered; past ``timeout`` the connection
        is dropped (its answers would come later, out of turn)."""
        if timeout is None:
            await collector.future
            return
        try:
            await within(collector.future, timeout)
        except TimeoutError:
            self.abort(f"internal {what} timed out")
            raise BackendError(self.backend, f"{what} timed out after {timeout}s") from None

    def expect(self, command: int, sink: ResponseSink) -> None:
        """The response to ``command``, already written, goes to ``sink`` (collected)."""
        self.tracker.start(command, True)
        self.sink = sink

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    @property
    def busy(self) -> bool:
        return self.sink is not None

    def abort(self, reason: str) -> None:
        """Drops the connection at once; the sink (if any) hears ``backend_lost``."""
        self._lost_reason = self._lost_reason or reason
        self.alive = False
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Polite close: COM_QUIT, so the server does not count an aborted connection."""
        if self.transport is not None and not self.transport.is_closing():
            if self.alive and self.sink is None:
                self.transport.write(frame(b"\x01", 0))
            self.alive = False
            self._lost_reason = "closed by Baton"
            self.transport.close()


def _result_from_packets(packets: list[bytes], caps: int, status: int, state_oks: list[bytes]) -> QueryResult:
    """Turns a collected text response into columns and rows (the last result set wins)."""
    result = QueryResult([], [], status, 0, state_oks)
    i = 0
    n = len(packets)
    while i < n:
        pkt = packets[i]
        first = pkt[0]
        if first == 0x00:
            ok = parse_ok(pkt, caps)
            result.affected_rows = ok.affected_rows
            i += 1
            continue
        if first == 0xFF:
            i += 1
            continue
        count = PayloadReader(pkt).lenenc_int() or 0
        cols = [parse_column(p).name for p in packets[i + 1 : i + 1 + count]]
        i += 1 + count
        if i < n and packets[i][0] == 0xFE and len(packets[i]) < 9 and not caps & (1 << 24):
            i += 1  # EOF after column definitions
        rows = []
        while i < n:
            p = packets[i]
            if (p[0] == 0xFE and len(p) < 0xFFFFFF) or p[0] == 0xFF:
                i += 1
                break
            rows.append(parse_text_row(p, count))
            i += 1
        result.columns = cols
        result.rows = rows
    return result


async def connect(
    backend: str,
    host: str,
    port: int,
    credentials: Credentials,
    *,
    timeout: float,
    capabilities: int = int(SUPPORTED_CAPABILITIES),
    database: str | None = None,
    charset: int = 45,
    security: BackendSecurity = NO_TLS,
    attributes: dict[str, str] | None = None,
) -> BackendConnection:
    """Opens and logs in a backend connection, or raises BackendError within ``timeout``.

    ``security`` says whether to use TLS and how far to trust the server: a certificate that
    does not verify ends the login before anything about the user is sent.
    """
    loop = asyncio.get_running_loop()
    conn = BackendConnection(backend, loop)
    hs = ClientHandshake(
        user=credentials.user,
        password=credentials.password,
        stage1=credentials.stage1,
        database=database,
        capabilities=capabilities,
        charset=charset,
        attributes=attributes or {"_client_name": "baton", "program_name": "baton"},
        use_tls=security.tls is not None,
        tls_verified=security.verified,
        server_public_key=security.server_public_key,
        get_server_public_key=security.get_server_public_key,
    )

    async def _open() -> None:
        await loop.create_connection(lambda: conn, host, port)
        await conn._login(hs, security)

    try:
        await asyncio.wait_for(_open(), timeout)
    except TimeoutError:
        conn.abort("connect timeout")
        raise BackendError(backend, f"connect/login timed out after {int(timeout * 1000)} ms") from None
    # One name per exception type: mypyc (proxy/native.py) gives a name a single type.
    except ssl.SSLCertVerificationError as untrusted:
        conn.abort("server certificate refused")
        raise BackendError(
            backend, f"TLS: server certificate not trusted ({untrusted.verify_message}); login not sent"
        ) from None
    except ssl.SSLError as tls_error:
        conn.abort("TLS handshake failed")
        raise BackendError(backend, f"TLS handshake failed: {tls_error.reason or tls_error}") from None
    except OSError as os_error:
        conn.abort(str(os_error))
        raise BackendError(backend, os_error.strerror or str(os_error)) from None
    except ProtocolError as protocol_error:
        conn.abort(str(protocol_error))
        raise BackendError(backend, f"protocol error during login: {protocol_error}") from None
    except BackendError:
        conn.abort("login failed")
        raise
    conn.user = credentials.user
    conn.schema = database
    return conn


async def await_login(
    backend: str,
    login: asyncio.Future[BackendConnection],
    abandoned: Callable[[asyncio.Future[BackendConnection]], None],
    wait_s: float | None = None,
) -> BackendConnection:
    """Wait for a login (a task running ``connect``) without ever cutting it short.

    Dropping a socket mid-handshake counts as an aborted connect on the server, and, repeated,
    trips max_connect_errors into blocking Baton's host. So when the waiter gives up (it is
    cancelled, or ``wait_s`` passes) the login goes on, bounded by its own timeout, and
    ``abandoned(login)`` is called once it is done: the caller's place to pool the connection
    or quit it with COM_QUIT.
    """
    try:
        done, _ = await asyncio.wait({login}, timeout=wait_s)
    except asyncio.CancelledError:
        login.add_done_callback(abandoned)
        raise
    if not done:
        login.add_done_callback(abandoned)
        raise BackendError(backend, f"connect/login timed out after {int((wait_s or 0) * 1000)} ms")
    return login.result()

