"""Login with a default schema (issue 11, item 3): the server's own error, 1049 "Unknown database"
(SQLSTATE 42000), must reach the client at login whatever the pool holds.

Baton checks the schema on the master before it says OK. With no idle pooled connection it opens
a new one, logging in with that schema, and the server's refusal is passed on. With an idle
pooled connection it selects the schema with COM_INIT_DB instead, and today that failure becomes
Baton's 9109 "session state could not be restored": the second test shows the defect and is
expected to fail until the fix lands.
"""

from __future__ import annotations

import pymysql
import pytest
from test_e2e_core import pymysql_connect

from proxy.sandbox import ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess, admin_rows, wait_for


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


@pytest.mark.xfail(
    strict=True,
    reason="issue 11 item 3: with an idle pooled connection the schema check runs COM_INIT_DB, "
    "and its 1049 becomes 9109 (StateRestoreError carries no server error)",
)
def test_unknown_schema_at_login_with_an_idle_pooled_connection(sandbox: ReplicationSandbox, baton):
    proxy = baton(sandbox)
    conn = pymysql_connect(proxy)  # database "test": its connection goes back to the pool
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    conn.close()
    wait_for(lambda: idle_on_master(proxy, sandbox.master.name), what="an idle pooled connection")
    assert login_error(proxy, "no_such_db") == (1049, "Unknown database 'no_such_db'")
