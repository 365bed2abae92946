"""Backend states and the record of a change between them.

The words are ProxySQL's (operators already know them), plus LAGGING, which ProxySQL
folds into SHUNNED. Keeping lag apart is what lets Baton drain a lagging replica
instead of killing its running queries (proxysql #4513).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class BackendState(StrEnum):
    """Where a backend stands for routing. Set by the FailureDetector, read by Topology."""

    ONLINE = "ONLINE"
    """Healthy: takes new sessions, reads (replica) or writes (master)."""

    SHUNNED = "SHUNNED"
    """Failed `failure_threshold` probes in a row. No new work; probes keep running and
    the backend comes back by itself once they succeed again."""

    OFFLINE_SOFT = "OFFLINE_SOFT"
    """Drained by an admin: no new work, running sessions and transactions finish."""

    OFFLINE_HARD = "OFFLINE_HARD"
    """Taken out by an admin or by fencing: its sessions are closed now."""

    LAGGING = "LAGGING"
    """A replica over its lag limit: no new reads, but running queries are not killed."""

    @property
    def is_up(self) -> bool:
        """Alive and taking new work of some kind. BackendUp/BackendDown fire on this edge."""
        return self in (BackendState.ONLINE, BackendState.LAGGING)

    @property
    def accepts_reads(self) -> bool:
        return self is BackendState.ONLINE

    @property
    def accepts_writes(self) -> bool:
        """Whether a *master* in this state may take writes.

        LAGGING counts: replication lag limits reads only. A freshly promoted master
        may still carry a LAGGING verdict from its replica days until the next lag
        sample, and that must not block writes.
        """
        return self in (BackendState.ONLINE, BackendState.LAGGING)


@dataclass(frozen=True)
class StateChange:
    """One transition, as returned by FailureDetector and fed to Topology.apply_state_change."""

    old: BackendState
    new: BackendState
    reason: str
    at: float
    lag_s: float | None = None  # latest lag sample, so LAGGING events can say how far behind
