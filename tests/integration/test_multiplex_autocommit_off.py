"""Sessions with autocommit=0, the DB-API default (issue 11, item 1), give their backend connection
back between transactions as autocommit sessions do: the server's IN_TRANS flag decides. A
transaction stays on the connection where its first statement ran until COMMIT/ROLLBACK, and
autocommit=0 is replayed on the next connection before the session's first statement there, so
that statement opens a transaction again (a ROLLBACK undoes it). Sessions never see each other's
variables. Backend connections are counted on the server, for a user of these tests alone.
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context

import pymysql
import pytest

from proxy.sandbox import ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess
from proxy.sandbox.sampling import ConnectionSampler
from tests.support.clients import pymysql_connect

USER = "mux11"
TABLE = "test.mux11"


@pytest.fixture(scope="module")
def mux_user(sandbox: ReplicationSandbox) -> Iterator[str]:
    master = sandbox.master
    master.sql(f"CREATE USER IF NOT EXISTS '{USER}'@'%' IDENTIFIED BY '{USER}'")
    master.sql(f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'%'")
    master.sql("CREATE DATABASE IF NOT EXISTS test")
    master.sql(f"CREATE TABLE IF NOT EXISTS {TABLE} (id INT PRIMARY KEY, v INT)")
    master.sql(f"REPLACE INTO {TABLE} VALUES (1, 10), (2, 20), (3, 30)")
    sandbox.wait_caught_up(timeout=30)
    yield USER


def start(baton, sandbox: ReplicationSandbox, pool_size: int, **sections: object) -> BatonProcess:
    return baton(
        sandbox,
        proxy={"max_backend_connections": pool_size},
        users=[{"name": "app", "password": "app"}, {"name": USER, "password": USER}],
        **sections,
    )


def connect(proxy: BatonProcess) -> pymysql.Connection:
    # autocommit=False: PyMySQL sends SET AUTOCOMMIT = 0 at login, as every DB-API driver does
    return pymysql_connect(proxy, user=USER, password=USER, autocommit=False, read_timeout=30)


def test_autocommit_off_sessions_share_a_few_backend_connections(
    sandbox: ReplicationSandbox, baton, mux_user: str
) -> None:
    """8 sessions with autocommit=0 over a pool of 2: each runs transactions that read twice
    (the same connection both times: the transaction stays put) and commits; none waits for a
    session that merely stays logged in, none sees another's @who or autocommit=1."""
    proxy = start(baton, sandbox, pool_size=2)
    together = threading.Barrier(8, timeout=30)  # all 8 logged in at once, and until the end

    def client(who: int) -> list[tuple[int, int, int, int]]:
        seen = []
        with connect(proxy) as conn, conn.cursor() as cur:
            cur.execute("SET @who = %s", (who,))
            together.wait()
            for _ in range(5):
                cur.execute(f"SELECT @who, @@autocommit, CONNECTION_ID() FROM {TABLE} WHERE id = 1")
                who_seen, autocommit, first = cur.fetchone()
                cur.execute("SELECT @@in_transaction, CONNECTION_ID()")
                in_trx, second = cur.fetchone()
                conn.commit()
                seen.append((who_seen, autocommit, in_trx, int(first == second)))
            together.wait()
        return seen

    with ConnectionSampler(sandbox, USER, 0.02) as counted, ThreadPoolExecutor(8) as ex:
        results = list(ex.map(client, range(1, 9)))
    for who, seen in enumerate(results, start=1):
        assert seen == [(who, 0, 1, 1)] * 5
    assert counted.errors == 0
    assert counted.peak.get(sandbox.master.name, 0) <= 2
    assert all(counted.peak.get(r.name, 0) == 0 for r in sandbox.replicas)


