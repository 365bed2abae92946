"""What ties a session to backends: the part of a session the router reads (vitess's
``SafeSession``), changed by the session only.

The transaction and where it runs, pins to the master, temporary tables, named locks, and the
GTID of the session's last write. It holds no socket and does no I/O, so the router and its
tests can use it alone. It lives beside the router, which takes it by its class (not a
Protocol): compiled, the router then reads its fields and properties as C struct members,
nine times per statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from ..protocol.constants import ServerStatus
from .classifier import Classification, Pin
from .named_locks import NamedLocks

_IN_TRANS: Final = int(ServerStatus.IN_TRANS)
_AUTOCOMMIT: Final = int(ServerStatus.AUTOCOMMIT)


class SessionPin(Enum):
    """Reasons to stay on the master that come from the session, not from one statement."""

    MULTI_STATEMENT_ERROR = "multi_statement_error"  # some parts ran, some did not
    UNREPLAYABLE_SET = "unreplayable_set"  # a SET that cannot be replayed elsewhere

    __hash__ = object.__hash__  # as ClientState's


@dataclass(slots=True)
class SessionRouting:
    """What ties a session to backends; the router reads it, the session changes it."""

    status: int = _AUTOCOMMIT  # the server's status flags after the last response
    trx_backend: str | None = None  # where the open transaction runs
    trx_lost: str | None = None  # backend whose death took the open transaction
    last_backend: str | None = None  # where the previous statement ran
    pins: dict[Pin | SessionPin, int] = field(default_factory=dict)  # reason -> count
    temp_tables: set[str] = field(default_factory=set)
    pin_next: bool = False  # FOUND_ROWS(): the next statement must see the previous one's
    pinned_on: str | None = None  # backend holding the pinned state
    state_lost: str | None = None  # pinned state that died with its backend (why)
    consistency: str | None = None  # SET @baton_consistency override
    causal_gtid: str | None = None  # GTID of the session's last write (session mode)
    locks: NamedLocks = field(default_factory=NamedLocks)  # GET_LOCK names it may hold

    @property
    def in_transaction(self) -> bool:
        return bool(self.status & _IN_TRANS)

    @property
    def autocommit(self) -> bool:
        return bool(self.status & _AUTOCOMMIT)

    @property
    def free_to_move_between_statements(self) -> bool:
        """Nothing ties the next statement to one backend (an open transaction, pins).

        autocommit=0 does not: the server's IN_TRANS flag says when a transaction is open
        (with autocommit=0 the first statement after COMMIT opens the next one), and
        autocommit=0 itself is replayed on the next connection with the session's other SETs.
        """
        return not self.status & _IN_TRANS and not self.pins

    def responded(self, status: int, backend: str) -> None:
        """A response ended on ``backend`` with these status flags."""
        self.status = status
        self.last_backend = backend
        if status & _IN_TRANS:
            self.trx_backend = backend
        elif self.trx_backend is not None:
            self.trx_backend = None

    def pin(self, reason: Pin | SessionPin, backend: str) -> None:
        self.pins[reason] = self.pins.get(reason, 0) + 1
        self.pinned_on = backend

    def unpin(self, reason: Pin) -> None:
        if reason is Pin.SQL_PREPARE:
            left = self.pins.get(reason, 0) - 1
            if left > 0:
                self.pins[reason] = left
                return
        self.pins.pop(reason, None)

    def apply(self, cls: Classification, backend: str, ok: bool) -> None:
        """Pins and temporary tables one statement (one part of several) created or dropped."""
        if cls.unpin is not None and cls.unpin is not Pin.GET_LOCK:
            self.unpin(cls.unpin)
        pin = cls.pin
        if pin is not None and pin is not Pin.FOUND_ROWS and pin is not Pin.GET_LOCK:
            self.pin(pin, backend)
        if cls.temp_table and ok:
            self.temp_tables.add(cls.temp_table.lower())
        if cls.dropped_tables and self.temp_tables and ok:
            for t in cls.dropped_tables:
                self.temp_tables.discard(t.lower())
            if not self.temp_tables:
                self.pins.pop(Pin.TEMP_TABLE, None)

    def named_locks(
        self,
        cls: Classification,
        backend: str,
        ok: bool,
        row: Sequence[bytes | None] | None,
    ) -> None:
        """GET_LOCK and friends ran (``row``: their values, when read): pinned to ``backend``
        while the session may hold a named lock, by name; unpinned once it holds none."""
        if self.locks.apply(cls, ok, row):
            if Pin.GET_LOCK not in self.pins:
                self.pins[Pin.GET_LOCK] = 1
                self.pinned_on = backend
        else:
            self.pins.pop(Pin.GET_LOCK, None)

    def lose_transaction(self, backend: str) -> None:
        """The open transaction died with its backend; the session itself carries on."""
        self.trx_lost = backend
        self.trx_backend = None
        self.status &= ~_IN_TRANS

    def backend_gone(self, backend: str) -> None:
        """A backend (or the connection to it) died: state that lived only there is gone."""
        if self.trx_backend == backend and self.status & _IN_TRANS:
            self.lose_transaction(backend)
        if self.pins and self.pinned_on == backend:
            reasons = self.pinned_reason()
            self.pins.clear()
            self.locks.clear()  # the server released them with the connection
            self.temp_tables.clear()
            self.pinned_on = None
            self.state_lost = f"{reasons} held on {backend} were lost with it"

    def pinned_reason(self) -> str:
        return ",".join(str(p.value) for p in self.pins)

    def clear(self) -> None:
        """COM_RESET_CONNECTION / COM_CHANGE_USER: a fresh session."""
        self.pins.clear()
        self.locks.clear()
        self.temp_tables.clear()
        self.pin_next = False
        self.pinned_on = None
        self.state_lost = None
        self.trx_backend = None
        self.trx_lost = None
        self.causal_gtid = None
        self.consistency = None
        self.status = _AUTOCOMMIT
