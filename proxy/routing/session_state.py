"""Keeps every backend connection a session uses in the session's state.

A session may run statements on the master and on several replicas, and between statements its
connections may go back to the pool. So Baton records what the session set — default schema,
``SET`` of session and user variables, ``SET NAMES``, autocommit, isolation level — and replays
it on a connection before the session's first statement there (one ``SET`` with every item).

Only literal values are replayed (``SET @a = 5``, ``SET sql_mode = 'ANSI'``): an expression
(``SET @a = NOW()``, ``SET @a = (SELECT ...)``) could evaluate differently elsewhere, so such a
session is pinned to the master instead of guessing. A connection another session used is
reset (COM_RESET_CONNECTION) in the same write as the replay, so state never leaks from one
client to another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from ..backend import BackendError
from ..protocol.constants import Command
from ..protocol.packets import ErrPacket
from .classifier import SetItem, is_literal


class StateRestoreError(BackendError):
    """A backend connection could not be made to match the session (reported as 9109).

    ``server_err``: the server's own refusal (1049 unknown database, 1044 access denied),
    which a login passes on unchanged as a server would; mid-session it stays 9109."""

    def __init__(self, backend: str, reason: str, server_err: ErrPacket | None = None) -> None:
        super().__init__(backend, reason)
        self.server_err = server_err


class Restorable(Protocol):
    """What ``restore`` and ``in_sync`` read and set on a connection: a BackendConnection's
    state marks and its pipeline (the pools' unit tests pass their own connections)."""

    backend: str
    reset_pending: bool
    schema: str | None
    multi_option: int | None
    state_owner: object
    state_version: int

    async def pipeline(
        self, commands: Sequence[tuple[int, bytes]], timeout: float
    ) -> list[ErrPacket | None]: ...


# Variables whose value belongs to one connection or one statement: never replayed.
_NOT_REPLAYED: Final = frozenset(
    {"last_gtid", "timestamp", "insert_id", "last_insert_id", "identity", "rand_seed1",
     "rand_seed2", "warning_count", "error_count", "pseudo_thread_id", "gtid_seq_no",
     "gtid_domain_id", "server_id", "sql_log_bin", "skip_replication"}
)

# Isolation level and access mode as session variables, so they fit in one SET list.
_TRANSACTION_VARS: Final = {"isolation_level": "tx_isolation", "access_mode": "tx_read_only"}
_ISOLATION_LEVELS: Final = frozenset({"READ UNCOMMITTED", "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"})


@dataclass
class SessionState:
    """What a client session has set; ``version`` bumps on every change."""

    schema: str | None = None
    items: dict[str, str] = field(default_factory=dict)  # key -> one SET assignment, in order
    version: int = 0
    multi_option: int | None = None  # COM_SET_OPTION the session sent (0 on, 1 off)

    def replay_statements(self) -> list[bytes]:
        """What makes a fresh connection match: ``SET NAMES`` first and on its own (the
        rest is parsed in the charset it sets), then one SET with every other item, as the
        client's own bytes (values keep their encoding, whatever it is)."""
        items = self.items
        if not items:
            return []
        out = []
        names = items.get("names")
        if names is not None:
            out.append(_raw("SET " + names))
        rest = [text for key, text in items.items() if key != "names"]
        if rest:
            out.append(_raw("SET " + ", ".join(rest)))
        return out

    def record(self, items: tuple[SetItem, ...]) -> bool:
        """Adds SET assignments; False if one cannot be replayed faithfully (pin instead)."""
        replayable = True
        for item in items:
            if item.scope == "names" and item.name == "collation" and "names" in self.items:
                if not is_literal(item.value):
                    replayable = False
                    continue
                self.items["names"] += f" COLLATE {item.value}"
                continue
            key, text = _assignment(item)
            if key is None:
                replayable = False
                continue
            if text is None:
                continue
            self.items.pop(key, None)  # re-insert at the end: replay in the order last set
            self.items[key] = text
        self.version += 1
        return replayable

    def clear(self) -> None:
        self.items.clear()
        self.version += 1


def _assignment(item: SetItem) -> tuple[str | None, str | None]:
    """(key, SQL text) for one SET item; key None = not replayable; text None = nothing to do."""
    scope, name, value = item.scope, item.name, item.value
    if scope == "transaction":
        return _transaction_assignment(name, value)
    if not is_literal(value):
        return None, None
    if scope == "names":  # SET NAMES gives a charset item, then maybe a collation item
        return "names", f"NAMES {value}"
    if scope == "charset":
        return "names", f"CHARACTER SET {value}"
    if scope == "user":
        return f"@{name}", f"@`{name}` = {value}"
    if scope == "session":
        if name in _NOT_REPLAYED:
            return f"@@{name}", None
        return f"@@{name}", f"@@session.{name} = {value}"
    return None, None


def _transaction_assignment(name: str, value: str) -> tuple[str | None, str | None]:
    """SET SESSION TRANSACTION ... as session variables (so they fit in one SET list)."""
    var = _TRANSACTION_VARS.get(name)
    words = " ".join(value.upper().split())
    if var is None:
        return None, None  # SET TRANSACTION for the next transaction only: pin
    if var == "tx_isolation":
        if words not in _ISOLATION_LEVELS:
            return None, None
        return f"@@{var}", f"@@session.{var} = '{words.replace(' ', '-')}'"
    if words not in ("READ ONLY", "READ WRITE"):
        return None, None
    return f"@@{var}", f"@@session.{var} = {1 if words == 'READ ONLY' else 0}"


def _raw(text: str) -> bytes:
    """Back to the client's bytes (the classifier decoded them with surrogateescape)."""
    return text.encode("utf-8", "surrogateescape")


async def restore(owner: object, state: SessionState, conn: Restorable) -> None:
    """Makes ``conn`` match the session ``owner`` whose recorded state is ``state``: the
    reset of the last session's state, the schema, the multi-statement option and the SETs
    it lacks, written at once (one round trip), checked in order."""
    steps: list[tuple[int, bytes, str]] = []  # command, body, what failing it means
    reset = conn.reset_pending
    if reset:
        steps.append((Command.RESET_CONNECTION, b"", "cannot reset the connection"))
    if state.schema and (conn.schema != state.schema or reset):
        steps.append((Command.INIT_DB, state.schema.encode(), f"cannot select schema {state.schema!r}"))
    option = state.multi_option
    if option is not None and conn.multi_option != option:
        steps.append((Command.SET_OPTION, bytes((option & 0xFF, option >> 8)), "cannot set the multi-statement option"))
    replay = reset or not (conn.state_owner is owner and conn.state_version == state.version)
    if replay:
        steps += [(Command.QUERY, sql, "replaying the session's SET failed") for sql in state.replay_statements()]
    if steps:
        errors = await conn.pipeline([(command, body) for command, body, _ in steps], timeout=5)
        for (command, _, failed), err in zip(steps, errors, strict=True):
            if err is not None:
                # A schema the server refuses (1049, 1044) is passed on at login as its own
                # error; any other refusal stays Baton's 9109.
                server_err = err if command == Command.INIT_DB else None
                raise StateRestoreError(conn.backend, f"{failed}: {err.message}", server_err)
            if command == Command.INIT_DB:
                conn.schema = state.schema
            elif command == Command.SET_OPTION:
                conn.multi_option = option
    conn.reset_pending = False
    if replay:
        conn.state_owner = owner
        conn.state_version = state.version


def in_sync(owner: object, state: SessionState, conn: Restorable) -> bool:
    """Does ``conn`` already hold this session's state (nothing to replay)?"""
    return (
        conn.state_owner is owner
        and conn.state_version == state.version
        and not conn.reset_pending
        and (not state.schema or conn.schema == state.schema)
        and conn.multi_option == state.multi_option
    )
