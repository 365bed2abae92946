"""Session state through a read/write split: a client sees what a direct connection would.

A session's statements run on several backends (SET and USE on the master, reads on the
replicas, each possibly on a pooled connection another client used before), so Baton replays
what the session set. The test for each scenario: run the same statements through Baton and
on a direct connection to the master, with the same login, and compare every statement's
outcome (rows, or the error code). Each read is repeated so that it runs on both replicas.

Before each scenario the pools are primed with connections other clients used and Baton reset,
so the session gets recycled backend connections, as it would in production.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest
from test_e2e_core import pymysql_connect, scratch_table
from test_e2e_routing import count_servers, module_baton

from proxy.sandbox import ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess, admin_rows, wait_for

Outcome = tuple[Any, ...] | tuple[str, int]


@pytest.fixture(scope="module")
def proxy(
    sandbox: ReplicationSandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BatonProcess]:
    yield from module_baton(sandbox, tmp_path_factory)


def direct_connect(topology: ReplicationSandbox, **options: Any) -> pymysql.Connection:
    """The app account straight to the master over TCP, as Baton's client would log in."""
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": topology.master.port,
        "user": "app",
        "password": "app",
        "database": "test",
        "autocommit": True,
        "connect_timeout": 5,
        "read_timeout": 30,
    }
    return pymysql.connect(**{**settings, **options})


def outcomes(conn: pymysql.Connection, statements: list[str]) -> list[Outcome]:
    """Each statement's rows, or ("error", code) if it failed."""
    results: list[Outcome] = []
    with conn.cursor() as cur:
        for statement in statements:
            try:
                cur.execute(statement)
                results.append(tuple(cur.fetchall()))
            except pymysql.err.MySQLError as exc:
                results.append(("error", exc.args[0]))
    return results


def prime_pools(proxy: BatonProcess, topology: ReplicationSandbox) -> None:
    """Leaves an idle, reset connection in every backend's pool: a client that used all three
    backends hangs up, and Baton resets its connections and pools them."""
    with pymysql_connect(proxy) as conn, conn.cursor() as cur:
        cur.execute("SET @primed = 1")  # the master
        count_servers(cur, 2)  # both replicas
    names = {inst.name for inst in topology.instances}

    def pooled() -> bool:
        rows = admin_rows(proxy, "SHOW POOLS")
        idle = {r["backend"] for r in rows if r["idle"] > 0}
        return names <= idle and not any(r["in_use"] for r in rows)

    wait_for(pooled, 10, "a reset, idle connection in every backend's pool")


def compare(
    proxy: BatonProcess,
    topology: ReplicationSandbox,
    statements: list[str],
    *,
    pinned: bool = False,
    **options: Any,
) -> None:
    """The statements give the same outcomes through Baton as on the master directly; and,
    unless the scenario pins the session by design, its reads did run on the replicas."""
    prime_pools(proxy, topology)
    with direct_connect(topology, **options) as direct:
        expected = outcomes(direct, statements)
    with pymysql_connect(proxy, **options) as conn:
        got = outcomes(conn, statements)
        with conn.cursor() as cur:
            servers = set(count_servers(cur, 2))
    for statement, want, have in zip(statements, expected, got, strict=True):
        assert have == want, f"{statement!r}: through Baton {have!r}, directly {want!r}"
    replicas = {r.server_id for r in topology.replicas}
    if pinned:
        assert servers == {topology.master.server_id}
    else:
        assert servers == replicas, "the session should still read from the replicas"


def reads(statement: str, times: int = 3) -> list[str]:
    return [statement] * times


CHARSETS = "SELECT @@character_set_client, @@character_set_connection, @@character_set_results, @@collation_connection"

