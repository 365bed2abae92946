"""A session's states as values: where it is in its life, the command it serves, and what
ties it to a backend.

``ClientState`` is the one place a session's life is spelled out, and ``next_state`` the one
function that moves it (pgbouncer's ``change_client_state``): an impossible move raises
instead of leaving a session half in two states. What ties a session to backends, the part
the router reads, is ``routing.session_routing.SessionRouting``.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Final

from mypy_extensions import mypyc_attr

from ..routing.classifier import Classification

if TYPE_CHECKING:
    from ..backend import BackendConnection
    from ..routing.statements import PreparedStatement


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
