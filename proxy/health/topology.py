"""Who the master is, at which epoch, and what each backend may be used for.

The epoch is Baton's answer to writer detection by read_only alone (proxysql #789,
#5135, #4684): it starts at 1, goes up by one on every change of master (or jumps to a
higher epoch learnt from another Baton instance) and never goes down. Writes go only to
the master of the current epoch. Every earlier master is *fenced*: it takes no writes,
whatever its read_only says, and cannot be promoted until the coordinator has seen it rejoin
cleanly (a read-only replica of the current master whose history the master contains) and
calls `unfence`; one that diverged stays fenced. read_only
observations are a cross-check that raises SplitBrainSuspected on disagreement, and a
hint for follow mode (`observed_promotion_candidate`), never a routing input.

Pure: no I/O, no asyncio. The monitor feeds `apply_state_change` and `observe`; the
promotion paths call `promote`; events go out on the bus synchronously.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from mypy_extensions import mypyc_attr

from proxy.health.events import (
    PROMOTION_SOURCES,
    BackendDown,
    BackendFenced,
    BackendStateChanged,
    BackendUp,
    EventBus,
    MasterLost,
    MasterPromoted,
    PromotionSource,
    ReplicaCaughtUp,
    ReplicaLagging,
    SplitBrainSuspected,
)
from proxy.health.states import BackendState, StateChange

log = logging.getLogger(__name__)

# States in which the master can no longer be counted on: MasterLost fires on entry.
_MASTER_LOST_STATES = (BackendState.SHUNNED, BackendState.OFFLINE_HARD)


class Role(StrEnum):
    MASTER = "master"
    REPLICA = "replica"


class TopologyError(ValueError):
    """A request the topology refuses: unknown or duplicate backend, fenced target, ..."""


@dataclass
class _Backend:
    name: str
    role: Role
    state: BackendState = BackendState.ONLINE  # detectors start ONLINE too
    # Last observation from the monitor; None = not observed since the last outage.
    read_only: bool | None = None
    replicating_from: str | None = None
    lag_s: float | None = None
    master_epoch: int | None = None  # last epoch in which this backend was master


# Pickled to worker processes: a native (compiled) frozen dataclass cannot be unpickled.
@mypyc_attr(native_class=False)
@dataclass(frozen=True)
class BackendView:
    name: str
    role: Role
    state: BackendState
    epoch: int | None  # last epoch in which this backend was master; None if never
    fenced: bool
    read_only: bool | None
    replicating_from: str | None
    lag_s: float | None


# Pickled to worker processes: a native (compiled) frozen dataclass cannot be unpickled.
@mypyc_attr(native_class=False)
@dataclass(frozen=True)
class TopologySnapshot:
    """What the admin port shows. Backends in configuration order."""

    epoch: int
    master: str | None
    writable_master: str | None
    backends: tuple[BackendView, ...]
    epoch_started_at: float
    taken_at: float


class Topology:
    def __init__(
        self,
        backends: Iterable[tuple[str, Role | str]],
        bus: EventBus,
        clock: Callable[[], float],
    ) -> None:
        self._bus = bus
        self._clock = clock
        self._backends: dict[str, _Backend] = {}
        # Keyed by name and kept across remove_backend/add_backend: a config reload must
        # not launder an old master back into a writer.
        self._fenced: set[str] = set()
        self._epoch = 1
        self._epoch_started_at = clock()
        self._master: str | None = None
        self._readable: list[str] | None = None  # readable_replicas() cache
        self._alarm: tuple[str, ...] = ()  # last SplitBrainSuspected sent, to send once
        for name, hint in backends:
            role = Role(hint)
            if name in self._backends:
                raise TopologyError(f"backend {name!r} listed twice")
            if role is Role.MASTER:
                if self._master is not None:
                    raise TopologyError(
                        f"two backends hinted as master: {self._master!r} and {name!r}"
                    )
                self._master = name
            self._backends[name] = _Backend(
                name, role, master_epoch=self._epoch if role is Role.MASTER else None
            )

    # -- queries ------------------------------------------------------------------------

    @property
    def master(self) -> str | None:
        """Master of the current epoch, whatever its state. Route writes by writable_master()."""
        return self._master

    @property
    def epoch(self) -> int:
        return self._epoch

    def writable_master(self) -> str | None:
        """Where writes may go now: the master of this epoch if its state allows writes.

        Never a fenced node. None means writes must wait (or fail) until a promotion.
        """
        name = self._master
        if name is None or name in self._fenced:
            return None
        return name if self._backends[name].state.accepts_writes else None

    def backends(self) -> list[str]:
        return list(self._backends)

    def replicas(self) -> list[str]:
        """Every backend that is not the master, in configuration order."""
        return [n for n, b in self._backends.items() if b.role is Role.REPLICA]

    def readable_replicas(self) -> list[str]:
        """(cached: asked for every read; recomputed only after a change)"""
        cached = self._readable
        if cached is None:
            cached = self._readable = self._compute_readable()
        return cached

    def _compute_readable(self) -> list[str]:
        """Replicas that may take new reads: ONLINE (not LAGGING, SHUNNED, OFFLINE_*).

        A fenced old master qualifies only once it has been seen rejoined: read_only=1
        and replicating from the current master. Until then its data may hold
        transactions the new master never had.
        """
        return [
            n
            for n, b in self._backends.items()
            if b.role is Role.REPLICA
            and b.state.accepts_reads
            and (n not in self._fenced or self._rejoined(b))
        ]

    def state(self, name: str) -> BackendState:
        return self._get(name).state

    def role(self, name: str) -> Role:
        return self._get(name).role

    def is_fenced(self, name: str) -> bool:
        return name in self._fenced

    def observed_promotion_candidate(self) -> str | None:
        """Follow mode: a promotion someone else made, seen through read_only.

        A replica (not fenced, up) that says read_only=0 and replicates from nobody,
        while the current master is SHUNNED/OFFLINE_*, read-only, fenced or unknown.
        Exactly one such node is needed; two would be a split brain, so None.
        The caller then calls promote(name, source="observed").
        """
        master = self._master
        if master is not None and master not in self._fenced:
            m = self._backends[master]
            if m.state.accepts_writes and m.read_only is not True:
                return None
        candidates = [
            n
            for n, b in self._backends.items()
            if n != master
            and n not in self._fenced
            and b.state.is_up
            and b.read_only is False
            and b.replicating_from is None
        ]
        return candidates[0] if len(candidates) == 1 else None

    def snapshot(self) -> TopologySnapshot:
        return TopologySnapshot(
            epoch=self._epoch,
            master=self._master,
            writable_master=self.writable_master(),
            backends=tuple(
                BackendView(
                    name=b.name,
                    role=b.role,
                    state=b.state,
                    epoch=b.master_epoch,
                    fenced=b.name in self._fenced,
                    read_only=b.read_only,
                    replicating_from=b.replicating_from,
                    lag_s=b.lag_s,
                )
                for b in self._backends.values()
            ),
            epoch_started_at=self._epoch_started_at,
            taken_at=self._clock(),
        )

    # -- inputs -------------------------------------------------------------------------

    def apply_state_change(self, name: str, change: StateChange) -> None:
        """Take a FailureDetector verdict and publish what it means.

        Order: BackendStateChanged, then BackendDown/BackendUp, then
        ReplicaLagging/ReplicaCaughtUp, then MasterLost.
        """
        self._readable = None
        b = self._get(name)
        old, new = b.state, change.new
        if change.lag_s is not None:
            b.lag_s = change.lag_s
        if new is old:
            return
        b.state = new
        if new is BackendState.SHUNNED:
            # Probes fail, so whatever we saw before is stale. In particular the old
            # master's pre-crash read_only=0 must not count as a claim to write.
            b.read_only = None
            b.replicating_from = None
        publish = self._bus.publish
        publish(BackendStateChanged(name, old, new, change.reason))
        if old.is_up and not new.is_up:
            publish(BackendDown(name, change.reason))
        elif new.is_up and not old.is_up:
            publish(BackendUp(name))
        if new is BackendState.LAGGING:
            publish(ReplicaLagging(name, change.lag_s))
        elif old is BackendState.LAGGING and new is BackendState.ONLINE:
            publish(ReplicaCaughtUp(name))
        if name == self._master and new in _MASTER_LOST_STATES and old not in _MASTER_LOST_STATES:
            publish(MasterLost(name, self._epoch))
        self._check_split_brain()

    def observe(
        self,
        name: str,
        read_only: bool,
        replicating_from: str | None,
        *,
        lag_s: float | None = None,
    ) -> None:
        """Record what the monitor saw on `name`.

        `replicating_from` is the backend name its replication points at (the monitor
        maps Master_Host:Master_Port to a name), None when it replicates from nobody.
        Publishes SplitBrainSuspected when a node other than the writable master says
        read_only=0, or a fenced node does (once, until another writer joins).
        """
        self._readable = None
        b = self._get(name)
        b.read_only = read_only
        b.replicating_from = replicating_from
        if lag_s is not None:
            b.lag_s = lag_s
        self._check_split_brain()

    def promote(
        self,
        new: str,
        *,
        source: PromotionSource,
        old: str | None = None,
        epoch: int | None = None,
    ) -> MasterPromoted | None:
        """Make `new` the master of the next epoch; fence the master it replaces.

        Without `epoch` (a promotion decided here) the epoch goes up by one; promoting
        the current master again is a no-op (None). With `epoch` (learnt from Redis or
        another Baton) it is adopted only if higher than ours, else ignored as stale
        (None); an equal epoch naming another master is a conflict between instances
        and raises SplitBrainSuspected.

        `old` names the master being replaced as the source saw it; it is fenced too,
        with our own previous master. Promoting a fenced node raises TopologyError,
        except with a higher remote epoch: then the epoch is adopted anyway, so our
        previous master stops taking writes, but writable_master() stays None (writes
        wait) until a later promotion names a node that is not fenced.

        Publishes BackendFenced for each newly fenced node, then MasterPromoted.
        """
        self._readable = None
        if source not in PROMOTION_SOURCES:
            raise TopologyError(f"unknown promotion source {source!r}")
        target = self._get(new)
        if epoch is not None:
            if epoch < self._epoch or (epoch == self._epoch and new == self._master):
                log.info(
                    "ignoring stale promotion of %s at epoch %d (ours %d)", new, epoch, self._epoch
                )
                return None
            if epoch == self._epoch:
                log.warning(
                    "epoch %d claimed for %s, but it is %s's here", epoch, new, self._master
                )
                claimed = {new} if self._master is None else {self._master, new}
                self._bus.publish(SplitBrainSuspected(self._ordered(claimed)))
                return None
            next_epoch = epoch
        else:
            if new == self._master:
                return None
            if new in self._fenced:
                raise TopologyError(
                    f"{new!r} is fenced (it was master before epoch {self._epoch}); "
                    "it cannot be promoted again by this process"
                )
            next_epoch = self._epoch + 1
        if new in self._fenced:
            log.error("epoch %d names fenced node %s as master; writes will wait", next_epoch, new)

        previous = self._master
        to_fence = [n for n in dict.fromkeys((previous, old)) if n is not None and n != new]
        self._epoch = next_epoch
        self._epoch_started_at = self._clock()
        self._master = new
        target.role = Role.MASTER
        target.master_epoch = next_epoch
        for name in to_fence:
            if name in self._backends:
                self._backends[name].role = Role.REPLICA
            if name not in self._fenced:
                self._fenced.add(name)
                self._bus.publish(BackendFenced(name, next_epoch))
        event = MasterPromoted(previous, new, next_epoch, source)
        self._bus.publish(event)
        self._check_split_brain()
        return event

    def fence(self, name: str) -> bool:
        """Fence ``name`` as another process's topology says it is (a worker following the
        brain's); promote() fences the masters it replaces itself. True if it was not fenced."""
        self._get(name)
        if name in self._fenced or name == self._master:
            return False
        self._readable = None
        self._fenced.add(name)
        self._bus.publish(BackendFenced(name, self._epoch))
        self._check_split_brain()
        return True

    def unfence(self, name: str) -> bool:
        """Fencing ends: a former master that rejoined cleanly is an ordinary replica again.

        The caller has checked what fencing guards against: the node replicates from the
        master of this epoch, read-only, with no transaction the master lacks. From now on
        it is readable and may be promoted again. True if it was fenced.
        """
        self._get(name)
        if name not in self._fenced:
            return False
        if name == self._master:
            raise TopologyError(f"{name!r} is the master of epoch {self._epoch}; not unfenced")
        self._readable = None
        self._fenced.discard(name)
        self._check_split_brain()
        return True

    def add_backend(self, name: str, role: Role | str) -> None:
        """Config reload. A master hint is honoured only when there is no master: it is
        then a promotion (source "admin", next epoch). Otherwise promote() explicitly."""
        self._readable = None
        role = Role(role)
        if name in self._backends:
            raise TopologyError(f"backend {name!r} already exists")
        if role is Role.MASTER:
            if self._master is not None:
                raise TopologyError(
                    f"{self._master!r} is master of epoch {self._epoch}; add {name!r} as a "
                    "replica and promote it"
                )
            if name in self._fenced:
                raise TopologyError(f"{name!r} is fenced and cannot become master again")
        self._backends[name] = _Backend(name, Role.REPLICA)
        if role is Role.MASTER:
            self.promote(name, source="admin")

    def remove_backend(self, name: str) -> None:
        """Config reload. The current master cannot be removed: promote another first.
        Fencing outlives removal."""
        self._readable = None
        self._get(name)
        if name == self._master:
            raise TopologyError(
                f"{name!r} is master of epoch {self._epoch}; promote another backend first"
            )
        del self._backends[name]
        self._check_split_brain()

    # -- internals ----------------------------------------------------------------------

    def _get(self, name: str) -> _Backend:
        try:
            return self._backends[name]
        except KeyError:
            raise TopologyError(f"unknown backend {name!r}") from None

    def _rejoined(self, b: _Backend) -> bool:
        return (
            b.read_only is True and self._master is not None and b.replicating_from == self._master
        )

    def _ordered(self, names: set[str]) -> tuple[str, ...]:
        known = [n for n in self._backends if n in names]
        return tuple(known + sorted(names.difference(known)))

    def _check_split_brain(self) -> None:
        """Alarm when more than one node would take writes, or a fenced node would.

        The writable master counts unless it was seen read-only; any other node counts
        when it was seen read_only=0. Sent when a writer joins the set, not again while
        the same writers persist or some of them leave: an alarm, not a heartbeat.
        """
        writable = self.writable_master()
        writers = {
            n
            for n, b in self._backends.items()
            if (b.read_only is not True if n == writable else b.read_only is False)
        }
        if len(writers) >= 2 or writers & self._fenced:
            alarm = self._ordered(writers)
            is_news = not writers.issubset(self._alarm)
            self._alarm = alarm
            if is_news:
                log.warning("split brain suspected: writers %s at epoch %d", alarm, self._epoch)
                self._bus.publish(SplitBrainSuspected(alarm))
        else:
            self._alarm = ()
