"""Read/write splitting through real clients on a real topology: where each statement runs.

Every server of the sandbox has its own ``@@server_id`` (db1 = 1, db2 = 2, ...), so a read
that selects ``@@server_id`` says where it ran; a write that stores ``@@server_id`` (or is
guarded by ``WHERE @@server_id = 1``) says where it ran too, and the master's binlog shows that
it gained the statement. Replicas refuse the app account's writes (it has no SUPER), so a write
routed to one fails loudly.

The helpers (admin queries, waiting for the monitor, server ids), shared with the other
``test_e2e_*`` routing, session-state, prepared-statement and pooling modules, are in
tests/support/routing.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pymysql
import pytest

from proxy.sandbox import MariaDBInstance, ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess, admin_rows, wait_for
from tests.support.clients import pymysql_connect, scratch_table
from tests.support.routing import (
    backend_states,
    count_servers,
    module_baton,
    server_id,
    server_names,
    wait_readable,
)

StartBaton = Callable[..., BatonProcess]

ER_OPTION_PREVENTS_STATEMENT = 1290  # a read-only server refuses a write
BATON_BAD_CONSISTENCY = 9110


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxy(
    sandbox: ReplicationSandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BatonProcess]:
    yield from module_baton(sandbox, tmp_path_factory)


@pytest.fixture
def conn(proxy: BatonProcess) -> Iterator[pymysql.Connection]:
    with pymysql_connect(proxy) as connection:
        yield connection


# --- the split itself ------------------------------------------------------------------------


def test_thousand_autocommit_reads_are_spread_evenly_over_the_replicas(
    conn: pymysql.Connection, sandbox: ReplicationSandbox
) -> None:
    with conn.cursor() as cur:
        counts = count_servers(cur, 1000)
    names = server_names(sandbox)
    by_name = {names[sid]: n for sid, n in counts.items()}
    print(f"1000 reads: {by_name}")
    assert by_name.get(sandbox.master.name, 0) == 0, by_name
    for replica in sandbox.replicas:
        assert 450 <= by_name.get(replica.name, 0) <= 550, by_name


def _binlog_head(sandbox: ReplicationSandbox) -> tuple[int, int]:
    """(origin server id, sequence number) of the master's last binlogged GTID (domain 0)."""
    pos = str(sandbox.master.variable("gtid_binlog_pos"))
    for gtid in filter(None, (g.strip() for g in pos.split(","))):
        domain, origin, seq = (int(x) for x in gtid.strip().split("-"))
        if domain == 0:
            return origin, seq
    return 0, 0  # nothing binlogged yet


# Each write stores or checks @@server_id, so the row or the affected-row count shows where it
# ran; ``rows`` is the affected-row count a run on the master gives (None: not checked).
WRITES = [
    ("CREATE TABLE {t} (id INT AUTO_INCREMENT PRIMARY KEY, sid INT, note VARCHAR(20))", None),
    ("INSERT INTO {t} (sid, note) VALUES (@@server_id, 'insert')", 1),
    ("insert into {t} (sid, note) select @@server_id, 'insert-select'", 1),
    ("REPLACE INTO {t} (id, sid, note) VALUES (100, @@server_id, 'replace')", 1),
    (
        "INSERT INTO {t} (id, sid, note) VALUES (100, 0, 'dup') "
        "ON DUPLICATE KEY UPDATE sid = @@server_id, note = 'upsert'",
        2,
    ),
    ("UPDATE {t} SET note = 'updated' WHERE @@server_id = 1", 3),
    ("DELETE FROM {t} WHERE id = 100 AND @@server_id = 1", 1),
    ("ALTER TABLE {t} ADD COLUMN extra INT", None),
    ("CREATE INDEX {n}_note ON {t} (note)", None),
    ("CREATE TABLE {t}_copy AS SELECT @@server_id AS sid", 1),
    ("CREATE VIEW {t}_view AS SELECT sid FROM {t}", None),
    ("DROP VIEW {t}_view", None),
    ("TRUNCATE TABLE {t}_copy", None),
    ("INSERT INTO {t}_copy (sid) VALUES (@@server_id)", 1),
    ("RENAME TABLE {t}_copy TO {t}_moved", None),
    ("DROP TABLE {t}_moved", None),
]
DDL_HEADS = ("CREATE", "ALTER", "DROP", "RENAME", "TRUNCATE")


