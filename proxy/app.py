"""Baton, the running proxy: wires config, pools, topology, router and listeners together."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import time
from collections.abc import Callable, Collection, Coroutine, Iterator
from pathlib import Path
from typing import Any, Protocol, cast

from . import logs, native
from .admin.server import AdminServer
from .admin.view import ProxyView, ReloadResult, WorkerRow
from .backend import BackendError, Credentials, connect
from .config import Config, ConfigError, diff_configs, load_config, users_logged_out
from .health.cluster import ClusterLink
from .health.election import GtidError, parse_gtid_list
from .health.events import EventBus, MasterPromoted, SplitBrainSuspected
from .health.failover import FailoverCoordinator
from .health.monitor import Monitor
from .health.privileges import PrivilegeReport
from .health.states import BackendState
from .health.timeline import ClientOutcome
from .health.topology import Topology
from .listeners import Listener, ListenError, prepare_rebinds
from .metrics import MetricsServer
from .pools import Pools
from .protocol import auth
from .protocol.constants import SUPPORTED_CAPABILITIES, Capability
from .protocol.handshake import Account
from .routing.router import Router
from .session import ClientSession, SessionContext
from .session.context import PeerSession
from .session.idle_holders import IdleHolders
from .stats import Stats
from .tls import backend_security, server_context
from .user_limits import UserLimits

log = logging.getLogger("baton")


DEFAULT_SERVER_VERSION = "5.5.5-10.11.0-MariaDB-Baton"

# Capabilities Baton always asks of backends, whatever the client negotiated: session tracking
# lets Baton follow schema/variable changes and GTIDs; multi-results is needed by stored procs.
BACKEND_CAPABILITIES_BASE = int(
    Capability.LONG_PASSWORD | Capability.PROTOCOL_41 | Capability.SECURE_CONNECTION
    | Capability.PLUGIN_AUTH | Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA | Capability.TRANSACTIONS
    | Capability.CONNECT_ATTRS
)


class Baton:
    """The composition root: builds every part, hands each what it needs, and implements the
    narrow interfaces the parts call back through (``session.SessionHost``,
    ``routing.router.RouterHost``, ``admin.view.ProxyView``)."""

    def __init__(self, config: Config, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.loop = asyncio.get_running_loop()
        self.started_at = time.time()
        self.stats = Stats()
        self.sessions: dict[int, ClientSession] = {}
        self._ids: Iterator[int] = itertools.count(1)
        self.accepting = True
        self.bus = EventBus()
        self.topology = Topology([(b.name, b.role) for b in config.backends], self.bus, time.monotonic)
        self._topology_waiters: list[asyncio.Future[None]] = []
        self.bus.subscribe(self._on_event)
        self.router = Router(self.topology, self, self.stats, config)
        # A session waiting for a connection takes one an idle session holds.
        idle_holders = IdleHolders()
        self.pools = Pools(self.spawn, idle_holders.give_back)
        self.accounts: dict[str, Account] = {}
        self.monitor: Monitor | None = None
        self.failover: FailoverCoordinator | None = None
        self.cluster: ClusterLink | None = None
        self.admin_server: AdminServer | None = None
        self.metrics_server: MetricsServer | None = None
        self.privileges = PrivilegeReport()
        self._awaiting_first_write: int | None = None
        # A free-to-move session gives its idle connections back after this long.
        self.idle_release_s = 1.0
        self.last_reload: ReloadResult | None = None
        self._resumed: asyncio.Future[None] | None = None
        # Statements are held (PAUSE). A plain attribute, not a property over ``_resumed``:
        # every statement reads it, and a property runs an interpreted frame per read.
        self.paused = False
        sha2 = config.proxy.auth_plugin == "caching_sha2_password"
        rsa_key = auth.generate_rsa_key() if sha2 else None  # for the full auth exchange
        self.context = SessionContext(
            config=config,
            host=self,
            router=self.router,
            pools=self.pools,
            stats=self.stats,
            topology=self.topology,
            sessions=cast(dict[int, PeerSession], self.sessions),  # the same dict, seen narrowly
            server_version=config.proxy.server_version or DEFAULT_SERVER_VERSION,
            backend_capabilities=BACKEND_CAPABILITIES_BASE,
            rsa_key=rsa_key,
            idle_holders=idle_holders,
        )
        self.proxy_listener = Listener("proxy", self._new_session, backlog=1024)
        self.listeners: list[Listener] = [self.proxy_listener]  # reloads move each of them
        self._reload_lock = asyncio.Lock()  # a SIGHUP and a RELOAD never interleave
        self._stopped = asyncio.Event()
        self._background: set[asyncio.Task[object]] = set()
        self.apply_config(config)

    # -- configuration ------------------------------------------------------------------------

    def apply_config(self, config: Config) -> None:
        self.config = config
        self.context.config = config
        self.router.configure(config)
        self.accounts = {
            u.name: Account(
                u.name,
                u.native_hash,
                u.password.encode() if u.password is not None else None,
                require_tls=u.require_tls,
            )
            for u in config.users
        }
        proxy = config.proxy
        tls = server_context(proxy.tls_cert, proxy.tls_key) if proxy.tls_enabled else None
        self.context.tls_context = tls
        self.context.login_gate.configure(
            proxy.max_unauthenticated_connections,
            proxy.max_unauthenticated_per_address,
            proxy.max_login_failures,
            proxy.login_failure_window_s,
        )
        self.pools.configure(config)

    @property
    def server_version(self) -> str:
        return self.context.server_version

    @property
    def user_limits(self) -> UserLimits:
        """Client sessions per user ([[users]] max_connections), for SHOW POOLS."""
        return self.context.user_limits

    def split_brain_writers(self) -> Collection[str] | None:
        return self.failover.split_brain if self.failover is not None else None

    async def kill_query(self, backend: str, thread_id: int) -> None:
        """KILL QUERY on a backend, through the monitor's connection (none: nothing to do)."""
        if self.monitor is not None:
            await self.monitor.execute(backend, f"KILL QUERY {thread_id}", timeout=2)

    async def kill_elsewhere(self, client_id: int, user: str, query_only: bool) -> bool | None:
        return None  # one process: every session is in self.sessions

    def replica_has(self, name: str, gtid: str) -> bool:
        """Does the monitor already know this replica applied ``gtid``? (saves a wait)"""
        position = self.gtid_slave_pos(name)
        if position is None:
            return False
        try:
            applied = parse_gtid_list(position)
            wanted = parse_gtid_list(gtid)
        except GtidError:
            return False
        return all(d in applied and applied[d].seq >= g.seq for d, g in wanted.items())

    def gtid_slave_pos(self, name: str) -> str | None:
        """What the monitor last saw ``name`` apply; None when it does not know."""
        monitor = self.monitor
        if monitor is None:
            return None
        try:
            return monitor.health(name).gtid_slave_pos
        except KeyError:
            return None

    def promotion_possible(self) -> bool:
        """Could a writable master appear soon? Holding statements only makes sense if so:
        a server other than the master is up (and, in auto mode, promotable)."""
        topology = self.topology
        auto = self.config.failover.mode == "auto"
        for name in topology.backends():
            if name == topology.master or topology.is_fenced(name) or not topology.state(name).is_up:
                continue
            backend = self.config.backend(name)
            if not auto or (backend is not None and backend.promotable):
                return True
        return False

    def note_write_ok(self) -> None:
        """A write succeeded on the master: closes the "first write after failover" timer."""
        if self._awaiting_first_write is not None:
            epoch, self._awaiting_first_write = self._awaiting_first_write, None
            if self.failover is not None:
                self.failover.timeline.note_first_write(epoch)

    def timeline_note(self, kind: ClientOutcome) -> None:
        if self.failover is not None:
            self.failover.timeline.note_client(kind)

    def lookup_account(self, name: str) -> Account | None:
        return self.accounts.get(name)

    def next_connection_id(self) -> int:
        return next(self._ids)

    def _new_session(self) -> ClientSession:
        return ClientSession(self.context)

    # -- topology -----------------------------------------------------------------------------

    def _on_event(self, event: object) -> None:
        if isinstance(event, SplitBrainSuspected):
            self.router.split_brain_alarm = True
        if isinstance(event, MasterPromoted):
            log.warning("master_promoted old=%s new=%s epoch=%s source=%s", event.old, event.new, event.epoch, event.source)
            self._awaiting_first_write = event.epoch
            if event.old is not None:
                self.pools.retire(event.old)  # asyncpg-style: old-generation connections close
            for session in list(self.sessions.values()):
                session.on_master_change(event.old)
        waiters, self._topology_waiters = self._topology_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def topology_changed(self) -> asyncio.Future[None]:
        """A future resolved at the next topology event (for statements held in a failover)."""
        fut = self.loop.create_future()
        self._topology_waiters.append(fut)
        return fut

    # -- connections --------------------------------------------------------------------------

    def _release_idle_sessions(self, idle_before: float) -> None:
        for session in list(self.sessions.values()):
            session.release_if_idle(idle_before)

    def spawn(self, coro: Coroutine[Any, Any, object]) -> asyncio.Task[object]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.start_health()
        await self.start_serving()
        await self.start_operator(self)

    async def start_health(self) -> None:
        """The brain's part: learn the server version, monitor, fail over, join the cluster."""
        await learn_server_version(self)
        await self._start_health()

    async def start_serving(self) -> None:
        """The workers' part: accept clients and keep the pools tidy."""
        cfg = self.config.proxy
        await self.proxy_listener.start_listening(self.config)
        self.spawn(self.pools.janitor(self._release_idle_sessions, self.idle_release_s))
        log.info("listening address=%s backends=%s hot_path=%s", cfg.listen,
                 ",".join(b.name for b in self.config.backends), native.status)

    async def start_operator(self, view: ProxyView) -> None:
        """The admin port and the metrics endpoint, showing ``view`` (this process, or every
        worker's aggregate when the brain runs them)."""
        # >>> operator surfaces: admin port and Prometheus metrics (proxy/admin/server.py,
        # proxy/metrics.py). Each listens while its [admin]/[metrics] listen is set, follows
        # reloads of that address, and is closed in shutdown().
        self.admin_server = AdminServer(view)
        self.metrics_server = MetricsServer(view)
        self.listeners += [self.admin_server, self.metrics_server]
        if self.config.admin.enabled:
            await self.admin_server.start()
        if self.config.metrics.enabled:
            await self.metrics_server.start()
        # <<< operator surfaces

    async def _start_health(self) -> None:
        """The monitor probes every backend; the coordinator acts on what it finds."""
        cfg = self.config
        self.monitor = Monitor(
            cfg.backends, cfg.monitor, self.topology, connect_timeout_s=cfg.proxy.connect_timeout_ms / 1000
        )
        self.failover = FailoverCoordinator(cfg.failover, cfg.backends, self.topology, self.monitor, self.bus)
        await self.monitor.start()
        await self.failover.start()
        self.spawn(self._check_privileges(cfg))
        if cfg.redis.enabled:
            self.cluster = ClusterLink(
                cfg.redis, self.topology, self.failover, address=cfg.proxy.listen
            )
            self.bus.subscribe(self.cluster.on_event)
            await self.cluster.start()
            self.failover.lease = self.cluster.lease

    async def _check_privileges(self, cfg: Config) -> None:
        """Say now, not in the middle of a failover, what the monitor account cannot do."""
        roles = (b.name for b in cfg.backends if b.role == "master")
        master = self.topology.master or next(roles, None)
        await self.privileges.refresh(cfg.backends, cfg.monitor, cfg.failover, master)
        self.privileges.log(cfg.failover.mode)

    async def switchover(self, to: str) -> object:
        """Planned switchover with no client errors: hold new writes, let open transactions
        on the master finish (bounded), switch, then release the held writes to the new master."""
        assert self.failover is not None
        router = self.router
        router.hold_writes = True
        try:
            deadline = time.monotonic() + self.config.failover.buffer_window_ms / 2000
            master = self.topology.master
            while time.monotonic() < deadline and self.busy_on(master):
                await asyncio.sleep(0.01)
            return await self.failover.switchover(to)
        finally:
            router.hold_writes = False
            self._on_event(None)  # wake statements held for the switch

    def busy_on(self, master: str | None) -> bool:
        """Is a transaction open, or a write running, on ``master``? (a switchover waits)"""
        return any(
            s.routing.trx_backend == master or (s.inflight is not None and s.inflight.conn is not None
                                        and s.inflight.conn.backend == master and not s.inflight.read)
            for s in self.sessions.values()
        )

    async def promote(self, name: str, source: str = "admin") -> object:
        """Being told of a promotion (admin PROMOTE, notify-promotion hook, Redis)."""
        assert self.failover is not None
        return await self.failover.promote(name, source=source)

    async def shutdown(self, graceful: bool = True) -> None:
        """Stops accepting; lets running statements finish up to the grace period; closes."""
        if not self.accepting:
            return
        self.accepting = False
        self.proxy_listener.close()
        if graceful:
            deadline = time.monotonic() + self.config.proxy.shutdown_grace_s
            while time.monotonic() < deadline and any(s.inflight is not None for s in self.sessions.values()):
                await asyncio.sleep(0.05)
        for session in list(self.sessions.values()):
            session.kill("shutdown")
        if self.cluster is not None:
            await self.cluster.stop()
        if self.failover is not None:
            await self.failover.stop()
        if self.monitor is not None:
            await self.monitor.stop()
        await asyncio.sleep(0.05)
        self.pools.close(drain=False)
        # >>> operator surfaces (see start())
        for surface in (self.admin_server, self.metrics_server):
            if surface is not None:
                surface.close()
        # <<< operator surfaces
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # -- operator actions (admin port, signals, CLI) ------------------------------------------

    async def reload(self) -> ReloadResult:
        """Re-reads the config file; applies it only if it is valid, all at once.

        A bad file changes nothing: the running config stays, and the result (also shown by
        SHOW CONFIG) says which file, key and reason. So does a new listen address that cannot
        be bound: new addresses are bound before anything is applied.
        """
        if not self.config_path:
            result = ReloadResult(False, time.time(), "no config file to reload", ())
        else:
            try:
                new = load_config(self.config_path)
            except ConfigError as exc:
                result = ReloadResult(False, time.time(), "config rejected; still running the previous one", tuple(exc.errors))
                for line in exc.errors:
                    log.error("reload_rejected error=%r", line)
            else:
                result = await reload_to(self, new)
        self.stats.reloads[result.ok] += 1
        self.last_reload = result
        return result

    async def _apply_reload(self, new: Config) -> None:
        old = self.config
        log_out_users(self, users_logged_out(old, new), new.proxy.require_tls)
        old_names = {b.name for b in old.backends}
        new_names = {b.name for b in new.backends}
        for name in old_names - new_names:
            self.topology.remove_backend(name)
        for b in new.backends:
            if b.name not in old_names:
                self.topology.add_backend(b.name, b.role)
        self.apply_config(new)
        if self.monitor is not None:
            self.monitor.update(new.backends, new.monitor)
        if self.failover is not None:
            self.failover.update(new.failover, new.backends)
            self.spawn(self._check_privileges(new))

    def set_backend_state(self, name: str, state: BackendState) -> None:
        """Admin override: OFFLINE_SOFT drains, OFFLINE_HARD closes now, ONLINE lifts it."""
        if self.config.backend(name) is None:
            raise KeyError(name)
        assert self.monitor is not None, "the monitor runs from start()"
        self.monitor.set_admin_state(name, state)
        if state == BackendState.OFFLINE_HARD:
            self.close_backend_connections(name)

    def close_backend_connections(self, name: str) -> None:
        """OFFLINE_HARD: every connection to ``name``, pooled or in use, closes now."""
        self.pools.retire(name)
        for session in list(self.sessions.values()):
            conn = session.conns.get(name)
            if conn is not None:
                conn.abort("backend set OFFLINE_HARD by admin")

    @property
    def workers(self) -> list[WorkerRow]:
        """One process serves every client: itself."""
        return [WorkerRow(0, os.getpid(), "serving" if self.accepting else "stopped", len(self.sessions), 0, self.started_at)]

    async def refresh(self) -> None:
        """Nothing to gather: in one process the views read the live objects."""

    def kill_client(self, client_id: int) -> bool:
        session = self.sessions.get(client_id)
        if session is None:
            return False
        session.kill("killed by admin")
        return True

    def pause(self) -> None:
        """Holds new statements (running ones finish), like pgbouncer's PAUSE."""
        if self._resumed is None:
            self._resumed = self.loop.create_future()
            self.paused = True
            log.warning("paused")

    def resume(self) -> None:
        if self._resumed is not None:
            fut, self._resumed = self._resumed, None
            self.paused = False
            fut.set_result(None)
            log.warning("resumed")

    async def wait_resumed(self, timeout: float) -> bool:
        fut = self._resumed
        if fut is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            return False
        return True


