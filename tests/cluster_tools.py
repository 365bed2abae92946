"""Helpers for the tests of several Baton instances on one Redis: steady client traffic that
counts its errors, the servers' read_only flags, and one metric from a Baton's /metrics."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Sequence

import pymysql

from proxy.sandbox import ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess

WRITES_TABLE = "CREATE TABLE IF NOT EXISTS test.writes (id INT AUTO_INCREMENT PRIMARY KEY, via INT)"


class Traffic:
    """A thread per Baton instance writing (and reading back) through it, back to back, until
    stopped; every statement that fails is kept with its error."""

    def __init__(self, procs: Sequence[BatonProcess]) -> None:
        self._procs = list(procs)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.ok = 0
        self.errors: list[str] = []
        self._threads = [threading.Thread(target=self._run, args=(p,), daemon=True) for p in procs]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, proc: BatonProcess) -> None:
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = pymysql.connect(
                        host="127.0.0.1", port=proc.proxy_port, user="app", password="app",
                        database="test", autocommit=True, connect_timeout=5, read_timeout=20,
                    )
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO writes (via) VALUES (%s)", (proc.proxy_port,))
                    cur.execute("SELECT COUNT(*) FROM writes")
                with self._lock:
                    self.ok += 1
            except pymysql.err.MySQLError as e:
                with self._lock:
                    self.errors.append(f"{proc.proxy_port}: {e}")
                conn = None
            time.sleep(0.01)
        if conn is not None:
            conn.close()


def read_only_flags(sb: ReplicationSandbox) -> dict[str, int]:
    return {inst.name: int(inst.sql("SELECT @@read_only")[0][0]) for inst in sb.instances}


def metric(proc: BatonProcess, name: str, labels: str = "") -> float | None:
    """The value of `name{labels}` on the instance's /metrics, None if absent."""
    url = f"http://127.0.0.1:{proc.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    selector = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "")
    found = re.search(rf"^{selector} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None
