"""One application connection: Baton acting as a MySQL server.

Life of a session (``state.ClientState``): LOGIN (greeting and authentication, driven by
``server_login.ServerLogin``), then commands one at a time, IDLE -> ACTIVE (forwarded) or
WAITING (a connection, a master, a replica catching up) -> IDLE, until CLOSED. The layers,
bottom up: ``intake`` (bytes, queue, backpressure, replies, teardown), ``execute`` (routing,
dispatch, the response sink), ``prepared`` (COM_STMT_*), ``commands`` (the command table) and
this module: login, CHANGE_USER, and what the rest of the process asks of a session.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final, cast

from .. import errors
from ..backend import BackendError, Credentials
from ..compressed import CompressedTransport
from ..net import tcp_nodelay
from ..pool import PoolKey
from ..protocol.compression import CompressedStream
from ..protocol.constants import (
    RESPONSE_SHAPING_CAPABILITIES,
    SUPPORTED_CAPABILITIES,
    Capability,
    Command,
)
from ..protocol.framing import frame
from ..protocol.handshake import Authenticated, ServerHandshake
from ..protocol.packets import HandshakeResponse, encode_err, encode_handshake_response
from ..protocol.wire import PayloadReader, ProtocolError
from ..routing.session_state import StateRestoreError
from ..server_login import Refusal, ServerLogin
from ..tls import TLSTransport
from .commands import Commands
from .context import SessionContext
from .leases import Why
from .state import COMMAND_STATES, ClientState, shown_activity

log = logging.getLogger("baton.client")

_S: Final = ClientState


class ClientSession(Commands):
    def __init__(self, ctx: SessionContext) -> None:
        super().__init__(ctx)
        self.charset = 45
        self._login: ServerLogin | None = None
        self._admitted: str | None = None  # user counted in UserLimits while the session lasts

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # a stream transport: create_server's
        self.transport = self._raw_transport = transport
        tcp_nodelay(transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        self.address = str(peer[0]) if isinstance(peer, tuple) else self.peer
        ctx = self.ctx
        limit = ctx.config.proxy.client_output_buffer_limit
        transport.set_write_buffer_limits(high=min(256 << 10, limit // 4))
        hs = self._handshake(tls_available=ctx.tls_context is not None)
        self._login = ServerLogin(hs, self, ctx.login_gate, self.address)
        if not ctx.host.accepting:
            refusal: Refusal | None = Refusal(errors.SERVER_SHUTDOWN.frame(0), "shutting down", False)
        elif self._logged_in_sessions() >= ctx.config.proxy.max_client_connections:
            refusal = Refusal(errors.TOO_MANY_CONNECTIONS.frame(0), "max_client_connections", False)
        else:
            refusal = self._login.admit()  # strangers and failed logins per address
        if refusal is not None:
            event = "client_login_throttled" if refusal.throttled else "client_refused"
            log.warning("%s peer=%s reason=%s", event, self.peer, refusal.reason)
            transport.write(refusal.error)
            transport.close()
            self.change_state(_S.CLOSED)
            return
        ctx.sessions[self.id] = self
        ctx.stats.client_connections += 1
        self._login.greet(ctx.config.proxy.handshake_timeout_ms / 1000)

    def _logged_in_sessions(self) -> int:
        """Open sessions past their login (those at the login prompt have limits of their own)."""
        return len(self.ctx.sessions) - self.ctx.login_gate.waiting

    def _handshake(
        self, tls_available: bool = False, nonce: bytes | None = None
    ) -> ServerHandshake:
        ctx = self.ctx
        compress = Capability.COMPRESS if ctx.config.proxy.compression else 0
        hs = ServerHandshake(
            server_version=ctx.server_version,
            connection_id=self.id,
            lookup=ctx.host.lookup_account,
            client_host=self.peer.rsplit(":", 1)[0],
            auth_plugin=ctx.config.proxy.auth_plugin,
            tls_available=tls_available,
            rsa_key=ctx.rsa_key,
            sha2_cache=ctx.sha2_cache,
            capabilities=int(SUPPORTED_CAPABILITIES | compress),
            require_tls=ctx.config.proxy.require_tls,
        )
        if nonce is not None:
            hs.nonce = nonce  # CHANGE_USER: the scramble of the connection's greeting
        return hs

    # -- login (server_login.LoginPort) -------------------------------------------------------

    def _login_packet(self, seq: int, payload: bytes) -> None:
        assert self._login is not None
        self._login.receive(seq, payload)

    def login_write(self, data: bytes) -> None:
        self._write(data)

    def login_start_tls(self) -> None:
        ctx = self.ctx.tls_context
        assert ctx is not None and self._raw_transport is not None
        self._tls = TLSTransport(ctx, self._raw_transport)
        self.transport = self._tls
        leftover = self.reader.take_raw()  # a ClientHello right behind the SSLRequest
        if leftover:
            self.data_received(leftover)

    def login_refused(self, user: str, reply: bytes) -> None:
        self.ctx.stats.auth_failures += 1
        log.info("login_refused client=%s user=%s peer=%s", self.id, user, self.peer)
        self._fatal(reply, "authentication failed")

    def login_timed_out(self) -> None:
        if self.client_state is _S.LOGIN:
            self._close("handshake timeout")

    def login_succeeded(self, auth: Authenticated) -> None:
        proxy = self.ctx.config.proxy
        if self.credentials is None:  # the connection's login (not a CHANGE_USER)
            if self._logged_in_sessions() > proxy.max_client_connections:
                self._fatal(errors.TOO_MANY_CONNECTIONS.frame(auth.seq), "max_client_connections")
                return
            self.reader.max_payload = proxy.max_allowed_packet
        ctx = self.ctx
        account = ctx.config.user(auth.user)
        if account is not None:
            refusal = ctx.user_limits.try_open(account)
            if refusal is not None:  # MySQL's 1226, naming the limit; other users log in
                ctx.stats.baton_errors[refusal.error.code] += 1
                log.info("login_refused client=%s user=%s: %s", self.id, auth.user, refusal.message)
                self._fatal(refusal.frame(auth.seq), refusal.message)
                return
            self._admitted = auth.user
        self.user_share = account.max_backend_connections if account is not None else 0
        self.user = auth.user
        self.capabilities = auth.capabilities
        caps = (
            auth.capabilities & int(RESPONSE_SHAPING_CAPABILITIES)
        ) | self.ctx.backend_capabilities
        self.pool_key = PoolKey(auth.user, caps, auth.charset)
        self.charset = auth.charset
        self.state.schema = auth.database
        self.credentials = Credentials(auth.user, auth.password, auth.stage1)
        if auth.capabilities & Capability.COMPRESS and self._zstream is None:
            # Everything the client sends after its login is compressed; what Baton sends is
            # from the OK on (an error before it, e.g. an unknown schema, is not).
            self._zstream = CompressedStream()
        self.change_state(_S.WAITING)  # commands queue until the login is done
        self._spawn(self._finish_login(auth.seq))

    async def _finish_login(self, seq: int) -> None:
        """Checks the default schema on a backend before saying OK, as a server would."""
        if self.state.schema:
            router = self.ctx.router
            target = router.master() or router.read_target(self.routing, None).target
            if target is not None:
                try:
                    await self._connection_for(target)
                except StateRestoreError as refused:  # (one name per type: mypyc, native.py)
                    # COM_INIT_DB on a pooled connection refused the schema: the server's
                    # own 1049/1044, as a login straight to it would get.
                    err = refused.server_err
                    reply = frame(encode_err(err), seq) if err else self._backend_error_frame(refused, seq)
                    self._fatal(reply, f"login: {refused}")
                    return
                except BackendError as exc:
                    self._fatal(self._backend_error_frame(exc, seq), f"login: {exc}")
                    return
        self._write(self._ok(seq))
        if self._zstream is not None and not isinstance(self.transport, CompressedTransport):
            self.transport = CompressedTransport(self.transport, self._zstream)
        log.debug(
            "client_logged_in client=%s user=%s peer=%s tls=%s compressed=%s",
            self.id,
            self.user,
            self.peer,
            self._tls is not None,
            self._zstream is not None,
        )
        self.inflight = None  # a CHANGE_USER is answered
        self.change_state(_S.IDLE)
        self._after_response()

    def _closing(self) -> None:
        if self._login is not None:
            self._login.stop()
        self.ctx.idle_holders.discard(self)
        self._leave_user_limits()

    def _leave_user_limits(self) -> None:
        if self._admitted is not None:
            self.ctx.user_limits.close(self._admitted)
            self._admitted = None

    # -- CHANGE_USER --------------------------------------------------------------------------

    def _change_user(self, payload: bytes) -> None:
        self._begin(Command.CHANGE_USER, payload)
        try:
            response = _change_user_response(payload, self.capabilities)
        except ProtocolError as exc:
            self._fatal(errors.MALFORMED_PACKET.frame(1, reason=exc), f"bad COM_CHANGE_USER: {exc}")
            return
        self._forget_session_state()
        self._leave_user_limits()  # the new user is counted (or refused) once it logs in
        self.state.schema = None
        nonce = self._login.hs.nonce if self._login is not None else b""
        hs = self._handshake(nonce=nonce)
        hs.expect_change_user(tls_active=self._tls is not None)
        self._login = ServerLogin(hs, self, self.ctx.login_gate, self.address)  # failures count
        self.change_state(_S.LOGIN)
        self._login.receive(0, response)

    # -- what the process asks of a session ---------------------------------------------------

    def give_back_idle(self, backend: str) -> bool:
        """Releases this session's connection to ``backend`` if it is idle and free to move."""
        conn = self.conns.get(backend)
        if (
            conn is None
            or conn.busy
            or self.queue
            or self.client_state not in COMMAND_STATES
            or not self.free_to_move
        ):
            return False
        self.leases.release(conn, Why.IDLE)
        return True

    def release_if_idle(self, idle_before: float) -> None:
        """Called periodically: a free-to-move session idle since ``idle_before`` lets go."""
        if (
            self.conns
            and self.client_state in COMMAND_STATES
            and self.last_active < idle_before
            and not self.queue
            and self.free_to_move
        ):
            self.leases.release_idle()

    def on_master_change(self, old: str | None) -> None:
        """A promotion happened: connections to the old master are of no further use, and
        a transaction or pinned state on it is gone, whether or not we still hold a
        connection there."""
        if old is None:
            return
        self.routing.backend_gone(old)
        conn = self.conns.get(old)
        if conn is None:
            return
        if self.inflight is not None and self.inflight.conn is conn:
            conn.abort("master changed")  # backend_lost decides what the client hears
            return
        self.leases.release(conn, Why.MASTER_CHANGED)

    @property
    def activity(self) -> str:
        """For SHOW CLIENTS: login, waiting, active, in-transaction or idle (shown_activity)."""
        return shown_activity(self.client_state, self.routing.in_transaction)

    @property
    def schema(self) -> str | None:
        return self.state.schema

    @property
    def link(self) -> str:
        """How the client is connected, for SHOW CLIENTS: tcp, tls, and/or compressed."""
        parts = [
            p
            for p, on in (("tls", self._tls is not None), ("compressed", self._zstream is not None))
            if on
        ]
        return "+".join(parts) or "tcp"

    def pinned_reason(self) -> str:
        return self.routing.pinned_reason()


def _change_user_response(payload: bytes, caps: int) -> bytes:
    """COM_CHANGE_USER carries what a login carries; re-encoded as a login response so one
    code path checks it."""
    r = PayloadReader(payload, 1)
    user = r.null_terminated().decode("utf-8", "replace")
    auth = r.bytes(r.int1()) if caps & Capability.SECURE_CONNECTION else r.null_terminated()
    database = r.null_terminated().decode("utf-8", "replace") if r.remaining() else ""
    charset = r.int2() if r.remaining() >= 2 else 45
    plugin = None
    if caps & Capability.PLUGIN_AUTH and r.remaining():
        plugin = r.null_terminated().decode("ascii", "replace")
    caps |= Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA | Capability.CONNECT_WITH_DB
    caps &= ~Capability.CONNECT_ATTRS
    if not plugin:
        caps &= ~Capability.PLUGIN_AUTH
    return encode_handshake_response(
        HandshakeResponse(
            capabilities=caps,
            charset=charset,
            user=user,
            auth_response=auth,
            database=database or None,
            auth_plugin=plugin,
        )
    )
