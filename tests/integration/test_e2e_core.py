"""Real clients through a real Baton in front of a real MariaDB topology: only host and port change.

PyMySQL and mysql-connector-python (pure Python, so every byte goes through Baton's protocol
handling rather than a C library's shortcuts) against Baton started as a subprocess, once per
client auth plugin Baton can ask for. What a test writes is checked on the master itself
where that makes the test stronger than reading it back through Baton.

The clients and the module-scoped Baton launcher, shared by the other ``test_e2e_*`` modules,
are in tests/support/clients.py.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import os
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import mysql.connector
import pymysql
import pytest
from pymysql.constants import CLIENT, COMMAND
from pymysql.cursors import DictCursor, SSCursor

from proxy.sandbox import ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess
from tests.support.clients import (
    AUTH_PLUGINS,
    MiB,
    RssSampler,
    connector_connect,
    kill_a_running_sleep,
    launch_baton,
    one_auth_plugin,
    pymysql_connect,
    scratch_table,
)

# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=AUTH_PLUGINS)
def proxy(
    request: pytest.FixtureRequest,
    sandbox: ReplicationSandbox,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BatonProcess]:
    """One Baton per client auth plugin, shared by this module's tests. Two users, so that
    COM_CHANGE_USER can switch to an account the backend knows under another name."""
    users = [{"name": "app", "password": "app"}, {"name": "monitor", "password": "monitor"}]
    with launch_baton(
        sandbox,
        tmp_path_factory.mktemp("baton-core"),
        proxy={"auth_plugin": request.param},
        users=users,
    ) as process:
        yield process


# --- PyMySQL ---------------------------------------------------------------------------------


def test_pymysql_dict_cursor_reads_rows_as_dicts(proxy: BatonProcess) -> None:
    with pymysql_connect(proxy, cursorclass=DictCursor) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT 1 AS one, 'héllo ☃' AS text, NULL AS nothing, 2.5 AS half, DATABASE() AS db"
        )
        assert cur.fetchall() == [
            {"one": 1, "text": "héllo ☃", "nothing": None, "half": Decimal("2.5"), "db": "test"}
        ]


def test_pymysql_sscursor_streams_rows_in_order(proxy: BatonProcess) -> None:
    with pymysql_connect(proxy) as conn:
        with conn.cursor(SSCursor) as cur:
            cur.execute("SELECT seq, CONCAT('row-', seq) FROM seq_1_to_50000")
            count = 0
            for count, (seq, text) in enumerate(cur, start=1):
                assert (seq, text) == (count, f"row-{count}")
            assert count == 50000
        with conn.cursor() as cur:  # the connection is usable once the stream is read
            cur.execute("SELECT 'after'")
            assert cur.fetchone() == ("after",)


def test_pymysql_executemany_inserts_every_row(
    proxy: BatonProcess, sandbox: ReplicationSandbox
) -> None:
    with scratch_table(sandbox, "id INT PRIMARY KEY, v VARCHAR(20)") as table:
        rows = [(i, f"v{i}") for i in range(1, 1001)]
        with pymysql_connect(proxy) as conn, conn.cursor() as cur:
            assert cur.executemany(f"INSERT INTO {table} (id, v) VALUES (%s, %s)", rows) == 1000
        assert sandbox.master.sql(f"SELECT COUNT(*), SUM(id) FROM {table}") == [
            (1000, Decimal(500500))
        ]


def test_pymysql_commit_and_rollback(proxy: BatonProcess, sandbox: ReplicationSandbox) -> None:
    with scratch_table(sandbox, "id INT PRIMARY KEY") as table:
        with pymysql_connect(proxy, autocommit=False) as conn, conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (1)")
            cur.execute(f"SELECT id FROM {table}")  # a transaction sees its own writes
            assert cur.fetchall() == ((1,),)
            conn.rollback()
            cur.execute(f"SELECT id FROM {table}")
            assert cur.fetchall() == ()
            conn.begin()  # explicit START TRANSACTION this time
            cur.execute(f"INSERT INTO {table} VALUES (2)")
            cur.execute(f"SELECT id FROM {table}")
            assert cur.fetchall() == ((2,),)
            assert sandbox.master.sql(f"SELECT id FROM {table}") == []  # not committed yet
            conn.commit()
            sandbox.wait_caught_up()
            cur.execute(f"SELECT id FROM {table}")
            assert cur.fetchall() == ((2,),)
        assert sandbox.master.sql(f"SELECT id FROM {table}") == [(2,)]


def test_pymysql_autocommit_toggling(proxy: BatonProcess, sandbox: ReplicationSandbox) -> None:
    with scratch_table(sandbox, "id INT PRIMARY KEY") as table:
        with pymysql_connect(proxy, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (1)")
            assert sandbox.master.sql(f"SELECT id FROM {table}") == [(1,)]
            conn.autocommit(False)
            assert conn.get_autocommit() is False
            cur.execute("SELECT @@autocommit")
            assert cur.fetchone() == (0,)
            cur.execute(f"INSERT INTO {table} VALUES (2)")
            assert sandbox.master.sql(f"SELECT id FROM {table}") == [(1,)]
            conn.autocommit(True)  # SET autocommit=1 commits the open transaction
            assert conn.get_autocommit() is True
            assert sandbox.master.sql(f"SELECT id FROM {table} ORDER BY id") == [(1,), (2,)]


def test_pymysql_multi_statements_return_every_result(proxy: BatonProcess) -> None:
    with pymysql_connect(proxy, client_flag=CLIENT.MULTI_STATEMENTS) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT 1; SET @m = 7; SELECT 'two', @m; DO 0")
            assert cur.fetchall() == ((1,),)
            assert cur.nextset()
            assert cur.description is None  # the SET's OK
            assert cur.nextset()
            assert cur.fetchall() == (("two", 7),)
            assert cur.nextset()
            assert cur.description is None
            assert not cur.nextset()
            cur.execute("SELECT 'after'")
            assert cur.fetchall() == (("after",),)


def test_pymysql_stored_procedure_with_two_result_sets(
    proxy: BatonProcess, sandbox: ReplicationSandbox
) -> None:
    name = f"test.p_{uuid.uuid4().hex[:12]}"
    sandbox.master.sql(
        f"CREATE PROCEDURE {name}(IN n INT) BEGIN "
        "SELECT seq FROM seq_1_to_3 WHERE seq <= n; SELECT n * 10 AS tens, 'done' AS word; END"
    )
    sandbox.wait_caught_up()
    try:
        with pymysql_connect(proxy) as conn, conn.cursor() as cur:
            cur.callproc(name.split(".")[1], (2,))
            assert cur.fetchall() == ((1,), (2,))
            assert cur.nextset()
            assert cur.fetchall() == ((20, "done"),)
            assert cur.nextset()  # the CALL's own OK
            assert cur.description is None
            assert not cur.nextset()
            cur.execute("SELECT 'after'")
            assert cur.fetchall() == (("after",),)
    finally:
        sandbox.master.sql(f"DROP PROCEDURE IF EXISTS {name}")


def test_pymysql_select_db_and_ping(proxy: BatonProcess) -> None:
    with pymysql_connect(proxy) as conn, conn.cursor() as cur:
        conn.select_db("mysql")
        cur.execute("SELECT DATABASE(), COUNT(*) > 0 FROM user")
        assert cur.fetchone() == ("mysql", 1)
        conn.ping(reconnect=False)
        conn.select_db("test")
        cur.execute("SELECT DATABASE()")
        assert cur.fetchone() == ("test",)
        conn.ping(reconnect=False)


def test_pymysql_select_db_of_a_missing_schema_fails_cleanly(proxy: BatonProcess) -> None:
    with pymysql_connect(proxy) as conn:
        with pytest.raises(pymysql.err.OperationalError) as err:
            conn.select_db("no_such_schema_e2e")
        assert err.value.args[0] == 1049  # ER_BAD_DB_ERROR, the server's own answer
        with conn.cursor() as cur:
            cur.execute("SELECT DATABASE()")
            assert cur.fetchone() == ("test",)


@one_auth_plugin
def test_pymysql_twenty_mib_blob_round_trips(
    proxy: BatonProcess, sandbox: ReplicationSandbox
) -> None:
    blob = os.urandom(20 * MiB)  # > 16 MiB: the packets span several frames both ways
    with scratch_table(sandbox, "id INT PRIMARY KEY, b LONGBLOB") as table:
        with pymysql_connect(proxy, max_allowed_packet=64 * MiB) as conn, conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (1, %s)", (blob,))
            sandbox.wait_caught_up()  # the SELECT may be served by a replica
            cur.execute(f"SELECT b, LENGTH(b), SHA2(b, 256) FROM {table} WHERE id = 1")
            back, length, digest = cur.fetchone()
        assert length == len(blob)
        assert digest == hashlib.sha256(blob).hexdigest()  # what the server stored
        assert back == blob  # what came back through Baton


@one_auth_plugin
def test_pymysql_load_data_local_infile(
    proxy: BatonProcess, sandbox: ReplicationSandbox, tmp_path: Path
) -> None:
    data = tmp_path / "rows.csv"
    data.write_text("".join(f"{i},row-{i}\n" for i in range(1, 100_001)))
    with scratch_table(sandbox, "id INT PRIMARY KEY, v VARCHAR(20)") as table:
        with pymysql_connect(proxy, local_infile=True) as conn, conn.cursor() as cur:
            loaded = cur.execute(
                f"LOAD DATA LOCAL INFILE %s INTO TABLE {table} FIELDS TERMINATED BY ','",
                (str(data),),
            )
            assert loaded == 100_000
            sandbox.wait_caught_up()
            cur.execute(f"SELECT COUNT(*), SUM(id), MAX(v) FROM {table}")
            assert cur.fetchone() == (100_000, Decimal(5_000_050_000), "row-99999")
        assert sandbox.master.sql(f"SELECT COUNT(*) FROM {table}") == [(100_000,)]


def test_pymysql_load_data_local_infile_of_a_missing_file(
    proxy: BatonProcess, sandbox: ReplicationSandbox, tmp_path: Path
) -> None:
    with scratch_table(sandbox, "id INT, v VARCHAR(20)") as table:
        with pymysql_connect(proxy, local_infile=True) as conn, conn.cursor() as cur:
            with pytest.raises(pymysql.err.OperationalError) as err:
                cur.execute(
                    f"LOAD DATA LOCAL INFILE %s INTO TABLE {table}", (str(tmp_path / "absent"),)
                )
            assert err.value.args[0] == 1017  # PyMySQL's own "Can't find file"
            cur.execute(f"SELECT COUNT(*) FROM {table}")  # the session is still in step
            assert cur.fetchone() == (0,)
            cur.execute("SELECT 'usable'")
            assert cur.fetchone() == ("usable",)


@pytest.mark.slow
@one_auth_plugin
def test_million_row_stream_keeps_baton_memory_bounded(proxy: BatonProcess) -> None:
    """About 110 MB of rows; Baton must pass them at the reader's pace, not buffer them."""
    limit = 100 * MiB
    with RssSampler(proxy.pid) as rss, pymysql_connect(proxy) as conn:
        with conn.cursor(SSCursor) as cur:
            cur.execute("SELECT seq, REPEAT('x', 100) FROM seq_1_to_1000000")
            assert cur.fetchone() == (1, "x" * 100)
            time.sleep(2)  # a slow reader: the server keeps producing meanwhile
            assert rss.peak < limit, f"Baton RSS {rss.peak / MiB:.0f} MiB while the client paused"
            count, last = 1, 1
            while rows := cur.fetchmany(20_000):
                count += len(rows)
                last = rows[-1][0]
        assert (count, last) == (1_000_000, 1_000_000)
    assert rss.samples > 10
    assert rss.peak < limit, f"Baton RSS peaked at {rss.peak / MiB:.0f} MiB"


