"""Baton's throughput and CPU cost next to a direct connection and HAProxy, measured with sysbench.

Starts a private MariaDB topology (1 master + 2 replicas), HAProxy in TCP mode in front of the
master and Baton in front of the topology, all on free loopback ports under a temp dir; loads
sysbench's tables once; then, for each test and round, runs sysbench against every target in
alternating order, so that whatever else the shared machine is doing hits all targets alike.
Prints one table per test and writes every number to perf/results/<timestamp>.json.

    .venv/bin/python perf/bench.py --duration 20 --rounds 2 --threads 8
    .venv/bin/python perf/bench.py --targets haproxy,baton --baton-config-section routing.read_write_split=false

See perf/README.md for what each column means and how far to trust it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

PERF_DIR = Path(__file__).resolve().parent
REPO_ROOT = PERF_DIR.parent
# Run as a script: make the proxy package importable.
sys.path.insert(0, str(REPO_ROOT))

import pymysql  # noqa: E402
from haproxy import HAProxy, haproxy_version  # noqa: E402
from proc_stats import machine_sample, sample, total_cpu_seconds  # noqa: E402

from proxy.sandbox import ReplicationSandbox, free_ports, mariadb_version  # noqa: E402
from proxy.sandbox.baton_process import BatonProcess  # noqa: E402

SYSBENCH = "/usr/bin/sysbench"
RESULTS_DIR = PERF_DIR / "results"
TARGETS = ("direct", "haproxy", "baton")
TESTS = ("oltp_point_select", "oltp_read_only", "oltp_read_write")
USER = PASSWORD = "app"
DATABASE = "test"

# /work/shared/ANCHORS.md, "Measured on this project's machines": qps as a share of direct,
# 8 threads. None = not measured there.
REFERENCE: dict[str, dict[str, float | None]] = {
    "oltp_point_select": {"haproxy": 0.59, "proxysql": 0.45},
    "oltp_read_only": {"haproxy": None, "proxysql": None},
    "oltp_read_write": {"haproxy": 0.80, "proxysql": 0.74},
}
REFERENCE_CPU_US = {"haproxy": 13.0, "proxysql": 15.5}


# --- sysbench ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SysbenchResult:
    """What one `sysbench ... run` reports."""

    transactions: int
    tps: float
    queries: int
    qps: float
    errors: int  # "ignored errors": deadlocks and the like sysbench retried
    reconnects: int
    p95_ms: float
    seconds: float


_SYSBENCH_FIELDS = {
    "transactions": r"transactions:\s+(\d+)\s+\(([\d.]+) per sec",
    "queries": r"\n\s*queries:\s+(\d+)\s+\(([\d.]+) per sec",
    "errors": r"ignored errors:\s+(\d+)",
    "reconnects": r"reconnects:\s+(\d+)",
    "p95_ms": r"95th percentile:\s+([\d.]+)",
    "seconds": r"total time:\s+([\d.]+)s",
}


def parse_sysbench(output: str) -> SysbenchResult:
    """The figures of sysbench 1.0's final report; ValueError if the report is incomplete."""
    found: dict[str, tuple[str, ...]] = {}
    for name, pattern in _SYSBENCH_FIELDS.items():
        match = re.search(pattern, output)
        if match is None:
            raise ValueError(f"sysbench output has no {name!r} line")
        found[name] = match.groups()
    return SysbenchResult(
        transactions=int(found["transactions"][0]),
        tps=float(found["transactions"][1]),
        queries=int(found["queries"][0]),
        qps=float(found["queries"][1]),
        errors=int(found["errors"][0]),
        reconnects=int(found["reconnects"][0]),
        p95_ms=float(found["p95_ms"][0]),
        seconds=float(found["seconds"][0]),
    )


def sysbench_argv(test: str, port: int, args: argparse.Namespace, command: str) -> list[str]:
    return [
        SYSBENCH,
        test,
        "--mysql-host=127.0.0.1",
        f"--mysql-port={port}",
        f"--mysql-user={USER}",
        f"--mysql-password={PASSWORD}",
        f"--mysql-db={DATABASE}",
        f"--tables={args.tables}",
        f"--table-size={args.table_size}",
        f"--threads={args.threads}",
        f"--time={args.duration}",
        "--report-interval=0",
        f"--db-ps-mode={'auto' if args.ps else 'disable'}",
        command,
    ]


