"""One mariadbd with its own datadir, copied from a template built once per server version."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

from proxy.sandbox.processes import kill_now, root_options, spawn, terminate

MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
MARIADB_INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"


# Accounts baked into the template datadir, so every instance has them without any binlog
# event: all servers start with an empty GTID history. The app account gets every privilege
# except those that bypass read_only (SUPER, READ_ONLY ADMIN), as a real application account
# would, so that a replica actually refuses its writes with error 1290.
_TEMPLATE_SQL = """\
FLUSH PRIVILEGES;
DELETE FROM mysql.global_priv WHERE User = '' OR (User = 'root' AND Host <> 'localhost');
FLUSH PRIVILEGES;
ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('');
CREATE USER 'app'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('app');
GRANT ALL PRIVILEGES ON *.* TO 'app'@'%';
REVOKE SUPER, READ_ONLY ADMIN ON *.* FROM 'app'@'%';
CREATE USER 'monitor'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('monitor');
GRANT ALL PRIVILEGES ON *.* TO 'monitor'@'%';
CREATE USER 'repl'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('repl');
GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';
CREATE DATABASE IF NOT EXISTS test;
"""

# Options the template is built with and every instance must start with (same redo log size).
_STORAGE_OPTIONS = ("--innodb-log-file-size=8M",)


class ServerStartError(RuntimeError):
    """A server process exited or stayed unreachable while starting."""


class PortInUseError(ServerStartError):
    """The server could not bind its TCP port (someone took it after free_port())."""


def mariadb_version() -> str:
    out = subprocess.run([MARIADBD, "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"Ver\s+(\S+)", out.stdout)
    return match.group(1) if match else out.stdout.strip()


def mariadb_template() -> Path:
    """A datadir with system tables and accounts, built once per server version and recipe.

    mariadb-install-db is the slow part of creating a server; instances copy this instead.
    It is built in a temporary directory and renamed into place, so concurrent test runs
    either see a complete template or build their own and lose the rename race harmlessly.
    """
    recipe = hashlib.sha1((_TEMPLATE_SQL + " ".join(_STORAGE_OPTIONS)).encode()).hexdigest()[:8]
    version = re.sub(r"[^A-Za-z0-9.+-]", "_", mariadb_version())
    final = Path(tempfile.gettempdir()) / f"baton-mariadb-template-{version}-{recipe}"
    if (final / "mysql").is_dir():
        return final
    staging = Path(tempfile.mkdtemp(prefix=final.name + ".building-", dir=final.parent))
    try:
        datadir = staging / "data"
        sql_file = staging / "accounts.sql"
        sql_file.write_text(_TEMPLATE_SQL)
        result = subprocess.run(
            [
                MARIADB_INSTALL_DB,
                "--no-defaults",
                f"--datadir={datadir}",
                "--skip-test-db",
                "--auth-root-authentication-method=normal",
                f"--extra-file={sql_file}",
                *root_options(),
                *_STORAGE_OPTIONS,
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise ServerStartError(
                f"mariadb-install-db failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )
        try:
            os.rename(datadir, final)
        except OSError:
            if not (final / "mysql").is_dir():
                raise  # not a lost race: a real failure
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _short_socket_path(preferred: Path) -> Path:
    # Unix socket paths are limited to 107 bytes; deep pytest tmp dirs can exceed that.
    if len(str(preferred)) <= 100:
        return preferred
    digest = hashlib.sha1(str(preferred).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"baton-{digest}.sock"


@dataclass(eq=False)
class MariaDBInstance:
    """One mariadbd process with its own datadir under base_dir; restartable on the same port."""

    name: str
    port: int
    base_dir: Path
    server_id: int
    read_only: bool = False
    semi_sync: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log_offset: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.base_dir = Path(self.base_dir)

    @property
    def datadir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket(self) -> Path:
        return _short_socket_path(self.base_dir / "mysqld.sock")

    @property
    def pid_file(self) -> Path:
        return self.base_dir / "mysqld.pid"

    @property
    def error_log(self) -> Path:
        return self.base_dir / "error.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def options(self) -> list[str]:
        """The mariadbd command line. Roles are options so that a restart keeps them."""
        opts = [
            MARIADBD,
            "--no-defaults",
            # Must come first: it resets the log and pid file names given before it.
            f"--log-basename={self.name}",
            *root_options(),
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--pid-file={self.pid_file}",
            f"--log-error={self.error_log}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--server-id={self.server_id}",
            "--report-host=127.0.0.1",
            f"--report-port={self.port}",
            f"--log-bin={self.name}-bin",
            "--log-slave-updates",
            "--binlog-format=ROW",
            "--gtid-strict-mode=1",
            "--skip-name-resolve",
            *_STORAGE_OPTIONS,
            "--innodb-buffer-pool-size=32M",
            "--innodb-temp-data-file-path=ibtmp1:1M:autoextend",
            # Durable against a kill -9 of the process (the OS keeps the page cache), not
            # against a host crash, which these sandboxes never simulate; much faster commits.
            "--innodb-flush-log-at-trx-commit=2",
            "--sync-binlog=0",
            "--max-connections=3000",
            "--max-allowed-packet=256M",
            "--local-infile=1",
            "--performance-schema=OFF",
            # What Debian's packaged config sets; --no-defaults would fall back to latin1.
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
            # Orchestrator's advice: replicas notice a dead master within seconds.
            "--slave-net-timeout=4",
            f"--read-only={1 if self.read_only else 0}",
        ]
        if self.semi_sync:
            # Both sides everywhere, so the roles survive a promotion. wait_no_slave=OFF: a
            # replica (a semi-sync master with no replicas of its own) would otherwise stall
            # its applier for the whole timeout on the first event it replicates.
            opts += [
                "--rpl-semi-sync-master-enabled=ON",
                "--rpl-semi-sync-slave-enabled=ON",
                "--rpl-semi-sync-master-wait-point=AFTER_SYNC",
                "--rpl-semi-sync-master-timeout=5000",
                "--rpl-semi-sync-master-wait-no-slave=OFF",
            ]
        return opts

    def start(self, wait: bool = True, timeout: float = 30) -> None:
        """Start mariadbd (creating the datadir from the template on first start)."""
        if self.is_running():
            return
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if not self.datadir.exists():
            shutil.copytree(mariadb_template(), self.datadir, symlinks=True)
        self._log_offset = self.error_log.stat().st_size if self.error_log.exists() else 0
        self.process = spawn(self.options(), log_path=self.error_log)
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30) -> None:
        """Block until the server accepts SQL on its socket; raise with its log if it dies."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process is None or self.process.poll() is not None:
                self._raise_start_failure("exited while starting")
            if self.socket.exists():
                try:
                    self.sql("SELECT 1")
                    return
                except pymysql.err.OperationalError:
                    pass
            if time.monotonic() > deadline:
                self._raise_start_failure(f"not ready after {timeout}s")
            time.sleep(0.03)

    def _raise_start_failure(self, what: str) -> None:
        log = ""
        if self.error_log.exists():
            with open(self.error_log, "rb") as f:
                f.seek(self._log_offset)
                log = f.read().decode(errors="replace")
        error = PortInUseError if "Address already in use" in log else ServerStartError
        if self.process is not None and self.process.poll() is None:
            kill_now(self.process)
        raise error(f"mariadbd {self.name} on port {self.port} {what}:\n{log[-3000:]}")

    def stop(self) -> None:
        """Clean shutdown (SIGTERM, wait)."""
        if self.process is not None:
            terminate(self.process)

    def kill(self) -> None:
        """SIGKILL and reap: a crash, as far as the server is concerned."""
        if self.process is not None:
            kill_now(self.process)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a hung host)."""
        if self.is_running():
            os.kill(self.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]

    def resume(self) -> None:
        if self.is_running():
            os.kill(self.process.pid, signal.SIGCONT)  # type: ignore[union-attr]

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def connect(self, database: str | None = None, timeout: float = 60) -> pymysql.Connection:
        """A root connection over the unix socket, autocommit on."""
        return pymysql.connect(
            unix_socket=str(self.socket),
            user="root",
            password="",
            database=database,
            autocommit=True,
            connect_timeout=5,
            read_timeout=timeout,
            write_timeout=timeout,
        )

    def sql(self, statement: str, *, database: str | None = None) -> list[tuple[Any, ...]]:
        """Run one statement as root; its rows (empty for statements without a result)."""
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
                return [tuple(row) for row in cur.fetchall()]
        finally:
            conn.close()

    def slave_status(self) -> dict[str, Any] | None:
        """SHOW SLAVE STATUS as a dict, or None when the server replicates from nobody."""
        conn = self.connect()
        try:
            with conn.cursor(pymysql.cursors.DictCursor) as cur:
                cur.execute("SHOW SLAVE STATUS")
                row = cur.fetchone()
                return dict(row) if row else None
        finally:
            conn.close()

    def variable(self, name: str) -> Any:
        """One global variable's value (@@name)."""
        return self.sql(f"SELECT @@GLOBAL.{name}")[0][0]

    def status_variable(self, name: str) -> str | None:
        rows = self.sql(f"SHOW GLOBAL STATUS LIKE '{name}'")
        return rows[0][1] if rows else None