# --- session isolation -----------------------------------------------------------------------


def _session_view(conn: pymysql.Connection) -> tuple[Any, ...]:
    with conn.cursor() as cur:
        cur.execute("SELECT DATABASE(), @who, @@session.sql_mode, @@session.time_zone")
        return cur.fetchone()


def test_concurrent_sessions_keep_their_own_state(proxy: BatonProcess) -> None:
    with pymysql_connect(proxy) as a, pymysql_connect(proxy) as b:
        with a.cursor() as cur:
            cur.execute("SET @who = 'a', SESSION sql_mode = 'ANSI_QUOTES', time_zone = '+01:00'")
        a.select_db("mysql")
        with b.cursor() as cur:
            cur.execute("SET @who = 'b', SESSION sql_mode = 'NO_ZERO_DATE', time_zone = '-05:00'")
        for _ in range(3):  # interleaved, so a shared backend connection would show
            assert _session_view(a) == ("mysql", "a", "ANSI_QUOTES", "+01:00")
            assert _session_view(b) == ("test", "b", "NO_ZERO_DATE", "-05:00")


@pytest.fixture(scope="module")
def master_only(
    sandbox: ReplicationSandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BatonProcess]:
    """Baton sending everything to the master, so that a test can tell which pooled backend
    connection a client was given (CONNECTION_ID()) and look for state left on it."""
    with launch_baton(
        sandbox, tmp_path_factory.mktemp("baton-master-only"), routing={"read_write_split": False}
    ) as process:
        yield process


