"""Fencing ends for a former master that rejoined cleanly: a DBA can switch back.

Two Baton instances (auto mode, one Redis) in front of db1 (master) + db2, db3. An admin
SWITCHOVER TO 'db2' fences db1 and makes it a replica of db2; seen replicating from db2 with
a history db2 contains, db1 is an ordinary replica again on both instances. The DBA then
switches back by hand (db2 read-only, db1 caught up, detached and writable, db2 and db3
repointed to db1) and runs `baton notify-promotion --new-master <db1>` against one instance:
writes reach db1 within 2 s on every instance, and clients writing all along never see their
connection time out or break (no 2013). A former master with a transaction the master lacks
stays fenced, and SHOW BACKENDS says why.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pymysql
import pytest
from test_cluster import write_lands_on

from proxy.sandbox import MariaDBInstance, RedisInstance, ReplicationSandbox
from proxy.sandbox.baton_process import REPO_ROOT, BatonProcess, admin_rows, wait_for

pytestmark = pytest.mark.slow

REPL = {"replication_user": "repl", "replication_password": "repl"}
CONNECTION_BROKEN = frozenset({2003, 2006, 2013, 2055})


@dataclass
class Writer:
    """One client on one Baton connection, inserting in a loop; errors kept by code."""

    proc: BatonProcess
    errors: list[tuple[int, str]] = field(default_factory=list)
    done: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = pymysql.connect(host="127.0.0.1", port=self.proc.proxy_port, user="app",
                                           password="app", database="test", autocommit=True,
                                           read_timeout=10)
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO cluster_probe VALUES (%s, @@server_id)", (uuid.uuid4().hex,))
                self.done += 1
            except pymysql.err.MySQLError as e:
                self.errors.append((int(e.args[0]), str(e.args[-1])))
                if int(e.args[0]) in CONNECTION_BROKEN and conn is not None:
                    conn.close()
                    conn = None
                time.sleep(0.05)
            time.sleep(0.01)
        if conn is not None:
            conn.close()


def change_master(inst: MariaDBInstance, master: MariaDBInstance, *, former_master: bool) -> None:
    conn = inst.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("STOP SLAVE")
            if former_master:
                cur.execute("SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos")
            cur.execute(f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={master.port}, "
                        "MASTER_USER='repl', MASTER_PASSWORD='repl', MASTER_USE_GTID=slave_pos")
            cur.execute("START SLAVE")
    finally:
        conn.close()


def backend(proc: BatonProcess, name: str) -> dict[str, object]:
    return next(r for r in admin_rows(proc, "SHOW BACKENDS") if r["name"] == name)


def test_switch_back_by_hand_after_a_switchover_reaches_the_old_master_within_2s(
    make_sandbox: Callable[..., ReplicationSandbox],
    redis_server: RedisInstance,
    baton: Callable[..., BatonProcess],
) -> None:
    sb = make_sandbox()
    db1, db2, db3 = sb.instances
    db1.sql("CREATE TABLE test.cluster_probe (token CHAR(32) PRIMARY KEY, server_id INT)")
    sb.wait_caught_up()
    sections = {
        "monitor": {"interval_ms": 250},
        "failover": {"mode": "auto", "min_interval_s": 0, **REPL},
        "redis": {"url": redis_server.url, "channel": f"test-{uuid.uuid4().hex[:8]}"},
    }
    procs = [baton(sb, **sections) for _ in range(2)]
    for proc in procs:
        wait_for(lambda proc=proc: all(r["read_only"] is not None for r in admin_rows(proc, "SHOW BACKENDS")),
                 10, "backends seen by the monitor")

    admin_rows(procs[0], "SWITCHOVER TO 'db2'")
    for proc in procs:
        wait_for(lambda proc=proc: write_lands_on(proc) == db2.server_id, 5, "writes on db2")
    # db1 replicates from db2 with nothing db2 lacks: fencing ends on every instance.
    for proc in procs:
        wait_for(lambda proc=proc: backend(proc, "db1")["fenced"] == 0, 10,
                 f"db1 unfenced: {backend(proc, 'db1')}")
        assert backend(proc, "db1")["note"] is None

    writers = [Writer(proc) for proc in procs for _ in range(2)]
    threads = [threading.Thread(target=w.run, daemon=True) for w in writers]
    for t in threads:
        t.start()
    time.sleep(0.5)
    try:
        # The DBA's switch back.
        started = time.monotonic()
        db2.sql("SET GLOBAL read_only = 1")
        pos = db2.variable("gtid_binlog_pos")
        assert db1.sql(f"SELECT MASTER_GTID_WAIT('{pos}', 10)")[0][0] == 0
        for statement in ("STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL read_only = 0"):
            db1.sql(statement)
        change_master(db2, db1, former_master=True)
        change_master(db3, db1, former_master=False)
        told = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "proxy", "notify-promotion", "-c", str(procs[0].config_path),
             "--new-master", db1.address],
            cwd=REPO_ROOT, check=True, capture_output=True, timeout=30,
        )
        reached = []
        for proc in procs:
            wait_for(lambda proc=proc: write_lands_on(proc) == db1.server_id, 2, "writes on db1")
            reached.append(time.monotonic() - told)
        time.sleep(1.0)
    finally:
        for w in writers:
            w.stop.set()
        for t in threads:
            t.join(15)
    codes: dict[int, int] = {}
    for w in writers:
        for code, _ in w.errors:
            codes[code] = codes.get(code, 0) + 1
    print(f"\nswitch back: hand steps took {told - started:.2f}s; writes on db1 through every "
          f"instance {max(reached):.2f}s after notify-promotion; client errors by code: {codes}")
    assert max(reached) <= 2.0, reached
    broken = [e for w in writers for e in w.errors if e[0] in CONNECTION_BROKEN]
    assert not broken, broken
    assert all(w.done > 0 for w in writers)
    for proc in procs:
        masters = [(r["name"], r["epoch"]) for r in admin_rows(proc, "SHOW BACKENDS") if r["role"] == "master"]
        assert masters == [("db1", 3)], masters


def test_a_former_master_with_a_transaction_the_master_lacks_stays_fenced_and_says_why(
    make_sandbox: Callable[..., ReplicationSandbox], baton: Callable[..., BatonProcess]
) -> None:
    sb = make_sandbox()
    db1, db2, db3 = sb.instances
    db1.sql("CREATE TABLE test.errant (id INT PRIMARY KEY)")
    sb.wait_caught_up()
    proc = baton(sb, monitor={"interval_ms": 250}, failover={"mode": "follow", **REPL})
    wait_for(lambda: all(r["read_only"] is not None for r in admin_rows(proc, "SHOW BACKENDS")),
             10, "backends seen by the monitor")
    # db1's last transaction reaches no replica; then db1 dies and db2 is promoted by hand.
    for replica in (db2, db3):
        replica.sql("STOP SLAVE IO_THREAD")
    db1.sql("INSERT INTO test.errant VALUES (1)")
    errant = db1.variable("gtid_binlog_pos")
    db1.kill()
    sb.promote("db2")
    wait_for(lambda: backend(proc, "db2")["role"] == "master", 10, "db2 adopted as master")
    db1.start()
    # The DBA forces db1 under db2 at db2's position (strict mode off to be allowed to):
    # replication runs, db1 keeps its transaction that db2 never had.
    db1.sql("SET GLOBAL gtid_strict_mode = 0")
    db1.sql(f"SET GLOBAL gtid_slave_pos = '{db2.variable('gtid_binlog_pos')}'")
    change_master(db1, db2, former_master=False)
    wait_for(lambda: "diverged" in str(backend(proc, "db1")["note"]), 10,
             f"db1 left fenced with a reason: {backend(proc, 'db1')}")
    row = backend(proc, "db1")
    assert row["fenced"] == 1 and errant in str(row["note"]) and "db2 lacks" in str(row["note"]), row
    assert db1.slave_status()["Slave_SQL_Running"] == "Yes"  # type: ignore[index]
