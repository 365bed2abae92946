"""Multiplexing: many DB-API clients with short transactions over a few backend connections.

N PyMySQL clients with the DB-API defaults (autocommit off, as PyMySQL, mysqlclient and
SQLAlchemy's pool open connections) each run one short transaction, ``SELECT`` + ``COMMIT``,
then think for --think seconds, over Baton with ``[proxy] max_backend_connections = M``. The
point of a proxy is that N may be far larger than M. Three runs of --duration seconds each:

    direct   n = min(N, M) clients straight to the master   the floor
    baton    n clients through Baton                          the proxy's cost, no contention
    baton    N clients through Baton                          multiplexing

Each client sets ``@mux_client`` once at login and reads it back in every SELECT: a value from
another client ("leaks") means a backend connection carried one session's variables to another.
"served" counts the clients that completed at least one transaction (a client stuck waiting for
a connection completes none). Connections of user ``app`` on every server are counted from information_schema.PROCESSLIST
every --sample-ms; the table shows the peak. Latency is client-side (SELECT + COMMIT); "wait
added by pooling" is baton@N minus baton@n. A client whose login or statement fails records the
error code, closes its connection and logs in again after thinking.

    ./run perf multiplex                          # N=200, M=20, think 1 s, 20 s per run
    ./run perf multiplex --clients 1000 --backend-connections 20 --duration 30
    ./run perf multiplex --baton-config-section proxy.connect_timeout_ms=2000

See perf/README.md ("Multiplexing") for what the figures mean.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pymysql

from perf.bench import RESULTS_DIR, BatonProcess, override_sections, parse_override, say
from perf.proc_stats import sample
from proxy.sandbox import ReplicationSandbox, free_ports, mariadb_version
from proxy.sandbox.sampling import ConnectionSampler

USER = PASSWORD = "app"
DATABASE = "test"
ROWS = 1000


# --- one client ----------------------------------------------------------------------------------


@dataclass
class ClientStats:
    """What one client thread saw; merged after the run (no locks on the hot path)."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)  # statement errors by code
    login_errors: Counter[str] = field(default_factory=Counter)
    logins: int = 0
    leaks: int = 0


def _code(exc: pymysql.MySQLError) -> str:
    return str(exc.args[0]) if exc.args and isinstance(exc.args[0], int) else type(exc).__name__


@dataclass(frozen=True, slots=True)
class ClientPlan:
    port: int
    think: float
    start_at: float  # monotonic; clients start spread over one think time
    deadline: float
    connect_timeout: float
    read_timeout: float


def run_client(client_id: int, plan: ClientPlan, stats: ClientStats) -> None:
    rng = random.Random(client_id)
    time.sleep(max(0.0, plan.start_at - time.monotonic()))
    conn: pymysql.Connection | None = None
    while time.monotonic() < plan.deadline:
        if conn is None:
            try:
                conn = pymysql.connect(  # autocommit off: the DB-API default
                    host="127.0.0.1",
                    port=plan.port,
                    user=USER,
                    password=PASSWORD,
                    database=DATABASE,
                    connect_timeout=plan.connect_timeout,
                    read_timeout=plan.read_timeout,
                    write_timeout=plan.read_timeout,
                    # PyMySQL 1.2 builds a TLS context per connect (~30 ms of client CPU)
                    # even where the server offers no TLS: the harness's cost, not Baton's
                    ssl_disabled=True,
                )
                with conn.cursor() as cur:
                    cur.execute("SET @mux_client = %s", (client_id,))
                stats.logins += 1
            except pymysql.MySQLError as exc:
                stats.login_errors[_code(exc)] += 1
                _close(conn)
                conn = None
                time.sleep(plan.think)
                continue
        started = time.perf_counter()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT v, @mux_client FROM mux WHERE id = %s", (rng.randrange(ROWS),))
                row = cur.fetchone()
            conn.commit()
        except pymysql.MySQLError as exc:
            stats.errors[_code(exc)] += 1
            _close(conn)
            conn = None
        else:
            if time.monotonic() <= plan.deadline:  # only what completed inside the run
                stats.latencies_ms.append((time.perf_counter() - started) * 1000)
            if row is None or row[1] != client_id:
                stats.leaks += 1
        time.sleep(plan.think)
    _close(conn)


def _close(conn: pymysql.Connection | None) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()


