"""Server-side prepared statements (mysql-connector-python, ``cursor(prepared=True)``) through
the read/write split: where executions run, and that backend statements never pile up.

Baton gives the client its own statement ids and prepares lazily on each backend connection
that executes a statement, so every backend's ``Prepared_stmt_count`` (read as root, directly
on each server) must stay within what the client has open, and return to its baseline once the
client has closed everything.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from test_e2e_core import connector_connect, scratch_table
from test_e2e_routing import module_baton

from proxy.sandbox import ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess, wait_for


@pytest.fixture(scope="module")
def proxy(
    sandbox: ReplicationSandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BatonProcess]:
    yield from module_baton(sandbox, tmp_path_factory)


@pytest.fixture
def conn(proxy: BatonProcess) -> Iterator[Any]:
    connection = connector_connect(proxy)
    try:
        yield connection
    finally:
        connection.close()


def prepared_counts(topology: ReplicationSandbox) -> dict[str, int]:
    """Prepared_stmt_count of every server, read directly as root."""
    return {
        inst.name: int(inst.status_variable("Prepared_stmt_count") or 0)
        for inst in topology.instances
    }


def execute(cursor: Any, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    cursor.execute(statement, params)
    return list(cursor.fetchall()) if cursor.with_rows else []


# --- where executions run --------------------------------------------------------------------


def test_prepared_reads_run_on_the_replicas_and_writes_on_the_master(
    conn: Any, sandbox: ReplicationSandbox
) -> None:
    master_id = sandbox.master.server_id
    replica_ids = {r.server_id for r in sandbox.replicas}
    with scratch_table(sandbox, "id INT PRIMARY KEY, sid INT, note VARCHAR(20)") as table:
        read = conn.cursor(prepared=True)
        insert = conn.cursor(prepared=True)
        update = conn.cursor(prepared=True)
        delete = conn.cursor(prepared=True)
        # mysql-connector re-prepares when the SQL is not the *same object* as last time, so
        # every statement is built once, outside the loops
        read_sql = "SELECT @@server_id, ? + 1"
        insert_sql = f"INSERT INTO {table} (id, sid, note) VALUES (?, @@server_id, ?)"
        counts: Counter[int] = Counter()
        for i in range(1, 41):
            ((sid, plus_one),) = execute(read, read_sql, (i,))
            assert plus_one == i + 1
            counts[sid] += 1
            if i % 4 == 0:  # writes interleaved with the reads
                insert.execute(insert_sql, (i, "new"))
                assert insert.rowcount == 1
        assert set(counts) == replica_ids, counts
        update.execute(f"UPDATE {table} SET note = ? WHERE @@server_id = ?", ("updated", master_id))
        assert update.rowcount == 10  # the guard holds only on the master
        delete.execute(f"DELETE FROM {table} WHERE id = ? AND @@server_id = ?", (40, master_id))
        assert delete.rowcount == 1
        for cursor in (read, insert, update, delete):
            cursor.close()
        assert sandbox.master.sql(
            f"SELECT COUNT(*), MIN(sid), MAX(sid), MIN(note) FROM {table}"
        ) == [(9, master_id, master_id, "updated")]


def test_prepared_reads_that_belong_to_the_master(conn: Any, sandbox: ReplicationSandbox) -> None:
    master_id = sandbox.master.server_id
    with scratch_table(sandbox, "id INT AUTO_INCREMENT PRIMARY KEY") as table:
        insert = conn.cursor(prepared=True)
        last_id = conn.cursor(prepared=True)
        locking = conn.cursor(prepared=True)
        insert_sql = f"INSERT INTO {table} VALUES ()"
        locking_sql = f"SELECT @@server_id, id FROM {table} WHERE id = ? FOR UPDATE"
        for expected in (1, 2, 3):
            insert.execute(insert_sql)
            assert execute(last_id, "SELECT @@server_id, LAST_INSERT_ID()") == [
                (master_id, expected)
            ]
            rows = execute(locking, locking_sql, (expected,))
            assert rows == [(master_id, expected)]
        for cursor in (insert, last_id, locking):
            cursor.close()


def test_prepared_reads_inside_a_transaction_run_on_the_master(
    conn: Any, sandbox: ReplicationSandbox
) -> None:
    master_id = sandbox.master.server_id
    read = conn.cursor(prepared=True)
    sql = "SELECT @@server_id, ?"
    assert {execute(read, sql, (i,))[0][0] for i in range(4)} == {
        r.server_id for r in sandbox.replicas
    }
    conn.start_transaction()
    assert {execute(read, sql, (i,))[0][0] for i in range(4)} == {master_id}
    conn.commit()
    conn.autocommit = False
    assert {execute(read, sql, (i,))[0][0] for i in range(4)} == {master_id}
    conn.rollback()
    conn.autocommit = True
    assert master_id not in {execute(read, sql, (i,))[0][0] for i in range(4)}
    read.close()


def test_prepared_statement_survives_its_backend_connections_going_back_to_the_pool(
    conn: Any, sandbox: ReplicationSandbox
) -> None:
    """An idle session gives its connections back (reset, which drops their statements); the
    next execution prepares again wherever it runs, invisibly."""
    baseline = prepared_counts(sandbox)
    read = conn.cursor(prepared=True)
    sql = "SELECT @@server_id, CONCAT(?, '!')"
    for round_ in range(3):
        rows = [execute(read, sql, (f"r{round_}-{i}",)) for i in range(4)]
        assert [r[0][1] for r in rows] == [f"r{round_}-{i}!" for i in range(4)]
        assert {r[0][0] for r in rows} == {r.server_id for r in sandbox.replicas}
        # idle for a while: Baton pools the connections, resetting them
        wait_for(
            lambda: prepared_counts(sandbox) == baseline,
            10,
            "backend statements closed by the reset",
        )
    read.close()


# --- no leak ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_ten_thousand_executions_keep_backend_statements_bounded(
    proxy: BatonProcess, sandbox: ReplicationSandbox
) -> None:
    baseline = prepared_counts(sandbox)
    master_id = sandbox.master.server_id
    replica_ids = {r.server_id for r in sandbox.replicas}
    with scratch_table(sandbox, "id INT PRIMARY KEY, v INT NOT NULL") as table:
        sandbox.master.sql(f"INSERT INTO {table} SELECT seq, 0 FROM seq_1_to_100", database="test")
        sandbox.wait_caught_up()
        statements = {
            "server": "SELECT @@server_id, ? + 1",
            "row": f"SELECT @@server_id, id FROM {table} WHERE id = ?",
            "count": f"SELECT @@server_id, COUNT(*) FROM {table} WHERE id <= ?",
            "update": f"UPDATE {table} SET v = v + 1 WHERE id = ? AND @@server_id = {master_id}",
        }
        conn = connector_connect(proxy)
        try:
            cursors = {name: conn.cursor(prepared=True) for name in statements}
            where: Counter[int] = Counter()
            updates = 0
            peak: dict[str, int] = dict.fromkeys(baseline, 0)
            names = list(statements)
            for i in range(10_000):
                if i % 500 == 499:
                    counts = prepared_counts(sandbox)
                    for server, n in counts.items():
                        peak[server] = max(peak[server], n - baseline[server])
                        # at most one backend statement per statement the client has open
                        assert n - baseline[server] <= len(cursors), (i, counts, baseline)
                name = names[i % len(names)]
                if i % 97 == 0:  # now and then a statement is closed and prepared anew
                    cursors[name].close()
                    cursors[name] = conn.cursor(prepared=True)
                key = i % 100 + 1
                cursor = cursors[name]
                cursor.execute(statements[name], (key,))
                if name == "update":
                    assert cursor.rowcount == 1, "the update must run on the master"
                    updates += 1
                    continue
                ((sid, value),) = cursor.fetchall()
                where[sid] += 1
                if name == "server":
                    assert value == key + 1
                elif name == "row":
                    assert value == key
            print(f"executions per server {dict(where)}, updates {updates}, peak open {peak}")
            assert set(where) == replica_ids, where  # reads never on the master
            assert all(peak[r.name] > 0 for r in sandbox.replicas), peak  # it did look
            for cursor in cursors.values():
                cursor.close()
        finally:
            conn.close()
        assert sandbox.master.sql(f"SELECT SUM(v) FROM {table}") == [(updates,)]
    wait_for(
        lambda: prepared_counts(sandbox) == baseline, 10, f"Prepared_stmt_count back to {baseline}"
    )


def test_closing_statements_closes_them_on_the_backends(
    conn: Any, sandbox: ReplicationSandbox
) -> None:
    """While the session keeps its backend connections: each close is passed on at once."""
    baseline = prepared_counts(sandbox)
    cursors = [conn.cursor(prepared=True) for _ in range(6)]
    for i, cursor in enumerate(cursors):
        sql = f"SELECT @@server_id, {i} + ?"
        execute(cursor, sql, (1,))
        execute(cursor, sql, (2,))  # on both replicas
    opened = prepared_counts(sandbox)
    for name in opened:
        assert opened[name] - baseline[name] <= len(cursors)
    for cursor in cursors:
        cursor.close()  # COM_STMT_CLOSE has no reply: a statement behind it on each
    plain = conn.cursor()  # connection shows it was handled
    for statement in ("/* baton:master */ SELECT 1", "SELECT 1", "SELECT 1"):
        plain.execute(statement)
        plain.fetchall()
    assert prepared_counts(sandbox) == baseline


# --- read-your-writes with prepared writes ---------------------------------------------------


def test_prepared_write_then_read_never_misses_with_session_consistency(
    conn: Any, sandbox: ReplicationSandbox
) -> None:
    with scratch_table(sandbox, "id INT PRIMARY KEY, v INT NOT NULL") as table:
        sandbox.master.sql(f"INSERT INTO {table} VALUES (1, 0)")
        sandbox.wait_caught_up()
        plain = conn.cursor()
        plain.execute("SET @baton_consistency = 'session'")
        update = conn.cursor(prepared=True)
        select = conn.cursor(prepared=True)
        update_sql = f"UPDATE {table} SET v = ? WHERE id = 1"
        select_sql = f"SELECT v FROM {table} WHERE id = ?"
        misses = 0
        for i in range(1, 1001):
            update.execute(update_sql, (i,))
            if execute(select, select_sql, (1,)) != [(i,)]:
                misses += 1
        assert misses == 0
