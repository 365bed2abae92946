"""Baton's throughput and CPU cost next to a direct connection and HAProxy, measured with sysbench.

Starts a private MariaDB topology (1 master + 2 replicas), HAProxy in TCP mode in front of the
master and Baton in front of the topology, all on free loopback ports under a temp dir; loads
sysbench's tables once; then, for each test and round, runs sysbench against every target in
alternating order, so that whatever else the shared machine is doing hits all targets alike.
Prints one table per test and writes every number to perf/results/<timestamp>.json.

    .venv/bin/python -m perf.bench --duration 20 --rounds 2 --threads 8
    .venv/bin/python -m perf.bench --targets haproxy,baton --baton-config-section routing.read_write_split=false
    .venv/bin/python -m perf.bench --workers 1,2 --threads 8,32     # sweeps: [proxy] workers, clients

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
import socket
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

import pymysql

from perf.haproxy import HAProxy, haproxy_version
from perf.proc_stats import machine_sample, total_cpu_seconds, tree_sample, tree_usage
from proxy.sandbox import ReplicationSandbox, free_ports, mariadb_version
from proxy.sandbox.baton_process import BatonProcess
from proxy.sandbox.processes import spawn

PERF_DIR = Path(__file__).resolve().parent
REPO_ROOT = PERF_DIR.parent

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
    # From sysbench's latency histogram (--histogram=on), per event (transaction); None when
    # the output has no histogram.
    p50_ms: float | None = None
    p99_ms: float | None = None


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
    percentiles = histogram_percentiles(output, (50, 99))
    return SysbenchResult(
        p50_ms=percentiles.get(50),
        p99_ms=percentiles.get(99),
        transactions=int(found["transactions"][0]),
        tps=float(found["transactions"][1]),
        queries=int(found["queries"][0]),
        qps=float(found["queries"][1]),
        errors=int(found["errors"][0]),
        reconnects=int(found["reconnects"][0]),
        p95_ms=float(found["p95_ms"][0]),
        seconds=float(found["seconds"][0]),
    )


_HISTOGRAM_ROW = re.compile(r"^\s*([\d.]+)\s*\|[*\s]*\s(\d+)\s*$", re.M)


def histogram_percentiles(output: str, wanted: tuple[int, ...]) -> dict[int, float]:
    """Percentiles (ms) from sysbench's "Latency histogram" (value | stars count rows): the
    smallest value with at least p% of the events at or below it. {} without a histogram."""
    start = output.find("Latency histogram")
    if start < 0:
        return {}
    rows = [(float(v), int(c)) for v, c in _HISTOGRAM_ROW.findall(output[start:])]
    total = sum(c for _, c in rows)
    if not total:
        return {}
    found: dict[int, float] = {}
    seen = 0
    for value, count in sorted(rows):
        seen += count
        for p in wanted:
            if p not in found and seen * 100 >= p * total:
                found[p] = value
    return found


def sysbench_argv(
    test: str, port: int, args: argparse.Namespace, command: str, threads: int = 8
) -> list[str]:
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
        f"--threads={threads}",
        f"--time={args.duration}",
        "--report-interval=0",
        "--histogram=on",
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


class TreeBaton(BatonProcess):
    """Baton run from another source tree: ``python -m proxy`` with DIR as the working
    directory imports DIR/proxy (e.g. ``git archive main | tar -x -C DIR``)."""

    def __init__(self, config_text: str, workdir: Path, root: Path, prefix: list[str] | None = None,
                 module: str = "proxy") -> None:
        super().__init__(config_text, workdir)
        self.root = root
        self.prefix = prefix or []
        self.module = module

    def start(self, timeout: float = 20) -> BatonProcess:
        argv = [*self.prefix, sys.executable, "-m", self.module, "run", "--config", str(self.config_path)]
        self.process = spawn(argv, log_path=self.log_path, cwd=self.root,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.proxy_port or 0), timeout=0.5):
                    return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"Baton exited while starting:\n{self.log_text()}") from None
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"Baton did not start:\n{self.log_text()}") from None
                time.sleep(0.1)


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
        self.baton: BatonProcess | None = None  # the first Baton (its log is saved)
        self.batons: dict[str, BatonProcess] = {}  # target name -> process
        self.baton_configs: dict[str, str] = {}
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
        for name in self.target_names():
            target = self.make_target(name)
            self.targets.append(target)
            try:
                if target.proxy is not None:
                    target.proxy.start()
                check_target(target)
            except Exception as exc:  # a broken target is reported, the others still run
                target.disabled = f"did not start: {exc}"
                workers = _workers_of(name)
                if workers is not None and target.proxy is not None and "workers" in target.proxy.log_text():
                    target.disabled = (
                        f"Baton rejected [proxy] workers = {workers} (this build may not have "
                        f"the key yet): {_config_error(target.proxy.log_text())}"
                    )
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
        if name.startswith("baton"):
            (proxy_port,) = free_ports(1)
            overrides = list(self.args.baton_config_section)
            workers = _workers_of(name)
            if workers is not None:
                overrides.append(("proxy", "workers", workers))
            # Admin and metrics off: the benchmark measures the query path only.
            config = self.sandbox.config_toml(
                proxy_port, admin_port=0, metrics_port=0, **override_sections(overrides)
            )
            self.baton_config = self.baton_config or config
            self.baton_configs[name] = config
            baton = (
                TreeBaton(config, self.workdir / name, self.args.compare_tree.resolve())
                if name == "baton-ref" else BatonProcess(config, self.workdir / name)
            )
            self.batons[name] = baton
            self.baton = self.baton or baton
            return Target(name, proxy_port, baton)
        return Target("direct", self.sandbox.master.port)

    def target_names(self) -> list[str]:
        """--targets with "baton" expanded to one Baton per --workers value."""
        names: list[str] = []
        for name in self.args.targets:
            if name == "baton" and self.args.workers:
                names.extend(f"baton-w{n}" for n in self.args.workers)
            else:
                names.append(name)
            if name == "baton" and self.args.compare_tree:
                names.append("baton-ref")
        return names

    def prepare(self) -> None:
        say(f"sysbench prepare: {self.args.tables} tables x {self.args.table_size} rows on the master")
        argv = sysbench_argv("oltp_read_write", self.sandbox.master.port, self.args, "prepare")
        argv = [a for a in argv if not a.startswith(("--threads=", "--time="))]
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"sysbench prepare failed:\n{result.stdout}{result.stderr}")
        self.sandbox.wait_caught_up(timeout=120)

    def stop(self) -> None:
        for proc in (*self.batons.values(), self.haproxy):
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.stop()
        self.sandbox.stop()

    def save_logs(self) -> Path | None:
        """Baton's log next to the results: the first place to look when a figure is odd
        (one file; with several Batons, each log under a header)."""
        if not self.batons:
            return None
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.stamp}.baton.log"
        if len(self.batons) == 1:
            path.write_text(next(iter(self.batons.values())).log_text())
        else:
            path.write_text("".join(
                f"===== {name} =====\n{proc.log_text()}\n" for name, proc in self.batons.items()
            ))
        return path

    def note(self, message: str) -> None:
        self.events.append(message)
        say(message)

    # -- runs --

    def order(self, round_no: int) -> list[Target]:
        return self.targets if round_no % 2 == 0 else self.targets[::-1]

    def run_all(self) -> None:
        for test in self.args.tests:
            for threads in self.args.threads:
                for round_no in range(self.args.rounds):
                    for position, target in enumerate(self.order(round_no)):
                        record = self.run_one(test, round_no, position, target, threads)
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

    def run_one(
        self, test: str, round_no: int, position: int, target: Target, threads: int = 8
    ) -> dict[str, Any]:
        record: dict[str, Any] = {
            "test": test, "threads": threads, "round": round_no + 1, "position": position + 1,
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
        proxy_before = tree_sample(pid) if pid else None
        code, output, sysbench_cpu = run_sysbench(
            sysbench_argv(test, target.port, self.args, "run", threads),
            timeout=self.args.duration + 120,
        )
        proxy_after = (
            tree_sample(pid) if pid and target.proxy and target.proxy.is_running() else None
        )
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
            # The proxy's whole process tree: a Baton with workers is a parent and children.
            usage = tree_usage(proxy_before, proxy_after)
            proxy_cpu = usage.cpu_seconds
            record["proxy_user_s"] = usage.user_seconds
            record["proxy_system_s"] = usage.system_seconds
            record["proxy_rss_mb"] = usage.rss_bytes / 2**20
            record["proxy_peak_rss_mb"] = usage.peak_rss_bytes / 2**20
            record["proxy_processes"] = len(proxy_after)
            # pid -> us per statement; the first is the process we started (the parent)
            record["proxy_cpu_us_per_query_by_process"] = {
                str(p): (cpu / queries * 1e6 if queries else None)
                for p, cpu in usage.per_process.items()
            }
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


def section(test: str, threads: int) -> str:
    """The summary's key for one test at one client thread count."""
    return f"{test}@{threads}"


