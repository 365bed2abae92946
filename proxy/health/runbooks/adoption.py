"""Adopting a promotion made elsewhere: told (admin PROMOTE, notify-promotion, Redis) or seen.

Someone else (Orchestrator, an operator, another Baton) made a server master; Baton only
checks that it really is one (writable, no longer replicating) and moves the Topology to it.
No SQL on the servers, except fencing the replaced master read_only if it is reachable. One
code path for every source, so a promotion told through Redis and one seen by the monitor
end the same way.
"""

from __future__ import annotations

import logging
from typing import cast

from proxy.health.events import PROMOTION_SOURCES, PromotionSource
from proxy.health.runbooks.core import FailoverCore, PromotionRefused, log
from proxy.health.runbooks.fencing import Fencing
from proxy.health.timeline import FailoverRecord
from proxy.health.topology import TopologyError


class Adoption:
    """`promote()` and the adoption of a writable replica the monitor observed."""

    def __init__(self, core: FailoverCore, fencing: Fencing) -> None:
        self._core = core
        self._fencing = fencing
        self.adopting = False  # an observed promotion is being adopted: one at a time

    async def promote(
        self, name: str, *, source: str, old: str | None = None, epoch: int | None = None
    ) -> FailoverRecord:
        """FailoverCoordinator.promote: adopt, under the one lock."""
        if source not in PROMOTION_SOURCES:
            raise PromotionRefused(f"unknown promotion source {source!r}")
        async with self._core.lock:
            return await self._adopt(name, cast(PromotionSource, source), old, epoch)

    def adopt_observed(self, candidate: str) -> None:
        """A replica turned writable while the master is lost or read-only: adopt it, in
        the background. Set `adopting` now, not when the task starts: one at a time."""
        self.adopting = True
        self._core.spawn(self._adopt_observed(candidate))

    async def _adopt_observed(self, candidate: str) -> None:
        core = self._core
        try:
            await self.promote(candidate, source="observed", old=core.topology.master)
        except PromotionRefused as e:
            key = (candidate, str(e))
            if key not in core.warned:
                core.warned.add(key)
                log.warning(
                    "observed_promotion_not_adopted backend=%s reason=%r", candidate, str(e)
                )
        finally:
            self.adopting = False

    async def _adopt(
        self, name: str, source: PromotionSource, old: str | None, epoch: int | None
    ) -> FailoverRecord:
        core = self._core
        topo = core.topology
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
        rec = core.timeline.open_record(old=previous) or core.timeline.open(source, old or previous)
        core.step(
            rec, f"{source} promotion of {name} adopted" + (f" at epoch {epoch}" if epoch else "")
        )
        try:
            core.publish_promotion(rec, name, source, old, epoch)
        except TopologyError as e:
            core.step(rec, f"topology refused the promotion: {e}", logging.ERROR)
            raise PromotionRefused(str(e)) from None
        for replaced in dict.fromkeys((previous, old)):
            if replaced is not None and replaced != name and replaced in topo.backends():
                await self._fencing.handle_return(replaced, rec)
        return rec

    def _unrecorded(self, source: str, name: str, outcome: str) -> FailoverRecord:
        """The answer to a promotion that changes nothing: not kept in the timeline."""
        return FailoverRecord(
            id=0,
            kind=source,
            old=name,
            detected_at=self._core.clock(),
            new=name,
            epoch=self._core.topology.epoch,
            outcome=outcome,
        )

    async def _why_not_writable(self, name: str) -> str | None:
        core = self._core
        if core.topology.is_fenced(name):
            return (
                f"{name} is fenced: it was master before epoch {core.topology.epoch} and may "
                "hold transactions the others lack"
            )
        asked = core.clock()
        h = await core.monitor.probe_now(name)
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
        master = self._core.topology.master
        if master is None or master == name:
            return None
        h = await self._core.monitor.probe_now(master)
        if not h.alive or h.read_only is not False:
            return None
        return f"servers contradict it: {problem}, while master {master} is healthy and writable"