class Front(Protocol):
    """What runs the process for the signals: the Baton itself, or the brain over its workers."""

    async def start(self) -> None: ...
    async def shutdown(self, graceful: bool = True) -> None: ...
    async def reload(self) -> ReloadResult: ...


async def serve(config_path: str, front: Callable[[Baton], Front] | None = None) -> None:
    """Runs until stopped: SIGTERM/SIGINT shut down gracefully, SIGHUP reloads, the pid file
    lives as long as the process. ``front`` wraps the Baton (the workers' brain) when given."""
    config = load_config(config_path)
    logs.setup(config.log.level, config.log.format)
    app = Baton(config, config_path)
    service: Front = front(app) if front is not None else app
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: app.spawn(service.shutdown(graceful=True)))
    loop.add_signal_handler(signal.SIGHUP, lambda: app.spawn(service.reload()))
    pid_file = config.proxy.pid_file
    if pid_file:
        Path(pid_file).write_text(f"{os.getpid()}\n")
    try:
        await service.start()
        await app.wait_stopped()
    finally:
        if pid_file:
            Path(pid_file).unlink(missing_ok=True)
    log.info("stopped")


# A reload's steps, kept beside Baton.reload: binding first, then applying everything at once.


async def reload_to(app: Baton, new: Config) -> ReloadResult:
    """Binds what the new config needs, then applies it (``app._apply_reload``) all at once."""
    async with app._reload_lock:
        try:
            rebinds = await prepare_rebinds(app.listeners, new)
        except ListenError as exc:
            log.error("reload_rejected error=%r", str(exc))
            return ReloadResult(False, time.time(), "cannot listen; still running the previous config", (str(exc),))
        diff = diff_configs(app.config, new)
        try:
            await app._apply_reload(new)
        except BaseException:
            for rebind in rebinds:
                rebind.abort()
            raise
        for rebind in rebinds:
            rebind.commit()
    result = ReloadResult(True, time.time(), diff.summary() if diff else "no changes", ())
    log.info("reload_applied changes=%r", result.summary)
    return result


