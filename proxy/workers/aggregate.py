"""The brain's view of every worker: their reports summed into what SHOW and /metrics read."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from ..pool import PoolStats
from ..stats import Stats
from .messages import ClientRow, PoolRow

if TYPE_CHECKING:
    from ..backend import BackendConnection


def merge_stats(parts: Iterable[Stats]) -> Stats:
    total = Stats()
    for st in parts:
        total.absorb(st)
    return total


@dataclass(slots=True)
class PoolTotal:
    """One backend's pools in every worker, summed (the generation is the highest)."""

    in_use: int = 0
    idle: int = 0
    waiting: int = 0
    generation: int = 0
    stats: PoolStats = field(default_factory=PoolStats)
    by_user: dict[str, tuple[int, int]] = field(default_factory=dict)

    def add(self, row: PoolRow) -> None:
        self.in_use += row.in_use
        self.idle += row.idle
        self.waiting += row.waiting
        self.generation = max(self.generation, row.generation)
        st, more = self.stats, row.stats
        st.connects += more.connects
        st.connect_errors += more.connect_errors
        st.reused += more.reused
        st.waits += more.waits
        st.closed += more.closed
        for user, (in_use, idle) in row.by_user.items():
            a, b = self.by_user.get(user, (0, 0))
            self.by_user[user] = (a + in_use, b + idle)

    def counts_by_user(self) -> dict[str, tuple[int, int]]:
        return self.by_user


class PoolTotals:
    def __init__(self, pools: dict[str, PoolTotal]) -> None:
        self._pools = pools

    def get(self, name: str) -> PoolTotal | None:
        return self._pools.get(name)

    def items(self) -> Iterable[tuple[str, PoolTotal]]:
        return self._pools.items()


def pool_totals(backends: Iterable[str], reports: Iterable[Mapping[str, PoolRow]]) -> PoolTotals:
    totals = {name: PoolTotal() for name in backends}
    for pools in reports:
        for name, row in pools.items():
            totals.setdefault(name, PoolTotal()).add(row)
    return PoolTotals(totals)


@dataclass(frozen=True, slots=True)
class UserSessions:
    """Every worker's open sessions per user, from their client rows (SHOW POOLS' sessions)."""

    clients: Iterable[RemoteClient]

    def snapshot(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for client in self.clients:
            if client.row.user:
                counts[client.row.user] = counts.get(client.row.user, 0) + 1
        return counts


@dataclass(frozen=True, slots=True)
class RemoteClient:
    """A session of some worker, as SHOW CLIENTS reads it (``admin.view.ClientView``)."""

    row: ClientRow
    worker: int

    @property
    def id(self) -> int:
        return self.row.id

    @property
    def user(self) -> str:
        return self.row.user

    @property
    def peer(self) -> str:
        return self.row.peer

    @property
    def link(self) -> str:
        return self.row.link

    @property
    def schema(self) -> str | None:
        return self.row.schema

    @property
    def activity(self) -> str:
        return self.row.activity

    @property
    def conns(self) -> Mapping[str, BackendConnection]:
        # Only the names are read (which backends the session holds).
        return cast("Mapping[str, BackendConnection]", dict.fromkeys(self.row.backends))

    @property
    def last_active(self) -> float:
        return self.row.last_active

    def pinned_reason(self) -> str:
        return self.row.pinned


@dataclass(slots=True)
class HeldTotal:
    """Statements held for a master right now, in every worker (the router's ``held``)."""

    held: int = 0
