"""Connection pooling through real clients: many sessions share few backend connections, and
no session ever sees another's state.

Baton caps its connections per backend (``[proxy] max_backend_connections``); sessions with no
transaction or pin give connections back between statements when others wait, and Baton resets
a connection (COM_RESET_CONNECTION) before another client gets it, replaying that client's own
state instead. Checked from both sides: SHOW POOLS on the admin port, and the servers' own
process lists and Threads_connected.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pymysql
import pytest

from proxy.sandbox import ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess, admin_rows, wait_for
from tests.support.clients import connector_connect, pymysql_connect, scratch_table
from tests.support.routing import count_servers, wait_readable

StartBaton = Callable[..., BatonProcess]

SQL_MODES = [
    "ANSI_QUOTES",
    "NO_ZERO_DATE",
    "PIPES_AS_CONCAT,NO_ENGINE_SUBSTITUTION",
    "IGNORE_SPACE",
]
TIME_ZONES = ["+01:00", "-05:00", "+09:30", "+00:00", "-11:00", "+13:00"]


def server_counts(topology: ReplicationSandbox) -> dict[str, tuple[int, int]]:
    """(app connections, Threads_connected) of each server, read in one root connection.
    Every connection logged in as the app account is Baton's."""
    counts = {}
    for inst in topology.instances:
        conn = inst.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'app'"
                )
                app = int(cur.fetchone()[0])
                cur.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
                threads = int(cur.fetchone()[1])
        finally:
            conn.close()
        counts[inst.name] = (app, threads)
    return counts


def app_connections(topology: ReplicationSandbox) -> dict[str, int]:
    return {name: app for name, (app, _) in server_counts(topology).items()}


def pooled(proxy: BatonProcess) -> dict[str, int]:
    """SHOW POOLS: connections per backend, in use and idle, all users together."""
    totals: Counter[str] = Counter()
    for row in admin_rows(proxy, "SHOW POOLS"):
        totals[row["backend"]] += row["in_use"] + row["idle"]
    return dict(totals)


@dataclass
class Peaks:
    """Samples the pools (admin port) and the servers (directly) in a thread; keeps maxima."""

    proxy: BatonProcess
    topology: ReplicationSandbox
    pools: Counter[str] = field(default_factory=Counter)
    app: Counter[str] = field(default_factory=Counter)
    threads: Counter[str] = field(default_factory=Counter)
    waiting: int = 0
    samples: int = 0
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                rows = admin_rows(self.proxy, "SHOW POOLS")
                totals: Counter[str] = Counter()
                for row in rows:
                    totals[row["backend"]] += row["in_use"] + row["idle"]
                    self.waiting = max(self.waiting, row["waiting"])
                for name, n in totals.items():
                    self.pools[name] = max(self.pools[name], n)
                for name, (app, threads) in server_counts(self.topology).items():
                    self.app[name] = max(self.app[name], app)
                    self.threads[name] = max(self.threads[name], threads)
                self.samples += 1
                self._stop.wait(0.1)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise AssertionError(f"sampling failed: {self.error!r}")


# --- many clients, few connections -----------------------------------------------------------

CLIENTS = 2000
WORKERS = 200
POOL_SIZE = 20


@dataclass
class Client:
    index: int
    token: str
    sql_mode: str
    time_zone: str
    conn: pymysql.Connection | None = None

    @property
    def expected(self) -> tuple[Any, ...]:
        return (self.token, self.sql_mode, self.time_zone)


def _open(client: Client, proxy: BatonProcess) -> None:
    client.conn = pymysql_connect(proxy, read_timeout=60)


def _run_session(clients: list[Client]) -> list[str]:
    """One worker's share of sessions, interleaved: each sets its own state, then reads it
    back a few times while the worker's other sessions run in between. Mismatches returned."""
    problems: list[str] = []
    for c in clients:
        assert c.conn is not None
        with c.conn.cursor() as cur:
            cur.execute(
                f"SET @token = '{c.token}', SESSION sql_mode = '{c.sql_mode}', time_zone = '{c.time_zone}'"
            )
    for _ in range(3):
        for c in clients:
            assert c.conn is not None
            with c.conn.cursor() as cur:
                cur.execute("SELECT @token, @@session.sql_mode, @@session.time_zone, @@server_id")
                row = cur.fetchone()
                if row[:3] != c.expected:
                    problems.append(
                        f"client {c.index} on server {row[3]}: {row[:3]} != {c.expected}"
                    )
    return problems


