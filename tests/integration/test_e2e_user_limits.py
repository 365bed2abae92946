"""Per-user limits through Baton (issue 11, item 4), as ProxySQL's per-user max_connections:
``[[users]] max_connections`` caps a user's client sessions (MySQL's 1226, SQLSTATE 42000, naming
the limit) and ``max_backend_connections`` its share of each backend's pool (9113 naming it when
the share stays busy); other users are not affected, and SHOW POOLS shows each user's use."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import mysql.connector
import pymysql
import pytest

from proxy.sandbox import ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess, admin_rows, wait_for
from tests.support.clients import connector_connect, pymysql_connect

LIMITED, SHARED = "lim11", "share11"


@pytest.fixture(scope="module")
def accounts(sandbox: ReplicationSandbox) -> Iterator[None]:
    for user in (LIMITED, SHARED):
        sandbox.master.sql(f"CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY '{user}'")
        sandbox.master.sql(f"GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%'")
    sandbox.wait_caught_up(timeout=30)
    yield


@pytest.fixture
def proxy(sandbox: ReplicationSandbox, baton, accounts: None) -> BatonProcess:
    return baton(
        sandbox,
        proxy={"max_backend_connections": 4},
        users=[
            {"name": "app", "password": "app"},
            {"name": LIMITED, "password": LIMITED, "max_connections": 2},
            {"name": SHARED, "password": SHARED, "max_backend_connections": 1},
        ],
    )


def pool_row(proxy: BatonProcess, backend: str, user: str) -> dict | None:
    rows = admin_rows(proxy, "SHOW POOLS")
    return next((r for r in rows if r["backend"] == backend and r["user"] == user), None)


def test_a_user_at_max_connections_is_refused_with_1226_and_others_log_in(
    proxy: BatonProcess, sandbox: ReplicationSandbox
) -> None:
    first = pymysql_connect(proxy, user=LIMITED, password=LIMITED)
    second = pymysql_connect(proxy, user=LIMITED, password=LIMITED)
    with pytest.raises(mysql.connector.Error) as caught:
        connector_connect(proxy, user=LIMITED, password=LIMITED)
    err = caught.value
    assert (err.errno, err.sqlstate) == (1226, "42000")
    assert err.msg == (
        f"User '{LIMITED}' has exceeded the 'max_user_connections' resource (current value: 2)"
    )
    others = [pymysql_connect(proxy) for _ in range(3)]  # app has no limit of its own
    for conn in others:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    row = pool_row(proxy, sandbox.master.name, LIMITED)
    assert row is not None and (row["sessions"], row["max_sessions"]) == (2, 2)
    first.close()  # a session ending makes room
    wait_for(
        lambda: pool_row(proxy, sandbox.master.name, LIMITED)["sessions"] == 1,
        what=f"{LIMITED} down to one session",
    )
    third = pymysql_connect(proxy, user=LIMITED, password=LIMITED)
    with third.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone()[0].startswith(LIMITED)
    for conn in (second, third, *others):
        conn.close()


def test_a_user_at_its_backend_share_waits_then_gets_9113_and_others_do_not(
    proxy: BatonProcess, sandbox: ReplicationSandbox
) -> None:
    master = sandbox.master.name
    holder = pymysql_connect(proxy, user=SHARED, password=SHARED)
    waiter = pymysql_connect(proxy, user=SHARED, password=SHARED)
    with holder.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SELECT 1 FROM DUAL FOR UPDATE")  # the share's one connection, held
    outcome: list[object] = []

    def wait_for_the_share() -> None:
        try:
            with waiter.cursor() as cur:
                cur.execute("SELECT 1 FROM DUAL FOR UPDATE")
                outcome.append(cur.fetchone())
        except pymysql.MySQLError as exc:
            outcome.append(exc.args)

    t = threading.Thread(target=wait_for_the_share)
    t.start()
    # meanwhile app takes several of the pool's other connections at once
    apps = [pymysql_connect(proxy) for _ in range(3)]
    for conn in apps:
        conn.cursor().execute("BEGIN")
    for conn in apps:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM DUAL FOR UPDATE")
            assert cur.fetchone() == (1,)
    row = pool_row(proxy, master, SHARED)
    assert row is not None and (row["in_use"], row["share"], row["sessions"]) == (1, 1, 2)
    t.join(30)
    assert len(outcome) == 1
    code, message = outcome[0]
    assert code == 9113
    assert f"user '{SHARED}' has all 1 of its connections to backend {master} busy" in message
    assert "max_backend_connections=1" in message
    for conn in apps:
        conn.commit()
        conn.close()
    holder.commit()
    with waiter.cursor() as cur:  # the session carries on once its share is free
        cur.execute("SELECT 1 FROM DUAL FOR UPDATE")
        assert cur.fetchone() == (1,)
    holder.close()
    waiter.close()
