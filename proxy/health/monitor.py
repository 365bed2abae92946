"""Probing the backends: liveness, clean connects, replication state and sub-second lag.

The I/O half of health. Each backend gets its own connections under the [monitor] account
and three loops:

- liveness, every `interval_ms`: COM_PING on a kept-open connection (reconnecting when it
  breaks). A probe fails if no answer comes within `timeout_ms`. One request is in flight
  at a time: while a ping or handshake is unanswered, later probes wait on the same answer
  instead of piling connections onto a hung server, and each probe that waited past its
  timeout counts as one failure. So a hung (SIGSTOPped) server is SHUNNED
  `timeout_ms + (failure_threshold - 1) * interval_ms` after the first probe it left
  unanswered (up to one interval more after it hung), a killed one (connection refused at
  once) after `failure_threshold` probes. Defaults: about 1.0-1.25 s and 0.5-0.75 s.
- a fresh connect + login + COM_QUIT every `connect_interval_ms`: catches a server that
  takes no new connections while old ones still work.
- replication state every `replication_interval_ms`: read_only, GTID positions, semi-sync
  roles, SHOW SLAVE STATUS; this feeds Topology.observe and the lag verdicts.

Health checks must never hurt the server (haproxy #2934: aborted handshakes until the host
is blocked with error 1129). Every handshake Baton starts runs to completion: a handshake
that is slow is counted as a failed probe but is left to finish (then closed with COM_QUIT)
rather than cut off, which the server would count in Aborted_connects.

Verdicts come from one pure FailureDetector per backend; this module only feeds it and
forwards its state changes to the Topology.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.backend import (
    BackendConnection,
    BackendError,
    Credentials,
    QueryError,
    QueryResult,
    await_login,
    connect,
)
from proxy.config import BackendConfig, MonitorConfig
from proxy.health.detector import FailureDetector
from proxy.health.election import GtidError, ReplicaStatus, parse_gtid_list
from proxy.health.states import BackendState, StateChange
from proxy.health.topology import Topology, TopologyError
from proxy.protocol.constants import Command
from proxy.tls import backend_security

log = logging.getLogger("baton.monitor")

# How long a handshake may take before Baton gives up on it. Far beyond any probe timeout on
# purpose: the probe has long been counted as failed by then; the handshake is only kept
# going so that a hung server that wakes up sees a complete login, not an aborted one.
HANDSHAKE_PATIENCE_S = 60.0
# Logins a server may still be working on before the monitor stops opening new ones.
MAX_UNFINISHED_LOGINS = 2

# Master GTID positions kept for lag estimates. Lag beyond this window is still reported,
# as at least the window (and Seconds_Behind_Master takes over).
POSITION_HISTORY_S = 600.0

_ER_UNKNOWN_SYSTEM_VARIABLE = 1193
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_VARIABLES = (
    "@@read_only",
    "@@server_id",
    "@@gtid_binlog_pos",
    "@@gtid_current_pos",
    "@@gtid_slave_pos",
    "@@rpl_semi_sync_master_enabled",
    "@@rpl_semi_sync_slave_enabled",
)


@dataclass(frozen=True)
class BackendHealth:
    """What the monitor knows about one backend, for the admin port and for failover.

    Times are on the monitor's clock. Replication fields come from the last successful
    replication sample (`replication_checked_at`); `master_host` is None when the server
    replicates from nobody.
    """

    name: str
    address: str
    state: BackendState
    alive: bool  # the last liveness probe succeeded
    last_check_at: float | None
    last_error: str | None
    latency_ms: float | None
    checks: int
    failures: int
    replication_checked_at: float | None = None
    read_only: bool | None = None
    server_id: int | None = None
    gtid_binlog_pos: str = ""
    gtid_current_pos: str = ""
    gtid_slave_pos: str = ""
    gtid_io_pos: str = ""
    io_state: str | None = None  # Slave_IO_Running: "Yes", "No", "Connecting"
    io_running: bool = False
    sql_running: bool = False
    master_host: str | None = None
    master_port: int | None = None
    master_name: str | None = None  # the configured backend at master_host:master_port
    seconds_behind_master: int | None = None
    lag_s: float | None = None
    semi_sync_master: bool | None = None
    semi_sync_slave: bool | None = None

    @property
    def is_replica(self) -> bool:
        return self.master_host is not None


@dataclass(frozen=True)
class _Sample:
    """One replication-state reading. sent_at/received_at bracket the moment it was true."""

    sent_at: float
    received_at: float
    read_only: bool
    server_id: int | None
    gtid_binlog_pos: str
    gtid_current_pos: str
    gtid_slave_pos: str
    semi_sync_master: bool | None
    semi_sync_slave: bool | None
    master_host: str | None = None
    master_port: int | None = None
    io_state: str | None = None
    sql_running: bool = False
    seconds_behind_master: int | None = None
    gtid_io_pos: str = ""


@dataclass(eq=False)
class _Watch:
    """Everything the monitor keeps for one backend."""

    cfg: BackendConfig
    detector: FailureDetector
    ping_conn: BackendConnection | None = None
    state_conn: BackendConnection | None = None
    exec_conn: BackendConnection | None = None
    state_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    exec_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Logins whose caller gave up (stop, reload, its wait ran out): they finish and quit.
    orphans: set[asyncio.Task[BackendConnection]] = field(default_factory=set)
    alive: bool = False
    stopping: bool = False
    checks: int = 0
    failures: int = 0
    last_check_at: float | None = None
    last_error: str | None = None
    sample: _Sample | None = None
    master_name: str | None = None
    lag_s: float | None = None
    # (first seen at, gtid_binlog_pos) for each distinct position, oldest first.
    positions: deque[tuple[float, str]] = field(default_factory=deque)

    def close(self) -> None:
        for conn in (self.ping_conn, self.state_conn, self.exec_conn):
            if conn is not None:
                conn.close()
        self.ping_conn = self.state_conn = self.exec_conn = None


class Monitor:
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
        self._watches: dict[str, _Watch] = {}
        self._listeners: list[Callable[[BackendHealth], None]] = []
        self._running = False
        self._semi_sync_vars = True  # False once a server says it has no such variables
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

    def _new_watch(self, b: BackendConfig) -> _Watch:
        return _Watch(b, FailureDetector(self._cfg.failure_threshold, self._clock))

    def _start_watch(self, w: _Watch) -> None:
        w.tasks = [
            asyncio.ensure_future(loop(w))
            for loop in (self._liveness_loop, self._connect_probe_loop, self._replication_loop)
        ]

    async def _stop_watch(self, w: _Watch) -> None:
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
        return self._health(self._get(name))

    def all_health(self) -> list[BackendHealth]:
        return [self._health(w) for w in self._watches.values()]

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
        await self._sample(w)
        return self._health(w)

    async def execute(self, name: str, sql: str, timeout: float) -> QueryResult:
        """Run one statement on `name` through the monitor's own connection for actions.

        Raises BackendError when the backend is unreachable or the statement timed out
        (the connection is then dropped), QueryError when the server refused it.
        """
        w = self._get(name)
        async with w.exec_lock:
            conn = w.exec_conn
            if conn is None or not conn.alive:
                conn = w.exec_conn = await self._connect(w, self._connect_timeout_s)
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
        self._apply(w, w.detector.set_admin_state(state))

    # -- liveness -----------------------------------------------------------------------------

    async def _liveness_loop(self, w: _Watch) -> None:
        waiting: deque[float] = deque()  # issue times of probes waiting on `request`
        request: asyncio.Task[str | None] | None = None
        started = 0.0
        next_tick = self._clock()
        try:
            while not w.stopping:
                interval = self._cfg.interval_ms / 1000
                timeout = self._cfg.timeout_ms / 1000
                now = self._clock()
                if now >= next_tick:
                    waiting.append(now)
                    next_tick += interval
                    if next_tick <= now:
                        next_tick = now + interval
                    if request is None:
                        started = now
                        request = asyncio.ensure_future(self._liveness_request(w))
                wake = min(next_tick, waiting[0] + timeout) if waiting else next_tick
                delay = max(0.0, wake - self._clock())
                if request is not None:
                    await asyncio.wait({request}, timeout=delay)
                else:
                    await asyncio.sleep(delay)
                now = self._clock()
                if request is not None and request.done():
                    error = request.result()
                    request = None
                    # One answer is one observation, however many probes waited on it: a
                    # single dropped connection must not count as several failures.
                    if waiting:
                        waiting.clear()
                        if error is None:
                            self._record_success(w, now - started)
                        else:
                            self._record_failure(w, error)
                while waiting and now - waiting[0] >= timeout:
                    waiting.popleft()
                    self._record_failure(w, f"no answer within {self._cfg.timeout_ms} ms")
        finally:
            if request is not None:
                request.cancel()

    async def _liveness_request(self, w: _Watch) -> str | None:
        """One ping (or, with no usable connection, one handshake). None on success."""
        try:
            conn = w.ping_conn
            if conn is not None and conn.alive:
                # A ping unanswered for the whole failure window is abandoned: a silently
                # dropped connection must not keep a healthy server SHUNNED.
                give_up = self._cfg.timeout_ms * max(1, self._cfg.failure_threshold) / 1000
                tracker = await conn.command(Command.PING, timeout=give_up)
                if tracker.error is not None:
                    return f"ping refused: {tracker.error}"
                return None
            w.ping_conn = None
            w.ping_conn = await self._connect(w, HANDSHAKE_PATIENCE_S)
            return None
        except BackendError as e:
            w.ping_conn = None
            return e.reason
        except Exception as e:  # never let one odd failure stop the probing
            w.ping_conn = None
            return f"{type(e).__name__}: {e}"

    async def _connect_probe_loop(self, w: _Watch) -> None:
        while not w.stopping:
            await asyncio.sleep(self._cfg.connect_interval_ms / 1000)
            if not w.alive:
                continue  # the liveness loop is reconnecting already
            started = self._clock()
            handshake = asyncio.ensure_future(self._connect(w, HANDSHAKE_PATIENCE_S))
            try:
                done, _ = await asyncio.wait({handshake}, timeout=self._connect_timeout_s)
                if not done:
                    self._record_failure(
                        w,
                        f"new connection not logged in within {self._connect_timeout_s * 1000:.0f} ms",
                    )
                try:
                    conn = await handshake
                except BackendError as e:
                    if done:
                        self._record_failure(w, f"new connection failed: {e.reason}")
                    continue
                conn.close()  # COM_QUIT: a clean disconnect, not an aborted one
                if done:
                    self._record_success(w, self._clock() - started)
            finally:
                handshake.cancel()

    def _record_success(self, w: _Watch, latency_s: float) -> None:
        w.checks += 1
        w.alive = True
        w.last_check_at = self._clock()
        self._apply(w, w.detector.record_success(latency_s))

    def _record_failure(self, w: _Watch, reason: str) -> None:
        w.checks += 1
        w.failures += 1
        w.alive = False
        w.last_check_at = self._clock()
        w.last_error = reason
        self._apply(w, w.detector.record_failure(reason))

    def _apply(self, w: _Watch, change: StateChange | None) -> None:
        if change is None:
            return
        log.log(
            logging.WARNING if change.new is BackendState.SHUNNED else logging.INFO,
            "backend_state backend=%s old=%s new=%s reason=%r",
            w.cfg.name,
            change.old.value,
            change.new.value,
            change.reason,
        )
        try:
            self._topology.apply_state_change(w.cfg.name, change)
        except TopologyError as e:
            log.debug("topology_skipped backend=%s reason=%s", w.cfg.name, e)

    # -- replication --------------------------------------------------------------------------

    async def _replication_loop(self, w: _Watch) -> None:
        while not w.stopping:
            try:
                await self._sample(w)
            except Exception:
                log.exception("replication_sample_failed backend=%s", w.cfg.name)
            await asyncio.sleep(self._cfg.replication_interval_ms / 1000)

    async def _sample(self, w: _Watch) -> bool:
        async with w.state_lock:
            if not w.alive:
                return False
            timeout = self._cfg.timeout_ms / 1000
            sent_at = self._clock()
            try:
                conn = w.state_conn
                if conn is None or not conn.alive:
                    conn = w.state_conn = await self._connect(w, self._connect_timeout_s)
                variables = await self._read_variables(conn, timeout)
                slave = await conn.query("SHOW SLAVE STATUS", timeout=timeout)
            except BackendError as e:
                w.state_conn = None
                w.last_error = f"replication state: {e.reason}"
                return False
            except QueryError as e:
                w.last_error = f"replication state: {e}"
                return False
            sample = _parse_sample(sent_at, self._clock(), variables, slave)
            w.sample = sample
        self._absorb(w, sample)
        return True

    async def _read_variables(self, conn: BackendConnection, timeout: float) -> QueryResult:
        if self._semi_sync_vars:
            try:
                return await conn.query("SELECT " + ", ".join(_VARIABLES), timeout=timeout)
            except QueryError as e:
                if e.err.code != _ER_UNKNOWN_SYSTEM_VARIABLE:
                    raise
                self._semi_sync_vars = False  # no semi-sync on this server: stop asking
        return await conn.query("SELECT " + ", ".join(_VARIABLES[:5]), timeout=timeout)

    def _absorb(self, w: _Watch, s: _Sample) -> None:
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
            w.lag_s = _estimate_lag(s, master.positions if master else None)
        else:
            w.lag_s = 0.0  # a master has no lag: clears a verdict left from its replica days
        self._apply(w, w.detector.record_lag(w.lag_s, limit_s))
        replicating_from = w.master_name or (
            f"{s.master_host}:{s.master_port}" if s.master_host else None
        )
        try:
            self._topology.observe(name, s.read_only, replicating_from, lag_s=w.lag_s)
        except TopologyError as e:
            log.debug("topology_skipped backend=%s reason=%s", name, e)
        health = self._health(w)
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

    # -- helpers ------------------------------------------------------------------------------

    async def _connect(self, w: _Watch, wait_s: float) -> BackendConnection:
        """Log in to the backend, waiting ``wait_s``.

        A login the caller gives up on (its wait ran out, monitor stop, backend removed on
        reload) is not cut short (see `await_login`): it goes on for up to
        HANDSHAKE_PATIENCE_S and quits with COM_QUIT; `_stop_watch` waits for those, bounded.
        A server still busy with earlier logins gets no new one: another socket would not
        make it answer sooner.
        """
        b = w.cfg
        if len(w.orphans) >= MAX_UNFINISHED_LOGINS:
            raise BackendError(b.name, f"{len(w.orphans)} earlier logins still unfinished")
        login = asyncio.ensure_future(
            connect(
                b.name,
                b.host,
                b.port,
                Credentials(self._cfg.user, self._cfg.password.encode(), None),
                timeout=HANDSHAKE_PATIENCE_S,
                security=backend_security(b),
                attributes={"_client_name": "baton", "program_name": "baton-monitor"},
            )
        )
        try:
            return await await_login(b.name, login, _quit_if_logged_in, wait_s)
        except (asyncio.CancelledError, BackendError):
            if not login.done():  # abandoned: stop() waits for it, new logins count it
                w.orphans.add(login)
                login.add_done_callback(w.orphans.discard)
            raise

    def _get(self, name: str) -> _Watch:
        try:
            return self._watches[name]
        except KeyError:
            raise KeyError(f"unknown backend {name!r}") from None

    def _health(self, w: _Watch) -> BackendHealth:
        d = w.detector
        s = w.sample
        base = {
            "name": w.cfg.name,
            "address": w.cfg.address,
            "state": d.state,
            "alive": w.alive,
            "last_check_at": w.last_check_at,
            "last_error": w.last_error,
            "latency_ms": None if d.last_latency_s is None else d.last_latency_s * 1000,
            "checks": w.checks,
            "failures": w.failures,
        }
        if s is None:
            return BackendHealth(**base)  # type: ignore[arg-type]
        return BackendHealth(
            **base,  # type: ignore[arg-type]
            replication_checked_at=s.received_at,
            read_only=s.read_only,
            server_id=s.server_id,
            gtid_binlog_pos=s.gtid_binlog_pos,
            gtid_current_pos=s.gtid_current_pos,
            gtid_slave_pos=s.gtid_slave_pos,
            gtid_io_pos=s.gtid_io_pos,
            io_state=s.io_state,
            io_running=s.io_state == "Yes",
            sql_running=s.sql_running,
            master_host=s.master_host,
            master_port=s.master_port,
            master_name=w.master_name,
            seconds_behind_master=s.seconds_behind_master,
            lag_s=w.lag_s,
            semi_sync_master=s.semi_sync_master,
            semi_sync_slave=s.semi_sync_slave,
        )


def _flag(value: bytes | None) -> bool | None:
    if value is None:
        return None
    text = value.decode().strip().upper()
    return text in ("1", "ON", "YES")


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode()


def _parse_sample(
    sent_at: float, received_at: float, variables: QueryResult, slave: QueryResult
) -> _Sample:
    row = list(variables.rows[0]) + [None] * (len(_VARIABLES) - len(variables.rows[0]))
    read_only, server_id, binlog_pos, current_pos, slave_pos, semi_master, semi_slave = row
    common = {
        "sent_at": sent_at,
        "received_at": received_at,
        "read_only": bool(_flag(read_only)),
        "server_id": int(server_id) if server_id is not None else None,
        # SHOW SLAVE STATUS and some variables wrap long GTID lists with ",\n".
        "gtid_binlog_pos": _one_line(_text(binlog_pos)),
        "gtid_current_pos": _one_line(_text(current_pos)),
        "gtid_slave_pos": _one_line(_text(slave_pos)),
        "semi_sync_master": _flag(semi_master),
        "semi_sync_slave": _flag(semi_slave),
    }
    rows = slave.dicts()
    if not rows:
        return _Sample(**common)  # type: ignore[arg-type]
    r = rows[0]
    sbm = r.get("Seconds_Behind_Master")
    port = r.get("Master_Port")
    return _Sample(
        **common,  # type: ignore[arg-type]
        master_host=r.get("Master_Host") or None,
        master_port=int(port) if port else None,
        io_state=r.get("Slave_IO_Running"),
        sql_running=r.get("Slave_SQL_Running") == "Yes",
        seconds_behind_master=int(sbm) if sbm is not None else None,
        gtid_io_pos=_one_line(r.get("Gtid_IO_Pos") or ""),
    )


def _one_line(gtids: str) -> str:
    return ",".join(part.strip() for part in gtids.split(",") if part.strip())


def _applied(applied: str, position: str) -> bool:
    """Whether a replica's gtid_slave_pos has reached a master's gtid_binlog_pos.

    Per domain by sequence number: within a domain seqs keep rising across masters.
    """
    mine = parse_gtid_list(applied)
    return all(d in mine and mine[d].seq >= g.seq for d, g in parse_gtid_list(position).items())


def _estimate_lag(s: _Sample, master_positions: Iterable[tuple[float, str]] | None) -> float | None:
    """Replication lag of a replica sample, sub-second.

    Seconds_Behind_Master counts whole seconds and is NULL whenever the IO thread is down,
    so it is only a lower bound here. The estimate: the master's position history says
    when each position was first seen; the oldest position this replica has not applied
    already existed then, so the replica is at least that far behind. Caught up with every
    position seen by the time of the sample: lag 0. SQL thread stopped with no
    Seconds_Behind_Master: unknown (None).
    """
    sbm = s.seconds_behind_master
    if not s.sql_running and sbm is None:
        return None
    estimate: float | None = None
    known = [(t, p) for t, p in master_positions or () if t <= s.sent_at]
    if s.gtid_slave_pos and known:
        try:
            # Newest first: applying is in order, so once one position is applied every
            # older one is too. Usually the newest is, and that is a single comparison.
            estimate = 0.0
            for seen_at, position in reversed(known):
                if _applied(s.gtid_slave_pos, position):
                    break
                estimate = s.sent_at - seen_at
        except GtidError:
            estimate = None
    if estimate is None:
        return None if sbm is None else float(sbm)
    return estimate if sbm is None else max(estimate, float(sbm))


def _quit_if_logged_in(login: asyncio.Future[BackendConnection]) -> None:
    if not login.cancelled() and login.exception() is None:
        login.result().close()  # COM_QUIT


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