@pytest.mark.slow
def test_two_thousand_clients_share_twenty_connections_per_backend(
    baton: StartBaton, sandbox: ReplicationSandbox
) -> None:
    proxy = baton(
        sandbox,
        proxy={"max_backend_connections": POOL_SIZE},
        routing={"max_replication_lag_ms": 60000},
        # no periodic fresh connect from the monitor: only its long-lived connections remain
        # beside the pools, so that Threads_connected is comparable with a baseline
        monitor={"connect_interval_ms": 600_000},
    )
    wait_readable(proxy, [r.name for r in sandbox.replicas])
    # Everything else connected to the servers (replication, Baton's monitor, the probe
    # itself) before any client: the most seen over a second.
    baseline: Counter[str] = Counter()
    for _ in range(5):
        for name, (_, threads) in server_counts(sandbox).items():
            baseline[name] = max(baseline[name], threads)
        time.sleep(0.2)
    clients = [
        Client(i, uuid.uuid4().hex, SQL_MODES[i % len(SQL_MODES)], TIME_ZONES[i % len(TIME_ZONES)])
        for i in range(CLIENTS)
    ]
    started = time.monotonic()
    problems: list[str] = []
    with Peaks(proxy, sandbox) as peaks, ThreadPoolExecutor(WORKERS) as pool:
        try:
            list(pool.map(lambda c: _open(c, proxy), clients))
            opened = time.monotonic() - started
            rows = admin_rows(proxy, "SHOW CLIENTS")
            assert sum(1 for r in rows if r["user"] == "app") >= CLIENTS  # all connected at once
            shares = [clients[i::WORKERS] for i in range(WORKERS)]
            for found in pool.map(_run_session, shares):
                problems += found
        finally:
            for c in clients:
                if c.conn is not None:
                    c.conn.close()
    elapsed = time.monotonic() - started
    print(
        f"{CLIENTS} clients: connected in {opened:.1f}s, done in {elapsed:.1f}s; "
        f"peaks: pools {dict(peaks.pools)}, app connections {dict(peaks.app)}, "
        f"Threads_connected {dict(peaks.threads)} (baseline {dict(baseline)}), "
        f"most waiting {peaks.waiting}, {peaks.samples} samples"
    )
    assert problems == []
    assert peaks.samples >= 3
    for inst in sandbox.instances:
        assert peaks.pools[inst.name] <= POOL_SIZE, peaks.pools
        assert peaks.app[inst.name] <= POOL_SIZE, peaks.app
        assert peaks.threads[inst.name] <= baseline[inst.name] + POOL_SIZE, (
            peaks.threads,
            baseline,
        )
    assert all(peaks.app[inst.name] > 0 for inst in sandbox.instances)  # every server was used
    # and the connections come back: nothing is in use once the clients are gone
    wait_for(
        lambda: all(r["in_use"] == 0 for r in admin_rows(proxy, "SHOW POOLS")), 10, "pools idle"
    )


# --- small pools -----------------------------------------------------------------------------


def test_idle_sessions_give_their_connections_to_waiting_ones(
    baton: StartBaton, sandbox: ReplicationSandbox
) -> None:
    """Pool of 2 per backend, 5 sessions that take turns reading and writing: they all get
    served, because a free-to-move session lets go of its connections between statements."""
    proxy = baton(
        sandbox, proxy={"max_backend_connections": 2}, routing={"max_replication_lag_ms": 60000}
    )
    wait_readable(proxy, [r.name for r in sandbox.replicas])
    with scratch_table(sandbox, "id INT PRIMARY KEY, who INT") as table:
        conns = [pymysql_connect(proxy) for _ in range(5)]
        try:
            for round_ in range(2):
                for i, conn in enumerate(conns):
                    with conn.cursor() as cur:
                        cur.execute(f"SET @me = {i}")
                        cur.execute(f"INSERT INTO {table} VALUES ({round_ * 100 + i}, @me)")
                        servers = count_servers(cur, 2, "SELECT @@server_id, @me")
                        assert set(servers) == {r.server_id for r in sandbox.replicas}
                        cur.execute("SELECT @me")
                        assert cur.fetchone() == (i,)
                assert all(n <= 2 for n in pooled(proxy).values())
        finally:
            for conn in conns:
                conn.close()
        assert sandbox.master.sql(f"SELECT COUNT(*), SUM(who) FROM {table}") == [
            (10, 2 * sum(range(5)))
        ]
    assert all(n <= 2 for n in app_connections(sandbox).values())


def test_waiting_session_gets_an_idle_sessions_connection_at_once(
    baton: StartBaton, sandbox: ReplicationSandbox
) -> None:
    proxy = baton(
        sandbox, proxy={"max_backend_connections": 1}, routing={"max_replication_lag_ms": 60000}
    )
    wait_readable(proxy, [r.name for r in sandbox.replicas])
    with pymysql_connect(proxy) as a, pymysql_connect(proxy) as b:
        with a.cursor() as ca, b.cursor() as cb:
            latencies = []
            for _ in range(3):
                count_servers(ca, 2)  # a now holds the only connection to each replica
                ca.execute("/* baton:master */ SELECT 1")  # and to the master; then a idles
                started = time.monotonic()
                count_servers(cb, 1)
                latencies.append(time.monotonic() - started)
            print(f"b's read waited {[round(t, 3) for t in latencies]} s")
            assert max(latencies) < 0.5, latencies


