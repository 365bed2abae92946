"""Probing the backends: liveness, clean connects, replication state and sub-second lag.

The I/O half of health. Each backend gets a `Watch` (proxy.health.watch: its connections
under the [monitor] account, its FailureDetector, its last sample) and three loops:

- liveness, every `interval_ms`, and a fresh connect + login + COM_QUIT every
  `connect_interval_ms` (proxy.health.liveness: how a hung or refusing server is told
  from a slow one);
- replication state every `replication_interval_ms` (proxy.health.replication_state):
  read_only, GTID positions, semi-sync roles, SHOW SLAVE STATUS; this feeds
  Topology.observe and the lag verdicts.

This class owns the watches and their lifecycle (start, stop, reload) and answers the rest
of Baton: health snapshots, the election's input, fresh samples on demand, and the one
connection per backend the failover runbooks run their statements on.

Health checks must never hurt the server: every handshake Baton starts runs to completion
(see proxy.health.watch). Verdicts come from one pure FailureDetector per backend; the
monitor only feeds it and forwards its state changes to the Topology.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from proxy.backend import BackendError, QueryResult
from proxy.config import BackendConfig, MonitorConfig
from proxy.health.detector import FailureDetector
from proxy.health.election import ReplicaStatus
from proxy.health.liveness import LivenessProbes
from proxy.health.replication_state import ReplicationReader
from proxy.health.states import BackendState
from proxy.health.topology import Topology, TopologyError
from proxy.health.watch import BackendHealth, Watch, apply_change, log_in

# BackendHealth is re-exported: the rest of Baton reads a backend's health from here.
__all__ = ["BackendHealth", "Monitor", "cancel_all"]

log = logging.getLogger("baton.monitor")


class Monitor:
    """The watches of every configured backend, and what the rest of Baton asks of them."""

    def __init__(
        self,
        backends: Sequence[BackendConfig],
        cfg: MonitorConfig,
        topology: Topology,
        *,
        connect_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = cfg
        self._topology = topology
        self._connect_timeout_s = connect_timeout_s
        self._clock = clock
        self._watches: dict[str, Watch] = {}
        self._listeners: list[Callable[[BackendHealth], None]] = []
        self._running = False
        self._liveness = LivenessProbes(
            cfg, topology, connect_timeout_s=connect_timeout_s, clock=clock
        )
        self._replication = ReplicationReader(
            cfg,
            topology,
            self._watches,
            self._listeners,
            connect_timeout_s=connect_timeout_s,
            clock=clock,
        )
        for b in backends:
            self._watches[b.name] = self._new_watch(b)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._running = True
        for w in self._watches.values():
            self._start_watch(w)

    async def stop(self) -> None:
        self._running = False
        watches = list(self._watches.values())
        for w in watches:
            await self._stop_watch(w)

    def update(self, backends: Sequence[BackendConfig], cfg: MonitorConfig) -> None:
        """Config reload: new intervals apply from the next probe; backends come and go.

        Add a backend to the Topology before the monitor, remove it after: the monitor
        reports into the Topology by name.
        """
        self._cfg = cfg
        self._liveness.cfg = self._replication.cfg = cfg
        wanted = {b.name: b for b in backends}
        for name in [n for n in self._watches if n not in wanted]:
            asyncio.ensure_future(self._stop_watch(self._watches.pop(name)))
            log.info("monitor_backend_removed backend=%s", name)
        for name, b in wanted.items():
            w = self._watches.get(name)
            if w is None:
                w = self._watches[name] = self._new_watch(b)
                if self._running:
                    self._start_watch(w)
                log.info("monitor_backend_added backend=%s address=%s", name, b.address)
                continue
            w.detector.failure_threshold = cfg.failure_threshold
            moved = (w.cfg.host, w.cfg.port, w.cfg.tls_settings) != (b.host, b.port, b.tls_settings)
            w.cfg = b
            if moved:
                # Reconnect to the new address; old positions describe another server.
                w.close()
                w.sample = None
                w.positions.clear()
                log.info("monitor_backend_moved backend=%s address=%s", name, b.address)

    def _new_watch(self, b: BackendConfig) -> Watch:
        return Watch(b, FailureDetector(self._cfg.failure_threshold, self._clock))

    def _start_watch(self, w: Watch) -> None:
        w.tasks = [
            asyncio.ensure_future(loop(w))
            for loop in (
                self._liveness.liveness_loop,
                self._liveness.connect_probe_loop,
                self._replication.loop,
            )
        ]

    async def _stop_watch(self, w: Watch) -> None:
        w.stopping = True
        await cancel_all(w.tasks)
        for task in w.tasks:
            if not task.cancelled() and task.exception() is not None:
                log.error("monitor_task_failed backend=%s", w.cfg.name, exc_info=task.exception())
        w.tasks = []
        if w.orphans:
            # Bounded: a server that hangs mid-login must not hold up shutdown.
            await asyncio.wait(list(w.orphans), timeout=self._connect_timeout_s)
            await cancel_all(list(w.orphans))
        w.close()

    # -- queries ------------------------------------------------------------------------------

    def backends(self) -> list[str]:
        return list(self._watches)

    def health(self, name: str) -> BackendHealth:
        return self._get(name).health()

    def all_health(self) -> list[BackendHealth]:
        return [w.health() for w in self._watches.values()]

    def replica_statuses(self) -> list[ReplicaStatus]:
        """Every backend but the current master, as election.choose_candidate wants them.

        A fenced old master is never promotable; an OFFLINE_HARD backend (taken out by an
        admin, or an old master left out for divergence) counts as not alive, so its
        position neither qualifies nor blocks a candidate.
        """
        master = self._topology.master
        statuses = []
        for name, w in self._watches.items():
            if name == master:
                continue
            s = w.sample
            try:
                fenced = self._topology.is_fenced(name)
            except TopologyError:
                fenced = False
            state = w.detector.state
            statuses.append(
                ReplicaStatus(
                    name=name,
                    promotable=w.cfg.promotable
                    and not fenced
                    and state is not BackendState.OFFLINE_HARD,
                    alive=w.alive and s is not None and state is not BackendState.OFFLINE_HARD,
                    gtid_io_pos=s.gtid_io_pos if s else "",
                    gtid_slave_pos=s.gtid_slave_pos if s else "",
                    io_running=bool(s and s.io_state == "Yes"),
                    sql_running=bool(s and s.sql_running),
                    lag_s=w.lag_s,
                )
            )
        return statuses

    def on_sample(self, callback: Callable[[BackendHealth], None]) -> Callable[[], None]:
        """Call `callback` after every successful replication sample; returns an unsubscribe."""
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe

    # -- actions ------------------------------------------------------------------------------

    async def probe_now(self, name: str) -> BackendHealth:
        """Read replication state now (failover wants fresh IO-thread states), then report.

        A backend whose liveness probes are failing is not asked; its health says so.
        """
        w = self._get(name)
        await self._replication.sample(w)
        return w.health()

    async def execute(self, name: str, sql: str, timeout: float) -> QueryResult:
        """Run one statement on `name` through the monitor's own connection for actions.

        Raises BackendError when the backend is unreachable or the statement timed out
        (the connection is then dropped), QueryError when the server refused it.
        """
        w = self._get(name)
        async with w.exec_lock:
            conn = w.exec_conn
            if conn is None or not conn.alive:
                conn = w.exec_conn = await log_in(w, self._cfg, self._connect_timeout_s)
            try:
                return await conn.query(sql, timeout=timeout)
            except BackendError:
                w.exec_conn = None
                raise

    def close_action_connection(self, name: str) -> None:
        """The next `execute` on `name` logs in afresh. A session keeps the global
        privileges it logged in with: after a GRANT, only a new one has them."""
        w = self._get(name)
        if w.exec_conn is not None and not w.exec_lock.locked():
            w.exec_conn.close()
            w.exec_conn = None

    def set_admin_state(self, name: str, state: BackendState) -> None:
        """OFFLINE_SOFT / OFFLINE_HARD / ONLINE from an admin or from fencing."""
        w = self._get(name)
        apply_change(w, w.detector.set_admin_state(state), self._topology)

    # -- helpers ------------------------------------------------------------------------------

    def _get(self, name: str) -> Watch:
        try:
            return self._watches[name]
        except KeyError:
            raise KeyError(f"unknown backend {name!r}") from None


async def cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel tasks and wait until they are done.

    Cancels again while any is still running: on Python 3.11 asyncio.wait_for (inside
    every backend query and connect) swallows a cancellation that arrives just as its
    inner future completes, and a loop would then run on after stop().
    """
    pending = [t for t in tasks if not t.done()]
    while pending:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.2)
        pending = [t for t in pending if not t.done()]
