"""A failover an operator orders (admin FAILOVER [TO 'name'], `baton failover`).

Carried out in any [failover] mode and not held back by min_interval_s, but otherwise the
automatic failover's own steps: election (restricted to the named target), relay-log wait,
repointing, fencing and the timeline. What an operator may order is narrower than what
Baton does alone: a master that still answers calls for a SWITCHOVER, and one a replica
still receives from is not dead, only out of Baton's reach. A master the operator set
OFFLINE_HARD counts as lost even if it answers: its replicas stop receiving from it first.
"""

from __future__ import annotations

import logging
from typing import cast

from proxy.health.events import PROMOTION_SOURCES, PromotionSource
from proxy.health.runbooks.automatic import AutomaticFailover
from proxy.health.runbooks.core import LOST_STATES, FailoverCore, PromotionRefused
from proxy.health.runbooks.dead_master import DeathCheck
from proxy.health.states import BackendState
from proxy.health.timeline import PROMOTED, FailoverRecord


class OrderedFailover:
    """Checks an operator's order, then runs the automatic failover under it."""

    def __init__(
        self, core: FailoverCore, automatic: AutomaticFailover, death: DeathCheck
    ) -> None:
        self._core = core
        self._automatic = automatic
        self._death = death

    async def run(self, to: str | None, source: str) -> FailoverRecord:
        """FailoverCoordinator.failover."""
        core = self._core
        if source not in PROMOTION_SOURCES:
            raise PromotionRefused(f"unknown promotion source {source!r}")
        old = core.topology.master
        self._check(old, to)
        assert old is not None
        taken_out = self._taken_out_alive(old)
        if not taken_out:
            await self._death.refuse_while_connected(old)
        rec = core.timeline.open_record(old=old) or core.timeline.open("admin", old)
        core.ordered[rec.id] = (to, cast(PromotionSource, source))
        core.step(
            rec,
            f"{source} ordered a failover of {old}" + (f" to {to}" if to else ""),
            logging.WARNING,
        )
        try:
            if taken_out:
                await self._detach_replicas(rec, old)
            await self._automatic.run(rec, old)
        finally:
            core.ordered.pop(rec.id, None)
        if rec.outcome != PROMOTED:
            why = rec.error or rec.outcome
            if not rec.finished:
                why = rec.steps[-1][1] if rec.steps else "not carried out"
            raise PromotionRefused(f"failover of {old} not done: {why}")
        return rec

    def _check(self, old: str | None, to: str | None) -> None:
        core = self._core
        topo = core.topology
        if old is None:
            raise PromotionRefused("no master is known: PROMOTE 'name' adopts a writable server")
        state = topo.state(old)
        if state not in LOST_STATES:
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
        backend = core.backends.get(to)
        if backend is not None and not backend.promotable:
            raise PromotionRefused(f"{to} has promotable = false")
        h = core.monitor.health(to)
        if not h.alive:
            raise PromotionRefused(f"{to} is unreachable ({h.last_error})")

    def _taken_out_alive(self, old: str) -> bool:
        """The operator set the master OFFLINE_HARD while it still answers."""
        return (
            self._core.topology.state(old) is BackendState.OFFLINE_HARD
            and self._core.monitor.health(old).alive
        )

    async def _detach_replicas(self, rec: FailoverRecord, old: str) -> None:
        """Stop the replicas receiving from a master the operator took out: their positions
        stay put for the election, and the IO threads report it lost."""
        for h in self._core.monitor.all_health():
            if h.name != old and h.alive and h.master_name == old and h.io_running:
                await self._core.sql(rec, h.name, "STOP SLAVE IO_THREAD")