def test_autocommit_off_is_replayed_where_the_session_moves(
    sandbox: ReplicationSandbox, baton, mux_user: str
) -> None:
    """A pool of 1: B takes the only connection while A is between transactions, then A takes
    it back. A's INSERT there still opens a transaction (its ROLLBACK leaves no row), and B,
    an autocommit session, sees none of A's settings."""
    proxy = start(baton, sandbox, pool_size=1)
    sandbox.master.sql(f"DELETE FROM {TABLE} WHERE id >= 100")
    with connect(proxy) as a, pymysql_connect(proxy, user=USER, password=USER) as b:
        with a.cursor() as cur:
            cur.execute("SET @who = 'a'")
            cur.execute(f"SELECT v FROM {TABLE} WHERE id = 1")
            a.commit()
        with b.cursor() as cur:  # waits for A's connection, which A gives back
            cur.execute("SELECT @who, @@autocommit")
            assert cur.fetchone() == (None, 1)
        with a.cursor() as cur:  # and back to A, with autocommit=0 replayed first
            cur.execute(f"INSERT INTO {TABLE} VALUES (100, 1)")
            cur.execute("SELECT @who, @@autocommit, @@in_transaction")
            assert cur.fetchone() == ("a", 0, 1)
            a.rollback()
            cur.execute(f"SELECT COUNT(*) FROM {TABLE} WHERE id = 100")
            assert cur.fetchone() == (0,)
            a.commit()
        with b.cursor() as cur:
            cur.execute("SELECT @who, @@autocommit")
            assert cur.fetchone() == (None, 1)
    assert sandbox.master.sql(f"SELECT COUNT(*) FROM {TABLE} WHERE id = 100") == [(0,)]


def test_an_open_autocommit_off_transaction_keeps_its_connection_until_commit(
    sandbox: ReplicationSandbox, baton, mux_user: str
) -> None:
    """A pool of 1: while A's transaction is open B waits; A's COMMIT lets B in, and B then
    sees A's committed row (the INSERT ran on the master in A's transaction, not elsewhere)."""
    proxy = start(baton, sandbox, pool_size=1)
    sandbox.master.sql(f"DELETE FROM {TABLE} WHERE id >= 100")
    with connect(proxy) as a, connect(proxy) as b:
        with a.cursor() as cur:
            cur.execute(f"INSERT INTO {TABLE} VALUES (101, 1)")
            cur.execute("SELECT CONNECTION_ID()")
            a_conn = cur.fetchone()[0]
        done = threading.Event()
        seen: list[tuple[int, ...]] = []

        def b_reads() -> None:
            with b.cursor() as cur:
                cur.execute(f"SELECT COUNT(*) FROM {TABLE} WHERE id = 101")
                seen.append(cur.fetchone())
                b.commit()
            done.set()

        t = threading.Thread(target=b_reads)
        t.start()
        assert not done.wait(0.5)  # B waits: A's transaction holds the only connection
        with a.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            assert cur.fetchone()[0] == a_conn
            a.commit()
        t.join(15)
        assert seen == [(1,)]
    sandbox.master.sql(f"DELETE FROM {TABLE} WHERE id >= 100")


# --- the acceptance check: 1,000 DB-API clients over 20 connections -----------------------------

ACCEPTANCE_CLIENTS = 1000
ACCEPTANCE_POOL = 20
RAMP_S = 10.0  # logins spread over this long
RUN_S = 30.0  # from the first login to the end (the ramp included)
CLIENT_PROCESSES = 4


