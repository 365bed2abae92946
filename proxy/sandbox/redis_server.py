"""A throwaway redis-server on a free loopback port, for the multi-instance tests."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from proxy.sandbox.mariadb import ServerStartError
from proxy.sandbox.processes import free_port, spawn, terminate

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisInstance:
    """A throwaway redis-server on a free loopback port, no persistence."""

    def __init__(self, base_dir: Path | str):
        self.base_dir = Path(base_dir)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> RedisInstance:
        import redis

        self.base_dir.mkdir(parents=True, exist_ok=True)
        log = self.base_dir / "redis.log"
        self.process = spawn(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.base_dir),
                "--daemonize",
                "no",
            ],
            log_path=log,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    raise ServerStartError(f"redis-server exited:\n{log.read_text()[-3000:]}")
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise ServerStartError(f"redis-server not ready after {timeout}s") from None
                    time.sleep(0.03)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None