def sysbench_version() -> str:
    return subprocess.run([SYSBENCH, "--version"], capture_output=True, text=True).stdout.strip()


# --- targets -------------------------------------------------------------------------------------


class ProxyProcess(Protocol):
    """What HAProxy and BatonProcess have in common."""

    @property
    def pid(self) -> int: ...

    def start(self, timeout: float = ...) -> Any: ...

    def stop(self, timeout: float = ...) -> int | None: ...

    def is_running(self) -> bool: ...

    def log_text(self) -> str: ...


@dataclass(eq=False)
class Target:
    """Somewhere sysbench connects to; `proxy` is None for the server itself."""

    name: str
    port: int
    proxy: ProxyProcess | None = None
    disabled: str | None = None  # why this target is skipped from now on
    restarts: int = 0

    def pid(self) -> int | None:
        return self.proxy.pid if self.proxy is not None else None


def check_target(target: Target, timeout: float = 10) -> None:
    """Log in through the target and read a sysbench table: proves the path end to end
    before a whole run is spent on it (and fails with the server's own message)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = pymysql.connect(
                host="127.0.0.1", port=target.port, user=USER, password=PASSWORD,
                database=DATABASE, connect_timeout=5, read_timeout=10,
            )
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT COUNT(*) FROM sbtest1")
                    cur.fetchall()
                return
            finally:
                conn.close()
        except pymysql.err.MySQLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# --- config overrides ----------------------------------------------------------------------------


def parse_override(text: str) -> tuple[str, str, Any]:
    """"section.key=value" with value read as TOML (true, 42, "x"); a bare word is a string."""
    path, sep, raw = text.partition("=")
    section, dot, key = path.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise argparse.ArgumentTypeError(f"expected SECTION.KEY=VALUE, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key.strip(), value


def override_sections(overrides: list[tuple[str, str, Any]]) -> dict[str, dict[str, Any]]:
    sections: dict[str, dict[str, Any]] = {}
    for section, key, value in overrides:
        sections.setdefault(section, {})[key] = value
    return sections


# --- one run -------------------------------------------------------------------------------------


def queries_by_server(sandbox: ReplicationSandbox) -> dict[str, int]:
    """Statements each server has received from clients so far (Questions)."""
    counts = {}
    for inst in sandbox.instances:
        with contextlib.suppress(pymysql.err.MySQLError):
            counts[inst.name] = int(inst.status_variable("Questions") or 0)
    return counts


def run_sysbench(argv: list[str], timeout: float) -> tuple[int, str, float]:
    """(exit code, stdout+stderr, CPU seconds sysbench used). Killed on timeout or Ctrl-C."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        output += f"\n[bench] sysbench killed after {timeout:.0f}s"
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc.returncode, output, cpu


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, stamp: str) -> None:
        self.args = args
        self.workdir = workdir
        self.stamp = stamp
        self.sandbox = ReplicationSandbox(workdir / "sandbox", replicas=2)
        self.targets: list[Target] = []
        self.runs: list[dict[str, Any]] = []
        self.events: list[str] = []
        self.baton: BatonProcess | None = None
        self.haproxy: HAProxy | None = None
        self.baton_config = ""
        self.loadavg_at_start = os.getloadavg()

    # -- setup and teardown --

    def start(self) -> None:
        started = time.monotonic()
        self.sandbox.start()
        say(f"MariaDB {mariadb_version()}: master {self.sandbox.master.address}, replicas "
            + ", ".join(r.address for r in self.sandbox.replicas))
        self.prepare()
        for name in self.args.targets:
            target = self.make_target(name)
            self.targets.append(target)
            try:
                if target.proxy is not None:
                    target.proxy.start()
                check_target(target)
            except Exception as exc:  # a broken target is reported, the others still run
                target.disabled = f"did not start: {exc}"
                self.note(f"{target.name}: {target.disabled}")
        say(f"ready in {time.monotonic() - started:.1f}s: "
            + ", ".join(f"{t.name} :{t.port}" for t in self.targets))

    def make_target(self, name: str) -> Target:
        if name == "haproxy":
            self.haproxy = HAProxy(
                self.sandbox.master.address, self.workdir / "haproxy",
                threads=self.args.haproxy_threads,
            )
            return Target("haproxy", self.haproxy.port, self.haproxy)
        if name == "baton":
            (proxy_port,) = free_ports(1)
            # Admin and metrics off: the benchmark measures the query path only.
            self.baton_config = self.sandbox.config_toml(
                proxy_port, admin_port=0, metrics_port=0,
                **override_sections(self.args.baton_config_section),
            )
            self.baton = BatonProcess(self.baton_config, self.workdir / "baton")
            return Target("baton", proxy_port, self.baton)
        return Target("direct", self.sandbox.master.port)

    def prepare(self) -> None:
        say(f"sysbench prepare: {self.args.tables} tables x {self.args.table_size} rows on the master")
        argv = sysbench_argv("oltp_read_write", self.sandbox.master.port, self.args, "prepare")
        argv = [a for a in argv if not a.startswith(("--threads=", "--time="))]
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"sysbench prepare failed:\n{result.stdout}{result.stderr}")
        self.sandbox.wait_caught_up(timeout=120)

    def stop(self) -> None:
        for proc in (self.baton, self.haproxy):
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.stop()
        self.sandbox.stop()

    def save_logs(self) -> Path | None:
        """Baton's log next to the results: the first place to look when a figure is odd."""
        if self.baton is None:
            return None
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.stamp}.baton.log"
        path.write_text(self.baton.log_text())
        return path

    def note(self, message: str) -> None:
        self.events.append(message)
        say(message)

    # -- runs --

    def order(self, round_no: int) -> list[Target]:
        return self.targets if round_no % 2 == 0 else self.targets[::-1]

    def run_all(self) -> None:
        for test in self.args.tests:
            for round_no in range(self.args.rounds):
                for position, target in enumerate(self.order(round_no)):
                    record = self.run_one(test, round_no, position, target)
                    self.runs.append(record)
                    say(format_run(record))

    def ensure_running(self, target: Target) -> None:
        """A proxy that died in an earlier run is logged and restarted once per death."""
        if target.proxy is None or target.proxy.is_running() or target.disabled:
            return
        tail = target.proxy.log_text()[-4000:]
        self.note(f"{target.name} is not running (exit {target.proxy.stop()}); log tail:\n{tail}")
        target.restarts += 1
        if target.restarts > 2:
            target.disabled = "died three times"
            return
        target.proxy.start()
        check_target(target)

    def settle(self) -> None:
        """Let replicas apply what the previous run wrote, so that their catch-up does not
        eat into the next run's CPU."""
        try:
            self.sandbox.wait_caught_up(timeout=60)
        except TimeoutError as exc:
            self.note(f"replicas still behind before the next run: {exc}")
        time.sleep(self.args.pause)

    def run_one(self, test: str, round_no: int, position: int, target: Target) -> dict[str, Any]:
        record: dict[str, Any] = {
            "test": test, "round": round_no + 1, "position": position + 1,
            "target": target.name, "port": target.port, "started_at": time.time(),
            "result": None, "failure": None,
        }
        if not target.disabled:
            try:
                self.ensure_running(target)
            except Exception as exc:  # a restart that fails disables the target, not the bench
                target.disabled = f"restart failed: {exc}"
        if target.disabled:
            record["failure"] = f"skipped: {target.disabled}"
            return record
        self.settle()
        db_pids = [p for p in (i.pid for i in self.sandbox.instances) if p is not None]
        pid = target.pid()
        questions_before = queries_by_server(self.sandbox)
        machine_before = machine_sample()
        db_before = total_cpu_seconds(db_pids)
        proxy_before = sample(pid) if pid else None
        code, output, sysbench_cpu = run_sysbench(
            sysbench_argv(test, target.port, self.args, "run"), timeout=self.args.duration + 120
        )
        proxy_after = sample(pid) if pid and target.proxy and target.proxy.is_running() else None
        db_after = total_cpu_seconds(db_pids)
        machine_after = machine_sample()
        questions_after = queries_by_server(self.sandbox)

        record["sysbench_exit"] = code
        try:
            result = parse_sysbench(output)
            record["result"] = asdict(result)
        except ValueError as exc:
            result = None
            record["failure"] = f"{exc}; sysbench exit {code}"
        if code != 0:
            record["failure"] = f"sysbench exit {code}"
        if record["failure"]:
            record["sysbench_output"] = output[-4000:]
        if target.proxy is not None and not target.proxy.is_running():
            record["failure"] = (record["failure"] or "") + f"; {target.name} died during the run"
            record["proxy_log_tail"] = target.proxy.log_text()[-4000:]

        queries = result.queries if result else 0
        busy = machine_after.busy_seconds - machine_before.busy_seconds
        total = machine_after.total_seconds - machine_before.total_seconds
        db_cpu = db_after - db_before
        proxy_cpu = None
        if proxy_before and proxy_after:
            proxy_cpu = proxy_after.cpu_seconds - proxy_before.cpu_seconds
            record["proxy_user_s"] = proxy_after.user_seconds - proxy_before.user_seconds
            record["proxy_system_s"] = proxy_after.system_seconds - proxy_before.system_seconds
            record["proxy_rss_mb"] = proxy_after.rss_bytes / 2**20
            record["proxy_peak_rss_mb"] = proxy_after.peak_rss_bytes / 2**20
        record["proxy_cpu_s"] = proxy_cpu
        record["proxy_cpu_us_per_query"] = proxy_cpu / queries * 1e6 if proxy_cpu is not None and queries else None
        record["db_cpu_s"] = db_cpu
        record["db_cpu_us_per_query"] = db_cpu / queries * 1e6 if queries else None
        record["sysbench_cpu_s"] = sysbench_cpu
        record["machine_busy_pct"] = 100 * busy / total if total else None
        # CPU used on the machine by neither sysbench, MariaDB nor the proxy: other tenants.
        ours = sysbench_cpu + db_cpu + (proxy_cpu or 0)
        record["foreign_cpu_pct"] = 100 * max(busy - ours, 0) / total if total else None
        deltas = {
            name: questions_after[name] - questions_before[name]
            for name in questions_after if name in questions_before
        }
        record["statements_by_server"] = deltas
        master = self.sandbox.master.name
        record["master_share"] = deltas.get(master, 0) / sum(deltas.values()) if sum(deltas.values()) else None
        return record


