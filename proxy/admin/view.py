"""The running proxy as the admin port and the metrics endpoint see it.

``ProxyView`` is what they read (counts, states, the config) and the operations they may ask
for (PAUSE, RELOAD, KILL, PROMOTE, ...). ``app.Baton`` implements it; admin and metrics never
import the app, so they can be built and tested against any object of this shape.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..listener import ListenerHost

if TYPE_CHECKING:
    from ..backend import BackendConnection
    from ..health.cluster import ClusterLink
    from ..health.failover import FailoverCoordinator
    from ..health.monitor import Monitor
    from ..health.privileges import PrivilegeReport
    from ..health.states import BackendState
    from ..health.topology import Topology
    from ..pool import PoolStats
    from ..stats import Stats


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    at: float
    summary: str
    errors: tuple[str, ...]


class ClientView(Protocol):
    """One client session, for SHOW CLIENTS."""

    @property
    def id(self) -> int: ...
    @property
    def user(self) -> str: ...
    @property
    def peer(self) -> str: ...
    @property
    def link(self) -> str: ...
    @property
    def schema(self) -> str | None: ...
    @property
    def activity(self) -> str: ...
    @property
    def conns(self) -> Mapping[str, BackendConnection]: ...
    @property
    def last_active(self) -> float: ...
    def pinned_reason(self) -> str: ...


class PoolView(Protocol):
    """One backend's pool, for SHOW POOLS and the metrics (``pool.BackendPool``, or the sum of
    every worker's)."""

    @property
    def in_use(self) -> int: ...
    @property
    def idle(self) -> int: ...
    @property
    def waiting(self) -> int: ...
    @property
    def generation(self) -> int: ...
    @property
    def stats(self) -> PoolStats: ...
    def counts_by_user(self) -> dict[str, tuple[int, int]]: ...


class PoolsView(Protocol):
    def get(self, name: str) -> PoolView | None: ...
    def items(self) -> Iterable[tuple[str, PoolView]]: ...


class UserSessionsView(Protocol):
    """Open client sessions per user (``user_limits.UserLimits``, or every worker's summed)."""

    def snapshot(self) -> dict[str, int]: ...


class HeldView(Protocol):
    """The router, as far as operators see it: statements held right now."""

    @property
    def held(self) -> int: ...


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """One process serving clients, for SHOW WORKERS."""

    index: int
    pid: int | None
    state: str  # serving | starting | restarting | stopped
    clients: int
    restarts: int
    started_at: float | None


class ProxyView(ListenerHost, Protocol):
    """The process: what operators read, and what they may ask of it (its config:
    ``ListenerHost``)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def stats(self) -> Stats: ...
    @property
    def topology(self) -> Topology: ...
    @property
    def pools(self) -> PoolsView: ...
    @property
    def router(self) -> HeldView: ...
    @property
    def sessions(self) -> Mapping[int, ClientView]: ...
    @property
    def monitor(self) -> Monitor | None: ...
    @property
    def failover(self) -> FailoverCoordinator | None: ...
    @property
    def cluster(self) -> ClusterLink | None: ...
    @property
    def privileges(self) -> PrivilegeReport: ...
    @property
    def started_at(self) -> float: ...
    @property
    def server_version(self) -> str: ...
    @property
    def paused(self) -> bool: ...
    @property
    def last_reload(self) -> ReloadResult | None: ...
    @property
    def workers(self) -> Sequence[WorkerRow]: ...
    @property
    def user_limits(self) -> UserSessionsView: ...

    async def refresh(self) -> None:
        """Brings what the views read up to date (with workers: asks each of them)."""

    def next_connection_id(self) -> int: ...
    def spawn(self, coro: Coroutine[Any, Any, object]) -> asyncio.Task[object]: ...
    async def shutdown(self, graceful: bool = True) -> None: ...
    async def reload(self) -> ReloadResult: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def kill_client(self, client_id: int) -> bool: ...
    def set_backend_state(self, name: str, state: BackendState) -> None: ...
    async def switchover(self, to: str) -> object: ...
    async def promote(self, name: str, source: str = "admin") -> object: ...
