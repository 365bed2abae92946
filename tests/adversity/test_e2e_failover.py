"""What applications see when a master dies, is replaced or is switched: real clients (PyMySQL,
mysql-connector-python) through Baton as a subprocess, in front of real MariaDB topologies.

These are the acceptance tests of the README's "Failover: what clients see". Every test builds
its own topology (``make_sandbox``) and destroys it: kill -9, SIGSTOP, hand promotions. Monitor
settings are the defaults (probe every 250 ms, timeout 500 ms, 3 failures), so the times
measured here are the times a user gets. Each crash test prints Baton's failover timeline
(SHOW FAILOVERS; ``pytest -s`` shows it) and attaches it to its assertion messages.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mysql.connector
import pymysql
import pytest

from perf import failover_drill
from proxy.sandbox import MariaDBInstance, ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess, admin_rows, wait_for

MakeSandbox = Callable[..., ReplicationSandbox]
StartBaton = Callable[..., BatonProcess]

REPL = {"replication_user": "repl", "replication_password": "repl"}
# Error codes that mean the client's own connection to Baton broke.
CONNECTION_BROKEN = frozenset({2003, 2006, 2013, 2055})
OUTCOME_UNKNOWN = 9103


# --- helpers ---------------------------------------------------------------------------------


def topology_with_baton(
    make_sandbox: MakeSandbox, baton: StartBaton, *, semi_sync: bool = False, workers: int = 1,
    **failover: Any,
) -> tuple[ReplicationSandbox, BatonProcess]:
    """A fresh master + 2 replicas with table test.t, and Baton in front (auto mode unless
    told otherwise, no anti-flap pause, default monitor timings, ``workers`` processes)."""
    sb = make_sandbox(semi_sync=semi_sync)
    sb.master.sql("CREATE TABLE test.t (id BIGINT PRIMARY KEY, w INT, note VARCHAR(64))")
    sb.wait_caught_up()
    settings = {"mode": "auto", "min_interval_s": 0, **REPL, **failover}
    proc = baton(sb, monitor={"interval_ms": 250}, failover=settings, proxy={"workers": workers})
    wait_for(lambda: all(r["state"] == "ONLINE" and r["read_only"] is not None
                         for r in admin_rows(proc, "SHOW BACKENDS")), 10, "backends seen by the monitor")
    return sb, proc


def connect(proc: BatonProcess, **options: Any) -> pymysql.Connection:
    settings: dict[str, Any] = {
        "host": "127.0.0.1", "port": proc.proxy_port, "user": "app", "password": "app",
        "database": "test", "autocommit": True, "connect_timeout": 5, "read_timeout": 30,
    }
    return pymysql.connect(**{**settings, **options})


def master_row(proc: BatonProcess) -> dict[str, Any]:
    return next(r for r in admin_rows(proc, "SHOW BACKENDS") if r["role"] == "master")


def wait_promoted(proc: BatonProcess, epoch: int = 2, timeout: float = 10) -> str:
    """The name of the master of `epoch`, once Baton routes writes to it."""
    row = wait_for(lambda: (m := master_row(proc))["epoch"] == epoch and m["state"] == "ONLINE" and m,
                   timeout, f"a master of epoch {epoch}\n{timeline(proc)}")
    return str(row["name"])


def format_timeline(rows: list[dict[str, Any]]) -> str:
    return "failover timeline (ms from detection):\n" + "\n".join(
        "  " + ", ".join(f"{k}={v}" for k, v in row.items()) for row in rows
    ) if rows else "failover timeline: empty"


def timeline(proc: BatonProcess) -> str:
    """SHOW FAILOVERS as text, for assertion messages."""
    return format_timeline(admin_rows(proc, "SHOW FAILOVERS"))


# A killed master is SHUNNED after 3 refused probes 250 ms apart (0.5-0.75 s); the margin is
# for a loaded 2-core machine.
DETECTION_S = 2.0


def show_timeline(proc: BatonProcess, label: str, kill_at: float | None = None) -> list[dict[str, Any]]:
    """Print SHOW FAILOVERS (newest first); with `kill_at`, each record's detection time after
    the kill is added as `detected_s` (from its age, so within 0.1 s)."""
    rows = admin_rows(proc, "SHOW FAILOVERS")
    now = time.monotonic()
    if kill_at is not None:
        for row in rows:
            row["detected_s"] = round(now - float(row["age_s"]) - kill_at, 1)
    print(f"\n[{label}] {format_timeline(rows)}")
    return rows


def completed_failover(proc: BatonProcess, label: str, kill_at: float) -> dict[str, Any]:
    """The newest failover record, printed: a promotion with detection, decision, promotion
    and first-write times, detected within DETECTION_S of the kill."""
    rows = show_timeline(proc, label, kill_at)
    text = format_timeline(rows)
    assert rows, f"no failover recorded\n{text}"
    rec = rows[0]
    assert rec["outcome"] == "promoted", text
    for key in ("decided_ms", "promoted_ms", "first_write_ms"):
        assert rec[key] is not None, f"{key} missing\n{text}"
    assert 0 <= rec["decided_ms"] <= rec["promoted_ms"] <= rec["first_write_ms"], text
    assert rec["detected_s"] <= DETECTION_S, f"detected {rec['detected_s']} s after the kill\n{text}"
    return rec


@dataclass
class Worker:
    """One application thread on one long-lived Baton connection, repeating one unit of work.

    kind: "write" (autocommit INSERT), "trx" (BEGIN; 2 INSERTs; COMMIT), "read" (a short
    SELECT), "slow_read" (SELECT SLEEP). Records acknowledged ids, where reads ran (server_id),
    every error with its time, and broken client connections (reconnecting after one).
    """

    index: int
    proc: BatonProcess
    kind: str
    slow_s: float = 0.5
    acked: list[int] = field(default_factory=list)
    ok_at: list[float] = field(default_factory=list)
    servers: list[tuple[float, int]] = field(default_factory=list)
    errors: list[tuple[float, int, str]] = field(default_factory=list)
    dropped: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    _seq: int = 0

    def next_id(self) -> int:
        self._seq += 1
        return self.index * 10_000_000 + self._seq

    def unit(self, cur: pymysql.cursors.Cursor) -> None:
        if self.kind == "write":
            row_id = self.next_id()
            cur.execute("INSERT INTO t (id, w) VALUES (%s, %s)", (row_id, self.index))
            self.acked.append(row_id)
        elif self.kind == "trx":
            ids = [self.next_id(), self.next_id()]
            cur.execute("BEGIN")
            for row_id in ids:
                cur.execute("INSERT INTO t (id, w) VALUES (%s, %s)", (row_id, self.index))
            cur.execute("COMMIT")
            self.acked += ids
        else:
            sql = "SELECT @@server_id, COUNT(*) FROM t" if self.kind == "read" else f"SELECT @@server_id, SLEEP({self.slow_s})"
            cur.execute(sql)
            self.servers.append((time.monotonic(), int(cur.fetchone()[0])))

    def run(self) -> None:
        try:
            self._repeat()
        except Exception as exc:  # a worker must not die unnoticed: tests read its errors
            self.errors.append((time.monotonic(), -1, f"worker died: {exc!r}"))

    def _repeat(self) -> None:
        conn = connect(self.proc)
        while not self.stop.is_set():
            try:
                with conn.cursor() as cur:
                    self.unit(cur)
                self.ok_at.append(time.monotonic())
            except pymysql.err.MySQLError as exc:
                code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else -1
                self.errors.append((time.monotonic(), code, str(exc)))
                if code in CONNECTION_BROKEN or isinstance(exc, pymysql.err.InterfaceError):
                    self.dropped += 1
                    if conn.open:
                        conn.close()
                    conn = connect(self.proc)
                elif self.kind == "trx":
                    conn.rollback()
        conn.close()

    def start(self) -> Worker:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self


def run_load(proc: BatonProcess, kinds: dict[str, int], **options: Any) -> list[Worker]:
    workers, index = [], 1
    for kind, count in kinds.items():
        for _ in range(count):
            workers.append(Worker(index, proc, kind, **options).start())
            index += 1
    return workers


def stop_load(workers: list[Worker]) -> None:
    for w in workers:
        w.stop.set()
    for w in workers:
        assert w.thread is not None
        w.thread.join(timeout=40)
        assert not w.thread.is_alive(), f"worker {w.index} ({w.kind}) stuck"


def all_errors(workers: list[Worker]) -> list[tuple[int, str, int, str]]:
    return [(w.index, w.kind, code, msg) for w in workers for _, code, msg in w.errors]


def ids_on(inst: MariaDBInstance, ids: list[int]) -> set[int]:
    """Which of `ids` are in test.t on this server."""
    if not ids:
        return set()
    present: set[int] = set()
    for i in range(0, len(ids), 5000):
        chunk = ids[i:i + 5000]
        rows = inst.sql(f"SELECT id FROM test.t WHERE id IN ({','.join(map(str, chunk))})")
        present.update(int(r[0]) for r in rows)
    return present


# --- the crash drill -------------------------------------------------------------------------


@dataclass
class DrillProbe:
    """What a drill round did beyond its RoundResult totals: every Writer it made (each one's
    errors can be checked on its own, and the writer run after the old master's return too)
    and when each kill -9 had completed (the server reaped)."""

    writers: list[failover_drill.Writer] = field(default_factory=list)
    killed_at: list[float] = field(default_factory=list)


# Writes the old master committed just before it died may still be acknowledged a moment
# after the kill; no write can reach a new master this soon (detection alone takes 0.5 s).
LATE_ACK_S = 0.1


@pytest.fixture
def drill_probe(monkeypatch: pytest.MonkeyPatch) -> DrillProbe:
    probe = DrillProbe()

    class Recorded(failover_drill.Writer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            probe.writers.append(self)

    real_kill = MariaDBInstance.kill

    def kill(inst: MariaDBInstance) -> None:
        real_kill(inst)
        probe.killed_at.append(time.monotonic())

    monkeypatch.setattr(failover_drill, "Writer", Recorded)
    monkeypatch.setattr(MariaDBInstance, "kill", kill)
    return probe


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_crash_drill_semi_sync_16_writers(tmp_path: Path, drill_probe: DrillProbe, workers: int) -> None:
    """With workers = 2 the brain detects and fails over, and both workers' held writes go to
    the new master as its topology reaches them: the same results as one process."""
    writers = 16
    firsts = []
    for n in range(2):
        drill_probe.writers.clear()
        drill_probe.killed_at.clear()
        result = failover_drill.one_round(tmp_path / f"round{n}", writers, semi_sync=True, settle_s=4.0,
                                          workers=workers)
        rows = result.timeline
        text = format_timeline(rows)
        loaded, after = drill_probe.writers[:writers], drill_probe.writers[writers:]
        [killed] = drill_probe.killed_at
        acks = [t for w in loaded for t in w.ok_times if t > killed + LATE_ACK_S]
        first = min(acks) - killed if acks else None
        firsts.append(first)
        print(f"round {n + 1}: first write {first if first is None else round(first, 3)} s after the kill "
              f"(the drill's own figure: {result.first_write_s})\n{text}")
        assert first is not None and first <= 3.0, text
        assert result.dropped == 0, f"client connections dropped: {result.dropped}\n{text}"
        assert set(result.errors) <= {OUTCOME_UNKNOWN}, f"errors {result.errors}\n{text}"
        per_writer = {w.index: w.errors for w in loaded if w.errors}
        assert all(e == {OUTCOME_UNKNOWN: 1} for e in per_writer.values()), f"{per_writer}\n{text}"
        assert result.lost == 0, f"{result.lost} of {result.acked} acknowledged writes lost\n{text}"
        # The writer run after the old master came back must have written, all to the new master.
        assert after and after[0].acked and not after[0].errors and not after[0].dropped, (
            f"writer after the restart: acked {len(after[0].acked) if after else None}, "
            f"errors {after[0].errors if after else None}\n{text}"
        )
        assert result.split_brain_rows == 0, f"{result.split_brain_rows} rows on the old master\n{text}"
        [rec] = [r for r in rows if r["epoch"] == 2]
        assert rec["outcome"] == "promoted" and rec["kind"] == "auto", text
        for key in ("decided_ms", "promoted_ms", "first_write_ms"):
            assert rec[key] is not None, f"{key} missing\n{text}"
    print(f"first write after kill per round (s): {[round(f, 3) for f in firsts if f is not None]}")


# --- unplanned: the master dies --------------------------------------------------------------


def test_idle_session_keeps_schema_variables_and_prepared_statements_on_the_new_master(
    make_sandbox: MakeSandbox, baton: StartBaton
) -> None:
    sb, proc = topology_with_baton(make_sandbox, baton)
    old = sb.master
    conn = connect(proc, database=None)
    with conn.cursor() as cur:
        cur.execute("USE test")
        cur.execute("SET @v = 5")
        cur.execute("SET time_zone = '+02:00'")
        cur.execute("INSERT INTO t (id, note) VALUES (1, 'before')")
    sock, baton_id = conn._sock, conn.server_thread_id
    cx = mysql.connector.connect(host="127.0.0.1", port=proc.proxy_port, user="app", password="app",
                                 database="test", autocommit=True, use_pure=True)
    cx_id = cx.connection_id
    prepared = cx.cursor(prepared=True)
    prepared.execute("INSERT INTO t (id, note) VALUES (?, ?)", (2, "prepared before"))
    reader = cx.cursor(prepared=True)
    reader.execute("SELECT note FROM t WHERE id = ?", (1,))
    assert reader.fetchall() in ([("before",)], [])

    kill_at = time.monotonic()
    old.kill()
    new = sb.instance(wait_promoted(proc))

    with conn.cursor() as cur:
        cur.execute("INSERT INTO t (id, note) VALUES (3, 'after')")
        cur.execute("SELECT @v, @@time_zone, DATABASE()")  # a read: on a replica
        assert cur.fetchone() == (5, "+02:00", "test")
        cur.execute("/* baton:master */ SELECT @v, @@time_zone, DATABASE(), @@server_id")
        assert cur.fetchone() == (5, "+02:00", "test", new.server_id)
    prepared.execute("INSERT INTO t (id, note) VALUES (?, ?)", (4, "prepared after"))
    reader.execute("SELECT note FROM t WHERE id = ?", (4,))
    assert reader.fetchall() in ([("prepared after",)], []), "a replica may lag a moment"
    completed_failover(proc, "idle session", kill_at)
    assert conn._sock is sock and conn.server_thread_id == baton_id, "the PyMySQL connection was reopened"
    assert cx.connection_id == cx_id
    assert new.sql("SELECT id FROM test.t ORDER BY id") == [(1,), (2,), (3,), (4,)]
    conn.close()
    cx.close()


def test_write_arriving_while_there_is_no_master_is_held_then_runs(
    make_sandbox: MakeSandbox, baton: StartBaton
) -> None:
    sb, proc = topology_with_baton(make_sandbox, baton)
    conn = connect(proc)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO t (id) VALUES (1)")
        kill_at = time.monotonic()
        sb.master.kill()
        time.sleep(0.05)  # arrives after the kill, not in flight at it
        cur.execute("INSERT INTO t (id) VALUES (2)")
        took = time.monotonic() - kill_at
    print(f"\nheld write succeeded {took:.3f} s after the kill")
    rec = completed_failover(proc, "held write", kill_at)
    assert 0.3 <= took <= 3.0, f"write took {took:.3f} s\n{timeline(proc)}"
    assert rec["failed"] == 0, timeline(proc)
    new = sb.instance(str(rec["new"]))
    assert new.sql("SELECT id FROM test.t ORDER BY id") == [(1,), (2,)]
    conn.close()


def test_timeline_counts_a_statement_held_before_the_loss_was_detected(
    make_sandbox: MakeSandbox, baton: StartBaton
) -> None:
    sb, proc = topology_with_baton(make_sandbox, baton)
    with connect(proc) as conn, conn.cursor() as cur:
        sb.master.kill()
        time.sleep(0.05)
        cur.execute("INSERT INTO t (id) VALUES (1)")  # waits about 0.8 s, then succeeds
    [rec] = admin_rows(proc, "SHOW FAILOVERS")
    assert rec["held"] == 1, timeline(proc)


@pytest.mark.parametrize("asked", [
    "after_promotion",
    "before_promotion",
])
def test_transaction_open_on_the_dead_master_gets_9104_and_the_session_carries_on(
    make_sandbox: MakeSandbox, baton: StartBaton, asked: str
) -> None:
    """Two sessions with an open transaction; the next statement of one is a write, of the
    other COMMIT (which must not say OK). Asked either once the new master is in place, or
    while the old one is dead and not yet replaced."""
    sb, proc = topology_with_baton(make_sandbox, baton)
    old = sb.master
    sessions = []
    for n, next_statement in enumerate(("INSERT INTO t (id) VALUES (100)", "COMMIT")):
        cx = mysql.connector.connect(host="127.0.0.1", port=proc.proxy_port, user="app", password="app",
                                     database="test", autocommit=True, use_pure=True)
        cur = cx.cursor()
        cur.execute("BEGIN")
        cur.execute("INSERT INTO t (id, note) VALUES (%s, 'lost')", (n,))
        sessions.append((cx, cx.connection_id, cur, next_statement))
    kill_at = time.monotonic()
    old.kill()
    if asked == "after_promotion":
        wait_promoted(proc)
    else:
        time.sleep(0.1)
    for cx, cx_id, cur, next_statement in sessions:
        with pytest.raises(mysql.connector.Error) as info:
            cur.execute(next_statement)
        assert (info.value.errno, info.value.sqlstate) == (9104, "40001"), f"{next_statement}: {info.value}"
        assert cx.connection_id == cx_id and cx.is_connected()
    new = sb.instance(wait_promoted(proc))
    for n, (_, _, cur, _) in enumerate(sessions):
        cur.execute("BEGIN")
        cur.execute("INSERT INTO t (id, note) VALUES (%s, 'retried')", (10 + n,))
        cur.execute("COMMIT")
    completed_failover(proc, "lost transaction", kill_at)
    assert new.sql("SELECT id, note FROM test.t ORDER BY id") == [(10, "retried"), (11, "retried")]
    old.start()  # writable again, as its config says: these sessions must never write there
    time.sleep(0.3)
    for n, (_, _, cur, _) in enumerate(sessions):
        cur.execute("BEGIN")
        cur.execute("INSERT INTO t (id, note) VALUES (%s, 'after the return')", (20 + n,))
        cur.execute("COMMIT")
    assert old.sql("SELECT id FROM test.t WHERE id >= 10") == [], "writes reached the fenced old master"
    assert new.sql("SELECT COUNT(*) FROM test.t WHERE id >= 20")[0][0] == 2
    for cx, *_ in sessions:
        cx.close()


# --- replicas die under reads ----------------------------------------------------------------


def test_reads_in_flight_on_a_killed_replica_are_retried_elsewhere(
    make_sandbox: MakeSandbox, baton: StartBaton
) -> None:
    sb, proc = topology_with_baton(make_sandbox, baton)
    db2 = sb.instance("db2")
    results: dict[str, Any] = {}

    def hinted() -> None:
        conn = connect(proc)
        try:
            with conn.cursor() as cur:
                cur.execute("/* baton:replica=db2 */ SELECT @@server_id, SLEEP(1)")
                results["hinted"] = cur.fetchone()
        except pymysql.err.MySQLError as exc:
            results["hinted"] = exc
        conn.close()

    readers = run_load(proc, {"slow_read": 4}, slow_s=0.7)
    hint = threading.Thread(target=hinted)
    hint.start()
    running = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'app' AND INFO LIKE '%baton:replica=db2%'"
    wait_for(lambda: db2.sql(running)[0][0] == 1, 10, "the hinted read running on db2")
    kill_at = time.monotonic()
    db2.kill()
    hint.join(10)
    time.sleep(2.0)
    stop_load(readers)
    assert all_errors(readers) == [], all_errors(readers)
    assert not isinstance(results["hinted"], Exception), f"hinted read failed: {results['hinted']}"
    assert results["hinted"][0] != 2, "answered by the dead replica"
    lost = [line for line in proc.log_text().splitlines() if "backend_lost_under_client" in line]
    assert any("backend=db2" in line for line in lost), "Baton saw no read in flight on db2"
    after = [sid for w in readers for at, sid in w.servers if at > kill_at + 0.8]
    assert after and 2 not in after, after
    print(f"\nreads after the kill answered by server_ids {sorted(set(after))}")


def test_killing_a_replica_under_read_load_gives_no_client_errors(
    make_sandbox: MakeSandbox, baton: StartBaton
) -> None:
    sb, proc = topology_with_baton(make_sandbox, baton)
    readers = run_load(proc, {"read": 4})
    time.sleep(1.0)
    kill_at = time.monotonic()
    sb.instance("db3").kill()
    time.sleep(2.5)
    stop_load(readers)
    errors = all_errors(readers)
    before = {sid for w in readers for at, sid in w.servers if at < kill_at}
    after = [sid for w in readers for at, sid in w.servers if at > kill_at + 1.0]
    print(f"\nreads before the kill on {sorted(before)}, after on {sorted(set(after))}; "
          f"{sum(len(w.servers) for w in readers)} reads")
    assert errors == [], errors
    assert {2, 3} <= before, before
    assert after and 3 not in after, sorted(set(after))


# --- follow mode: someone else promotes ------------------------------------------------------


def test_follow_mode_routes_writes_to_a_hand_promoted_replica_and_fences_the_old_master(
    make_sandbox: MakeSandbox, baton: StartBaton
) -> None:
    sb, proc = topology_with_baton(make_sandbox, baton, mode="follow")
    db1 = sb.master
    stopped_at = time.monotonic()
    db1.stop()
    time.sleep(1.0)  # Baton has lost the master; follow mode waits to be shown a new one
    assert master_row(proc)["name"] == "db1"
    held: dict[str, Any] = {}

    def write() -> None:
        conn = connect(proc)
        try:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO t (id) VALUES (1)")
            held["done"] = time.monotonic()
        except pymysql.err.MySQLError as exc:
            held["error"] = exc
        conn.close()

    writer = threading.Thread(target=write)
    writer.start()
    sb.promote("db2")  # what Orchestrator would do
    promoted_at = time.monotonic()
    writer.join(15)
    assert "error" not in held, f"{held.get('error')}\n{timeline(proc)}"
    took = held["done"] - promoted_at
    print(f"\nfollow: write through Baton succeeded {took:.3f} s after the hand promotion")
    assert took <= 2.0, timeline(proc)
    db2 = sb.instance("db2")
    assert db2.sql("SELECT id FROM test.t") == [(1,)]

    db1.start()  # comes back with read_only=0, as its config says
    load = run_load(proc, {"write": 2})
    time.sleep(3.0)
    stop_load(load)
    acked = [i for w in load for i in w.acked]
    rec = completed_failover(proc, "follow", stopped_at)
    assert all_errors(load) == [], all_errors(load)
    assert acked and ids_on(db1, acked) == set(), "writes reached the restarted old master"
    assert ids_on(db2, acked) == set(acked)
    backends = {r["name"]: r for r in admin_rows(proc, "SHOW BACKENDS")}
    assert (backends["db2"]["role"], backends["db2"]["epoch"]) == ("master", 2), backends
    assert backends["db1"]["fenced"] == 1 and backends["db1"]["role"] == "replica", backends
    assert db1.variable("read_only") == 1, "old master not fenced read_only"
    alarms = [line for line in proc.log_text().splitlines() if "split_brain_suspected" in line]
    assert any("writers=db1,db2" in line or "writers=db2,db1" in line for line in alarms), alarms
    assert (rec["kind"], rec["new"], rec["epoch"]) == ("observed", "db2", 2), timeline(proc)


# --- planned switchover ----------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_switchover_under_load_loses_nothing_and_shows_no_error(
    make_sandbox: MakeSandbox, baton: StartBaton, workers: int
) -> None:
    """With two workers, both hold their writes and drain their transactions on the old
    master before the switch, and both send writes to the new master after it."""
    sb, proc = topology_with_baton(make_sandbox, baton, mode="follow", workers=workers)
    db1, db2 = sb.instance("db1"), sb.instance("db2")
    load = run_load(proc, {"write": 4, "trx": 4, "read": 4})
    time.sleep(1.5)
    wait_for(lambda: {r["name"]: r["lag_ms"] for r in admin_rows(proc, "SHOW BACKENDS")}.get("db2") == 0,
             5, "db2 seen caught up")
    started = time.monotonic()
    outcome = admin_rows(proc, "SWITCHOVER TO 'db2'")
    took = time.monotonic() - started
    time.sleep(1.5)
    stop_load(load)
    rows = show_timeline(proc, "switchover")
    print(f"switchover took {took:.3f} s: {outcome}; "
          f"{sum(len(w.acked) for w in load)} writes, {sum(len(w.servers) for w in load)} reads")
    errors = all_errors(load)
    codes = collections.Counter(code for *_, code, _ in errors)
    acked = [i for w in load for i in w.acked]
    assert outcome and outcome[0]["master"] == "db2" and outcome[0]["epoch"] == 2, outcome
    assert errors == [], f"client errors by code {dict(codes)}, first: {errors[:3]}\n{timeline(proc)}"
    missing = set(acked) - ids_on(db2, acked)
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged writes missing on db2"
    with connect(proc) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO t (id, note) VALUES (1, 'after switchover')")
    assert db2.sql("SELECT @@gtid_binlog_pos")[0][0].startswith("0-2-"), "last write did not run on db2"
    status = db1.slave_status()
    assert status and status["Master_Port"] == db2.port and status["Slave_IO_Running"] == "Yes"
    assert db1.variable("read_only") == 1
    assert rows[0]["kind"] == "switchover" and rows[0]["outcome"] == "promoted", timeline(proc)


# --- things that must NOT cause a failover, or a second one ----------------------------------


def test_master_paused_shorter_than_the_detection_window_causes_no_failover(
    make_sandbox: MakeSandbox, baton: StartBaton
) -> None:
    sb, proc = topology_with_baton(make_sandbox, baton)
    load = run_load(proc, {"write": 4})
    time.sleep(1.0)
    paused_at = time.monotonic()
    sb.master.pause()
    time.sleep(0.4)
    sb.master.resume()
    time.sleep(2.5)  # longer than any detection that might have been under way
    stop_load(load)
    gaps = [b - a for w in load for a, b in itertools.pairwise(w.ok_at) if b > paused_at]
    print(f"\npause 0.4 s: longest gap between two writes of one client {max(gaps):.3f} s")
    assert all_errors(load) == [], all_errors(load)
    assert gaps and max(gaps) < 1.0, "writes stalled longer than the pause"
    assert admin_rows(proc, "SHOW FAILOVERS") == [], timeline(proc)
    row = master_row(proc)
    assert (row["name"], row["epoch"], row["state"]) == ("db1", 1, "ONLINE"), row
    acked = [i for w in load for i in w.acked]
    assert ids_on(sb.master, acked) == set(acked)


def test_second_failover_within_the_anti_flap_interval_is_refused_and_writes_fail_with_9101(
    make_sandbox: MakeSandbox, baton: StartBaton
) -> None:
    sb, proc = topology_with_baton(make_sandbox, baton, min_interval_s=60, buffer_window_ms=2000)
    conn = connect(proc)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO t (id) VALUES (1)")
        kill_at = time.monotonic()
        sb.master.kill()
        time.sleep(0.05)
        cur.execute("INSERT INTO t (id) VALUES (2)")  # held, then runs on the first successor
    first = sb.instance(wait_promoted(proc))
    completed_failover(proc, "first failover", kill_at)

    first.kill()
    time.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(pymysql.err.OperationalError) as info, conn.cursor() as cur:
        cur.execute("INSERT INTO t (id) VALUES (3)")
    waited = time.monotonic() - started
    rows = show_timeline(proc, "second failover", started)
    print(f"write failed with {info.value.args[0]} after {waited:.3f} s")
    assert info.value.args[0] == 9101, f"{info.value}\n{timeline(proc)}"
    assert 1.8 <= waited <= 4.0, f"waited {waited:.3f} s\n{timeline(proc)}"
    refused = rows[0]
    assert refused["old"] == first.name and str(refused["outcome"]).startswith("refused"), timeline(proc)
    assert "min_interval_s=60" in str(refused["outcome"]), timeline(proc)
    logged = [line for line in proc.log_text().splitlines() if "failover refused" in line]
    assert any("level=error" in line and "min_interval_s=60" in line for line in logged), logged
    assert master_row(proc)["epoch"] == 2
    conn.ping(reconnect=False)  # the session survived all of it
    conn.close()


def test_pinned_state_lost_with_the_master_is_reported_once_then_the_session_carries_on(
    make_sandbox: MakeSandbox, baton: StartBaton
) -> None:
    """A temporary table and a GET_LOCK lock live on the master only. When it dies they are
    gone: the next statement says so (9112) instead of silently running without them, and
    the session then works on the new master."""
    sb, proc = topology_with_baton(make_sandbox, baton)
    old_id = int(sb.master.sql("SELECT @@server_id")[0][0])
    with connect(proc) as conn, conn.cursor() as cur:
        cur.execute("CREATE TEMPORARY TABLE scratch (a INT)")
        cur.execute("SELECT GET_LOCK('baton-test-lock', 1)")
        assert cur.fetchone() == (1,)
        sb.master.kill()
        wait_for(lambda: any(r["kind"] == "auto" and r["outcome"] == "promoted"
                             for r in admin_rows(proc, "SHOW FAILOVERS")), 10, "the promotion")
        with pytest.raises(pymysql.err.OperationalError) as err:
            cur.execute("SELECT COUNT(*) FROM scratch")
        assert err.value.args[0] == 9112, err.value.args
        assert "temp_table" in err.value.args[1] and "get_lock" in err.value.args[1]
        cur.execute("INSERT INTO t (id, w) VALUES (1, @@server_id)")  # usable again
        cur.execute("/* baton:master */ SELECT w FROM t WHERE id = 1")
        (written_on,) = cur.fetchone()
        assert written_on != old_id
