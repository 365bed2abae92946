"""Login with a default schema (issue 11, item 3): the server's own error, 1049 "Unknown database"
(SQLSTATE 42000), must reach the client at login whatever the pool holds.

Baton checks the schema on the master before it says OK. With no idle pooled connection it opens
a new one, logging in with that schema, and the server's refusal is passed on. With an idle
pooled connection it selects the schema with COM_INIT_DB instead, and that refusal is passed on
unchanged too (it used to become Baton's 9109 "session state could not be restored").
"""

from __future__ import annotations

import pymysql
import pytest

from proxy.sandbox import ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess, admin_rows, wait_for
from tests.support.clients import pymysql_connect


def login_error(proxy: BatonProcess, database: str) -> tuple[int, str]:
    with pytest.raises(pymysql.err.MySQLError) as caught:
        pymysql_connect(proxy, database=database).close()
    return caught.value.args[0], caught.value.args[1]


def idle_on_master(proxy: BatonProcess, master: str) -> int:
    return sum(
        r["idle"] for r in admin_rows(proxy, "SHOW POOLS") if r["backend"] == master and r["user"]
    )


def test_unknown_schema_at_login_with_no_idle_connection(sandbox: ReplicationSandbox, baton):
    proxy = baton(sandbox)
    assert idle_on_master(proxy, sandbox.master.name) == 0
    assert login_error(proxy, "no_such_db") == (1049, "Unknown database 'no_such_db'")


def test_unknown_schema_at_login_with_an_idle_pooled_connection(sandbox: ReplicationSandbox, baton):
    proxy = baton(sandbox)
    conn = pymysql_connect(proxy)  # database "test": its connection goes back to the pool
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    conn.close()
    wait_for(lambda: idle_on_master(proxy, sandbox.master.name), what="an idle pooled connection")
    assert login_error(proxy, "no_such_db") == (1049, "Unknown database 'no_such_db'")


def direct_login_error(sandbox: ReplicationSandbox, user: str, database: str) -> tuple[int, str]:
    with pytest.raises(pymysql.err.MySQLError) as caught:
        pymysql.connect(
            host="127.0.0.1",
            port=sandbox.master.port,
            user=user,
            password=user,
            database=database,
            connect_timeout=5,
        ).close()
    return caught.value.args[0], caught.value.args[1]


def test_forbidden_schema_at_login_gets_the_servers_1044_with_an_idle_connection(
    sandbox: ReplicationSandbox, baton
):
    """A schema the account may not use: the server's 1044 and its text, as a direct login gets
    it, also when the schema check runs COM_INIT_DB on an idle pooled connection."""
    user = "narrow11"
    sandbox.master.sql(f"CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY '{user}'")
    sandbox.master.sql(f"GRANT ALL PRIVILEGES ON test.* TO '{user}'@'%'")
    sandbox.master.sql("CREATE DATABASE IF NOT EXISTS forbidden11")
    sandbox.wait_caught_up(timeout=30)
    expected = direct_login_error(sandbox, user, "forbidden11")
    assert expected[0] == 1044
    proxy = baton(
        sandbox,
        users=[{"name": "app", "password": "app"}, {"name": user, "password": user}],
    )
    conn = pymysql_connect(proxy, user=user, password=user)  # database "test": allowed
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    conn.close()
    wait_for(lambda: idle_on_master(proxy, sandbox.master.name), what="an idle pooled connection")
    with pytest.raises(pymysql.err.MySQLError) as caught:
        pymysql_connect(proxy, user=user, password=user, database="forbidden11").close()
    assert (caught.value.args[0], caught.value.args[1]) == expected
