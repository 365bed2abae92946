"""Reading each backend's replication state, and what follows from it.

Every `replication_interval_ms` (and on demand: failover wants fresh IO-thread states) one
sample per backend: read_only, GTID positions, semi-sync roles, SHOW SLAVE STATUS. A sample
becomes the master's position history, a replica's sub-second lag estimate (its position
against the history of the master it replicates from) and the lag verdict, then a
Topology observation; the Monitor's sample listeners (the failover coordinator) hear of it
last, when all of that is in place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from proxy.backend import BackendConnection, BackendError, QueryError, QueryResult
from proxy.config import MonitorConfig
from proxy.health.samples import VARIABLES, ReplicationSample, estimate_lag, parse_sample
from proxy.health.topology import Topology, TopologyError
from proxy.health.watch import BackendHealth, Watch, apply_change, log_in

log = logging.getLogger("baton.monitor")

# Master GTID positions kept for lag estimates. Lag beyond this window is still reported,
# as at least the window (and Seconds_Behind_Master takes over).
POSITION_HISTORY_S = 600.0

_ER_UNKNOWN_SYSTEM_VARIABLE = 1193
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class ReplicationReader:
    """Samples the backends of `watches` (the Monitor's, shared); `cfg` is replaced on reload."""

    def __init__(
        self,
        cfg: MonitorConfig,
        topology: Topology,
        watches: Mapping[str, Watch],
        listeners: list[Callable[[BackendHealth], None]],
        *,
        connect_timeout_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.cfg = cfg
        self._topology = topology
        self._watches = watches
        self._listeners = listeners
        self._connect_timeout_s = connect_timeout_s
        self._clock = clock
        self._semi_sync_vars = True  # False once a server says it has no such variables

    async def loop(self, w: Watch) -> None:
        while not w.stopping:
            try:
                await self.sample(w)
            except Exception:
                log.exception("replication_sample_failed backend=%s", w.cfg.name)
            await asyncio.sleep(self.cfg.replication_interval_ms / 1000)

    async def sample(self, w: Watch) -> bool:
        """Read `w`'s state now and act on it; False if it could not be read (or `w` is
        not alive: a backend whose liveness probes fail is not asked)."""
        async with w.state_lock:
            if not w.alive:
                return False
            timeout = self.cfg.timeout_ms / 1000
            sent_at = self._clock()
            try:
                conn = w.state_conn
                if conn is None or not conn.alive:
                    conn = w.state_conn = await log_in(w, self.cfg, self._connect_timeout_s)
                variables = await self._read_variables(conn, timeout)
                slave = await conn.query("SHOW SLAVE STATUS", timeout=timeout)
            except BackendError as e:
                w.state_conn = None
                w.last_error = f"replication state: {e.reason}"
                return False
            except QueryError as e:
                w.last_error = f"replication state: {e}"
                return False
            sample = parse_sample(sent_at, self._clock(), variables, slave)
            w.sample = sample
        self._absorb(w, sample)
        return True

    async def _read_variables(self, conn: BackendConnection, timeout: float) -> QueryResult:
        if self._semi_sync_vars:
            try:
                return await conn.query("SELECT " + ", ".join(VARIABLES), timeout=timeout)
            except QueryError as e:
                if e.err.code != _ER_UNKNOWN_SYSTEM_VARIABLE:
                    raise
                self._semi_sync_vars = False  # no semi-sync on this server: stop asking
        return await conn.query("SELECT " + ", ".join(VARIABLES[:5]), timeout=timeout)

    def _absorb(self, w: Watch, s: ReplicationSample) -> None:
        """Turn a sample into position history, a lag verdict and a topology observation."""
        name = w.cfg.name
        history = w.positions
        if not history or history[-1][1] != s.gtid_binlog_pos:
            history.append((s.received_at, s.gtid_binlog_pos))
        while len(history) > 1 and history[0][0] < s.received_at - POSITION_HISTORY_S:
            history.popleft()

        w.master_name = (
            self._backend_at(s.master_host, s.master_port or 0) if s.master_host else None
        )
        limit_s = w.cfg.max_replication_lag_ms / 1000
        if s.master_host is not None and name != self._topology.master:
            master = self._watches.get(w.master_name) if w.master_name else None
            w.lag_s = estimate_lag(s, master.positions if master else None)
        else:
            w.lag_s = 0.0  # a master has no lag: clears a verdict left from its replica days
        apply_change(w, w.detector.record_lag(w.lag_s, limit_s), self._topology)
        replicating_from = w.master_name or (
            f"{s.master_host}:{s.master_port}" if s.master_host else None
        )
        try:
            self._topology.observe(name, s.read_only, replicating_from, lag_s=w.lag_s)
        except TopologyError as e:
            log.debug("topology_skipped backend=%s reason=%s", name, e)
        health = w.health()
        for callback in tuple(self._listeners):
            try:
                callback(health)
            except Exception:
                log.exception("sample_listener_failed backend=%s", name)

    def _backend_at(self, host: str, port: int) -> str | None:
        host = host.lower()
        for name, w in self._watches.items():
            if w.cfg.port != port:
                continue
            mine = w.cfg.host.lower()
            if mine == host or (mine in _LOOPBACK and host in _LOOPBACK):
                return name
        return None
