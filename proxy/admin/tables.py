"""What the admin port shows: snapshots of Baton's state as rows, read at the moment of asking.

Each ``*_table(app)`` returns a ``Table`` whose columns are the same for ``SHOW X`` and for the
``x`` table that ``SELECT ... FROM x`` queries, so an operator learns one set of names. Values
are plain Python (int, float, str, None): booleans are 0/1 as MySQL shows them, times are Unix
seconds, durations carry their unit in the column name. Nothing here mutates Baton.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..config import MASK, SECTIONS

if TYPE_CHECKING:
    from ..health.monitor import BackendHealth
    from .view import ClientView, ProxyView

Value = int | float | str | None


@dataclass(frozen=True, slots=True)
class Table:
    columns: tuple[str, ...]
    rows: Sequence[tuple[Value, ...]]


# queries: statements answered by the backend; errors: those answered with an error packet,
# plus failed connection attempts; last_check: the monitor's last probe (UTC); can: what the
# monitor account's grants allow there (monitor, promote, repoint, fence, switchover), NULL until
# read; cannot: each operation it does not allow and the privilege it needs; note: why a fenced
# backend stays fenced, or on the master's row why there is no master (masterless).
BACKEND_COLUMNS = (
    "name", "address", "role", "state", "epoch", "fenced", "read_only", "replicating_from", "lag_ms", "gtid",
    "conn_used", "conn_idle", "queries", "errors", "last_check", "can", "cannot", "note",
)
# sessions: the user's client sessions (all backends); max_sessions and share: its [[users]]
# max_connections and max_backend_connections (0: no limit of its own).
POOL_COLUMNS = (
    "backend", "user", "in_use", "idle", "waiting", "generation", "connects", "reused",
    "sessions", "max_sessions", "share",
)
# state: login (handshake not finished), waiting (a command held before any backend: for a pool
# connection, a failover, PAUSE), active (a command is served), in-transaction (idle inside a
# transaction) or idle.
CLIENT_COLUMNS = ("id", "user", "address", "link", "schema", "state", "backends", "pinned", "idle_ms")
STAT_COLUMNS = ("variable", "value")
# The failover timeline's rows (proxy.health.timeline.Timeline.as_rows) decide the columns;
# these are its keys, used when there are no rows yet or no failover module runs, so that
# SELECT ... FROM failovers always works.
FAILOVER_COLUMNS = (
    "id", "kind", "old", "new", "epoch", "outcome", "age_s", "decided_ms", "promoted_ms",
    "first_write_ms", "held", "retried", "failed", "steps", "error",
)

# One row per live Baton instance sharing [redis] channel (just this one without Redis).
# failover: active | suspended | off (mode follow/manual); reason says why when not active;
# rejected: coordination records that instance ignored (unsigned, bad signature, stale, ...).
CLUSTER_COLUMNS = (
    "id", "address", "epoch", "master", "lease_holder", "heartbeat_age_ms", "failover", "reason",
    "rejected",
)


def _lag_ms(lag_s: float) -> int:
    """Lag in whole ms, rounded up: a replica over its limit by a fraction of a ms (LAGGING)
    must not show a lag equal to the limit. The epsilon keeps float noise from adding 1."""
    return max(0, math.ceil(lag_s * 1000 - 1e-6))


def _flag(value: bool | None) -> int | None:
    return None if value is None else int(value)


def _health(app: ProxyView) -> dict[str, BackendHealth]:
    """The monitor's per-backend view, when a monitor runs."""
    if app.monitor is None:
        return {}
    return {h.name: h for h in app.monitor.all_health()}


def wall_time(monotonic_at: float | None) -> str | None:
    """A time.monotonic() instant as UTC ISO-8601 with milliseconds."""
    if monotonic_at is None:
        return None
    at = time.time() - (time.monotonic() - monotonic_at)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"


