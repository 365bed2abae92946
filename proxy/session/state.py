"""A session's states as values: where it is in its life, the command it serves, and what
ties it to a backend.

``ClientState`` is the one place a session's life is spelled out, and ``next_state`` the one
function that moves it (pgbouncer's ``change_client_state``): an impossible move raises
instead of leaving a session half in two states. ``SessionRouting`` is what the router reads
(vitess's ``SafeSession``): the transaction and where it runs, pins to the master, temporary
tables, and the GTID of the session's last write. It holds no socket and does no I/O, so the
router and its tests can use it alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Final

from mypy_extensions import mypyc_attr

from ..protocol.constants import ServerStatus
from ..routing.classifier import Classification, Pin
from ..routing.named_locks import NamedLocks

if TYPE_CHECKING:
    from ..backend import BackendConnection
    from ..routing.statements import PreparedStatement

_IN_TRANS: Final = int(ServerStatus.IN_TRANS)
_AUTOCOMMIT: Final = int(ServerStatus.AUTOCOMMIT)


class ClientState(Enum):
    LOGIN = "login"  # greeting and authentication (also a CHANGE_USER's)
    IDLE = "idle"  # between commands: the next queued one may start
    WAITING = "waiting"  # a command waits: for a connection, a master, a PAUSE, a GTID
    ACTIVE = "active"  # a command runs: its response is on its way to the client
    INFILE = "infile"  # LOAD DATA LOCAL INFILE: the client's file goes to the backend (it
    # ends with the client's empty packet, even if the server answered before it)
    CLOSED = "closed"

    # Identity hash: Enum's __hash__ is a Python function, and next_state looks states up
    # in dicts and sets twice per statement.
    __hash__ = object.__hash__


_S: Final = ClientState
_MOVES: Final[dict[ClientState, frozenset[ClientState]]] = {
    _S.LOGIN: frozenset({_S.WAITING, _S.CLOSED}),  # logged in: the default schema is checked
    _S.IDLE: frozenset({_S.ACTIVE, _S.CLOSED}),
    _S.WAITING: frozenset({_S.WAITING, _S.ACTIVE, _S.IDLE, _S.CLOSED}),
    _S.ACTIVE: frozenset({_S.WAITING, _S.IDLE, _S.INFILE, _S.LOGIN, _S.CLOSED}),
    _S.INFILE: frozenset({_S.ACTIVE, _S.IDLE, _S.CLOSED}),
    _S.CLOSED: frozenset(),
}
# States in which packets from the client are commands (queued while one is served).
COMMAND_STATES: Final = frozenset({_S.IDLE, _S.WAITING, _S.ACTIVE})


# What SHOW CLIENTS says a session does (pgbouncer's words). "waiting": a command has not
# reached a backend yet (a pool connection, a master during a failover hold, a PAUSE, a
# replica catching up for a causal read); "active": it is being served. Between commands a
# session is "in-transaction" or "idle".
_SHOWN: Final = {_S.LOGIN: "login", _S.WAITING: "waiting", _S.ACTIVE: "active", _S.INFILE: "active"}


def shown_activity(state: ClientState, in_transaction: bool) -> str:
    """The state column of SHOW CLIENTS for a session in ``state``."""
    shown = _SHOWN.get(state)
    if shown is not None:
        return shown
    return "in-transaction" if in_transaction else "idle"


@mypyc_attr(native_class=False)  # mypyc compiles subclasses of few builtins (native.py)
class ImpossibleTransition(RuntimeError):
    """A bug: the session was asked to move where its current state cannot go."""


def next_state(current: ClientState, new: ClientState) -> ClientState:
    """``new`` if a session in ``current`` may move there; raises otherwise."""
    if new not in _MOVES[current]:
        raise ImpossibleTransition(f"client state {current.name} cannot become {new.name}")
    return new


class Inflight:
    """The command being served right now.

    One is made per statement, so it is a plain class, not a dataclass: compiled
    (proxy/native.py), a decorated class is built through its type object (a generic call)
    and a dataclass-generated ``__init__`` stays interpreted Python (770 ns of every
    statement's CPU); a plain class gets a direct C constructor."""

    __slots__ = (
        "command", "payload", "conn", "started", "forwarded", "cls", "stmt", "read", "causal",
        "retries", "swallowed_error", "ddl",
    )

    command: int
    payload: bytes
    conn: BackendConnection | None
    started: float
    forwarded: int  # response bytes already sent to the client (no retry after the first)
    cls: Classification | None  # COM_QUERY classification
    stmt: PreparedStatement | None  # COM_STMT_EXECUTE / FETCH / RESET target
    read: bool  # a read: may be retried on another backend before any byte is sent
    causal: bool  # must wait for the session's last write on the chosen replica
    retries: int
    swallowed_error: int  # an ERR Baton handles itself (1615: re-prepare and retry)
    ddl: bool  # changes the schema: replicas get no reads until they have applied it

    def __init__(self, command: int, payload: bytes, started: float = 0.0) -> None:
        self.command = command
        self.payload = payload
        self.conn = None
        self.started = started
        self.forwarded = 0
        self.cls = None
        self.stmt = None
        self.read = False
        self.causal = False
        self.retries = 0
        self.swallowed_error = 0
        self.ddl = False


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
