"""What a response changed for the session, once a statement succeeded or failed.

Pins and temporary tables (``SessionRouting.apply``), named locks (``SessionRouting.named_locks``:
GET_LOCK pins while a lock may be held), ``SET`` and ``USE`` (what is replayed on the session's
other connections), and, after a write in "session" consistency or any DDL, the write's GTID
(read-your-writes and the DDL barrier). ``execute.Execution`` calls these from ``response_done``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ..protocol.packets import parse_text_row
from ..protocol.wire import PayloadReader, ProtocolError
from ..routing.classifier import Classification, Kind, Pin
from ..routing.session_routing import SessionPin
from ..routing.session_state import in_sync
from . import causal
from .intake import ClientIntake
from .state import ClientState, Inflight

if TYPE_CHECKING:
    from ..backend import BackendConnection
    from ..protocol.response import ResponseTracker

_SESSION: Final = Kind.SESSION
_USE: Final = Kind.USE
_IDLE: Final = ClientState.IDLE
_WAITING: Final = ClientState.WAITING


class StatementEffects(ClientIntake):
    """Takes in what each response changed (the layer under ``execute.Execution``)."""

    # -- what a statement changed -------------------------------------------------------------

    def _observe_query(self, cls: Classification, conn: BackendConnection, ok: bool) -> None:
        routing = self.routing
        if not (
            cls.parts
            or cls.pin
            or cls.unpin
            or cls.session_vars
            or cls.schema
            or cls.temp_table
            or cls.dropped_tables
            or cls.lock_calls
            or cls.lock_names_unknown
        ):
            routing.pin_next = False  # the usual statement: nothing to remember
            return
        parts = cls.parts or (cls,)
        backend = conn.backend
        if cls.parts and not ok:
            routing.pin(SessionPin.MULTI_STATEMENT_ERROR, backend)  # some parts ran: stay put
        for part in parts:
            routing.apply(part, backend, ok)
            if ok:
                self._state_effects(part, conn)
        if cls.lock_calls or cls.lock_names_unknown:
            row = lock_row(conn.tracker) if cls.lock_calls_exact and ok else None
            routing.named_locks(cls, backend, ok, row)
        routing.pin_next = any(p.pin is Pin.FOUND_ROWS for p in parts)

    def _state_effects(self, cls: Classification, conn: BackendConnection) -> None:
        """SET and USE change what is replayed on the session's other connections."""
        kind = cls.kind
        if kind is _SESSION and cls.session_vars:
            was_synced = in_sync(self, self.state, conn)
            if not self.state.record(cls.session_vars):
                self.routing.pin(SessionPin.UNREPLAYABLE_SET, conn.backend)
            if was_synced:
                self._synced(conn)
        elif kind is _USE and cls.schema:
            self.state.schema = conn.schema = cls.schema
            self._synced(conn)

    def _synced(self, conn: BackendConnection) -> None:
        conn.state_owner = self
        conn.state_version = self.state.version

    # -- read-your-writes ---------------------------------------------------------------------

    def _session_consistency(self) -> bool:
        return self.ctx.router.consistency_for(self.routing) == "session"

    def _learn_gtid_then_continue(
        self, conn: BackendConnection, inflight: Inflight, ddl: bool = False
    ) -> None:
        # The session stays busy while Baton asks the connection: the client may already
        # have sent its next command, which must wait its turn (not share the connection).
        self.inflight = inflight
        self.change_state(_WAITING)
        self._spawn(self._learn_gtid(conn, ddl))

    async def _learn_gtid(self, conn: BackendConnection, ddl: bool = False) -> None:
        """After a write in "session" consistency, or any DDL: its GTID, for later reads."""
        gtid = await causal.last_gtid(conn)
        if gtid is not None and self._session_consistency():
            self.routing.causal_gtid = gtid
        if ddl:
            self.ctx.router.ddl_finished(gtid)
        self.inflight = None
        self.change_state(_IDLE)
        self._after_response()


def lock_row(tracker: ResponseTracker) -> tuple[bytes | None, ...] | None:
    """The single row of a text result set the tracker collected (a ``lock_calls_exact``
    SELECT: column i is lock call i's value); None if the response was not exactly one row."""
    packets = tracker.packets
    if not packets or packets[0][0] in (0x00, 0xFF):
        return None  # an OK (DO GET_LOCK(...)) or an error: no values
    try:
        count = PayloadReader(packets[0]).lenenc_int() or 0
        at = 1 + count + (0 if tracker.deprecate_eof else 1)  # column definitions, then EOF
        rows = []
        for p in packets[at:]:
            if p[0] == 0xFF or (p[0] == 0xFE and len(p) < 0xFFFFFF):
                break  # the terminator (or an error)
            rows.append(p)
        if len(rows) != 1:
            return None
        return parse_text_row(rows[0], count)
    except (ProtocolError, IndexError):
        return None