def backends_table(app: ProxyView) -> Table:
    snap = app.topology.snapshot()
    health = _health(app)
    per_backend_queries: dict[str, int] = {}
    per_backend_errors: dict[str, int] = {}
    for (backend, _command), n in list(app.stats.queries.items()):
        per_backend_queries[backend] = per_backend_queries.get(backend, 0) + n
    for (backend, _command), n in list(app.stats.query_errors.items()):
        per_backend_errors[backend] = per_backend_errors.get(backend, 0) + n
    rows = []
    for view in snap.backends:
        cfg = app.config.backend(view.name)
        pool = app.pools.get(view.name)
        h = health.get(view.name)
        lag_s = h.lag_s if h is not None else view.lag_s  # live, not the last state change's
        errors = per_backend_errors.get(view.name, 0) + (pool.stats.connect_errors if pool else 0)
        rows.append((
            view.name,
            cfg.address if cfg else None,
            str(view.role),
            str(view.state),
            view.epoch,
            int(view.fenced),
            _flag(view.read_only),
            view.replicating_from,
            None if lag_s is None else _lag_ms(lag_s),
            (h.gtid_current_pos or None) if h is not None else None,
            pool.in_use if pool else 0,
            pool.idle if pool else 0,
            per_backend_queries.get(view.name, 0),
            errors,
            wall_time(h.last_check_at) if h is not None else None,
            app.privileges.can(view.name),
            app.privileges.cannot(view.name),
            app.failover.backend_note(view.name) if app.failover is not None else None,
        ))
    return Table(BACKEND_COLUMNS, rows)


def pools_table(app: ProxyView) -> Table:
    """One row per (backend, user) with connections or client sessions; a backend with neither
    has one row with a NULL user. waiting, generation, connects and reused are per backend (its
    pool), repeated on each of its rows; sessions, max_sessions and share are per user."""
    rows: list[tuple[Value, ...]] = []
    sessions = app.user_limits.snapshot()
    config = app.config
    for name, pool in list(app.pools.items()):
        shared = (pool.waiting, pool.generation, pool.stats.connects, pool.stats.reused)
        users = {u: (0, 0) for u in sessions} | pool.counts_by_user()
        if not users:
            rows.append((name, None, 0, 0, *shared, None, None, None))
        for user, (in_use, idle) in sorted(users.items()):
            account = config.user(user)
            limits = (
                (account.max_connections, account.max_backend_connections) if account else (0, 0)
            )
            rows.append((name, user, in_use, idle, *shared, sessions.get(user, 0), *limits))
    return Table(POOL_COLUMNS, rows)


def client_state(session: ClientView) -> str:
    return session.activity


def clients_table(app: ProxyView) -> Table:
    now = time.monotonic()
    rows = [
        (
            s.id,
            s.user or None,
            s.peer,
            s.link,
            s.schema,
            client_state(s),
            ",".join(sorted(s.conns)),
            s.pinned_reason(),
            max(0, round((now - s.last_active) * 1000)),
        )
        for s in list(app.sessions.values())
    ]
    return Table(CLIENT_COLUMNS, rows)


def stats_table(app: ProxyView) -> Table:
    """Counters as (variable, value). Names are dotted paths: queries.<backend>.<command>,
    query_errors.<backend>.<command>, backend_errors.<code>, baton_errors.<code>, ..."""
    st = app.stats
    rows: list[tuple[Value, ...]] = [
        ("uptime_s", round(time.time() - app.started_at)),
        ("clients_connected", len(app.sessions)),
        ("client_connections_total", st.client_connections),
        ("auth_failures", st.auth_failures),
        ("queries_total", sum(st.queries.values())),
    ]
    rows += [(f"queries.{b}.{c}", n) for (b, c), n in sorted(st.queries.items())]
    rows += [(f"query_errors.{b}.{c}", n) for (b, c), n in sorted(st.query_errors.items())]
    rows += [(f"backend_errors.{code}", n) for code, n in sorted(st.backend_errors.items())]
    rows += [(f"baton_errors.{code}", n) for code, n in sorted(st.baton_errors.items())]
    latency_count = sum(st.latency_counts)
    rows += [
        ("held", st.held),
        ("held_now", app.router.held),
        ("retried", st.retried),
        ("reloads.ok", st.reloads.get(True, 0)),
        ("reloads.failed", st.reloads.get(False, 0)),
        ("latency.count", latency_count),
        ("latency.avg_ms", round(st.latency_sum / latency_count * 1000, 3) if latency_count else None),
        ("paused", int(app.paused)),
        ("epoch", app.topology.epoch),
        ("master", app.topology.master),
        ("failover_mode", app.config.failover.mode),
        ("failover_available", int(app.failover is not None)),
        ("monitor_available", int(app.monitor is not None)),
    ]
    return Table(STAT_COLUMNS, rows)