def wait_reads_on_replicas(cur: Any, topology: ReplicationSandbox, timeout: float = 15) -> None:
    """After a schema change through Baton, reads stay on the master until the monitor has
    seen the replicas apply it (the DDL barrier, at most 10 s); then they go back."""
    master_id = topology.master.server_id
    wait_for(lambda: server_id(cur) != master_id, timeout, "reads back on the replicas")


def test_every_write_and_ddl_lands_on_the_master(
    conn: pymysql.Connection, sandbox: ReplicationSandbox
) -> None:
    name = f"e2e_w_{uuid.uuid4().hex[:10]}"
    table = f"test.{name}"
    master_id = sandbox.master.server_id
    try:
        with conn.cursor() as cur:
            for template, rows in WRITES:
                statement = template.format(t=table, n=name)
                before = _binlog_head(sandbox)
                affected = cur.execute(statement)
                origin, seq = _binlog_head(sandbox)
                assert seq > before[1] and origin == master_id, (
                    f"the master's binlog did not gain {statement!r}: {before} -> {(origin, seq)}"
                )
                if rows is not None:
                    assert affected == rows, statement
                if statement.upper().startswith(DDL_HEADS):
                    wait_reads_on_replicas(cur, sandbox)
                else:
                    # a write does not pin: the next read goes to a replica at once, and the
                    # next write still finds the master
                    assert server_id(cur) != master_id
        assert sandbox.master.sql(f"SELECT id, sid, note FROM {table} ORDER BY id") == [
            (1, master_id, "updated"),
            (2, master_id, "updated"),
        ]
        sandbox.wait_caught_up()
        for replica in sandbox.replicas:  # none of them wrote anything of its own
            assert replica.variable("gtid_binlog_pos") == sandbox.master.variable("gtid_binlog_pos")
    finally:
        sandbox.master.sql(f"DROP TABLE IF EXISTS {table}, {table}_copy, {table}_moved")
        sandbox.master.sql(f"DROP VIEW IF EXISTS {table}_view")


def test_a_table_created_through_baton_is_readable_at_once(
    conn: pymysql.Connection, sandbox: ReplicationSandbox
) -> None:
    """The DDL barrier: a read right after a CREATE TABLE never reaches a replica that has
    not applied it yet (it would fail with 1146), and reads go back to the replicas after."""
    tables = [f"test.e2e_ddl_{uuid.uuid4().hex[:10]}" for _ in range(20)]
    try:
        with conn.cursor() as cur:
            for i, table in enumerate(tables):
                cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
                cur.execute(f"SELECT COUNT(*) FROM {table}")
                assert cur.fetchone() == (0,)
                cur.execute(f"INSERT INTO {table} VALUES ({i})")
                cur.execute(f"ALTER TABLE {table} ADD COLUMN extra INT DEFAULT 7")
                cur.execute(f"SELECT id, extra FROM {table}")
                assert cur.fetchall() == ((i, 7),)
            wait_reads_on_replicas(cur, sandbox)
            cur.execute(f"SELECT @@server_id, COUNT(*) FROM {tables[-1]}")
            assert cur.fetchone()[1] == 1
    finally:
        for table in tables:
            sandbox.master.sql(f"DROP TABLE IF EXISTS {table}")


# --- transactions ----------------------------------------------------------------------------


@pytest.mark.parametrize("begin", ["BEGIN", "START TRANSACTION", "START TRANSACTION READ WRITE"])
def test_every_statement_of_a_transaction_runs_on_the_master(
    conn: pymysql.Connection, sandbox: ReplicationSandbox, begin: str
) -> None:
    master_id = sandbox.master.server_id
    with scratch_table(sandbox, "id INT PRIMARY KEY, sid INT") as table, conn.cursor() as cur:
        cur.execute(begin)
        assert count_servers(cur, 6) == {master_id: 6}
        cur.execute(f"INSERT INTO {table} VALUES (1, @@server_id)")
        assert server_id(cur, f"SELECT @@server_id, COUNT(*) FROM {table}") == master_id
        cur.execute(f"SELECT COUNT(*) FROM {table}")
        assert cur.fetchone() == (1,)  # sees its own uncommitted row: same connection
        cur.execute("/* baton:replica */ SELECT @@server_id")  # hints are ignored here
        assert cur.fetchone() == (master_id,)
        cur.execute("COMMIT")
        assert master_id not in count_servers(cur, 4)  # reads go back to the replicas
        assert sandbox.master.sql(f"SELECT id, sid FROM {table}") == [(1, master_id)]


