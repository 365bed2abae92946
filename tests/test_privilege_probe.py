"""Privileges against a live MariaDB: the requirement table is what the server enforces, and
Baton reads an account's grants (probe) before any failover needs them: in its start-up
log, in SHOW BACKENDS (can, cannot) and in `baton check-config --probe`.

For every statement Baton runs during a change of master, a user holding only the privilege
the table names runs it, a user holding nothing is refused with 1227, and SUPER works
exactly where the table lists it as an alternative.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pymysql
import pytest

from proxy.config import BackendConfig, MonitorConfig
from proxy.health.privileges import OPERATIONS, Requirement, probe, requirements
from proxy.sandbox import MariaDBInstance, ReplicationSandbox, free_port
from proxy.sandbox.baton_process import BatonProcess, admin_rows, wait_for

ER_SPECIFIC_ACCESS_DENIED = 1227

# The statement each Requirement stands for, runnable on a server set up by _reset.
RUNNABLE = {
    "SHOW SLAVE STATUS": "SHOW SLAVE STATUS",
    "STOP SLAVE": "STOP SLAVE",
    "RESET SLAVE ALL": "RESET SLAVE ALL",
    "SET GLOBAL read_only = 0": "SET GLOBAL read_only = 0",
    "SET GLOBAL read_only = 1": "SET GLOBAL read_only = 1",
    "SET GLOBAL rpl_semi_sync_master_enabled": "SET GLOBAL rpl_semi_sync_master_enabled = 0",
    "CHANGE MASTER TO": "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=1",
    "START SLAVE": "START SLAVE",
    "SET GLOBAL gtid_slave_pos": "SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBInstance]:
    inst = MariaDBInstance("privs", free_port(), Path(tmp_path_factory.mktemp("privs")), 1)
    inst.start()
    try:
        yield inst
    finally:
        inst.stop()


def _user(server: MariaDBInstance, privilege: str) -> str:
    name = "p_" + privilege.lower().replace(" ", "_")[:28]
    server.sql(f"CREATE USER IF NOT EXISTS '{name}'@'%' IDENTIFIED BY 'pw'")
    server.sql(f"GRANT {privilege} ON *.* TO '{name}'@'%'")
    return name


def _reset(server: MariaDBInstance) -> None:
    """A stopped replication channel pointing nowhere: every statement has something to do."""
    server.sql("STOP SLAVE")
    server.sql("CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=1, MASTER_USER='x'")
    server.sql("SET GLOBAL read_only = 0")


def _run_as(server: MariaDBInstance, user: str, sql: str) -> int | None:
    """None when the statement ran, else the server's error code."""
    _reset(server)
    conn = pymysql.connect(host="127.0.0.1", port=server.port, user=user, password="pw")
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            cur.fetchall()
        return None
    except pymysql.MySQLError as e:
        return int(e.args[0])
    finally:
        conn.close()


def _all_requirements(version: str) -> list[Requirement]:
    table = requirements(version, semi_sync=True)
    return list(dict.fromkeys(r for op in OPERATIONS for r in table[op]))


def test_the_requirement_table_is_what_mariadb_enforces(server: MariaDBInstance) -> None:
    version = server.variable("version")
    nobody = _user(server, "USAGE")
    superuser = _user(server, "SUPER")
    checked = []
    for req in _all_requirements(version):
        sql = RUNNABLE[req.statement]
        assert _run_as(server, _user(server, req.privilege), sql) is None, (req, "with privilege")
        assert _run_as(server, nobody, sql) == ER_SPECIFIC_ACCESS_DENIED, (req, "without")
        by_super = _run_as(server, superuser, sql)
        assert (by_super is None) == ("SUPER" in req.any_of), (req, "SUPER", by_super)
        checked.append(req.statement)
    assert set(checked) == set(RUNNABLE)


