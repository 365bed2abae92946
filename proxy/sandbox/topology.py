"""A MariaDB GTID replication topology on loopback: master db1, read-only replicas db2, db3..."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from proxy.sandbox.config_writer import toml_dumps
from proxy.sandbox.mariadb import MariaDBInstance, PortInUseError, mariadb_template
from proxy.sandbox.processes import free_port, free_ports, terminate

STATE_FILE = "sandbox.json"


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
            # One process unless asked: the suite's expectations are those of one worker.
            "proxy": {"listen": f"127.0.0.1:{proxy_port}", "workers": 1},
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
