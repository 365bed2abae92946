"""`baton sandbox --kill-master`: a failover a new user can watch.

A few clients write through Baton; the master is killed with SIGKILL; the demo prints what
the clients saw (writes acknowledged, errors with their codes, the longest wait) and Baton's
own timeline of the failover (SHOW FAILOVERS: detection, decision, promotion, first write,
statements held, retried and failed). Then it restarts the killed server, which Baton fences
and rejoins as a replica of the new master, and the sandbox keeps running.

It runs in a thread beside Baton (which owns the main thread) and talks to it only as a
user would: the proxy port and the admin port.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pymysql

from proxy.sandbox.baton_process import admin_query
from proxy.sandbox.topology import ReplicationSandbox

CLIENTS = 4
WRITE_PAUSE_S = 0.02  # a small load: about 50 writes per second per client
WARM_UP_S = 2.0
RESUME_TIMEOUT_S = 20.0
# Errors after which a client opens a new connection (its connection to Baton broke).
_CONNECTION_BROKEN = frozenset({2003, 2006, 2013, 2055})
_STEP = re.compile(r"; (?=\+\d+ms )")  # between the steps of a SHOW FAILOVERS row
_MEANING = {
    9100: "no server could take the write",
    9101: "held too long: no master within buffer_window_ms",
    9102: "too many statements held",
    9103: "outcome unknown: the write was in flight on the master when it died",
    9104: "its transaction was open on the dead master",
}


@dataclass
class DemoClient:
    """One application connection writing rows through Baton until told to stop."""

    index: int
    port: int
    acked: list[float] = field(default_factory=list)
    errors: list[tuple[float, int, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> DemoClient:
        self.thread = threading.Thread(target=self._run, name=f"demo-client-{self.index}")
        self.thread.daemon = True
        self.thread.start()
        return self

    def _connect(self) -> pymysql.Connection:
        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user="app",
            password="app",
            database="test",
            autocommit=True,
            connect_timeout=5,
            read_timeout=30,
        )

    def _run(self) -> None:
        conn: pymysql.Connection | None = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = self._connect()
                with conn.cursor() as cur:
                    cur.execute(
                        "INSERT INTO baton_demo (client, at) VALUES (%s, %s)",
                        (self.index, time.time()),
                    )
                self.acked.append(time.monotonic())
            except pymysql.err.MySQLError as exc:
                code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else -1
                self.errors.append((time.monotonic(), code, str(exc.args[-1])))
                if code in _CONNECTION_BROKEN or isinstance(exc, pymysql.err.InterfaceError):
                    conn = None
                    time.sleep(0.05)
            time.sleep(WRITE_PAUSE_S)
        if conn is not None:
            conn.close()

    def longest_wait(self) -> float:
        """The longest time between two acknowledged writes."""
        gaps = [b - a for a, b in zip(self.acked, self.acked[1:], strict=False)]
        return max(gaps, default=0.0)


@dataclass
class DemoResult:
    killed: str
    new_master: str | None
    resumed_after_s: float | None  # kill to the first write acknowledged after it
    clients: list[DemoClient]
    failover: dict[str, Any] | None  # the newest SHOW FAILOVERS row
    detected_after_s: float | None


def _wait(predicate: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except pymysql.err.MySQLError:
            value = None
        if value:
            return value
        time.sleep(0.05)
    return None


def run_demo(sandbox: ReplicationSandbox, proxy_port: int, admin_port: int) -> DemoResult | None:
    """Kill the master under a write load; None if Baton never became ready."""
    ready = _wait(
        lambda: all(r["state"] == "ONLINE" for r in admin_query(admin_port, "SHOW BACKENDS")), 60
    )
    if not ready:
        return None
    setup = DemoClient(0, proxy_port)._connect()
    with setup.cursor() as cur:
        cur.execute(
            "CREATE TABLE IF NOT EXISTS baton_demo "
            "(id BIGINT AUTO_INCREMENT PRIMARY KEY, client INT, at DOUBLE)"
        )
    setup.close()
    clients = [DemoClient(i, proxy_port).start() for i in range(1, CLIENTS + 1)]
    time.sleep(WARM_UP_S)
    master = sandbox.master
    killed_at = time.monotonic()
    master.kill()
    resumed = _wait(
        lambda: all(any(t > killed_at for t in c.acked) for c in clients), RESUME_TIMEOUT_S
    )
    time.sleep(1.0)
    for c in clients:
        c.stop.set()
    for c in clients:
        assert c.thread is not None
        c.thread.join(10)
    after = [t for c in clients for t in c.acked if t > killed_at]
    rows = admin_query(admin_port, "SHOW FAILOVERS")
    record = rows[0] if rows else None
    detected = None
    if record is not None:
        detected = round(time.monotonic() - float(record["age_s"]) - killed_at, 1)
    return DemoResult(
        killed=master.name,
        new_master=str(record["new"]) if record and record["new"] else None,
        resumed_after_s=(min(after) - killed_at) if resumed and after else None,
        clients=clients,
        failover=record,
        detected_after_s=detected,
    )


def report(result: DemoResult) -> list[str]:
    """What the clients saw, then Baton's timeline, as lines for the terminal."""
    lines = [
        f"killed master {result.killed} with SIGKILL under {len(result.clients)} writing clients"
    ]
    if result.resumed_after_s is None:
        lines.append(f"writes did NOT resume within {RESUME_TIMEOUT_S:g} s")
    else:
        lines.append(
            f"writes resumed through Baton {result.resumed_after_s:.3f} s after the kill, "
            f"on {result.new_master}"
        )
    lines.append("what the clients saw:")
    for c in result.clients:
        codes: dict[int, int] = {}
        for _, code, _ in c.errors:
            codes[code] = codes.get(code, 0) + 1
        seen = (
            ", ".join(
                f"{n} x error {code} ({_MEANING.get(code, 'see the README')})"
                for code, n in sorted(codes.items())
            )
            or "no error"
        )
        lines.append(
            f"  client {c.index}: {len(c.acked)} writes acknowledged, longest wait "
            f"{c.longest_wait():.3f} s, {seen}"
        )
    rec = result.failover
    if rec is None:
        lines.append("Baton recorded no failover (SHOW FAILOVERS is empty)")
        return lines
    lines.append(
        f"Baton's timeline (SHOW FAILOVERS #{rec['id']}, {rec['kind']}: {rec['old']} -> "
        f"{rec['new']}, epoch {rec['epoch']}, {rec['outcome']}):"
    )
    lines.append(f"  detected     {result.detected_after_s} s after the kill")
    for key, label in (
        ("decided_ms", "decided"),
        ("promoted_ms", "promoted"),
        ("first_write_ms", "first write"),
    ):
        value = rec[key]
        lines.append(f"  {label:<12} " + ("-" if value is None else f"+{value:.0f} ms"))
    lines.append(
        f"  statements   held {rec['held']}, retried {rec['retried']}, failed {rec['failed']}"
    )
    lines.append("  steps:")
    lines += [f"    {step}" for step in _STEP.split(str(rec["steps"] or "")) if step]
    return lines