def _backend_thread_id(conn: pymysql.Connection) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        return int(cur.fetchone()[0])


@contextlib.contextmanager
def _successor(proxy: BatonProcess, thread: int, **options: Any) -> Iterator[pymysql.Connection]:
    """A new client holding the pooled backend connection ``thread`` that a departed client
    used. The pool hands out the most recently released connection once Baton has reset it,
    which takes a moment: retry briefly rather than assume the timing."""
    deadline = time.monotonic() + 5
    while True:
        conn = pymysql_connect(proxy, **options)
        if _backend_thread_id(conn) == thread:
            break
        conn.close()
        assert time.monotonic() < deadline, f"backend connection {thread} was not reused"
        time.sleep(0.1)
    try:
        yield conn
    finally:
        conn.close()


def test_new_client_does_not_inherit_a_departed_clients_session(master_only: BatonProcess) -> None:
    with pymysql_connect(master_only) as keep_busy:  # holds a second backend connection
        with pymysql_connect(master_only) as a, a.cursor() as cur:
            thread = _backend_thread_id(a)
            cur.execute("SET @who = 'a', SESSION sql_mode = 'ANSI_QUOTES', time_zone = '+03:00'")
            cur.execute("CREATE TEMPORARY TABLE e2e_leftover_tmp (i INT)")
            cur.execute("PREPARE e2e_leftover_stmt FROM 'SELECT 1'")
            cur.execute("SET SESSION autocommit = 0, SESSION tx_read_only = 1")
        _backend_thread_id(keep_busy)
        with _successor(master_only, thread) as c, c.cursor() as cur:
            cur.execute(
                "SELECT @who, @@session.sql_mode = @@global.sql_mode,"
                " @@session.time_zone = @@global.time_zone, @@autocommit,"
                " @@session.tx_read_only"
            )
            assert cur.fetchone() == (None, 1, 1, 1, 0)
            with pytest.raises(pymysql.err.ProgrammingError) as err:
                cur.execute("SELECT * FROM e2e_leftover_tmp")
            assert err.value.args[0] == 1146  # ER_NO_SUCH_TABLE
            with pytest.raises(pymysql.err.OperationalError) as err:
                cur.execute("EXECUTE e2e_leftover_stmt")
            assert err.value.args[0] == 1243  # ER_UNKNOWN_STMT_HANDLER


