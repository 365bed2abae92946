"""Watching where statements run: a Baton with its admin port on, shared by a module's tests,
waiting until the monitor sends reads to the replicas, and counting ``@@server_id`` answers.

Shared by the test_e2e_* routing, session-state, prepared-statement and pooling modules.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.sandbox import ReplicationSandbox, free_port
from proxy.sandbox.baton_process import BatonProcess, admin_rows, wait_for
from tests.support.clients import launch_baton


def launch_routing_baton(topology: ReplicationSandbox, workdir: Path, **sections: Any) -> Any:
    """``launch_baton`` with the admin port on, so tests can watch SHOW BACKENDS/POOLS."""
    sections.setdefault("admin", {"listen": f"127.0.0.1:{free_port()}"})
    return launch_baton(topology, workdir, **sections)


def backend_states(proxy: BatonProcess) -> dict[str, str]:
    return {row["name"]: row["state"] for row in admin_rows(proxy, "SHOW BACKENDS")}


def wait_readable(proxy: BatonProcess, names: list[str], timeout: float = 20) -> None:
    """Until the monitor has every named replica ONLINE (so it takes reads)."""
    wait_for(
        lambda: all(backend_states(proxy).get(n) == "ONLINE" for n in names),
        timeout,
        f"replicas {names} ONLINE in SHOW BACKENDS",
    )


def server_names(topology: ReplicationSandbox) -> dict[int, str]:
    """@@server_id -> backend name."""
    return {inst.server_id: inst.name for inst in topology.instances}


def server_id(cur: Any, statement: str = "SELECT @@server_id") -> int:
    """Runs a statement whose first column is @@server_id; the id."""
    cur.execute(statement)
    return int(cur.fetchall()[0][0])


def count_servers(cur: Any, times: int, statement: str = "SELECT @@server_id") -> Counter[int]:
    return Counter(server_id(cur, statement) for _ in range(times))


def module_baton(
    sandbox: ReplicationSandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BatonProcess]:
    """One Baton with default routing, shared by a module's tests. A generous lag limit: on
    this shared, loaded machine a replica may fall a second behind now and then, and these
    tests are about where statements go among healthy servers (the lag test has its own)."""
    with launch_routing_baton(
        sandbox,
        tmp_path_factory.mktemp("baton-routing"),
        routing={"max_replication_lag_ms": 60000},
    ) as process:
        wait_readable(process, [r.name for r in sandbox.replicas])
        yield process
