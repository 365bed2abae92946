"""Changes of master: observed, told, or carried out here; fencing of the master replaced.

Baton learns of a new master in one of three ways, by [failover] mode:

- follow: someone else (Orchestrator, an operator) promotes; the monitor sees a replica
  turn writable while the master is lost or read-only, and Baton adopts it.
- auto: Baton promotes. A master is dead only when Baton's probes fail AND every
  reachable replica's IO thread has lost it too (a partition between Baton and a healthy
  master must not cause a failover). Then the replica that has received the most is
  promoted, the others are repointed to it by GTID, and the epoch goes up. A promotion
  made by someone else meanwhile is followed as in follow mode.
- manual: nothing moves until an operator says so. (With no master known at all, as when
  no backend is configured as master, the one writable server is adopted in every mode:
  that is discovery, not a change of master.)

In every mode Baton can be *told* (admin PROMOTE, `baton notify-promotion`, Redis): one
code path, `promote()`, which adopts a promotion made elsewhere. `switchover()` is the
planned change, with no transaction lost. A master that is replaced is fenced by the
Topology (never written to again); when it comes back it is set read_only and, with
auto_rejoin, made a replica of the new master if its history allows. Fencing ends once it
is seen replicating from the master with a history the master contains: an ordinary
replica again, which may be promoted (a DBA switching back after maintenance).

Several Baton instances (ClusterLink): the one holding the failover lease promotes. Every
step of a promotion is checked before it starts (the monitor account's grants on the
candidate) and a step that fails rolls back the earlier ones, in reverse order; then the
next candidate is tried, or the cluster is reported masterless and retried. The others
watch the lease: when it runs out before its holder's promotion arrives, one of them takes
over and resumes from what the servers say (proxy.health.takeover).

Every SQL statement goes through Monitor.execute; every step is logged on one line and
recorded in the Timeline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, cast

from proxy.backend import BackendError, QueryError
from proxy.config import BackendConfig, FailoverConfig
from proxy.health.election import (
    Choice,
    GtidError,
    Refusal,
    ReplicaStatus,
    choose_candidate,
    gtid_missing,
    master_confirmed_dead,
)
from proxy.health.events import (
    PROMOTION_SOURCES,
    BackendFenced,
    Event,
    EventBus,
    MasterLost,
    MasterPromoted,
    PromotionSource,
    SplitBrainSuspected,
)
from proxy.health.lease import LeaseHolder, LeaseUnavailable
from proxy.health.monitor import BackendHealth, Monitor, cancel_all
from proxy.health.privileges import capabilities_from_grants
from proxy.health.states import BackendState
from proxy.health.takeover import plan_resume
from proxy.health.timeline import PROMOTED, FailoverRecord, Timeline
from proxy.health.topology import Topology, TopologyError

log = logging.getLogger("baton.failover")

# Any one statement Baton runs during a failover (STOP SLAVE may wait for a running event).
STEP_TIMEOUT_S = 10.0
# While waiting for the replicas to agree the master is dead, re-read their IO threads this
# often; after CONFIRM_FAST_S (replicas notice within slave_net_timeout, 4 s as Orchestrator
# recommends) keep asking, more slowly, for as long as the master stays lost.
CONFIRM_FAST_PERIOD_S = 0.15
CONFIRM_SLOW_PERIOD_S = 1.0
CONFIRM_FAST_S = 10.0

# While another instance holds the failover lease, look at it this often. Its holder renews
# it while it works, so watching ends when it publishes or dies; this bounds the rest.
LEASE_POLL_S = 0.25
LEASE_WATCH_LIMIT_S = 120.0
# With the master lost and no candidate, look again this often (a privilege granted, a
# replica back); after an attempt that had to be rolled back, wait twice as long each time.
MASTERLESS_RETRY_S = 2.0
MASTERLESS_RETRY_MAX_S = 30.0
# A fenced former master that looks rejoined has its history compared at most this often.
UNFENCE_CHECK_S = 5.0

_LOST_STATES = (BackendState.SHUNNED, BackendState.OFFLINE_HARD)
_FIRST_RECORD_KIND = {"auto": "auto", "follow": "observed", "manual": "admin"}
# What a failover record waits for, in the modes where Baton does not promote by itself.
_WAITING_FOR = {
    "follow": "waiting for a promotion made elsewhere (mode follow); FAILOVER or "
    "SET FAILOVER MODE 'auto' lets Baton promote",
    "manual": "waiting for an operator (mode manual): FAILOVER [TO 'name'] promotes",
}
_ROLLED_BACK = "rolled back"

# Test-only fault point: BATON_TEST_CRASH_AFTER=set_writable makes the process exit (137, as
# after SIGKILL) right after it set a promotion target read_only=0, before it repointed
# anyone or published the promotion. tests/test_ha_takeover.py kills the lease holder so.
_CRASH_AFTER = os.environ.get("BATON_TEST_CRASH_AFTER", "")


def _crash_point(step: str) -> None:
    if _CRASH_AFTER == step:
        log.error("test_crash_point step=%s: exiting now (BATON_TEST_CRASH_AFTER)", step)
        logging.shutdown()
        os._exit(137)


class PromotionRefused(Exception):
    """A promotion or switchover Baton will not carry out; the message says why."""


class LeaseLost(PromotionRefused):
    """The failover lease ran out mid-promotion: another instance may be taking over."""


class FailoverLeaseLike(Protocol):
    """What the coordinator needs of the failover lease (proxy.health.lease.FailoverLease):
    held by one instance at a time, for the failover that creates one epoch. `acquire`
    answers False only while another instance holds it (that holder may have begun: the
    coordinator then resumes from the servers); it raises LeaseUnavailable when Redis
    cannot be asked."""

    async def acquire(self, epoch: int) -> bool: ...
    async def renew(self) -> bool: ...
    async def release(self) -> None: ...
    async def holder(self) -> LeaseHolder | None: ...


@dataclass(frozen=True)
class _Undo:
    """How to take back one promotion step: `sql` on `backend` (None: only by hand)."""

    backend: str
    sql: str | None
    shown: str | None = None


class FailoverCoordinator:
    def __init__(
        self,
        cfg: FailoverConfig,
        backends: Sequence[BackendConfig],
        topology: Topology,
        monitor: Monitor,
        bus: EventBus,
        *,
        clock: Callable[[], float] = time.monotonic,
        catch_up_timeout_s: float = 30.0,
        switchover_timeout_s: float = 5.0,
    ) -> None:
        self._cfg = cfg
        self._backends = {b.name: b for b in backends}
        self._topology = topology
        self._monitor = monitor
        self._bus = bus
        self._clock = clock
        self._catch_up_timeout_s = catch_up_timeout_s
        self._switchover_timeout_s = switchover_timeout_s
        self.timeline = Timeline(clock)
        # One change of master at a time: auto failover, told promotion, switchover.
        self._lock = asyncio.Lock()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unsubscribe: list[Callable[[], None]] = []
        self._split_brain: tuple[str, ...] | None = None
        self._last_auto_at: float | None = None
        self._promoting: FailoverRecord | None = None  # record our own promote() call fills
        self._busy: set[str] = set()  # backends with a fence/rejoin/repoint in flight
        self._adopting = False
        self._warned: set[tuple[str, str]] = set()  # (backend, problem) logged once
        # Taken before an automatic failover: several Baton instances, one performs it
        # (ClusterLink's FailoverLease). None: this instance is alone.
        self.lease: FailoverLeaseLike | None = None
        self._holding_lease = False
        self._suspended: set[int] = set()  # records told "suspended" (said once each)
        self._failing_over: set[str] = set()  # masters an automatic failover is replacing
        self._masterless_cause: str | None = None
        self._retry_delay = MASTERLESS_RETRY_S
        self._fence_notes: dict[str, str] = {}  # fenced backend -> why it stays fenced
        self._unfence_checked: dict[str, float] = {}
        # Failovers an operator ordered (record id -> target or None, source): carried out
        # in any mode, past the anti-flap interval.
        self._ordered: dict[int, tuple[str | None, PromotionSource]] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._unsubscribe = [
            self._bus.subscribe(self._on_event),
            self._monitor.on_sample(self._on_sample),
        ]

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        await cancel_all(list(self._tasks))

    def update(self, cfg: FailoverConfig, backends: Sequence[BackendConfig]) -> None:
        """Config reload. A new mode applies to the next event, and to the present: a
        switch to auto while the master is already lost starts the failover now."""
        old_mode = self._cfg.mode
        if cfg.mode != old_mode:
            log.info("failover_mode old=%s new=%s", old_mode, cfg.mode)
        self._cfg = cfg
        self._backends = {b.name: b for b in backends}
        self._warned.clear()
        if cfg.mode == "auto" and old_mode != "auto":
            self._fail_over_lost_master()

    def set_mode(self, mode: str) -> None:
        """The admin's SET FAILOVER MODE: like a reload changing only [failover] mode (the
        next reload or restart applies the file's mode again)."""
        if mode not in _FIRST_RECORD_KIND:
            raise PromotionRefused(f"unknown failover mode {mode!r}: auto, follow or manual")
        self.update(replace(self._cfg, mode=mode), list(self._backends.values()))

    def _fail_over_lost_master(self) -> None:
        master = self._topology.master
        if master is None or self._topology.state(master) not in _LOST_STATES:
            return
        rec = self.timeline.open_record(old=master) or self.timeline.open("auto", master)
        self._step(rec, f"mode auto while {master} is lost: failing over now", logging.WARNING)
        self._spawn(self._auto_failover(rec, master))

    # -- state the router and the admin port read ---------------------------------------------

    @property
    def mode(self) -> str:
        return self._cfg.mode

    @property
    def split_brain(self) -> tuple[str, ...] | None:
        """Nodes taking writes beside (or instead of) the master of this epoch, or None.

        An alarm: writes still go only to the master of the current epoch; the router
        holds them while this is set.
        """
        return self._split_brain

    @property
    def masterless(self) -> str | None:
        """Why there is no master and no promotion under way, or None. An alarm: the last
        automatic failover found no candidate or had to roll back (it is retried)."""
        return self._masterless_cause

    def backend_note(self, name: str) -> str | None:
        """What an operator should know about `name` beyond its state (SHOW BACKENDS)."""
        topo = self._topology
        if name == topo.master and self._masterless_cause is not None:
            return f"masterless: {self._masterless_cause}"
        if name in topo.backends() and topo.is_fenced(name):
            return "fenced: " + self._fence_notes.get(
                name, "not yet seen replicating from the master with a history it contains"
            )
        return None

    @property
    def switchover_in_progress(self) -> bool:
        """The router holds writes while this is True: the old master is read-only."""
        return not self._idle.is_set()

    async def wait_idle(self) -> None:
        """Returns once no switchover is in progress (whatever its outcome)."""
        await self._idle.wait()

    # -- told: admin PROMOTE, notify-promotion, Redis ------------------------------------------

    async def promote(
        self,
        name: str,
        *,
        source: str,
        old: str | None = None,
        epoch: int | None = None,
    ) -> FailoverRecord:
        """Adopt a promotion someone else made: `name` is master from now on.

        No SQL on the servers, except fencing the replaced master read_only if it is
        reachable. The target must be a known backend, not fenced, reachable, writable
        (read_only=0) and no longer replicating; otherwise PromotionRefused says why.
        With `epoch` (learnt from another Baton through Redis) the decision was taken
        elsewhere: problems are logged, the Topology decides whether the epoch is news, but
        one the servers contradict (`_denied_by_servers`) is refused.
        """
        if source not in PROMOTION_SOURCES:
            raise PromotionRefused(f"unknown promotion source {source!r}")
        async with self._lock:
            return await self._adopt(name, cast(PromotionSource, source), old, epoch)

    async def _adopt(
        self, name: str, source: PromotionSource, old: str | None, epoch: int | None
    ) -> FailoverRecord:
        topo = self._topology
        if name not in topo.backends():
            raise PromotionRefused(f"unknown backend {name!r}")
        previous = topo.master
        if epoch is None and name == previous:
            return self._unrecorded(source, name, "unchanged: already master")
        if epoch is not None and epoch <= topo.epoch:
            topo.promote(name, source=source, old=old, epoch=epoch)  # logs, or alarms a conflict
            return self._unrecorded(source, name, f"ignored: epoch {epoch} is not newer")
        problem = await self._why_not_writable(name)
        if problem is not None:
            if epoch is not None and (denied := await self._denied_by_servers(name, problem)):
                log.warning("promotion_refused backend=%s epoch=%d source=%s reason=%r",
                            name, epoch, source, denied)
                raise PromotionRefused(denied)
            if epoch is None:
                log.warning(
                    "promotion_refused backend=%s source=%s reason=%r", name, source, problem
                )
                raise PromotionRefused(problem)
            log.warning(
                "promotion_adopted_anyway backend=%s epoch=%d source=%s concern=%r",
                name,
                epoch,
                source,
                problem,
            )
        # A record opened when the master was lost is completed by this promotion.
        rec = self.timeline.open_record(old=previous) or self.timeline.open(source, old or previous)
        self._step(
            rec, f"{source} promotion of {name} adopted" + (f" at epoch {epoch}" if epoch else "")
        )
        try:
            self._publish_promotion(rec, name, source, old, epoch)
        except TopologyError as e:
            self._step(rec, f"topology refused the promotion: {e}", logging.ERROR)
            raise PromotionRefused(str(e)) from None
        for replaced in dict.fromkeys((previous, old)):
            if replaced is not None and replaced != name and replaced in topo.backends():
                await self._handle_return(replaced, rec)
        return rec

    def _unrecorded(self, source: str, name: str, outcome: str) -> FailoverRecord:
        """The answer to a promotion that changes nothing: not kept in the timeline."""
        return FailoverRecord(
            id=0,
            kind=source,
            old=name,
            detected_at=self._clock(),
            new=name,
            epoch=self._topology.epoch,
            outcome=outcome,
        )

    async def _why_not_writable(self, name: str) -> str | None:
        if self._topology.is_fenced(name):
            return (
                f"{name} is fenced: it was master before epoch {self._topology.epoch} and may "
                "hold transactions the others lack"
            )
        asked = self._clock()
        h = await self._monitor.probe_now(name)
        if not h.alive:
            return f"{name} is unreachable ({h.last_error})"
        if h.replication_checked_at is None or h.replication_checked_at < asked:
            return f"could not read {name}'s state ({h.last_error})"
        if h.read_only is not False:
            return f"{name} has read_only=1: make it writable first, or use a switchover"
        if h.io_running or h.sql_running:
            return f"{name} still replicates from {h.master_name or f'{h.master_host}:{h.master_port}'}"
        return None

    async def _denied_by_servers(self, name: str, problem: str) -> str | None:
        """Why a promotion told from elsewhere contradicts the servers, or None.

        A message alone must never fence a healthy master: if `name` is not writable and
        detached (`problem`) while the current master answers and takes writes, the message is
        wrong (forged, stale or mistaken) and adopting it would set that master read_only.
        """
        master = self._topology.master
        if master is None or master == name:
            return None
        h = await self._monitor.probe_now(master)
        if not h.alive or h.read_only is not False:
            return None
        return f"servers contradict it: {problem}, while master {master} is healthy and writable"

    # -- planned -------------------------------------------------------------------------------

    async def switchover(self, to: str) -> FailoverRecord:
        """Planned change of master to `to`, losing nothing.

        The old master goes read_only (the router holds writes meanwhile), `to` applies
        everything the old master wrote, becomes writable, the other replicas and the old
        master are repointed to it, then the epoch goes up. If `to` does not catch up in
        time the old master is made writable again and nothing else changes.
        """
        async with self._lock:
            old = self._topology.master
            self._check_switchover(old, to)
            assert old is not None
            rec = self.timeline.open("switchover", old)
            self._idle.clear()
            undo: list[_Undo] = []
            try:
                self.timeline.decided(rec, to)
                self._step(rec, f"switchover {old} -> {to} started")
                semi = self._semi_sync_wanted(old)
                await self._sql(rec, old, "SET GLOBAL read_only = 1")
                undo.append(_Undo(old, "SET GLOBAL read_only = 0"))
                try:
                    pos = await self._value(old, "SELECT @@gtid_binlog_pos")
                    self._step(rec, f"{old} read-only at {pos or 'empty position'}")
                    await self._wait_applied(rec, to, pos, self._switchover_timeout_s)
                except (PromotionRefused, BackendError, QueryError) as e:
                    self._step(rec, f"{to} did not catch up: {e}; {old} made writable again")
                    await self._roll_back(rec, undo)
                    self.timeline.finish(rec, "failed: target did not catch up", str(e))
                    raise PromotionRefused(
                        f"switchover aborted, {old} is master again: {e}"
                    ) from None
                await self._take_writes(rec, to, semi, undo, replicated_from=old)
                undo.clear()  # `to` takes writes: from here on, forward only
                await self._repoint(rec, self._other_replicas(to, old), to, semi)
                try:
                    await self._follow(rec, old, to, former_master=True, semi=semi)
                except (BackendError, QueryError) as e:
                    self._step(rec, f"could not make {old} a replica of {to}: {e}", logging.ERROR)
                self._publish_promotion(rec, to, "switchover", old, None)
                return rec
            except (BackendError, QueryError) as e:
                self._step(rec, f"switchover failed: {e}", logging.ERROR)
                self.timeline.finish(rec, "failed", str(e))
                await self._roll_back(rec, undo)  # nothing left once `to` took writes
                raise PromotionRefused(f"switchover failed: {e}") from None
            finally:
                self._idle.set()

    def _check_switchover(self, old: str | None, to: str) -> None:
        topo = self._topology
        if to not in topo.backends():
            raise PromotionRefused(f"unknown backend {to!r}")
        if old is None or topo.writable_master() != old:
            raise PromotionRefused("no writable master to switch over from; use PROMOTE")
        if to == old:
            raise PromotionRefused(f"{to} is already the master")
        if topo.is_fenced(to):
            raise PromotionRefused(f"{to} is fenced and cannot become master again")
        if not self._cfg.replication_user:
            raise PromotionRefused(
                "a switchover makes the old master a replica: set [failover] replication_user"
            )
        h = self._monitor.health(to)
        if not h.alive:
            raise PromotionRefused(f"{to} is unreachable ({h.last_error})")
        if h.master_name != old or not (h.io_running and h.sql_running):
            raise PromotionRefused(f"{to} is not replicating from {old}")
        limit_s = self._backends[to].max_replication_lag_ms / 1000 if to in self._backends else 1.0
        if h.lag_s is None or h.lag_s > limit_s:
            raise PromotionRefused(f"{to} lags ({h.lag_s} s, limit {limit_s:g} s): try again later")

    # -- events and samples --------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if isinstance(event, MasterLost):
            self._on_master_lost(event)
        elif isinstance(event, MasterPromoted):
            rec = (
                self._promoting
                or self.timeline.open_record(old=event.old)
                or self.timeline.open(event.source, event.old)
            )
            self.timeline.promoted(rec, event.new, event.epoch, event.source)
            self._step(rec, f"{event.new} is master of epoch {event.epoch} ({event.source})")
            if self._masterless_cause is not None:
                log.info("cluster_master_again new=%s epoch=%d", event.new, event.epoch)
            self._masterless_cause = None
            self._retry_delay = MASTERLESS_RETRY_S
        elif isinstance(event, SplitBrainSuspected):
            self._split_brain = event.writers
            log.error(
                "split_brain_suspected writers=%s epoch=%d master=%s "
                "action=writes_only_to_master_of_epoch",
                ",".join(event.writers),
                self._topology.epoch,
                self._topology.master,
            )
        elif isinstance(event, BackendFenced):
            log.warning("backend_fenced backend=%s epoch=%d", event.name, event.epoch)

    def _on_master_lost(self, event: MasterLost) -> None:
        if event.epoch != self._topology.epoch or event.name != self._topology.master:
            return
        mode = self._cfg.mode
        rec = self.timeline.open(_FIRST_RECORD_KIND.get(mode, mode), event.name)
        self._step(
            rec, f"master {event.name} lost at epoch {event.epoch} (mode {mode})", logging.WARNING
        )
        if mode == "auto":
            self._spawn(self._auto_failover(rec, event.name))
        elif mode in _WAITING_FOR:
            self._step(rec, _WAITING_FOR[mode])

    def _on_sample(self, h: BackendHealth) -> None:
        topo = self._topology
        self._recheck_split_brain()
        if h.name not in topo.backends():
            return
        if h.name == topo.master and h.alive:
            self._close_if_master_back(h.name)
        follows = self._cfg.mode in ("follow", "auto") or topo.master is None
        # While an automatic failover replaces this master, a replica turning writable is
        # that failover's doing (ours, or another instance's under the lease): its event, or
        # our takeover (which adopts a writable detached replica), settles it.
        failing_over = topo.master in self._failing_over
        if follows and not failing_over and not self._lock.locked() and not self._adopting:
            candidate = topo.observed_promotion_candidate()
            if candidate is not None:
                self._adopting = True  # now, not when the task starts: one adoption at a time
                self._spawn(self._adopt_observed(candidate))
        if not h.alive or h.name in self._busy or self._lock.locked():
            return
        if topo.is_fenced(h.name):
            if self._looks_rejoined(h):
                self._busy.add(h.name)  # now, not when the task starts: one check at a time
                self._spawn(self._consider_unfencing(h.name))
            elif self._needs_fencing(h) or self._needs_rejoin(h):
                self._spawn(self._handle_return(h.name))
        elif (
            self._cfg.mode == "auto"
            and h.master_name is not None
            and topo.is_fenced(h.master_name)
            and topo.writable_master() is not None
            and topo.state(h.name) is not BackendState.OFFLINE_HARD
        ):
            # A replica that was down during the failover still points at the old master.
            self._spawn(self._repoint_stray(h.name))

    def _close_if_master_back(self, master: str) -> None:
        """A record waiting (follow/manual mode) for a master that answers again is over:
        it must not stay "in progress" with a reason that no longer holds."""
        rec = self.timeline.open_record(old=master)
        if (
            rec is None
            or rec.id in self._ordered
            or rec.decided_at is not None
            or self._cfg.mode == "auto"  # the automatic failover closes its own record
            or self._topology.state(master) in _LOST_STATES
        ):
            return
        self._step(rec, f"{master} answers again: nothing to do")
        self.timeline.finish(rec, "cancelled: master came back")

    def _recheck_split_brain(self) -> None:
        if self._split_brain is None:
            return
        writers = [h.name for h in self._monitor.all_health() if h.alive and h.read_only is False]
        fenced = [
            n for n in writers if n in self._topology.backends() and self._topology.is_fenced(n)
        ]
        if len(writers) < 2 and not fenced:
            log.info("split_brain_resolved writers=%s", ",".join(writers) or "-")
            self._split_brain = None

    def _looks_rejoined(self, h: BackendHealth) -> bool:
        """A fenced node replicating read-only from the writable master, due a history check."""
        master = self._topology.writable_master()
        last = self._unfence_checked.get(h.name)
        return (
            master is not None
            and h.read_only is True
            and h.master_name == master
            and h.io_running
            and h.sql_running
            and (last is None or self._clock() - last >= UNFENCE_CHECK_S)
        )

    async def _consider_unfencing(self, name: str) -> None:
        """Fencing ends for a former master that rejoined cleanly: its whole GTID history
        is in the master's. One that diverged stays fenced, and SHOW BACKENDS says why."""
        try:
            self._unfence_checked[name] = self._clock()
            master = self._topology.writable_master()
            h = await self._monitor.probe_now(name)
            if master is None or not (h.read_only is True and h.master_name == master):
                return
            mine, theirs = await self._histories(name, master)
            try:
                missing = gtid_missing(theirs, mine)
            except GtidError as e:
                missing = [f"unreadable history ({e})"]
            rec = self.timeline.latest_for_old(name)
            if missing:
                note = f"diverged: has {', '.join(missing)} that {master} lacks"
                if self._fence_notes.get(name) != note:
                    self._fence_notes[name] = note
                    self._step(rec, f"{name} stays fenced: {note}", logging.ERROR)
                return
            if self._topology.writable_master() == master and self._topology.unfence(name):
                self._fence_notes.pop(name, None)
                self._unfence_checked.pop(name, None)
                self._step(
                    rec,
                    f"fencing of {name} ended: it replicates from {master}, which holds its "
                    "whole history; an ordinary replica again",
                    logging.WARNING,
                )
        except (BackendError, QueryError, TopologyError) as e:
            log.warning("unfence_check_failed backend=%s reason=%r", name, str(e))
        finally:
            self._busy.discard(name)

    async def _adopt_observed(self, candidate: str) -> None:
        try:
            await self.promote(candidate, source="observed", old=self._topology.master)
        except PromotionRefused as e:
            key = (candidate, str(e))
            if key not in self._warned:
                self._warned.add(key)
                log.warning(
                    "observed_promotion_not_adopted backend=%s reason=%r", candidate, str(e)
                )
        finally:
            self._adopting = False

    # -- ordered by an operator: admin FAILOVER, `baton failover` ------------------------------

    async def failover(self, to: str | None = None, *, source: str = "admin") -> FailoverRecord:
        """Fail over a lost master now, in any mode (MaxScale's `failover`).

        The same steps as an automatic failover: the election (restricted to `to` if
        given, which must still have received all any live replica has), the relay-log
        wait, repointing, fencing and the timeline; not held back by min_interval_s.
        A master the operator set OFFLINE_HARD counts as lost even if it answers: its
        replicas stop receiving from it first, and it is fenced read_only after.
        PromotionRefused says why not: the master answers (a planned change is a
        SWITCHOVER), a replica still receives from it, or no candidate qualifies.
        """
        if source not in PROMOTION_SOURCES:
            raise PromotionRefused(f"unknown promotion source {source!r}")
        old = self._topology.master
        self._check_failover(old, to)
        assert old is not None
        taken_out = self._taken_out_alive(old)
        if not taken_out:
            await self._check_replicas_lost(old)
        rec = self.timeline.open_record(old=old) or self.timeline.open("admin", old)
        self._ordered[rec.id] = (to, cast(PromotionSource, source))
        self._step(
            rec,
            f"{source} ordered a failover of {old}" + (f" to {to}" if to else ""),
            logging.WARNING,
        )
        try:
            if taken_out:
                await self._detach_replicas(rec, old)
            await self._auto_failover(rec, old)
        finally:
            self._ordered.pop(rec.id, None)
        if rec.outcome != PROMOTED:
            why = rec.error or rec.outcome
            if not rec.finished:
                why = rec.steps[-1][1] if rec.steps else "not carried out"
            raise PromotionRefused(f"failover of {old} not done: {why}")
        return rec

    def _check_failover(self, old: str | None, to: str | None) -> None:
        topo = self._topology
        if old is None:
            raise PromotionRefused("no master is known: PROMOTE 'name' adopts a writable server")
        state = topo.state(old)
        if state not in _LOST_STATES:
            raise PromotionRefused(
                f"master {old} is alive ({state}): use SWITCHOVER TO 'name' for a planned change"
            )
        if to is None:
            return
        if to not in topo.backends():
            raise PromotionRefused(f"unknown backend {to!r}")
        if to == old:
            raise PromotionRefused(f"{to} is the master being replaced")
        if topo.is_fenced(to):
            raise PromotionRefused(f"{to} is fenced and cannot become master again")
        backend = self._backends.get(to)
        if backend is not None and not backend.promotable:
            raise PromotionRefused(f"{to} has promotable = false")
        h = self._monitor.health(to)
        if not h.alive:
            raise PromotionRefused(f"{to} is unreachable ({h.last_error})")

    def _taken_out_alive(self, old: str) -> bool:
        """The operator set the master OFFLINE_HARD while it still answers."""
        return (
            self._topology.state(old) is BackendState.OFFLINE_HARD
            and self._monitor.health(old).alive
        )

    async def _detach_replicas(self, rec: FailoverRecord, old: str) -> None:
        """Stop the replicas receiving from a master the operator took out: their positions
        stay put for the election, and the IO threads report it lost."""
        for h in self._monitor.all_health():
            if h.name != old and h.alive and h.master_name == old and h.io_running:
                await self._sql(rec, h.name, "STOP SLAVE IO_THREAD")

    async def _check_replicas_lost(self, old: str) -> None:
        """Refuse while a replica still receives from `old`: it is alive for them, and
        Baton alone losing it is a network problem, not a dead master."""
        asked = self._clock()
        names = [n for n in self._monitor.backends() if n != old]
        healths = await asyncio.gather(*(self._monitor.probe_now(n) for n in names))
        connected = [h.name for h in healths if _io_opinion(h, old, asked)]
        if connected:
            raise PromotionRefused(
                f"{', '.join(connected)} still replicate(s) from {old}: it is alive for them; "
                "fix Baton's path to it, or use SWITCHOVER once it answers"
            )

    def _acting(self, rec: FailoverRecord) -> bool:
        """Whether Baton carries out the failover of `rec`: auto mode, or an operator said so."""
        return self._cfg.mode == "auto" or rec.id in self._ordered

    def _candidates(self, rec: FailoverRecord) -> list[ReplicaStatus]:
        """The election's input; with an ordered target, only it may win."""
        statuses = self._monitor.replica_statuses()
        to = self._ordered.get(rec.id, (None, "admin"))[0]
        if to is None:
            return statuses
        return [replace(s, promotable=s.promotable and s.name == to) for s in statuses]

    def _source(self, rec: FailoverRecord) -> PromotionSource:
        return self._ordered[rec.id][1] if rec.id in self._ordered else "auto"

    # -- automatic failover ---------------------------------------------------------------------

    async def _auto_failover(self, rec: FailoverRecord, old: str) -> None:
        """Replace the lost master `old`: confirm it is dead, take the lease, promote.

        Another instance holding the failover lease is watched, not trusted forever: if its
        lease runs out before its promotion reaches us, this instance takes over and
        resumes from what the servers say. An attempt that finds no candidate, or whose
        steps fail and are rolled back, leaves the cluster masterless (alarm) and is retried
        while the master stays lost.
        """
        self._failing_over.add(old)
        try:
            if self._refused_by_anti_flap(rec):
                return
            if not await self._confirm_dead(rec, old):
                return
            took_over = False
            while True:
                async with self._lock:
                    if not self._still_to_do(rec, old) or self._refused_by_anti_flap(rec):
                        return
                    if await self._claim_lease(rec):
                        try:
                            await self._fail_over(rec, old, took_over=took_over)
                        finally:
                            await self._release_lease()
                        return
                took_over = True  # the lease was held: that holder may have begun
                if not await self._watch_lease(rec, old):
                    return
        except (PromotionRefused, BackendError, QueryError, TopologyError) as e:
            self._step(rec, f"failover failed: {e}", logging.ERROR)
            self.timeline.finish(rec, "failed", str(e))
        finally:
            self._failing_over.discard(old)

    def _still_to_do(self, rec: FailoverRecord, old: str) -> bool:
        """Whether the failover from `old` is still wanted; if not, the record says why."""
        topo = self._topology
        if topo.master != old or not self._acting(rec):
            self.timeline.finish(rec, "cancelled: master changed meanwhile")
            return False
        if topo.state(old) not in _LOST_STATES:
            self._step(rec, f"{old} answers again: no failover")
            self.timeline.finish(rec, "cancelled: master came back")
            return False
        return True

    async def _fail_over(self, rec: FailoverRecord, old: str, *, took_over: bool) -> None:
        """Holding the lease: resume what the servers show half-done, or elect and promote."""
        names = [n for n in self._monitor.backends() if n != old]
        healths = await asyncio.gather(*(self._monitor.probe_now(n) for n in names))
        topo = self._topology
        out = [
            n
            for n in topo.backends()
            if topo.is_fenced(n) or topo.state(n) is BackendState.OFFLINE_HARD
        ]
        plan = plan_resume(old, healths, out, took_over=took_over)
        semi = self._semi_sync_wanted(old)
        if plan.conflict is not None:
            self._masterless(rec, old, f"refused: {plan.conflict}", plan.conflict, retry=False)
            return
        resumed = plan.adopt or plan.finish
        if resumed is not None:
            await self._resume(rec, old, resumed, finish=plan.finish is not None, semi=semi)
            return
        for name in plan.restart:
            await self._sql(rec, name, "START SLAVE")
            self._step(rec, f"undid a stopped promotion: {name} replicates again")
        if plan.restart:  # the election reads their threads
            await asyncio.gather(*(self._monitor.probe_now(n) for n in plan.restart))
        tried: dict[str, str] = {}
        while True:
            choice = await self._elect(rec, old, tried, semi)
            if isinstance(choice, Refusal):
                rolled_back = any(why.startswith(_ROLLED_BACK) for why in tried.values())
                outcome = "failed: rolled back" if rolled_back else f"refused: {choice.reason}"
                self._masterless(rec, old, outcome, choice.reason, retry=True)
                return
            try:
                await self._promote_candidate(rec, old, choice, semi)
                return
            except LeaseLost:
                raise
            except (PromotionRefused, BackendError, QueryError) as e:
                tried[choice.name] = f"{_ROLLED_BACK} after: {e}"

    async def _resume(
        self, rec: FailoverRecord, old: str, new: str, *, finish: bool, semi: bool
    ) -> None:
        """Complete a promotion another instance began: `new` left replication already."""
        self.timeline.decided(rec, new)
        self._step(
            rec,
            f"resuming a promotion begun elsewhere: {new} "
            + ("left replication but is read-only: finishing it" if finish else "is writable"),
            logging.WARNING,
        )
        if finish:
            await self._confirm_lease(rec)
            await self._sql(rec, new, "SET GLOBAL read_only = 0")
            if semi:
                await self._sql(rec, new, "SET GLOBAL rpl_semi_sync_master_enabled = 1")
        others = [n for n in self._other_replicas(new, old) if not self._follows(n, new)]
        await self._repoint(rec, others, new, semi)
        await self._confirm_lease(rec)
        self._publish_promotion(rec, new, self._source(rec), old, None)
        self._last_auto_at = self._clock()

    async def _elect(
        self, rec: FailoverRecord | None, old: str, tried: dict[str, str], semi: bool
    ) -> Choice | Refusal:
        """The candidate choose_candidate picks among those not `tried` whose checks pass.

        A candidate the monitor account could not promote (SHOW GRANTS) is added to `tried`
        with the reason; the Refusal names every candidate set aside and why. With `rec`, an
        operator's FAILOVER TO restricts the candidates.
        """
        while True:
            candidates = self._candidates(rec) if rec else self._monitor.replica_statuses()
            statuses = [replace(s, promotable=False) if s.name in tried else s for s in candidates]
            choice = choose_candidate(statuses)
            if isinstance(choice, Refusal):
                if not tried:
                    return choice
                aside = "; ".join(f"{n}: {why}" for n, why in tried.items())
                return Refusal(f"{choice.reason} (set aside: {aside})")
            problem = await self._preflight(choice.name, old, semi)
            if problem is None:
                return choice
            tried[choice.name] = problem

    async def _preflight(self, name: str, old: str, semi: bool) -> str | None:
        """Why `name` cannot be promoted by this monitor account, before touching anything.

        Read on a fresh session, the one the steps then run on: a session keeps the global
        privileges it logged in with, so grants shown may differ from an older session's.
        """
        self._monitor.close_action_connection(name)
        try:
            version = await self._value(name, "SELECT @@version")
            shown = await self._monitor.execute(name, "SHOW GRANTS", STEP_TIMEOUT_S)
        except (BackendError, QueryError) as e:
            return f"could not read the monitor account's grants: {e}"
        grants = [(row[0] or b"").decode("utf-8", "replace") for row in shown.rows]
        caps = capabilities_from_grants(grants, version, semi_sync=semi)
        if not caps.promote:
            return f"the monitor account lacks {caps.missing_text('promote')}"
        user = self._cfg.replication_user
        if user and self._other_replicas(name, old):
            try:
                found = await self._value(
                    name, f"SELECT COUNT(*) FROM mysql.user WHERE User = {_quote(user)}"
                )
            except QueryError:
                return None  # cannot tell: the repoint will say
            if found == "0":
                return f"replication user {user!r} does not exist there: replicas could not follow"
        return None

    async def _promote_candidate(
        self, rec: FailoverRecord, old: str, choice: Choice, semi: bool
    ) -> None:
        """Promote `choice`; a step that fails rolls back the ones before it and raises."""
        new = choice.name
        self.timeline.decided(rec, new)
        self._step(rec, f"chose {new}: {choice.reason}")
        undo: list[_Undo] = []
        try:
            await self._sql(rec, new, "STOP SLAVE IO_THREAD")
            undo.append(_Undo(new, "START SLAVE"))
            received = await self._value(new, "SHOW SLAVE STATUS", column="Gtid_IO_Pos")
            await self._wait_applied(
                rec, new, _one_line(received) or choice.catch_up_to, self._catch_up_timeout_s
            )
            await self._confirm_lease(rec)
            await self._take_writes(rec, new, semi, undo, replicated_from=old)
        except (PromotionRefused, BackendError, QueryError) as e:
            self._step(rec, f"promotion of {new} failed: {e}; rolling back", logging.ERROR)
            await self._roll_back(rec, undo)
            raise
        await self._repoint(rec, self._other_replicas(new, old), new, semi)
        await self._confirm_lease(rec)
        self._publish_promotion(rec, new, self._source(rec), old, None)
        self._last_auto_at = self._clock()

    def _masterless(
        self, rec: FailoverRecord, old: str, outcome: str, cause: str, *, retry: bool
    ) -> None:
        """No master and no promotion: the alarm (log, record, SHOW BACKENDS, metric)."""
        self._masterless_cause = cause
        log.error("cluster_masterless old=%s cause=%r", old, cause)
        self._step(rec, f"no master: {cause}", logging.ERROR)
        self.timeline.finish(rec, outcome, cause)
        if retry:
            self._spawn(self._retry_while_masterless(old, cause))

    async def _retry_while_masterless(self, old: str, cause: str) -> None:
        """Look again every MASTERLESS_RETRY_S; fail over once a candidate passes its checks
        (a privilege granted, a replica back). Quiet while nothing changes."""
        topo = self._topology
        delay = self._retry_delay
        self._retry_delay = min(delay * 2, MASTERLESS_RETRY_MAX_S)
        while True:
            await asyncio.sleep(delay)
            delay = MASTERLESS_RETRY_S
            if (
                topo.master != old
                or self._cfg.mode != "auto"
                or topo.state(old) not in _LOST_STATES
            ):
                return
            if self._lock.locked() or old in self._failing_over:
                continue
            choice = await self._elect(None, old, {}, self._semi_sync_wanted(old))
            if isinstance(choice, Refusal):
                if choice.reason != cause:
                    cause = self._masterless_cause = choice.reason
                    log.error("cluster_masterless old=%s cause=%r", old, cause)
                continue
            rec = self.timeline.open("auto", old)
            self._step(rec, f"retrying the failover from {old}: {choice.name} passes its checks")
            await self._auto_failover(rec, old)
            return

    # -- the failover lease ---------------------------------------------------------------------

    async def _claim_lease(self, rec: FailoverRecord) -> bool:
        """Whether this instance performs the failover: it took the lease, or runs alone."""
        self._holding_lease = False
        lease = self.lease
        if lease is None:
            return True
        epoch = self._topology.epoch + 1
        try:
            if not await lease.acquire(epoch):
                return False
        except LeaseUnavailable as e:
            # Without Redis the instances cannot agree on who fails over: suspended (SHOW
            # CLUSTER says so) and tried again while the master stays lost.
            if rec.id not in self._suspended:
                self._suspended.add(rec.id)
                self._step(rec, f"automatic failover suspended: {e}", logging.WARNING)
            return False
        self._holding_lease = True
        self._step(rec, f"took the failover lease for epoch {epoch}")
        return True

    async def _confirm_lease(self, rec: FailoverRecord) -> None:
        """Before a step that cannot be taken back: still ours? LeaseLost if not."""
        if not self._holding_lease or self.lease is None:
            return
        try:
            if await self.lease.renew():
                return
        except LeaseUnavailable as e:
            self._step(rec, f"could not renew the failover lease ({e}): going on", logging.WARNING)
            return
        raise LeaseLost("the failover lease ran out or was taken: another instance takes over")

    async def _release_lease(self) -> None:
        if self._holding_lease and self.lease is not None:
            self._holding_lease = False
            await self.lease.release()

    async def _watch_lease(self, rec: FailoverRecord, old: str) -> bool:
        """Another instance holds the lease: wait for its promotion (False) or for the
        lease to be free without one (True: take it over)."""
        lease = self.lease
        assert lease is not None
        started = self._clock()
        seen: tuple[str, int] | None = None
        while self._still_to_do(rec, old):
            try:
                holder = await lease.holder()
            except LeaseUnavailable:
                holder = None  # taking it says what to do without Redis
            if holder is None:
                if seen is None:
                    # Gone already (or Redis away): try again, but not in a tight loop.
                    await asyncio.sleep(LEASE_POLL_S)
                else:
                    self._step(
                        rec,
                        f"lease of {seen[0]} ran out before its promotion reached us: taking over",
                        logging.WARNING,
                    )
                return True
            if seen != (holder.instance, holder.epoch):
                seen = (holder.instance, holder.epoch)
                self._step(
                    rec,
                    f"instance {holder.instance} holds the failover lease for epoch "
                    f"{holder.epoch}: watching it",
                )
            if self._clock() - started > LEASE_WATCH_LIMIT_S:
                why = f"{holder.instance} held the lease for {LEASE_WATCH_LIMIT_S:g}s without a promotion"
                self._step(rec, why, logging.ERROR)
                self.timeline.finish(rec, "failed: lease never released", why)
                return False
            await asyncio.sleep(LEASE_POLL_S)
        return False

    def _refused_by_anti_flap(self, rec: FailoverRecord) -> bool:
        if self._last_auto_at is None or rec.id in self._ordered:
            return False
        since = self._clock() - self._last_auto_at
        if since >= self._cfg.min_interval_s:
            return False
        why = (
            f"last automatic failover {since:.1f}s ago, min_interval_s={self._cfg.min_interval_s}: "
            "promote by hand if the master is really gone"
        )
        self._step(rec, f"failover refused: {why}", logging.ERROR)
        self.timeline.finish(rec, f"refused: {why}")
        return True

    async def _confirm_dead(self, rec: FailoverRecord, old: str) -> bool:
        """Wait until every reachable replica's IO thread has lost `old` too."""
        started = self._clock()
        waiting_said = False
        while True:
            if not self._still_to_do(rec, old):
                return False
            asked = self._clock()
            names = [n for n in self._monitor.backends() if n != old]
            healths = await asyncio.gather(*(self._monitor.probe_now(n) for n in names))
            opinions = [_io_opinion(h, old, asked) for h in healths]
            if master_confirmed_dead(True, opinions):
                lost = [h.name for h, o in zip(healths, opinions, strict=True) if o is False]
                self._step(rec, f"confirmed dead: replicas {', '.join(lost)} lost {old} too")
                return True
            if not waiting_said:
                waiting_said = True
                connected = [h.name for h, o in zip(healths, opinions, strict=True) if o]
                self._step(
                    rec,
                    "waiting for replicas to lose the master: "
                    + (
                        f"{', '.join(connected)} still connected"
                        if connected
                        else "no replica reachable"
                    ),
                )
            fast = self._clock() - started < CONFIRM_FAST_S
            await asyncio.sleep(CONFIRM_FAST_PERIOD_S if fast else CONFIRM_SLOW_PERIOD_S)

    # -- steps on the servers -------------------------------------------------------------------

    async def _wait_applied(self, rec: FailoverRecord, name: str, pos: str, timeout: float) -> None:
        """Until `name` has applied `pos` (MASTER_GTID_WAIT), or PromotionRefused."""
        if not pos:
            return
        result = await self._value(
            name,
            f"SELECT MASTER_GTID_WAIT({_quote(pos)}, {timeout:g})",
            timeout=timeout + STEP_TIMEOUT_S,
        )
        if result != "0":
            raise PromotionRefused(f"{name} did not apply {pos} within {timeout:g}s")
        self._step(rec, f"{name} has applied {pos}")

    async def _take_writes(
        self, rec: FailoverRecord, name: str, semi: bool, undo: list[_Undo], *, replicated_from: str
    ) -> None:
        """Make replica `name` the writable master; each step done is added to `undo`.

        RESET SLAVE ALL forgets the old master: undoing it means CHANGE MASTER TO back, which
        needs [failover] replication_user (without it the undo says what to do by hand).
        """
        await self._sql(rec, name, "STOP SLAVE")
        undo.append(_Undo(name, "START SLAVE"))
        await self._sql(rec, name, "RESET SLAVE ALL")
        undo.append(
            _Undo(name, *self._change_master(replicated_from))
            if self._cfg.replication_user
            else _Undo(name, None, f"make it a replica of {replicated_from} again")
        )
        await self._sql(rec, name, "SET GLOBAL read_only = 0")
        undo.append(_Undo(name, "SET GLOBAL read_only = 1"))
        _crash_point("set_writable")
        if semi:
            await self._sql(rec, name, "SET GLOBAL rpl_semi_sync_master_enabled = 1")
            undo.append(_Undo(name, "SET GLOBAL rpl_semi_sync_master_enabled = 0"))

    async def _roll_back(self, rec: FailoverRecord | None, undo: list[_Undo]) -> None:
        """Undo steps in reverse order, best effort; what cannot be undone is logged."""
        for step in reversed(undo):
            if step.sql is None:
                self._step(
                    rec, f"cannot undo on {step.backend}: {step.shown}; fix by hand", logging.ERROR
                )
                continue
            try:
                await self._sql(rec, step.backend, step.sql, shown=step.shown)
            except (BackendError, QueryError) as e:
                self._step(
                    rec,
                    f"undo failed, fix by hand: {step.backend}: {step.shown or step.sql}: {e}",
                    logging.ERROR,
                )
        undo.clear()

    async def _repoint(
        self, rec: FailoverRecord, names: list[str], master: str, semi: bool
    ) -> None:
        """Repoint replicas concurrently; one that fails does not stop the failover."""
        results = await asyncio.gather(
            *(self._follow(rec, n, master, former_master=False, semi=semi) for n in names),
            return_exceptions=True,
        )
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                self._step(rec, f"could not repoint {name} to {master}: {result}", logging.ERROR)

    async def _follow(
        self, rec: FailoverRecord | None, name: str, master: str, *, former_master: bool, semi: bool
    ) -> None:
        """Make `name` replicate from `master` by GTID.

        A former master's own transactions are in its binlog, not in gtid_slave_pos (which
        is stale from its replica days), so its slave position is first set to its binlog
        position: MariaDB's advice, rather than the deprecated MASTER_USE_GTID=current_pos.
        """
        statements: list[tuple[str, str | None]] = [("STOP SLAVE", None)]
        if former_master:
            statements.append(("SET GLOBAL read_only = 1", None))
            statements.append(("SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos", None))
        if semi:
            statements.append(("SET GLOBAL rpl_semi_sync_slave_enabled = 1", None))
        statements += [self._change_master(master), ("START SLAVE", None)]
        for sql, display in statements:
            await self._sql(rec, name, sql, shown=display)

    def _change_master(self, master: str) -> tuple[str, str]:
        """CHANGE MASTER TO `master` by GTID, and the same text with the password hidden.

        Without [failover] replication_user the server keeps the account it has (a former
        master, or a replica after RESET SLAVE ALL, has none).
        """
        target = self._backends[master]
        change = f"CHANGE MASTER TO MASTER_HOST={_quote(target.host)}, MASTER_PORT={target.port}"
        shown = change
        if self._cfg.replication_user:
            change += f", MASTER_USER={_quote(self._cfg.replication_user)}"
            shown = change + ", MASTER_PASSWORD='***'"
            change += f", MASTER_PASSWORD={_quote(self._cfg.replication_password)}"
        tail = ", MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1"
        return change + tail, shown + tail

    async def _handle_return(self, name: str, rec: FailoverRecord | None = None) -> None:
        """A fenced old master is reachable: read_only=1, and with auto_rejoin a replica."""
        if name in self._busy:
            return
        self._busy.add(name)
        try:
            rec = rec or self.timeline.latest_for_old(name)
            h = self._monitor.health(name)
            if not h.alive:
                if rec is not None:
                    self._step(rec, f"{name} unreachable: fenced when it comes back")
                return
            if self._needs_fencing(h):
                await self._sql(rec, name, "SET GLOBAL read_only = 1")
                self._step(rec, f"fenced {name}: read_only=1", logging.WARNING)
            if self._needs_rejoin(h):
                await self._rejoin(rec, name)
        except (BackendError, QueryError) as e:
            log.warning("fencing_failed backend=%s reason=%r", name, str(e))
        finally:
            self._busy.discard(name)

    def _needs_fencing(self, h: BackendHealth) -> bool:
        return self._cfg.fence_read_only and h.read_only is not True

    def _needs_rejoin(self, h: BackendHealth) -> bool:
        topo = self._topology
        return (
            self._cfg.auto_rejoin
            and topo.state(h.name) is not BackendState.OFFLINE_HARD
            and topo.writable_master() is not None
            and not (h.read_only is True and h.master_name == topo.master)
        )

    async def _rejoin(self, rec: FailoverRecord | None, name: str) -> None:
        master = self._topology.writable_master()
        if master is None:
            return
        if not self._cfg.replication_user:
            key = (name, "no replication_user")
            if key not in self._warned:
                self._warned.add(key)
                log.error(
                    "rejoin_impossible backend=%s reason=%r",
                    name,
                    "an old master has no replication account: set [failover] replication_user",
                )
            return
        if await self._diverged(rec, name, master):
            return
        await self._follow(rec, name, master, former_master=True, semi=self._semi_sync_wanted(name))
        self._step(rec, f"{name} rejoined as a replica of {master}")

    async def _repoint_stray(self, name: str) -> None:
        if name in self._busy:
            return
        self._busy.add(name)
        try:
            master = self._topology.writable_master()
            h = self._monitor.health(name)
            if master is None or h.master_name == master:
                return
            rec = self.timeline.latest_for_old(h.master_name) if h.master_name else None
            if await self._diverged(rec, name, master):
                return
            await self._follow(rec, name, master, former_master=False, semi=bool(h.semi_sync_slave))
            self._step(rec, f"{name} repointed from {h.master_name} to {master}")
        except (BackendError, QueryError) as e:
            log.warning("repoint_failed backend=%s reason=%r", name, str(e))
        finally:
            self._busy.discard(name)

    async def _diverged(self, rec: FailoverRecord | None, name: str, master: str) -> bool:
        """Whether `name` holds transactions `master` lacks; if so it is left OFFLINE_HARD."""
        mine, theirs = await self._histories(name, master)
        try:
            missing = gtid_missing(theirs, mine)
        except GtidError as e:
            missing, theirs = [f"unreadable history ({e})"], f"{theirs} ({e})"
        if not missing:
            return False
        self._fence_notes[name] = f"diverged: has {', '.join(missing)} that {master} lacks"
        self._monitor.set_admin_state(name, BackendState.OFFLINE_HARD)
        self._step(
            rec,
            f"{name} has transactions {master} lacks ({mine} vs {theirs}): left OFFLINE_HARD; "
            "rebuild it from the master or reconcile by hand, then set it ONLINE",
            logging.ERROR,
        )
        return True

    # -- helpers --------------------------------------------------------------------------------

    async def _histories(self, name: str, master: str) -> tuple[str, str]:
        """@@gtid_binlog_state of `name`, then of `master`. In that order: a replica that
        receives more between the two reads gets it from the master, whose later state
        then has it too, so a busy replica is never taken for a diverged one."""
        mine = await self._value(name, "SELECT @@gtid_binlog_state")
        theirs = await self._value(master, "SELECT @@gtid_binlog_state")
        return mine, theirs

    def _other_replicas(self, new: str, old: str) -> list[str]:
        """Live replicas to repoint: every reachable server with replication configured."""
        return [
            h.name
            for h in self._monitor.all_health()
            if h.name not in (new, old)
            and h.alive
            and h.is_replica
            and h.state is not BackendState.OFFLINE_HARD
        ]

    def _follows(self, name: str, master: str) -> bool:
        h = self._monitor.health(name)
        return h.master_name == master and h.io_running and h.sql_running

    def _semi_sync_wanted(self, old: str) -> bool:
        """Semi-sync carries over if the old master had it or any replica acknowledges."""
        healths = self._monitor.all_health()
        return any(
            (h.name == old and h.semi_sync_master)
            or (h.name != old and h.alive and h.semi_sync_slave)
            for h in healths
        )

    def _publish_promotion(
        self,
        rec: FailoverRecord,
        new: str,
        source: PromotionSource,
        old: str | None,
        epoch: int | None,
    ) -> MasterPromoted | None:
        self._promoting = rec
        try:
            return self._topology.promote(new, source=source, old=old, epoch=epoch)
        finally:
            self._promoting = None

    async def _sql(
        self,
        rec: FailoverRecord | None,
        backend: str,
        sql: str,
        *,
        shown: str | None = None,
        timeout: float = STEP_TIMEOUT_S,
    ) -> None:
        await self._monitor.execute(backend, sql, timeout)
        self._step(rec, f"{backend}: {shown or sql}")

    async def _value(
        self, backend: str, sql: str, *, column: str | None = None, timeout: float = STEP_TIMEOUT_S
    ) -> str:
        """The first row's first value (or `column`), "" when there is none."""
        result = await self._monitor.execute(backend, sql, timeout)
        if not result.rows:
            return ""
        if column is not None:
            return result.dicts()[0].get(column) or ""
        value = result.rows[0][0]
        return "" if value is None else value.decode()

    def _step(self, rec: FailoverRecord | None, text: str, level: int = logging.INFO) -> None:
        log.log(level, "failover_step failover=%s %s", rec.id if rec else "-", text)
        if rec is not None:
            self.timeline.step(rec, text)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("failover_task_failed", exc_info=task.exception())


def _io_opinion(h: BackendHealth, old: str, asked: float) -> bool | None:
    """Per master_confirmed_dead: True = IO thread connected to `old`, False = lost it,
    None = no opinion (unreachable, state not read since `asked`, or not its replica)."""
    if not h.alive or h.replication_checked_at is None or h.replication_checked_at < asked:
        return None
    if h.master_name != old:
        return None
    return h.io_state == "Yes"


def _one_line(gtids: str) -> str:
    return ",".join(part.strip() for part in gtids.split(",") if part.strip())


def _quote(text: str) -> str:
    """A SQL string literal (default sql_mode: backslash escapes)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
