"""Crash drill: kill -9 the master under write load and measure what clients see.

Per round: a fresh GTID topology (semi-sync on by default, so an acknowledged write is on a
replica before the client hears OK), Baton in front with ``failover.mode = "auto"``, N writer
threads doing autocommit INSERTs through Baton and recording every acknowledged id. Then
``kill -9`` the master and measure:

* time from the kill to the first successful write through Baton,
* client connections to Baton dropped (should be 0),
* client errors, by code (only statements in flight at the kill may fail, with 9103),
* acknowledged ids missing on the new master (lost writes; must be 0 with semi-sync),
* rows written to the old master after it is restarted (split-brain writes; must be 0),
* Baton's own failover timeline (SHOW FAILOVERS on the admin port).

Run: ``./run perf failover_drill --rounds 10`` (``--workers 2``: Baton with two worker processes).
The test suite runs it with fewer rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pymysql

from proxy.sandbox import ReplicationSandbox, free_port
from proxy.sandbox.baton_process import BatonProcess, admin_rows


@dataclass
class Writer:
    """One application thread: a single long-lived connection, autocommit INSERTs."""

    index: int
    port: int
    acked: list[int] = field(default_factory=list)
    errors: dict[int, int] = field(default_factory=dict)
    ok_times: list[float] = field(default_factory=list)
    dropped: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        conn = pymysql.connect(host="127.0.0.1", port=self.port, user="app", password="app",
                               database="drill", autocommit=True, connect_timeout=5, read_timeout=30)
        seq = 0
        while not self.stop.is_set():
            seq += 1
            row_id = self.index * 10_000_000 + seq
            try:
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO t (id, w) VALUES (%s, %s)", (row_id, self.index))
                self.acked.append(row_id)
                self.ok_times.append(time.monotonic())
            except pymysql.err.OperationalError as exc:
                code = exc.args[0]
                self.errors[code] = self.errors.get(code, 0) + 1
                if code in (2006, 2013, 2003):  # the connection to Baton itself broke
                    self.dropped += 1
                    try:
                        conn = pymysql.connect(host="127.0.0.1", port=self.port, user="app",
                                               password="app", database="drill", autocommit=True)
                    except pymysql.err.OperationalError:
                        time.sleep(0.05)
            except pymysql.err.MySQLError as exc:
                code = exc.args[0]
                self.errors[code] = self.errors.get(code, 0) + 1
        conn.close()


@dataclass
class RoundResult:
    first_write_s: float | None
    dropped: int
    errors: dict[int, int]
    acked: int
    lost: int
    split_brain_rows: int
    new_master: str | None
    timeline: list[dict[str, object]]




def one_round(base: Path, writers: int, semi_sync: bool, settle_s: float, echo=print,
              workers: int = 1) -> RoundResult:
    sb = ReplicationSandbox(base / "sb", replicas=2, semi_sync=semi_sync).start()
    baton = None
    try:
        sb.master.sql("CREATE DATABASE IF NOT EXISTS drill")
        sb.master.sql("CREATE TABLE drill.t (id BIGINT PRIMARY KEY, w INT, at TIMESTAMP(6) DEFAULT NOW(6))")
        sb.wait_caught_up()
        port, admin = free_port(), free_port()
        baton = BatonProcess(sb.config_toml(port, admin, failover={"mode": "auto", "min_interval_s": 0},
                                            monitor={"interval_ms": 250}, proxy={"workers": workers}),
                             workdir=base / "baton")
        baton.start()
        threads = []
        ws = [Writer(i, port) for i in range(writers)]
        for w in ws:
            t = threading.Thread(target=w.run, daemon=True)
            t.start()
            threads.append(t)
        time.sleep(2.0)
        old = sb.master
        old.kill()
        killed_at = time.monotonic()  # after the kill returns: acks of the dying master don't count
        time.sleep(settle_s)
        for w in ws:
            w.stop.set()
        for t in threads:
            t.join(timeout=40)
        after = [t for w in ws for t in w.ok_times if t > killed_at]
        first = min(after) - killed_at if after else None
        rows = admin_rows(baton, "SHOW BACKENDS")
        new_master = next((r["name"] for r in rows if r.get("role") == "master"), None)
        acked = [i for w in ws for i in w.acked]
        lost = -1
        if new_master:
            inst = sb.instance(str(new_master))
            present = {r[0] for r in inst.sql("SELECT id FROM drill.t")}
            lost = sum(1 for i in acked if i not in present)
        # The old master comes back writable: Baton must fence it and never write to it.
        old.start()
        before = old.sql("SELECT COUNT(*) FROM drill.t")[0][0]
        stop = threading.Event()
        w2 = Writer(99, port, stop=stop)
        t2 = threading.Thread(target=w2.run, daemon=True)
        t2.start()
        time.sleep(3.0)
        stop.set()
        t2.join(timeout=20)
        after_rows = old.sql("SELECT COUNT(*) FROM drill.t WHERE w = 99")[0][0]
        timeline = admin_rows(baton, "SHOW FAILOVERS")
        errors: dict[int, int] = {}
        for w in ws:
            for code, n in w.errors.items():
                errors[code] = errors.get(code, 0) + n
        echo(f"  killed {old.name}; first write after {first if first is None else round(first, 3)} s; "
             f"new master {new_master}; errors {errors}; dropped {sum(w.dropped for w in ws)}; "
             f"acked {len(acked)} lost {lost}; old master rows before/after restart {before}/{after_rows}")
        return RoundResult(first, sum(w.dropped for w in ws), errors, len(acked), lost,
                           int(after_rows), str(new_master) if new_master else None, timeline)
    finally:
        if baton is not None:
            baton.stop()
        sb.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--writers", type=int, default=16)
    ap.add_argument("--no-semi-sync", action="store_true")
    ap.add_argument("--settle", type=float, default=6.0, help="seconds of load after the kill")
    ap.add_argument("--workers", type=int, default=1, help="Baton's [proxy] workers (default 1)")
    args = ap.parse_args(argv)
    results = []
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}")
        with tempfile.TemporaryDirectory(prefix="baton-drill-") as tmp:
            results.append(one_round(Path(tmp), args.writers, not args.no_semi_sync, args.settle,
                                     workers=args.workers))
    firsts = [r.first_write_s for r in results if r.first_write_s is not None]
    print()
    print(f"{'metric':<36}{'value':>14}")
    print(f"{'rounds':<36}{len(results):>14}")
    print(f"{'Baton workers':<36}{args.workers:>14}")
    if firsts:
        print(f"{'first write after kill, p50 (s)':<36}{statistics.median(firsts):>14.3f}")
        print(f"{'first write after kill, max (s)':<36}{max(firsts):>14.3f}")
    print(f"{'rounds with no write after kill':<36}{len(results) - len(firsts):>14}")
    print(f"{'client connections dropped':<36}{sum(r.dropped for r in results):>14}")
    errs: dict[int, int] = {}
    for r in results:
        for c, n in r.errors.items():
            errs[c] = errs.get(c, 0) + n
    print(f"{'client errors by code':<36}{json.dumps(errs):>14}")
    print(f"{'acknowledged writes':<36}{sum(r.acked for r in results):>14}")
    print(f"{'acknowledged writes lost':<36}{sum(max(r.lost, 0) for r in results):>14}")
    print(f"{'split-brain rows on old master':<36}{sum(r.split_brain_rows for r in results):>14}")
    print("\nfailover timelines (ms from detection):")
    for r in results:
        for row in r.timeline:
            print("  " + ", ".join(f"{k}={v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
