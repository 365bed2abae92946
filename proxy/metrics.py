"""Prometheus metrics: ``GET /metrics`` on ``[metrics] listen``.

Nothing is recorded for metrics on the hot path. ``BatonCollector`` reads the counters Baton
keeps anyway (``proxy.stats.Stats``, pool stats, the topology, the failover timeline) when
Prometheus scrapes, and the endpoint is a tiny HTTP/1.x handler on the event loop, serving
``prometheus_client.generate_latest`` of a registry of Baton's own (plus the standard process
metrics), not prometheus-client's thread-based server.

Metric names (all prefixed ``baton_``):

=====================================  =========  ===============================================
queries_total                          counter    backend, command, result (ok|error)
query_duration_seconds                 histogram  statement latency (Stats.observe_latency)
backend_errors_total                   counter    code: error packets from backends
proxy_errors_total                     counter    code: Baton's own errors (9100-9199, 1040, ...)
backend_state                          gauge      backend, state: 1 for the current state
backend_up                             gauge      backend: 1 when ONLINE or LAGGING
backend_is_master                      gauge      backend: 1 for the master of this epoch
backend_fenced                         gauge      backend: 1 once fenced (an old master)
backend_replication_lag_seconds        gauge      backend (absent while unknown)
topology_epoch                         gauge
pool_connections                       gauge      backend, state (in_use|idle)
pool_waiting                           gauge      backend: sessions waiting for a connection
pool_generation                        gauge      backend
pool_connects_total / ..._errors_total counter    backend
pool_reused_total                      counter    backend
clients_connected                      gauge      open client sessions
worker_clients_connected               gauge      worker: open client sessions per worker process
worker_restarts_total                  counter    worker: restarts after the worker died
client_connections_total               counter    accepted client connections
auth_failures_total                    counter
statements_held_total                  counter    held while no master was writable
statements_held_now                    gauge      held right now
statements_retried_total               counter    reads retried on another backend
statements_failed_total                counter    statements that ended with a Baton error
masterless                             gauge      1 while the master is lost and no failover could replace it
failovers_total                        counter    kind, outcome (promoted|refused|failed|...)
failover_duration_seconds              summary    detection to promotion (timeline promoted_ms)
last_failover_duration_seconds         gauge
reloads_total                          counter    result (ok|failed)
last_reload_success                    gauge      1/0 (absent before the first reload)
paused                                 gauge      1 while an operator PAUSE holds statements
info                                   gauge      version, server_version
start_time_seconds                     gauge
cluster_instances                      gauge      live instances on the Redis channel (1 alone)
cluster_epoch                          gauge      instance: the epoch each live instance reports
failover_suspended                     gauge      1 while automatic failover is suspended here
cluster_messages_rejected_total        counter    reason (malformed|unsigned|bad_signature|...)
=====================================  =========  ===============================================
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, cast

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from . import __version__
from .admin.tables import CLUSTER_COLUMNS, cluster_table, failover_rows
from .health.signing import REJECTION_REASONS
from .health.states import BackendState
from .listener import OperatorListener
from .stats import LATENCY_BUCKETS

if TYPE_CHECKING:
    from .admin.view import ProxyView

log = logging.getLogger("baton.metrics")

_UP_STATES = {s for s in BackendState if s.is_up}


class BatonCollector(Collector):
    """Reads a running Baton's state at scrape time."""

    def __init__(self, app: ProxyView) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        yield from self._queries()
        yield from self._backends()
        yield from self._pools()
        yield from self._clients()
        yield from self._failovers()
        yield from self._operations()
        yield from self._cluster()

    def _queries(self) -> Iterator[Metric]:
        st = self.app.stats
        queries = CounterMetricFamily(
            "baton_queries", "Statements and commands answered by a backend.",
            labels=["backend", "command", "result"],
        )
        errors = st.query_errors
        for (backend, command), n in list(st.queries.items()):
            failed = errors.get((backend, command), 0)
            queries.add_metric([backend, command, "ok"], n - failed)
            queries.add_metric([backend, command, "error"], failed)
        yield queries
        cumulative, buckets = 0, []
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), st.latency_counts, strict=True):
            cumulative += count
            buckets.append((_le(bound), cumulative))
        yield HistogramMetricFamily(
            "baton_query_duration_seconds", "Statement latency as seen by Baton.",
            buckets=buckets, sum_value=st.latency_sum,
        )
        backend_errors = CounterMetricFamily(
            "baton_backend_errors", "Error packets returned by backends, by error code.", labels=["code"]
        )
        for code, n in sorted(st.backend_errors.items()):
            backend_errors.add_metric([str(code)], n)
        yield backend_errors
        proxy_errors = CounterMetricFamily(
            "baton_proxy_errors", "Errors Baton itself reported to clients, by error code.", labels=["code"]
        )
        for code, n in sorted(st.baton_errors.items()):
            proxy_errors.add_metric([str(code)], n)
        yield proxy_errors

    def _backends(self) -> Iterator[Metric]:
        snap = self.app.topology.snapshot()
        state = GaugeMetricFamily(
            "baton_backend_state", "1 for the backend's current state.", labels=["backend", "state"]
        )
        up = GaugeMetricFamily("baton_backend_up", "1 when the backend takes new work (ONLINE or LAGGING).", labels=["backend"])
        master = GaugeMetricFamily("baton_backend_is_master", "1 for the master of the current epoch.", labels=["backend"])
        fenced = GaugeMetricFamily("baton_backend_fenced", "1 for a fenced former master.", labels=["backend"])
        lag = GaugeMetricFamily(
            "baton_backend_replication_lag_seconds", "Replication lag last measured.", labels=["backend"]
        )
        for view in snap.backends:
            for s in BackendState:
                state.add_metric([view.name, str(s)], float(view.state is s))
            up.add_metric([view.name], float(view.state in _UP_STATES))
            master.add_metric([view.name], float(view.name == snap.master))
            fenced.add_metric([view.name], float(view.fenced))
            if view.lag_s is not None:
                lag.add_metric([view.name], view.lag_s)
        yield from (state, up, master, fenced, lag)
        yield GaugeMetricFamily("baton_topology_epoch", "Current topology epoch.", value=snap.epoch)

    def _pools(self) -> Iterator[Metric]:
        conns = GaugeMetricFamily("baton_pool_connections", "Backend connections by state.", labels=["backend", "state"])
        waiting = GaugeMetricFamily("baton_pool_waiting", "Sessions waiting for a free connection.", labels=["backend"])
        generation = GaugeMetricFamily("baton_pool_generation", "Pool generation (bumped on retire).", labels=["backend"])
        connects = CounterMetricFamily("baton_pool_connects", "Backend connections opened.", labels=["backend"])
        connect_errors = CounterMetricFamily("baton_pool_connect_errors", "Failed backend connection attempts.", labels=["backend"])
        reused = CounterMetricFamily("baton_pool_reused", "Pooled connections handed out again.", labels=["backend"])
        for name, pool in list(self.app.pools.items()):
            conns.add_metric([name, "in_use"], pool.in_use)
            conns.add_metric([name, "idle"], pool.idle)
            waiting.add_metric([name], pool.waiting)
            generation.add_metric([name], pool.generation)
            connects.add_metric([name], pool.stats.connects)
            connect_errors.add_metric([name], pool.stats.connect_errors)
            reused.add_metric([name], pool.stats.reused)
        yield from (conns, waiting, generation, connects, connect_errors, reused)

    def _clients(self) -> Iterator[Metric]:
        app = self.app
        yield GaugeMetricFamily("baton_clients_connected", "Open client sessions.", value=len(app.sessions))
        per_worker = GaugeMetricFamily("baton_worker_clients_connected", "Open client sessions per worker process.", labels=["worker"])
        restarts = CounterMetricFamily("baton_worker_restarts", "Times the brain restarted a worker that died.", labels=["worker"])
        for worker in app.workers:
            per_worker.add_metric([str(worker.index)], worker.clients)
            restarts.add_metric([str(worker.index)], worker.restarts)
        yield from (per_worker, restarts)
        yield CounterMetricFamily(
            "baton_client_connections", "Client connections accepted.", value=app.stats.client_connections
        )
        yield CounterMetricFamily("baton_auth_failures", "Client logins refused.", value=app.stats.auth_failures)

    def _failovers(self) -> Iterator[Metric]:
        failover = self.app.failover
        yield GaugeMetricFamily(
            "baton_masterless", "1 while the master is lost and no failover could replace it.",
            value=float(failover is not None and failover.masterless is not None),
        )
        rows = failover_rows(self.app)  # newest first
        total = CounterMetricFamily(
            "baton_failovers", "Changes of master on the failover timeline (last 50 kept).",
            labels=["kind", "outcome"],
        )
        counts: dict[tuple[str, str], int] = {}
        durations = []
        for row in rows:
            # "refused: <reason>" -> "refused": the reason is in SHOW FAILOVERS, not a label
            outcome = str(row.get("outcome") or "unknown").split(":", 1)[0]
            key = (str(row.get("kind") or "unknown"), outcome)
            counts[key] = counts.get(key, 0) + 1
            promoted_ms = row.get("promoted_ms")
            if isinstance(promoted_ms, int | float):
                durations.append(promoted_ms / 1000)
        for (kind, outcome), n in sorted(counts.items()):
            total.add_metric([kind, outcome], n)
        yield total
        yield SummaryMetricFamily(
            "baton_failover_duration_seconds", "Failover durations, detection to promotion.",
            count_value=len(durations), sum_value=sum(durations),
        )
        if durations:
            yield GaugeMetricFamily(
                "baton_last_failover_duration_seconds", "Detection to promotion, latest failover.",
                value=durations[0],
            )

    def _operations(self) -> Iterator[Metric]:
        app, st = self.app, self.app.stats
        yield CounterMetricFamily(
            "baton_statements_held", "Statements held while no master was writable.", value=st.held
        )
        yield GaugeMetricFamily("baton_statements_held_now", "Statements held right now.", value=app.router.held)
        yield CounterMetricFamily(
            "baton_statements_retried", "Reads retried on another backend.", value=st.retried
        )
        yield CounterMetricFamily(
            "baton_statements_failed", "Statements that ended with one of Baton's own errors.",
            value=sum(st.baton_errors.values()),
        )
        reloads = CounterMetricFamily("baton_reloads", "Config reloads by result.", labels=["result"])
        reloads.add_metric(["ok"], st.reloads.get(True, 0))
        reloads.add_metric(["failed"], st.reloads.get(False, 0))
        yield reloads
        if app.last_reload is not None:
            yield GaugeMetricFamily(
                "baton_last_reload_success", "1 if the last reload was applied.", value=float(app.last_reload.ok)
            )
        yield GaugeMetricFamily("baton_paused", "1 while an operator PAUSE holds statements.", value=float(app.paused))
        info = GaugeMetricFamily("baton_info", "Baton version.", labels=["version", "server_version"])
        info.add_metric([__version__, app.server_version], 1)
        yield info
        yield GaugeMetricFamily("baton_start_time_seconds", "Start time (Unix seconds).", value=app.started_at)

    def _cluster(self) -> Iterator[Metric]:
        rows = cluster_table(self.app).rows
        column = {name: i for i, name in enumerate(CLUSTER_COLUMNS)}
        yield GaugeMetricFamily(
            "baton_cluster_instances", "Live Baton instances on the Redis channel.", value=len(rows)
        )
        epochs = GaugeMetricFamily(
            "baton_cluster_epoch", "Epoch each live instance reports.", labels=["instance"]
        )
        for row in rows:
            epochs.add_metric([str(row[column["id"]])], float(row[column["epoch"]] or 0))
        yield epochs
        cluster = self.app.cluster
        suspended = cluster is not None and cluster.failover_status()[0] == "suspended"
        yield GaugeMetricFamily(
            "baton_failover_suspended", "1 while automatic failover is suspended on this instance.",
            value=float(suspended),
        )
        rejected = CounterMetricFamily(
            "baton_cluster_messages_rejected",
            "Coordination records from Redis ignored, by reason.", labels=["reason"],
        )
        for reason in REJECTION_REASONS:
            rejected.add_metric([reason], cluster.rejected[reason] if cluster is not None else 0)
        yield rejected


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)