def summarize(
    runs: list[dict[str, Any]], tests: list[str], targets: list[str], threads_list: list[int] | None = None
) -> dict[str, Any]:
    """Per test, thread count and target: means over rounds. Ratios are paired within a round
    (the runs of one round are minutes apart, so they share the machine's mood) and then
    averaged."""
    summary: dict[str, Any] = {}
    for test, threads in ((t, n) for t in tests for n in (threads_list or [8])):
        by_round: dict[int, dict[str, dict[str, Any]]] = {}
        here = [r for r in runs if r["test"] == test and r.get("threads", 8) == threads]
        for r in _ok(here):
            by_round.setdefault(r["round"], {})[r["target"]] = r
        rows: dict[str, Any] = {}
        for target in targets:
            mine = [rnd[target] for rnd in by_round.values() if target in rnd]
            failures = [r for r in here if r["target"] == target and r["failure"]]
            row: dict[str, Any] = {
                "rounds_ok": len(mine),
                "rounds_failed": len(failures),
                "failures": [r["failure"] for r in failures],
                "tps": _mean([r["result"]["tps"] for r in mine]),
                "qps": _mean([r["result"]["qps"] for r in mine]),
                "p95_ms": _mean([r["result"]["p95_ms"] for r in mine]),
                "p50_ms": _mean([r["result"]["p50_ms"] for r in mine if r["result"].get("p50_ms") is not None]),
                "p99_ms": _mean([r["result"]["p99_ms"] for r in mine if r["result"].get("p99_ms") is not None]),
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
            row["proxy_cpu_us_per_query_by_process"] = _per_process(cpu_runs)
            rows[target] = row
        summary[section(test, threads)] = rows
    return summary


def _per_process(cpu_runs: list[dict[str, Any]]) -> list[float] | None:
    """CPU us per statement of each process of the proxy's tree, the parent first and then
    its children by pid, weighted over runs by their statements; None for one process."""
    if not cpu_runs or all(len(r.get("proxy_cpu_us_per_query_by_process") or {}) <= 1 for r in cpu_runs):
        return None
    width = max(len(r.get("proxy_cpu_us_per_query_by_process") or {}) for r in cpu_runs)
    sums = [0.0] * width
    queries = 0
    for r in cpu_runs:
        by_pid = r.get("proxy_cpu_us_per_query_by_process") or {}
        pids = list(by_pid)
        ordered = pids[:1] + sorted(pids[1:], key=int)
        n = r["result"]["queries"]
        queries += n
        for i, pid in enumerate(ordered):
            sums[i] += (by_pid[pid] or 0.0) * n
    return [v / queries for v in sums] if queries else None


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def format_run(r: dict[str, Any]) -> str:
    head = f"  {r['test']:<18} {r.get('threads', 8):>3}t round {r['round']} #{r['position']} {r['target']:<8}"
    if r["failure"] and not r["result"]:
        return f"{head} FAILED: {r['failure']}"
    res = r["result"]
    line = (
        f"{head} tps {res['tps']:>8.1f}  qps {res['qps']:>9.1f}  p50/95/99 "
        f"{_fmt(res.get('p50_ms'), '.2f')}/{res['p95_ms']:.2f}/{_fmt(res.get('p99_ms'), '.2f')} ms"
        f"  err {res['errors']:>3}  proxy {_fmt(r['proxy_cpu_us_per_query'], '.1f', ' us/q'):>10}"
        f"  db {_fmt(r['db_cpu_us_per_query'], '.1f', ' us/q'):>10}"
        f"  on master {_fmt(r['master_share'] and 100 * r['master_share'], '.0f', '%'):>4}"
        f"  others {_fmt(r['foreign_cpu_pct'], '.0f', '%'):>4}"
    )
    by_process = r.get("proxy_cpu_us_per_query_by_process") or {}
    if len(by_process) > 1:
        line += "  (per process " + " + ".join(_fmt(v, ".1f") for v in by_process.values()) + ")"
    return line + (f"  FAILED: {r['failure']}" if r["failure"] else "")


def format_table(test: str, rows: dict[str, Any], args: argparse.Namespace, threads: int = 8) -> str:
    ps = "prepared statements" if args.ps else "text protocol"
    lines = [
        f"{test}  ({threads} threads, {args.duration}s x {args.rounds} rounds, {ps})",
        f"  {'target':<9} {'tps':>9} {'qps':>10} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>6} "
        f"{'vs direct':>9} {'vs HAProxy':>10} {'proxy CPU us/q':>14} {'(usr+sys)':>11} {'on master':>9} "
        f"{'peak RSS MB':>11}",
    ]
    for target, row in rows.items():
        master = row["master_share"]
        split = (
            f"{row['proxy_user_us_per_query']:.0f}+{row['proxy_system_us_per_query']:.0f}"
            if row["proxy_user_us_per_query"] is not None else "-"
        )
        lines.append(
            f"  {target:<9} {_fmt(row['tps'], '.1f'):>9} {_fmt(row['qps'], '.1f'):>10} "
            f"{_fmt(row['p50_ms'], '.2f'):>7} {_fmt(row['p95_ms'], '.2f'):>7} {_fmt(row['p99_ms'], '.2f'):>7} "
            f"{row['errors']:>6} {_fmt(row['vs_direct'], '.3f'):>9} "
            f"{_fmt(row['vs_haproxy'], '.3f'):>10} {_fmt(row['proxy_cpu_us_per_query'], '.1f'):>14} "
            f"{split:>11} "
            f"{_fmt(master and 100 * master, '.0f', '%'):>9} {_fmt(row['proxy_peak_rss_mb'], '.1f'):>11}"
        )
        if row.get("proxy_cpu_us_per_query_by_process"):
            lines.append(
                f"  {'':<9} CPU us/q per process (parent, then workers): "
                + " + ".join(f"{v:.1f}" for v in row["proxy_cpu_us_per_query_by_process"])
            )
        if row["rounds_failed"]:
            lines.append(f"  {'':<9} {row['rounds_failed']} failed run(s): {'; '.join(row['failures'])}")
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


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers like 8,32; got {text!r}")
    return values


def _workers_of(target: str) -> int | None:
    """N of a "baton-wN" target (one of a --workers sweep); None for a plain "baton"."""
    prefix = "baton-w"
    return int(target[len(prefix):]) if target.startswith(prefix) else None


def _config_error(log: str) -> str:
    """The line of Baton's log that names the problem (a config error names file and key)."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if "workers" in line:
            return line[-300:].lstrip(": ")
    return lines[-1][-300:] if lines else "(empty log)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=20, help="seconds per sysbench run (default 20)")
    p.add_argument("--threads", type=_ints, default=[8],
                   help="sysbench client threads, comma-separated: one sweep step each (default 8)")
    p.add_argument("--workers", type=_ints, default=None,
                   help="run one Baton per value with [proxy] workers = N, e.g. 1,2 (default: the "
                        "key is not set, Baton's own default applies)")
    p.add_argument("--rounds", type=int, default=2, help="rounds per test; the target order alternates (default 2)")
    p.add_argument("--tests", type=_names(TESTS), default=list(TESTS), help=f"comma-separated, from {','.join(TESTS)}")
    p.add_argument("--targets", type=_names(TARGETS), default=list(TARGETS), help=f"comma-separated, from {','.join(TARGETS)}")
    p.add_argument("--baton-config-section", metavar="SECTION.KEY=VALUE", type=parse_override,
                   action="append", default=[],
                   help="override Baton's config (repeatable), e.g. routing.read_write_split=false")
    p.add_argument("--compare-tree", metavar="DIR", type=Path, default=None,
                   help="also run target baton-ref: Baton from DIR/proxy (e.g. `git archive main | "
                        "tar -x -C DIR`), to compare two versions in one run")
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
    summary = summarize(bench.runs, args.tests, [t.name for t in bench.targets], args.threads)
    for test in args.tests:
        for threads in args.threads:
            say("")
            say(format_table(test, summary[section(test, threads)], args, threads))
            say("  per run:")
            for record in bench.runs:
                if record["test"] == test and record.get("threads", 8) == threads:
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
        "baton_configs": bench.baton_configs,
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
