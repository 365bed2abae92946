"""One worker process: ``python -m proxy.workers.worker --fd N``, started by the brain.

It serves clients on the proxy port (bound with SO_REUSEPORT, like its siblings) with its own
event loop, sessions and pools, and nothing else: no monitor, no failover, no admin port. Its
Topology follows the brain's (``mirror.follow``); PAUSE, switchover holds, reloads, KILL CLIENT
and shutdown arrive as messages. What only the brain can do (KILL QUERY through the monitor's
connection, the failover timeline) goes back over the channel.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
from collections.abc import Collection

from .. import logs
from ..app import Baton, log_out_users, reload_to
from ..config import Config, users_logged_out
from ..health.timeline import ClientOutcome
from .channel import Channel, ChannelClosed
from .messages import (
    BusyOn,
    ClientRow,
    CloseBackend,
    ConfigChanged,
    FirstWrite,
    GatherReport,
    Hello,
    KillClient,
    KillQuery,
    KillSession,
    PoolRow,
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
from .mirror import follow
from .shares import connection_ids, worker_config

log = logging.getLogger("baton.worker")

KILL_QUERY_TIMEOUT_S = 3.0


class WorkerBaton(Baton):
    """Baton serving clients only; the brain decides everything else."""

    def __init__(self, hello: Hello, channel: Channel) -> None:
        self.index = hello.index
        self.count = hello.count
        self.channel = channel
        self._split_brain: tuple[str, ...] | None = hello.topology.split_brain
        self._gtids = dict(hello.topology.gtid_slave_pos)
        super().__init__(worker_config(hello.config, hello.index, hello.count))
        self._ids = connection_ids(hello.index, hello.count, hello.generation)
        self.context.server_version = hello.server_version
        self.proxy_listener.reuse_port = True
        follow(self.topology, hello.topology.snapshot, hello.topology.source)
        self.router.hold_writes = hello.hold_writes
        if hello.paused:
            self.pause()

    async def start(self) -> None:
        await self.start_serving()

    # -- what the router and sessions ask of the process -----------------------------------

    async def kill_query(self, backend: str, thread_id: int) -> None:
        await self.channel.request(KillQuery(backend, thread_id), KILL_QUERY_TIMEOUT_S)

    async def kill_elsewhere(self, client_id: int, user: str, query_only: bool) -> bool | None:
        try:
            answer = await self.channel.request(KillSession(client_id, user, query_only), KILL_QUERY_TIMEOUT_S * 2)
        except (ChannelClosed, TimeoutError, RuntimeError) as exc:  # the brain or the other worker is gone
            log.warning("kill_elsewhere_failed client=%s error=%r", client_id, exc)
            return None
        return answer if isinstance(answer, bool) else None

    async def kill_here(self, request: KillSession) -> bool | None:
        """Another worker's client asked to KILL one of this worker's sessions."""
        session = self.sessions.get(request.client_id)
        if session is None:
            return None
        if session.user != request.user:
            return False
        running = session.running_connection()
        if running is not None and running.busy:
            try:  # stop the statement on its server, not just Baton's side of it
                await self.kill_query(running.backend, running.thread_id)
            except Exception as exc:  # noqa: BLE001 - best effort, as for a local KILL
                log.warning("kill_query_failed client=%s backend=%s error=%r", request.client_id, running.backend, exc)
        if not request.query_only:
            session.kill("KILL from a client of another worker")
        return True

    def gtid_slave_pos(self, name: str) -> str | None:
        return self._gtids.get(name)  # the brain's monitor's, as of its last push

    def split_brain_writers(self) -> Collection[str] | None:
        return self._split_brain

    def note_write_ok(self) -> None:
        if self._awaiting_first_write is not None:
            epoch, self._awaiting_first_write = self._awaiting_first_write, None
            self.channel.send(FirstWrite(epoch))

    def timeline_note(self, kind: ClientOutcome) -> None:
        self.channel.send(TimelineNote(kind))

    # -- the brain's messages --------------------------------------------------------------

    def on_message(self, message: object) -> None:
        if isinstance(message, TopologyChanged):
            self._follow(message.topology)
        elif isinstance(message, ConfigChanged):
            self.spawn(self._reload_from_brain(message.config, message.topology))
        elif isinstance(message, SetPaused):
            if message.paused:
                self.pause()
            else:
                self.resume()
        elif isinstance(message, SetHoldWrites):
            self.router.hold_writes = message.hold
            if not message.hold:
                self._on_event(None)  # wake the statements held for the switch
        elif isinstance(message, CloseBackend):
            self.close_backend_connections(message.name)
        elif isinstance(message, KillClient):
            self.kill_client(message.client_id)
        elif isinstance(message, Stop):
            self.spawn(self.shutdown(graceful=message.graceful))
        else:
            log.warning("worker_unknown_message type=%s", type(message).__name__)

    async def on_request(self, body: object) -> object:
        if isinstance(body, GatherReport):
            return self.report()
        if isinstance(body, BusyOn):
            return self.busy_on(body.backend)
        if isinstance(body, KillSession):
            return await self.kill_here(body)
        raise ValueError(f"unknown request {type(body).__name__}")

    def _follow(self, state: TopologyState) -> None:
        self._split_brain = state.split_brain
        self._gtids = dict(state.gtid_slave_pos)
        follow(self.topology, state.snapshot, state.source)

    async def _reload_from_brain(self, config: Config, state: TopologyState) -> None:
        result = await reload_to(self, worker_config(config, self.index, self.count))
        self.last_reload = result
        self._follow(state)

    async def _apply_reload(self, new: Config) -> None:
        """Backends come and go as the brain's reload says; who is master is the brain's
        topology's business (it follows in the same message)."""
        log_out_users(self, users_logged_out(self.config, new), new.proxy.require_tls)
        old_names = {b.name for b in self.config.backends}
        new_names = {b.name for b in new.backends}
        for name in old_names - new_names:
            if name != self.topology.master:
                self.topology.remove_backend(name)
        for b in new.backends:
            if b.name not in old_names:
                self.topology.add_backend(b.name, "replica")
        self.apply_config(new)

    def report(self) -> WorkerReport:
        clients = tuple(
            ClientRow(
                s.id, s.user, s.peer, s.link, s.schema, s.activity, tuple(sorted(s.conns)),
                s.last_active, s.pinned_reason(),
            )
            for s in list(self.sessions.values())
        )
        pools = {
            name: PoolRow(p.in_use, p.idle, p.waiting, p.generation, p.stats, p.counts_by_user())
            for name, p in self.pools.items()
        }
        return WorkerReport(self.index, os.getpid(), self.stats, pools, clients, self.router.held)


