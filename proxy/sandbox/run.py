"""`baton sandbox`: a topology with Baton in front, kept across runs under a state directory."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proxy.sandbox.mariadb import mariadb_version
from proxy.sandbox.topology import STATE_FILE, ReplicationSandbox

CONFIG_FILE = "config.toml"


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
