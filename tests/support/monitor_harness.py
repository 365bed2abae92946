"""A health core over a real sandbox (bus, topology, monitor, optional failover coordinator)
and the async helpers its tests share: tests/integration/test_monitor.py and
tests/adversity/test_failover.py.

Short intervals everywhere (FAST: probes every 100 ms) so the tests stay quick.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from proxy.config import BackendConfig, FailoverConfig, MonitorConfig
from proxy.health.events import Event, EventBus
from proxy.health.failover import FailoverCoordinator
from proxy.health.monitor import Monitor
from proxy.health.topology import Topology
from proxy.sandbox import MariaDBInstance, ReplicationSandbox

E = TypeVar("E")

FAST = MonitorConfig(
    interval_ms=100,
    timeout_ms=400,
    replication_interval_ms=100,
    connect_interval_ms=200,
    failure_threshold=3,
)


def backend_configs(
    sandbox: ReplicationSandbox, **overrides: dict[str, Any]
) -> list[BackendConfig]:
    """The sandbox's servers as Baton backends; overrides per name, e.g. db2={"promotable": False}."""
    return [
        BackendConfig(
            **{
                "name": inst.name,
                "address": inst.address,
                "host": "127.0.0.1",
                "port": inst.port,
                "role": "master" if inst is sandbox.master else "replica",
                **overrides.get(inst.name, {}),
            }
        )
        for inst in sandbox.instances
    ]


class Harness:
    """Bus, topology, monitor (and a failover coordinator if asked) over a sandbox."""

    def __init__(
        self,
        sandbox: ReplicationSandbox,
        cfg: MonitorConfig = FAST,
        *,
        failover: FailoverConfig | None = None,
        coordinator_options: dict[str, Any] | None = None,
        **overrides: dict[str, Any],
    ) -> None:
        self.sandbox = sandbox
        self.backends = backend_configs(sandbox, **overrides)
        self.bus = EventBus()
        self.started = time.monotonic()
        self.events: list[tuple[float, Event]] = []
        self.bus.subscribe(lambda e: self.events.append((time.monotonic(), e)))
        self.topology = Topology(
            [(b.name, b.role) for b in self.backends], self.bus, time.monotonic
        )
        self.monitor = Monitor(self.backends, cfg, self.topology, connect_timeout_s=1.0)
        self.coordinator = (
            FailoverCoordinator(
                failover,
                self.backends,
                self.topology,
                self.monitor,
                self.bus,
                **(coordinator_options or {}),
            )
            if failover is not None
            else None
        )

    async def __aenter__(self) -> Harness:
        await self.monitor.start()
        if self.coordinator is not None:
            await self.coordinator.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.coordinator is not None:
            await self.coordinator.stop()
        await self.monitor.stop()

    def of(self, kind: type[E], since: float = 0.0) -> list[tuple[float, E]]:
        return [(t, e) for t, e in self.events if isinstance(e, kind) and t >= since]

    async def ready(self, timeout: float = 10) -> None:
        """Every backend alive, its replication state read, replicas caught up."""

        def settled() -> bool:
            for h in self.monitor.all_health():
                if not h.alive or h.replication_checked_at is None:
                    return False
                if h.is_replica and h.lag_s != 0:
                    return False
            return True

        await until(settled, timeout, "monitor never settled")


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll predicate; the seconds it took, or AssertionError naming `what`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} (waited {timeout}s)")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def run(coro: Coroutine[Any, Any, Any], timeout: float = 120) -> Any:
    """asyncio.run, bounded: a hang fails with the traceback of the await that hung."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def sql(inst: MariaDBInstance, statement: str) -> list[tuple[Any, ...]]:
    return await asyncio.to_thread(inst.sql, statement)


async def value(inst: MariaDBInstance, statement: str) -> Any:
    return (await sql(inst, statement))[0][0]


async def aborted_connects(inst: MariaDBInstance) -> int:
    return int(await asyncio.to_thread(inst.status_variable, "Aborted_connects") or 0)


def new_table() -> str:
    return f"test.t_{uuid.uuid4().hex[:12]}"
