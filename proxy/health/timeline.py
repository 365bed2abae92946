"""The failover timeline: what happened, when, and what clients saw.

One FailoverRecord per change of master (or attempt at one): detection, decision,
promotion, the first write that succeeded on the new master, every step taken on the
servers, and how many client statements were held, retried or failed meanwhile. The
FailoverCoordinator writes the records; the router reports first writes and client
outcomes; the admin port shows `as_rows()`.

Times are on the injected clock (monotonic); rows show durations in ms from detection.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

RecordKind = Literal["auto", "switchover", "observed", "admin", "hook", "redis"]
ClientOutcome = Literal["held", "retried", "failed"]

IN_PROGRESS = "in progress"
PROMOTED = "promoted"

# Client outcomes still belong to a failover this long after its first successful write:
# statements held across the switch finish or fail just after it.
CLIENT_GRACE_S = 5.0
# A statement held before the failover record exists counts on it if it opens this soon after.
PENDING_WINDOW_S = 10.0


@dataclass
class FailoverRecord:
    id: int
    kind: str  # RecordKind; becomes the actual source once the promotion is known
    old: str | None
    detected_at: float
    new: str | None = None
    epoch: int | None = None
    decided_at: float | None = None
    promoted_at: float | None = None
    first_write_at: float | None = None
    held: int = 0
    retried: int = 0
    failed: int = 0
    outcome: str = IN_PROGRESS  # "promoted", "refused: ...", "failed: ...", "cancelled: ..."
    steps: list[tuple[float, str]] = field(default_factory=list)
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.outcome != IN_PROGRESS

    def ms(self, at: float | None) -> float | None:
        """Milliseconds from detection to `at`."""
        return None if at is None else round((at - self.detected_at) * 1000, 1)


class Timeline:
    """The last `keep` records, newest last."""

    def __init__(self, clock: Callable[[], float], keep: int = 50) -> None:
        self._clock = clock
        self._records: deque[FailoverRecord] = deque(maxlen=keep)
        self._ids = itertools.count(1)
        self._pending: deque[tuple[float, str]] = deque(maxlen=100_000)

    # -- written by the coordinator -----------------------------------------------------------

    def open(self, kind: str, old: str | None, detected_at: float | None = None) -> FailoverRecord:
        record = FailoverRecord(
            id=next(self._ids),
            kind=kind,
            old=old,
            detected_at=self._clock() if detected_at is None else detected_at,
        )
        self._records.append(record)
        self._claim_pending(record)
        return record

    def step(self, record: FailoverRecord, text: str) -> None:
        record.steps.append((self._clock(), text))

    def decided(self, record: FailoverRecord, new: str) -> None:
        record.new = new
        record.decided_at = self._clock()

    def promoted(self, record: FailoverRecord, new: str, epoch: int, kind: str) -> None:
        now = self._clock()
        record.kind = kind
        record.new = new
        record.epoch = epoch
        if record.decided_at is None:
            record.decided_at = now
        record.promoted_at = now
        record.outcome = PROMOTED

    def finish(self, record: FailoverRecord, outcome: str, error: str | None = None) -> None:
        """Close a record in progress. A record already closed keeps its outcome: a
        failover cancelled because a told promotion overtook it stays "promoted"."""
        if record.finished:
            return
        record.outcome = outcome
        if error is not None:
            record.error = error

    def open_record(self, old: str | None = None) -> FailoverRecord | None:
        """The newest record still in progress (for `old`, if given)."""
        for record in reversed(self._records):
            if not record.finished and (old is None or record.old == old):
                return record
        return None

    def for_epoch(self, epoch: int) -> FailoverRecord | None:
        for record in reversed(self._records):
            if record.epoch == epoch:
                return record
        return None

    def latest_for_old(self, old: str) -> FailoverRecord | None:
        for record in reversed(self._records):
            if record.old == old:
                return record
        return None

    # -- written by the router ----------------------------------------------------------------

    def note_first_write(self, epoch: int) -> None:
        """A write succeeded on the master of `epoch`; only the first one is kept."""
        record = self.for_epoch(epoch)
        if record is not None and record.first_write_at is None:
            record.first_write_at = self._clock()

    def note_client(self, kind: ClientOutcome) -> bool:
        """A client statement was held, retried or failed because of a master change.

        Counted on the newest record while it is in progress (no first write yet). Retries
        and failures also count for CLIENT_GRACE_S after its first write (late fallout). A
        statement held before any record exists (the master's loss is not confirmed yet) is
        kept aside and counted on the next record opened within PENDING_WINDOW_S.
        """
        if kind not in ("held", "retried", "failed"):
            raise ValueError(f"client outcome must be held, retried or failed, not {kind!r}")
        now = self._clock()
        record = self._records[-1] if self._records else None
        if record is not None and (
            record.first_write_at is None
            or (kind != "held" and now - record.first_write_at <= CLIENT_GRACE_S)
        ):
            setattr(record, kind, getattr(record, kind) + 1)
            return True
        self._pending.append((now, kind))
        return False

    def _claim_pending(self, record: FailoverRecord) -> None:
        cutoff = self._clock() - PENDING_WINDOW_S
        for at, kind in self._pending:
            if at >= cutoff:
                setattr(record, kind, getattr(record, kind) + 1)
        self._pending.clear()

    # -- read by the admin port ---------------------------------------------------------------

    def records(self) -> list[FailoverRecord]:
        return list(self._records)

    def as_rows(self) -> list[dict[str, object]]:
        """One row per record, newest first, durations in ms from detection."""
        return [
            {
                "id": r.id,
                "kind": r.kind,
                "old": r.old,
                "new": r.new,
                "epoch": r.epoch,
                "outcome": r.outcome,
                "age_s": round(self._clock() - r.detected_at, 1),
                "decided_ms": r.ms(r.decided_at),
                "promoted_ms": r.ms(r.promoted_at),
                "first_write_ms": r.ms(r.first_write_at),
                "held": r.held,
                "retried": r.retried,
                "failed": r.failed,
                "steps": "; ".join(f"+{r.ms(t):.0f}ms {text}" for t, text in r.steps),
                "error": r.error,
            }
            for r in reversed(self._records)
        ]