def _multi_statements_on(conn: pymysql.Connection) -> None:
    """COM_SET_OPTION(MYSQL_OPTION_MULTI_STATEMENTS_ON), what Connector/C's
    mysql_set_server_option() sends; PyMySQL has no public call for it."""
    conn._execute_command(COMMAND.COM_SET_OPTION, b"\x00\x00")
    conn._read_packet()


def test_new_client_does_not_inherit_multi_statements_switched_on_by_another(
    master_only: BatonProcess,
) -> None:
    with pymysql_connect(master_only) as keep_busy:
        with pymysql_connect(master_only) as a, a.cursor() as cur:
            thread = _backend_thread_id(a)
            _multi_statements_on(a)
            cur.execute("SELECT 1; SELECT 2")  # now allowed for a
        _backend_thread_id(keep_busy)
        time.sleep(0.3)  # let Baton recycle A's connection
        # COM_RESET_CONNECTION does not undo the option, so A's connection must not be handed
        # on: whichever connection each new client gets, stacked statements stay refused.
        for _ in range(5):
            with pymysql_connect(master_only) as c, c.cursor() as cur:
                with pytest.raises(pymysql.err.ProgrammingError) as err:
                    cur.execute("SELECT 1; SELECT 2")
                assert err.value.args[0] == 1064, f"departed client's connection was {thread}"


