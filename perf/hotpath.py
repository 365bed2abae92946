"""Baton's own CPU per statement on the hot path, measured so that two commits can be compared
on a busy shared machine.

Starts a private MariaDB topology (master + 2 replicas) and one Baton process on free loopback
ports, loads one small sysbench table, then runs sysbench with a fixed number of events (not a
fixed time) against Baton, several times, and reads Baton's CPU time from /proc before and
after each run. The figure that matters is Baton's *user* CPU per statement: it counts only
the work Baton's Python does (the kernel's share per statement is the same whatever the Python
does), and it does not depend on how much CPU the other tenants of the machine leave free.

    .venv/bin/python -m perf.hotpath                          # point_select + read_write, 3 runs each
    .venv/bin/python -m perf.hotpath --tests oltp_point_select --events 40000 --repeat 5
    .venv/bin/python -m perf.hotpath --profile /tmp/baton.prof   # cProfile of the measured runs
    .venv/bin/python -m perf.hotpath --compare /tmp/base          # A/B: this tree vs another
    .venv/bin/python -m perf.hotpath --callgrind --events 3000   # instructions per statement
    .venv/bin/python -m perf.hotpath --floor                      # and the least a Python proxy costs

``--compare DIR`` starts a second Baton from DIR's ``proxy/`` (e.g. ``git archive main | tar -x
-C DIR``) beside this tree's, and alternates the runs between the two, so that both see the
same machine: the ratio of their medians is the figure to trust on a shared host.

``--floor`` also runs ``perf/floor_proxy.py`` (bytes across unread, one backend connection per
client, uvloop) in the same alternation: its user CPU per statement is what any Python proxy
pays for its callbacks and writes, so Baton's minus the floor's is what Baton's own work costs.

``--callgrind`` runs Baton under ``valgrind --tool=callgrind`` with instrumentation switched on
only for the measured runs (``callgrind_control``) and reports instructions per statement.
Baton's monitor and timers run on wall time while valgrind slows Baton ~50x, so their share
swells and the totals move between identical runs (25% seen): use it for a profile
(``callgrind_annotate``), and ``--compare`` for figures. ``--profile`` runs Baton with cProfile switched on (SIGUSR2) for
the measured runs only and writes pstats to the given file, plus the top functions.

Not a test; figures go to stdout (and ``--json PATH``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from perf.bench import (
    DATABASE,
    PASSWORD,
    SYSBENCH,
    USER,
    TreeBaton,
    override_sections,
    parse_override,
    parse_sysbench,
)
from proxy.sandbox import ReplicationSandbox, free_ports
from proxy.sandbox.baton_process import REPO_ROOT, BatonProcess

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Statements per sysbench event (transaction) of each test, to turn --events into a count
# of statements of about the same size for every test.
_STATEMENTS_PER_EVENT = {"oltp_point_select": 1, "oltp_read_only": 16, "oltp_read_write": 18}


@dataclass(frozen=True, slots=True)
class CpuSample:
    user: float  # seconds (clock ticks)
    system: float
    run_ns: int  # /proc/PID/schedstat: time on a CPU, ns (user + system, fine-grained)


def cpu_sample(pid: int) -> CpuSample:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    run_ns = int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    return CpuSample(int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS, run_ns)


@dataclass(frozen=True, slots=True)
class Run:
    test: str
    statements: int
    seconds: float
    user_us: float  # per statement
    system_us: float
    total_us: float  # from schedstat
    instructions: float | None  # per statement, --callgrind only


def sysbench(test: str, port: int, threads: int, events: int, table_size: int, command: str = "run") -> str:
    argv = [
        SYSBENCH, test, "--mysql-host=127.0.0.1", f"--mysql-port={port}", f"--mysql-user={USER}",
        f"--mysql-password={PASSWORD}", f"--mysql-db={DATABASE}", "--tables=1",
        f"--table-size={table_size}", "--db-ps-mode=disable",
    ]
    if command == "run":
        argv += [f"--threads={threads}", f"--events={events}", "--time=0", "--report-interval=0"]
    argv.append(command)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"sysbench {test} {command} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def callgrind_control(*args: str) -> str:
    return subprocess.run(["callgrind_control", *args], capture_output=True, text=True, timeout=600).stdout


def callgrind_total(out_dir: Path, pid: int) -> int:
    """Instructions in the newest dump of pid (``totals:`` or ``summary:`` line)."""
    dumps = sorted(out_dir.glob(f"callgrind.out.{pid}*"), key=lambda p: p.stat().st_mtime)
    for path in reversed(dumps):
        text = path.read_text(errors="replace")
        m = re.search(r"^(?:totals|summary):\s+(\d+)", text, re.M)
        if m:
            return int(m.group(1))
    raise RuntimeError(f"no callgrind dump for {pid} in {out_dir}")


def measure(args: argparse.Namespace, baton: BatonProcess, port: int, test: str, out_dir: Path) -> Run:
    events = max(1, args.events // _STATEMENTS_PER_EVENT[test])
    pid = baton.pid
    if args.callgrind:
        callgrind_control("-z", str(pid))
        callgrind_control("-i", "on", str(pid))
    elif args.profile:
        os.kill(pid, signal.SIGUSR2)  # profiler on
    before = cpu_sample(pid)
    started = time.monotonic()
    output = sysbench(test, port, args.threads, events, args.table_size)
    seconds = time.monotonic() - started
    after = cpu_sample(pid)
    instructions = None
    result = parse_sysbench(output)
    if args.callgrind:
        callgrind_control("-d", str(pid))
        callgrind_control("-i", "off", str(pid))
        instructions = callgrind_total(out_dir, pid) / result.queries
    elif args.profile:
        os.kill(pid, signal.SIGUSR2)  # profiler off (stats kept)
    n = result.queries
    return Run(
        test=test, statements=n, seconds=seconds,
        user_us=(after.user - before.user) / n * 1e6,
        system_us=(after.system - before.system) / n * 1e6,
        total_us=(after.run_ns - before.run_ns) / n / 1e3,
        instructions=instructions,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tests", default="oltp_point_select,oltp_read_write")
    p.add_argument("--events", type=int, default=30000, help="statements per run (about; default 30000)")
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3, help="runs per test (default 3)")
    p.add_argument("--table-size", type=int, default=10000)
    p.add_argument("--profile", metavar="PATH", help="cProfile the measured runs into PATH (pstats)")
    p.add_argument("--callgrind", action="store_true", help="instructions per statement (valgrind)")
    p.add_argument("--json", metavar="PATH", help="write the runs as JSON")
    p.add_argument("--compare", metavar="DIR", type=Path,
                   help="also run a Baton from DIR's proxy/ and alternate runs (A/B)")
    p.add_argument("--floor", action="store_true",
                   help="also run perf/floor_proxy.py, the least a Python proxy costs")
    p.add_argument("--baton-config-section", metavar="SECTION.KEY=VALUE", type=parse_override,
                   action="append", default=[])
    args = p.parse_args(argv)
    tests = [t.strip() for t in args.tests.split(",") if t.strip()]
    unknown = [t for t in tests if t not in _STATEMENTS_PER_EVENT]
    if unknown:
        p.error(f"unknown tests {unknown}")
    if args.callgrind and shutil.which("valgrind") is None:
        p.error("--callgrind needs valgrind")
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda s, f: (_ for _ in ()).throw(KeyboardInterrupt()))
    runs: list[tuple[str, Run]] = []
    with tempfile.TemporaryDirectory(prefix="baton-hotpath-") as tmp:
        workdir = Path(tmp)
        sandbox = ReplicationSandbox(workdir / "sandbox", replicas=2)
        batons: list[tuple[str, TreeBaton, int]] = []
        try:
            sandbox.start()
            sysbench("oltp_read_write", sandbox.master.port, 1, 0, args.table_size, "prepare")
            sandbox.wait_caught_up(timeout=120)
            prefix: list[str] = []
            module = "proxy"
            if args.callgrind:
                prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                          f"--callgrind-out-file={workdir}/callgrind.out.%p"]
            elif args.profile:
                module = "perf._profiled"
            if args.profile:
                os.environ["BATON_PROFILE_OUT"] = str(Path(args.profile).resolve())
            roots = [("this", REPO_ROOT, module)]
            if args.compare:
                roots.append(("compare", args.compare.resolve(), module))
            if args.floor:
                roots.append(("floor", REPO_ROOT, "perf.floor_proxy"))
            for label, root, module in roots:
                (port,) = free_ports(1)
                config = sandbox.config_toml(port, admin_port=0, metrics_port=0,
                                             **override_sections(args.baton_config_section))
                baton = TreeBaton(config, workdir / f"baton-{label}", root, prefix, module)
                batons.append((label, baton, port))
                baton.start(timeout=300 if args.callgrind else 20)
                # Warm up: connections to every backend, the interpreter's caches.
                warm = max(200, args.events // 20) if not args.callgrind else 200
                for test in tests:
                    sysbench(test, port, args.threads, max(1, warm // _STATEMENTS_PER_EVENT[test]),
                             args.table_size)
            for test in tests:
                for i in range(args.repeat):
                    for label, baton, port in batons if i % 2 == 0 else batons[::-1]:
                        sandbox.wait_caught_up(timeout=60)
                        run = measure(args, baton, port, test, workdir)
                        runs.append((label, run))
                        ins = f"  {run.instructions:,.0f} instr/stmt" if run.instructions else ""
                        print(f"  {label:<8} {test:<18} {run.statements:>7} stmts {run.seconds:6.1f}s"
                              f"  user {run.user_us:5.1f}  sys {run.system_us:5.1f}"
                              f"  total {run.total_us:5.1f} us/stmt{ins}", flush=True)
        finally:
            for _, baton, _ in batons:
                baton.stop(timeout=60)
            sandbox.stop()
    print()
    summary: dict[str, Any] = {}
    for test, (label, _, _) in ((t, b) for t in tests for b in batons):
        mine = [r for lbl, r in runs if r.test == test and lbl == label]
        if not mine:
            continue
        row = {
            "user_us_median": statistics.median(r.user_us for r in mine),
            "user_us_min": min(r.user_us for r in mine),
            "total_us_median": statistics.median(r.total_us for r in mine),
            "total_us_min": min(r.total_us for r in mine),
        }
        if all(r.instructions for r in mine):
            row["instructions_median"] = statistics.median(r.instructions or 0 for r in mine)
        summary[f"{label}:{test}"] = row
        ins = f"  instr/stmt {row['instructions_median']:,.0f}" if "instructions_median" in row else ""
        print(f"{label:<8} {test:<18} user us/stmt median {row['user_us_median']:5.1f} (min {row['user_us_min']:5.1f})"
              f"  user+sys median {row['total_us_median']:5.1f} (min {row['total_us_min']:5.1f}){ins}")
    if args.compare:
        for test in tests:
            a, b = summary.get(f"this:{test}"), summary.get(f"compare:{test}")
            if a and b:
                print(f"{test}: this / compare, user us/stmt {a['user_us_median'] / b['user_us_median']:.3f}"
                      f", user+sys {a['total_us_median'] / b['total_us_median']:.3f}")
    if args.floor:
        for test in tests:
            a, f = summary.get(f"this:{test}"), summary.get(f"floor:{test}")
            if a and f:
                print(f"{test}: Baton's own work (this - floor), user us/stmt "
                      f"{a['user_us_median'] - f['user_us_median']:.1f}; this / floor, user+sys "
                      f"{a['total_us_median'] / f['total_us_median']:.3f}")
    if args.profile:
        import pstats

        print(f"\nprofile: {args.profile}")
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(30)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": [{"baton": lbl, **asdict(r)} for lbl, r in runs],
                                               "summary": summary}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
