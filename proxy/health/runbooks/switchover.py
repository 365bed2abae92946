"""The planned change of master (admin SWITCHOVER TO): nothing lost, or nothing changed.

The old master goes read_only first, so the router holds writes (`in_progress`) instead of
sending them to a server about to stop being master; the target must apply everything the
old master wrote within the switchover timeout, or the old master is made writable again
and the switchover is refused. Past the point where the target takes writes there is no way
back: the rest (repointing, the old master as a replica) goes forward only.
"""

from __future__ import annotations

import asyncio
import logging

from proxy.backend import BackendError, QueryError
from proxy.health.runbooks.core import FailoverCore, PromotionRefused
from proxy.health.runbooks.steps import ServerSteps, Undo
from proxy.health.timeline import FailoverRecord


class Switchover:
    """One switchover at a time (the core's lock), and whether one is under way."""

    def __init__(self, core: FailoverCore, steps: ServerSteps, timeout_s: float) -> None:
        self._core = core
        self._steps = steps
        self._timeout_s = timeout_s
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_progress(self) -> bool:
        """The router holds writes while this is True: the old master is read-only."""
        return not self._idle.is_set()

    async def wait_idle(self) -> None:
        """Returns once no switchover is in progress (whatever its outcome)."""
        await self._idle.wait()

    async def run(self, to: str) -> FailoverRecord:
        """FailoverCoordinator.switchover."""
        core, steps = self._core, self._steps
        async with core.lock:
            old = core.topology.master
            self._check(old, to)
            assert old is not None
            rec = core.timeline.open("switchover", old)
            self._idle.clear()
            undo: list[Undo] = []
            try:
                core.timeline.decided(rec, to)
                core.step(rec, f"switchover {old} -> {to} started")
                semi = steps.semi_sync_wanted(old)
                await core.sql(rec, old, "SET GLOBAL read_only = 1")
                undo.append(Undo(old, "SET GLOBAL read_only = 0"))
                try:
                    pos = await core.value(old, "SELECT @@gtid_binlog_pos")
                    core.step(rec, f"{old} read-only at {pos or 'empty position'}")
                    await steps.wait_applied(rec, to, pos, self._timeout_s)
                except (PromotionRefused, BackendError, QueryError) as e:
                    core.step(rec, f"{to} did not catch up: {e}; {old} made writable again")
                    await steps.roll_back(rec, undo)
                    core.timeline.finish(rec, "failed: target did not catch up", str(e))
                    raise PromotionRefused(
                        f"switchover aborted, {old} is master again: {e}"
                    ) from None
                await steps.take_writes(rec, to, semi, undo, replicated_from=old)
                undo.clear()  # `to` takes writes: from here on, forward only
                await steps.repoint(rec, steps.other_replicas(to, old), to, semi)
                try:
                    await steps.follow(rec, old, to, former_master=True, semi=semi)
                except (BackendError, QueryError) as e:
                    core.step(rec, f"could not make {old} a replica of {to}: {e}", logging.ERROR)
                core.publish_promotion(rec, to, "switchover", old, None)
                return rec
            except (BackendError, QueryError) as e:
                core.step(rec, f"switchover failed: {e}", logging.ERROR)
                core.timeline.finish(rec, "failed", str(e))
                await steps.roll_back(rec, undo)  # nothing left once `to` took writes
                raise PromotionRefused(f"switchover failed: {e}") from None
            finally:
                self._idle.set()

    def _check(self, old: str | None, to: str) -> None:
        core = self._core
        topo = core.topology
        if to not in topo.backends():
            raise PromotionRefused(f"unknown backend {to!r}")
        if old is None or topo.writable_master() != old:
            raise PromotionRefused("no writable master to switch over from; use PROMOTE")
        if to == old:
            raise PromotionRefused(f"{to} is already the master")
        if topo.is_fenced(to):
            raise PromotionRefused(f"{to} is fenced and cannot become master again")
        if not core.cfg.replication_user:
            raise PromotionRefused(
                "a switchover makes the old master a replica: set [failover] replication_user"
            )
        h = core.monitor.health(to)
        if not h.alive:
            raise PromotionRefused(f"{to} is unreachable ({h.last_error})")
        if h.master_name != old or not (h.io_running and h.sql_running):
            raise PromotionRefused(f"{to} is not replicating from {old}")
        backends = core.backends
        limit_s = backends[to].max_replication_lag_ms / 1000 if to in backends else 1.0
        if h.lag_s is None or h.lag_s > limit_s:
            raise PromotionRefused(f"{to} lags ({h.lag_s} s, limit {limit_s:g} s): try again later")