SCENARIOS = [
    pytest.param(
        ["USE mysql", *reads("SELECT DATABASE(), COUNT(*) > 0 FROM help_topic")], {}, id="use"
    ),
    pytest.param(
        ["USE mysql", "USE no_such_schema", *reads("SELECT DATABASE()")],
        {},
        id="use_of_a_missing_schema",
    ),
    pytest.param(
        ["USE /* why */ `mysql`;", *reads("SELECT DATABASE()")], {}, id="use_quoted_with_a_comment"
    ),
    pytest.param(
        # the client encodes in latin1, so the emoji is spelled in hex; it comes back in
        # character_set_results, as 4 bytes only where SET NAMES utf8mb4 was replayed
        ["SET NAMES utf8mb4", *reads(f"{CHARSETS}, CONVERT(X'F09F9880' USING utf8mb4)")],
        {"charset": "latin1"},
        id="set_names_utf8mb4_after_a_latin1_login",
    ),
    pytest.param(
        [
            "SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci",
            *reads(f"{CHARSETS}, 'ß' = 'ss', 'a' = 'A'"),
        ],
        {},
        id="set_names_with_collation",
    ),
    pytest.param(["SET NAMES latin1", *reads(CHARSETS)], {}, id="set_names_latin1"),
    pytest.param(
        ["SET NAMES 'utf8mb4' COLLATE 'utf8mb4_bin'", *reads(f"{CHARSETS}, 'a' = 'A'")],
        {},
        id="set_names_quoted",
    ),
    pytest.param(
        ["SET character_set_results = NULL", *reads("SELECT @@character_set_results, 'abc'")],
        {},
        id="character_set_results_null",
    ),
    pytest.param(
        ["SET NAMES 'utf8mb4'", "SET NAMES DEFAULT", *reads(CHARSETS)],
        {"charset": "latin1"},
        id="set_names_default",
    ),
    pytest.param(
        [
            "SET time_zone = '+05:30'",
            *reads("SELECT @@time_zone, FROM_UNIXTIME(0), UNIX_TIMESTAMP('2000-01-01')"),
        ],
        {},
        id="time_zone",
    ),
    pytest.param(
        [
            "SET time_zone = '-03:00'",
            "SET time_zone = 'Nowhere/Atlantis'",
            *reads("SELECT @@time_zone, NOW() = UTC_TIMESTAMP()"),
        ],
        {},
        id="time_zone_refused_keeps_the_previous_one",
    ),
    pytest.param(
        [
            "SET sql_mode = 'ANSI_QUOTES,PIPES_AS_CONCAT'",
            *reads("SELECT 'a' || 'b', @@sql_mode"),
            *reads('SELECT "no_such_column"'),  # an identifier now: error 1054 everywhere
        ],
        {},
        id="sql_mode",
    ),
    pytest.param(
        [
            "SET SESSION sql_mode = 'NO_ZERO_DATE'",
            *reads("SELECT @@sql_mode"),
            "SET @@session.sql_mode = 'ANSI'",
            *reads("SELECT @@sql_mode, @@session.sql_mode"),
            "SET LOCAL sql_mode = 'TRADITIONAL'",
            *reads("SELECT @@sql_mode"),
            "SET @@sql_mode = DEFAULT",
            *reads("SELECT @@sql_mode = @@global.sql_mode"),
        ],
        {},
        id="sql_mode_spellings",
    ),
    pytest.param(
        [
            "SET @i = 42, @s = 'it''s \\\\ \"q\"', @f = 1.5e3, @h = 0x414243, @b = b'101', @n = NULL",
            *reads("SELECT @i, @s, @f, @h, @b, @n, @unset"),
        ],
        {},
        id="user_variables",
    ),
    pytest.param(
        ["SET @e = '😀 ☃ é'", *reads("SELECT @e, HEX(@e), CHAR_LENGTH(@e)")],
        {},
        id="user_variable_emoji",
    ),
    pytest.param(
        [
            "SET @n = -5, @m = +3, @d = .5, @e = -1.5e-3, @x = X'41', @y = 0b1, @u = N'abc'",
            *reads("SELECT @n, @m, @d, @e, @x, @y, @u, CHARSET(@u)"),
        ],
        {},
        id="user_variable_literal_forms",
    ),
    pytest.param(
        [
            "SET @s = _latin1 'abc', @u = _utf8mb4'x' COLLATE utf8mb4_bin, @d = DATE '2024-01-02'",
            *reads("SELECT CHARSET(@s), COLLATION(@u), @d"),
        ],
        {"pinned": True},
        id="user_variable_typed_literals",
    ),
    pytest.param(
        [
            "SET SESSION sql_safe_updates = ON, SESSION sql_big_selects = FALSE",
            *reads("SELECT @@sql_safe_updates, @@sql_big_selects"),
        ],
        {},
        id="session_variables_on_off",
    ),
    pytest.param(
        ["SET @x = CONCAT('a', 'b'), @t = NOW() IS NOT NULL", *reads("SELECT @x, @t")],
        {"pinned": True},
        id="user_variables_from_expressions",
    ),
    pytest.param(
        [
            "SET SESSION group_concat_max_len = 4, @@session.div_precision_increment = 2",
            *reads("SELECT GROUP_CONCAT(seq), 1/3 FROM seq_1_to_9"),
        ],
        {},
        id="session_variables",
    ),
    pytest.param(
        [
            "SET @@session.tx_isolation = 'READ-COMMITTED'",
            *reads("SELECT @@tx_isolation, @@tx_read_only"),
            "SET SESSION tx_read_only = 1",
            *reads("SELECT @@tx_isolation, @@tx_read_only"),
        ],
        {},
        id="transaction_characteristics_as_variables",
    ),
    pytest.param(
        [
            "SET @v = 7, SESSION sql_mode = 'ANSI_QUOTES', time_zone = '+02:00'",
            "BEGIN",
            "SELECT @v, @@sql_mode, @@time_zone",
            "SET @w = 8",
            "COMMIT",
            *reads("SELECT @v, @w, @@sql_mode, @@time_zone"),
            "START TRANSACTION",
            "SET @w = 9, time_zone = '+03:00'",
            "ROLLBACK",  # variables are not transactional
            *reads("SELECT @v, @w, @@sql_mode, @@time_zone"),
        ],
        {},
        id="state_outlives_transactions",
    ),
]


