"""COM_STMT_*: prepared statements that run on whichever backend the router picks.

The client knows Baton's statement ids; each backend connection prepares lazily and has its
own (``routing.statements``). PREPARE runs where executions will mostly run (a replica for a
read) through the slow path, so holding and retries are the same as for any command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .. import errors
from ..backend import BackendConnection, BackendError
from ..errors import BatonFailure
from ..protocol.constants import Command
from ..protocol.framing import frame
from ..routing.classifier import Kind, classify
from ..routing.statements import (
    PreparedStatement,
    execute_types,
    prepare_ok_ids,
    rewrite_execute,
    statement_id,
    with_statement_id,
)
from .execute import Execution
from .state import Inflight

if TYPE_CHECKING:
    from ..protocol.response import ResponseTracker

_EXECUTE: Final = int(Command.STMT_EXECUTE)


class PreparedCommands(Execution):
    """The COM_STMT_* handlers."""

    def _stmt_prepare(self, payload: bytes) -> None:
        """Prepared where it will mostly run (a replica for a read); answered with Baton's own
        statement id. Runs through ``_dispatch_slow``: holding and retries are the same."""
        inflight = self._begin(Command.STMT_PREPARE, payload)
        if self.routing.trx_lost is not None:
            self._transaction_lost_reply(inflight)
            return
        limit = self.ctx.config.proxy.max_prepared_statements
        if len(self.stmts) >= limit:
            self.finish_with_error(errors.TOO_MANY_PREPARED, limit=limit)
            return
        cls = classify(payload[1:])
        if cls.kill is not None:  # its id would reach a backend at execute time: never
            self.finish_with_error(errors.KILL_UNSUPPORTED, what="KILL as a prepared statement")
            return
        router = self.ctx.router
        try:
            if (
                cls.kind is Kind.READ
                and not cls.master_only
                and self.routing.free_to_move_between_statements
                and self.routing.autocommit  # else it runs where a transaction opens: master
            ):
                route = router.read_target(self.routing, None)
                if route.causal:
                    inflight.causal = True
            else:
                route = self._route_of(inflight)
        except BatonFailure as exc:
            self.finish_with_error(exc.code, **exc.params)
            return
        inflight.read = True  # preparing changes nothing: safe to retry elsewhere
        self._wait_for(route.target, inflight)

    def _prepared(
        self, conn: BackendConnection, inflight: Inflight, tracker: ResponseTracker
    ) -> None:
        """Answers COM_STMT_PREPARE from the backend's answer, with Baton's statement id."""
        self.ctx.stats.count(Command.STMT_PREPARE, conn.backend, tracker.error)
        packets = tracker.packets
        if tracker.error is None and packets:
            cls = classify(inflight.payload[1:])
            backend_id, columns, params = prepare_ok_ids(packets[0])
            stmt = PreparedStatement(
                self.stmts.next_id(),
                inflight.payload[1:],
                params,
                columns,
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
            self._finish_with(
                errors.UNKNOWN_STMT.frame(
                    1, stmt_id=statement_id(payload), command=Command(command).name
                )
            )
        return stmt

    def _stmt_execute(self, payload: bytes) -> None:
        inflight = self._begin(_EXECUTE, payload)
        stmt = self._stmt_lookup(payload, _EXECUTE)
        if stmt is None:
            return
        if stmt.long_data_dropped:
            stmt.long_data_dropped = False
            limit = self.ctx.config.proxy.max_allowed_packet
            self.finish_with_error(errors.LONG_DATA_TOO_LARGE, limit=limit)
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
                raise BackendError(
                    conn.backend, f"re-prepare failed: {tracker.error.message}", tracker.error
                )
            backend_id = prepare_ok_ids(tracker.packets[0])[0]
            stmt.backend_ids[conn] = backend_id
        command = inflight.command
        if command == _EXECUTE:
            for chunk in stmt.long_data:
                conn.send(
                    [frame(with_statement_id(chunk, backend_id), 0)],
                    Command.STMT_SEND_LONG_DATA,
                    self,
                )
            stmt.clear_long_data()
            add = None if conn in stmt.types_sent else stmt.param_types
            stmt.types_sent.add(conn)
            return rewrite_execute(inflight.payload, backend_id, stmt.params, add)
        return with_statement_id(inflight.payload, backend_id)

    def _stmt_send_long_data(self, payload: bytes) -> None:
        stmt = self.stmts.get(statement_id(payload))
        if stmt is not None:  # no response either way, as the server would do
            self.stmts.hold_long_data(stmt, payload, self.ctx.config.proxy.max_allowed_packet)
        self._next()

    def _stmt_close(self, payload: bytes) -> None:
        stmt = self.stmts.pop(statement_id(payload), None)
        if stmt is not None:
            for conn, backend_id in stmt.backend_ids.items():
                if conn.alive and not conn.busy:
                    conn.send(
                        [frame(with_statement_id(payload, backend_id), 0)], Command.STMT_CLOSE, self
                    )
        self._next()

    def _stmt_reset(self, payload: bytes) -> None:
        inflight = self._begin(Command.STMT_RESET, payload)
        stmt = self._stmt_lookup(payload, Command.STMT_RESET)
        if stmt is None:
            return
        stmt.clear_long_data()
        stmt.long_data_dropped = False
        conn = stmt.cursor_conn
        stmt.cursor_conn = None
        if conn is not None and conn.alive and conn in stmt.backend_ids:
            inflight.stmt = stmt
            self._forward(conn, inflight, with_statement_id(payload, stmt.backend_ids[conn]))
        else:
            self._finish_with(self._ok(1))

    def _stmt_fetch(self, payload: bytes) -> None:
        inflight = self._begin(Command.STMT_FETCH, payload)
        stmt = self._stmt_lookup(payload, Command.STMT_FETCH)
        if stmt is None:
            return
        conn = stmt.cursor_conn
        if conn is None or not conn.alive or conn not in stmt.backend_ids:
            self.finish_with_error(errors.NO_CURSOR, stmt_id=stmt.client_id)
            return
        inflight.stmt = stmt
        self._forward(conn, inflight, with_statement_id(payload, stmt.backend_ids[conn]))
