"""Counters kept on the hot path: plain dict increments, read by the admin port and metrics."""

from __future__ import annotations

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
    # Commands answered per backend, indexed by command byte: one list increment per
    # statement (a (backend, name) tuple key cost a tuple, its hash and two dict operations).
    # Read as ``queries``.
    answered: dict[str, list[int]] = field(default_factory=dict)
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
        """A command (its first payload byte) answered by ``backend``."""
        self._answered_on(backend)[command & 0xFF] += 1
        if error is not None:
            self.query_errors[(backend, _command_name(command))] += 1
            self.backend_errors[error.code] += 1

    @property
    def queries(self) -> dict[tuple[str, str], int]:
        """Commands answered, by (backend, command name), as the admin port and metrics show
        them."""
        return {
            (backend, _command_name(command)): n
            for backend, counts in self.answered.items()
            for command, n in enumerate(counts)
            if n
        }

    def absorb(self, other: Stats) -> None:
        """Adds another process's counters to these (the brain's sum of its workers)."""
        for backend, counts in other.answered.items():
            mine = self._answered_on(backend)
            for command, n in enumerate(counts):
                mine[command] += n
        for key, n in other.query_errors.items():
            self.query_errors[key] += n
        for code, n in other.backend_errors.items():
            self.backend_errors[code] += n
        for code, n in other.baton_errors.items():
            self.baton_errors[code] += n
        for ok, n in other.reloads.items():
            self.reloads[ok] += n
        self.auth_failures += other.auth_failures
        self.client_connections += other.client_connections
        self.retried += other.retried
        self.held += other.held
        self.latency_counts = [a + b for a, b in zip(self.latency_counts, other.latency_counts, strict=True)]
        self.latency_sum += other.latency_sum

    def _answered_on(self, backend: str) -> list[int]:
        """``backend``'s counters, one per command byte."""
        counts = self.answered.get(backend)
        if counts is None:
            counts = self.answered[backend] = [0] * 256
        return counts

    def observe_latency(self, seconds: float) -> None:
        """One statement's time from its first byte in to its last byte out."""
        # bisect_left written out: compiled, a loop over a Final tuple of floats is C
        # comparisons, where bisect_left is a generic call; most statements stop at the first.
        i = 0
        for bound in LATENCY_BUCKETS:
            if seconds <= bound:
                break
            i += 1
        self.latency_counts[i] += 1
        self.latency_sum += seconds


def _command_name(command: int) -> str:
    return _COMMAND_NAMES.get(command) or str(command)
