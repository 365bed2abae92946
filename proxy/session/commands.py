"""The command table: what Baton does with each command a logged-in client sends, and the
commands Baton answers itself (PING, QUIT, RESET_CONNECTION, KILL, ``SET
@baton_consistency``) without a backend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from .. import errors
from ..protocol.constants import Capability, Command
from ..protocol.wire import ProtocolError
from ..routing.classifier import Classification, classify
from .leases import Why
from .prepared import PreparedCommands
from .state import ClientState

log = logging.getLogger("baton.client")

_QUERY: Final = int(Command.QUERY)
_MULTI_STATEMENTS: Final = int(Capability.MULTI_STATEMENTS)

# Commands a client may send once logged in that go to a backend as they are.
_FORWARDED: Final = frozenset(
    {
        Command.INIT_DB,
        Command.FIELD_LIST,
        Command.STATISTICS,
        Command.SET_OPTION,
        Command.PROCESS_INFO,
        Command.REFRESH,
        Command.DEBUG,
        Command.CREATE_DB,
        Command.DROP_DB,
        Command.SHUTDOWN,
    }
)


class Commands(PreparedCommands):
    """Serves the queue one command at a time, through ``_HANDLERS``."""

    def _next(self) -> None:
        """Serves queued commands until one has to wait for a backend."""
        queue = self.queue
        while queue and self.client_state is _IDLE and not self._output_paused:
            seq, payload = queue.popleft()
            self.queued_bytes -= len(payload)
            self._serve(seq, payload)
        if not queue:
            self._resume_intake()

    def _serve(self, seq: int, payload: bytes) -> None:
        """Starts one command (the session is idle). Straight from intake when it came alone
        with nothing queued, the usual case: no trip through the queue."""
        if seq != 0:
            self._fatal(
                errors.PACKETS_OUT_OF_ORDER.frame(seq + 1), f"command with sequence id {seq}"
            )
            return
        if not payload:
            self._fatal(
                errors.MALFORMED_PACKET.frame(1, reason="empty command packet"), "empty command"
            )
            return
        self.queries += 1
        command = payload[0]
        try:
            if command == _QUERY:
                self._query(payload)
            else:
                _HANDLERS.get(command, Commands._unknown)(self, payload)
        except ProtocolError as exc:
            self._finish_with(errors.MALFORMED_PACKET.frame(1, reason=exc))

    def _query(self, payload: bytes) -> None:
        inflight = self._begin(_QUERY, payload)
        cls = inflight.cls = classify(payload[1:], self.multi_statements)
        kill = cls.kill
        if kill is not None:
            if kill.unsupported:
                self.finish_with_error(errors.KILL_UNSUPPORTED, what=kill.unsupported)
            else:
                self._spawn_kill(kill.target, query_only=kill.query_only)
            return
        self._route(inflight)

    def _forwarded(self, payload: bytes) -> None:
        self._route(self._begin(payload[0], payload))

    def _unknown(self, payload: bytes) -> None:
        self._write(errors.UNKNOWN_COMMAND.frame(1, command=payload[0]))

    # -- Baton's own answers ------------------------------------------------------------------

    def _ping(self, payload: bytes) -> None:
        self._write(self._ok(1))

    def _quit(self, payload: bytes) -> None:
        self._close("client quit")

    def _process_kill(self, payload: bytes) -> None:
        self._begin(payload[0], payload)
        target = int.from_bytes(payload[1:5], "little") if len(payload) >= 5 else 0
        self._spawn_kill(target, query_only=False)

    def _spawn_kill(self, client_id: int, query_only: bool) -> None:
        self.change_state(_WAITING)
        self._spawn(self._kill(client_id, query_only))

    async def _kill(self, client_id: int, query_only: bool) -> None:
        """KILL [QUERY|CONNECTION] <id>, where id is a Baton connection id (the one clients get
        in the greeting). Never forwarded as is: on a backend that id names another thread."""
        target = self.ctx.sessions.get(client_id)
        if target is None:
            done = await self.ctx.host.kill_elsewhere(client_id, self.user, query_only)
            if done is None:
                self._finish_with(errors.UNKNOWN_THREAD.frame(1, id=client_id))
            elif not done:
                self._finish_with(errors.NOT_OWNER.frame(1, id=client_id))
            else:
                self._finish_with(self._ok(1))
            return
        if target.user != self.user:
            self._finish_with(errors.NOT_OWNER.frame(1, id=client_id))
            return
        running = target.running_connection()
        if running is not None and running.busy:
            try:  # stop the statement on its server, not just Baton's side of it
                await self.ctx.host.kill_query(running.backend, running.thread_id)
            except Exception as exc:  # noqa: BLE001 - the kill is best effort; say so in the log
                log.warning(
                    "kill_query_failed client=%s backend=%s error=%r",
                    client_id,
                    running.backend,
                    exc,
                )
        if not query_only:
            target.kill(f"KILL from client {self.id}")
        if target is self and not query_only:
            return
        self._finish_with(self._ok(1))

    def _route_local(self, cls: Classification) -> None:
        """``SET @baton_consistency = ...`` is Baton's own and never reaches a backend."""
        value = cls.session_vars[-1].value.strip("'\"").lower()
        if value not in ("session", "eventual", "", "null", "default"):
            self._finish_with(errors.BAD_CONSISTENCY.frame(1, value=value))
            return
        self.routing.consistency = value if value in ("session", "eventual") else None
        self._finish_with(self._ok(1))

    # -- RESET_CONNECTION / CHANGE_USER -------------------------------------------------------

    def _forget_session_state(self) -> None:
        self.leases.release_all(Why.ENDED)
        self.stmts.clear()
        self.routing.clear()
        self.state.multi_option = None
        self.state.clear()

    def _reset_connection(self, payload: bytes) -> None:
        """COM_RESET_CONNECTION: the session's connections go back to the pool (reset before
        anyone uses them again); the session starts again from a clean state."""
        self._forget_session_state()
        self._write(self._ok(1))
        self._after_response()

    def _change_user(self, payload: bytes) -> None:
        """COM_CHANGE_USER: a new login on the same connection (``client.ClientSession``)."""
        raise NotImplementedError

    @property
    def multi_statements(self) -> bool:
        option = self.state.multi_option
        if option is not None:
            return option == 0
        return bool(self.capabilities & _MULTI_STATEMENTS)


_IDLE: Final = ClientState.IDLE
_WAITING: Final = ClientState.WAITING

_HANDLERS: Final[dict[int, Callable[[Commands, bytes], None]]] = {
    **{int(c): Commands._forwarded for c in _FORWARDED},
    int(Command.STMT_PREPARE): Commands._stmt_prepare,
    int(Command.STMT_EXECUTE): Commands._stmt_execute,
    int(Command.STMT_SEND_LONG_DATA): Commands._stmt_send_long_data,
    int(Command.STMT_CLOSE): Commands._stmt_close,
    int(Command.STMT_RESET): Commands._stmt_reset,
    int(Command.STMT_FETCH): Commands._stmt_fetch,
    int(Command.PROCESS_KILL): Commands._process_kill,
    int(Command.PING): Commands._ping,
    int(Command.QUIT): Commands._quit,
    int(Command.RESET_CONNECTION): Commands._reset_connection,
    # Late-bound: the login layer above (client.ClientSession) implements it.
    int(Command.CHANGE_USER): lambda session, payload: session._change_user(payload),
}
