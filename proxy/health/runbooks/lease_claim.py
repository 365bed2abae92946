"""Who performs an automatic failover when several Baton instances watch one cluster.

The one holding the failover lease (ClusterLink's FailoverLease) promotes; it confirms the
lease is still its own before every step that cannot be taken back. The others watch the
lease instead of trusting its holder forever: when it runs out before the holder's promotion
reaches them, one of them takes over and resumes from what the servers say. Without Redis
the instances cannot agree, so the failover is suspended (and retried) rather than risked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from proxy.health.lease import LeaseHolder, LeaseUnavailable
from proxy.health.runbooks.core import FailoverCore, LeaseLost
from proxy.health.timeline import FailoverRecord

# While another instance holds the failover lease, look at it this often. Its holder renews
# it while it works, so watching ends when it publishes or dies; this bounds the rest.
LEASE_POLL_S = 0.25
LEASE_WATCH_LIMIT_S = 120.0


class FailoverLeaseLike(Protocol):
    """What the coordinator needs of the failover lease (proxy.health.lease.FailoverLease):
    held by one instance at a time, for the failover that creates one epoch. `acquire`
    answers False only while another instance holds it (that holder may have begun: the
    coordinator then resumes from the servers); it raises LeaseUnavailable when Redis
    cannot be asked."""

    async def acquire(self, epoch: int) -> bool: ...
    async def renew(self) -> bool: ...
    async def release(self, *, keep: bool = False) -> None: ...
    async def holder(self) -> LeaseHolder | None: ...


class LeaseClaim:
    """This instance's claim on the failover lease; `lease` None: it is alone."""

    def __init__(self, core: FailoverCore) -> None:
        self._core = core
        self.lease: FailoverLeaseLike | None = None
        self._holding = False
        self._suspended: set[int] = set()  # records told "suspended" (said once each)

    async def claim(self, rec: FailoverRecord) -> bool:
        """Whether this instance performs the failover: it took the lease, or runs alone."""
        self._holding = False
        lease = self.lease
        if lease is None:
            return True
        epoch = self._core.topology.epoch + 1
        try:
            if not await lease.acquire(epoch):
                return False
        except LeaseUnavailable as e:
            # Without Redis the instances cannot agree on who fails over: suspended (SHOW
            # CLUSTER says so) and tried again while the master stays lost.
            if rec.id not in self._suspended:
                self._suspended.add(rec.id)
                self._core.step(rec, f"automatic failover suspended: {e}", logging.WARNING)
            return False
        self._holding = True
        self._core.step(rec, f"took the failover lease for epoch {epoch}")
        return True

    async def confirm(self, rec: FailoverRecord) -> None:
        """Before a step that cannot be taken back: still ours? LeaseLost if not."""
        if not self._holding or self.lease is None:
            return
        try:
            if await self.lease.renew():
                return
        except LeaseUnavailable as e:
            self._core.step(
                rec, f"could not renew the failover lease ({e}): going on", logging.WARNING
            )
            return
        raise LeaseLost("the failover lease ran out or was taken: another instance takes over")

    async def release(self, *, keep: bool = False) -> None:
        if self._holding and self.lease is not None:
            self._holding = False
            await self.lease.release(keep=keep)

    async def watch(self, rec: FailoverRecord, still_to_do: Callable[[], bool]) -> bool:
        """Another instance holds the lease: wait for its promotion (False) or for the
        lease to be free without one (True: take it over). Ends early (False) once
        `still_to_do` says the failover is no longer wanted."""
        core = self._core
        lease = self.lease
        assert lease is not None
        started = core.clock()
        seen: tuple[str, int] | None = None
        while still_to_do():
            try:
                holder = await lease.holder()
            except LeaseUnavailable:
                holder = None  # taking it says what to do without Redis
            if holder is None:
                if seen is None:
                    # Gone already (or Redis away): try again, but not in a tight loop.
                    await asyncio.sleep(LEASE_POLL_S)
                else:
                    core.step(
                        rec,
                        f"lease of {seen[0]} ran out before its promotion reached us: taking over",
                        logging.WARNING,
                    )
                return True
            if seen != (holder.instance, holder.epoch):
                seen = (holder.instance, holder.epoch)
                core.step(
                    rec,
                    f"instance {holder.instance} holds the failover lease for epoch "
                    f"{holder.epoch}: watching it",
                )
            if core.clock() - started > LEASE_WATCH_LIMIT_S:
                why = f"{holder.instance} held the lease for {LEASE_WATCH_LIMIT_S:g}s without a promotion"
                core.step(rec, why, logging.ERROR)
                core.timeline.finish(rec, "failed: lease never released", why)
                return False
            await asyncio.sleep(LEASE_POLL_S)
        return False