def test_hang_up_inside_a_transaction_rolls_it_back(
    master_only: BatonProcess, sandbox: ReplicationSandbox
) -> None:
    with scratch_table(sandbox, "id INT PRIMARY KEY") as table:
        with pymysql_connect(master_only, autocommit=False) as a, a.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (1)")
            cur.execute(f"SELECT id FROM {table} FOR UPDATE")
        with pymysql_connect(master_only, read_timeout=10) as b, b.cursor() as cur:
            cur.execute("SELECT @@in_transaction")
            assert cur.fetchone() == (0,)
            cur.execute(f"INSERT INTO {table} VALUES (1)")  # no lock, no duplicate key left
        assert sandbox.master.sql(f"SELECT id FROM {table}") == [(1,)]


@pytest.mark.parametrize("how", ["login", "com_init_db", "use_statement"])
def test_new_client_does_not_inherit_a_departed_clients_schema(
    master_only: BatonProcess, how: str
) -> None:
    with pymysql_connect(master_only) as keep_busy:
        with pymysql_connect(master_only, database="mysql" if how == "login" else None) as a:
            thread = _backend_thread_id(a)
            if how == "com_init_db":
                a.select_db("mysql")
            elif how == "use_statement":
                with a.cursor() as cur:
                    cur.execute("USE mysql")
        _backend_thread_id(keep_busy)
        # No command unselects a database, so a client without one must never be handed the
        # departed client's connection: whichever connection each new client gets (the old
        # bug gave the very next one A's), it has no default schema.
        time.sleep(0.3)  # let Baton reset and pool A's connection
        for _ in range(5):
            with pymysql_connect(master_only, database=None) as c, c.cursor() as cur:
                cur.execute("SELECT DATABASE(), CONNECTION_ID()")
                schema, got = cur.fetchone()
                assert schema is None, f"backend connection {got} (departed client's: {thread})"


# --- answers that live in the session (a read/write split must not send them elsewhere) -----


def test_last_insert_id_and_row_count_after_a_write(
    proxy: BatonProcess, sandbox: ReplicationSandbox
) -> None:
    with scratch_table(sandbox, "id INT AUTO_INCREMENT PRIMARY KEY, v INT") as table:
        with pymysql_connect(proxy) as conn, conn.cursor() as cur:
            for expected in (1, 2, 3):
                cur.execute(f"INSERT INTO {table} (v) VALUES (%s)", (expected,))
                assert cur.lastrowid == expected  # from the OK packet
                cur.execute("SELECT LAST_INSERT_ID(), @@identity")
                assert cur.fetchone() == (expected, expected)
            cur.execute(f"UPDATE {table} SET v = v + 1 WHERE id >= 2")
            cur.execute("SELECT ROW_COUNT()")
            assert cur.fetchone() == (2,)


def test_warnings_of_a_write_are_shown(proxy: BatonProcess, sandbox: ReplicationSandbox) -> None:
    with scratch_table(sandbox, "id INT PRIMARY KEY, v TINYINT") as table:
        with pymysql_connect(proxy) as conn, conn.cursor() as cur:
            cur.execute("SET SESSION sql_mode = ''")
            cur.execute(f"INSERT INTO {table} VALUES (1, 1000)")  # clipped to 127, one warning
            cur.execute("SHOW WARNINGS")
            assert [(level, code) for level, code, _ in cur.fetchall()] == [("Warning", 1264)]


def test_temporary_table_is_readable_after_it_is_written(proxy: BatonProcess) -> None:
    with pymysql_connect(proxy) as conn, conn.cursor() as cur:
        cur.execute("CREATE TEMPORARY TABLE e2e_session_tmp (i INT)")
        cur.execute("INSERT INTO e2e_session_tmp VALUES (1), (2), (3)")
        cur.execute("SELECT SUM(i) FROM e2e_session_tmp")
        assert cur.fetchone() == (Decimal(6),)
        cur.execute("SELECT COUNT(*) FROM e2e_session_tmp t1 JOIN test.e2e_session_tmp t2")
        assert cur.fetchone() == (9,)


