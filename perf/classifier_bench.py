"""ns per ``classify()`` call for typical statements: the classifier's share of a query's cost.

    .venv/bin/python -m perf.classifier_bench                   # 20,000 calls, best of 5
    ./run perf classifier_bench --rounds 100000 --repeat 3

Not a test, and not part of Baton (it used to live at the end of proxy/routing/classifier.py).
"""

from __future__ import annotations

import argparse
import time

from proxy.routing import classifier
from proxy.routing.classifier import classify

STATEMENTS = (
    b"SELECT * FROM users WHERE id = 42",
    b"SELECT name, email FROM users WHERE email = 'a@example.com' AND active = 1",
    b"select c from sbtest1 where id=5012",
    b"INSERT INTO orders (user_id, total, note) VALUES (7, 12.50, 'first order')",
    b"UPDATE users SET last_seen = NOW() WHERE id = 42",
    b"SELECT balance FROM accounts WHERE id = 9 FOR UPDATE",
    b"/* baton:replica */ SELECT count(*) FROM t",
    b"BEGIN",
    b"COMMIT",
    b"SET autocommit=0",
    b"SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci",
    b"SELECT @@version_comment LIMIT 1",
    b"(SELECT a FROM t1) UNION (SELECT a FROM t2)",
)


def bench(rounds: int = 20_000, repeat: int = 5) -> dict[str, float]:
    """Print and return ns per classify() call (best of `repeat`) for typical statements
    seen for the first time (the cache of recent texts emptied before each call, which costs
    some 20 ns); the figures for a repeated text, answered by the cache, are printed beside.

    Not a test. It measures CPU time of this thread (time spent descheduled on a busy
    machine does not count), yet numbers on shared machines still swing: compare only
    within one run.
    """
    cases: list[tuple[str, list[bytes]]] = [(s.decode(), [s]) for s in STATEMENTS]
    # distinct SETs miss the SET cache; a 4 KiB IN-list shows how the scan scales
    cases.append(
        ("SET @v = <distinct value>  (SET cache miss)", [b"SET @v = %d" % i for i in range(4096)])
    )
    big = b"SELECT * FROM t WHERE id IN (" + b", ".join(b"%d" % i for i in range(800)) + b")"
    cases.append((f"SELECT ... IN (800 ids)  ({len(big)} bytes)", [big]))
    results: dict[str, float] = {}
    cached: dict[str, float] = {}  # the same text again: classify()'s cache answers
    clear = classifier._CACHE_MULTI.clear
    for label, stmts in cases:
        seq = (stmts * (rounds // len(stmts) + 1))[:rounds]
        for s in stmts:
            classify(s)
        best = float("inf")
        for _ in range(repeat):
            t0 = time.thread_time_ns()
            for s in seq:
                clear()  # a text seen for the first time (as sysbench's varying ids are)
                classify(s)
            best = min(best, (time.thread_time_ns() - t0) / rounds)
        results[label] = best
        best = float("inf")
        for _ in range(repeat):
            t0 = time.thread_time_ns()
            for s in seq:
                classify(s)
            best = min(best, (time.thread_time_ns() - t0) / rounds)
        cached[label] = best
    width = max(len(label) for label in results)
    print(f"{'':<{width}}  {'new text':>8}  {'repeated':>8}")
    for label, ns in results.items():
        print(f"{label:<{width}}  {ns:8.0f}  {cached[label]:8.0f} ns")
    short = [results[s.decode()] for s in STATEMENTS]
    short_cached = [cached[s.decode()] for s in STATEMENTS]
    print(f"{'mean of the short statements':<{width}}  {sum(short) / len(short):8.0f}"
          f"  {sum(short_cached) / len(short_cached):8.0f} ns")
    return results



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20_000, help="calls per statement and try")
    parser.add_argument("--repeat", type=int, default=5, help="tries; the best one counts")
    args = parser.parse_args(argv)
    bench(args.rounds, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
