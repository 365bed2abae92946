"""Shared fixtures: real MariaDB topologies, a real Redis, and Baton as a subprocess.

Every server is stopped by a finalizer; proxy.sandbox also stops leftovers at exit and arms a
parent-death signal, so no mariadbd outlives the test run even if pytest itself is killed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.sandbox import RedisInstance, ReplicationSandbox, free_ports
from proxy.sandbox.baton_process import BatonProcess


def pytest_configure(config: pytest.Config) -> None:
    # Slow tests run by default; deselect them with -m "not slow".
    config.addinivalue_line("markers", "slow: long-running integration tests")


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicationSandbox]:
    """A healthy master + 2 replicas shared by the whole run: tests must not break it
    (no kills, promotions or lasting read_only changes; use make_sandbox for those)."""
    topology = ReplicationSandbox(tmp_path_factory.mktemp("sandbox"), replicas=2)
    try:
        yield topology.start()
    finally:
        topology.stop()


@pytest.fixture
def make_sandbox(tmp_path: Path) -> Iterator[Callable[..., ReplicationSandbox]]:
    """A factory of private topologies for destructive tests; all stopped at teardown."""
    made: list[ReplicationSandbox] = []

    def make(replicas: int = 2, semi_sync: bool = False) -> ReplicationSandbox:
        topology = ReplicationSandbox(
            tmp_path / f"sandbox{len(made)}", replicas=replicas, semi_sync=semi_sync
        )
        made.append(topology)
        return topology.start()

    try:
        yield make
    finally:
        for topology in made:
            topology.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisInstance]:
    server = RedisInstance(tmp_path_factory.mktemp("redis"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def baton(tmp_path: Path) -> Iterator[Callable[..., BatonProcess]]:
    """A factory: baton(sandbox, **config_sections) -> a started Baton on free ports."""
    started: list[BatonProcess] = []

    def start(topology: ReplicationSandbox, **sections: Any) -> BatonProcess:
        text = topology.config_toml(*free_ports(3), **sections)
        process = BatonProcess(text, workdir=tmp_path / f"baton{len(started)}")
        started.append(process)
        return process.start()

    try:
        yield start
    finally:
        for process in started:
            process.stop()