def test_found_rows_after_sql_calc_found_rows(proxy: BatonProcess) -> None:
    with pymysql_connect(proxy) as conn, conn.cursor() as cur:
        cur.execute("SELECT SQL_CALC_FOUND_ROWS seq FROM seq_1_to_100 LIMIT 5")
        assert len(cur.fetchall()) == 5
        cur.execute("SELECT FOUND_ROWS()")
        assert cur.fetchone() == (100,)


def test_named_lock_is_held_by_the_session(
    proxy: BatonProcess, sandbox: ReplicationSandbox
) -> None:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    with pymysql_connect(proxy) as conn, conn.cursor() as cur:
        cur.execute("SELECT GET_LOCK(%s, 0)", (name,))
        assert cur.fetchone() == (1,)
        assert sandbox.master.sql(f"SELECT IS_FREE_LOCK('{name}')") == [(0,)]  # taken, there
        cur.execute("SELECT IS_USED_LOCK(%s) = CONNECTION_ID()", (name,))
        assert cur.fetchone() == (1,)
        cur.execute("SELECT RELEASE_LOCK(%s)", (name,))
        assert cur.fetchone() == (1,)
    assert sandbox.master.sql(f"SELECT IS_FREE_LOCK('{name}')") == [(1,)]


@one_auth_plugin
def test_kill_query_with_the_greeting_connection_id_interrupts_that_session(
    proxy: BatonProcess,
) -> None:
    with pymysql_connect(proxy) as victim, pymysql_connect(proxy) as killer:
        outcome = kill_a_running_sleep(victim, killer, f"KILL QUERY {victim.thread_id()}")
        assert outcome["interrupted"] and outcome["seconds"] < 3, outcome
        with victim.cursor() as cur:
            cur.execute("SELECT 'still connected'")
            assert cur.fetchone() == ("still connected",)


WRITES_IN_DISGUISE = [
    pytest.param("/* app: checkout */ INSERT INTO {t} VALUES (1)", id="after_a_block_comment"),
    pytest.param("-- app: checkout\nINSERT INTO {t} VALUES (1)", id="after_a_line_comment"),
    pytest.param("# app: checkout\nINSERT INTO {t} VALUES (1)", id="after_a_hash_comment"),
    pytest.param(" \n\t insert into {t} values (1)", id="lower_case_after_blanks"),
    pytest.param("SELECT 1; INSERT INTO {t} VALUES (1)", id="second_of_a_multi_statement"),
    pytest.param("CALL {t}_add()", id="inside_a_procedure"),
    pytest.param(
        "SELECT {t}_fn()",
        id="inside_a_stored_function_called_by_a_select",
    ),
]


@one_auth_plugin
@pytest.mark.parametrize("statement", WRITES_IN_DISGUISE)
def test_write_in_disguise_reaches_the_master(
    proxy: BatonProcess, sandbox: ReplicationSandbox, statement: str
) -> None:
    with scratch_table(sandbox, "id INT PRIMARY KEY") as table:
        sandbox.master.sql(f"CREATE PROCEDURE {table}_add() INSERT INTO {table} VALUES (1)")
        sandbox.master.sql(
            f"CREATE FUNCTION {table}_fn() RETURNS INT DETERMINISTIC MODIFIES SQL DATA "
            f"BEGIN INSERT INTO {table} VALUES (1); RETURN 1; END"
        )
        sandbox.wait_caught_up()
        try:
            with pymysql_connect(proxy, client_flag=CLIENT.MULTI_STATEMENTS) as conn:
                with conn.cursor() as cur:
                    cur.execute(statement.format(t=table))
                    while cur.nextset():
                        pass
            assert sandbox.master.sql(f"SELECT id FROM {table}") == [(1,)]
        finally:
            sandbox.master.sql(f"DROP PROCEDURE IF EXISTS {table}_add")
            sandbox.master.sql(f"DROP FUNCTION IF EXISTS {table}_fn")