def failover_rows(app: ProxyView) -> list[dict[str, Any]]:
    """The failover timeline, one dict per failover, newest first; [] without one."""
    failover = app.failover
    if failover is None:
        return []
    return list(failover.timeline.as_rows())


def failovers_table(app: ProxyView) -> Table:
    records = failover_rows(app)
    columns: list[str] = []
    for record in records:
        columns += [k for k in record if k not in columns]
    columns = columns or list(FAILOVER_COLUMNS)
    rows = [tuple(_scalar(r.get(c)) for c in columns) for r in records]
    return Table(tuple(columns), rows)


def cluster_table(app: ProxyView) -> Table:
    cluster = app.cluster
    if cluster is None:
        mode = app.config.failover.mode
        row = (
            app.config.redis.instance_id or "local", app.config.proxy.listen,
            app.topology.epoch, app.topology.master, 0, None,
            "active" if mode == "auto" else "off",
            "" if mode == "auto" else f"failover mode {mode}", 0,
        )
        return Table(CLUSTER_COLUMNS, [row])
    rows = [
        (v.id, v.address, v.epoch, v.master, int(v.lease_holder), v.heartbeat_age_ms, v.failover,
         v.reason, v.rejected)
        for v in cluster.view
    ]
    return Table(CLUSTER_COLUMNS, rows)


def _scalar(value: object) -> Value:
    if value is None or isinstance(value, int | float | str):
        return int(value) if isinstance(value, bool) else value
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(str(v) for v in value)
    return str(value)


def _config_items(prefix: str, value: object) -> Iterable[tuple[str, Value]]:
    for f in dataclasses.fields(value):  # type: ignore[arg-type]
        if f.metadata.get("derived") or f.name.startswith("_") or f.name == "name":
            continue
        v = getattr(value, f.name)
        if f.metadata.get("secret") and v not in (None, ""):
            v = MASK
        yield f"{prefix}.{f.name}", _scalar(v)


def config_table(app: ProxyView) -> Table:
    """The running config as (key, value), secrets masked, then the last reload's outcome."""
    config = app.config
    rows: list[tuple[Value, ...]] = [("source", config.source)]
    for section in SECTIONS:
        rows += _config_items(section, getattr(config, section))
    for b in config.backends:
        rows += _config_items(f"backends[{b.name}]", b)
    for u in config.users:
        rows += _config_items(f"users[{u.name}]", u)
    reload = app.last_reload
    if reload is None:
        rows.append(("reload.ok", None))
    else:
        rows += [
            ("reload.ok", int(reload.ok)),
            ("reload.at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(reload.at))),
            ("reload.summary", reload.summary),
        ]
        rows += [(f"reload.errors[{i}]", e) for i, e in enumerate(reload.errors)]
    return Table(("key", "value"), rows)


def version_table(app: ProxyView) -> Table:
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(app.started_at))
    python = ".".join(str(p) for p in sys.version_info[:3])
    return Table(
        ("baton", "server_version", "python", "started_at"),
        [(__version__, app.server_version, python, started)],
    )


WORKER_COLUMNS = ("worker", "pid", "state", "clients", "restarts", "started_at")


def workers_table(app: ProxyView) -> Table:
    """The processes serving clients: one row per worker (one row in single-process mode)."""
    rows = [
        (
            w.index, w.pid, w.state, w.clients, w.restarts,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(w.started_at)) if w.started_at else None,
        )
        for w in app.workers
    ]
    return Table(WORKER_COLUMNS, rows)


# The tables SELECT can query, by name.
QUERYABLE = {
    "backends": backends_table,
    "pools": pools_table,
    "clients": clients_table,
    "stats": stats_table,
    "failovers": failovers_table,
    "cluster": cluster_table,
}


# --- SELECT over a snapshot ------------------------------------------------------------------

_ALLOWED_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE})

