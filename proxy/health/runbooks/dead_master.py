"""Whether the master is dead, or only unreachable from Baton.

A master is dead only when Baton's probes fail AND every reachable replica's IO thread has
lost it too: a partition between Baton and a healthy master must not cause a failover. The
automatic failover waits for that agreement; an operator's FAILOVER is refused while a
replica still receives from the master.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from proxy.health.election import master_confirmed_dead
from proxy.health.monitor import BackendHealth
from proxy.health.runbooks.core import FailoverCore, PromotionRefused
from proxy.health.timeline import FailoverRecord

# While waiting for the replicas to agree the master is dead, re-read their IO threads this
# often; after CONFIRM_FAST_S (replicas notice within slave_net_timeout, 4 s as Orchestrator
# recommends) keep asking, more slowly, for as long as the master stays lost.
CONFIRM_FAST_PERIOD_S = 0.15
CONFIRM_SLOW_PERIOD_S = 1.0
CONFIRM_FAST_S = 10.0


class DeathCheck:
    """Asks the replicas (fresh IO-thread states) whether they lost the master too."""

    def __init__(self, core: FailoverCore) -> None:
        self._core = core

    async def _opinions(self, old: str) -> tuple[list[BackendHealth], list[bool | None]]:
        monitor = self._core.monitor
        asked = self._core.clock()
        names = [n for n in monitor.backends() if n != old]
        healths = await asyncio.gather(*(monitor.probe_now(n) for n in names))
        return list(healths), [_io_opinion(h, old, asked) for h in healths]

    async def confirm(
        self, rec: FailoverRecord, old: str, still_to_do: Callable[[], bool]
    ) -> bool:
        """Wait until every reachable replica's IO thread has lost `old` too; False as soon
        as `still_to_do` says the failover is no longer wanted."""
        core = self._core
        started = core.clock()
        waiting_said = False
        while True:
            if not still_to_do():
                return False
            healths, opinions = await self._opinions(old)
            if master_confirmed_dead(True, opinions):
                lost = [h.name for h, o in zip(healths, opinions, strict=True) if o is False]
                core.step(rec, f"confirmed dead: replicas {', '.join(lost)} lost {old} too")
                return True
            if not waiting_said:
                waiting_said = True
                connected = [h.name for h, o in zip(healths, opinions, strict=True) if o]
                core.step(
                    rec,
                    "waiting for replicas to lose the master: "
                    + (
                        f"{', '.join(connected)} still connected"
                        if connected
                        else "no replica reachable"
                    ),
                )
            fast = core.clock() - started < CONFIRM_FAST_S
            await asyncio.sleep(CONFIRM_FAST_PERIOD_S if fast else CONFIRM_SLOW_PERIOD_S)

    async def refuse_while_connected(self, old: str) -> None:
        """Refuse while a replica still receives from `old`: it is alive for them, and
        Baton alone losing it is a network problem, not a dead master."""
        healths, opinions = await self._opinions(old)
        connected = [h.name for h, o in zip(healths, opinions, strict=True) if o]
        if connected:
            raise PromotionRefused(
                f"{', '.join(connected)} still replicate(s) from {old}: it is alive for them; "
                "fix Baton's path to it, or use SWITCHOVER once it answers"
            )


def _io_opinion(h: BackendHealth, old: str, asked: float) -> bool | None:
    """Per master_confirmed_dead: True = IO thread connected to `old`, False = lost it,
    None = no opinion (unreachable, state not read since `asked`, or not its replica)."""
    if not h.alive or h.replication_checked_at is None or h.replication_checked_at < asked:
        return None
    if h.master_name != old:
        return None
    return h.io_state == "Yes"