class WorkerTag(logging.Filter):
    """Every log line of a worker names it: ``logger=baton.session@worker1``."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.suffix = f"@worker{index}"

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.endswith(self.suffix):
            record.name += self.suffix
        return True


class WorkerProcess:
    """The channel's end in the worker: builds the WorkerBaton from the brain's Hello."""

    def __init__(self) -> None:
        self.baton: WorkerBaton | None = None
        self.channel: Channel | None = None
        self.done = asyncio.Event()

    def on_message(self, message: object) -> None:
        if self.baton is not None:
            self.baton.on_message(message)
        elif isinstance(message, Hello):
            assert self.channel is not None
            logs.setup(message.config.log.level, message.config.log.format)
            for handler in logging.getLogger().handlers:
                handler.addFilter(WorkerTag(message.index))
            self.baton = WorkerBaton(message, self.channel)
            self.baton.spawn(self._start(self.baton))

    async def _start(self, baton: WorkerBaton) -> None:
        assert self.channel is not None
        try:
            await baton.start()
        except OSError as exc:
            self.channel.send(StartFailed(f"worker {baton.index}: cannot listen on {baton.config.proxy.listen}: {exc}"))
            self.done.set()
            return
        self.channel.send(Ready(os.getpid()))
        log.info("worker_serving index=%d pid=%d", baton.index, os.getpid())
        await baton.wait_stopped()
        self.done.set()

    async def on_request(self, body: object) -> object:
        if self.baton is None:
            raise RuntimeError("worker not started")
        return await self.baton.on_request(body)

    def on_closed(self) -> None:
        """The brain is gone: finish what runs and exit (no orphan keeps serving)."""
        if self.baton is None:
            self.done.set()
        else:
            self.baton.spawn(self.baton.shutdown(graceful=True))

    def stop(self) -> None:
        if self.baton is not None:
            self.baton.spawn(self.baton.shutdown(graceful=True))
        else:
            self.done.set()


async def serve_worker(fd: int) -> None:
    loop = asyncio.get_running_loop()
    process = WorkerProcess()
    sock = socket.socket(fileno=fd)

    def channel() -> Channel:
        # Known before the first byte: the brain's Hello may arrive with the connection.
        process.channel = Channel(process.on_message, process.on_request, process.on_closed)
        return process.channel

    await loop.create_unix_connection(channel, sock=sock)
    loop.add_signal_handler(signal.SIGTERM, process.stop)
    await process.done.wait()
    if process.channel is not None:
        process.channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="A Baton worker (started by the brain).")
    parser.add_argument("--fd", type=int, required=True, help="the brain's end of the channel")
    args = parser.parse_args()
    # The brain handles these for the whole group (Ctrl-C in a terminal reaches every process).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    import uvloop

    uvloop.run(serve_worker(args.fd))


if __name__ == "__main__":
    main()