def rejoin_killed(sandbox: ReplicationSandbox, name: str, new_master: str | None) -> str:
    """Restart the killed server; Baton (auto_rejoin) fences it and makes it a replica."""
    inst = sandbox.instance(name)
    inst.read_only = True  # as servers should be configured: nothing starts up writable
    inst.start()
    if new_master is None:
        return f"restarted {name}"
    port = sandbox.instance(new_master).port
    joined = _wait(lambda: (inst.slave_status() or {}).get("Master_Port") == port, 15)
    sandbox.refresh_roles()
    sandbox.save_state()
    if joined:
        return f"restarted {name} read-only: Baton made it a replica of {new_master}"
    return f"restarted {name}; it has not rejoined {new_master} yet (see Baton's log)"


def demo_in_background(
    sandbox: ReplicationSandbox, proxy_port: int, admin_port: int, echo: Callable[[str], Any]
) -> threading.Thread:
    """Run the demo beside Baton and print its report; Baton keeps running afterwards."""

    def demo() -> None:
        try:
            result = run_demo(sandbox, proxy_port, admin_port)
            if result is None:
                echo("demo: Baton did not report every backend ONLINE within 60 s")
                return
            for line in report(result):
                echo(line)
            echo(rejoin_killed(sandbox, result.killed, result.new_master))
            echo("the sandbox keeps running; Ctrl-C stops it")
        except Exception as exc:  # a broken demo must say so, not die silently
            echo(f"demo failed: {exc!r}")

    thread = threading.Thread(target=demo, name="sandbox-demo", daemon=True)
    thread.start()
    return thread