@one_auth_plugin
def test_select_nextval_advances_the_masters_sequence(
    proxy: BatonProcess, sandbox: ReplicationSandbox
) -> None:
    name = f"test.s_{uuid.uuid4().hex[:12]}"
    sandbox.master.sql(f"CREATE SEQUENCE {name} START WITH 1 INCREMENT BY 1 NOCACHE")
    sandbox.wait_caught_up()
    try:
        with pymysql_connect(proxy) as conn, conn.cursor() as cur:
            for expected in (1, 2, 3):
                cur.execute(f"SELECT NEXTVAL({name})")
                assert cur.fetchone() == (expected,)
        assert sandbox.master.sql(f"SELECT NEXTVAL({name})") == [(4,)]
    finally:
        sandbox.master.sql(f"DROP SEQUENCE IF EXISTS {name}")


@one_auth_plugin
def test_user_variables_assigned_by_a_select_are_kept(proxy: BatonProcess) -> None:
    with pymysql_connect(proxy) as conn, conn.cursor() as cur:
        cur.execute("SELECT 42 INTO @into_var")
        cur.execute("SELECT @assigned := 7")
        cur.execute("SELECT LAST_INSERT_ID(99)")
        cur.execute("SELECT @into_var, @assigned, LAST_INSERT_ID()")
        assert cur.fetchone() == (42, 7, 99)


# --- mysql-connector-python ------------------------------------------------------------------


def test_connector_prepared_statements_bind_every_type(
    proxy: BatonProcess, sandbox: ReplicationSandbox
) -> None:
    columns = "id INT PRIMARY KEY, s VARCHAR(50), b VARBINARY(50), f DOUBLE, d DATETIME(6), n INT"
    rows = [
        (
            1,
            "héllo ☃",
            b"\x00\xff\x01binary",
            1.5,
            datetime.datetime(2024, 2, 29, 12, 34, 56, 789012),
            None,
        ),
        (2, "", b"", -0.25, datetime.datetime(1999, 12, 31, 23, 59, 59), 7),
        (
            3,
            "x" * 50,
            bytes(range(50)),
            1e300,
            datetime.datetime(2038, 1, 19, 3, 14, 8, 1),
            -(2**31),
        ),
    ]
    with scratch_table(sandbox, columns) as table:
        conn = connector_connect(proxy)
        try:
            cur = conn.cursor(prepared=True)
            insert = f"INSERT INTO {table} (id, s, b, f, d, n) VALUES (?, ?, ?, ?, ?, ?)"
            for row in rows:
                cur.execute(insert, row)
            sandbox.wait_caught_up()
            cur.execute(f"SELECT id, s, b, f, d, n FROM {table} WHERE id >= ? ORDER BY id", (1,))
            assert cur.fetchone() == rows[0]
            assert cur.fetchmany(1) == [rows[1]]
            assert cur.fetchall() == [rows[2]]
            cur.execute(f"SELECT s FROM {table} WHERE id = ? AND n IS NULL", (1,))
            assert cur.fetchall() == [("héllo ☃",)]
            cur.close()
        finally:
            conn.close()


@one_auth_plugin
def test_connector_prepared_twenty_mib_blob_as_long_data_and_inline(
    proxy: BatonProcess, sandbox: ReplicationSandbox
) -> None:
    blob = os.urandom(20 * MiB)
    with scratch_table(sandbox, "id INT PRIMARY KEY, b LONGBLOB") as table:
        conn = connector_connect(proxy)
        try:
            cur = conn.cursor(prepared=True)
            insert = f"INSERT INTO {table} (id, b) VALUES (?, ?)"
            cur.execute(insert, (1, io.BytesIO(blob)))  # COM_STMT_SEND_LONG_DATA, 128 KiB chunks
            cur.execute(insert, (2, blob))  # one COM_STMT_EXECUTE packet over 16 MiB
            sandbox.wait_caught_up()
            # Read back in halves: mysql-connector cannot read a binary-protocol row over
            # 16 MiB even straight from MariaDB ("Packet is not an error packet").
            half = len(blob) // 2
            select = f"SELECT SUBSTRING(b, ?, ?) FROM {table} WHERE id = ?"
            for row_id in (1, 2):
                cur.execute(select, (1, half, row_id))
                (first,) = cur.fetchall()[0]
                cur.execute(select, (half + 1, len(blob), row_id))
                (second,) = cur.fetchall()[0]
                assert bytes(first) + bytes(second) == blob, f"row {row_id} differs"
            cur.close()
        finally:
            conn.close()
        digest = hashlib.sha256(blob).hexdigest()
        assert sandbox.master.sql(f"SELECT id, SHA2(b, 256) FROM {table} ORDER BY id") == [
            (1, digest),
            (2, digest),
        ]


