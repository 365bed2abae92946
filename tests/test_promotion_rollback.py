"""A promotion is checked before it starts and rolled back when a step fails half-way.

- In process: a step that fails on the server (RESET SLAVE ALL without RELOAD, the grant
  check blinded as if the privilege had been revoked between check and step) is undone in
  reverse order (replication started again) and the next candidate is promoted.
- Through Baton: the monitor account lacks RELOAD on every replica. Nothing is touched:
  replication keeps running everywhere, the cause is in SHOW FAILOVERS, SHOW BACKENDS and
  the baton_masterless metric, and held writes get 9101 when the buffer window ends. Once
  the privilege is granted on one replica the failover is retried and succeeds.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pymysql
import pytest
from test_cluster import write_lands_on
from test_monitor import Harness, run, sql, until, value

from proxy.config import FailoverConfig
from proxy.health.events import MasterPromoted
from proxy.health.failover import FailoverCoordinator
from proxy.sandbox import MariaDBInstance, ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess, admin_rows, wait_for

pytestmark = pytest.mark.slow

MakeSandbox = Callable[..., ReplicationSandbox]
REPL = {"replication_user": "repl", "replication_password": "repl"}


def local_grant(inst: MariaDBInstance, statement: str) -> None:
    """GRANT/REVOKE on this server only (not written to its binlog, so not replicated)."""
    conn = inst.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION sql_log_bin = 0")
            cur.execute(statement)
    finally:
        conn.close()


def replicating(inst: MariaDBInstance) -> bool:
    """Replication still configured and running (the IO thread retries the dead master)."""
    s = inst.slave_status()
    return bool(s and s["Slave_SQL_Running"] == "Yes" and s["Slave_IO_Running"] != "No")


def test_a_step_failing_half_way_is_rolled_back_and_the_next_candidate_promoted(
    make_sandbox: MakeSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    sb = make_sandbox()
    db1, db2, db3 = sb.instances
    local_grant(db2, "REVOKE RELOAD ON *.* FROM 'monitor'@'%'")

    async def unchecked(self: FailoverCoordinator, name: str, old: str, semi: bool) -> None:
        return None  # a check that could not see it coming (revoked between check and step)

    monkeypatch.setattr(FailoverCoordinator, "_preflight", unchecked)

    async def main() -> None:
        cfg = FailoverConfig(mode="auto", min_interval_s=0, **REPL)
        async with Harness(sb, failover=cfg) as h:
            await h.ready()
            await sql(db1, "CREATE TABLE test.rb (id INT PRIMARY KEY)")
            await asyncio.to_thread(sb.wait_caught_up)
            await asyncio.to_thread(db1.kill)
            await until(lambda: bool(h.of(MasterPromoted)), 20, "no promotion")
            assert h.of(MasterPromoted)[0][1] == MasterPromoted("db1", "db3", 2, "auto")
            assert h.coordinator is not None
            [record] = [r for r in h.coordinator.timeline.records() if r.epoch == 2]
            steps = "\n".join(text for _, text in record.steps)
            order = [
                "chose db2",
                "db2: STOP SLAVE IO_THREAD",
                "db2: STOP SLAVE",
                "promotion of db2 failed",
                "rolling back",
                "db2: START SLAVE",
                "chose db3",
                "db3: SET GLOBAL read_only = 0",
            ]
            at = [steps.find(text) for text in order]
            assert -1 not in at and at == sorted(at), steps
            assert "db2: RESET SLAVE ALL" not in steps and "RELOAD" in steps, steps
            assert await value(db2, "SELECT @@read_only") == 1
            # db2 was given back its replication, then repointed to the new master.
            await until(lambda: h.monitor.health("db2").master_name == "db3"
                        and h.monitor.health("db2").sql_running, 10, "db2 not under db3")
            assert h.coordinator.masterless is None

    run(main())


def metric(proc: BatonProcess, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.metrics_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def write_error(proc: BatonProcess) -> tuple[int, float]:
    """(error code, seconds) of one autocommit INSERT through Baton that is expected to fail."""
    started = time.monotonic()
    try:
        # PyMySQL's SET NAMES at connect is held like a write: the error may come from it.
        conn = pymysql.connect(host="127.0.0.1", port=proc.proxy_port, user="app", password="app",
                               database="test", autocommit=True, read_timeout=30)
        with conn.cursor() as cur:
            cur.execute("INSERT INTO cluster_probe VALUES ('held', 0)")
        conn.close()
    except pymysql.err.MySQLError as e:
        return int(e.args[0]), time.monotonic() - started
    raise AssertionError("the write succeeded with no master")


def test_missing_privilege_everywhere_touches_nothing_alarms_then_succeeds_once_granted(
    make_sandbox: MakeSandbox, baton: Callable[..., BatonProcess]
) -> None:
    sb = make_sandbox()
    db1, db2, db3 = sb.instances
    sb.master.sql("CREATE TABLE test.cluster_probe (token CHAR(32) PRIMARY KEY, server_id INT)")
    sb.wait_caught_up()
    for replica in (db2, db3):
        local_grant(replica, "REVOKE RELOAD ON *.* FROM 'monitor'@'%'")
    failover: dict[str, Any] = {"mode": "auto", "min_interval_s": 0, "buffer_window_ms": 2000, **REPL}
    proc = baton(sb, monitor={"interval_ms": 250}, failover=failover)
    wait_for(lambda: all(r["read_only"] is not None for r in admin_rows(proc, "SHOW BACKENDS")),
             10, "backends seen by the monitor")
    assert metric(proc, "baton_masterless") == 0

    db1.kill()
    newest = wait_for(lambda: (rows := admin_rows(proc, "SHOW FAILOVERS")) and rows[0]["outcome"] != "in progress"
                      and rows[0], 20, "the failover attempt to end")
    assert str(newest["outcome"]).startswith("refused"), newest
    assert "RELOAD" in str(newest["error"]) and "RESET SLAVE ALL" in str(newest["error"]), newest
    for replica in (db2, db3):
        assert replicating(replica), f"{replica.name} must still replicate: {replica.slave_status()}"
        assert int(replica.variable("read_only")) == 1
    master = next(r for r in admin_rows(proc, "SHOW BACKENDS") if r["name"] == "db1")
    assert str(master["note"]).startswith("masterless:") and "RELOAD" in str(master["note"]), master
    assert metric(proc, "baton_masterless") == 1
    assert "cluster_masterless" in proc.log_text()

    code, waited = write_error(proc)
    assert code == 9101 and 1.9 <= waited < 6, (code, waited)

    granted = time.monotonic()
    local_grant(db2, "GRANT RELOAD ON *.* TO 'monitor'@'%'")
    wait_for(lambda: write_lands_on(proc) == db2.server_id, 15, "writes on db2 once RELOAD is granted")
    print(f"\nfailover retried and writes on db2 {time.monotonic() - granted:.1f}s after the GRANT")
    rows = admin_rows(proc, "SHOW FAILOVERS")
    assert (rows[0]["kind"], rows[0]["new"], rows[0]["epoch"], rows[0]["outcome"]) == ("auto", "db2", 2, "promoted")
    assert metric(proc, "baton_masterless") == 0
    wait_for(lambda: (s := db3.slave_status()) is not None and int(s["Master_Port"]) == db2.port
             and s["Slave_IO_Running"] == "Yes", 10, "db3 repointed to db2")
