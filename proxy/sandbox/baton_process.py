"""Baton as a real subprocess (`python -m proxy run --config ...`) for end-to-end tests."""

from __future__ import annotations

import os
import re
import signal as signals
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proxy.sandbox.processes import spawn, terminate

REPO_ROOT = Path(__file__).resolve().parents[2]


def _port(listen: str) -> int | None:
    return int(listen.rsplit(":", 1)[1]) if listen else None


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class BatonProcess:
    """One Baton process with its config and log in a directory of its own.

    The ports are read from the config text, so the config is the single source of truth.
    """

    def __init__(self, config_text: str, workdir: Path | None = None):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="baton-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "config.toml"
        self.log_path = self.workdir / "baton.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.rewrite_config(config_text)

    def rewrite_config(self, text: str) -> None:
        """Replace the config file atomically (a SIGHUP reload must never see half a file)."""
        config = tomllib.loads(text)
        self.proxy_port = _port(config.get("proxy", {}).get("listen", "127.0.0.1:6033"))
        self.admin_port = _port(config.get("admin", {}).get("listen", "127.0.0.1:6032"))
        self.metrics_port = _port(config.get("metrics", {}).get("listen", "127.0.0.1:6070"))
        if "workers" not in config.get("proxy", {}):
            text = _one_worker(text)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("Baton is not started")
        return self.process.pid

    def start(self, timeout: float = 20) -> BatonProcess:
        """Start Baton and wait until its proxy, admin and metrics ports accept connections."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = spawn(
            [sys.executable, "-m", "proxy", "run", "--config", str(self.config_path)],
            log_path=self.log_path,
            cwd=REPO_ROOT,
            env=env,
        )
        ports = [p for p in (self.proxy_port, self.admin_port, self.metrics_port) if p]
        deadline = time.monotonic() + timeout
        while not all(_accepts(p) for p in ports):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Baton exited with {self.process.returncode} while starting:\n{self.log_text()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(
                    f"Baton ports {ports} not open after {timeout}s:\n{self.log_text()}"
                )
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, SIGKILL after timeout; the exit code (None if never started)."""
        if self.process is None:
            return None
        return terminate(self.process, timeout=timeout)

    def signal(self, sig: int = signals.SIGHUP) -> None:
        os.kill(self.pid, sig)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def admin_rows(proc: BatonProcess, statement: str, **options: Any) -> list[dict[str, Any]]:
    """Rows of an admin console statement (SHOW BACKENDS, SELECT ... FROM pools, ...) as dicts."""
    assert proc.admin_port is not None, "the admin port is disabled"
    return admin_query(proc.admin_port, statement, **options)


def admin_query(port: int, statement: str, **options: Any) -> list[dict[str, Any]]:
    """admin_rows for the admin port of a Baton this process did not start."""
    import pymysql

    settings: dict[str, Any] = {
        "host": "127.0.0.1", "port": port, "user": "admin", "password": "admin",
        "connect_timeout": 5, "read_timeout": 60, "cursorclass": pymysql.cursors.DictCursor,
    }
    conn = pymysql.connect(**{**settings, **options})
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return list(cur.fetchall())
    finally:
        conn.close()


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
             interval: float = 0.05) -> Any:
    """Polls until predicate() is truthy; returns its value or fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _one_worker(text: str) -> str:
    """The config with ``[proxy] workers = 1`` added: processes started for tests and demos run
    one worker unless their config asks for more (the default, "auto", depends on the machine)."""
    header = re.search(r"^\[proxy\][ \t]*$", text, re.MULTILINE)
    if header is None:
        return text.rstrip("\n") + "\n\n[proxy]\nworkers = 1\n"
    return text[: header.end()] + "\nworkers = 1" + text[header.end():]