def test_transaction_keeps_its_connection_and_others_wait_for_it(
    baton: StartBaton, sandbox: ReplicationSandbox
) -> None:
    """Pool of 1: a session inside a transaction keeps the master connection; another
    session's write waits for it (it is not given the connection mid-transaction) and runs
    as soon as the transaction commits."""
    proxy = baton(
        sandbox, proxy={"max_backend_connections": 1}, routing={"max_replication_lag_ms": 60000}
    )
    wait_readable(proxy, [r.name for r in sandbox.replicas])
    with scratch_table(sandbox, "id INT PRIMARY KEY") as table:
        with pymysql_connect(proxy) as a, pymysql_connect(proxy) as b:
            done = threading.Event()
            failure: list[BaseException] = []

            def write_b() -> None:
                try:
                    with b.cursor() as cur:
                        cur.execute(f"INSERT INTO {table} VALUES (2)")
                        cur.execute("SELECT @@in_transaction")
                        assert cur.fetchone() == (0,)  # not inside a's transaction
                except BaseException as exc:
                    failure.append(exc)
                finally:
                    done.set()

            with a.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute(f"INSERT INTO {table} VALUES (1)")
                writer = threading.Thread(target=write_b)
                writer.start()
                assert not done.wait(1.5), "b ran while a's transaction held the only connection"
                cur.execute(f"SELECT COUNT(*) FROM {table}")
                assert cur.fetchone() == (1,)  # a sees only its own row: b did not get in
                cur.execute("COMMIT")
            assert done.wait(10), "b still waiting after a committed"
            writer.join()
            assert failure == []
        assert sandbox.master.sql(f"SELECT id FROM {table} ORDER BY id") == [(1,), (2,)]


def test_departed_clients_leave_their_connections_idle_and_reset(
    baton: StartBaton, sandbox: ReplicationSandbox
) -> None:
    proxy = baton(
        sandbox, proxy={"max_backend_connections": 3}, routing={"max_replication_lag_ms": 60000}
    )
    wait_readable(proxy, [r.name for r in sandbox.replicas])
    for i in range(10):
        with pymysql_connect(proxy) as conn, conn.cursor() as cur:
            cur.execute(f"SET @left_behind = {i}, SESSION time_zone = '+0{i % 9}:00'")
            count_servers(cur, 2)
    wait_for(
        lambda: all(r["in_use"] == 0 for r in admin_rows(proxy, "SHOW POOLS")), 10, "pools idle"
    )
    assert all(0 < n <= 3 for n in pooled(proxy).values())
    with pymysql_connect(proxy) as conn, conn.cursor() as cur:
        for _ in range(4):
            cur.execute("SELECT @left_behind, @@session.time_zone = @@global.time_zone")
            assert cur.fetchone() == (None, 1)


def test_what_a_departed_or_reset_session_held_is_released_at_once(
    baton: StartBaton, sandbox: ReplicationSandbox
) -> None:
    """A named lock lives on the backend connection: when its session ends, or starts over
    with COM_RESET_CONNECTION, the connection goes back to the pool reset at once, so the
    lock is free for others then, not whenever the pool next hands that connection out."""
    proxy = baton(sandbox, proxy={"max_backend_connections": 3})
    others = pymysql_connect(proxy)

    def try_lock(name: str) -> int:
        with others.cursor() as cur:
            cur.execute("SELECT GET_LOCK(%s, 0)", (name,))
            (got,) = cur.fetchone()
            cur.execute("SELECT RELEASE_LOCK(%s)", (name,))
        return int(got or 0)

    leaver = pymysql_connect(proxy)
    with leaver.cursor() as cur:
        cur.execute("SELECT GET_LOCK('held_by_leaver', 0)")
        assert cur.fetchone() == (1,)
    assert try_lock("held_by_leaver") == 0
    leaver.close()
    wait_for(lambda: try_lock("held_by_leaver") == 1, 5, "the leaver's lock released")

    starter = connector_connect(proxy)
    cur = starter.cursor()
    cur.execute("SELECT GET_LOCK('held_before_reset', 0)")
    assert cur.fetchall() == [(1,)]
    cur.close()
    assert try_lock("held_before_reset") == 0
    starter.cmd_reset_connection()
    wait_for(lambda: try_lock("held_before_reset") == 1, 5, "the lock released by the reset")
    starter.close()
    others.close()
