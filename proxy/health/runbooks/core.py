"""What every failover runbook shares: the collaborators, the one lock and the step log.

Kept small on purpose: state that only one runbook reads lives in that runbook. What is here
is what several of them must agree on: the config (replaced on reload), the Topology and the
Monitor, the Timeline every step is written to, the lock that allows one change of master at
a time (automatic failover, told promotion, switchover), the failovers an operator ordered
and the background tasks that must end with the coordinator.

Every SQL statement goes through Monitor.execute; every step is logged on one line (logger
``baton.failover``) and recorded in the Timeline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from proxy.config import BackendConfig, FailoverConfig
from proxy.health.events import MasterPromoted, PromotionSource
from proxy.health.monitor import Monitor
from proxy.health.states import BackendState
from proxy.health.timeline import FailoverRecord, Timeline
from proxy.health.topology import Topology

log = logging.getLogger("baton.failover")

# Any one statement Baton runs during a failover (STOP SLAVE may wait for a running event).
STEP_TIMEOUT_S = 10.0
# A master in one of these states is lost: a failover from it may start.
LOST_STATES = (BackendState.SHUNNED, BackendState.OFFLINE_HARD)


class PromotionRefused(Exception):
    """A promotion or switchover Baton will not carry out; the message says why."""


class LeaseLost(PromotionRefused):
    """The failover lease ran out mid-promotion: another instance may be taking over."""


@dataclass(eq=False)
class FailoverCore:
    """The collaborators and shared state of the coordinator and its runbooks."""

    cfg: FailoverConfig
    backends: dict[str, BackendConfig]
    topology: Topology
    monitor: Monitor
    clock: Callable[[], float]
    timeline: Timeline
    # One change of master at a time: auto failover, told promotion, switchover.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    warned: set[tuple[str, str]] = field(default_factory=set)  # (backend, problem) logged once
    # Failovers an operator ordered (record id -> target or None, source): carried out in
    # any mode, past the anti-flap interval.
    ordered: dict[int, tuple[str | None, PromotionSource]] = field(default_factory=dict)
    promoting: FailoverRecord | None = None  # the record our own promotion event completes

    def step(self, rec: FailoverRecord | None, text: str, level: int = logging.INFO) -> None:
        log.log(level, "failover_step failover=%s %s", rec.id if rec else "-", text)
        if rec is not None:
            self.timeline.step(rec, text)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` in the background; the coordinator's stop() cancels it."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("failover_task_failed", exc_info=task.exception())

    async def sql(
        self,
        rec: FailoverRecord | None,
        backend: str,
        sql: str,
        *,
        shown: str | None = None,
        timeout: float = STEP_TIMEOUT_S,
    ) -> None:
        """Run one step on `backend` and record it (`shown` hides a password)."""
        await self.monitor.execute(backend, sql, timeout)
        self.step(rec, f"{backend}: {shown or sql}")

    async def value(
        self, backend: str, sql: str, *, column: str | None = None, timeout: float = STEP_TIMEOUT_S
    ) -> str:
        """The first row's first value (or `column`), "" when there is none."""
        result = await self.monitor.execute(backend, sql, timeout)
        if not result.rows:
            return ""
        if column is not None:
            return result.dicts()[0].get(column) or ""
        value = result.rows[0][0]
        return "" if value is None else value.decode()

    def publish_promotion(
        self,
        rec: FailoverRecord,
        new: str,
        source: PromotionSource,
        old: str | None,
        epoch: int | None,
    ) -> MasterPromoted | None:
        """Tell the Topology; the MasterPromoted event it publishes completes `rec`."""
        self.promoting = rec
        try:
            return self.topology.promote(new, source=source, old=old, epoch=epoch)
        finally:
            self.promoting = None