def registry_for(app: ProxyView) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BatonCollector(app))
    ProcessCollector(registry=registry)
    return registry


# --- HTTP --------------------------------------------------------------------------------------

MAX_REQUEST = 8192
REQUEST_TIMEOUT_S = 10.0


class MetricsHTTP(asyncio.Protocol):
    """One HTTP/1.x request per connection: GET /metrics (or /), then close."""

    def __init__(
        self, registry: CollectorRegistry, loop: asyncio.AbstractEventLoop,
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.registry = registry
        self.loop = loop
        self.refresh = refresh  # with workers: gather their counters before a scrape
        self._pending: asyncio.Task[None] | None = None
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream transport: create_server's
        self._timer = self.loop.call_later(REQUEST_TIMEOUT_S, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_REQUEST:
                self._respond(431, b"request header too large\n")
            return
        line = bytes(self.buffer[: self.buffer.find(b"\r\n")]).decode("latin-1")
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            self._respond(400, b"bad request\n")
        elif parts[0] not in ("GET", "HEAD"):
            self._respond(405, b"only GET\n", extra=b"Allow: GET, HEAD\r\n")
        elif parts[1].split("?", 1)[0] in ("/metrics", "/"):
            if self.refresh is None:
                self._scrape(parts[0] == "HEAD")
            else:
                self.buffer.clear()  # one request per connection: more bytes are ignored
                self._pending = self.loop.create_task(self._refresh_then_scrape(self.refresh, parts[0] == "HEAD"))
        else:
            self._respond(404, b"not found; try /metrics\n")

    async def _refresh_then_scrape(self, refresh: Callable[[], Awaitable[None]], head: bool) -> None:
        try:
            await refresh()
        except Exception:
            log.exception("metrics_refresh_failed")
        if self.transport is not None and not self.transport.is_closing():
            self._scrape(head)

    def _scrape(self, head: bool) -> None:
        try:
            body = generate_latest(self.registry)
        except Exception:  # a collector bug must not take the endpoint down
            log.exception("metrics_collect_failed")
            self._respond(500, b"collecting metrics failed; see Baton's log\n")
            return
        self._respond(200, body, CONTENT_TYPE_LATEST, head=head)

    def _respond(
        self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
        extra: bytes = b"", head: bool = False,
    ) -> None:
        assert self.transport is not None
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  431: "Request Header Fields Too Large", 500: "Internal Server Error"}[status]
        header = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n"
        ).encode() + extra + b"\r\n"
        self.transport.write(header if head else header + body)
        self.transport.close()


class MetricsServer(OperatorListener):
    """The metrics listener; follows reloads of ``[metrics] listen``."""

    def __init__(self, app: ProxyView) -> None:
        self.registry = registry_for(app)
        # One process: the collector reads live objects, nothing to gather first.
        refresh = app.refresh if len(app.workers) > 1 else None
        super().__init__(app, "metrics", lambda: MetricsHTTP(self.registry, app.loop, refresh))