def test_probe_reads_the_monitor_accounts_grants(server: MariaDBInstance) -> None:
    server.sql("CREATE USER IF NOT EXISTS 'noreload'@'%' IDENTIFIED BY 'pw'")
    server.sql(
        "GRANT SLAVE MONITOR, REPLICATION SLAVE ADMIN, READ_ONLY ADMIN ON *.* TO 'noreload'@'%'"
    )
    backend = BackendConfig(name="privs", address=server.address, host="127.0.0.1", port=server.port)

    full = asyncio.run(probe(backend, MonitorConfig(user="monitor", password="monitor")))
    assert full.can == OPERATIONS

    limited = asyncio.run(probe(backend, MonitorConfig(user="noreload", password="pw")))
    assert limited.cannot == ("promote", "switchover")
    assert limited.missing_text("promote") == "RELOAD (for RESET SLAVE ALL)"


NO_RELOAD = "SLAVE MONITOR, REPLICATION SLAVE ADMIN, READ_ONLY ADMIN"


def test_a_monitor_account_without_reload_is_reported_before_any_failover(
    make_sandbox: Callable[..., ReplicationSandbox], baton: Callable[..., BatonProcess]
) -> None:
    sb = make_sandbox()
    sb.master.sql("CREATE USER 'norel'@'%' IDENTIFIED BY 'norel'")
    sb.master.sql(f"GRANT {NO_RELOAD} ON *.* TO 'norel'@'%'")
    sb.wait_caught_up()  # the account replicates to db2 and db3
    proc = baton(
        sb,
        monitor={"user": "norel", "password": "norel"},
        failover={"mode": "auto", "replication_user": "repl", "replication_password": "repl"},
    )

    def logged() -> list[str]:
        return [line for line in proc.log_text().splitlines() if "automatic_failover" in line]

    wait_for(logged, 10, "the privilege verdict in the log")
    log = proc.log_text()
    assert "privileges_missing backend=db2 operation=promote missing='RELOAD (for RESET SLAVE ALL)'" in log
    verdict = logged()[0]
    assert "level=warning" in verdict and "impossible" in verdict, verdict
    assert "db2 lacks RELOAD (for RESET SLAVE ALL)" in verdict, verdict

    rows = {r["name"]: r for r in admin_rows(proc, "SHOW BACKENDS")}
    assert rows["db2"]["can"] == "monitor,repoint,fence", rows["db2"]
    assert rows["db2"]["cannot"] == (
        "promote: needs RELOAD (for RESET SLAVE ALL); switchover: needs RELOAD (for RESET SLAVE ALL)"
    ), rows["db2"]

    checked = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", "--probe", "-c", str(proc.config_path)],
        capture_output=True, text=True, timeout=60,
    )
    print(checked.stdout)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "db2: can: monitor, repoint, fence; cannot promote: needs RELOAD" in checked.stdout
    assert "automatic failover: IMPOSSIBLE: no replica can be promoted: db2 lacks RELOAD" in (
        checked.stdout
    )

    full = proc.config_path.read_text().replace('user = "norel"', 'user = "monitor"')
    full = full.replace('password = "norel"', 'password = "monitor"')
    full_path = proc.config_path.with_name("full.toml")
    full_path.write_text(full)
    checked = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", "--probe", "-c", str(full_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "automatic failover: possible (mode auto)" in checked.stdout
    assert "switchover: possible" in checked.stdout

    # The replication account is checked too: a wrong password makes switchovers impossible.
    full_path.write_text(full.replace('replication_password = "repl"',
                                      'replication_password = "wrong"'))
    checked = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", "--probe", "-c", str(full_path)],
        capture_output=True, text=True, timeout=60,
    )
    print(checked.stdout)
    assert checked.returncode == 0, checked.stdout + checked.stderr  # auto mode still works
    assert "automatic failover: possible (mode auto)" in checked.stdout
    assert "switchover: IMPOSSIBLE: db2: replication account 'repl': " in checked.stdout
    assert "Access denied" in checked.stdout
