"""Router: which backend runs a command.

Rules, in order (the README lists them for users):

1. Inside a transaction (the server's IN_TRANS status flag is authoritative) every statement
   goes where the transaction runs; with autocommit=0 everything goes to the master.
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
from typing import TYPE_CHECKING

from .. import errors
from ..errors import BatonFailure
from ..protocol.constants import Command
from .balancer import WeightedRoundRobin
from .classifier import Classification, Kind, classify

if TYPE_CHECKING:
    from ..app import Baton
    from ..frontend import ClientSession, Inflight

_QUERY = int(Command.QUERY)
_READ = Kind.READ
_BEGIN = Kind.BEGIN

# Commands that read and may run on a replica when the session is free to move.
_REPLICA_COMMANDS = frozenset({int(Command.FIELD_LIST)})


class Router:
    def __init__(self, app: Baton) -> None:
        self.app = app
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
        self.split = app.config.routing.read_write_split  # refreshed by configure() on reload

    def configure(self, config: object) -> None:
        """Settings read on every statement, copied out of the config on (re)load."""
        self.split = config.routing.read_write_split  # type: ignore[attr-defined]

    # -- decisions ----------------------------------------------------------------------------

    def master(self) -> str | None:
        """The master writes may go to now; None while there is none, it just failed under a
        client (until the monitor decides or a short suspicion expires), or writes are held."""
        name = self.app.topology.writable_master()
        if name is None or self.hold_writes:
            return None
        if self.split_brain_alarm and self._ambiguous_writers():
            return None
        if self._suspect:
            until = self._suspect.get(name)
            if until is not None:
                if until > time.monotonic():
                    return None
                del self._suspect[name]
        return name

    def route(self, session: ClientSession, inflight: Inflight) -> str | None:
        """The backend for this command, or None when it must wait for a master."""
        command = inflight.command
        cls: Classification | None = None
        if command == _QUERY:
            cls = classify(inflight.payload[1:], session.multi_statements)
            inflight.cls = cls
        trx = session.trx_backend
        if trx is not None and session.in_transaction:
            return trx
        if not session.autocommit or session.pins or session.pin_next:
            return self.master()
        if cls is None:
            if command in _REPLICA_COMMANDS and self.split:
                return self.read_target(session, inflight, None)
            if command == Command.STMT_EXECUTE and inflight.stmt is not None and inflight.stmt.is_read:
                if not inflight.stmt.master_only and self.split:
                    return self.read_target(session, inflight, None)
            return self.master()
        hint = cls.hint
        if hint is not None:
            if hint.target == "master":
                return self.master()
            return self.read_target(session, inflight, hint.name)
        if cls.reads_last_statement and session.last_backend is not None:
            return session.last_backend  # SHOW WARNINGS and friends: the previous statement's
        if cls.kind is _BEGIN and cls.read_only_trx and self.app.config.routing.read_only_trx_to_replica:
            return self.read_target(session, inflight, None)
        if cls.kind is not _READ or cls.master_only or not self.split:
            return self.master()
        if self._learned and inflight.payload in self._learned:
            return self.master()
        return self.read_target(session, inflight, None)

    def read_target(self, session: ClientSession, inflight: Inflight, name: str | None) -> str | None:
        """A replica for a read (a named one for a hint), or the master as fallback."""
        topology = self.app.topology
        readable = topology.readable_replicas()
        if self._suspect:
            readable = self._without_suspects(readable)
        if self._ddl_hold_until or self._ddl_barrier is not None:
            readable = self._past_ddl(readable)
        if name is not None:
            if name in readable:
                inflight.read = True
                return name
            if name == topology.master:
                return self.master()
            readable = []  # the named replica is not usable: fall back below
        if readable:
            weights = self.app.read_weights
            pick = self.balancer.pick(readable, weights)
            if pick is not None:
                inflight.read = True
                if session.causal_gtid is not None and self.app.consistency_for(session) == "session":
                    inflight.causal = True
                return pick
        if self.app.config.routing.fallback_to_master:
            inflight.read = True
            return self.master()
        raise BatonFailure(errors.NO_BACKEND, target=f"replica{'=' + name if name else ''}")

    def _without_suspects(self, names: list[str]) -> list[str]:
        now = time.monotonic()
        for n, until in list(self._suspect.items()):
            if until <= now:
                del self._suspect[n]
        return [n for n in names if n not in self._suspect]

    def _ambiguous_writers(self) -> bool:
        """Two writers of which neither is fenced: which one is the master cannot be known,
        so writes wait (not guessed). A fenced old master saying read_only=0 is an alarm, but
        the epoch still says who the master is, so writes go on."""
        failover = self.app.failover
        writers = failover.split_brain if failover is not None else None
        if not writers:
            self.split_brain_alarm = False
            return False
        topology = self.app.topology
        return sum(1 for w in writers if not topology.is_fenced(w)) >= 2

    DDL_BARRIER_S = 10.0  # longest reads stay off replicas after a DDL (a stuck monitor)

    def ddl_started(self) -> None:
        self._ddl_hold_until = time.monotonic() + self.DDL_BARRIER_S

    def ddl_finished(self, gtid: str | None) -> None:
        """The DDL is done (gtid None: it failed, or its GTID is unknown)."""
        self._ddl_hold_until = 0.0
        if gtid is not None:
            self._ddl_barrier = gtid
            self._ddl_barrier_until = time.monotonic() + self.DDL_BARRIER_S

    def _past_ddl(self, readable: list[str]) -> list[str]:
        now = time.monotonic()
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
        past = [r for r in readable if self.app.replica_has(r, barrier)]
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
        self._suspect[backend] = time.monotonic() + seconds

    # -- waiting out a failover ---------------------------------------------------------------

    async def wait_for_target(self, session: ClientSession, inflight: Inflight) -> str:
        """Holds a command while no master is writable, up to [failover] buffer_window_ms."""
        cfg = self.app.config.failover
        if not self.hold_writes and not self.app.promotion_possible():
            # The master is unreachable and no server could take over: say so now.
            raise BatonFailure(errors.BACKEND_UNREACHABLE, backend=self.app.topology.master or "master",
                               reason="master down and no replica available to take over")
        if self.held >= cfg.buffer_max:
            self.app.timeline_note("failed")
            raise BatonFailure(errors.BUFFER_FULL, limit=cfg.buffer_max)
        deadline = time.monotonic() + cfg.buffer_window_ms / 1000
        self.held += 1
        self.app.stats.held += 1
        self.app.timeline_note("held")
        try:
            while True:
                target = self.route(session, inflight)
                if target is not None:
                    return target
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.app.timeline_note("failed")
                    raise BatonFailure(errors.NO_MASTER, waited_ms=cfg.buffer_window_ms)
                try:
                    await asyncio.wait_for(self.app.topology_changed(), min(remaining, 0.25))
                except TimeoutError:
                    pass
        finally:
            self.held -= 1

    # -- failures under a client --------------------------------------------------------------

    def on_backend_lost(self, session: ClientSession, inflight: Inflight, backend: str, reason: str) -> None:
        """A backend died under a command before any of its response reached the client."""
        self.suspect(backend)
        if session.trx_backend == backend or (session.in_transaction and not inflight.read):
            session.lose_transaction(backend)
            session.finish_with_error(errors.TRANSACTION_LOST, backend=backend)
            return
        if inflight.read and inflight.retries < 2:
            inflight.retries += 1
            self.app.stats.retried += 1
            self.app.timeline_note("retried")
            session.retry(inflight)
            return
        if inflight.command in (Command.STMT_PREPARE, Command.FIELD_LIST, Command.STATISTICS, Command.INIT_DB):
            if inflight.retries < 2:
                inflight.retries += 1
                session.retry(inflight)
                return
        self.app.timeline_note("failed")
        if inflight.read:  # a read that kept failing: nothing was changed, just say so
            session.finish_with_error(errors.BACKEND_LOST, backend=backend)
        else:
            session.finish_with_error(errors.OUTCOME_UNKNOWN, backend=backend)
