"""The operations commands (`baton status`, `reload`, `promote`, `switchover`,
`notify-promotion`) run in-process with click's runner against a real Baton subprocess in
front of a real MariaDB topology. Promotions are checked on the servers themselves."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from test_admin import admin_stat, app_connect
from test_metrics import scrape, value

from proxy.cli import OpsError, backend_for_address, main
from proxy.config import parse_config
from proxy.sandbox import ReplicationSandbox, free_port
from proxy.sandbox.baton_process import BatonProcess, admin_rows, wait_for


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def admin_args(proc: BatonProcess, password: str = "admin") -> list[str]:
    return ["--admin", f"127.0.0.1:{proc.admin_port}", "--admin-user", "admin", "--admin-password", password]


def one_line_error(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def failover_wired(proc: BatonProcess) -> None:
    if str(admin_stat(proc, "failover_available")) != "1":
        pytest.xfail("failover not wired yet")


# --- pure: addresses to backend names ---------------------------------------------------------------

_CONFIG = parse_config(
    """
[[backends]]
name = "db1"
address = "127.0.0.1:3401"
role = "master"
[[backends]]
name = "db2"
address = "127.0.0.1:3402"
[[backends]]
name = "db3"
address = "db3.example.invalid:3401"
[[users]]
name = "app"
password = "app"
""",
    "test.toml",
)


def test_notify_maps_host_port_to_backend_names() -> None:
    assert backend_for_address(_CONFIG, "127.0.0.1:3402", "--new-master") == "db2"
    assert backend_for_address(_CONFIG, "DB3.example.invalid:3401", "--new-master") == "db3"
    assert backend_for_address(_CONFIG, "localhost:3401", "--new-master") == "db1"  # resolved
    with pytest.raises(OpsError, match="not a backend in test.toml"):
        backend_for_address(_CONFIG, "127.0.0.1:9999", "--new-master")
    with pytest.raises(OpsError, match="--new-master"):
        backend_for_address(_CONFIG, "db2", "--new-master")


def test_every_ops_command_has_help_with_examples() -> None:
    for command in ("status", "promote", "switchover", "reload", "notify-promotion"):
        result = run(command, "--help")
        assert result.exit_code == 0
        assert "Example" in result.output or "Orchestrator" in result.output, command
        assert "--admin HOST:PORT" in result.output


# --- status and errors ------------------------------------------------------------------------------


@pytest.fixture
def proc(sandbox: ReplicationSandbox, baton: Any) -> BatonProcess:
    return baton(sandbox)


def test_status_prints_backends_and_pools(sandbox: ReplicationSandbox, proc: BatonProcess) -> None:
    result = run("status", "--config", str(proc.config_path))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"Baton 0.1.0 at 127.0.0.1:{proc.admin_port}: master {sandbox.master.name}, epoch 1")
    header = lines[lines.index("BACKENDS") + 1].split()
    assert header[:4] == ["name", "address", "role", "state"]
    for inst in sandbox.instances:
        row = next(line.split() for line in lines if line.startswith(inst.name + " "))
        role = "master" if inst is sandbox.master else "replica"
        assert row[:4] == [inst.name, inst.address, role, "ONLINE"]
    assert "POOLS" in lines
    # The same with explicit admin options and no config at all.
    again = run("status", *admin_args(proc))
    assert again.exit_code == 0, again.output
    assert [line.split()[:4] for line in again.output.splitlines() if line.startswith("db")] == [
        line.split()[:4] for line in lines if line.startswith("db")
    ]


def test_errors_are_one_line_with_exit_status_1(proc: BatonProcess, tmp_path: Path) -> None:
    assert "admin login refused" in one_line_error(run("status", *admin_args(proc, password="bad")))
    closed = free_port()
    line = one_line_error(run("status", "--admin", f"127.0.0.1:{closed}", "--admin-user", "a", "--admin-password", "b"))
    assert f"cannot reach Baton's admin port at 127.0.0.1:{closed}" in line
    line = one_line_error(run("promote", "nope", *admin_args(proc)))
    assert "unknown backend 'nope'" in line
    missing = tmp_path / "missing.toml"
    assert "cannot read" in one_line_error(run("status", "--config", str(missing)))
    assert "pid file" in one_line_error(run("reload", "--pid-file", str(missing), *admin_args(proc)))


# --- reload -----------------------------------------------------------------------------------------


def test_reload_by_sighup_through_the_pid_file(sandbox: ReplicationSandbox, baton: Any, tmp_path: Path) -> None:
    pid_file = tmp_path / "baton.pid"
    proc = baton(sandbox, proxy={"pid_file": str(pid_file)})
    wait_for(pid_file.exists, what="the pid file")
    result = run("reload", "--config", str(proc.config_path))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"reloaded (pid {proc.pid}): no changes"
    assert admin_stat(proc, "reloads.ok") == "1"

    # A broken file: the CLI says what is wrong and does not signal Baton...
    good = proc.config_path.read_text()
    proc.config_path.write_text(good.replace("[routing]", "[routing]\nmax_lag_ms = 5", 1)
                                if "[routing]" in good else good + "\n[routing]\nmax_lag_ms = 5\n")
    line = one_line_error(run("reload", "--config", str(proc.config_path)))
    assert "routing.max_lag_ms: unknown key" in line
    assert admin_stat(proc, "reloads.failed") == "0"
    # ...unless told where Baton is without the config: then Baton refuses it, and says why.
    line = one_line_error(run("reload", "--pid-file", str(pid_file), *admin_args(proc)))
    assert "reload rejected" in line and "routing.max_lag_ms" in line
    assert admin_stat(proc, "reloads.failed") == "1"
    assert proc.is_running()


def test_reload_through_the_admin_port_without_a_pid_file(proc: BatonProcess) -> None:
    result = run("reload", "--config", str(proc.config_path))
    assert result.exit_code == 0, result.output
    assert result.output.split() == ["result", "changes", "ok", "no", "changes"]


# --- promotions (need the failover module) -------------------------------------------------------------


def _write_lands_on(proc: BatonProcess, topology: ReplicationSandbox, name: str) -> None:
    table = f"test.cli_{uuid.uuid4().hex[:8]}"
    conn = app_connect(proc)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {table} (a INT)")
            cur.execute(f"INSERT INTO {table} VALUES (7)")
            cur.execute("/* baton:master */ SELECT @@server_id")
            assert cur.fetchone()[0] == topology.instance(name).server_id
    finally:
        conn.close()
    assert topology.instance(name).sql(f"SELECT a FROM {table}") == [(7,)]


def _promoted_baton(make_sandbox: Callable[..., ReplicationSandbox], baton: Any) -> tuple[ReplicationSandbox, BatonProcess]:
    """db2 promoted on the servers the way Orchestrator does it; Baton not told yet."""
    topology = make_sandbox(replicas=2)
    proc = baton(topology, failover={"mode": "manual"})
    failover_wired(proc)
    topology.promote("db2")
    # Let the monitor see db2 writable and no longer replicating.
    wait_for(lambda: admin_rows(proc, "SELECT read_only FROM backends WHERE name = 'db2'")[0]["read_only"] == 0,
             what="the monitor to see db2 writable")
    return topology, proc


def test_promote_moves_writes_to_the_named_backend(make_sandbox: Callable[..., ReplicationSandbox], baton: Any) -> None:
    topology, proc = _promoted_baton(make_sandbox, baton)
    result = run("promote", "db2", "--config", str(proc.config_path))
    assert result.exit_code == 0, result.output
    assert result.output.split()[4:8] == ["db2", "promoted", "db2", "2"]
    rows = {r["name"]: r for r in admin_rows(proc, "SHOW BACKENDS")}
    assert rows["db2"]["role"] == "master" and rows["db2"]["epoch"] == 2
    assert rows["db1"]["fenced"] == 1
    _write_lands_on(proc, topology, "db2")
    failovers = admin_rows(proc, "SELECT kind, old, new, epoch, outcome FROM failovers")
    assert failovers[0] == {"kind": "admin", "old": "db1", "new": "db2", "epoch": 2, "outcome": "promoted"}
    metrics = scrape(proc)
    assert value(metrics, "baton_failovers_total", kind="admin", outcome="promoted") == 1
    assert value(metrics, "baton_failover_duration_seconds_count") == 1
    assert value(metrics, "baton_backend_is_master", backend="db2") == 1
    assert value(metrics, "baton_backend_fenced", backend="db1") == 1
    assert value(metrics, "baton_topology_epoch") == 2


def test_notify_promotion_maps_addresses_and_promotes(make_sandbox: Callable[..., ReplicationSandbox], baton: Any) -> None:
    topology, proc = _promoted_baton(make_sandbox, baton)
    db1, db2 = topology.instance("db1"), topology.instance("db2")
    result = run("notify-promotion", "--config", str(proc.config_path),
                 "--new-master", f"localhost:{db2.port}", "--old-master", db1.address)
    assert result.exit_code == 0, result.output
    assert "promoted" in result.output
    _write_lands_on(proc, topology, "db2")
    assert admin_rows(proc, "SELECT kind FROM failovers WHERE new = 'db2'") == [{"kind": "hook"}]
    # Baton refuses to name a read-only server master, and the hook exits non-zero.
    line = one_line_error(run("notify-promotion", "--config", str(proc.config_path),
                              "--new-master", topology.instance("db3").address))
    assert "PROMOTE 'db3' refused" in line


def test_switchover_changes_master_on_the_servers(make_sandbox: Callable[..., ReplicationSandbox], baton: Any) -> None:
    topology = make_sandbox(replicas=2)
    proc = baton(topology, failover={"mode": "manual", "replication_user": "repl", "replication_password": "repl"})
    failover_wired(proc)
    wait_for(lambda: admin_rows(proc, "SELECT replicating_from FROM backends WHERE name = 'db2'")[0]["replicating_from"] == "db1",
             what="the monitor to see db2 replicating from db1")
    result = run("switchover", "--to", "db2", "--config", str(proc.config_path), "--timeout", "60")
    assert result.exit_code == 0, result.output
    assert result.output.split()[4:8] == ["db2", "promoted", "db2", "2"]
    topology.refresh_roles()
    assert topology.master.name == "db2"
    assert {r.name for r in topology.replicas} == {"db1", "db3"}
    _write_lands_on(proc, topology, "db2")
    proc.signal(signal.SIGTERM)
    assert proc.process is not None and proc.process.wait(timeout=20) == 0
