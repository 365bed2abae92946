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

This module is the entry point: FailoverCoordinator owns the shared core and dispatches bus
events, monitor samples and operator calls to the runbooks in proxy.health.runbooks, one
module each: `adoption` (told or observed promotions), `switchover` (planned), `automatic`
(election, checks, promotion, rollback, masterless retry), `ordered` (an operator's
FAILOVER), `dead_master` (do the replicas agree), `lease_claim` (several instances),
`fencing` (the replaced master's return), `steps` (the SQL they are all made of).
"""


from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from proxy.config import BackendConfig, FailoverConfig
from proxy.health.events import (
    BackendFenced,
    Event,
    EventBus,
    MasterLost,
    MasterPromoted,
    SplitBrainSuspected,
)
from proxy.health.monitor import BackendHealth, Monitor, cancel_all
from proxy.health.runbooks.adoption import Adoption
from proxy.health.runbooks.automatic import AutomaticFailover
from proxy.health.runbooks.core import LOST_STATES, FailoverCore, PromotionRefused, log
from proxy.health.runbooks.dead_master import DeathCheck
from proxy.health.runbooks.fencing import Fencing
from proxy.health.runbooks.lease_claim import FailoverLeaseLike, LeaseClaim
from proxy.health.runbooks.ordered import OrderedFailover
from proxy.health.runbooks.steps import ServerSteps
from proxy.health.runbooks.switchover import Switchover
from proxy.health.timeline import FailoverRecord, Timeline
from proxy.health.topology import Topology

# Re-exported: callers catch PromotionRefused and type the lease from here.
__all__ = ["FailoverCoordinator", "FailoverLeaseLike", "PromotionRefused"]

_FIRST_RECORD_KIND = {"auto": "auto", "follow": "observed", "manual": "admin"}
# What a failover record waits for, in the modes where Baton does not promote by itself.
_WAITING_FOR = {
    "follow": "waiting for a promotion made elsewhere (mode follow); FAILOVER or "
    "SET FAILOVER MODE 'auto' lets Baton promote",
    "manual": "waiting for an operator (mode manual): FAILOVER [TO 'name'] promotes",
}


class FailoverCoordinator:
    """Changes of master for the process: what the app, the admin port and the cluster
    link call, and what the event bus and the monitor report to. Owns the shared core and
    the [failover] mode; each runbook does one kind of change."""

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
        self._core = core = FailoverCore(
            cfg, {b.name: b for b in backends}, topology, monitor, clock, Timeline(clock)
        )
        self.timeline = core.timeline
        self._bus = bus
        self._unsubscribe: list[Callable[[], None]] = []
        self._split_brain: tuple[str, ...] | None = None
        steps = ServerSteps(core)
        death = DeathCheck(core)
        self._fencing = Fencing(core, steps)
        self._adoption = Adoption(core, self._fencing)
        self._switchover = Switchover(core, steps, switchover_timeout_s)
        # Taken before an automatic failover: several Baton instances, one performs it.
        self._lease = LeaseClaim(core)
        self._automatic = AutomaticFailover(
            core,
            steps,
            self._lease,
            death,
            catch_up_timeout_s=catch_up_timeout_s,
            preflight=lambda name, old, semi: self._preflight(name, old, semi),
        )
        self._ordered = OrderedFailover(core, self._automatic, death)

    @property
    def lease(self) -> FailoverLeaseLike | None:
        """ClusterLink's FailoverLease; None: this instance is alone."""
        return self._lease.lease

    @lease.setter
    def lease(self, lease: FailoverLeaseLike | None) -> None:
        self._lease.lease = lease

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._unsubscribe = [
            self._bus.subscribe(self._on_event),
            self._core.monitor.on_sample(self._on_sample),
        ]

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        await cancel_all(list(self._core.tasks))

    def update(self, cfg: FailoverConfig, backends: Sequence[BackendConfig]) -> None:
        """Config reload. A new mode applies to the next event, and to the present: a
        switch to auto while the master is already lost starts the failover now."""
        core = self._core
        old_mode = core.cfg.mode
        if cfg.mode != old_mode:
            log.info("failover_mode old=%s new=%s", old_mode, cfg.mode)
        core.cfg = cfg
        core.backends = {b.name: b for b in backends}
        core.warned.clear()
        if cfg.mode == "auto" and old_mode != "auto":
            self._fail_over_lost_master()

    def set_mode(self, mode: str) -> None:
        """The admin's SET FAILOVER MODE: like a reload changing only [failover] mode (the
        next reload or restart applies the file's mode again)."""
        if mode not in _FIRST_RECORD_KIND:
            raise PromotionRefused(f"unknown failover mode {mode!r}: auto, follow or manual")
        core = self._core
        self.update(replace(core.cfg, mode=mode), list(core.backends.values()))

    def _fail_over_lost_master(self) -> None:
        core = self._core
        master = core.topology.master
        if master is None or core.topology.state(master) not in LOST_STATES:
            return
        rec = core.timeline.open_record(old=master) or core.timeline.open("auto", master)
        core.step(rec, f"mode auto while {master} is lost: failing over now", logging.WARNING)
        core.spawn(self._automatic.run(rec, master))

    # -- state the router and the admin port read ---------------------------------------------

    @property
    def mode(self) -> str:
        return self._core.cfg.mode

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
        return self._automatic.masterless_cause

    def backend_note(self, name: str) -> str | None:
        """What an operator should know about `name` beyond its state (SHOW BACKENDS)."""
        if name == self._core.topology.master and self.masterless is not None:
            return f"masterless: {self.masterless}"
        return self._fencing.note(name)

    @property
    def switchover_in_progress(self) -> bool:
        """The router holds writes while this is True: the old master is read-only."""
        return self._switchover.in_progress

    async def wait_idle(self) -> None:
        """Returns once no switchover is in progress (whatever its outcome)."""
        await self._switchover.wait_idle()

    # -- what operators, tools and other instances ask for -------------------------------------

    async def promote(
        self,
        name: str,
        *,
        source: str,
        old: str | None = None,
        epoch: int | None = None,
    ) -> FailoverRecord:
        """Adopt a promotion someone else made (admin PROMOTE, notify-promotion, Redis):
        `name` is master from now on.

        No SQL on the servers, except fencing the replaced master read_only if it is
        reachable. The target must be a known backend, not fenced, reachable, writable
        (read_only=0) and no longer replicating; otherwise PromotionRefused says why.
        With `epoch` (learnt from another Baton through Redis) the decision was taken
        elsewhere: problems are logged, the Topology decides whether the epoch is news, but
        one the servers contradict is refused.
        """
        return await self._adoption.promote(name, source=source, old=old, epoch=epoch)

    async def switchover(self, to: str) -> FailoverRecord:
        """Planned change of master to `to`, losing nothing.

        The old master goes read_only (the router holds writes meanwhile), `to` applies
        everything the old master wrote, becomes writable, the other replicas and the old
        master are repointed to it, then the epoch goes up. If `to` does not catch up in
        time the old master is made writable again and nothing else changes.
        """
        return await self._switchover.run(to)

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
        return await self._ordered.run(to, source)

    async def _preflight(self, name: str, old: str, semi: bool) -> str | None:
        """A candidate's checks before any step (AutomaticFailover.preflight). Looked up
        here at each election, so a test can replace the checks on this class and make a
        step fail half-way through a promotion (tests/adversity/test_promotion_rollback.py)."""
        return await self._automatic.preflight(name, old, semi)

    # -- events and samples --------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        core = self._core
        if isinstance(event, MasterLost):
            self._on_master_lost(event)
        elif isinstance(event, MasterPromoted):
            rec = (
                core.promoting
                or core.timeline.open_record(old=event.old)
                or core.timeline.open(event.source, event.old)
            )
            core.timeline.promoted(rec, event.new, event.epoch, event.source)
            core.step(rec, f"{event.new} is master of epoch {event.epoch} ({event.source})")
            if self.masterless is not None:
                log.info("cluster_master_again new=%s epoch=%d", event.new, event.epoch)
            self._automatic.promoted()
        elif isinstance(event, SplitBrainSuspected):
            self._split_brain = event.writers
            log.error(
                "split_brain_suspected writers=%s epoch=%d master=%s "
                "action=writes_only_to_master_of_epoch",
                ",".join(event.writers),
                core.topology.epoch,
                core.topology.master,
            )
        elif isinstance(event, BackendFenced):
            log.warning("backend_fenced backend=%s epoch=%d", event.name, event.epoch)

    def _on_master_lost(self, event: MasterLost) -> None:
        core = self._core
        if event.epoch != core.topology.epoch or event.name != core.topology.master:
            return
        mode = core.cfg.mode
        rec = core.timeline.open(_FIRST_RECORD_KIND.get(mode, mode), event.name)
        core.step(
            rec, f"master {event.name} lost at epoch {event.epoch} (mode {mode})", logging.WARNING
        )
        if mode == "auto":
            core.spawn(self._automatic.run(rec, event.name))
        elif mode in _WAITING_FOR:
            core.step(rec, _WAITING_FOR[mode])

    def _on_sample(self, h: BackendHealth) -> None:
        core = self._core
        topo = core.topology
        self._recheck_split_brain()
        if h.name not in topo.backends():
            return
        if h.name == topo.master and h.alive:
            self._close_if_master_back(h.name)
        follows = core.cfg.mode in ("follow", "auto") or topo.master is None
        # While an automatic failover replaces this master, a replica turning writable is
        # that failover's doing (ours, or another instance's under the lease): its event, or
        # our takeover (which adopts a writable detached replica), settles it.
        failing_over = topo.master in self._automatic.failing_over
        if follows and not failing_over and not core.lock.locked() and not self._adoption.adopting:
            candidate = topo.observed_promotion_candidate()
            if candidate is not None:
                self._adoption.adopt_observed(candidate)
        self._fencing.on_sample(h)

    def _close_if_master_back(self, master: str) -> None:
        """A record waiting (follow/manual mode) for a master that answers again is over:
        it must not stay "in progress" with a reason that no longer holds."""
        core = self._core
        rec = core.timeline.open_record(old=master)
        if (
            rec is None
            or rec.id in core.ordered
            or rec.decided_at is not None
            or core.cfg.mode == "auto"  # the automatic failover closes its own record
            or core.topology.state(master) in LOST_STATES
        ):
            return
        core.step(rec, f"{master} answers again: nothing to do")
        core.timeline.finish(rec, "cancelled: master came back")

    def _recheck_split_brain(self) -> None:
        if self._split_brain is None:
            return
        topo = self._core.topology
        healths = self._core.monitor.all_health()
        writers = [h.name for h in healths if h.alive and h.read_only is False]
        fenced = [n for n in writers if n in topo.backends() and topo.is_fenced(n)]
        if len(writers) < 2 and not fenced:
            log.info("split_brain_resolved writers=%s", ",".join(writers) or "-")
            self._split_brain = None