def test_rolled_back_transaction_ran_on_the_master_and_left_nothing(
    conn: pymysql.Connection, sandbox: ReplicationSandbox
) -> None:
    master_id = sandbox.master.server_id
    with scratch_table(sandbox, "id INT PRIMARY KEY") as table, conn.cursor() as cur:
        cur.execute("START TRANSACTION")
        cur.execute(f"INSERT INTO {table} VALUES (1)")
        assert count_servers(cur, 3, f"SELECT @@server_id, COUNT(*) FROM {table}") == {master_id: 3}
        cur.execute("ROLLBACK")
        assert master_id not in count_servers(cur, 4)
        assert sandbox.master.sql(f"SELECT COUNT(*) FROM {table}") == [(0,)]


@pytest.mark.parametrize("how", ["client_api", "set_statement"])
def test_with_autocommit_off_everything_runs_on_the_master(
    proxy: BatonProcess, sandbox: ReplicationSandbox, how: str
) -> None:
    master_id = sandbox.master.server_id
    with scratch_table(sandbox, "id INT PRIMARY KEY") as table:
        with pymysql_connect(proxy, autocommit=how != "client_api") as conn, conn.cursor() as cur:
            if how == "set_statement":
                cur.execute("SET autocommit = 0")
            assert count_servers(cur, 6) == {master_id: 6}
            cur.execute(f"INSERT INTO {table} VALUES (1)")
            conn.commit()
            # still autocommit=0 after COMMIT: the next read opens a new transaction
            assert count_servers(cur, 4) == {master_id: 4}
            conn.rollback()
            assert count_servers(cur, 2, "SELECT @@server_id, @@autocommit") == {master_id: 2}
            cur.execute("SET autocommit = 1")
            assert master_id not in count_servers(cur, 4)
        assert sandbox.master.sql(f"SELECT id FROM {table}") == [(1,)]


def test_read_only_transaction_runs_on_the_master_by_default(
    conn: pymysql.Connection, sandbox: ReplicationSandbox
) -> None:
    with conn.cursor() as cur:
        cur.execute("START TRANSACTION READ ONLY")
        assert count_servers(cur, 4) == {sandbox.master.server_id: 4}
        cur.execute("COMMIT")


def test_read_only_transaction_runs_on_one_replica_when_configured(
    baton: StartBaton, sandbox: ReplicationSandbox
) -> None:
    proxy = baton(
        sandbox, routing={"read_only_trx_to_replica": True, "max_replication_lag_ms": 60000}
    )
    wait_readable(proxy, [r.name for r in sandbox.replicas])
    replica_ids = {r.server_id for r in sandbox.replicas}
    with scratch_table(sandbox, "id INT PRIMARY KEY") as table, pymysql_connect(proxy) as conn:
        with conn.cursor() as cur:
            seen = set()
            for _ in range(4):
                cur.execute("START TRANSACTION READ ONLY")
                counts = count_servers(cur, 5, f"SELECT @@server_id, COUNT(*) FROM {table}")
                assert len(counts) == 1, f"one transaction, several servers: {counts}"
                (where,) = counts
                assert where in replica_ids
                seen.add(where)
                cur.execute("SELECT @@in_transaction, @@tx_read_only")  # still inside it
                assert cur.fetchone() == (1, 0)
                with pytest.raises(pymysql.err.MySQLError) as err:
                    cur.execute(f"INSERT INTO {table} VALUES (1)")
                # the replica refuses it as a read-only server, before the transaction's
                # own READ ONLY check (1792) comes into play: proof it was sent there
                assert err.value.args[0] == ER_OPTION_PREVENTS_STATEMENT
                cur.execute("COMMIT")
            assert seen == replica_ids  # read-only transactions are spread too
        assert sandbox.master.sql(f"SELECT COUNT(*) FROM {table}") == [(0,)]


# --- reads that belong to the master ---------------------------------------------------------


