"""Bytes in and out of one client connection: TLS, compression, framing, the command queue,
backpressure, the session's state machine, Baton's own replies and teardown.

What each command does is decided further up (``execute``, ``prepared``, ``commands``); this
layer only knows that packets from the client are commands once logged in, that one command
is served at a time (the rest queue, and past ``[proxy] max_queued_commands`` or
``max_queued_bytes`` the socket is not read), and that when the client's socket buffer fills
(``pause_writing``) reading from its backends and from the client pauses, so a huge result set
streams at the client's pace and a client that does not read its replies (pipelined PINGs)
cannot make Baton buffer them. Past ``client_output_buffer_limit`` unread bytes, or after
``client_write_timeout_s`` without reading, the client is cut.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

from .. import errors
from ..backend import BackendError
from ..compressed import CompressedTransport
from ..pool import PoolExhausted, UserShareExhausted
from ..protocol.compression import CompressedStream
from ..protocol.constants import ServerStatus
from ..protocol.framing import PacketReader, PacketTooLarge, frame
from ..protocol.packets import OkPacket, encode_err, encode_ok
from ..protocol.wire import ProtocolError
from ..routing.session_routing import SessionRouting
from ..routing.session_state import SessionState, StateRestoreError
from ..routing.statements import SessionStatements
from ..server_login import PRE_AUTH_MAX_PACKET
from ..tls import TLSTransport
from .leases import Why
from .state import COMMAND_STATES, ClientState, Inflight, next_state

if TYPE_CHECKING:
    from ..backend import BackendConnection
    from .context import SessionContext
    from .leases import Leases

log = logging.getLogger("baton.client")

_IN_TRANS: Final = int(ServerStatus.IN_TRANS)
# Status flags that describe the session; the rest (cursor, last row, more results, state
# changed) describe one response and must not leak into OK packets Baton builds itself.
_REPLY_STATUS: Final = int(
    ServerStatus.IN_TRANS
    | ServerStatus.AUTOCOMMIT
    | ServerStatus.IN_TRANS_READONLY
    | ServerStatus.NO_BACKSLASH_ESCAPES
)
# Bytes inflated from a compressed client per pass; the rest waits until they are served.
_INFLATE_BUDGET: Final = 4 << 20
# Packets taken from one client's buffer in one go (pipelined PINGs are answered without a
# backend, so without this a flood would hold the event loop).
_PACKETS_PER_PASS: Final = 512

_LOGIN: Final = ClientState.LOGIN
_IDLE: Final = ClientState.IDLE
_INFILE: Final = ClientState.INFILE
_CLOSED: Final = ClientState.CLOSED

ClientTransport = asyncio.Transport | TLSTransport | CompressedTransport


class ClientIntake(asyncio.Protocol):
    """The transport side of a client session (``ClientSession`` is the whole of it)."""

    leases: Leases  # set by the layer that receives responses (execute.Execution)
    give_back_idle: Callable[[str], bool]  # client.ClientSession's (IdleHolders asks it)

    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self.id = ctx.host.next_connection_id()
        self.transport: ClientTransport | None = None
        self._raw_transport: asyncio.Transport | None = None
        self._tls: TLSTransport | None = None
        self._zstream: CompressedStream | None = None  # the client asked for compression
        self.peer = ""
        self.address = ""  # the client host, which login limits count by
        self.client_state = _LOGIN
        # Strangers send small packets; the login raises this to max_allowed_packet.
        self.reader = PacketReader(PRE_AUTH_MAX_PACKET)
        self.user = ""
        self.capabilities = 0
        self.state = SessionState()  # what the session SET: replayed on each connection
        self.routing = SessionRouting()  # what the router reads
        self.stmts = SessionStatements()
        self.queue: deque[tuple[int, bytes]] = deque()
        self.queued_bytes = 0  # payload bytes in ``queue``
        self._draining = False  # _drain is taking packets out of the reader
        self._output_paused = False  # the client's unread replies passed the high-water mark
        self._intake_paused = False  # Baton stopped reading the client's socket
        self._upload_paused = False  # the backend is slow to take what the client sends
        self._write_timer: asyncio.TimerHandle | None = None
        self._ending = ""  # why the session ends once its current command is answered
        self.inflight: Inflight | None = None
        self.connected_at = time.time()
        self.last_active = time.monotonic()
        self.queries = 0
        self._task: asyncio.Task[None] | None = None

    # -- the state machine --------------------------------------------------------------------

    def change_state(self, new: ClientState) -> None:
        """The only way a session's state changes; an impossible move raises."""
        self.client_state = next_state(self.client_state, new)

    # -- asyncio.Protocol: bytes in -----------------------------------------------------------

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
        """Compressed bytes in: inflate a budget's worth and serve it; more when there is room.

        While whole compressed packets wait (the budget ran out), the socket is not read:
        the client's own commands pace how much of its zlib Baton expands.
        """
        zstream = self._zstream
        if zstream is None or self.client_state is _CLOSED:
            return
        try:
            stream = zstream.unwrap(data, _INFLATE_BUDGET)
        except ProtocolError as exc:
            self._fatal(
                errors.MALFORMED_PACKET.frame(self.reader.last_seq + 1, reason=exc),
                f"malformed compressed packet: {exc}",
            )
            return
        if zstream.backlog:
            self._pause_intake()
        if stream:
            self._stream_received(stream)  # its drain asks for more when there is room
        elif not zstream.backlog and self._room():
            self._unpause_intake()  # a partial compressed packet needs the rest

    def _stream_received(self, data: bytes) -> None:
        """The plain packet stream (after TLS and compression, where the client uses them)."""
        self.last_active = time.monotonic()
        if self.client_state is _IDLE and not self.queue and not self._output_paused:
            pkt = self.reader.take_whole(data)
            if pkt is not None:  # the usual case: one whole command, nothing queued
                self._serve(pkt[0], pkt[1])
                self._resume_intake()  # as _next does once the queue is empty
                return
        self.reader.feed(data)
        self._pump()

    def _pump(self) -> None:
        """Takes whole packets out of the reader while there is room for them."""
        try:
            self._drain()
        except PacketTooLarge:
            self._fatal(errors.PACKET_TOO_LARGE.frame(self.reader.last_seq + 1), "packet too large")
        except ProtocolError as exc:
            self._fatal(
                errors.MALFORMED_PACKET.frame(self.reader.last_seq + 1, reason=exc),
                f"malformed packet: {exc}",
            )

    def _drain(self) -> None:
        reader = self.reader
        queue = self.queue
        budget = _PACKETS_PER_PASS
        self._draining = True
        try:
            while (state := self.client_state) is not _CLOSED:
                budget -= 1
                if not budget:  # a flood of small commands: let other sessions run, then go on
                    self._pause_intake()
                    asyncio.get_running_loop().call_soon(self._resume_intake)
                    return
                if state is not _LOGIN and not self._room():
                    # Full (or the client does not read its replies, or the backend does not
                    # take its upload): the rest stays in the reader and the socket is not
                    # read until there is room.
                    self._pause_intake()
                    return
                pkt = reader.next_packet()
                if pkt is None:
                    break
                seq, payload = pkt
                if state in COMMAND_STATES:
                    queue.append(pkt)
                    self.queued_bytes += len(payload)
                    if state is _IDLE:
                        self._next()
                elif state is _INFILE:
                    self._infile_packet(seq, payload)
                elif state is _LOGIN:
                    self._login_packet(seq, payload)
        finally:
            self._draining = False
        if self.client_state is not _CLOSED and self._room():
            self._read_more()

    def _room(self) -> bool:
        """May more of the client's packets be taken in? Not while its replies pile up or its
        backend does not take its upload, nor past [proxy] max_queued_commands /
        max_queued_bytes waiting behind the current command."""
        limits = self.ctx.config.proxy
        return (
            not self._output_paused
            and not self._upload_paused
            and len(self.queue) < limits.max_queued_commands
            and self.queued_bytes < limits.max_queued_bytes
        )

    def _read_more(self) -> None:
        """Take the client's next bytes: inflate what waits, else read the socket."""
        if self._zstream is not None and self._zstream.backlog:
            asyncio.get_running_loop().call_soon(self._inflate)
        else:
            self._unpause_intake()

    def _pause_intake(self) -> None:
        """Stops reading the client's socket, until ``_unpause_intake``."""
        raw = self._raw_transport
        if raw is not None:
            self._intake_paused = True
            raw.pause_reading()

    def _unpause_intake(self) -> None:
        raw = self._raw_transport
        if raw is not None and self._intake_paused:
            self._intake_paused = False
            raw.resume_reading()

    def _next(self) -> None:
        """Serves queued commands until one has to wait (``commands.Commands``)."""
        raise NotImplementedError

    def _serve(self, seq: int, payload: bytes) -> None:
        """Starts one command, the session being idle (``commands.Commands``)."""
        raise NotImplementedError

    def _login_packet(self, seq: int, payload: bytes) -> None:
        """A packet of the login exchange (``client.ClientSession``)."""
        raise NotImplementedError

    def _infile_packet(self, seq: int, payload: bytes) -> None:
        """A packet of a LOCAL INFILE upload (``execute.Execution``)."""
        raise NotImplementedError

    # -- asyncio.Protocol: the client's side of flow control ----------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        self._close("client disconnected" if exc is None else f"client connection lost: {exc}")

    def pause_writing(self) -> None:
        """The client's output buffer passed its high-water mark: stop producing replies
        (backends are not read, the client's next commands are not served or read) until it
        drains. A client that reads nothing for [proxy] client_write_timeout_s is cut."""
        self._output_paused = True
        self.leases.pause_reading()
        self._pause_intake()
        loop = asyncio.get_running_loop()
        timeout = self.ctx.config.proxy.client_write_timeout_s
        self._write_timer = loop.call_later(timeout, self._write_stalled)
        loop.call_soon(self._output_overflowed)  # the write that paused may be past the limit

    def resume_writing(self) -> None:
        self._output_paused = False
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self.leases.resume_reading()
        if self.client_state is _IDLE:
            self._next()  # serves what queued, then reads on
        else:
            self._resume_intake()

    def _write_stalled(self) -> None:
        self._write_timer = None
        timeout = self.ctx.config.proxy.client_write_timeout_s
        log.warning("client_output_stalled client=%s peer=%s timeout_s=%s", self.id, self.peer, timeout)
        self._close(f"client read nothing for {timeout} s")

    def _output_overflowed(self) -> bool:
        """True (and the session is cut) if the client's unread replies passed the hard limit,
        [proxy] client_output_buffer_limit. Only asked while output is paused."""
        raw = self._raw_transport
        limit = self.ctx.config.proxy.client_output_buffer_limit
        if raw is None or self.client_state is _CLOSED or raw.get_write_buffer_size() <= limit:
            return False
        log.warning("client_output_overflow client=%s peer=%s limit=%s", self.id, self.peer, limit)
        self._close(f"unread replies passed client_output_buffer_limit ({limit} bytes)")
        return True

    def _resume_intake(self) -> None:
        """Room again (the queue was served, replies drained, an upload's backend caught
        up): take the packets the reader kept back, then read (or inflate) more. Nothing while
        a drain loop is taking them, or while there is no room."""
        if not self._intake_paused and not self.reader.buffered():
            return  # the usual case, after every statement: the socket is read, nothing waits
        if (
            self._raw_transport is None
            or self.client_state is _CLOSED
            or self._draining
            or not self._room()
        ):
            return
        if self.reader.buffered():
            self._pump()
        else:
            self._read_more()

    # -- pooling between statements -----------------------------------------------------------

    @property
    def free_to_move(self) -> bool:
        """No state that lives on one connection: the session's connections may be pooled."""
        routing = self.routing
        return (
            routing.free_to_move_between_statements
            and not routing.pin_next
            and self.client_state is _IDLE
            and self.inflight is None
            and not self.stmts.cursor_open
        )

    def _after_response(self) -> None:
        """Gives connections back at once when others wait for them (the janitor gives back
        those of sessions idle for a while, see ``release_if_idle``), then serves the queue."""
        self._upload_paused = False  # whatever the backend still drains, the upload is over
        if self._ending:
            self._close(self._ending)
            return
        conns = self.leases.conns
        if conns and self.ctx.pools.waiters.n and self.free_to_move:
            self.leases.release_wanted()
        if conns:  # (what release_wanted left)
            self.ctx.idle_holders.add(self, conns)
        self._next()

    # -- Baton's own replies ------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        if self._output_paused and self._output_overflowed():
            return
        self.transport.write(data)

    def _ok(self, seq: int, info: bytes = b"") -> bytes:
        """An OK packet as the server would send it now."""
        ok = OkPacket(status=self.routing.status & _REPLY_STATUS, info=info)
        return frame(encode_ok(ok, self.capabilities), seq)

    def _finish_with(self, data: bytes) -> None:
        """Ends the current command with Baton's own reply."""
        if self.client_state is _CLOSED:
            return
        self.inflight = None
        if self.client_state is not _IDLE:
            self.change_state(_IDLE)
        self._write(data)
        self._after_response()

    def finish_with_error(self, code: errors.ErrorCode, **params: object) -> None:
        self.ctx.stats.baton_errors[code.code] += 1
        self._finish_with(code.frame(1, **params))

    def _backend_error_frame(self, exc: BackendError, seq: int) -> bytes:
        if exc.err is not None:  # the server's own answer (e.g. 1049 unknown database)
            return frame(encode_err(exc.err), seq)
        baton_errors = self.ctx.stats.baton_errors
        if isinstance(exc, StateRestoreError):
            code = errors.SESSION_STATE_UNRESTORABLE
            baton_errors[code.code] += 1
            return code.frame(seq, backend=exc.backend, reason=exc.reason)
        if isinstance(exc, UserShareExhausted):
            code = errors.USER_POOL_EXHAUSTED
            baton_errors[code.code] += 1
            return code.frame(
                seq, user=exc.user, limit=exc.limit, backend=exc.backend,
                timeout_ms=int(exc.timeout * 1000),
            )
        if isinstance(exc, PoolExhausted):
            code = errors.POOL_EXHAUSTED
            baton_errors[code.code] += 1
            return code.frame(
                seq, backend=exc.backend, timeout_ms=int(exc.timeout * 1000), limit=exc.limit
            )
        baton_errors[errors.BACKEND_UNREACHABLE.code] += 1
        return errors.BACKEND_UNREACHABLE.frame(seq, backend=exc.backend, reason=exc.reason)

    # -- tasks and teardown -------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._task = asyncio.ensure_future(coro)
        self._task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("session_task_failed client=%s error=%r", self.id, exc, exc_info=exc)
            self._close(f"internal error: {exc!r}")

    def _fatal(self, data: bytes, reason: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
        self._close(reason)

    def kill(self, reason: str = "killed by admin") -> None:
        self._close(reason)

    def end_after_statement(self, reason: str) -> None:
        """Ends the session once its current command is answered (now, if it has none)."""
        log.info("client_ending client=%s user=%s reason=%s", self.id, self.user, reason)
        self._ending = reason
        if self.client_state is _IDLE:
            self._close(reason)

    def _close(self, reason: str) -> None:
        if self.client_state is _CLOSED:
            return
        self.change_state(_CLOSED)
        self._closing()
        self.ctx.sessions.pop(self.id, None)
        if self.transport is not None:
            self.transport.close()
        inflight = self.inflight
        in_trx = self.routing.status & _IN_TRANS
        for conn in list(self.leases.conns.values()):
            busy = inflight is not None and inflight.conn is conn and conn.busy
            self.leases.release(conn, Why.BUSY if busy or in_trx else Why.ENDED)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._write_timer is not None:
            self._write_timer.cancel()
        log.debug("client_closed client=%s reason=%s", self.id, reason)

    def _closing(self) -> None:
        """Hook: the session is closing (the login layer stops its timer)."""

    # -- introspection ------------------------------------------------------------------------

    def running_connection(self) -> BackendConnection | None:
        """The connection the current command runs on, if any (KILL QUERY stops it)."""
        return self.inflight.conn if self.inflight is not None else None

    @property
    def in_transaction(self) -> bool:
        return self.routing.in_transaction
