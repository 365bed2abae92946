"""A reload that removes a user, or changes how it logs in (password, hash, require_tls), ends
that user's open sessions after their current statement (issue 12): a revoked account keeps
no session through Baton. Other users' sessions, and changes of limits only, are left alone."""

from __future__ import annotations

import signal
import threading
from typing import Any

import pymysql
import pytest

from proxy.sandbox import ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess, admin_rows, wait_for
from tests.support.clients import admin_stat, pymysql_connect

APP = {"name": "app", "password": "app"}
MONITOR = {"name": "monitor", "password": "monitor"}


def _reload(proc: BatonProcess, sandbox: ReplicationSandbox, users: list[dict[str, Any]], how: str) -> None:
    before = int(admin_stat(proc, "reloads.ok"))
    proc.rewrite_config(
        sandbox.config_toml(proc.proxy_port, proc.admin_port, proc.metrics_port or 0, users=users)
    )
    if how == "sighup":
        proc.signal(signal.SIGHUP)
    else:
        admin_rows(proc, "RELOAD")
    wait_for(lambda: int(admin_stat(proc, "reloads.ok")) > before, what="the reload")


def _users_connected(proc: BatonProcess) -> list[str]:
    return sorted(r["user"] for r in admin_rows(proc, "SHOW CLIENTS"))


def _gone(conn: pymysql.Connection) -> bool:
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    except pymysql.err.OperationalError as exc:
        return exc.args[0] in (2006, 2013)
    return False


@pytest.mark.parametrize("how", ["sighup", "admin"])
def test_a_changed_password_ends_the_users_sessions_after_their_statement(
    sandbox: ReplicationSandbox, baton: Any, how: str
) -> None:
    proc = baton(sandbox, users=[APP, MONITOR])
    idle = pymysql_connect(proc)
    busy = pymysql_connect(proc)
    other = pymysql_connect(proc, user="monitor", password="monitor", database=None)
    result: dict[str, Any] = {}

    def sleep() -> None:
        with busy.cursor() as cur:
            cur.execute("SELECT SLEEP(2)")
            result["row"] = cur.fetchone()

    sleeper = threading.Thread(target=sleep)
    sleeper.start()
    wait_for(lambda: "active" in {r["state"] for r in admin_rows(proc, "SHOW CLIENTS")},
             what="the SLEEP to run")
    _reload(proc, sandbox, [{"name": "app", "password": "rotated"}, MONITOR], how)
    sleeper.join(10)
    assert result["row"] == (0,)  # the running statement finished and was answered
    assert _gone(idle) and _gone(busy)
    assert _users_connected(proc) == ["monitor"]
    with other.cursor() as cur:  # another user's session carries on
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone() == ("monitor@%",)
    for conn in (idle, busy, other):
        conn.close()


def test_a_removed_user_loses_its_sessions_and_a_new_limit_does_not(
    sandbox: ReplicationSandbox, baton: Any
) -> None:
    proc = baton(sandbox, users=[APP, MONITOR])
    app = pymysql_connect(proc)
    monitor = pymysql_connect(proc, user="monitor", password="monitor", database=None)
    _reload(proc, sandbox, [{**APP, "max_connections": 5}], "sighup")  # monitor removed
    wait_for(lambda: _users_connected(proc) == ["app"], what="monitor's session to end")
    assert _gone(monitor)
    with app.cursor() as cur:  # only a limit changed for app: its session stays
        cur.execute("SELECT 'still here'")
        assert cur.fetchone() == ("still here",)
    app.close()
    monitor.close()
