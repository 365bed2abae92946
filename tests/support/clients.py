"""Clients of a Baton under test: starting one for a module, connecting through its MySQL port
with PyMySQL, mysql-connector-python or the `mariadb` CLI, scratch tables, and Baton's memory.

Shared by the integration tests (they used to live at the top of test_e2e_core.py,
test_e2e_tools.py and test_admin.py).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mysql.connector
import pymysql
import pytest

from proxy.sandbox import ReplicationSandbox, free_port
from proxy.sandbox.baton_process import BatonProcess, admin_rows

AUTH_PLUGINS = ("mysql_native_password", "caching_sha2_password")
MiB = 1024 * 1024

# Bulk-data tests do not depend on how the client logged in: run them against one Baton only.
one_auth_plugin = pytest.mark.parametrize("proxy", [AUTH_PLUGINS[0]], indirect=True)


@contextlib.contextmanager
def launch_baton(
    topology: ReplicationSandbox, workdir: Path, **sections: Any
) -> Iterator[BatonProcess]:
    """Baton in front of ``topology`` for as long as the block lasts (for module-scoped use;
    the function-scoped ``baton`` fixture does the same per test). The admin and metrics
    listeners are off: these tests speak only the MySQL protocol."""
    process = BatonProcess(topology.config_toml(free_port(), 0, **sections), workdir=workdir)
    try:
        yield process.start()
    finally:
        process.stop()


def pymysql_connect(proxy: BatonProcess, **options: Any) -> pymysql.Connection:
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": proxy.proxy_port,
        "user": "app",
        "password": "app",
        "database": "test",
        "autocommit": True,
        "connect_timeout": 5,
        "read_timeout": 60,
        "write_timeout": 60,
    }
    return pymysql.connect(**{**settings, **options})


def connector_connect(proxy: BatonProcess, **options: Any) -> Any:
    """mysql-connector-python, pure-Python implementation."""
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": proxy.proxy_port,
        "user": "app",
        "password": "app",
        "database": "test",
        "autocommit": True,
        "use_pure": True,
        "connection_timeout": 5,
    }
    return mysql.connector.connect(**{**settings, **options})


def unique_table() -> str:
    return f"test.e2e_{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def scratch_table(topology: ReplicationSandbox, columns: str) -> Iterator[str]:
    """A fresh utf8mb4 table on the master (the sandbox's `test` schema defaults to latin1),
    already on the replicas too, dropped afterwards."""
    table = unique_table()
    topology.master.sql(f"CREATE TABLE {table} ({columns}) DEFAULT CHARSET=utf8mb4")
    topology.wait_caught_up()
    try:
        yield table
    finally:
        topology.master.sql(f"DROP TABLE IF EXISTS {table}")


class RssSampler:
    """Samples a process's resident set size (VmRSS) in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def tool_path(name: str) -> str:
    """The installed command-line tool's path; skips the test when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def mariadb_cli(
    proxy: BatonProcess, *args: str, script: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`mariadb` against Baton in batch mode (tab-separated output, no boxes); ``script`` is
    fed on stdin, where --force goes on after an error (it does not with -e)."""
    return subprocess.run(
        [
            tool_path("mariadb"),
            "-h127.0.0.1",
            f"-P{proxy.proxy_port}",
            "-uapp",
            "-papp",
            "--batch",
            "--skip-ssl",
            *args,
        ],
        input=script,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def app_connect(proc: BatonProcess, **options: Any) -> pymysql.Connection:
    settings: dict[str, Any] = {
        "host": "127.0.0.1", "port": proc.proxy_port, "user": "app", "password": "app",
        "database": "test", "autocommit": True, "connect_timeout": 5, "read_timeout": 60,
    }
    return pymysql.connect(**{**settings, **options})


def admin_stat(proc: BatonProcess, variable: str) -> str | None:
    """One SHOW STATS value, as text (the value column holds numbers and names)."""
    rows = admin_rows(proc, f"SELECT value FROM stats WHERE variable = '{variable}'")
    return None if not rows or rows[0]["value"] is None else str(rows[0]["value"])


def kill_a_running_sleep(
    victim: pymysql.Connection, killer: pymysql.Connection, kill_sql: str
) -> dict[str, Any]:
    """Runs ``SELECT SLEEP(5)`` on ``victim`` and, half a second in, ``kill_sql`` on ``killer``;
    returns whether the sleep was interrupted and how long it ran (``interrupted``,
    ``seconds``)."""
    outcome: dict[str, Any] = {"interrupted": False}

    def long_query() -> None:
        started = time.monotonic()
        with victim.cursor() as cur:
            try:
                cur.execute("SELECT SLEEP(5)")
                outcome["interrupted"] = cur.fetchone() == (1,)  # MySQL's answer when killed
            except pymysql.err.OperationalError as exc:
                outcome["interrupted"] = exc.args[0] == 1317  # MariaDB's: query interrupted
        outcome["seconds"] = time.monotonic() - started

    sleeper = threading.Thread(target=long_query)
    sleeper.start()
    time.sleep(0.5)
    try:
        with killer.cursor() as cur:
            cur.execute(kill_sql)
    finally:
        sleeper.join(10)
    return outcome