# --- summary -------------------------------------------------------------------------------------


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _ok(runs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (r for r in runs if r["result"] and not r["failure"])


def summarize(runs: list[dict[str, Any]], tests: list[str], targets: list[str]) -> dict[str, Any]:
    """Per test and target: means over rounds. Ratios are paired within a round (the runs of
    one round are minutes apart, so they share the machine's mood) and then averaged."""
    summary: dict[str, Any] = {}
    for test in tests:
        by_round: dict[int, dict[str, dict[str, Any]]] = {}
        for r in _ok(runs):
            if r["test"] == test:
                by_round.setdefault(r["round"], {})[r["target"]] = r
        rows: dict[str, Any] = {}
        for target in targets:
            mine = [rnd[target] for rnd in by_round.values() if target in rnd]
            failures = [r for r in runs if r["test"] == test and r["target"] == target and r["failure"]]
            row: dict[str, Any] = {
                "rounds_ok": len(mine),
                "rounds_failed": len(failures),
                "failures": [r["failure"] for r in failures],
                "tps": _mean([r["result"]["tps"] for r in mine]),
                "qps": _mean([r["result"]["qps"] for r in mine]),
                "p95_ms": _mean([r["result"]["p95_ms"] for r in mine]),
                "errors": sum(r["result"]["errors"] for r in mine),
                "master_share": _mean([r["master_share"] for r in mine if r["master_share"] is not None]),
            }
            for base in ("direct", "haproxy"):
                row[f"vs_{base}"] = _mean([
                    rnd[target]["result"]["qps"] / rnd[base]["result"]["qps"]
                    for rnd in by_round.values()
                    if target in rnd and base in rnd and rnd[base]["result"]["qps"]
                ]) if target != base else None
            cpu_runs = [r for r in mine if r["proxy_cpu_s"] is not None]
            queries = sum(r["result"]["queries"] for r in cpu_runs)
            for key, field in (("cpu", "proxy_cpu_s"), ("user", "proxy_user_s"), ("system", "proxy_system_s")):
                row[f"proxy_{key}_us_per_query"] = (
                    sum(r[field] for r in cpu_runs) / queries * 1e6 if queries else None
                )
            db_queries = sum(r["result"]["queries"] for r in mine)
            row["db_cpu_us_per_query"] = (
                sum(r["db_cpu_s"] for r in mine) / db_queries * 1e6 if db_queries else None
            )
            row["proxy_peak_rss_mb"] = max((r.get("proxy_peak_rss_mb") or 0 for r in mine), default=None) or None
            rows[target] = row
        summary[test] = rows
    return summary


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def format_run(r: dict[str, Any]) -> str:
    head = f"  {r['test']:<18} round {r['round']} #{r['position']} {r['target']:<8}"
    if r["failure"] and not r["result"]:
        return f"{head} FAILED: {r['failure']}"
    res = r["result"]
    line = (
        f"{head} tps {res['tps']:>8.1f}  qps {res['qps']:>9.1f}  p95 {res['p95_ms']:>6.2f} ms"
        f"  err {res['errors']:>3}  proxy {_fmt(r['proxy_cpu_us_per_query'], '.1f', ' us/q'):>10}"
        f"  db {_fmt(r['db_cpu_us_per_query'], '.1f', ' us/q'):>10}"
        f"  on master {_fmt(r['master_share'] and 100 * r['master_share'], '.0f', '%'):>4}"
        f"  others {_fmt(r['foreign_cpu_pct'], '.0f', '%'):>4}"
    )
    return line + (f"  FAILED: {r['failure']}" if r["failure"] else "")


def format_table(test: str, rows: dict[str, Any], args: argparse.Namespace) -> str:
    ps = "prepared statements" if args.ps else "text protocol"
    lines = [
        f"{test}  ({args.threads} threads, {args.duration}s x {args.rounds} rounds, {ps})",
        f"  {'target':<8} {'tps':>9} {'qps':>10} {'p95 ms':>7} {'errors':>6} {'vs direct':>9} "
        f"{'vs HAProxy':>10} {'proxy CPU us/q':>14} {'(usr+sys)':>11} {'on master':>9} {'peak RSS MB':>11}",
    ]
    for target, row in rows.items():
        master = row["master_share"]
        split = (
            f"{row['proxy_user_us_per_query']:.0f}+{row['proxy_system_us_per_query']:.0f}"
            if row["proxy_user_us_per_query"] is not None else "-"
        )
        lines.append(
            f"  {target:<8} {_fmt(row['tps'], '.1f'):>9} {_fmt(row['qps'], '.1f'):>10} "
            f"{_fmt(row['p95_ms'], '.2f'):>7} {row['errors']:>6} {_fmt(row['vs_direct'], '.3f'):>9} "
            f"{_fmt(row['vs_haproxy'], '.3f'):>10} {_fmt(row['proxy_cpu_us_per_query'], '.1f'):>14} "
            f"{split:>11} "
            f"{_fmt(master and 100 * master, '.0f', '%'):>9} {_fmt(row['proxy_peak_rss_mb'], '.1f'):>11}"
        )
        if row["rounds_failed"]:
            lines.append(f"  {'':<8} {row['rounds_failed']} failed run(s): {'; '.join(row['failures'])}")
    ref = REFERENCE.get(test, {})
    if any(v is not None for v in ref.values()):
        proxysql_vs_haproxy = (
            ref["proxysql"] / ref["haproxy"] if ref["proxysql"] and ref["haproxy"] else None
        )
        lines.append(
            f"  reference (ANCHORS.md, another time window): qps vs direct HAProxy "
            f"{_fmt(ref['haproxy'], '.2f')}, ProxySQL {_fmt(ref['proxysql'], '.2f')} "
            f"(ProxySQL vs HAProxy {_fmt(proxysql_vs_haproxy, '.2f')}); CPU us/query HAProxy "
            f"~{REFERENCE_CPU_US['haproxy']:.0f}, ProxySQL ~{REFERENCE_CPU_US['proxysql']:.1f}"
        )
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------


def say(message: str) -> None:
    print(message, flush=True)


def _names(allowed: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}; got {text!r}")
        return names
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=20, help="seconds per sysbench run (default 20)")
    p.add_argument("--threads", type=int, default=8, help="sysbench threads (default 8)")
    p.add_argument("--rounds", type=int, default=2, help="rounds per test; the target order alternates (default 2)")
    p.add_argument("--tests", type=_names(TESTS), default=list(TESTS), help=f"comma-separated, from {','.join(TESTS)}")
    p.add_argument("--targets", type=_names(TARGETS), default=list(TARGETS), help=f"comma-separated, from {','.join(TARGETS)}")
    p.add_argument("--baton-config-section", metavar="SECTION.KEY=VALUE", type=parse_override,
                   action="append", default=[],
                   help="override Baton's config (repeatable), e.g. routing.read_write_split=false")
    p.add_argument("--ps", action="store_true", help="prepared statements (--db-ps-mode=auto)")
    p.add_argument("--tables", type=int, default=4, help="sysbench tables (default 4)")
    p.add_argument("--table-size", type=int, default=10000, help="rows per table (default 10000)")
    p.add_argument("--pause", type=float, default=1.0, help="seconds of rest before each run (default 1)")
    p.add_argument("--haproxy-threads", type=int, default=None, help="HAProxy nbthread (default: one per core)")
    args = p.parse_args(argv)
    if "direct" not in args.targets:
        say("note: without the direct target there is no 'vs direct' ratio")
    return args


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Teardown in `finally` on a kill too; SIGINT explicitly, as a shell that starts us in the
    # background leaves it ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_interrupt)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="baton-perf-") as tmp:
        bench = Bench(args, Path(tmp), stamp)
        try:
            bench.start()
            bench.run_all()
        except KeyboardInterrupt:
            interrupted = True
            say("interrupted: tearing down")
        finally:
            log_path = bench.save_logs()
            bench.stop()
    summary = summarize(bench.runs, args.tests, [t.name for t in bench.targets])
    for test in args.tests:
        say("")
        say(format_table(test, summary[test], args))
        say("  per run:")
        for record in bench.runs:
            if record["test"] == test:
                say(format_run(record))
    path = write_results(args, bench, summary, stamp, interrupted, log_path)
    say(f"\nresults: {path}" + (f"\nBaton log: {log_path}" if log_path else ""))
    failed = any(r["failure"] for r in bench.runs)
    return 130 if interrupted else (1 if failed else 0)


def write_results(
    args: argparse.Namespace, bench: Bench, summary: dict[str, Any], stamp: str,
    interrupted: bool, log_path: Path | None,
) -> Path:
    commit = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "proxy"], capture_output=True, text=True
    ).stdout.strip()
    document = {
        "started": stamp,
        "interrupted": interrupted,
        "args": {k: v for k, v in vars(args).items()},
        "environment": {
            "git_commit": commit,
            "proxy_dir_dirty": bool(dirty),
            "python": platform.python_version(),
            "mariadb": mariadb_version(),
            "haproxy": haproxy_version(),
            "sysbench": sysbench_version(),
            "cpus": os.cpu_count(),
            "loadavg_at_start": bench.loadavg_at_start,
            "loadavg_at_end": os.getloadavg(),
        },
        "baton_config": bench.baton_config,
        "baton_log": str(log_path) if log_path else None,
        "events": bench.events,
        "reference": {"qps_vs_direct": REFERENCE, "cpu_us_per_query": REFERENCE_CPU_US},
        "summary": summary,
        "runs": bench.runs,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{stamp}.json"
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
