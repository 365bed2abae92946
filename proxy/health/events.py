"""Health and promotion events, and the in-process bus that carries them.

Events are plain frozen values; subscribers stamp them with their own clock if they
need a timeline.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

from proxy.health.states import BackendState

log = logging.getLogger(__name__)

PromotionSource = Literal["observed", "admin", "redis", "hook", "auto", "switchover"]
PROMOTION_SOURCES: frozenset[str] = frozenset(get_args(PromotionSource))


@dataclass(frozen=True)
class BackendDown:
    """The backend stopped taking new work (left ONLINE/LAGGING)."""

    name: str
    reason: str


@dataclass(frozen=True)
class BackendUp:
    """The backend takes new work again (entered ONLINE/LAGGING)."""

    name: str


@dataclass(frozen=True)
class BackendStateChanged:
    name: str
    old: BackendState
    new: BackendState
    reason: str


@dataclass(frozen=True)
class MasterLost:
    """The master of `epoch` went SHUNNED or OFFLINE_HARD: writes must wait or fail over."""

    name: str
    epoch: int


@dataclass(frozen=True)
class MasterPromoted:
    """From `epoch` on, writes go to `new`. `old` (if any) is fenced."""

    old: str | None
    new: str
    epoch: int
    source: PromotionSource

    def __post_init__(self) -> None:
        if self.source not in PROMOTION_SOURCES:
            raise ValueError(
                f"promotion source must be one of {sorted(PROMOTION_SOURCES)}, got {self.source!r}"
            )


@dataclass(frozen=True)
class ReplicaLagging:
    name: str
    lag_s: float | None  # None: lag unknown (replication not running)


@dataclass(frozen=True)
class ReplicaCaughtUp:
    name: str


@dataclass(frozen=True)
class SplitBrainSuspected:
    """More than one node claims to take writes, or a fenced node does. An alarm only:
    Baton keeps writing to the master of the current epoch and nowhere else."""

    writers: tuple[str, ...]


@dataclass(frozen=True)
class BackendFenced:
    """`name` was master before `epoch`; it must never take Baton's writes again."""

    name: str
    epoch: int


Event = (
    BackendDown
    | BackendUp
    | BackendStateChanged
    | MasterLost
    | MasterPromoted
    | ReplicaLagging
    | ReplicaCaughtUp
    | SplitBrainSuspected
    | BackendFenced
)

Subscriber = Callable[[Event], None]


class _Subscription:
    __slots__ = ("callback", "active")

    def __init__(self, callback: Subscriber) -> None:
        self.callback = callback
        self.active = True


class EventBus:
    """Synchronous, in-order delivery to subscribers.

    Every subscriber sees every event in the same global order: an event published from
    inside a subscriber is queued and delivered after the current one has reached all
    subscribers. A subscriber that raises is logged and skipped; the others still run.
    """

    def __init__(self) -> None:
        self._subscriptions: list[_Subscription] = []
        self._pending: deque[Event] = deque()
        self._delivering = False

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Returns a function that removes exactly this subscription (idempotent)."""
        sub = _Subscription(callback)
        self._subscriptions.append(sub)

        def unsubscribe() -> None:
            if sub.active:
                sub.active = False
                self._subscriptions.remove(sub)

        return unsubscribe

    def publish(self, event: Event) -> None:
        self._pending.append(event)
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._pending:
                current = self._pending.popleft()
                # A subscriber added during delivery starts with the next event.
                for sub in tuple(self._subscriptions):
                    if not sub.active:
                        continue
                    try:
                        sub.callback(current)
                    except Exception:
                        log.exception("event subscriber %r failed on %r", sub.callback, current)
        finally:
            self._delivering = False
