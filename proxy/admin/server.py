"""The admin port: a MySQL-protocol console (``mariadb -P6032 -uadmin -padmin``).

An ``AdminSession`` logs the operator in with the same sans-I/O ``ServerHandshake`` as client
sessions (mysql_native_password against ``[admin] user/password``, read at each login so a
reload changes it), then answers one command at a time: COM_QUERY through
``commands.execute``, plus the few other commands client programs send (PING, QUIT, INIT_DB,
SET_OPTION, FIELD_LIST, STATISTICS, RESET_CONNECTION). Anything else gets MySQL's 1047.

Commands run one after another per session, in a task, because PROMOTE and SWITCHOVER wait
for the failover module; the proxy's own sessions never wait on the admin port.

``AdminServer`` is an ``OperatorListener`` (``proxy/listener.py``), as the metrics endpoint is:
a reload that changes its address binds the new one before it commits (``proxy.listeners``).

Before login a client is a stranger: small packets only, a bounded number of strangers (in all
and per address), and an address with too many failed logins is refused before the greeting
(``proxy.throttle``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, cast

from .. import errors
from ..listener import OperatorListener
from ..protocol import auth
from ..protocol.constants import (
    NATIVE_PASSWORD,
    SUPPORTED_CAPABILITIES,
    Capability,
    Command,
    FieldType,
    ServerStatus,
)
from ..protocol.framing import PacketReader, PacketTooLarge, frame
from ..protocol.handshake import Account, Authenticated, ServerHandshake
from ..protocol.packets import (
    Column,
    OkPacket,
    encode_err,
    encode_ok,
    encode_result_set,
    encode_terminator,
)
from ..protocol.wire import ProtocolError
from ..server_login import PRE_AUTH_MAX_PACKET, LoginGate, ServerLogin
from ..throttle import LoginThrottle
from .commands import ADMIN_REFUSED, Done, Refused, Reply, execute
from .tables import Table

if TYPE_CHECKING:
    from .view import ProxyView

log = logging.getLogger("baton.admin")

# No multi-statements (one command per COM_QUERY), no LOCAL INFILE, no TLS.
ADMIN_CAPABILITIES = int(SUPPORTED_CAPABILITIES & ~(Capability.MULTI_STATEMENTS | Capability.LOCAL_FILES))
ADMIN_MAX_PACKET = 1 << 20
# Only so many strangers (and so many per address) may wait at the login prompt, so that silent
# sockets cannot lock the operator out (``server_login.LoginGate``).
MAX_UNAUTHENTICATED = 64
MAX_UNAUTHENTICATED_PER_ADDRESS = 8
LOGIN_TIMEOUT_S = 10.0
# Failed admin logins allowed per client address in a sliding window; then the address is
# refused before the greeting until its oldest failure leaves the window.
ADMIN_MAX_LOGIN_FAILURES = 5
ADMIN_LOGIN_WINDOW_S = 60.0
_STATUS = int(ServerStatus.AUTOCOMMIT)
_BINARY_CHARSET = 63


class AdminServer(OperatorListener):
    """The admin listener and its open sessions (closed with it on shutdown)."""

    def __init__(self, app: ProxyView) -> None:
        super().__init__(app, "admin", lambda: AdminSession(app, self))
        self.sessions: set[AdminSession] = set()
        self.gate = LoginGate(
            MAX_UNAUTHENTICATED,
            MAX_UNAUTHENTICATED_PER_ADDRESS,
            LoginThrottle(ADMIN_MAX_LOGIN_FAILURES, ADMIN_LOGIN_WINDOW_S),
        )

    def close(self) -> None:
        super().close()
        for session in list(self.sessions):
            session.close("admin port closed")


class AdminSession(asyncio.Protocol):
    def __init__(self, app: ProxyView, server: AdminServer) -> None:
        self.app = app
        self.server = server
        self.id = app.next_connection_id()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.address = ""  # the client host, which login throttling counts by
        self.reader = PacketReader(PRE_AUTH_MAX_PACKET)
        self._login: ServerLogin | None = None
        self.user = ""
        self.capabilities = 0
        self.logged_in = False
        self.closed = False
        self.queue: deque[bytes] = deque()
        self._worker: asyncio.Task[None] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream transport: create_server's
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        self.address = str(peer[0]) if isinstance(peer, tuple) else self.peer
        hs = ServerHandshake(
            server_version=self.app.server_version,
            connection_id=self.id,
            lookup=self._account,
            client_host=self.peer.rsplit(":", 1)[0],
            auth_plugin=NATIVE_PASSWORD,
            capabilities=ADMIN_CAPABILITIES,
        )
        self._login = ServerLogin(hs, self, self.server.gate, self.address)
        refusal = self._login.admit()
        if refusal is not None:
            event = "admin_login_throttled" if refusal.throttled else "admin_login_refused_busy"
            log.warning("%s peer=%s reason=%s", event, self.peer, refusal.reason)
            self._fatal(refusal.error, refusal.reason)
            return
        self.server.sessions.add(self)
        self._login.greet(LOGIN_TIMEOUT_S)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while not self.closed and (pkt := self.reader.next_packet()) is not None:
                seq, payload = pkt
                if not self.logged_in:
                    assert self._login is not None
                    self._login.receive(seq, payload)
                    continue
                if seq != 0 or not payload:
                    self._fatal(errors.PACKETS_OUT_OF_ORDER.frame(seq + 1), "bad command packet")
                    return
                self.queue.append(payload)
                if self._worker is None or self._worker.done():
                    self._worker = asyncio.ensure_future(self._serve())
        except PacketTooLarge:
            self._fatal(errors.PACKET_TOO_LARGE.frame(self.reader.last_seq + 1), "packet too large")
        except ProtocolError as exc:
            self._fatal(errors.MALFORMED_PACKET.frame(self.reader.last_seq + 1, reason=exc), f"malformed packet: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.close("admin client disconnected")

    # -- login --------------------------------------------------------------------------------

    def _account(self, name: str) -> Account | None:
        admin = self.app.config.admin
        if name != admin.user:
            return None
        password = admin.password.encode()
        return Account(name, auth.native_stage2(password), password)

    # server_login.LoginPort: no TLS on the admin port (the handshake never offers it).

    def login_write(self, data: bytes) -> None:
        self._write(data)

    def login_start_tls(self) -> None:
        self._fatal(b"", "TLS requested on the admin port")

    def login_refused(self, user: str, reply: bytes) -> None:
        log.warning("admin_login_refused user=%s peer=%s", user, self.peer)
        self._fatal(reply, "authentication failed")

    def login_succeeded(self, auth: Authenticated) -> None:
        self.user = auth.user
        self.capabilities = auth.capabilities
        self.logged_in = True
        self.reader.max_payload = ADMIN_MAX_PACKET
        log.info("admin_login user=%s peer=%s", auth.user, self.peer)
        self._write(frame(encode_ok(OkPacket(status=_STATUS), self.capabilities), auth.seq))

    def login_timed_out(self) -> None:
        if not self.logged_in:
            self.close("admin login timeout")

    # -- commands -----------------------------------------------------------------------------

    async def _serve(self) -> None:
        while self.queue and not self.closed:
            payload = self.queue.popleft()
            command = payload[0]
            if command == Command.QUERY:
                text = payload[1:].decode("utf-8", "replace")
                try:
                    reply = await execute(self.app, text, connection_id=self.id, user=self.user)
                except Exception as exc:  # a bug in a handler: report it, keep the session
                    log.exception("admin_command_failed command=%r", text)
                    reply = Refused(ADMIN_REFUSED.packet(reason=f"internal error: {exc!r}"))
                self._write(self.encode(reply))
            elif command == Command.QUIT:
                self.close("admin client quit")
            elif command in (Command.PING, Command.INIT_DB, Command.RESET_CONNECTION):
                self._write(self.encode(Done()))
            elif command in (Command.SET_OPTION, Command.FIELD_LIST):
                self._write(frame(encode_terminator(_STATUS, self.capabilities), 1))
            elif command == Command.STATISTICS:
                uptime = int(time.time() - self.app.started_at)
                text = f"Uptime: {uptime}  Threads: {len(self.app.sessions)}  Questions: {sum(self.app.stats.queries.values())}"
                self._write(frame(text.encode(), 1))
            else:
                self._write(errors.UNKNOWN_COMMAND.frame(1, command=command))

    def encode(self, reply: Reply) -> bytes:
        if isinstance(reply, Table):
            rows: list[tuple[object, ...]] = [tuple(r) for r in reply.rows]
            return encode_result_set(result_columns(reply), rows, self.capabilities, _STATUS)
        if isinstance(reply, Done):
            ok = OkPacket(affected_rows=reply.affected_rows, status=_STATUS, info=reply.info.encode())
            return frame(encode_ok(ok, self.capabilities), 1)
        return frame(encode_err(reply.error), 1)

    # -- teardown -----------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def _fatal(self, data: bytes, reason: str) -> None:
        self._write(data)
        self.close(reason)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self._login is not None:
            self._login.stop()
        self.server.sessions.discard(self)
        if self.transport is not None:
            self.transport.close()
        log.debug("admin_closed peer=%s reason=%s", self.peer, reason)


def result_columns(table: Table) -> list[Column]:
    """Column definitions typed by the values: integers as BIGINT, floats as DOUBLE, the rest
    as strings, so drivers hand numbers back as numbers."""
    columns = []
    for index, name in enumerate(table.columns):
        sample = next((row[index] for row in table.rows if row[index] is not None), None)
        if isinstance(sample, int) and all(isinstance(r[index], int | None) for r in table.rows):
            columns.append(Column(name, FieldType.LONGLONG, _BINARY_CHARSET, 20))
        elif isinstance(sample, float) and all(isinstance(r[index], int | float | None) for r in table.rows):
            columns.append(Column(name, FieldType.DOUBLE, _BINARY_CHARSET, 22, decimals=31))
        else:
            columns.append(Column(name))
    return columns
