"""Real MariaDB replication topologies and Redis servers on loopback, for tests and demos.

Used by the integration tests, by `baton sandbox` and by the perf scripts. Everything runs as
child processes on free 127.0.0.1 ports under a directory the caller owns; nothing here needs
asyncio. Servers are started in their own session (a terminal's Ctrl-C reaches only Baton) and,
when spawned from the main thread, with a parent-death signal, so a crashed test run cannot
leave servers behind.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
MARIADB_INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

STATE_FILE = "sandbox.json"
CONFIG_FILE = "config.toml"

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """count distinct free ports (free_port alone may hand out the same one twice)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _root_options() -> list[str]:
    return ["--user=root"] if os.geteuid() == 0 else []


# --- child processes -------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_libc: Any = None
with contextlib.suppress(OSError):
    _libc = ctypes.CDLL(None, use_errno=True)

_LIVE: set[subprocess.Popen[bytes]] = set()


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: SIGTERM it when the spawning thread exits.
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    argv: list[str],
    *,
    log_path: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a server process with stdout and stderr appended to log_path.

    The parent-death signal is only armed from the main thread: Linux sends it when the
    spawning *thread* exits, which would kill a server restarted from a short-lived worker.
    """
    on_main_thread = threading.current_thread() is threading.main_thread()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if on_main_thread else None,
        )
    _LIVE.add(proc)
    return proc


def terminate(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGTERM (waking it first if stopped), wait, SIGKILL if it will not go; the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _LIVE.discard(proc)
    return int(proc.returncode)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    proc.wait()
    _LIVE.discard(proc)


@atexit.register
def _stop_leftovers() -> None:
    leftovers = [p for p in _LIVE if p.poll() is None]
    for proc in leftovers:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
    for proc in leftovers:
        terminate(proc, timeout=20)


# --- MariaDB -------------------------------------------------------------------------------------


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
                *_root_options(),
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
            *_root_options(),
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
            _kill(self.process)
        raise error(f"mariadbd {self.name} on port {self.port} {what}:\n{log[-3000:]}")

    def stop(self) -> None:
        """Clean shutdown (SIGTERM, wait)."""
        if self.process is not None:
            terminate(self.process)

    def kill(self) -> None:
        """SIGKILL and reap: a crash, as far as the server is concerned."""
        if self.process is not None:
            _kill(self.process)

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


def _gtid_set(pos: str) -> set[str]:
    return {part.strip() for part in pos.split(",") if part.strip()}


def _replicate_from(replica: MariaDBInstance, master: MariaDBInstance, use_gtid: str) -> None:
    replica.sql("STOP SLAVE")
    replica.sql(
        "CHANGE MASTER TO MASTER_HOST='127.0.0.1', "
        f"MASTER_PORT={master.port}, MASTER_USER='repl', MASTER_PASSWORD='repl', "
        f"MASTER_USE_GTID={use_gtid}, MASTER_CONNECT_RETRY=1"
    )
    replica.sql("START SLAVE")


def _wait_replicating(replica: MariaDBInstance, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = replica.slave_status() or {}
        if status.get("Slave_IO_Running") == "Yes" and status.get("Slave_SQL_Running") == "Yes":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{replica.name} is not replicating: {status}")
        time.sleep(0.05)


def _wait_relay_log_applied(replica: MariaDBInstance, timeout: float) -> None:
    # What a failover manager does before promoting: apply everything already received.
    deadline = time.monotonic() + timeout
    while True:
        s = replica.slave_status()
        if (
            s is None
            or s.get("Slave_SQL_Running") != "Yes"
            or (
                s["Master_Log_File"] == s["Relay_Master_Log_File"]
                and s["Read_Master_Log_Pos"] == s["Exec_Master_Log_Pos"]
            )
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{replica.name} did not apply its relay log in {timeout}s")
        time.sleep(0.05)


class ReplicationSandbox:
    """A MariaDB GTID topology: master db1 and read-only replicas db2, db3, ... on loopback."""

    def __init__(self, base_dir: Path | str, replicas: int = 2, semi_sync: bool = False):
        self.base_dir = Path(base_dir)
        self.semi_sync = semi_sync
        ports = free_ports(replicas + 1)
        self.instances: list[MariaDBInstance] = [
            MariaDBInstance(
                name=f"db{i}",
                port=ports[i - 1],
                base_dir=self.base_dir / f"db{i}",
                server_id=i,
                read_only=i > 1,
                semi_sync=semi_sync,
            )
            for i in range(1, replicas + 2)
        ]
        self.master: MariaDBInstance = self.instances[0]
        self.replicas: list[MariaDBInstance] = self.instances[1:]

    def instance(self, name: str) -> MariaDBInstance:
        for inst in self.instances:
            if inst.name == name:
                return inst
        raise KeyError(f"no instance named {name!r}")

    def start(self, timeout: float = 30) -> ReplicationSandbox:
        """Start every server at once; configure replication on replicas created just now."""
        mariadb_template()  # build it once before the parallel starts
        fresh = {inst.name for inst in self.instances if not inst.datadir.exists()}
        try:
            for inst in self.instances:
                inst.start(wait=False)
            for inst in self.instances:
                self._wait_started(inst, retry_port=inst.name in fresh, timeout=timeout)
            for replica in self.replicas:
                if replica.name in fresh:
                    _replicate_from(replica, self.master, "slave_pos")
            for replica in self.replicas:
                _wait_replicating(replica, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _wait_started(inst: MariaDBInstance, *, retry_port: bool, timeout: float) -> None:
        for attempt in range(3):
            try:
                if attempt:
                    inst.port = free_port()
                    inst.start(wait=False)
                inst.wait_ready(timeout)
                return
            except PortInUseError:
                if not retry_port or attempt == 2:
                    raise

    def stop(self) -> None:
        """Shut every server down, all at once."""
        procs = [inst.process for inst in self.instances if inst.is_running()]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
                proc.terminate()  # type: ignore[union-attr]
        for proc in procs:
            terminate(proc)  # type: ignore[arg-type]

    def wait_caught_up(self, timeout: float = 10) -> None:
        """Wait until every running replica has applied everything in the master's binlog."""
        deadline = time.monotonic() + timeout
        while True:
            target = _gtid_set(self.master.variable("gtid_binlog_pos"))
            behind = {
                r.name: pos
                for r in self.replicas
                if r.is_running() and _gtid_set(pos := r.variable("gtid_slave_pos")) != target
            }
            if not behind:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"replicas behind master {sorted(target)} after {timeout}s: {behind}"
                )
            time.sleep(0.02)

    def promote(self, name: str, timeout: float = 10) -> MariaDBInstance:
        """Promote a replica the way Orchestrator would; the old master is left untouched.

        The target applies what it already received, stops replicating and becomes writable;
        the other running replicas are repointed to it by GTID.
        """
        target = self.instance(name)
        if target is self.master:
            raise ValueError(f"{name} is already the master")
        target.sql("STOP SLAVE IO_THREAD")
        _wait_relay_log_applied(target, timeout)
        target.sql("STOP SLAVE")
        target.sql("RESET SLAVE ALL")
        target.sql("SET GLOBAL read_only = 0")
        target.read_only = False
        others = [r for r in self.replicas if r is not target and r.is_running()]
        for replica in others:
            _wait_relay_log_applied(replica, timeout)
            _replicate_from(replica, target, "slave_pos")
        self.master = target
        self.replicas = others
        for replica in others:
            _wait_replicating(replica, timeout)
        return target

    def rejoin(self, name: str, timeout: float = 10) -> MariaDBInstance:
        """Make a running former master a read-only replica of the current master."""
        inst = self.instance(name)
        inst.sql("SET GLOBAL read_only = 1")
        inst.read_only = True
        # current_pos: a former master's own writes are in its binlog, not in gtid_slave_pos.
        _replicate_from(inst, self.master, "current_pos")
        if inst not in self.replicas:
            self.replicas.append(inst)
        _wait_replicating(inst, timeout)
        return inst

    def refresh_roles(self) -> None:
        """Learn master, replicas and read_only from the running servers (after a failover)."""
        running = [inst for inst in self.instances if inst.is_running()]
        statuses = {inst.name: inst.slave_status() for inst in running}
        for inst in running:
            inst.read_only = bool(int(inst.variable("read_only")))
        writers = [i for i in running if statuses[i.name] is None and not i.read_only]
        if len(writers) == 1:
            self.master = writers[0]
        self.replicas = [
            i
            for i in running
            if (s := statuses[i.name]) is not None and int(s["Master_Port"]) == self.master.port
        ]

    def config_toml(
        self, proxy_port: int, admin_port: int, metrics_port: int = 0, **sections: Any
    ) -> str:
        """A Baton config for this topology; each keyword merges into (or replaces) a section."""
        config: dict[str, Any] = {
            "proxy": {"listen": f"127.0.0.1:{proxy_port}"},
            "admin": {"listen": f"127.0.0.1:{admin_port}" if admin_port else ""},
            "metrics": {"listen": f"127.0.0.1:{metrics_port}" if metrics_port else ""},
            "monitor": {"user": "monitor", "password": "monitor"},
            "backends": [
                {
                    "name": inst.name,
                    "address": inst.address,
                    "role": "master" if inst is self.master else "replica",
                }
                for inst in self.instances
            ],
            "users": [{"name": "app", "password": "app"}],
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        return toml_dumps(config)

    # --- state file, for `baton sandbox` across runs ---

    def save_state(self) -> Path:
        state = {
            "semi_sync": self.semi_sync,
            "master": self.master.name,
            "instances": [
                {
                    "name": inst.name,
                    "port": inst.port,
                    "server_id": inst.server_id,
                    "read_only": inst.read_only,
                    "datadir": str(inst.datadir),
                    "pid": inst.pid if inst.is_running() else None,
                }
                for inst in self.instances
            ],
        }
        path = self.base_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_state(cls, base_dir: Path | str) -> ReplicationSandbox | None:
        """The sandbox recorded in base_dir, not started; None if there is none."""
        base = Path(base_dir)
        try:
            state = json.loads((base / STATE_FILE).read_text())
        except FileNotFoundError:
            return None
        sandbox = cls.__new__(cls)
        sandbox.base_dir = base
        sandbox.semi_sync = bool(state["semi_sync"])
        sandbox.instances = [
            MariaDBInstance(
                name=rec["name"],
                port=int(rec["port"]),
                base_dir=base / rec["name"],
                server_id=int(rec["server_id"]),
                read_only=bool(rec["read_only"]),
                semi_sync=sandbox.semi_sync,
            )
            for rec in state["instances"]
        ]
        sandbox.master = sandbox.instance(state["master"])
        sandbox.replicas = [i for i in sandbox.instances if i is not sandbox.master]
        return sandbox


# --- TOML output (tomllib only reads) ----------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML: {value!r}")


def toml_dumps(config: dict[str, Any]) -> str:
    """Tables and arrays of tables one level deep, which is all Baton's config has."""
    lines: list[str] = []
    for section, body in config.items():
        if isinstance(body, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
            lines.append("")
        elif isinstance(body, list) and all(isinstance(item, dict) for item in body):
            for item in body:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
                lines.append("")
        else:
            raise TypeError(f"top-level TOML key {section!r} must be a table or array of tables")
    return "\n".join(lines)


# --- Redis ---------------------------------------------------------------------------------------


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


# --- `baton sandbox` -----------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """Running, and not merely a zombie waiting for its parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _stop_recorded_servers(state_dir: Path) -> list[str]:
    """Stop mariadbd processes a previous sandbox run recorded and left running."""
    try:
        state = json.loads((state_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return []
    stopped = []
    for rec in state.get("instances", []):
        pid = rec.get("pid")
        if not pid:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # Only a process that is really ours: pids get reused.
        if f"--datadir={rec['datadir']}".encode() not in cmdline:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        stopped.append(rec["name"])
    return stopped


def run_sandbox(
    state_dir: Path,
    proxy_port: int = 6033,
    admin_port: int = 6032,
    metrics_port: int = 6070,
    echo: Callable[[str], Any] = print,
    failover_mode: str = "auto",
    kill_master: bool = False,
) -> None:
    """Start (or restart) a 3-server topology under state_dir and run Baton in front of it.

    Baton runs in `failover_mode` with the replication account configured, so a killed
    master is replaced and comes back as a replica. With `kill_master` a demo kills the
    master under a write load and prints what the clients saw and the failover timeline.
    Blocks until Baton exits or Ctrl-C; then stops the servers it started. The datadirs stay,
    so the next run reuses them; `sandbox_down` removes them.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    for name in _stop_recorded_servers(state_dir):
        echo(f"stopped {name} left running by an earlier sandbox")
    sandbox = ReplicationSandbox.from_state(state_dir)
    if sandbox is None:
        echo(f"creating a MariaDB {mariadb_version()} topology in {state_dir}")
        sandbox = ReplicationSandbox(state_dir, replicas=2)
    else:
        echo(f"reusing the topology in {state_dir}")
    try:
        started = time.monotonic()
        sandbox.start()
        sandbox.refresh_roles()
        for inst in sandbox.instances:
            role = "master" if inst is sandbox.master else "replica"
            echo(f"  {inst.name}  {role:<7}  {inst.address}  (socket {inst.socket})")
        echo(f"servers ready in {time.monotonic() - started:.1f}s")
        sandbox.save_state()
        config_path = state_dir / CONFIG_FILE
        config_path.write_text(
            sandbox.config_toml(
                proxy_port, admin_port, metrics_port, **sandbox_sections(failover_mode, kill_master)
            )
        )
        echo(f"config: {config_path} (failover mode {failover_mode})")
        echo(f"connect: mariadb -h127.0.0.1 -P{proxy_port} -uapp -papp test")
        echo(f"admin:   mariadb -h127.0.0.1 -P{admin_port} -uadmin -padmin")
        if metrics_port:
            echo(f"metrics: http://127.0.0.1:{metrics_port}/metrics")
        echo("Ctrl-C stops Baton and the servers")
        from proxy import app  # lazy: the proxy itself is not needed to build topologies

        if kill_master:
            from proxy.sandbox.demo import demo_in_background

            echo("demo: 4 clients write through Baton; in 2 s the master is killed (SIGKILL)")
            demo_in_background(sandbox, proxy_port, admin_port, echo)

        app.run(str(config_path))
    except KeyboardInterrupt:
        pass
    finally:
        echo("stopping servers")
        with contextlib.suppress(Exception):
            sandbox.refresh_roles()  # a failover during the run must survive a restart
        sandbox.stop()
        sandbox.save_state()


def sandbox_sections(failover_mode: str, demo: bool) -> dict[str, Any]:
    """Config sections of `baton sandbox`: failover with the template's replication account
    (old masters rejoin as replicas); a demo keeps Baton's log to warnings, the demo's report
    tells the story."""
    sections: dict[str, Any] = {
        "failover": {
            "mode": failover_mode,
            "replication_user": "repl",
            "replication_password": "repl",
            "auto_rejoin": True,
        }
    }
    if demo:
        sections["log"] = {"level": "warning"}
    return sections


def sandbox_down(state_dir: Path) -> None:
    """Stop any servers recorded in state_dir and delete it."""
    state_dir = Path(state_dir)
    if not state_dir.exists():
        return
    _stop_recorded_servers(state_dir)
    shutil.rmtree(state_dir)
