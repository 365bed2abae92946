"""A reload binds new listen addresses before it commits: when the new proxy.listen (or
admin/metrics listen) cannot be bound, RELOAD answers an error, SIGHUP logs it, SHOW CONFIG
keeps the old address, Baton keeps listening where it was, and nothing else of the new file
is applied (a user it adds cannot log in). A bindable change still moves the listener."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable, Iterator

import pymysql
import pytest
from test_admin import admin_stat, app_connect

from proxy.sandbox import ReplicationSandbox, free_ports
from proxy.sandbox.baton_process import BatonProcess, _accepts, admin_rows, wait_for

USERS = [{"name": "app", "password": "app"}, {"name": "newbie", "password": "newbie"}]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


@pytest.fixture(autouse=True)
def newbie(sandbox: ReplicationSandbox) -> None:
    """The account the new file adds exists on the servers: only Baton can refuse it."""
    sandbox.master.sql("CREATE USER IF NOT EXISTS 'newbie'@'%' IDENTIFIED BY 'newbie'")
    sandbox.master.sql("GRANT USAGE ON *.* TO 'newbie'@'%'")


def _config(proc: BatonProcess, sandbox: ReplicationSandbox, proxy: int, admin: int,
            metrics: int) -> str:
    return sandbox.config_toml(proxy, admin, metrics, users=USERS)


def _show_config(proc: BatonProcess) -> dict[str, object]:
    return {r["key"]: r["value"] for r in admin_rows(proc, "SHOW CONFIG")}


def _assert_nothing_applied(proc: BatonProcess, ports: tuple[int, int, int]) -> None:
    config = _show_config(proc)
    assert config["reload.ok"] == "0"
    assert config["proxy.listen"] == f"127.0.0.1:{ports[0]}"
    assert config["admin.listen"] == f"127.0.0.1:{ports[1]}"
    assert "users[newbie].password" not in config
    assert all(_accepts(p) for p in ports)
    conn = app_connect(proc)  # the old proxy port still serves
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    conn.close()
    with pytest.raises(pymysql.err.OperationalError) as caught:
        app_connect(proc, user="newbie", password="newbie", database=None)
    assert caught.value.args[0] == 1045


@pytest.mark.parametrize("section", ["proxy", "admin", "metrics"])
def test_admin_reload_to_an_unbindable_address_is_an_error(
    section: str, sandbox: ReplicationSandbox, baton: Callable[..., BatonProcess], taken_port: int
) -> None:
    proc = baton(sandbox)
    ports = (proc.proxy_port, proc.admin_port, proc.metrics_port)
    new = dict(zip(("proxy", "admin", "metrics"), ports, strict=True))
    new[section] = taken_port
    proc.config_path.write_text(_config(proc, sandbox, new["proxy"], new["admin"], new["metrics"]))
    with pytest.raises(pymysql.err.OperationalError) as caught:
        admin_rows(proc, "RELOAD")
    code, message = caught.value.args
    assert code == 9150
    assert f"{section}.listen: cannot listen on '127.0.0.1:{taken_port}'" in message
    assert "still listening on" in message
    _assert_nothing_applied(proc, ports)


def test_sighup_to_an_unbindable_address_logs_the_error_and_keeps_everything(
    sandbox: ReplicationSandbox, baton: Callable[..., BatonProcess], taken_port: int
) -> None:
    proc = baton(sandbox)
    ports = (proc.proxy_port, proc.admin_port, proc.metrics_port)
    fresh_admin = free_ports(1)[0]  # bindable, but must not move: the proxy one fails
    failed = int(admin_stat(proc, "reloads.failed") or 0)
    proc.config_path.write_text(_config(proc, sandbox, taken_port, fresh_admin, ports[2]))
    proc.signal(signal.SIGHUP)
    wait_for(lambda: int(admin_stat(proc, "reloads.failed") or 0) > failed, what="the refusal")
    assert f"proxy.listen: cannot listen on '127.0.0.1:{taken_port}'" in proc.log_text()
    assert "reload_rejected" in proc.log_text()
    assert not _accepts(fresh_admin)  # bound for the attempt, closed again
    _assert_nothing_applied(proc, ports)


def test_reload_to_a_free_address_moves_the_proxy_listener(
    sandbox: ReplicationSandbox, baton: Callable[..., BatonProcess]
) -> None:
    proc = baton(sandbox)
    old = proc.proxy_port
    kept = app_connect(proc)
    new = free_ports(1)[0]
    proc.config_path.write_text(_config(proc, sandbox, new, proc.admin_port, proc.metrics_port))
    [row] = admin_rows(proc, "RELOAD")
    assert row["result"] == "ok" and "proxy.listen" in row["changes"]
    assert _accepts(new) and not _accepts(old)
    proc.proxy_port = new
    conn = app_connect(proc, user="newbie", password="newbie", database=None)
    conn.close()
    with kept.cursor() as cur:  # a session from before the move carries on
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)
    kept.close()