def log_out_users(app: Baton, users: Collection[str], require_tls: bool) -> None:
    """Sessions of users a reload removed or changed (and plain sessions when TLS became
    required) end after their current statement, as a DBA expects of a revoked account."""
    for session in list(app.sessions.values()):
        if session.user in users:
            session.end_after_statement("account removed or changed by reload")
        elif require_tls and session.user and "tls" not in session.link:
            session.end_after_statement("require_tls turned on by reload")


def run(config_path: str) -> None:
    """Runs Baton in the foreground on uvloop until SIGTERM/SIGINT."""
    import uvloop

    uvloop.run(serve(config_path))


async def learn_server_version(app: Baton) -> None:
    """Clients see the master's version string (drivers switch features on it) unless the
    config names one; an unreachable master leaves the default."""
    if app.config.proxy.server_version:
        return
    master = app.config.master_hint or app.config.backends[0]
    mon = app.config.monitor
    try:
        conn = await connect(
            master.name, master.host, master.port,
            Credentials(mon.user, mon.password.encode(), None),
            timeout=app.config.proxy.connect_timeout_ms / 1000,
            capabilities=int(SUPPORTED_CAPABILITIES),
            security=backend_security(master),
        )
    except BackendError as exc:
        log.warning("server_version_unknown backend=%s reason=%s using=%s", master.name, exc.reason, app.server_version)
        return
    app.context.server_version = conn.server_version
    conn.close()
    log.info("server_version_learned backend=%s version=%s", master.name, app.server_version)