def test_connector_prepared_select_with_long_data(proxy: BatonProcess) -> None:
    data = os.urandom(3 * MiB)
    conn = connector_connect(proxy)
    try:
        cur = conn.cursor(prepared=True)
        cur.execute("SELECT LENGTH(?), SHA2(?, 256)", (io.BytesIO(data), io.BytesIO(data)))
        assert cur.fetchall() == [(len(data), hashlib.sha256(data).hexdigest())]
        cur.close()
    finally:
        conn.close()


def test_connector_prepared_statements_across_a_transaction(
    proxy: BatonProcess, sandbox: ReplicationSandbox
) -> None:
    with scratch_table(sandbox, "id INT PRIMARY KEY, v VARCHAR(10)") as table:
        conn = connector_connect(proxy)
        try:
            select = conn.cursor(prepared=True)
            insert = conn.cursor(prepared=True)
            select.execute(f"SELECT COUNT(*) FROM {table} WHERE id > ?", (0,))
            assert select.fetchall() == [(0,)]
            conn.start_transaction()
            insert.execute(f"INSERT INTO {table} VALUES (?, ?)", (1, "in-trx"))
            select.execute(f"SELECT COUNT(*) FROM {table} WHERE id > ?", (0,))  # same statement
            assert select.fetchall() == [(1,)]  # sees the transaction's own row
            conn.rollback()
            select.execute(f"SELECT COUNT(*) FROM {table} WHERE id > ?", (0,))
            assert select.fetchall() == [(0,)]
            insert.execute(f"INSERT INTO {table} VALUES (?, ?)", (2, "autocommit"))
            select.close()
            insert.close()
        finally:
            conn.close()
        assert sandbox.master.sql(f"SELECT id, v FROM {table}") == [(2, "autocommit")]


def test_connector_change_user_switches_account_and_clears_state(proxy: BatonProcess) -> None:
    conn = connector_connect(proxy)
    try:
        cur = conn.cursor()
        cur.execute("SET @before = 'kept?'")
        conn.cmd_change_user(username="monitor", password="monitor", database="mysql")
        cur = conn.cursor()
        cur.execute("SELECT CURRENT_USER(), DATABASE(), @before")
        assert cur.fetchall() == [("monitor@%", "mysql", None)]
        conn.cmd_change_user(username="app", password="app", database="test")
        cur = conn.cursor()
        cur.execute("SELECT CURRENT_USER(), DATABASE()")
        assert cur.fetchall() == [("app@%", "test")]
    finally:
        conn.close()


def test_connector_change_user_with_a_wrong_password_is_refused(proxy: BatonProcess) -> None:
    conn = connector_connect(proxy)
    try:
        with pytest.raises(mysql.connector.Error) as err:
            conn.cmd_change_user(username="monitor", password="wrong")
        assert err.value.errno == 1045
    finally:
        with contextlib.suppress(mysql.connector.Error):
            conn.close()


def test_connector_reset_connection_clears_session_state(proxy: BatonProcess) -> None:
    conn = connector_connect(proxy)
    try:
        cur = conn.cursor()
        cur.execute("SET @v = 42, SESSION sql_mode = 'ANSI_QUOTES'")
        cur.execute("CREATE TEMPORARY TABLE e2e_reset_tmp (i INT)")
        cur.execute("START TRANSACTION")
        assert conn.cmd_reset_connection() is True
        cur = conn.cursor()
        cur.execute(
            "SELECT @v, @@session.sql_mode = @@global.sql_mode, @@in_transaction, DATABASE()"
        )
        assert cur.fetchall() == [(None, 1, 0, "test")]
        with pytest.raises(mysql.connector.errors.ProgrammingError) as err:
            cur.execute("SELECT * FROM e2e_reset_tmp")
        assert err.value.errno == 1146
    finally:
        conn.close()