# The SQLite functions a SELECT may call: the ordinary scalar, aggregate, window and date ones.
# Anything else is denied, by name, at prepare time: fts3_tokenizer (reads and calls pointers),
# load_extension, readfile/writefile/edit (shell extensions), randomblob/zeroblob (allocate in
# one step), sqlite_* introspection, and whatever a future SQLite adds.
ALLOWED_FUNCTIONS = frozenset({
    # scalar
    "abs", "char", "coalesce", "concat", "concat_ws", "format", "glob", "hex", "ifnull", "iif",
    "instr", "length", "like", "likelihood", "likely", "lower", "ltrim", "max", "min", "nullif",
    "octet_length", "printf", "quote", "random", "replace", "round", "rtrim", "sign", "substr",
    "substring", "trim", "typeof", "unhex", "unicode", "unlikely", "upper",
    # aggregate
    "avg", "count", "group_concat", "string_agg", "sum", "total",
    # window
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
    "first_value", "last_value", "nth_value",
    # date and time
    "date", "time", "datetime", "julianday", "unixepoch", "strftime", "timediff",
    # math (when SQLite has them)
    "ceil", "ceiling", "floor", "trunc", "mod", "pow", "power", "sqrt", "exp", "ln", "log",
    "log10", "log2", "pi",
})

MAX_VALUE_BYTES = 1 << 20
# A result is encoded on the event loop that serves every client: cap what one may hold.
MAX_RESULT_BYTES = 8 << 20


class QueryRefused(Exception):
    """The SELECT was not a single read-only statement, or SQLite could not run it."""


def _read_only(action: int, _arg1: object, arg2: object, *_: object) -> int:
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION and str(arg2).lower() in ALLOWED_FUNCTIONS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _size(value: object) -> int:
    return len(value) if isinstance(value, str | bytes) else 8


def _fetch(cursor: sqlite3.Cursor, max_rows: int, max_bytes: int) -> list[tuple[Any, ...]]:
    """The rows, or QueryRefused as soon as there are too many or they are too big."""
    rows: list[tuple[Any, ...]] = []
    total = 0
    for row in cursor:  # one at a time: a row over the limit is the last one held
        total += sum(_size(v) for v in row)
        if total > max_bytes:
            raise QueryRefused(
                f"result larger than {max_bytes} bytes; select fewer or narrower columns, "
                "or add a WHERE or LIMIT"
            )
        rows.append(row)
        if len(rows) > max_rows:
            raise QueryRefused(f"more than {max_rows} rows; add a WHERE or LIMIT")
    return rows


def run_select(
    sources: Mapping[str, Callable[[], Table]], sql: str, *, time_limit_s: float = 1.0,
    max_rows: int = 100_000, max_bytes: int = MAX_RESULT_BYTES,
) -> Table:
    """Runs one SELECT on a fresh in-memory SQLite database holding ``sources``' tables.

    Only the tables the statement names are built (a snapshot taken now). The statement runs
    under an authorizer that allows reading and the functions in ``ALLOWED_FUNCTIONS`` and
    nothing else, with ``query_only`` on, and is aborted after ``time_limit_s``: it runs on the
    event loop, and a runaway recursive CTE must not stall the proxy. Results over ``max_rows``
    rows or ``max_bytes`` bytes are refused.
    """
    db = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for name, build in sources.items():
            if re.search(rf"\b{re.escape(name)}\b", sql, re.IGNORECASE):
                _load(db, name, build())
        db.execute("PRAGMA query_only = ON")
        # One function call is one step for the progress handler: cap what it may allocate
        # (randomblob(1e9) would otherwise take a gigabyte in a single step).
        db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
        db.set_authorizer(_read_only)
        deadline = time.monotonic() + time_limit_s
        db.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            cursor = db.execute(sql)
            if cursor.description is None:
                raise QueryRefused("only SELECT statements are accepted")
            rows = _fetch(cursor, max_rows, max_bytes)
        except (sqlite3.Error, sqlite3.Warning) as exc:
            message = str(exc)
            if message == "interrupted":
                message = f"query took longer than {time_limit_s:g} s and was stopped"
            raise QueryRefused(message) from None
        columns = tuple(d[0] for d in cursor.description)
        return Table(columns, [tuple(r) for r in rows])
    finally:
        db.close()


def snapshot_sources(app: ProxyView) -> dict[str, Callable[[], Table]]:
    """The queryable tables of a running Baton, built on demand."""
    return {name: partial(build, app) for name, build in QUERYABLE.items()}


def _load(db: sqlite3.Connection, name: str, table: Table) -> None:
    cols = ", ".join(_quote(c) for c in table.columns)
    db.execute(f"CREATE TABLE {name} ({cols})")
    if table.rows:
        marks = ", ".join("?" * len(table.columns))
        db.executemany(f"INSERT INTO {name} VALUES ({marks})", table.rows)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
