"""Config reload by SIGHUP and shutdown by SIGTERM, on a real Baton under a real client load.

A good file is applied all at once while clients keep working (no error, no dropped
connection); a bad one changes nothing, and Baton says which key is wrong and why, in its log
and in SHOW CONFIG. SIGTERM lets running statements finish and exits 0.
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import pymysql
import pytest
from test_admin import admin_stat, app_connect

from proxy.sandbox import ReplicationSandbox, free_ports
from proxy.sandbox.baton_process import BatonProcess, _accepts, admin_rows, wait_for


class Load:
    """Client threads, one connection each for the whole run, reading and writing in a loop.

    Any exception is an error: a statement that failed or a connection that dropped.
    """

    def __init__(self, proc: BatonProcess, table: str, threads: int = 4) -> None:
        self.proc = proc
        self.table = table
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.done = [0] * threads
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, index: int) -> None:
        try:
            conn = app_connect(self.proc)
        except Exception as exc:
            self.errors.append(f"thread {index} connect: {exc!r}")
            return
        try:
            with conn.cursor() as cur:
                while not self.stop.is_set():
                    cur.execute("SELECT @@server_id")
                    cur.fetchall()
                    cur.execute(f"INSERT INTO {self.table} (worker) VALUES (%s)", (index,))
                    self.done[index] += 1
        except Exception as exc:
            self.errors.append(f"thread {index} after {self.done[index]} rounds: {exc!r}")
        finally:
            conn.close()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        wait_for(lambda: all(self.done) or self.errors, what="the load to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def rounds(self) -> int:
        return sum(self.done)


def _backends(topology: ReplicationSandbox, names: list[str], weights: dict[str, int] | None = None) -> list[dict[str, Any]]:
    weights = weights or {}
    return [
        {
            "name": inst.name,
            "address": inst.address,
            "role": "master" if inst is topology.master else "replica",
            "weight": weights.get(inst.name, 1),
        }
        for inst in topology.instances
        if inst.name in names
    ]


def _config(proc: BatonProcess, topology: ReplicationSandbox, **sections: Any) -> str:
    return topology.config_toml(proc.proxy_port, proc.admin_port, proc.metrics_port, **sections)


def _wait_reloads(proc: BatonProcess, before: int) -> None:
    def count() -> int:
        return int(admin_stat(proc, "reloads.ok")) + int(admin_stat(proc, "reloads.failed"))

    wait_for(lambda: count() > before, what="Baton to report the reload")


def test_sighup_applies_a_new_backend_weight_and_user_under_load(
    make_sandbox: Callable[..., ReplicationSandbox], baton: Callable[..., BatonProcess]
) -> None:
    topology = make_sandbox(replicas=3)
    first = ["db1", "db2", "db3"]
    proc = baton(topology, backends=_backends(topology, first))
    table = f"test.reload_{uuid.uuid4().hex[:8]}"
    topology.master.sql(f"CREATE TABLE {table} (id INT AUTO_INCREMENT PRIMARY KEY, worker INT)")
    topology.master.sql("CREATE USER 'newbie'@'%' IDENTIFIED BY 'newpw'")
    topology.master.sql("GRANT SELECT, INSERT ON test.* TO 'newbie'@'%'")
    topology.wait_caught_up()
    assert {r["name"] for r in admin_rows(proc, "SHOW BACKENDS")} == set(first)
    with pytest.raises(pymysql.err.OperationalError) as refused:
        app_connect(proc, user="newbie", password="newpw")
    assert refused.value.args[0] == 1045

    with Load(proc, table) as load:
        rounds_before = load.rounds()
        proc.rewrite_config(_config(
            proc, topology,
            backends=_backends(topology, ["db1", "db2", "db3", "db4"], weights={"db3": 0}),
            users=[{"name": "app", "password": "app"}, {"name": "newbie", "password": "newpw"}],
        ))
        proc.signal(signal.SIGHUP)
        wait_for(lambda: "db4" in {r["name"] for r in admin_rows(proc, "SHOW BACKENDS")},
                 what="db4 in SHOW BACKENDS")
        newbie = app_connect(proc, user="newbie", password="newpw")
        try:
            with newbie.cursor() as cur:
                cur.execute("/* baton:replica=db4 */ SELECT @@server_id")
                assert cur.fetchone()[0] == topology.instance("db4").server_id
                # db3 has weight 0 now: plain reads go to db2 and db4 only.
                seen = set()
                for _ in range(20):
                    cur.execute("SELECT @@server_id")
                    seen.add(cur.fetchone()[0])
                assert topology.instance("db3").server_id not in seen
                assert topology.instance("db4").server_id in seen
        finally:
            newbie.close()
        wait_for(lambda: load.rounds() > rounds_before + 20, what="the load to go on after the reload")
    assert load.errors == []
    assert all(load.done)
    config = {r["key"]: r["value"] for r in admin_rows(proc, "SHOW CONFIG")}
    assert config["reload.ok"] == "1"
    assert "+db4" in config["reload.summary"] and "+newbie" in config["reload.summary"]
    assert config["backends[db3].weight"] == "0"
    assert "reload_applied" in proc.log_text()
    written = topology.master.sql(f"SELECT COUNT(*) FROM {table}")[0][0]
    assert written == load.rounds()


BROKEN = {
    "bad TOML": ("[proxy\nlisten = 1", ["invalid TOML", "line 1"]),
    "unknown key": ("routing", ["routing.max_lag_ms", "unknown key"]),
    "bad address": ("address", ["backends[1].address", "port must be a number"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_sighup_with_a_broken_config_keeps_the_running_one(
    case: str, sandbox: ReplicationSandbox, baton: Callable[..., BatonProcess]
) -> None:
    proc = baton(sandbox)
    good = proc.config_path.read_text()
    edit, expected = BROKEN[case]
    if edit == "routing":
        broken = _config(proc, sandbox, routing={"max_lag_ms": 5})
    elif edit == "address":
        backends = _backends(sandbox, [i.name for i in sandbox.instances])
        backends[1]["address"] = "127.0.0.1:99999"
        broken = _config(proc, sandbox, backends=backends)
    else:
        broken = edit
    conn = app_connect(proc)
    try:
        before = int(admin_stat(proc, "reloads.failed"))
        proc.config_path.write_text(broken)  # not rewrite_config: that parses the text
        proc.signal(signal.SIGHUP)
        _wait_reloads(proc, before)
        with conn.cursor() as cur:  # the session opened before the reload carries on
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        fresh = app_connect(proc)
        fresh.close()
        config = {r["key"]: r["value"] for r in admin_rows(proc, "SHOW CONFIG")}
        assert config["reload.ok"] == "0"
        errors = " | ".join(v for k, v in config.items() if k.startswith("reload.errors["))
        for text in expected:
            assert text in errors, errors
            assert text in proc.log_text()
        assert config["proxy.listen"] == f"127.0.0.1:{proc.proxy_port}"
        # Putting the good file back and reloading works again.
        proc.config_path.write_text(good)
        proc.signal(signal.SIGHUP)
        wait_for(lambda: {r["key"]: r["value"] for r in admin_rows(proc, "SHOW CONFIG")}["reload.ok"] == "1",
                 what="the good config to reload")
    finally:
        conn.close()


def test_sigterm_lets_running_statements_finish_and_exits_0(
    sandbox: ReplicationSandbox, baton: Callable[..., BatonProcess]
) -> None:
    proc = baton(sandbox, proxy={"shutdown_grace_s": 10})
    results: list[Any] = []
    errors: list[str] = []

    def sleeper(index: int) -> None:
        conn = app_connect(proc)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT SLEEP(1.5), %s", (index,))
                results.append(cur.fetchone())
        except Exception as exc:
            errors.append(repr(exc))
        finally:
            conn.close()

    threads = [threading.Thread(target=sleeper, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: sum(r["state"] == "active" for r in admin_rows(proc, "SHOW CLIENTS")) == 4,
             what="4 running statements")
    sent = time.monotonic()
    proc.signal(signal.SIGTERM)
    time.sleep(0.2)
    with pytest.raises(pymysql.err.OperationalError):
        app_connect(proc)  # no new clients once shutting down
    for t in threads:
        t.join(15)
    assert errors == []
    assert sorted(results) == [(0, i) for i in range(4)]
    assert proc.process is not None
    assert proc.process.wait(timeout=15) == 0
    assert time.monotonic() - sent < 10


def test_sighup_moves_the_admin_and_metrics_listeners(
    sandbox: ReplicationSandbox, baton: Callable[..., BatonProcess]
) -> None:
    proc = baton(sandbox)
    old_admin, old_metrics = proc.admin_port, proc.metrics_port
    new_admin, new_metrics = free_ports(2)
    text = sandbox.config_toml(proc.proxy_port, new_admin, new_metrics)
    proc.rewrite_config(text)  # the BatonProcess now points at the new ports
    proc.signal(signal.SIGHUP)

    wait_for(lambda: _accepts(new_admin) and _accepts(new_metrics), what="the new listeners")
    wait_for(lambda: not _accepts(old_admin) and not _accepts(old_metrics), what="the old listeners to close")
    config = {r["key"]: r["value"] for r in admin_rows(proc, "SHOW CONFIG")}
    assert config["admin.listen"] == f"127.0.0.1:{new_admin}"
    assert "admin.listen" in config["reload.summary"]
    with urllib.request.urlopen(f"http://127.0.0.1:{new_metrics}/metrics", timeout=5) as resp:
        assert b"baton_reloads_total" in resp.read()
