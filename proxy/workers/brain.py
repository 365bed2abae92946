"""The brain: the parent process when ``[proxy] workers`` is more than 1.

It runs everything that must exist once (the monitor, failure detection and failover, the Redis
cluster link, the admin port and the metrics endpoint) in a ``Baton`` that never accepts clients
(``core``), and N worker processes (``worker.py``) that do. Like Envoy's main thread pushing
cluster updates to its workers, the brain sends each worker its topology after every change (and
re-checks every TOPOLOGY_RECHECK_S, since not every change is an event), the config after a
reload, PAUSE/RESUME and switchover holds. The admin port and the metrics endpoint read ``Brain``
(a ``ProxyView``): before answering it gathers every worker's sessions, pools and counters.

A worker that exits while the brain is not stopping is started again (its clients saw their
connections close, nothing else); the others are not touched.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import app
from ..admin.view import ReloadResult, WorkerRow
from ..app import Baton
from ..config import Config
from ..health.events import MasterPromoted
from ..health.states import BackendState
from ..listeners import Listener, ListenError, Rebind
from ..stats import Stats
from .aggregate import HeldTotal, PoolTotals, RemoteClient, UserSessions, merge_stats, pool_totals
from .channel import Channel, ChannelClosed
from .messages import (
    BusyOn,
    CloseBackend,
    ConfigChanged,
    FirstWrite,
    GatherReport,
    Hello,
    KillClient,
    KillQuery,
    KillSession,
    Ready,
    SetHoldWrites,
    SetPaused,
    StartFailed,
    Stop,
    TimelineNote,
    TopologyChanged,
    TopologyState,
    WorkerReport,
)
from .mirror import comparable
from .shares import worker_of

if TYPE_CHECKING:
    from ..health.cluster import ClusterLink
    from ..health.failover import FailoverCoordinator
    from ..health.monitor import Monitor
    from ..health.privileges import PrivilegeReport
    from ..health.topology import Topology

log = logging.getLogger("baton.brain")

START_TIMEOUT_S = 30.0
GATHER_TIMEOUT_S = 2.0
TOPOLOGY_RECHECK_S = 0.25
# A worker that dies this soon after starting is restarted after a pause, not in a tight loop.
QUICK_EXIT_S = 5.0
RESTART_PAUSE_S = 1.0


class WorkerStartError(OSError):
    """A worker did not start (``baton run`` reports it like a port that cannot be bound)."""


class ProxyAddressCheck(Listener):
    """The workers' proxy address, as a reload in the brain sees it. The brain never listens
    there; but a reload that moves it must be refused before anything is applied if the new
    address cannot be bound, as in one process. So ``prepare`` binds it (SO_REUSEPORT, like
    the workers, never listening) and closes it at once; the workers then bind it for real."""

    def __init__(self, listen: str) -> None:
        super().__init__("proxy", asyncio.Protocol)
        self.listen = listen

    async def prepare(self, config: Config) -> Rebind | None:
        cfg = config.proxy
        if cfg.listen == self.listen:
            return None
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                cfg.host, cfg.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            family, kind, proto, _, address = infos[0]
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(address)
        except OSError as exc:
            raise ListenError(
                f"{config.source}: proxy.listen: cannot listen on {cfg.listen!r}: "
                f"{exc.strerror or exc}; still listening on {self.listen!r}"
            ) from None
        return None  # nothing to commit here: Brain.reload records the new address


@dataclass(slots=True)
class WorkerSlot:
    index: int
    pid: int | None = None
    state: str = "starting"
    restarts: int = 0
    started_at: float | None = None
    channel: Channel | None = None
    process: asyncio.subprocess.Process | None = None
    ready: asyncio.Future[object] | None = None


class Brain:
    """The process seen by operators: ``core``'s health and control, every worker's clients."""

    def __init__(self, core: Baton, count: int) -> None:
        self.core = core
        self.count = count
        self.slots = [WorkerSlot(i) for i in range(count)]
        self.stopping = False
        self._source = "admin"
        self._hold_writes = False
        self._sent: tuple[object, ...] | None = None
        self._reports: dict[int, WorkerReport] = {}
        self._clients: dict[int, RemoteClient] = {}
        self._stats: Stats = core.stats
        self._pools = pool_totals(core.topology.backends(), ())
        self._held = HeldTotal()
        # The core never accepts clients: a reload checks the workers' address instead.
        self._address_check = ProxyAddressCheck(core.config.proxy.listen)
        core.listeners[core.listeners.index(core.proxy_listener)] = self._address_check
        core.bus.subscribe(self._on_event)

    # -- ProxyView: what the admin port and the metrics read -------------------------------

    @property
    def config(self) -> Config:
        return self.core.config

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.core.loop

    @property
    def stats(self) -> Stats:
        return self._stats

    @property
    def topology(self) -> Topology:
        return self.core.topology

    @property
    def pools(self) -> PoolTotals:
        return self._pools

    @property
    def router(self) -> HeldTotal:
        return self._held

    @property
    def sessions(self) -> dict[int, RemoteClient]:
        return self._clients

    @property
    def user_limits(self) -> UserSessions:
        return UserSessions(tuple(self._clients.values()))

    @property
    def monitor(self) -> Monitor | None:
        return self.core.monitor

    @property
    def failover(self) -> FailoverCoordinator | None:
        return self.core.failover

    @property
    def cluster(self) -> ClusterLink | None:
        return self.core.cluster

    @property
    def privileges(self) -> PrivilegeReport:
        return self.core.privileges

    @property
    def started_at(self) -> float:
        return self.core.started_at

    @property
    def server_version(self) -> str:
        return self.core.server_version

    @property
    def paused(self) -> bool:
        return self.core.paused

    @property
    def last_reload(self) -> ReloadResult | None:
        return self.core.last_reload

    @property
    def workers(self) -> Sequence[WorkerRow]:
        counts: dict[int, int] = {}
        for client in self._clients.values():
            counts[client.worker] = counts.get(client.worker, 0) + 1
        return [
            WorkerRow(s.index, s.pid, s.state, counts.get(s.index, 0), s.restarts, s.started_at)
            for s in self.slots
        ]

    def next_connection_id(self) -> int:
        return self.core.next_connection_id()

    def spawn(self, coro: Coroutine[Any, Any, object]) -> asyncio.Task[object]:
        return self.core.spawn(coro)

    async def refresh(self) -> None:
        """Asks every serving worker for its report; a worker that does not answer in time
        (dying, restarting) is left out of this answer."""
        live = [s for s in self.slots if s.channel is not None and s.state == "serving"]
        answers = await asyncio.gather(
            *(s.channel.request(GatherReport(), GATHER_TIMEOUT_S) for s in live if s.channel is not None),
            return_exceptions=True,
        )
        reports = [a for a in answers if isinstance(a, WorkerReport)]
        self._reports = {r.index: r for r in reports}
        self._stats = merge_stats([self.core.stats, *(r.stats for r in reports)])
        self._pools = pool_totals(self.core.topology.backends(), (r.pools for r in reports))
        self._held = HeldTotal(sum(r.held for r in reports))
        self._clients = {c.id: RemoteClient(c, r.index) for r in reports for c in r.clients}

    # -- operator actions, for every worker at once ----------------------------------------

    def pause(self) -> None:
        self.core.pause()
        self._broadcast(SetPaused(True))

    def resume(self) -> None:
        self.core.resume()
        self._broadcast(SetPaused(False))

    def kill_client(self, client_id: int) -> bool:
        """The worker holding the session closes it (known from the last refresh, which the
        admin port does before every command)."""
        client = self._clients.get(client_id)
        if client is None:
            return False
        slot = self.slots[worker_of(client_id, self.count)]
        if slot.channel is None:
            return False
        slot.channel.send(KillClient(client_id))
        return True

    def set_backend_state(self, name: str, state: BackendState) -> None:
        self.core.set_backend_state(name, state)  # the state reaches workers with the topology
        if state == BackendState.OFFLINE_HARD:
            self._broadcast(CloseBackend(name))

    async def switchover(self, to: str) -> object:
        """As ``Baton.switchover``, with every worker holding writes and draining."""
        failover = self.core.failover
        assert failover is not None
        self._hold_writes = True
        self._broadcast(SetHoldWrites(True))
        try:
            deadline = time.monotonic() + self.config.failover.buffer_window_ms / 2000
            master = self.core.topology.master
            while time.monotonic() < deadline and await self._busy_on(master):
                await asyncio.sleep(0.01)
            return await failover.switchover(to)
        finally:
            self._hold_writes = False
            self._push_topology()
            self._broadcast(SetHoldWrites(False))

    async def _busy_on(self, master: str | None) -> bool:
        if master is None:
            return False
        live = [s.channel for s in self.slots if s.channel is not None and s.state == "serving"]
        answers = await asyncio.gather(
            *(c.request(BusyOn(master), GATHER_TIMEOUT_S) for c in live), return_exceptions=True
        )
        return any(a is True for a in answers)

    async def promote(self, name: str, source: str = "admin") -> object:
        return await self.core.promote(name, source)

    async def reload(self) -> ReloadResult:
        """The core validates and applies the file; then every worker applies the same config."""
        result = await self.core.reload()
        if result.ok:
            self._address_check.listen = self.core.config.proxy.listen
            self._broadcast(ConfigChanged(self.core.config, self._state()))
            if self.core.config.proxy.worker_count != self.count:
                log.warning("workers_change_needs_restart running=%d configured=%d",
                            self.count, self.core.config.proxy.worker_count)
        return result

    async def shutdown(self, graceful: bool = True) -> None:
        """Every worker stops (gracefully: running statements finish within shutdown_grace_s),
        then the brain's own parts."""
        if self.stopping:
            return
        self.stopping = True
        log.info("brain_stopping graceful=%s workers=%d", graceful, self.count)
        self._broadcast(Stop(graceful))
        wait_s = (self.config.proxy.shutdown_grace_s if graceful else 0) + 5
        procs = [s.process for s in self.slots if s.process is not None and s.process.returncode is None]
        if procs:
            _, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs], timeout=wait_s)
            if pending:
                for p in procs:
                    if p.returncode is None:
                        p.kill()
                await asyncio.gather(*(p.wait() for p in procs), return_exceptions=True)
        await self.core.shutdown(graceful=False)

    # -- topology to the workers ------------------------------------------------------------

    def _state(self) -> TopologyState:
        writers = self.core.split_brain_writers()
        monitor = self.core.monitor
        positions = tuple((h.name, h.gtid_slave_pos) for h in monitor.all_health()) if monitor is not None else ()
        return TopologyState(
            self.core.topology.snapshot(), self._source, tuple(writers) if writers else None, positions
        )

    def _on_event(self, event: object) -> None:
        if isinstance(event, MasterPromoted):
            self._source = event.source
        self._push_topology()

    def _push_topology(self) -> None:
        state = self._state()
        self._sent = (comparable(state.snapshot), state.split_brain, state.gtid_slave_pos)
        self._broadcast(TopologyChanged(state))

    async def _recheck_topology(self) -> None:
        """Observations that publish no event (read_only seen, fencing ended, replicas'
        GTID positions for read-your-writes) reach the workers too."""
        while not self.stopping:
            await asyncio.sleep(TOPOLOGY_RECHECK_S)
            state = self._state()
            if (comparable(state.snapshot), state.split_brain, state.gtid_slave_pos) != self._sent:
                self._push_topology()

    def _broadcast(self, message: object) -> None:
        for slot in self.slots:
            if slot.channel is not None:
                slot.channel.send(message)

    # -- worker processes -------------------------------------------------------------------

    async def start(self) -> None:
        await self.core.start_health()
        try:
            await asyncio.gather(*(self._start_worker(slot) for slot in self.slots))
        except BaseException:
            await self.shutdown(graceful=False)
            raise
        self.spawn(self._recheck_topology())
        await self.core.start_operator(self)
        log.info("listening address=%s workers=%d pids=%s", self.config.proxy.listen, self.count,
                 ",".join(str(s.pid) for s in self.slots))

    async def _start_worker(self, slot: WorkerSlot) -> None:
        loop = asyncio.get_running_loop()
        mine, theirs = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proxy.workers.worker", "--fd", str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        slot.process = process
        slot.ready = loop.create_future()
        _, channel = await loop.create_unix_connection(
            lambda: Channel(
                lambda m: self._on_message(slot, m), self._on_request, lambda: self._on_closed(slot)
            ),
            sock=mine,
        )
        slot.channel = channel
        slot.state = "starting"
        channel.send(Hello(
            slot.index, self.count, slot.restarts, self.core.config, self.core.server_version,
            self._state(), self.core.paused, self._hold_writes,
        ))
        self.spawn(self._watch(slot, process))
        try:
            answer = await asyncio.wait_for(asyncio.shield(slot.ready), START_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            raise WorkerStartError(f"worker {slot.index} did not start within {START_TIMEOUT_S:g}s") from None
        except ChannelClosed:
            raise WorkerStartError(f"worker {slot.index} exited while starting") from None
        if isinstance(answer, StartFailed):
            raise WorkerStartError(answer.reason)
        assert isinstance(answer, Ready)
        slot.pid = answer.pid
        slot.state = "serving"
        slot.started_at = time.time()
        log.info("worker_started index=%d pid=%d generation=%d", slot.index, answer.pid, slot.restarts)

    async def _watch(self, slot: WorkerSlot, process: asyncio.subprocess.Process) -> None:
        started = time.monotonic()
        code = await process.wait()
        if slot.channel is not None:
            slot.channel.close()
            slot.channel = None
        if slot.ready is not None and not slot.ready.done():
            slot.ready.set_exception(ChannelClosed("worker exited"))
            slot.ready.exception()  # retrieved here: the starter may already have given up
        if self.stopping or slot.process is not process:
            slot.state = "stopped"
            return
        slot.state = "restarting"
        log.error("worker_died index=%d pid=%s exit=%s; restarting it", slot.index, slot.pid, code)
        if time.monotonic() - started < QUICK_EXIT_S:
            await asyncio.sleep(RESTART_PAUSE_S)
        while not self.stopping:
            slot.restarts += 1
            try:
                await self._start_worker(slot)
                return
            except (WorkerStartError, OSError) as exc:
                log.error("worker_restart_failed index=%d error=%s", slot.index, exc)
                if slot.process is not None and slot.process.returncode is None:
                    return  # its watcher takes over
                await asyncio.sleep(RESTART_PAUSE_S)

    def _on_message(self, slot: WorkerSlot, message: object) -> None:
        if isinstance(message, Ready | StartFailed):
            if slot.ready is not None and not slot.ready.done():
                slot.ready.set_result(message)
        elif isinstance(message, TimelineNote):
            self.core.timeline_note(message.kind)
        elif isinstance(message, FirstWrite):
            self.core.note_write_ok()
        else:
            log.warning("brain_unknown_message worker=%d type=%s", slot.index, type(message).__name__)

    async def _on_request(self, body: object) -> object:
        if isinstance(body, KillQuery):
            await self.core.kill_query(body.backend, body.thread_id)
            return None
        if isinstance(body, KillSession):
            slot = self.slots[worker_of(body.client_id, self.count)]
            if slot.channel is None or slot.state != "serving":
                return None
            return await slot.channel.request(body, GATHER_TIMEOUT_S * 2)
        raise ValueError(f"unknown request {type(body).__name__}")

    def _on_closed(self, slot: WorkerSlot) -> None:
        if slot.ready is not None and not slot.ready.done():
            slot.ready.set_exception(ChannelClosed("worker channel closed"))


async def serve(config_path: str) -> None:
    await app.serve(config_path, lambda core: Brain(core, core.config.proxy.worker_count))


def run(config_path: str) -> None:
    import uvloop

    uvloop.run(serve(config_path))
