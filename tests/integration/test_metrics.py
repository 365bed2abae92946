"""Prometheus metrics: scraped over HTTP from a real Baton, parsed with prometheus-client's own
parser, and compared with what the test did through the proxy and the admin port."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from bisect import bisect_left
from typing import Any

import pymysql
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.sandbox import ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess, admin_rows
from proxy.stats import LATENCY_BUCKETS, Stats
from tests.support.clients import app_connect
from tests.support.prometheus import Samples, scrape, value


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


# --- pure ------------------------------------------------------------------------------------------


def test_latency_buckets_are_upper_bounds() -> None:
    stats = Stats()
    for seconds in (0.0001, 0.0005, 0.0006, 0.2, 10.0, 11.0):
        stats.observe_latency(seconds)
    counts = dict(zip((*LATENCY_BUCKETS, float("inf")), stats.latency_counts, strict=True))
    assert counts[0.0005] == 2  # 0.0005 itself is "le 0.0005"
    assert counts[0.001] == 1
    assert counts[0.25] == 1
    assert counts[10.0] == 1
    assert counts[float("inf")] == 1
    assert sum(stats.latency_counts) == 6
    assert stats.latency_sum == pytest.approx(21.2012)


@given(st.lists(st.floats(min_value=0, max_value=20, allow_nan=False), max_size=50))
def test_each_latency_lands_in_the_first_bucket_that_holds_it(latencies: list[float]) -> None:
    """The bucket is the one ``bisect_left`` picks: the first upper bound >= the latency."""
    stats = Stats()
    expected = [0] * (len(LATENCY_BUCKETS) + 1)
    for seconds in latencies:
        stats.observe_latency(seconds)
        expected[bisect_left(LATENCY_BUCKETS, seconds)] += 1
    assert stats.latency_counts == expected


def test_error_replies_are_counted_per_backend_and_command() -> None:
    from proxy.protocol.constants import Command
    from proxy.protocol.packets import ErrPacket

    stats = Stats()
    stats.count(Command.QUERY, "db2")
    stats.count(Command.QUERY, "db2", ErrPacket(1146, "42S02", "no such table"))
    assert stats.queries[("db2", "query")] == 2
    assert stats.query_errors[("db2", "query")] == 1
    assert stats.backend_errors[1146] == 1


# --- a real Baton ----------------------------------------------------------------------------------


@pytest.fixture
def proc(sandbox: ReplicationSandbox, baton: Any) -> BatonProcess:
    return baton(sandbox)


def test_query_counters_match_the_statements_sent(sandbox: ReplicationSandbox, proc: BatonProcess) -> None:
    conn = app_connect(proc)
    try:
        before = scrape(proc)
        reads, failing = 25, 3
        with conn.cursor() as cur:
            for i in range(reads):
                cur.execute("SELECT %s", (i,))
            for _ in range(failing):
                with pytest.raises(pymysql.err.ProgrammingError):
                    cur.execute("SELECT * FROM test.metrics_no_such_table")
        after = scrape(proc)
    finally:
        conn.close()

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("baton_queries_total", command="query") == reads + failing
    assert delta("baton_queries_total", command="query", result="ok") == reads
    assert delta("baton_queries_total", command="query", result="error") == failing
    assert delta("baton_backend_errors_total", code="1146") == failing
    # Reads went to replicas (the counters say which).
    replicas = {r.name for r in sandbox.replicas}
    by_backend = {lab["backend"] for lab, v in after["baton_queries_total"] if v}
    assert by_backend <= replicas | {sandbox.master.name}
    assert by_backend & replicas
    assert value(after, "baton_clients_connected") == 1


def test_latency_histogram_counts_statements(proc: BatonProcess) -> None:
    before = scrape(proc)
    conn = app_connect(proc)
    try:
        with conn.cursor() as cur:
            for _ in range(10):
                cur.execute("SELECT 1")
    finally:
        conn.close()
    after = scrape(proc)
    buckets = [(float(lab["le"]), v) for lab, v in after["baton_query_duration_seconds_bucket"]]
    assert [b for b, _ in buckets] == [*LATENCY_BUCKETS, float("inf")]
    assert all(a <= b for (_, a), (_, b) in zip(buckets, buckets[1:], strict=False)), "buckets are cumulative"
    observed = value(after, "baton_query_duration_seconds_count") - value(before, "baton_query_duration_seconds_count")
    counted = total(after, "baton_queries_total") - total(before, "baton_queries_total")
    # Every statement Baton served is timed: the 10 SELECTs, plus what the driver sends on
    # connect (PyMySQL's SET AUTOCOMMIT).
    assert observed >= 10
    assert observed == counted
    assert buckets[-1][1] == value(after, "baton_query_duration_seconds_count")


def test_backend_state_pool_and_reload_metrics_follow_admin_actions(sandbox: ReplicationSandbox, proc: BatonProcess) -> None:
    replica = sandbox.replicas[0].name
    master = sandbox.master.name
    samples = scrape(proc)
    assert value(samples, "baton_backend_state", backend=replica, state="ONLINE") == 1
    assert value(samples, "baton_backend_is_master", backend=master) == 1
    assert value(samples, "baton_backend_is_master", backend=replica) == 0
    assert value(samples, "baton_topology_epoch") == 1
    admin_rows(proc, f"SET BACKEND '{replica}' OFFLINE_SOFT")
    admin_rows(proc, "RELOAD")
    samples = scrape(proc)
    assert value(samples, "baton_backend_state", backend=replica, state="OFFLINE_SOFT") == 1
    assert value(samples, "baton_backend_state", backend=replica, state="ONLINE") == 0
    assert value(samples, "baton_backend_up", backend=replica) == 0
    assert value(samples, "baton_reloads_total", result="ok") == 1
    assert value(samples, "baton_reloads_total", result="failed") == 0
    assert value(samples, "baton_last_reload_success") == 1
    # A session holding a master connection shows in the pool gauge.
    conn = app_connect(proc)
    try:
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("SELECT 1 FOR UPDATE")
            samples = scrape(proc)
            assert value(samples, "baton_pool_connections", backend=master, state="in_use") == 1
            cur.execute("COMMIT")
    finally:
        conn.close()
    assert value(samples, "baton_pool_connects_total", backend=master) >= 1
    for name in ("baton_failover_duration_seconds_count", "baton_statements_held_total", "baton_statements_retried_total",
                 "baton_statements_failed_total", "baton_auth_failures_total", "baton_paused", "baton_info"):
        assert name in samples, name


def test_auth_failures_are_counted(proc: BatonProcess) -> None:
    before = value(scrape(proc), "baton_auth_failures_total")
    with pytest.raises(pymysql.err.OperationalError):
        app_connect(proc, password="wrong")
    assert value(scrape(proc), "baton_auth_failures_total") == before + 1


def test_http_endpoint_answers_only_metrics(proc: BatonProcess) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{proc.metrics_port}/nope", timeout=5)
    assert err.value.code == 404
    request = urllib.request.Request(f"http://127.0.0.1:{proc.metrics_port}/metrics", method="POST", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=5)
    assert err.value.code == 405
    # Garbage and a silent client do not hurt the endpoint.
    with socket.create_connection(("127.0.0.1", proc.metrics_port), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01 not http\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    silent = socket.create_connection(("127.0.0.1", proc.metrics_port), timeout=5)
    try:
        assert "baton_info" in scrape(proc)
    finally:
        silent.close()