@pytest.mark.parametrize(
    "lock", ["FOR UPDATE", "LOCK IN SHARE MODE", "FOR UPDATE NOWAIT", "FOR UPDATE SKIP LOCKED"]
)
def test_locking_read_in_autocommit_runs_on_the_master(
    conn: pymysql.Connection, sandbox: ReplicationSandbox, lock: str
) -> None:
    with scratch_table(sandbox, "id INT PRIMARY KEY") as table, conn.cursor() as cur:
        statement = f"SELECT @@server_id, id FROM {table} WHERE id = 1 {lock}"
        cur.execute(f"INSERT INTO {table} VALUES (1)")
        assert count_servers(cur, 4, statement) == {sandbox.master.server_id: 4}


def test_get_lock_pins_the_session_to_the_master_until_locks_are_released(
    conn: pymysql.Connection, sandbox: ReplicationSandbox
) -> None:
    master_id = sandbox.master.server_id
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    with conn.cursor() as cur:
        cur.execute("SELECT @@server_id, GET_LOCK(%s, 0)", (name,))
        assert cur.fetchone() == (master_id, 1)
        assert sandbox.master.sql(f"SELECT IS_FREE_LOCK('{name}')") == [(0,)]
        # held locks live on that master connection: every read stays there
        assert count_servers(
            cur, 4, f"SELECT @@server_id, IS_USED_LOCK('{name}') = CONNECTION_ID()"
        ) == {master_id: 4}
        cur.execute("SELECT RELEASE_ALL_LOCKS()")
        assert cur.fetchone() == (1,)
        assert master_id not in count_servers(cur, 4)
    assert sandbox.master.sql(f"SELECT IS_FREE_LOCK('{name}')") == [(1,)]


def test_after_release_lock_of_its_last_lock_reads_return_to_the_replicas(
    conn: pymysql.Connection, sandbox: ReplicationSandbox
) -> None:
    """Named locks by literal name (issue 11 item 2): pinned while at least one is held
    (they are recursive: two GET_LOCKs need two RELEASE_LOCKs), free again after the last."""
    master_id = sandbox.master.server_id
    a, b = (f"e2e-{uuid.uuid4().hex[:8]}" for _ in range(2))
    with conn.cursor() as cur:
        for sql in (
            f"SELECT GET_LOCK('{a}', 0)",
            f"SELECT GET_LOCK('{a}', 0)",
            f"SELECT GET_LOCK('{b}', 0)",
        ):
            cur.execute(sql)
            assert cur.fetchone() == (1,)
        for name in (a, a, b):
            assert count_servers(cur, 3) == {master_id: 3}  # a lock is held: stay put
            cur.execute(f"SELECT RELEASE_LOCK('{name}')")
            assert cur.fetchone() == (1,)
        assert master_id not in count_servers(cur, 6)
    assert sandbox.master.sql(f"SELECT IS_FREE_LOCK('{a}'), IS_FREE_LOCK('{b}')") == [(1, 1)]


def test_a_get_lock_that_timed_out_does_not_pin(
    proxy: BatonProcess, conn: pymysql.Connection, sandbox: ReplicationSandbox
) -> None:
    """GET_LOCK answering 0 (another session holds the name) took nothing: reads still go to
    the replicas; IS_FREE_LOCK answering 1 after a lock count Baton cannot know unpins."""
    master_id = sandbox.master.server_id
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    with pymysql_connect(proxy) as holder, holder.cursor() as hcur, conn.cursor() as cur:
        hcur.execute(f"SELECT GET_LOCK('{name}', 0)")
        cur.execute(f"SELECT GET_LOCK('{name}', 0)")
        assert cur.fetchone() == (0,)
        assert master_id not in count_servers(cur, 4)
        hcur.execute(f"SELECT RELEASE_LOCK('{name}')")
        # taken once per row (unbounded for Baton), released once: only the server knows
        cur.execute(f"SELECT GET_LOCK('{name}', 0) FROM seq_1_to_2")
        cur.execute(f"SELECT RELEASE_LOCK('{name}')")
        cur.execute(f"SELECT RELEASE_LOCK('{name}')")
        assert count_servers(cur, 3) == {master_id: 3}
        cur.execute(f"SELECT IS_FREE_LOCK('{name}')")
        assert cur.fetchone() == (1,)
        assert master_id not in count_servers(cur, 4)


