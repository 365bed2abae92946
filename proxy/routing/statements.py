"""Prepared statements that can run on any backend.

The client sees one statement id per PREPARE (Baton's own numbering). Each backend connection
that runs the statement prepares it lazily and gets its own id; COM_STMT_EXECUTE packets are
rewritten on the way out (statement id, and parameter types when the backend has not seen them
yet: a client sends types only on the first execute, ``new_params_bound_flag``), and long data
is held by Baton until the execute picks its backend.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..protocol.wire import ProtocolError

if TYPE_CHECKING:
    from ..backend import BackendConnection

_U32 = struct.Struct("<I")


@dataclass(eq=False)
class PreparedStatement:
    client_id: int
    sql: bytes
    params: int
    columns: int
    master_only: bool  # classification of the SQL: where may executions run
    is_read: bool
    prepare_response: list[bytes] = field(default_factory=list)  # payloads, to answer a re-PREPARE
    backend_ids: dict[BackendConnection, int] = field(default_factory=dict)  # conn -> its id
    types_sent: set[BackendConnection] = field(default_factory=set)  # conns that know the types
    param_types: bytes | None = None
    long_data: list[bytes] = field(default_factory=list)  # SEND_LONG_DATA payloads, client ids
    long_data_size: int = 0  # bytes in long_data
    long_data_dropped: bool = False  # past the session's cap: the next execute fails
    cursor_conn: BackendConnection | None = None  # connection holding an open cursor for FETCH

    def clear_long_data(self) -> None:
        self.long_data.clear()
        self.long_data_size = 0

    def forget(self, conn: BackendConnection) -> None:
        """``conn`` left the session: its statement id and cursor mean nothing any more."""
        self.backend_ids.pop(conn, None)
        self.types_sent.discard(conn)
        if self.cursor_conn is conn:
            self.cursor_conn = None


class SessionStatements(dict[int, PreparedStatement]):
    """A session's prepared statements by Baton's statement id (the one the client knows)."""

    def __init__(self) -> None:
        super().__init__()
        self._last_id = 0

    def next_id(self) -> int:
        self._last_id += 1
        return self._last_id

    def forget(self, conn: BackendConnection) -> bool:
        """``conn`` left the session; whether any statement was prepared on it."""
        prepared = False
        for stmt in self.values():
            prepared |= conn in stmt.backend_ids
            stmt.forget(conn)
        return prepared

    def hold_long_data(self, stmt: PreparedStatement, payload: bytes, limit: int) -> None:
        """Keeps a SEND_LONG_DATA payload for the next execute, while the session holds at
        most ``limit`` bytes of them; past it, the statement's long data is dropped and its
        next execute fails (as a server past max_allowed_packet would)."""
        held = sum(s.long_data_size for s in self.values())
        if stmt.long_data_dropped or held + len(payload) > limit:
            stmt.long_data_dropped = True
            stmt.clear_long_data()
            return
        stmt.long_data.append(payload)
        stmt.long_data_size += len(payload)

    @property
    def cursor_open(self) -> bool:
        return bool(self) and any(s.cursor_conn is not None for s in self.values())


def statement_id(payload: bytes) -> int:
    if len(payload) < 5:
        raise ProtocolError("statement command too short for a statement id")
    return _U32.unpack_from(payload, 1)[0]


def with_statement_id(payload: bytes, stmt_id: int) -> bytes:
    return payload[:1] + _U32.pack(stmt_id) + payload[5:]


def execute_types(payload: bytes, params: int) -> bytes | None:
    """The parameter types a COM_STMT_EXECUTE binds, or None if it reuses earlier ones."""
    if not params:
        return None
    pos = 10 + (params + 7) // 8
    if len(payload) <= pos:
        raise ProtocolError("COM_STMT_EXECUTE too short for its parameters")
    if payload[pos] != 1:
        return None
    end = pos + 1 + 2 * params
    if len(payload) < end:
        raise ProtocolError("COM_STMT_EXECUTE too short for its parameter types")
    return payload[pos + 1 : end]


def rewrite_execute(payload: bytes, backend_id: int, params: int, add_types: bytes | None) -> bytes:
    """An execute for a backend: its statement id, and the types inserted if it lacks them."""
    head = payload[:1] + _U32.pack(backend_id)
    if add_types is None or not params:
        return head + payload[5:]
    pos = 10 + (params + 7) // 8
    if len(payload) <= pos:
        raise ProtocolError("COM_STMT_EXECUTE too short for its parameters")
    if payload[pos] == 1:
        return head + payload[5:]
    return head + payload[5:pos] + b"\x01" + add_types + payload[pos + 1 :]


def prepare_ok_ids(payload: bytes) -> tuple[int, int, int]:
    """(statement id, columns, params) from a COM_STMT_PREPARE OK packet."""
    if len(payload) < 9 or payload[0] != 0:
        raise ProtocolError("not a COM_STMT_PREPARE OK packet")
    stmt_id = _U32.unpack_from(payload, 1)[0]
    columns = payload[5] | (payload[6] << 8)
    params = payload[7] | (payload[8] << 8)
    return stmt_id, columns, params