@pytest.mark.parametrize(("statements", "options"), SCENARIOS)
def test_session_state_matches_a_direct_connection(
    proxy: BatonProcess, sandbox: ReplicationSandbox, statements: list[str], options: dict[str, Any]
) -> None:
    compare(proxy, sandbox, statements, **options)


@pytest.mark.parametrize(
    "statement",
    [
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        "SET SESSION TRANSACTION READ ONLY",
        "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE",
    ],
)
def test_session_transaction_characteristics(
    proxy: BatonProcess, sandbox: ReplicationSandbox, statement: str
) -> None:
    compare(proxy, sandbox, [statement, *reads("SELECT @@tx_isolation, @@tx_read_only")])


# A replayed SET NAMES must apply to the string literals replayed after it, and a client's
# bytes that are not UTF-8 must reach the other backend unchanged.


def test_string_user_variable_set_after_set_names_latin1(
    proxy: BatonProcess, sandbox: ReplicationSandbox
) -> None:
    compare(
        proxy, sandbox, ["SET NAMES latin1", "SET @s = 'é'", *reads("SELECT HEX(@s), CHARSET(@s)")]
    )


def test_latin1_user_variable_of_a_latin1_client(
    proxy: BatonProcess, sandbox: ReplicationSandbox
) -> None:
    compare(
        proxy,
        sandbox,
        ["SET @s = 'é'", *reads("SELECT HEX(@s), CHARSET(@s), @s")],
        charset="latin1",
    )


# MariaDB's COM_RESET_CONNECTION keeps the default schema but resets character_set_database
# and collation_database to the server's (utf8mb4 here; the `test` schema is latin1): a
# recycled connection must still report (and use) the schema's.


def test_database_charset_follows_the_default_schema(
    proxy: BatonProcess, sandbox: ReplicationSandbox
) -> None:
    compare(
        proxy, sandbox, reads("SELECT DATABASE(), @@character_set_database, @@collation_database")
    )


def test_set_character_set(proxy: BatonProcess, sandbox: ReplicationSandbox) -> None:
    compare(proxy, sandbox, ["SET CHARACTER SET utf8mb4", *reads(CHARSETS)])