def test_a_lock_name_that_is_not_a_literal_pins_until_release_all_locks(
    conn: pymysql.Connection, sandbox: ReplicationSandbox
) -> None:
    master_id = sandbox.master.server_id
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    with conn.cursor() as cur:
        cur.execute(f"SELECT GET_LOCK(CONCAT('{name}', 'x'), 0)")
        cur.execute(f"SELECT RELEASE_LOCK('{name}x')")
        assert cur.fetchone() == (1,)
        assert count_servers(cur, 3) == {master_id: 3}  # which name it took is not known
        cur.execute("SELECT RELEASE_ALL_LOCKS()")
        assert master_id not in count_servers(cur, 4)


def test_last_insert_id_is_read_on_the_master(
    conn: pymysql.Connection, sandbox: ReplicationSandbox
) -> None:
    with scratch_table(sandbox, "id INT AUTO_INCREMENT PRIMARY KEY") as table, conn.cursor() as cur:
        for expected in range(1, 6):
            cur.execute(f"INSERT INTO {table} VALUES ()")
            cur.execute("SELECT @@server_id, LAST_INSERT_ID()")
            assert cur.fetchone() == (sandbox.master.server_id, expected)


def test_found_rows_is_read_where_the_counted_select_ran(
    conn: pymysql.Connection, sandbox: ReplicationSandbox
) -> None:
    with conn.cursor() as cur:
        for limit in (1, 2, 3, 4):
            cur.execute(
                f"SELECT SQL_CALC_FOUND_ROWS @@server_id, seq FROM seq_1_to_100 LIMIT {limit}"
            )
            rows = cur.fetchall()
            assert len(rows) == limit
            cur.execute("SELECT @@server_id, FOUND_ROWS()")
            assert cur.fetchone() == (rows[0][0], 100)
            assert rows[0][0] == sandbox.master.server_id


def test_temporary_table_reads_run_on_the_master_until_it_is_dropped(
    conn: pymysql.Connection, sandbox: ReplicationSandbox
) -> None:
    master_id = sandbox.master.server_id
    with conn.cursor() as cur:
        cur.execute("CREATE TEMPORARY TABLE e2e_route_tmp (i INT)")
        cur.execute("INSERT INTO e2e_route_tmp VALUES (1), (2)")
        assert count_servers(cur, 4, "SELECT @@server_id, SUM(i) FROM e2e_route_tmp") == {
            master_id: 4
        }
        assert count_servers(cur, 2) == {master_id: 2}  # the whole session stays meanwhile
        cur.execute("DROP TEMPORARY TABLE e2e_route_tmp")
        assert master_id not in count_servers(cur, 4)


# --- hints -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hint", "targets"),
    [
        ("/* baton:replica=db3 */", ["db3"]),
        ("/* baton:replica=db2 */", ["db2"]),
        ("/*baton:replica=db3*/", ["db3"]),
        ("/* BATON:REPLICA=db3 */", ["db3"]),
        ("/* baton:master */", ["db1"]),
        ("/* baton:replica */", ["db2", "db3"]),
    ],
)
def test_hint_forces_the_target(
    conn: pymysql.Connection, sandbox: ReplicationSandbox, hint: str, targets: list[str]
) -> None:
    names = server_names(sandbox)
    with conn.cursor() as cur:
        counts = count_servers(cur, 20, f"{hint} SELECT @@server_id")
    assert sorted(names[sid] for sid in counts) == targets, counts


def test_hint_after_another_comment_still_counts(
    conn: pymysql.Connection, sandbox: ReplicationSandbox
) -> None:
    with conn.cursor() as cur:
        counts = count_servers(
            cur, 6, "/* app: report */ -- note\n /* baton:replica=db3 */ SELECT @@server_id"
        )
    assert counts == {sandbox.instance("db3").server_id: 6}


# --- SHOW WARNINGS and friends ---------------------------------------------------------------


def test_show_warnings_after_a_read_returns_that_reads_warnings(conn: pymysql.Connection) -> None:
    with conn.cursor() as cur:
        for i in range(6):  # enough rounds to land on both replicas
            cur.execute(f"SELECT CAST('{i}abc' AS SIGNED), @@server_id")
            assert cur.fetchone()[0] == i
            cur.execute("SHOW WARNINGS")
            assert cur.fetchall() == (
                ("Warning", 1292, f"Truncated incorrect INTEGER value: '{i}abc'"),
            )
            cur.execute("SHOW COUNT(*) WARNINGS")
            assert cur.fetchone() == (1,)
            cur.execute(f"SELECT seq FROM seq_1_to_3 WHERE seq = {i}")  # uses a table: clears them
            cur.execute("SHOW WARNINGS")
            assert cur.fetchall() == ()


