"""Router: which backend runs a command.

Rules, in order (the README lists them for users):

1. Inside a transaction (the server's IN_TRANS status flag is authoritative) every statement
   goes where the transaction runs. With autocommit=0 every statement opens a transaction (a
   SELECT too), and Baton cannot know whether a write will follow in it, so outside one the
   statement goes to the master (the transaction then stays there until COMMIT/ROLLBACK),
   unless the client names a replica (a hint, or START TRANSACTION READ ONLY with
   ``read_only_trx_to_replica``): that transaction then stays on the replica. Between
   transactions the session is free to move, autocommit=0 or not.
2. Session pins (temporary tables, LOCK TABLES, GET_LOCK, user variables assigned in a query,
   SQL-level PREPARE, open cursors, unreplayable SETs) keep the session on the master.
3. A hint in a leading comment forces a target: ``/* baton:master */``, ``/* baton:replica */``,
   ``/* baton:replica=db2 */`` (ignored inside a transaction, where it would break atomicity).
4. Reads (SELECT/SHOW/... without locking or session-bound functions) go round-robin to
   readable replicas (ONLINE, not lagging); with none, to the master (``fallback_to_master``).
5. Everything else — writes, DDL, SET, USE, unknown statements — goes to the master.

The master is always the topology's ``writable_master()`` of the current epoch: never a fenced
node, whatever its read_only says. None means "hold the statement" (failover buffering).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Final, Protocol

from .. import errors
from ..errors import BatonFailure, ErrorCode
from ..protocol.constants import Command
from .balancer import WeightedRoundRobin
from .classifier import Classification, Kind
from .session_routing import SessionRouting

if TYPE_CHECKING:
    from ..config import Config
    from ..health.timeline import ClientOutcome
    from ..health.topology import Topology
    from ..stats import Stats
    from .statements import PreparedStatement

_READ: Final = Kind.READ
_BEGIN: Final = Kind.BEGIN
_EXECUTE: Final = int(Command.STMT_EXECUTE)

# Commands that read and may run on a replica when the session is free to move.
_REPLICA_COMMANDS: Final = frozenset({int(Command.FIELD_LIST)})
# Commands that change nothing: run again elsewhere when their backend dies under them.
_SAFE_TO_REPEAT: Final = frozenset(
    int(c) for c in (Command.STMT_PREPARE, Command.FIELD_LIST, Command.STATISTICS, Command.INIT_DB)
)


class RouterHost(Protocol):
    """What the router asks of the running process (``app.Baton`` implements it)."""

    def replica_has(self, name: str, gtid: str) -> bool: ...
    def promotion_possible(self) -> bool: ...
    def topology_changed(self) -> asyncio.Future[None]: ...
    def timeline_note(self, kind: ClientOutcome) -> None: ...
    def split_brain_writers(self) -> Collection[str] | None: ...


class Route:
    """Where a command runs: ``target`` None means "hold it until a master is writable".
    ``read``: nothing is changed there, so it may be retried elsewhere; ``causal``: it must
    first wait for the session's last write on that replica.

    One is made per statement, so it is a plain class, not a dataclass: compiled
    (proxy/native.py), a decorated class is built through its type object (a generic call),
    a plain one by a direct C constructor. ``Final`` keeps its fields unchanged (mypy)."""

    __slots__ = ("target", "read", "causal")

    target: Final[str | None]
    read: Final[bool]
    causal: Final[bool]

    def __init__(self, target: str | None, read: bool = False, causal: bool = False) -> None:
        self.target = target
        self.read = read
        self.causal = causal

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Route):
            return NotImplemented
        return (self.target, self.read, self.causal) == (other.target, other.read, other.causal)

    def __hash__(self) -> int:
        return hash((self.target, self.read, self.causal))

    def __repr__(self) -> str:
        return f"Route(target={self.target!r}, read={self.read}, causal={self.causal})"


@dataclass(frozen=True, slots=True)
class Retry:
    """Run the command again (route it afresh): nothing of it reached the client."""


@dataclass(frozen=True, slots=True)
class Fail:
    """Answer the client with ``code``; ``transaction_lost``: the open transaction died."""

    code: ErrorCode
    transaction_lost: bool = False


@dataclass(frozen=True, slots=True)
class Close:
    """Part of a response already reached the client: only closing the connection is honest."""

    reason: str


Verdict = Retry | Fail | Close
RETRY: Final = Retry()


class Router:
    def __init__(
        self,
        topology: Topology,
        host: RouterHost,
        stats: Stats,
        config: Config,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topology = topology
        self.host = host
        self.stats = stats
        self.clock = clock
        self.balancer = WeightedRoundRobin()
        self.held = 0  # statements waiting for a master right now (buffer_max applies)
        self._suspect: dict[str, float] = {}  # backends that just failed under a client
        self.hold_writes = False  # set during a planned switchover: new writes wait
        self.split_brain_alarm = False  # set on SplitBrainSuspected; cleared once resolved
        # Statements that looked like reads but wrote (stored functions): they go to the master.
        self._learned: dict[bytes, None] = {}
        # DDL barrier: from the moment a schema change is routed until the replicas are seen
        # past its GTID, reads go to the master (a replica would fail them: "no such table").
        self._ddl_hold_until = 0.0
        self._ddl_barrier: str | None = None
        self._ddl_barrier_until = 0.0
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Settings read on every statement, copied out of the config on (re)load."""
        routing = config.routing
        self.split = routing.read_write_split
        self.consistency = routing.consistency
        self.read_only_trx_to_replica = routing.read_only_trx_to_replica
        self.fallback_to_master = routing.fallback_to_master
        self.buffer_window_ms = config.failover.buffer_window_ms
        self.buffer_max = config.failover.buffer_max
        self.weights = {b.name: b.weight for b in config.backends}

    def consistency_for(self, session: SessionRouting) -> str:
        """The session's read-your-writes mode: its own SET @baton_consistency, or the default."""
        return session.consistency or self.consistency

    # -- decisions ----------------------------------------------------------------------------

    def master(self) -> str | None:
        """The master writes may go to now; None while there is none, it just failed under a
        client (until the monitor decides or a short suspicion expires), or writes are held."""
        name = self.topology.writable_master()
        if name is None or self.hold_writes:
            return None
        if self.split_brain_alarm and self._ambiguous_writers():
            return None
        if self._suspect:
            until = self._suspect.get(name)
            if until is not None:
                if until > self.clock():
                    return None
                del self._suspect[name]
        return name

    def route(
        self,
        session: SessionRouting,
        cls: Classification | None,
        command: int,
        payload: bytes = b"",
        stmt: PreparedStatement | None = None,
    ) -> Route:
        """Where this command runs; changes nothing (``cls`` is the COM_QUERY's class)."""
        trx = session.trx_backend
        if trx is not None and session.in_transaction:
            return Route(trx)
        if session.pins or session.pin_next:
            return Route(self.master())
        if not session.autocommit:
            return self._opens_transaction(session, cls)
        if cls is None:
            if command in _REPLICA_COMMANDS and self.split:
                return self.read_target(session, None)
            if command == _EXECUTE and stmt is not None and stmt.is_read:
                if not stmt.master_only and self.split:
                    return self.read_target(session, None)
            return Route(self.master())
        hint = cls.hint
        if hint is not None:
            if hint.target == "master":
                return Route(self.master())
            return self.read_target(session, hint.name)
        if cls.reads_last_statement and session.last_backend is not None:
            return Route(session.last_backend)  # SHOW WARNINGS and friends: the previous one's
        if cls.kind is _BEGIN and cls.read_only_trx and self.read_only_trx_to_replica:
            return self.read_target(session, None)
        if cls.kind is not _READ or cls.master_only or not self.split:
            return Route(self.master())
        if self._learned and payload in self._learned:
            return Route(self.master())
        return self.read_target(session, None)

    def _opens_transaction(self, session: SessionRouting, cls: Classification | None) -> Route:
        """autocommit=0, no transaction open: this statement opens one, which stays where it
        starts. The master, unless the client itself asked for a replica."""
        if cls is not None:
            if cls.reads_last_statement and session.last_backend is not None:
                return Route(session.last_backend)
            hint = cls.hint
            if hint is not None and hint.target != "master":
                return self.read_target(session, hint.name)
            if cls.kind is _BEGIN and cls.read_only_trx and self.read_only_trx_to_replica:
                return self.read_target(session, None)
        return Route(self.master())

    def read_target(self, session: SessionRouting, name: str | None) -> Route:
        """A replica for a read (a named one for a hint), or the master as fallback."""
        topology = self.topology
        readable = topology.readable_replicas()
        if self._suspect:
            readable = self._without_suspects(readable)
        if self._ddl_hold_until or self._ddl_barrier is not None:
            readable = self._past_ddl(readable)
        if name is not None:
            if name in readable:
                return Route(name, True)
            if name == topology.master:
                return Route(self.master())
            readable = []  # the named replica is not usable: fall back below
        if readable:
            pick = self.balancer.pick(readable, self.weights)
            if pick is not None:
                causal = (
                    session.causal_gtid is not None and self.consistency_for(session) == "session"
                )
                return Route(pick, True, causal)
        if self.fallback_to_master:
            return Route(self.master(), True)
        raise BatonFailure(errors.NO_BACKEND, target=f"replica{'=' + name if name else ''}")

    def _without_suspects(self, names: list[str]) -> list[str]:
        now = self.clock()
        for n, until in list(self._suspect.items()):
            if until <= now:
                del self._suspect[n]
        return [n for n in names if n not in self._suspect]

    def _ambiguous_writers(self) -> bool:
        """Two writers of which neither is fenced: which one is the master cannot be known,
        so writes wait (not guessed). A fenced old master saying read_only=0 is an alarm, but
        the epoch still says who the master is, so writes go on."""
        writers = self.host.split_brain_writers()
        if not writers:
            self.split_brain_alarm = False
            return False
        topology = self.topology
        return sum(1 for w in writers if not topology.is_fenced(w)) >= 2

    DDL_BARRIER_S: ClassVar[float] = 10.0  # longest reads stay off replicas after a DDL (a stuck monitor)

    def ddl_started(self) -> None:
        self._ddl_hold_until = self.clock() + self.DDL_BARRIER_S

    def ddl_finished(self, gtid: str | None) -> None:
        """The DDL is done (gtid None: it failed, or its GTID is unknown)."""
        self._ddl_hold_until = 0.0
        if gtid is not None:
            self._ddl_barrier = gtid
            self._ddl_barrier_until = self.clock() + self.DDL_BARRIER_S

    def _past_ddl(self, readable: list[str]) -> list[str]:
        now = self.clock()
        if self._ddl_hold_until:
            if now < self._ddl_hold_until:
                return []
            self._ddl_hold_until = 0.0
        barrier = self._ddl_barrier
        if barrier is None:
            return readable
        if now >= self._ddl_barrier_until:
            self._ddl_barrier = None
            return readable
        past = [r for r in readable if self.host.replica_has(r, barrier)]
        if len(past) == len(readable):
            self._ddl_barrier = None  # every replica has it: no more checks
        return past

    def learn_master_only(self, payload: bytes, limit: int = 1024) -> None:
        """Remembers (bounded) a statement a replica refused as a write."""
        if len(self._learned) >= limit:
            self._learned.pop(next(iter(self._learned)))
        self._learned[payload] = None

    def suspect(self, backend: str, seconds: float = 2.0) -> None:
        """A backend just failed under a client: keep reads off it until the monitor decides."""
        self._suspect[backend] = self.clock() + seconds

    # -- waiting out a failover ---------------------------------------------------------------

    async def wait_for_target(self, again: Callable[[], Route]) -> Route:
        """Holds a command while no master is writable, up to [failover] buffer_window_ms;
        ``again`` routes the command afresh each time the topology may have changed."""
        host = self.host
        if not self.hold_writes and not host.promotion_possible():
            # The master is unreachable and no server could take over: say so now.
            raise BatonFailure(errors.BACKEND_UNREACHABLE, backend=self.topology.master or "master",
                               reason="master down and no replica available to take over")
        if self.held >= self.buffer_max:
            host.timeline_note("failed")
            raise BatonFailure(errors.BUFFER_FULL, limit=self.buffer_max)
        deadline = self.clock() + self.buffer_window_ms / 1000
        self.held += 1
        self.stats.held += 1
        host.timeline_note("held")
        try:
            while True:
                route = again()
                if route.target is not None:
                    return route
                remaining = deadline - self.clock()
                if remaining <= 0:
                    host.timeline_note("failed")
                    raise BatonFailure(errors.NO_MASTER, waited_ms=self.buffer_window_ms)
                try:
                    await asyncio.wait_for(host.topology_changed(), min(remaining, 0.25))
                except TimeoutError:
                    pass
        finally:
            self.held -= 1

    # -- failures under a client --------------------------------------------------------------

    def after_loss(
        self,
        session: SessionRouting,
        backend: str,
        command: int,
        read: bool,
        retries: int,
        forwarded: int,
    ) -> Verdict:
        """A backend died under a command: what the session does about it."""
        if forwarded:
            return Close(f"backend {backend} lost mid-response")
        self.suspect(backend)
        if session.trx_backend == backend or (session.in_transaction and not read):
            return Fail(errors.TRANSACTION_LOST, transaction_lost=True)
        if read and retries < 2:
            self.stats.retried += 1
            self.host.timeline_note("retried")
            return RETRY
        if command in _SAFE_TO_REPEAT and retries < 2:
            return RETRY
        self.host.timeline_note("failed")
        # A read that kept failing changed nothing: just say so.
        return Fail(errors.BACKEND_LOST if read else errors.OUTCOME_UNKNOWN)
