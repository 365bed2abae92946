"""ConnectionSampler: how many connections one account holds on each server, over time.

Multiplexing is judged by what the servers count, not by what Baton says it holds: the test of
issue 11's acceptance and perf/multiplex both read PROCESSLIST on every server of the sandbox,
in a thread of their own, while the clients run.
"""

from __future__ import annotations

import contextlib
import threading

import pymysql

from proxy.sandbox.topology import ReplicationSandbox


class ConnectionSampler:
    """Samples ``user``'s connections on every server every ``interval`` seconds while the
    ``with`` block runs: ``peak`` and all ``samples`` per server; ``errors`` counts samples
    that could not be read (a test asserts it stays 0, or a peak could have been missed)."""

    def __init__(self, sandbox: ReplicationSandbox, user: str, interval: float) -> None:
        self.sandbox = sandbox
        self.user = user
        self.interval = interval
        self.peak: dict[str, int] = {}
        self.samples: dict[str, list[int]] = {}
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        conns = {inst.name: inst.connect() for inst in self.sandbox.instances}
        try:
            while not self._stop.is_set():
                for name, conn in conns.items():
                    try:
                        with conn.cursor() as cur:
                            cur.execute(
                                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s",
                                (self.user,),
                            )
                            n = int(cur.fetchone()[0])
                    except pymysql.MySQLError:
                        self.errors += 1
                        continue
                    self.samples.setdefault(name, []).append(n)
                    self.peak[name] = max(self.peak.get(name, 0), n)
                self._stop.wait(self.interval)
        finally:
            for conn in conns.values():
                with contextlib.suppress(Exception):
                    conn.close()