def test_show_errors_after_a_failed_read_returns_that_error(conn: pymysql.Connection) -> None:
    with conn.cursor() as cur:
        for i in range(4):
            with pytest.raises(pymysql.err.ProgrammingError):
                cur.execute(f"SELECT * FROM test.e2e_no_such_table_{i}")
            cur.execute("SHOW ERRORS")
            assert cur.fetchall() == (
                ("Error", 1146, f"Table 'test.e2e_no_such_table_{i}' doesn't exist"),
            )


# --- replicas that lag -----------------------------------------------------------------------


class Writer:
    """Keeps writing on the master directly (a row every 20 ms) while a test runs."""

    def __init__(self, topology: ReplicationSandbox, table: str) -> None:
        self.topology = topology
        self.table = table
        self.written = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            conn = self.topology.master.connect()
            with conn, conn.cursor() as cur:
                while not self._stop.is_set():
                    cur.execute(f"INSERT INTO {self.table} (v) VALUES (1)")
                    self.written += 1
                    self._stop.wait(0.02)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise AssertionError(f"the writer failed: {self.error!r}")


def _lag_ms(proxy: BatonProcess, name: str) -> int | None:
    return next(r["lag_ms"] for r in admin_rows(proxy, "SHOW BACKENDS") if r["name"] == name)


def _set_master_delay(replica: MariaDBInstance, seconds: int) -> None:
    replica.sql("STOP SLAVE")
    replica.sql(f"CHANGE MASTER TO MASTER_DELAY = {seconds}")
    replica.sql("START SLAVE")


# How a replica is made to fall behind, and how it is let catch up again: its SQL thread
# stopped (lag unknown, which counts as too much), or applying 3 s late (a measured lag).
LAGS = {
    "sql_thread_stopped": (
        lambda r: r.sql("STOP SLAVE SQL_THREAD"),
        lambda r: r.sql("START SLAVE SQL_THREAD"),
    ),
    "master_delay": (lambda r: _set_master_delay(r, 3), lambda r: _set_master_delay(r, 0)),
}


@pytest.mark.parametrize("how", list(LAGS))
def test_lagging_replica_gets_no_reads_until_it_has_caught_up(
    baton: StartBaton, sandbox: ReplicationSandbox, how: str
) -> None:
    fall_behind, catch_up = LAGS[how]
    lagging, healthy = sandbox.replicas
    backends: list[dict[str, Any]] = [
        {
            "name": inst.name,
            "address": inst.address,
            "role": "master" if inst is sandbox.master else "replica",
        }
        for inst in sandbox.instances
    ]
    # The healthy replica gets a lenient limit of its own: the machine is shared and loaded,
    # and this test is about the lagging one.
    for b in backends:
        if b["name"] == healthy.name:
            b["max_replication_lag_ms"] = 10000
    proxy = baton(sandbox, routing={"max_replication_lag_ms": 500}, backends=backends)
    wait_readable(proxy, [lagging.name, healthy.name])
    lagging_id, healthy_id = lagging.server_id, healthy.server_id
    with scratch_table(sandbox, "id INT AUTO_INCREMENT PRIMARY KEY, v INT") as table:
        with pymysql_connect(proxy) as conn, conn.cursor() as cur:
            assert set(count_servers(cur, 4)) == {lagging_id, healthy_id}
            with Writer(sandbox, table) as writer:
                fall_behind(lagging)
                try:
                    wait_for(
                        lambda: backend_states(proxy)[lagging.name] == "LAGGING",
                        15,
                        f"{lagging.name} LAGGING in SHOW BACKENDS",
                    )
                    if how == "master_delay":
                        # LAGGING comes first with the lag unknown while the restarted IO
                        # thread reconnects; then the delay is measured.
                        wait_for(
                            lambda: (_lag_ms(proxy, lagging.name) or 0) > 500,
                            15,
                            f"{lagging.name} to show a measured lag above 500 ms",
                        )
                    lag_ms = _lag_ms(proxy, lagging.name)
                    print(f"{how}: {lagging.name} LAGGING, lag_ms {lag_ms}")
                    # The writer is a thread on a shared, loaded machine: wait for its next
                    # row rather than racing it.
                    wait_for(
                        lambda: lagging.variable("gtid_slave_pos")
                        != sandbox.master.variable("gtid_binlog_pos"),
                        10,
                        "the writer to put the replica behind",
                    )
                    counts = count_servers(cur, 200)
                    assert counts == {healthy_id: 200}, counts
                    time.sleep(1.0)  # more writes pile up; still no reads for it
                    assert count_servers(cur, 100) == {healthy_id: 100}
                finally:
                    catch_up(lagging)
                wait_for(
                    lambda: backend_states(proxy)[lagging.name] == "ONLINE",
                    20,
                    f"{lagging.name} ONLINE again once caught up",
                )
            assert writer.written > 0
            counts = count_servers(cur, 100)
            assert set(counts) == {lagging_id, healthy_id}, counts  # it gets reads again
            assert counts[lagging_id] >= 40, counts
    sandbox.wait_caught_up()