# --- one run -------------------------------------------------------------------------------------


@dataclass
class RunResult:
    label: str
    target: str
    clients: int
    seconds: float
    transactions: int
    tps: float
    errors: dict[str, int]
    login_errors: dict[str, int]
    logins: int
    served: int  # clients that completed at least one transaction inside the run
    leaks: int
    latency_ms: dict[str, float | None]
    peak_backend: dict[str, int]
    mean_backend: dict[str, float]
    proxy_cpu_pct: float | None  # of one core, over the run (includes the monitor's probes)


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": ordered[-1]}


def run(
    label: str,
    target: str,
    port: int,
    clients: int,
    args: argparse.Namespace,
    sandbox: ReplicationSandbox,
    proxy_pid: int | None,
) -> RunResult:
    say(f"{label}: {clients} clients -> {target} :{port} for {args.duration}s")
    now = time.monotonic()
    ramp = min(args.think, args.duration / 4)
    stats = [ClientStats() for _ in range(clients)]
    threads = []
    cpu_before = sample(proxy_pid) if proxy_pid else None
    with ConnectionSampler(sandbox, USER, args.sample_ms / 1000) as sampler:
        for i in range(clients):
            plan = ClientPlan(
                port=port,
                think=args.think,
                start_at=now + ramp * i / clients,
                deadline=now + args.duration,
                connect_timeout=args.client_timeout,
                read_timeout=args.client_timeout,
            )
            t = threading.Thread(target=run_client, args=(i + 1, plan, stats[i]), daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
    cpu_after = sample(proxy_pid) if proxy_pid else None
    seconds = time.monotonic() - now  # clients stuck in a login may outlast the deadline
    latencies = [x for s in stats for x in s.latencies_ms]
    errors: Counter[str] = sum((s.errors for s in stats), Counter())
    login_errors: Counter[str] = sum((s.login_errors for s in stats), Counter())
    cpu = cpu_after.cpu_seconds - cpu_before.cpu_seconds if cpu_before and cpu_after else None
    return RunResult(
        label=label,
        target=target,
        clients=clients,
        seconds=seconds,
        transactions=len(latencies),
        tps=len(latencies) / args.duration,
        errors=dict(errors),
        login_errors=dict(login_errors),
        logins=sum(s.logins for s in stats),
        served=sum(1 for s in stats if s.latencies_ms),
        leaks=sum(s.leaks for s in stats),
        latency_ms=percentiles(latencies),
        peak_backend=dict(sampler.peak),
        mean_backend={k: statistics.fmean(v) for k, v in sampler.samples.items() if v},
        proxy_cpu_pct=100 * cpu / seconds if cpu is not None else None,
    )


# --- report --------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _codes(counts: dict[str, int]) -> str:
    return ", ".join(f"{n}x {code}" for code, n in sorted(counts.items())) or "0"


def _added(run: RunResult, base: RunResult) -> str:
    parts = []
    for k in ("p50", "p95", "p99"):
        a, b = run.latency_ms[k], base.latency_ms[k]
        parts.append(f"{k} {_fmt(a - b if a is not None and b is not None else None, '+.2f')} ms")
    return ", ".join(parts)


def format_table(results: list[RunResult], args: argparse.Namespace, servers: list[str]) -> str:
    lines = [
        f"multiplex  (N={args.clients} clients, think {args.think:g}s, {args.duration}s per run, "
        f"Baton max_backend_connections={args.backend_connections}, autocommit off)",
        f"  {'run':<14} {'clients':>7} {'served':>6} {'tx/s':>7} {'tx':>6} {'errors':>7} {'login err':>9} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'peak conns ' + '/'.join(servers):>22} {'leaks':>5} {'proxy CPU %':>11}",
    ]
    for r in results:
        lat = r.latency_ms
        peaks = "/".join(str(r.peak_backend.get(s, 0)) for s in servers)
        lines.append(
            f"  {r.label:<14} {r.clients:>7} {r.served:>6} {r.tps:>7.1f} {r.transactions:>6} "
            f"{sum(r.errors.values()):>7} {sum(r.login_errors.values()):>9} "
            f"{_fmt(lat['p50'], '.2f'):>7} {_fmt(lat['p95'], '.2f'):>7} "
            f"{_fmt(lat['p99'], '.2f'):>7} {_fmt(lat['max'], '.0f'):>7} {peaks:>22} "
            f"{r.leaks:>5} {_fmt(r.proxy_cpu_pct, '.0f'):>11}"
        )
    for r in results:
        if r.errors or r.login_errors:
            lines.append(
                f"  {r.label}: statement errors {_codes(r.errors)}; "
                f"login errors {_codes(r.login_errors)}"
            )
    if len(results) == 3:
        direct, few, many = results
        lines.append(f"  wait added by pooling ({many.label} - {few.label}): {_added(many, few)}")
        lines.append(f"  added in all ({many.label} - {direct.label}): {_added(many, direct)}")
    expected = args.clients / (args.think + 0.001)
    lines.append(f"  offered load at N: about {expected:.0f} tx/s (N / think time)")
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------


def prepare(sandbox: ReplicationSandbox) -> None:
    sandbox.master.sql(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
    sandbox.master.sql(f"CREATE TABLE IF NOT EXISTS {DATABASE}.mux (id INT PRIMARY KEY, v INT)")
    values = ", ".join(f"({i}, {i * 7})" for i in range(ROWS))
    sandbox.master.sql(f"REPLACE INTO {DATABASE}.mux VALUES {values}")
    sandbox.wait_caught_up(timeout=60)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--clients", type=int, default=200, help="N, clients through Baton (200)")
    p.add_argument(
        "--backend-connections",
        type=int,
        default=20,
        help="M, Baton's [proxy] max_backend_connections (20)",
    )
    p.add_argument("--think", type=float, default=1.0, help="seconds between transactions (1)")
    p.add_argument("--duration", type=int, default=20, help="seconds per run (20)")
    p.add_argument(
        "--low-clients",
        type=int,
        default=None,
        help="n, clients of the direct and uncontended runs (default min(N, M))",
    )
    p.add_argument("--replicas", type=int, default=2, help="replicas in the topology (2)")
    p.add_argument("--sample-ms", type=int, default=200, help="backend connection sampling (200)")
    p.add_argument(
        "--client-timeout",
        type=float,
        default=30.0,
        help="PyMySQL connect/read timeout, s (30: longer than Baton's pool wait)",
    )
    p.add_argument(
        "--baton-config-section",
        metavar="SECTION.KEY=VALUE",
        type=parse_override,
        action="append",
        default=[],
        help="override Baton's config (repeatable)",
    )
    args = p.parse_args(argv)
    if args.low_clients is None:
        args.low_clients = min(args.clients, args.backend_connections)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="baton-mux-") as tmp:
        sandbox = ReplicationSandbox(Path(tmp) / "sandbox", replicas=args.replicas)
        baton: BatonProcess | None = None
        try:
            sandbox.start()
            say(
                f"MariaDB {mariadb_version()}: "
                + ", ".join(f"{i.name} {i.address}" for i in sandbox.instances)
            )
            prepare(sandbox)
            (port,) = free_ports(1)
            sections = override_sections(args.baton_config_section)
            sections["proxy"] = {
                **sections.get("proxy", {}),
                "max_backend_connections": args.backend_connections,
            }
            config = sandbox.config_toml(port, admin_port=0, metrics_port=0, **sections)
            baton = BatonProcess(config, Path(tmp) / "baton").start()
            low = args.low_clients
            results.append(
                run(f"direct@{low}", "master", sandbox.master.port, low, args, sandbox, None)
            )
            results.append(run(f"baton@{low}", "baton", port, low, args, sandbox, baton.pid))
            results.append(
                run(f"baton@{args.clients}", "baton", port, args.clients, args, sandbox, baton.pid)
            )
            servers = [i.name for i in sandbox.instances]
            say("")
            say(format_table(results, args, servers))
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            path = RESULTS_DIR / f"multiplex-{stamp}.json"
            path.write_text(
                json.dumps(
                    {
                        "args": vars(args),
                        "baton_config": config,
                        "results": [asdict(r) for r in results],
                    },
                    indent=2,
                    default=str,
                )
                + "\n"
            )
            (RESULTS_DIR / f"multiplex-{stamp}.baton.log").write_text(baton.log_text())
            say(f"\nresults: {path}")
        finally:
            if baton is not None:
                with contextlib.suppress(Exception):
                    baton.stop()
            sandbox.stop()
    failed = any(r.errors or r.login_errors or r.leaks for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
