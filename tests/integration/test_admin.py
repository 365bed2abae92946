"""The admin port: real clients (the `mariadb` command-line client, PyMySQL) against a real
Baton in front of a real MariaDB topology; plus the pure parts (command matching, the
read-only SQLite SELECT) without a socket.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from typing import Any

import mysql.connector
import pymysql
import pytest

from proxy.admin import commands
from proxy.admin.tables import QueryRefused, Table, _lag_ms, run_select
from proxy.sandbox import ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess, admin_rows, wait_for
from tests.support.clients import app_connect

# --- helpers -----------------------------------------------------------------------------------


def admin_connect(proc: BatonProcess, **options: Any) -> pymysql.Connection:
    settings: dict[str, Any] = {
        "host": "127.0.0.1", "port": proc.admin_port, "user": "admin", "password": "admin",
        "connect_timeout": 5, "read_timeout": 60, "autocommit": None,
    }
    return pymysql.connect(**{**settings, **options})


def mariadb_cli(port: int, command: str, password: str = "admin") -> subprocess.CompletedProcess[str]:
    """The `mariadb` client in batch mode: tab-separated output with a header line."""
    return subprocess.run(
        ["mariadb", "-h127.0.0.1", f"-P{port}", "-uadmin", f"-p{password}", "--batch", "-e", command],
        capture_output=True, text=True, timeout=30,
    )


def parse_batch(stdout: str) -> list[dict[str, str]]:
    lines = stdout.rstrip("\n").split("\n")
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


# --- pure: command matching and the SELECT sandbox -----------------------------------------------


def test_normalize_strips_semicolons_and_collapses_space_outside_select() -> None:
    assert commands.normalize("  show\n  backends ;; ") == "show backends"
    assert commands.normalize("SET  BACKEND   'db2'\tOFFLINE_SOFT;") == "SET BACKEND 'db2' OFFLINE_SOFT"
    assert commands.normalize("SELECT 'a  b' ;") == "SELECT 'a  b'"


def _pattern_for(text: str) -> str | None:
    text = commands.normalize(text)
    for entry in commands.COMMANDS:
        if entry.pattern.fullmatch(text):
            return entry.syntax
    return None


@pytest.mark.parametrize(
    ("text", "syntax"),
    [
        ("show backends", "SHOW <what>"),
        ("set backend 'db2' offline_soft", "SET BACKEND 'name' ONLINE | OFFLINE_SOFT | OFFLINE_HARD"),
        ('SET BACKEND "db2" ONLINE;', "SET BACKEND 'name' ONLINE | OFFLINE_SOFT | OFFLINE_HARD"),
        ("SET BACKEND db2 OFFLINE_HARD", "SET BACKEND 'name' ONLINE | OFFLINE_SOFT | OFFLINE_HARD"),
        ("promote 'db2'", "PROMOTE 'name' [REPLACING 'old'] [SOURCE 'hook']"),
        ("PROMOTE 'db2' REPLACING 'db1' SOURCE 'hook'", "PROMOTE 'name' [REPLACING 'old'] [SOURCE 'hook']"),
        ("switchover to `db3`", "SWITCHOVER TO 'name'"),
        ("kill client 42", "KILL CLIENT id"),
        ("shutdown graceful", "SHUTDOWN [GRACEFUL]"),
        ("SET NAMES utf8mb4", "SET ..."),
        ("set autocommit=1", "SET ..."),
        ("select name from backends", "SELECT ... FROM backends | pools | clients | stats | failovers"),
    ],
)
def test_commands_match_their_dispatch_entry(text: str, syntax: str) -> None:
    assert _pattern_for(text) == syntax


@pytest.mark.parametrize(
    "text",
    ["SET BACKEND 'db2' SHUNNED", "SET BACKEND 'db2'", "KILL CLIENT x", "PROMOTE", "DROP TABLE backends",
     "SHUTDOWN NOW", "PROMOTE 'db2' SOURCE 'redis'"],
)
def test_malformed_commands_match_nothing(text: str) -> None:
    assert _pattern_for(text) is None


_SOURCES = {
    "backends": lambda: Table(("name", "state", "lag_ms"), [("db1", "ONLINE", None), ("db2", "OFFLINE_SOFT", 12), ("db3", "ONLINE", 3)]),
    "stats": lambda: Table(("variable", "value"), [("reloads.ok", 2), ("reloads.failed", 1)]),
}


def test_select_runs_on_the_snapshot() -> None:
    result = run_select(_SOURCES, "SELECT name FROM backends WHERE state='ONLINE' ORDER BY name DESC")
    assert result == Table(("name",), [("db3",), ("db1",)])
    total = run_select(_SOURCES, "SELECT SUM(value) AS n FROM stats WHERE variable LIKE 'reloads.%'")
    assert total.rows == [(3,)]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1; DELETE FROM backends",
        "DELETE FROM backends",
        "UPDATE backends SET state = 'x'",
        "INSERT INTO backends VALUES ('x', 'y', 1)",
        "CREATE TABLE t (a)",
        "ATTACH DATABASE '/tmp/x.db' AS x",
        "PRAGMA query_only = OFF",
        "SELECT * FROM no_such_table",
        "SELEC name FROM backends",
        "SELECT length(randomblob(100000000))",
    ],
)
def test_select_refuses_anything_but_one_read(sql: str) -> None:
    with pytest.raises(QueryRefused):
        run_select(_SOURCES, sql)


def test_select_stops_a_runaway_query() -> None:
    forever = (
        "SELECT * FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
        "SELECT max(x) FROM c)"
    )
    started = time.monotonic()
    with pytest.raises(QueryRefused, match="longer than"):
        run_select(_SOURCES, forever, time_limit_s=0.2)
    assert time.monotonic() - started < 2


def test_select_caps_rows() -> None:
    big = {"stats": lambda: Table(("variable", "value"), [(str(i), i) for i in range(50)])}
    with pytest.raises(QueryRefused, match="more than 10 rows"):
        run_select(big, "SELECT * FROM stats", max_rows=10)


# --- real clients against a real Baton ------------------------------------------------------------


@pytest.fixture
def proc(sandbox: ReplicationSandbox, baton: Any) -> BatonProcess:
    return baton(sandbox)


def test_mariadb_cli_show_backends_lists_roles_and_states(sandbox: ReplicationSandbox, proc: BatonProcess) -> None:
    out = mariadb_cli(proc.admin_port, "SHOW BACKENDS")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in parse_batch(out.stdout)}
    assert set(rows) == {inst.name for inst in sandbox.instances}
    for inst in sandbox.instances:
        row = rows[inst.name]
        assert row["address"] == inst.address
        assert row["role"] == ("master" if inst is sandbox.master else "replica")
        assert row["state"] == "ONLINE"
        assert row["fenced"] == "0"
    assert rows[sandbox.master.name]["epoch"] == "1"


def test_mariadb_cli_select_over_backends(sandbox: ReplicationSandbox, proc: BatonProcess) -> None:
    query = "SELECT name FROM backends WHERE state='ONLINE' ORDER BY name"
    out = mariadb_cli(proc.admin_port, query)
    assert out.returncode == 0, out.stderr
    assert [r["name"] for r in parse_batch(out.stdout)] == sorted(i.name for i in sandbox.instances)
    # The SELECT reads a snapshot taken when it runs: a state change shows at once.
    last = sorted(i.name for i in sandbox.instances)[-1]
    out = mariadb_cli(proc.admin_port, f"SET BACKEND '{last}' OFFLINE_SOFT; {query}")
    assert out.returncode == 0, out.stderr
    assert last not in out.stdout.split()


def test_mariadb_cli_answers_what_clients_send_on_connect(proc: BatonProcess) -> None:
    out = mariadb_cli(proc.admin_port, "select @@version_comment limit 1; SELECT DATABASE(); SET NAMES utf8mb4; SET autocommit=1")
    assert out.returncode == 0, out.stderr
    assert "Baton admin console" in out.stdout
    # COM_PING and COM_STATISTICS through the client's own commands.
    ping = subprocess.run(["mariadb-admin", "-h127.0.0.1", f"-P{proc.admin_port}", "-uadmin", "-padmin", "ping"],
                          capture_output=True, text=True, timeout=30)
    assert ping.returncode == 0 and "alive" in ping.stdout, ping.stdout + ping.stderr


def test_mariadb_cli_works_interactively(proc: BatonProcess) -> None:
    """On a terminal the client asks @@version_comment, DATABASE(), charsets (status) and
    COM_STATISTICS, and `use` sends COM_INIT_DB: none of that may end in an error."""
    script = "SHOW BACKENDS;\nstatus\nuse anything\nSELECT COUNT(*) AS n FROM backends;\nquit\n"
    out = subprocess.run(
        ["script", "-qec", f"mariadb -h127.0.0.1 -P{proc.admin_port} -uadmin -padmin", "/dev/null"],
        input=script, capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Baton admin console" in out.stdout
    assert "ERROR" not in out.stdout, out.stdout
    assert "Server characterset:\tutf8mb4" in out.stdout
    assert "Database changed" in out.stdout
    assert re.search(r"\|\s+3\s+\|", out.stdout), out.stdout  # COUNT(*) over the 3 backends


def test_wrong_admin_password_is_refused_with_1045(proc: BatonProcess) -> None:
    out = mariadb_cli(proc.admin_port, "SHOW BACKENDS", password="wrong")
    assert out.returncode != 0
    assert "ERROR 1045" in out.stderr
    with pytest.raises(pymysql.err.OperationalError) as err:
        admin_connect(proc, password="nope")
    assert err.value.args[0] == 1045
    with pytest.raises(pymysql.err.OperationalError) as err:
        admin_connect(proc, user="app", password="app")  # a proxy user is not an admin
    assert err.value.args[0] == 1045


def test_unknown_command_is_1064_listing_what_is_accepted(proc: BatonProcess) -> None:
    conn = admin_connect(proc)
    try:
        with conn.cursor() as cur:
            with pytest.raises(pymysql.err.ProgrammingError) as err:
                cur.execute("SHOW BACKENDZ")
            assert err.value.args[0] == 1064
            with pytest.raises(pymysql.err.ProgrammingError) as err:
                cur.execute("FLUSH EVERYTHING")
            code, message = err.value.args
            assert code == 1064
            for word in ("SHOW BACKENDS", "SET BACKEND", "PROMOTE", "SWITCHOVER", "KILL CLIENT", "RELOAD", "SELECT"):
                assert word in message
            with pytest.raises(pymysql.err.ProgrammingError) as err:
                cur.execute("SELECT name FROM backends; DELETE FROM backends")
            assert err.value.args[0] == 1064
            with pytest.raises(pymysql.err.MySQLError) as err:
                cur.execute("SET BACKEND 'nope' OFFLINE_SOFT")
            assert err.value.args[0] == commands.ADMIN_REFUSED.code and "unknown backend 'nope'" in err.value.args[1]
            # The session survives its errors.
            cur.execute("SHOW VERSION")
            assert cur.fetchone()[0]
    finally:
        conn.close()


def test_show_commands_lists_every_command(proc: BatonProcess) -> None:
    listed = {r["command"] for r in admin_rows(proc, "SHOW COMMANDS")}
    for what in ("BACKENDS", "POOLS", "CLIENTS", "STATS", "FAILOVERS", "CONFIG", "VERSION"):
        assert f"SHOW {what}" in listed
    for entry in commands.COMMANDS:
        if entry.help:
            assert entry.syntax in listed


def test_show_config_masks_passwords(proc: BatonProcess) -> None:
    rows = {r["key"]: r["value"] for r in admin_rows(proc, "SHOW CONFIG")}
    assert rows["admin.password"] == "***"
    assert rows["monitor.password"] == "***"
    assert rows["users[app].password"] == "***"
    assert rows["proxy.listen"] == f"127.0.0.1:{proc.proxy_port}"
    assert "admin" not in {v for k, v in rows.items() if k.endswith("password")}


def test_show_clients_and_pools_follow_sessions(sandbox: ReplicationSandbox, proc: BatonProcess) -> None:
    app = app_connect(proc)
    try:
        with app.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("SELECT 1 FROM DUAL FOR UPDATE")  # locking read: runs on the master
            clients = admin_rows(proc, "SHOW CLIENTS")
            assert len(clients) == 1
            client = clients[0]
            assert client["user"] == "app" and client["schema"] == "test"
            assert client["link"] == "tcp"
            assert client["state"] == "in-transaction"
            assert sandbox.master.name in client["backends"].split(",")
            pools = admin_rows(proc, f"SELECT * FROM pools WHERE backend = '{sandbox.master.name}' AND user = 'app'")
            assert pools and pools[0]["in_use"] == 1
            cur.execute("COMMIT")
        rows = admin_rows(proc, f"SELECT state FROM clients WHERE id = {client['id']}")
        assert rows == [{"state": "idle"}]
        admin_rows(proc, f"KILL CLIENT {client['id']}")
        with pytest.raises(pymysql.err.OperationalError):
            with app.cursor() as cur:
                cur.execute("SELECT 1")
        wait_for(lambda: not admin_rows(proc, "SHOW CLIENTS"), what="killed client to leave SHOW CLIENTS")
    finally:
        app.close()


def test_pause_holds_new_statements_until_resume(proc: BatonProcess) -> None:
    app = app_connect(proc)
    admin = admin_connect(proc)
    try:
        with app.cursor() as cur:
            cur.execute("SELECT 1")
        with admin.cursor() as a:
            a.execute("PAUSE")
        done: list[float] = []

        def run() -> None:
            with app.cursor() as cur:
                cur.execute("SELECT 2")
                done.append(time.monotonic())

        worker = threading.Thread(target=run)
        worker.start()
        time.sleep(0.5)
        assert not done, "a statement ran while Baton was paused"
        resumed = time.monotonic()
        with admin.cursor() as a:
            a.execute("RESUME")
        worker.join(10)
        assert done and done[0] >= resumed
    finally:
        app.close()
        admin.close()


def test_show_clients_says_waiting_for_a_held_statement_and_active_for_a_running_one(
    proc: BatonProcess,
) -> None:
    """A statement PAUSE holds has not reached any backend: the DBA must see it waiting,
    not active, beside one that runs on a backend."""
    held, running = app_connect(proc), app_connect(proc)
    admin = admin_connect(proc)
    outcome: dict[str, Any] = {}

    def run(conn: pymysql.Connection, sql: str) -> None:
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                outcome[sql] = cur.fetchone()
        except Exception as exc:  # recorded for the assertion below
            outcome[sql] = exc

    def state_of(thread_id: int) -> str | None:
        rows = admin_rows(proc, f"SELECT state FROM clients WHERE id = {thread_id}")
        return rows[0]["state"] if rows else None

    threads: list[threading.Thread] = []
    try:
        for conn in (held, running):
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
        assert state_of(held.thread_id()) == state_of(running.thread_id()) == "idle"
        threads.append(threading.Thread(target=run, args=(running, "SELECT SLEEP(5)")))
        threads[-1].start()
        wait_for(lambda: state_of(running.thread_id()) == "active", what="SLEEP(5) to run")
        with admin.cursor() as a:
            a.execute("PAUSE")
        threads.append(threading.Thread(target=run, args=(held, "SELECT 2")))
        threads[-1].start()
        wait_for(lambda: state_of(held.thread_id()) != "idle", what="SELECT 2 to be held")
        assert state_of(held.thread_id()) == "waiting"
        assert state_of(running.thread_id()) == "active"  # PAUSE lets running ones finish
        assert "SELECT 2" not in outcome
        with admin.cursor() as a:
            a.execute("RESUME")
        for t in threads:
            t.join(10)
        assert outcome == {"SELECT SLEEP(5)": (0,), "SELECT 2": (2,)}
        assert state_of(held.thread_id()) == state_of(running.thread_id()) == "idle"
    finally:
        with admin.cursor() as a:
            a.execute("RESUME")
        for t in threads:
            t.join(10)
        for c in (held, running, admin):
            c.close()


def test_offline_soft_drains_a_replica_without_killing_its_query(sandbox: ReplicationSandbox, proc: BatonProcess) -> None:
    db2 = sandbox.instance("db2")
    assert db2 in sandbox.replicas
    long_conn, short_conn = app_connect(proc), app_connect(proc)
    admin = admin_connect(proc)
    outcome: dict[str, Any] = {}

    def long_query() -> None:
        started = time.monotonic()
        try:
            with long_conn.cursor() as cur:
                cur.execute("/* baton:replica=db2 */ SELECT SLEEP(3), @@server_id")
                outcome["row"] = cur.fetchone()
        except Exception as exc:  # recorded for the assertion below
            outcome["error"] = exc
        outcome["elapsed"] = time.monotonic() - started

    def server_id_of_hinted_read() -> int:
        with short_conn.cursor() as cur:
            cur.execute("/* baton:replica=db2 */ SELECT @@server_id")
            return int(cur.fetchone()[0])

    try:
        assert server_id_of_hinted_read() == db2.server_id
        worker = threading.Thread(target=long_query)
        worker.start()
        wait_for(
            lambda: any(c["state"] == "active" and "db2" in c["backends"].split(",")
                        for c in admin_rows(proc, "SHOW CLIENTS")),
            what="the long query to run on db2",
        )
        with admin.cursor() as a:
            a.execute("SET BACKEND 'db2' OFFLINE_SOFT")
        states = {r["name"]: r["state"] for r in admin_rows(proc, "SHOW BACKENDS")}
        assert states["db2"] == "OFFLINE_SOFT"
        # New reads, even ones naming db2, go elsewhere while it drains.
        assert all(server_id_of_hinted_read() != db2.server_id for _ in range(10))
        worker.join(15)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["row"] == (0, db2.server_id)
        assert outcome["elapsed"] >= 2.9
        with admin.cursor() as a:
            a.execute("SET BACKEND 'db2' ONLINE")
        wait_for(lambda: server_id_of_hinted_read() == db2.server_id, what="db2 to take reads again")
    finally:
        with admin.cursor() as a:
            a.execute("SET BACKEND 'db2' ONLINE")
        for c in (long_conn, short_conn, admin):
            c.close()


def test_shutdown_command_stops_baton(sandbox: ReplicationSandbox, proc: BatonProcess) -> None:
    admin_rows(proc, "SHUTDOWN GRACEFUL")
    assert proc.process is not None
    assert proc.process.wait(timeout=20) == 0


def test_lag_ms_rounds_up_so_a_lagging_replica_never_shows_its_limit() -> None:
    """LAGGING means lag > limit; 0.5004 s shown as 500 ms next to a 500 ms limit would say
    otherwise (a flaky e2e assertion found this)."""
    assert _lag_ms(0.5004) == 501
    assert [_lag_ms(x) for x in (0.0, 0.5, 0.1 + 0.2, 3.0)] == [0, 500, 300, 3000]


def test_show_clients_says_which_clients_use_compression(proc: BatonProcess) -> None:
    compressed = mysql.connector.connect(
        host="127.0.0.1", port=proc.proxy_port, user="app", password="app", database="test",
        use_pure=True, compress=True,
    )
    try:
        links = {r["link"] for r in admin_rows(proc, "SHOW CLIENTS")}
        assert links == {"compressed"}
        assert admin_rows(proc, "SELECT COUNT(*) AS n FROM clients WHERE link = 'compressed'") == [{"n": 1}]
    finally:
        compressed.close()
