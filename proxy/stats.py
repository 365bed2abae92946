"""Counters kept on the hot path: plain dict increments, read by the admin port and metrics."""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Final

from .protocol.constants import Command
from .protocol.packets import ErrPacket

_COMMAND_NAMES: Final = {int(c): c.name.lower() for c in Command}

# Upper bounds (seconds) of the statement latency buckets, Prometheus-style "le". Fixed so that
# observing costs one C-level bisect and one list increment; the metrics endpoint turns these
# into a histogram at scrape time.
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


@dataclass
class Stats:
    queries: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    # Subset of `queries` that ended in an error packet from the backend (result="error").
    query_errors: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    backend_errors: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    baton_errors: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    auth_failures: int = 0
    client_connections: int = 0
    retried: int = 0
    held: int = 0
    reloads: defaultdict[bool, int] = field(default_factory=lambda: defaultdict(int))
    # latency_counts[i] counts observations <= LATENCY_BUCKETS[i]; the last slot is +Inf.
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def count(self, command: int, backend: str, error: ErrPacket | None = None) -> None:
        key = (backend, _COMMAND_NAMES.get(command) or str(command))
        self.queries[key] += 1
        if error is not None:
            self.query_errors[key] += 1
            self.backend_errors[error.code] += 1

    def observe_latency(self, seconds: float) -> None:
        """One statement's time from its first byte in to its last byte out."""
        self.latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