@dataclass
class AcceptanceClient:
    """One DB-API client's run: what it saw (merged after the threads end)."""

    transactions: int = 0
    errors: list[str] = field(default_factory=list)
    leaks: list[tuple[object, ...]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


def acceptance_client(port: int, who: int, start_at: float, end_at: float) -> AcceptanceClient:
    seen = AcceptanceClient()
    time.sleep(max(0.0, start_at - time.monotonic()))
    try:
        # autocommit off, as PyMySQL opens. ssl_disabled: this Baton offers no TLS, so
        # PyMySQL 1.2's PREFERRED mode ends in plaintext anyway, but only after building a TLS
        # context from the system CA bundle at each connect (~30 ms of this process's CPU,
        # 30 s for a thousand logins on a 2-core machine): the test's cost, not Baton's.
        with pymysql.connect(
            host="127.0.0.1", port=port, user=USER, password=USER, database="test",
            autocommit=False, connect_timeout=5, read_timeout=30, write_timeout=30,
            ssl_disabled=True,
        ) as conn, conn.cursor() as cur:
            cur.execute("SET @who = %s, SESSION time_zone = %s", (who, f"+0{who % 10}:00"))
            expected = (who, 0, f"+0{who % 10}:00")
            next_at = time.monotonic()
            while next_at < end_at:
                started = time.monotonic()
                cur.execute(
                    f"SELECT @who, @@autocommit, @@session.time_zone FROM {TABLE} WHERE id = 1"
                )
                row = cur.fetchone()
                conn.commit()
                seen.latencies.append(time.monotonic() - started)
                seen.transactions += 1
                if row != expected:
                    seen.leaks.append(row)
                next_at += 1.0  # one transaction a second
                time.sleep(max(0.0, next_at - time.monotonic()))
    except pymysql.MySQLError as exc:
        seen.errors.append(f"after {seen.transactions} transactions: {exc.args!r}")
    return seen


def acceptance_clients(port: int, whos: range, began: float) -> list[AcceptanceClient]:
    """One client process's share of the clients, a thread each. The clients are spread
    over several processes because a thousand threads under one GIL queue for it between
    a SELECT's answer and the COMMIT, holding the transaction's connection meanwhile: that
    measures the test's interpreter, not Baton."""
    old_stack = threading.stack_size(512 * 1024)
    try:
        with ThreadPoolExecutor(len(whos)) as ex:
            futures = [
                ex.submit(
                    acceptance_client, port, who, began + RAMP_S * who / ACCEPTANCE_CLIENTS,
                    began + RUN_S,
                )
                for who in whos
            ]
            return [f.result() for f in futures]
    finally:
        threading.stack_size(old_stack)


@pytest.mark.slow
def test_a_thousand_autocommit_off_clients_over_twenty_connections(
    sandbox: ReplicationSandbox, baton, mux_user: str
) -> None:
    """The issue's acceptance check: 1,000 PyMySQL clients with the driver's defaults, each
    running SELECT + COMMIT every second over max_backend_connections = 20: no error, never
    more than 20 connections on any server (counted by the servers), no session seeing another
    session's variables (each reads back its own @who, autocommit=0 and time_zone)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 8192) if hard != resource.RLIM_INFINITY else 8192
    if soft < wanted:  # 1,000 client sockets here, and as many in Baton (which inherits it)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    proxy = start(baton, sandbox, pool_size=ACCEPTANCE_POOL)
    began = time.monotonic() + 1.0  # the client processes start meanwhile
    # forked before the sampler's thread starts; each process takes every Nth client
    with ProcessPoolExecutor(CLIENT_PROCESSES, mp_context=get_context("fork")) as ex:
        shares = [
            ex.submit(
                acceptance_clients, proxy.proxy_port,
                range(first, ACCEPTANCE_CLIENTS, CLIENT_PROCESSES), began,
            )
            for first in range(CLIENT_PROCESSES)
        ]
        with ConnectionSampler(sandbox, USER, 0.02) as counted:
            results = [client for share in shares for client in share.result()]
    elapsed = time.monotonic() - began
    latencies = sorted(x for r in results for x in r.latencies)
    transactions = sum(r.transactions for r in results)
    print(
        f"{ACCEPTANCE_CLIENTS} clients, pool {ACCEPTANCE_POOL}: {transactions} transactions in "
        f"{elapsed:.1f}s ({transactions / (RUN_S - RAMP_S / 2):.0f}/s), p50 "
        f"{latencies[len(latencies) // 2] * 1000:.1f} ms, p99 "
        f"{latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms; peak connections {counted.peak}"
    )
    errors = [e for r in results for e in r.errors]
    assert errors == [], (len(errors), errors[:5])
    assert [leak for r in results for leak in r.leaks] == []
    assert all(r.transactions >= 1 for r in results)
    assert counted.errors == 0
    assert all(n <= ACCEPTANCE_POOL for n in counted.peak.values()), counted.peak
    assert counted.peak.get(sandbox.master.name, 0) > 0
