"""Every message the brain and its workers exchange: a small, explicit set of frozen values.

Brain -> worker: ``Hello`` (once, first), ``TopologyChanged``, ``ConfigChanged``, ``SetPaused``,
``SetHoldWrites``, ``CloseBackend``, ``KillClient``, ``Stop``; requests ``GatherReport`` and
``BusyOn`` (answered with a ``WorkerReport`` and a bool).
Worker -> brain: ``Ready`` or ``StartFailed`` (after Hello), ``TimelineNote``, ``FirstWrite``;
requests ``KillQuery`` (the brain runs it through the monitor's connection) and ``KillSession``
(a client's KILL of a session on another worker; the brain asks that worker).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config
    from ..health.timeline import ClientOutcome
    from ..health.topology import TopologySnapshot
    from ..pool import PoolStats
    from ..stats import Stats


# --- framing of requests ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    body: object


@dataclass(frozen=True, slots=True)
class Reply:
    id: int
    value: object
    error: str | None


# --- brain -> worker ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopologyState:
    """The brain's topology as a worker mirrors it (``mirror.follow``)."""

    snapshot: TopologySnapshot
    source: str  # who made the current epoch's master (MasterPromoted.source)
    split_brain: tuple[str, ...] | None  # FailoverCoordinator.split_brain
    gtid_slave_pos: tuple[tuple[str, str], ...] = ()  # (backend, position) as the monitor saw


@dataclass(frozen=True, slots=True)
class Hello:
    index: int
    count: int
    generation: int  # how many times this worker slot was started before
    config: Config  # the whole config; the worker takes its share of the caps
    server_version: str
    topology: TopologyState
    paused: bool
    hold_writes: bool


@dataclass(frozen=True, slots=True)
class TopologyChanged:
    topology: TopologyState


@dataclass(frozen=True, slots=True)
class ConfigChanged:
    """A reload the brain applied: the worker applies the same config."""

    config: Config
    topology: TopologyState


@dataclass(frozen=True, slots=True)
class SetPaused:
    paused: bool


@dataclass(frozen=True, slots=True)
class SetHoldWrites:
    """Switchover: hold new writes (True) until the switch is done (False)."""

    hold: bool


@dataclass(frozen=True, slots=True)
class CloseBackend:
    """SET BACKEND ... OFFLINE_HARD: close every connection to it now."""

    name: str


@dataclass(frozen=True, slots=True)
class KillClient:
    client_id: int


@dataclass(frozen=True, slots=True)
class Stop:
    graceful: bool


@dataclass(frozen=True, slots=True)
class GatherReport:
    """Request: the worker's sessions, pools and counters (a WorkerReport)."""


@dataclass(frozen=True, slots=True)
class BusyOn:
    """Request: does a session have a transaction or a write running on ``backend``?"""

    backend: str


# --- worker -> brain ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    pid: int


@dataclass(frozen=True, slots=True)
class StartFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class TimelineNote:
    kind: ClientOutcome


@dataclass(frozen=True, slots=True)
class FirstWrite:
    """A write succeeded on the master of ``epoch`` (closes the failover's first-write timer)."""

    epoch: int


@dataclass(frozen=True, slots=True)
class KillQuery:
    """Request: KILL QUERY ``thread_id`` on ``backend`` (a client's KILL of a running statement)."""

    backend: str
    thread_id: int


@dataclass(frozen=True, slots=True)
class KillSession:
    """Request, both ways: a client's ``KILL [QUERY] client_id`` of a session another worker
    holds (worker -> brain -> that worker). The answer: True done, False not ``user``'s session,
    None no such session."""

    client_id: int
    user: str
    query_only: bool


# --- what a worker reports ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientRow:
    """One session, as SHOW CLIENTS shows it."""

    id: int
    user: str
    peer: str
    link: str
    schema: str | None
    activity: str
    backends: tuple[str, ...]
    last_active: float  # time.monotonic(): one clock for every process of the machine
    pinned: str


@dataclass(frozen=True, slots=True)
class PoolRow:
    in_use: int
    idle: int
    waiting: int
    generation: int
    stats: PoolStats
    by_user: dict[str, tuple[int, int]]


@dataclass(frozen=True, slots=True)
class WorkerReport:
    index: int
    pid: int
    stats: Stats
    pools: dict[str, PoolRow]
    clients: tuple[ClientRow, ...]
    held: int