# --- read-your-writes ------------------------------------------------------------------------


def _insert_then_read(cur: Any, table: str, iterations: int, in_transaction: bool = False) -> int:
    """Writes a row and reads it back at once, ``iterations`` times; how many reads missed."""
    misses = 0
    for i in range(1, iterations + 1):
        if in_transaction:
            cur.execute("BEGIN")
        cur.execute(f"INSERT INTO {table} (id) VALUES ({i})")
        if in_transaction:
            cur.execute("COMMIT")
        cur.execute(f"SELECT id FROM {table} WHERE id = {i}")
        if cur.fetchall() != ((i,),):
            misses += 1
    return misses


@pytest.fixture
def session_consistency(baton: StartBaton, sandbox: ReplicationSandbox) -> BatonProcess:
    proxy = baton(sandbox, routing={"consistency": "session", "max_replication_lag_ms": 60000})
    wait_readable(proxy, [r.name for r in sandbox.replicas])
    return proxy


def test_session_consistency_never_misses_the_sessions_own_write(
    session_consistency: BatonProcess, sandbox: ReplicationSandbox
) -> None:
    with scratch_table(sandbox, "id INT PRIMARY KEY") as table:
        with pymysql_connect(session_consistency) as conn, conn.cursor() as cur:
            assert _insert_then_read(cur, table, 1000) == 0
            # and reads still go to replicas: the wait is on the replica, not a move to the master
            assert sandbox.master.server_id not in count_servers(cur, 4)


def test_session_consistency_covers_writes_committed_in_a_transaction(
    session_consistency: BatonProcess, sandbox: ReplicationSandbox
) -> None:
    with scratch_table(sandbox, "id INT PRIMARY KEY") as table:
        with pymysql_connect(session_consistency) as conn, conn.cursor() as cur:
            assert _insert_then_read(cur, table, 300, in_transaction=True) == 0


def test_eventual_consistency_records_how_often_a_read_misses(
    conn: pymysql.Connection, sandbox: ReplicationSandbox
) -> None:
    with scratch_table(sandbox, "id INT PRIMARY KEY") as table, conn.cursor() as cur:
        misses = _insert_then_read(cur, table, 1000)
    print(f"eventual consistency: {misses} of 1000 immediate reads missed the session's write")


def test_per_session_consistency_never_misses_the_sessions_own_write(
    conn: pymysql.Connection, sandbox: ReplicationSandbox
) -> None:
    with scratch_table(sandbox, "id INT PRIMARY KEY") as table, conn.cursor() as cur:
        cur.execute("SET @baton_consistency = 'session'")
        assert _insert_then_read(cur, table, 1000) == 0


def test_per_session_consistency_variable_never_reaches_a_backend(
    conn: pymysql.Connection, sandbox: ReplicationSandbox
) -> None:
    with conn.cursor() as cur:
        cur.execute("SET @baton_consistency = 'session'")
        # no server has the variable, wherever the read runs
        for hint in (
            "/* baton:master */",
            "/* baton:replica=db2 */",
            "/* baton:replica=db3 */",
            "",
        ):
            cur.execute(f"{hint} SELECT @baton_consistency")
            assert cur.fetchone() == (None,), hint
        with pytest.raises(pymysql.err.MySQLError) as err:
            cur.execute("SET @baton_consistency = 'strong'")
        assert err.value.args[0] == BATON_BAD_CONSISTENCY
        cur.execute("SET @baton_consistency = 'eventual'")
        cur.execute("SELECT @baton_consistency, 1")
        assert cur.fetchone() == (None, 1)


