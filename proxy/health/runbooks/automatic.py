"""Baton promotes: the automatic failover ([failover] mode auto, or ordered by an operator).

Once the replicas agree the master is dead (dead_master) and this instance holds the failover
lease (lease_claim), the replica that has received the most is elected among those whose
checks pass (the monitor account's grants on the candidate, read before anything is
touched), it applies its relay log, takes writes, the others are repointed to it by GTID and
the epoch goes up. A step that fails rolls back the earlier ones, in reverse order; then the
next candidate is tried. With no candidate left the cluster is reported masterless (an
alarm: log, SHOW BACKENDS, metric) and the election is retried, backing off after attempts
that had to be rolled back, for as long as the master stays lost. A promotion another
instance began and did not finish is resumed from what the servers say (proxy.health.takeover).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

from proxy.backend import BackendError, QueryError
from proxy.health.election import Choice, Refusal, ReplicaStatus, choose_candidate
from proxy.health.events import PromotionSource
from proxy.health.privileges import capabilities_from_grants
from proxy.health.runbooks.core import (
    LOST_STATES,
    STEP_TIMEOUT_S,
    FailoverCore,
    LeaseLost,
    PromotionRefused,
    log,
)
from proxy.health.runbooks.dead_master import DeathCheck
from proxy.health.runbooks.lease_claim import LeaseClaim
from proxy.health.runbooks.steps import ServerSteps, Undo, quote
from proxy.health.samples import one_line
from proxy.health.states import BackendState
from proxy.health.takeover import plan_resume
from proxy.health.timeline import FailoverRecord
from proxy.health.topology import TopologyError

# With the master lost and no candidate, look again this often (a privilege granted, a
# replica back); after an attempt that had to be rolled back, wait twice as long each time.
MASTERLESS_RETRY_S = 2.0
MASTERLESS_RETRY_MAX_S = 30.0
_ROLLED_BACK = "rolled back"

# Why `name` cannot be promoted by this monitor account (None: it can): (name, old, semi).
Preflight = Callable[[str, str, bool], Awaitable[str | None]]


class AutomaticFailover:
    """Replaces a lost master: confirm, claim, elect, promote, repoint, or say masterless."""

    def __init__(
        self,
        core: FailoverCore,
        steps: ServerSteps,
        lease: LeaseClaim,
        death: DeathCheck,
        *,
        catch_up_timeout_s: float,
        preflight: Preflight | None = None,
    ) -> None:
        self._core = core
        self._steps = steps
        self._lease = lease
        self._death = death
        self._catch_up_timeout_s = catch_up_timeout_s
        self._preflight = preflight or self.preflight
        self.failing_over: set[str] = set()  # masters an automatic failover is replacing
        self.masterless_cause: str | None = None
        self._retry_delay = MASTERLESS_RETRY_S
        self._last_auto_at: float | None = None

    def promoted(self) -> None:
        """A master again (whoever promoted it): the masterless alarm and backoff end."""
        self.masterless_cause = None
        self._retry_delay = MASTERLESS_RETRY_S

    async def run(self, rec: FailoverRecord, old: str) -> None:
        """Replace the lost master `old`: confirm it is dead, take the lease, promote.

        Another instance holding the failover lease is watched, not trusted forever: if its
        lease runs out before its promotion reaches us, this instance takes over and
        resumes from what the servers say. An attempt that finds no candidate, or whose
        steps fail and are rolled back, leaves the cluster masterless (alarm) and is retried
        while the master stays lost.
        """
        core = self._core
        self.failing_over.add(old)
        try:
            if self._refused_by_anti_flap(rec):
                return
            if not await self._death.confirm(rec, old, lambda: self._still_to_do(rec, old)):
                return
            took_over = False
            while True:
                async with core.lock:
                    if not self._still_to_do(rec, old) or self._refused_by_anti_flap(rec):
                        return
                    if await self._lease.claim(rec):
                        try:
                            await self._fail_over(rec, old, took_over=took_over)
                        finally:
                            # Promoted: the lease runs out by itself, by when the others
                            # have our promotion; released at once, one of them could take
                            # it before that and record the same failover a second time.
                            await self._lease.release(keep=core.topology.master != old)
                        return
                took_over = True  # the lease was held: that holder may have begun
                if not await self._lease.watch(rec, lambda: self._still_to_do(rec, old)):
                    return
        except (PromotionRefused, BackendError, QueryError, TopologyError) as e:
            core.step(rec, f"failover failed: {e}", logging.ERROR)
            core.timeline.finish(rec, "failed", str(e))
        finally:
            self.failing_over.discard(old)

    def _still_to_do(self, rec: FailoverRecord, old: str) -> bool:
        """Whether the failover from `old` is still wanted; if not, the record says why."""
        core = self._core
        topo = core.topology
        acting = core.cfg.mode == "auto" or rec.id in core.ordered
        if topo.master != old or not acting:
            core.timeline.finish(rec, "cancelled: master changed meanwhile")
            return False
        if topo.state(old) not in LOST_STATES:
            core.step(rec, f"{old} answers again: no failover")
            core.timeline.finish(rec, "cancelled: master came back")
            return False
        return True

    def _refused_by_anti_flap(self, rec: FailoverRecord) -> bool:
        core = self._core
        if self._last_auto_at is None or rec.id in core.ordered:
            return False
        since = core.clock() - self._last_auto_at
        if since >= core.cfg.min_interval_s:
            return False
        why = (
            f"last automatic failover {since:.1f}s ago, min_interval_s={core.cfg.min_interval_s}: "
            "promote by hand if the master is really gone"
        )
        core.step(rec, f"failover refused: {why}", logging.ERROR)
        core.timeline.finish(rec, f"refused: {why}")
        return True

    def _candidates(self, rec: FailoverRecord) -> list[ReplicaStatus]:
        """The election's input; with an ordered target, only it may win."""
        statuses = self._core.monitor.replica_statuses()
        to = self._core.ordered.get(rec.id, (None, "admin"))[0]
        if to is None:
            return statuses
        return [replace(s, promotable=s.promotable and s.name == to) for s in statuses]

    def _source(self, rec: FailoverRecord) -> PromotionSource:
        ordered = self._core.ordered
        return ordered[rec.id][1] if rec.id in ordered else "auto"

    async def _fail_over(self, rec: FailoverRecord, old: str, *, took_over: bool) -> None:
        """Holding the lease: resume what the servers show half-done, or elect and promote."""
        core = self._core
        monitor = core.monitor
        names = [n for n in monitor.backends() if n != old]
        healths = await asyncio.gather(*(monitor.probe_now(n) for n in names))
        topo = core.topology
        out = [
            n
            for n in topo.backends()
            if topo.is_fenced(n) or topo.state(n) is BackendState.OFFLINE_HARD
        ]
        plan = plan_resume(old, healths, out, took_over=took_over)
        semi = self._steps.semi_sync_wanted(old)
        if plan.conflict is not None:
            self._masterless(rec, old, f"refused: {plan.conflict}", plan.conflict, retry=False)
            return
        resumed = plan.adopt or plan.finish
        if resumed is not None:
            await self._resume(rec, old, resumed, finish=plan.finish is not None, semi=semi)
            return
        for name in plan.restart:
            await core.sql(rec, name, "START SLAVE")
            core.step(rec, f"undid a stopped promotion: {name} replicates again")
        if plan.restart:  # the election reads their threads
            await asyncio.gather(*(monitor.probe_now(n) for n in plan.restart))
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
        core, steps = self._core, self._steps
        core.timeline.decided(rec, new)
        core.step(
            rec,
            f"resuming a promotion begun elsewhere: {new} "
            + ("left replication but is read-only: finishing it" if finish else "is writable"),
            logging.WARNING,
        )
        if finish:
            await self._lease.confirm(rec)
            await core.sql(rec, new, "SET GLOBAL read_only = 0")
            if semi:
                await core.sql(rec, new, "SET GLOBAL rpl_semi_sync_master_enabled = 1")
        others = [n for n in steps.other_replicas(new, old) if not steps.follows(n, new)]
        await steps.repoint(rec, others, new, semi)
        await self._lease.confirm(rec)
        core.publish_promotion(rec, new, self._source(rec), old, None)
        self._last_auto_at = core.clock()

    async def _elect(
        self, rec: FailoverRecord | None, old: str, tried: dict[str, str], semi: bool
    ) -> Choice | Refusal:
        """The candidate choose_candidate picks among those not `tried` whose checks pass.

        A candidate the monitor account could not promote (SHOW GRANTS) is added to `tried`
        with the reason; the Refusal names every candidate set aside and why. With `rec`, an
        operator's FAILOVER TO restricts the candidates.
        """
        while True:
            candidates = self._candidates(rec) if rec else self._core.monitor.replica_statuses()
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

    async def preflight(self, name: str, old: str, semi: bool) -> str | None:
        """Why `name` cannot be promoted by this monitor account, before touching anything.

        Read on a fresh session, the one the steps then run on: a session keeps the global
        privileges it logged in with, so grants shown may differ from an older session's.
        """
        core = self._core
        core.monitor.close_action_connection(name)
        try:
            version = await core.value(name, "SELECT @@version")
            shown = await core.monitor.execute(name, "SHOW GRANTS", STEP_TIMEOUT_S)
        except (BackendError, QueryError) as e:
            return f"could not read the monitor account's grants: {e}"
        grants = [(row[0] or b"").decode("utf-8", "replace") for row in shown.rows]
        caps = capabilities_from_grants(grants, version, semi_sync=semi)
        if not caps.promote:
            return f"the monitor account lacks {caps.missing_text('promote')}"
        user = core.cfg.replication_user
        if user and self._steps.other_replicas(name, old):
            try:
                found = await core.value(
                    name, f"SELECT COUNT(*) FROM mysql.user WHERE User = {quote(user)}"
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
        core, steps = self._core, self._steps
        new = choice.name
        core.timeline.decided(rec, new)
        core.step(rec, f"chose {new}: {choice.reason}")
        undo: list[Undo] = []
        try:
            await core.sql(rec, new, "STOP SLAVE IO_THREAD")
            undo.append(Undo(new, "START SLAVE"))
            received = await core.value(new, "SHOW SLAVE STATUS", column="Gtid_IO_Pos")
            await steps.wait_applied(
                rec, new, one_line(received) or choice.catch_up_to, self._catch_up_timeout_s
            )
            await self._lease.confirm(rec)
            await steps.take_writes(rec, new, semi, undo, replicated_from=old)
        except (PromotionRefused, BackendError, QueryError) as e:
            core.step(rec, f"promotion of {new} failed: {e}; rolling back", logging.ERROR)
            await steps.roll_back(rec, undo)
            raise
        await steps.repoint(rec, steps.other_replicas(new, old), new, semi)
        await self._lease.confirm(rec)
        core.publish_promotion(rec, new, self._source(rec), old, None)
        self._last_auto_at = core.clock()

    def _masterless(
        self, rec: FailoverRecord, old: str, outcome: str, cause: str, *, retry: bool
    ) -> None:
        """No master and no promotion: the alarm (log, record, SHOW BACKENDS, metric)."""
        self.masterless_cause = cause
        log.error("cluster_masterless old=%s cause=%r", old, cause)
        self._core.step(rec, f"no master: {cause}", logging.ERROR)
        self._core.timeline.finish(rec, outcome, cause)
        if retry:
            self._core.spawn(self._retry_while_masterless(old, cause))

    async def _retry_while_masterless(self, old: str, cause: str) -> None:
        """Look again every MASTERLESS_RETRY_S; fail over once a candidate passes its checks
        (a privilege granted, a replica back). Quiet while nothing changes."""
        core = self._core
        topo = core.topology
        delay = self._retry_delay
        self._retry_delay = min(delay * 2, MASTERLESS_RETRY_MAX_S)
        while True:
            await asyncio.sleep(delay)
            delay = MASTERLESS_RETRY_S
            if (
                topo.master != old
                or core.cfg.mode != "auto"
                or topo.state(old) not in LOST_STATES
            ):
                return
            if core.lock.locked() or old in self.failing_over:
                continue
            choice = await self._elect(None, old, {}, self._steps.semi_sync_wanted(old))
            if isinstance(choice, Refusal):
                if choice.reason != cause:
                    cause = self.masterless_cause = choice.reason
                    log.error("cluster_masterless old=%s cause=%r", old, cause)
                continue
            rec = core.timeline.open("auto", old)
            core.step(rec, f"retrying the failover from {old}: {choice.name} passes its checks")
            await self.run(rec, old)
            return
