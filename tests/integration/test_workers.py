"""[proxy] workers = 2: two processes serve clients on one port (SO_REUSEPORT), one brain.

Real MariaDB (the shared sandbox) and Baton as a subprocess. The brain's admin port and
metrics must count every worker's sessions; KILL CLIENT, reload, PAUSE and SIGTERM must reach
every worker; a worker killed with -9 is restarted without touching the other's clients.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import pymysql
import pytest

from proxy.sandbox import ReplicationSandbox, free_ports
from proxy.sandbox.baton_process import BatonProcess, _accepts, admin_rows, wait_for
from tests.support.clients import scratch_table
from tests.support.prometheus import scrape, value

WORKERS = 2


def start(baton: Callable[..., BatonProcess], sandbox: ReplicationSandbox, **sections: Any) -> BatonProcess:
    proxy = {"workers": WORKERS, **sections.pop("proxy", {})}
    return baton(sandbox, proxy=proxy, **sections)


def connect(proc: BatonProcess, **options: Any) -> pymysql.Connection:
    settings: dict[str, Any] = {"user": "app", "password": "app", "connect_timeout": 5, "read_timeout": 30}
    return pymysql.connect(host="127.0.0.1", port=proc.proxy_port, autocommit=True, **{**settings, **options})


def worker_of(conn: pymysql.Connection) -> int:
    return (conn.thread_id() - 1) % WORKERS


def open_on_both(proc: BatonProcess, at_least: int = 3, **options: Any) -> list[pymysql.Connection]:
    """Connections until each worker holds ``at_least`` (the kernel picks by a hash of the
    client's port, so a few dozen connections reach both)."""
    conns: list[pymysql.Connection] = []
    for _ in range(200):
        conns.append(connect(proc, **options))
        held = [sum(1 for c in conns if worker_of(c) == w) for w in range(WORKERS)]
        if min(held) >= at_least:
            return conns
    raise AssertionError(f"200 connections, per worker: {held}")


def worker_pids(proc: BatonProcess) -> dict[int, int]:
    return {int(r["worker"]): int(r["pid"]) for r in admin_rows(proc, "SHOW WORKERS")}


def test_both_workers_serve_clients_and_admin_counts_every_session(
    baton: Callable[..., BatonProcess], sandbox: ReplicationSandbox
) -> None:
    proc = start(baton, sandbox)
    pids = worker_pids(proc)
    assert len(pids) == WORKERS and proc.pid not in pids.values(), pids
    conns = open_on_both(proc)
    try:
        for c in conns:
            with c.cursor() as cur:
                cur.execute("SELECT 1")
                assert cur.fetchone() == (1,)
        ids = {c.thread_id() for c in conns}
        assert len(ids) == len(conns), "connection ids are unique across workers"
        clients = admin_rows(proc, "SHOW CLIENTS")
        assert {int(r["id"]) for r in clients} == ids
        stats = {r["variable"]: r["value"] for r in admin_rows(proc, "SHOW STATS")}
        assert int(stats["clients_connected"]) == len(conns)
        assert int(stats["client_connections_total"]) >= len(conns)
        assert int(stats["queries_total"]) >= len(conns)  # every worker's SELECT 1
        workers = admin_rows(proc, "SHOW WORKERS")
        per_worker = {int(r["worker"]): int(r["clients"]) for r in workers}
        expected = {w: sum(1 for c in conns if worker_of(c) == w) for w in range(WORKERS)}
        assert per_worker == expected
        metrics = scrape(proc)
        assert value(metrics, "baton_clients_connected") == len(conns)
        for w, n in expected.items():
            assert value(metrics, "baton_worker_clients_connected", worker=str(w)) == n
        pools = admin_rows(proc, "SHOW POOLS")
        assert sum(int(r["in_use"]) + int(r["idle"]) for r in pools) >= 2  # both workers' pools
    finally:
        for c in conns:
            c.close()


def test_kill_client_reaches_the_session_on_either_worker(
    baton: Callable[..., BatonProcess], sandbox: ReplicationSandbox
) -> None:
    proc = start(baton, sandbox)
    conns = open_on_both(proc, at_least=2)
    try:
        victims = {w: next(c for c in conns if worker_of(c) == w) for w in range(WORKERS)}
        for victim in victims.values():
            admin_rows(proc, f"KILL CLIENT {victim.thread_id()}")
        for victim in victims.values():
            with pytest.raises(pymysql.err.OperationalError):
                wait_for(lambda v=victim: v.ping(reconnect=False) and False, timeout=5, what="a closed connection")
        survivors = [c for c in conns if c not in victims.values()]
        for c in survivors:
            c.ping(reconnect=False)
        gone = {v.thread_id() for v in victims.values()}
        ids = {int(r["id"]) for r in admin_rows(proc, "SHOW CLIENTS")}
        assert not ids & gone and ids == {c.thread_id() for c in survivors}
        with pytest.raises(pymysql.err.MySQLError, match="no client"):
            admin_rows(proc, "KILL CLIENT 999999")
    finally:
        for c in conns:
            c.close()


def test_a_clients_kill_reaches_a_session_on_the_other_worker(
    baton: Callable[..., BatonProcess], sandbox: ReplicationSandbox
) -> None:
    proc = start(baton, sandbox)
    conns = open_on_both(proc, at_least=2)
    try:
        killer = next(c for c in conns if worker_of(c) == 0)
        sleeper, victim = [c for c in conns if worker_of(c) == 1][:2]
        import threading

        slept: list[object] = []

        def sleep() -> None:
            try:
                with sleeper.cursor() as cur:
                    cur.execute("SELECT SLEEP(20)")
                    slept.append(cur.fetchone())
            except pymysql.err.OperationalError as exc:
                slept.append(exc.args[0])  # 1317: MariaDB's "query execution was interrupted"

        t = threading.Thread(target=sleep)
        t.start()
        wait_for(lambda: any(r["state"] == "active" and int(r["id"]) == sleeper.thread_id()
                             for r in admin_rows(proc, "SHOW CLIENTS")), what="the SLEEP running")
        started = time.monotonic()
        with killer.cursor() as cur:
            cur.execute(f"KILL QUERY {sleeper.thread_id()}")
            t.join(timeout=10)
            assert slept in ([(1,)], [1317]) and time.monotonic() - started < 5, slept  # interrupted
            sleeper.ping(reconnect=False)  # KILL QUERY leaves the session open
            cur.execute(f"KILL {victim.thread_id()}")
            with pytest.raises(pymysql.err.OperationalError):
                wait_for(lambda: victim.ping(reconnect=False) and False, timeout=5, what="a closed connection")
            with pytest.raises(pymysql.err.OperationalError) as unknown:
                cur.execute("KILL 999999")
            assert unknown.value.args[0] == 1094
    finally:
        for c in conns:
            c.close()


def test_pause_and_resume_hold_statements_on_every_worker(
    baton: Callable[..., BatonProcess], sandbox: ReplicationSandbox
) -> None:
    proc = start(baton, sandbox)
    conns = open_on_both(proc, at_least=1)
    try:
        one = {w: next(c for c in conns if worker_of(c) == w) for w in range(WORKERS)}
        admin_rows(proc, "PAUSE")
        for c in one.values():
            c._read_timeout = 0.5  # noqa: SLF001 - a short wait proves the hold
            with pytest.raises(pymysql.err.OperationalError):
                with c.cursor() as cur:
                    cur.execute("SELECT 1")
        admin_rows(proc, "RESUME")
        fresh = [connect(proc) for _ in range(8)]
        for c in fresh:
            with c.cursor() as cur:
                cur.execute("SELECT 2")
                assert cur.fetchone() == (2,)
            c.close()
    finally:
        for c in conns:
            c.close()


def test_sighup_reload_applies_to_every_worker(
    baton: Callable[..., BatonProcess], sandbox: ReplicationSandbox
) -> None:
    proc = start(baton, sandbox)
    as_monitor = {"user": "monitor", "password": "monitor"}  # an account MariaDB has
    with pytest.raises(pymysql.err.OperationalError) as refused:
        connect(proc, **as_monitor)
    assert refused.value.args[0] == 1045
    assert proc.admin_port is not None and proc.metrics_port is not None
    users = [{"name": "app", "password": "app"}, {"name": "monitor", "password": "monitor"}]
    proc.rewrite_config(sandbox.config_toml(proc.proxy_port, proc.admin_port, proc.metrics_port,
                                            proxy={"workers": WORKERS}, users=users))
    proc.signal(signal.SIGHUP)
    wait_for(lambda: {r["key"]: r["value"] for r in admin_rows(proc, "SHOW CONFIG")}.get("reload.ok") == "1",
             what="the reload")
    # Logins are checked by whichever worker the kernel picks: each must know the new user.
    conns = open_on_both(proc, at_least=2, **as_monitor)
    try:
        for c in conns:
            with c.cursor() as cur:
                cur.execute("SELECT CURRENT_USER()")
                assert cur.fetchone()[0].startswith("monitor@")
    finally:
        for c in conns:
            c.close()


def test_sigterm_stops_every_worker_gracefully(
    baton: Callable[..., BatonProcess], sandbox: ReplicationSandbox
) -> None:
    proc = start(baton, sandbox, proxy={"shutdown_grace_s": 5})
    pids = worker_pids(proc)
    conns = open_on_both(proc, at_least=1)
    slow = next(c for c in conns if worker_of(c) == 1)
    import threading

    result: list[object] = []

    def sleeper() -> None:
        try:
            with slow.cursor() as cur:
                cur.execute("SELECT SLEEP(1)")
                result.append(cur.fetchone())
        except Exception as exc:  # noqa: BLE001
            result.append(exc)

    t = threading.Thread(target=sleeper)
    t.start()
    time.sleep(0.3)
    started = time.monotonic()
    proc.signal(signal.SIGTERM)
    t.join(timeout=10)
    assert result == [(0,)], f"the running statement finished: {result}"
    assert proc.process is not None
    assert proc.process.wait(timeout=15) == 0
    assert time.monotonic() - started < 10
    for pid in pids.values():
        wait_for(lambda p=pid: not _alive(p), timeout=5, what=f"worker {pid} gone")
    for c in conns:
        c.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of a finished worker has no status file's "State: R/S"
        with open(f"/proc/{pid}/status") as f:
            return "zombie" not in f.read()
    except FileNotFoundError:
        return False


def test_a_killed_worker_is_restarted_and_the_other_workers_clients_carry_on(
    baton: Callable[..., BatonProcess], sandbox: ReplicationSandbox
) -> None:
    proc = start(baton, sandbox)
    pids = worker_pids(proc)
    conns = open_on_both(proc, at_least=2)
    try:
        os.kill(pids[0], signal.SIGKILL)
        on_0 = [c for c in conns if worker_of(c) == 0]
        on_1 = [c for c in conns if worker_of(c) == 1]
        for c in on_0:
            with pytest.raises(pymysql.err.OperationalError):
                with c.cursor() as cur:
                    cur.execute("SELECT 1")
        for c in on_1:
            with c.cursor() as cur:
                cur.execute("SELECT 1")
                assert cur.fetchone() == (1,)
        restarted = wait_for(
            lambda: (r := {int(x["worker"]): x for x in admin_rows(proc, "SHOW WORKERS")})[0]["state"] == "serving"
            and int(r[0]["pid"]) != pids[0] and r,
            timeout=15, what="worker 0 restarted",
        )
        assert int(restarted[0]["restarts"]) == 1 and int(restarted[1]["pid"]) == pids[1]
        log = proc.log_text()
        assert f"worker_died index=0 pid={pids[0]} exit=-9" in log
        assert "logger=baton.worker@worker0 worker_serving index=0" in log  # lines name their worker
        more = open_on_both(proc, at_least=1)
        for c in more:
            c.ping(reconnect=False)
            c.close()
        ids = {int(r["id"]) for r in admin_rows(proc, "SHOW CLIENTS")}
        assert {c.thread_id() for c in on_1} <= ids
    finally:
        for c in conns:
            c.close()


def test_reload_moving_the_proxy_address_moves_every_worker_or_none(
    baton: Callable[..., BatonProcess], sandbox: ReplicationSandbox
) -> None:
    proc = start(baton, sandbox)
    assert proc.admin_port is not None and proc.metrics_port is not None
    old = proc.proxy_port
    kept = open_on_both(proc, at_least=1)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        taken_port = taken.getsockname()[1]
        proc.rewrite_config(sandbox.config_toml(taken_port, proc.admin_port, proc.metrics_port,
                                                proxy={"workers": WORKERS}))
        proc.proxy_port = old  # rewrite_config reads the port from the file: not applied yet
        with pytest.raises(pymysql.err.OperationalError) as refused:
            admin_rows(proc, "RELOAD")
        assert refused.value.args[0] == 9150
        assert f"proxy.listen: cannot listen on '127.0.0.1:{taken_port}'" in refused.value.args[1]
    conns = open_on_both(proc, at_least=1)  # both workers still serve the old address
    for c in conns:
        c.close()
    new = free_ports(1)[0]
    proc.rewrite_config(sandbox.config_toml(new, proc.admin_port, proc.metrics_port, proxy={"workers": WORKERS}))
    [row] = admin_rows(proc, "RELOAD")
    assert row["result"] == "ok" and "proxy.listen" in row["changes"]
    wait_for(lambda: not _accepts(old), timeout=5, what="the old address closed by every worker")
    moved = open_on_both(proc, at_least=2)  # both workers serve the new address
    for c in moved + kept:  # sessions from before the move carry on
        c.ping(reconnect=False)
        c.close()


def test_a_taken_proxy_port_stops_the_start_with_a_clear_error(
    sandbox: ReplicationSandbox, tmp_path: Any
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        admin, metrics = free_ports(2)
        proc = BatonProcess(sandbox.config_toml(port, admin, metrics, proxy={"workers": WORKERS}),
                            workdir=tmp_path / "baton")
        with pytest.raises(RuntimeError, match="Baton exited with 1") as caught:
            proc.start(timeout=30)
    assert f"cannot listen on 127.0.0.1:{port}" in str(caught.value)
    assert not _accepts(admin), "the brain stopped too"


def test_the_client_cap_is_divided_so_the_configured_total_holds(
    baton: Callable[..., BatonProcess], sandbox: ReplicationSandbox
) -> None:
    proc = start(baton, sandbox, proxy={"max_client_connections": 5})  # shares: 3 and 2
    accepted: list[pymysql.Connection] = []
    refused = []
    try:
        for _ in range(40):  # enough for the kernel to have tried both workers many times
            try:
                accepted.append(connect(proc))
            except pymysql.err.OperationalError as exc:
                refused.append(exc.args[0])
        per_worker = sorted(sum(1 for c in accepted if worker_of(c) == w) for w in range(WORKERS))
        assert per_worker == [2, 3], per_worker
        assert set(refused) == {1040} and len(refused) == 40 - 5
    finally:
        for c in accepted:
            c.close()


def test_read_your_writes_holds_on_every_worker(
    baton: Callable[..., BatonProcess], sandbox: ReplicationSandbox
) -> None:
    """Causal reads in a worker use the GTID positions the brain's monitor pushes, or wait on
    the replica: either way a session reads its own writes."""
    proc = start(baton, sandbox, routing={"consistency": "session"})
    with scratch_table(sandbox, "id INT PRIMARY KEY") as table:
        conns = open_on_both(proc, at_least=1)
        try:
            for n in range(30):
                c = conns[n % len(conns)]
                with c.cursor() as cur:
                    cur.execute(f"INSERT INTO {table} VALUES ({n})")
                    cur.execute(f"SELECT COUNT(*), @@server_id FROM {table} WHERE id = {n}")
                    count, server = cur.fetchone()
                    assert count == 1, f"write {n} not seen on server {server}"
        finally:
            for c in conns:
                c.close()
    stats = {r["variable"]: r["value"] for r in admin_rows(proc, "SHOW STATS")}
    reads_on_replicas = sum(int(v) for k, v in stats.items()
                            if k.startswith("queries.") and not k.startswith("queries.db1."))
    assert reads_on_replicas > 0, "the reads went to replicas, not all to the master"