# --- replicas that go away -------------------------------------------------------------------


class Readers:
    """Sessions running a read that selects @@server_id in a loop, in threads; counts the
    servers that answered and keeps every error."""

    def __init__(
        self, proxy: BatonProcess, sessions: int, statement: str = "SELECT @@server_id"
    ) -> None:
        self.proxy = proxy
        self.statement = statement
        self.counts: Counter[int] = Counter()
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(sessions)]

    def _run(self) -> None:
        try:
            conn = pymysql_connect(self.proxy, read_timeout=30)
        except pymysql.err.MySQLError as exc:
            with self._lock:
                self.errors.append(f"connect: {exc!r}")
            return
        with conn, conn.cursor() as cur:
            while not self._stop.is_set():
                try:
                    sid = server_id(cur, self.statement)
                except pymysql.err.MySQLError as exc:
                    with self._lock:
                        self.errors.append(repr(exc))
                    return
                with self._lock:
                    self.counts[sid] += 1

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def __enter__(self) -> Readers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def _take_down(replicas: list[MariaDBInstance], how: str) -> None:
    """Both at once: a clean shutdown (SIGTERM, wait for exit) or a crash (SIGKILL)."""
    if how == "kill":
        for replica in replicas:
            replica.kill()
        return
    for replica in replicas:
        assert replica.process is not None
        replica.process.terminate()
    for replica in replicas:
        replica.stop()  # waits for the exit


def _wait_replicas_out(proxy: BatonProcess, topology: ReplicationSandbox) -> None:
    wait_for(
        lambda: all(backend_states(proxy)[r.name] != "ONLINE" for r in topology.replicas),
        15,
        "the monitor to take both replicas out",
    )


@pytest.mark.slow
@pytest.mark.parametrize("how", ["stop", "kill"])
def test_reads_right_after_both_replicas_stop_run_on_the_master(
    make_sandbox: Callable[..., ReplicationSandbox], baton: StartBaton, how: str
) -> None:
    topology = make_sandbox()
    proxy = baton(topology)
    wait_readable(proxy, [r.name for r in topology.replicas])
    master_id = topology.master.server_id
    with pymysql_connect(proxy) as held, held.cursor() as cur:
        # this session holds live connections to both replicas when they go
        assert set(count_servers(cur, 4)) == {r.server_id for r in topology.replicas}
        _take_down(topology.replicas, how)
        # at once, before the monitor can know: every read is routed to a dead replica
        # first, and must be retried elsewhere rather than fail
        assert count_servers(cur, 20) == {master_id: 20}
        with pymysql_connect(proxy) as fresh, fresh.cursor() as fresh_cur:
            assert count_servers(fresh_cur, 20) == {master_id: 20}
        _wait_replicas_out(proxy, topology)
        assert count_servers(cur, 50) == {master_id: 50}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["stop", "kill"])
@pytest.mark.parametrize(
    "statement",
    [
        pytest.param("SELECT @@server_id", id="short_reads"),
        pytest.param("SELECT @@server_id, SLEEP(0.2)", id="reads_in_flight"),
    ],
)
def test_reads_running_while_both_replicas_stop_do_not_fail(
    make_sandbox: Callable[..., ReplicationSandbox], baton: StartBaton, how: str, statement: str
) -> None:
    topology = make_sandbox()
    proxy = baton(topology)
    wait_readable(proxy, [r.name for r in topology.replicas])
    master_id = topology.master.server_id
    with Readers(proxy, sessions=6, statement=statement) as readers:
        wait_for(lambda: readers.total() > 30, 15, "readers under way")
        _take_down(topology.replicas, how)
        _wait_replicas_out(proxy, topology)
        before = readers.counts[master_id]
        wait_for(
            lambda: readers.counts[master_id] > before + 30 or readers.errors,
            15,
            "reads on the master",
        )
    assert readers.errors == []
    assert {r.server_id for r in topology.replicas} <= set(readers.counts)  # they did read there
