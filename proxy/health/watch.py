"""What the monitor keeps for one backend, what it tells others, and how it logs in.

The liveness probes (proxy.health.liveness), the replication reader
(proxy.health.replication_state) and the Monitor's own actions all work on the same
per-backend `Watch`: this module is what they share, so none of them needs the others.

Health checks must never hurt the server (haproxy #2934: aborted handshakes until the host
is blocked with error 1129). Every handshake Baton starts runs to completion: a handshake
that is slow is counted as a failed probe but is left to finish (then closed with COM_QUIT)
rather than cut off, which the server would count in Aborted_connects.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field, replace

from proxy.backend import BackendConnection, BackendError, Credentials, await_login, connect
from proxy.config import BackendConfig, MonitorConfig
from proxy.health.detector import FailureDetector
from proxy.health.samples import ReplicationSample
from proxy.health.states import BackendState, StateChange
from proxy.health.topology import Topology, TopologyError
from proxy.tls import backend_security

log = logging.getLogger("baton.monitor")

# How long a handshake may take before Baton gives up on it. Far beyond any probe timeout on
# purpose: the probe has long been counted as failed by then; the handshake is only kept
# going so that a hung server that wakes up sees a complete login, not an aborted one.
HANDSHAKE_PATIENCE_S = 60.0
# Logins a server may still be working on before the monitor stops opening new ones.
MAX_UNFINISHED_LOGINS = 2


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


@dataclass(eq=False)
class Watch:
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
    sample: ReplicationSample | None = None
    master_name: str | None = None
    lag_s: float | None = None
    # (first seen at, gtid_binlog_pos) for each distinct position, oldest first.
    positions: deque[tuple[float, str]] = field(default_factory=deque)

    def close(self) -> None:
        for conn in (self.ping_conn, self.state_conn, self.exec_conn):
            if conn is not None:
                conn.close()
        self.ping_conn = self.state_conn = self.exec_conn = None

    def health(self) -> BackendHealth:
        """The snapshot others read: the verdict, and the last replication sample if any."""
        d = self.detector
        s = self.sample
        base = BackendHealth(
            name=self.cfg.name,
            address=self.cfg.address,
            state=d.state,
            alive=self.alive,
            last_check_at=self.last_check_at,
            last_error=self.last_error,
            latency_ms=None if d.last_latency_s is None else d.last_latency_s * 1000,
            checks=self.checks,
            failures=self.failures,
        )
        if s is None:
            return base
        return replace(
            base,
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
            master_name=self.master_name,
            seconds_behind_master=s.seconds_behind_master,
            lag_s=self.lag_s,
            semi_sync_master=s.semi_sync_master,
            semi_sync_slave=s.semi_sync_slave,
        )


def apply_change(w: Watch, change: StateChange | None, topology: Topology) -> None:
    """A verdict of `w`'s FailureDetector (probe, lag or admin): logged, then given to the
    Topology, which owns what a state change means for routing and failover."""
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
        topology.apply_state_change(w.cfg.name, change)
    except TopologyError as e:
        log.debug("topology_skipped backend=%s reason=%s", w.cfg.name, e)


async def log_in(w: Watch, cfg: MonitorConfig, wait_s: float) -> BackendConnection:
    """Log in to the backend under the [monitor] account, waiting ``wait_s``.

    A login the caller gives up on (its wait ran out, monitor stop, backend removed on
    reload) is not cut short (see `await_login`): it goes on for up to
    HANDSHAKE_PATIENCE_S and quits with COM_QUIT; the Monitor's stop waits for those,
    bounded. A server still busy with earlier logins gets no new one: another socket would
    not make it answer sooner.
    """
    b = w.cfg
    if len(w.orphans) >= MAX_UNFINISHED_LOGINS:
        raise BackendError(b.name, f"{len(w.orphans)} earlier logins still unfinished")
    login = asyncio.ensure_future(
        connect(
            b.name,
            b.host,
            b.port,
            Credentials(cfg.user, cfg.password.encode(), None),
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


def _quit_if_logged_in(login: asyncio.Future[BackendConnection]) -> None:
    if not login.cancelled() and login.exception() is None:
        login.result().close()  # COM_QUIT