def test_select_db_matches_a_direct_connection(
    proxy: BatonProcess, sandbox: ReplicationSandbox
) -> None:
    """COM_INIT_DB (PyMySQL's select_db), including one that fails."""
    probe = "SELECT DATABASE(), COUNT(*) > 0 FROM help_topic"
    results = []
    for conn in (direct_connect(sandbox), pymysql_connect(proxy)):
        with conn:
            seen: list[Outcome] = []
            for schema in ("mysql", "test", "no_such_schema", "mysql"):
                try:
                    conn.select_db(schema)
                    seen.append(("ok", schema))
                except pymysql.err.MySQLError as exc:
                    seen.append(("error", exc.args[0]))
                seen += outcomes(conn, reads(probe) + reads("SELECT DATABASE()"))
            results.append(seen)
    assert results[1] == results[0]
    assert ("error", 1049) in results[0]  # ER_BAD_DB_ERROR, passed through unchanged


# --- 4-byte characters -------------------------------------------------------------------------

EMOJI = ["😀", "🎉 party", "𝄞 clef", "mixed é ☃ 😀 ok", "🏳️‍🌈 zwj sequence", "a" * 10 + "😀" * 50]


@pytest.mark.parametrize("login_charset", ["utf8mb4", "latin1"])
def test_four_byte_characters_round_trip(
    proxy: BatonProcess, sandbox: ReplicationSandbox, login_charset: str
) -> None:
    """Written through Baton, stored as exact UTF-8 on the master, read back unchanged from the
    replicas. The latin1 login switches with SET NAMES utf8mb4 (PyMySQL set_character_set), so
    the replicas must get the SET NAMES replayed."""
    with scratch_table(sandbox, "id INT PRIMARY KEY, s VARCHAR(200)") as table:
        with pymysql_connect(proxy, charset=login_charset) as conn, conn.cursor() as cur:
            if login_charset != "utf8mb4":
                conn.set_character_set("utf8mb4")
            for i, text in enumerate(EMOJI):
                cur.execute(f"INSERT INTO {table} VALUES (%s, %s)", (i, text))
            assert sandbox.master.sql(f"SELECT id, HEX(s) FROM {table} ORDER BY id") == [
                (i, text.encode("utf-8").hex().upper()) for i, text in enumerate(EMOJI)
            ]
            sandbox.wait_caught_up()
            servers = set()
            for _ in range(4):
                cur.execute(f"SELECT @@server_id, id, s, CHAR_LENGTH(s) FROM {table} ORDER BY id")
                rows = cur.fetchall()
                servers.add(rows[0][0])
                assert [r[1:] for r in rows] == [(i, t, len(t)) for i, t in enumerate(EMOJI)]
                cur.execute(f"SELECT @@server_id, id FROM {table} WHERE s = %s", (EMOJI[3],))
                ((sid, found),) = cur.fetchall()
                servers.add(sid)
                assert found == 3
            assert servers == {r.server_id for r in sandbox.replicas}


# --- nothing outlives a client -----------------------------------------------------------------


def test_new_client_never_sees_a_departed_clients_state(
    proxy: BatonProcess, sandbox: ReplicationSandbox
) -> None:
    check = (
        "SELECT @who, @@session.sql_mode = @@global.sql_mode, @@session.time_zone = @@global.time_zone,"
        " @@session.group_concat_max_len = @@global.group_concat_max_len, @@character_set_client"
    )
    for round_ in range(3):
        who = f"client-{uuid.uuid4().hex[:6]}"
        with pymysql_connect(proxy) as a, a.cursor() as cur:
            cur.execute(
                f"SET @who = '{who}', SESSION sql_mode = 'ANSI_QUOTES', time_zone = '+07:00',"
                " group_concat_max_len = 7"
            )
            cur.execute("SET NAMES latin1")
            cur.execute("CREATE TEMPORARY TABLE e2e_departed_tmp (i INT)")
            cur.execute("DROP TEMPORARY TABLE e2e_departed_tmp")  # unpinned again
            count_servers(cur, 4)  # state replayed on both replicas
            cur.execute("CREATE TEMPORARY TABLE e2e_departed_tmp2 (i INT)")  # left behind
        prime_pools(proxy, sandbox)  # the next client gets the connections a used
        with pymysql_connect(proxy) as b, b.cursor() as cur:
            for _ in range(4):
                cur.execute(check)
                assert cur.fetchone() == (None, 1, 1, 1, "utf8mb4"), f"round {round_}"
            with pytest.raises(pymysql.err.ProgrammingError) as err:
                cur.execute("/* baton:master */ SELECT * FROM e2e_departed_tmp2")
            assert err.value.args[0] == 1146
