"""A replaced master coming back: fenced read_only, rejoined, and one day unfenced.

The Topology fences a replaced master (never written to again). When it answers again it is
set read_only and, with [failover] auto_rejoin, made a replica of the new master, unless its
history has transactions the new master lacks: then it is left OFFLINE_HARD for a DBA.
Fencing ends once it is seen replicating from the master with a history the master contains:
an ordinary replica again, which may be promoted (a DBA switching back after maintenance).
A replica that was down during the failover and still points at the old master is repointed.

Everything here starts from a monitor sample, in the background, one task per backend at a
time (`busy`), and never while a change of master holds the lock.
"""

from __future__ import annotations

import logging

from proxy.backend import BackendError, QueryError
from proxy.health.election import GtidError, gtid_missing
from proxy.health.monitor import BackendHealth
from proxy.health.runbooks.core import FailoverCore, log
from proxy.health.runbooks.steps import ServerSteps
from proxy.health.states import BackendState
from proxy.health.timeline import FailoverRecord
from proxy.health.topology import TopologyError

# A fenced former master that looks rejoined has its history compared at most this often.
UNFENCE_CHECK_S = 5.0


class Fencing:
    """Fencing, rejoining and unfencing former masters; repointing stray replicas."""

    def __init__(self, core: FailoverCore, steps: ServerSteps) -> None:
        self._core = core
        self._steps = steps
        self.busy: set[str] = set()  # backends with a fence/rejoin/repoint in flight
        self._notes: dict[str, str] = {}  # fenced backend -> why it stays fenced
        self._unfence_checked: dict[str, float] = {}

    def note(self, name: str) -> str | None:
        """Why `name` is fenced and stays so (SHOW BACKENDS), or None if it is not fenced."""
        topo = self._core.topology
        if name in topo.backends() and topo.is_fenced(name):
            return "fenced: " + self._notes.get(
                name, "not yet seen replicating from the master with a history it contains"
            )
        return None

    def on_sample(self, h: BackendHealth) -> None:
        """Act on a fresh sample of a live backend: fence, rejoin, unfence or repoint it."""
        core = self._core
        topo = core.topology
        if not h.alive or h.name in self.busy or core.lock.locked():
            return
        if topo.is_fenced(h.name):
            if self._looks_rejoined(h):
                self.busy.add(h.name)  # now, not when the task starts: one check at a time
                core.spawn(self._consider_unfencing(h.name))
            elif self._needs_fencing(h) or self._needs_rejoin(h):
                core.spawn(self.handle_return(h.name))
        elif (
            core.cfg.mode == "auto"
            and h.master_name is not None
            and topo.is_fenced(h.master_name)
            and topo.writable_master() is not None
            and topo.state(h.name) is not BackendState.OFFLINE_HARD
        ):
            # A replica that was down during the failover still points at the old master.
            core.spawn(self._repoint_stray(h.name))

    def _looks_rejoined(self, h: BackendHealth) -> bool:
        """A fenced node replicating read-only from the writable master, due a history check."""
        master = self._core.topology.writable_master()
        last = self._unfence_checked.get(h.name)
        return (
            master is not None
            and h.read_only is True
            and h.master_name == master
            and h.io_running
            and h.sql_running
            and (last is None or self._core.clock() - last >= UNFENCE_CHECK_S)
        )

    async def _consider_unfencing(self, name: str) -> None:
        """Fencing ends for a former master that rejoined cleanly: its whole GTID history
        is in the master's. One that diverged stays fenced, and SHOW BACKENDS says why."""
        core = self._core
        try:
            self._unfence_checked[name] = core.clock()
            master = core.topology.writable_master()
            h = await core.monitor.probe_now(name)
            if master is None or not (h.read_only is True and h.master_name == master):
                return
            mine, theirs = await self._steps.histories(name, master)
            try:
                missing = gtid_missing(theirs, mine)
            except GtidError as e:
                missing = [f"unreadable history ({e})"]
            rec = core.timeline.latest_for_old(name)
            if missing:
                note = f"diverged: has {', '.join(missing)} that {master} lacks"
                if self._notes.get(name) != note:
                    self._notes[name] = note
                    core.step(rec, f"{name} stays fenced: {note}", logging.ERROR)
                return
            if core.topology.writable_master() == master and core.topology.unfence(name):
                self._notes.pop(name, None)
                self._unfence_checked.pop(name, None)
                core.step(
                    rec,
                    f"fencing of {name} ended: it replicates from {master}, which holds its "
                    "whole history; an ordinary replica again",
                    logging.WARNING,
                )
        except (BackendError, QueryError, TopologyError) as e:
            log.warning("unfence_check_failed backend=%s reason=%r", name, str(e))
        finally:
            self.busy.discard(name)

    async def handle_return(self, name: str, rec: FailoverRecord | None = None) -> None:
        """A fenced old master is reachable: read_only=1, and with auto_rejoin a replica."""
        if name in self.busy:
            return
        self.busy.add(name)
        core = self._core
        try:
            rec = rec or core.timeline.latest_for_old(name)
            h = core.monitor.health(name)
            if not h.alive:
                if rec is not None:
                    core.step(rec, f"{name} unreachable: fenced when it comes back")
                return
            if self._needs_fencing(h):
                await core.sql(rec, name, "SET GLOBAL read_only = 1")
                core.step(rec, f"fenced {name}: read_only=1", logging.WARNING)
            if self._needs_rejoin(h):
                await self._rejoin(rec, name)
        except (BackendError, QueryError) as e:
            log.warning("fencing_failed backend=%s reason=%r", name, str(e))
        finally:
            self.busy.discard(name)

    def _needs_fencing(self, h: BackendHealth) -> bool:
        return self._core.cfg.fence_read_only and h.read_only is not True

    def _needs_rejoin(self, h: BackendHealth) -> bool:
        topo = self._core.topology
        return (
            self._core.cfg.auto_rejoin
            and topo.state(h.name) is not BackendState.OFFLINE_HARD
            and topo.writable_master() is not None
            and not (h.read_only is True and h.master_name == topo.master)
        )

    async def _rejoin(self, rec: FailoverRecord | None, name: str) -> None:
        core = self._core
        master = core.topology.writable_master()
        if master is None:
            return
        if not core.cfg.replication_user:
            key = (name, "no replication_user")
            if key not in core.warned:
                core.warned.add(key)
                log.error(
                    "rejoin_impossible backend=%s reason=%r",
                    name,
                    "an old master has no replication account: set [failover] replication_user",
                )
            return
        if await self._diverged(rec, name, master):
            return
        semi = self._steps.semi_sync_wanted(name)
        await self._steps.follow(rec, name, master, former_master=True, semi=semi)
        core.step(rec, f"{name} rejoined as a replica of {master}")

    async def _repoint_stray(self, name: str) -> None:
        if name in self.busy:
            return
        self.busy.add(name)
        core = self._core
        try:
            master = core.topology.writable_master()
            h = core.monitor.health(name)
            if master is None or h.master_name == master:
                return
            rec = core.timeline.latest_for_old(h.master_name) if h.master_name else None
            if await self._diverged(rec, name, master):
                return
            await self._steps.follow(
                rec, name, master, former_master=False, semi=bool(h.semi_sync_slave)
            )
            core.step(rec, f"{name} repointed from {h.master_name} to {master}")
        except (BackendError, QueryError) as e:
            log.warning("repoint_failed backend=%s reason=%r", name, str(e))
        finally:
            self.busy.discard(name)

    async def _diverged(self, rec: FailoverRecord | None, name: str, master: str) -> bool:
        """Whether `name` holds transactions `master` lacks; if so it is left OFFLINE_HARD."""
        mine, theirs = await self._steps.histories(name, master)
        try:
            missing = gtid_missing(theirs, mine)
        except GtidError as e:
            missing, theirs = [f"unreadable history ({e})"], f"{theirs} ({e})"
        if not missing:
            return False
        self._notes[name] = f"diverged: has {', '.join(missing)} that {master} lacks"
        self._core.monitor.set_admin_state(name, BackendState.OFFLINE_HARD)
        self._core.step(
            rec,
            f"{name} has transactions {master} lacks ({mine} vs {theirs}): left OFFLINE_HARD; "
            "rebuild it from the master or reconcile by hand, then set it ONLINE",
            logging.ERROR,
        )
        return True
