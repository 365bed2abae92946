"""Failover the operator drives: admin FAILOVER [TO 'name'], its refusals, and mode changes
that act on a master already dead (RELOAD into auto, SET FAILOVER MODE 'auto').

Real MariaDB topologies, Baton as a subprocess, PyMySQL clients writing through it. The
times printed (``pytest -s``) are from the command to the first write acknowledged after it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import tomllib
from typing import Any

import pymysql
import pytest

from proxy.sandbox import ReplicationSandbox, toml_dumps
from proxy.sandbox.baton_process import REPO_ROOT, BatonProcess, admin_rows, wait_for
from tests.adversity.test_e2e_failover import (
    MakeSandbox,
    StartBaton,
    ids_on,
    master_row,
    run_load,
    show_timeline,
    stop_load,
    timeline,
    topology_with_baton,
    wait_promoted,
)

# The acceptance bound of issue 10: writes flow again this soon after the operator acts.
RESUME_S = 3.0


def master_lost(proc: BatonProcess) -> bool:
    return master_row(proc)["state"] in ("SHUNNED", "OFFLINE_HARD")


def kill_master(sb: ReplicationSandbox, proc: BatonProcess) -> None:
    """SIGKILL the master and wait until Baton has lost it (SHUNNED)."""
    sb.master.kill()
    wait_for(lambda: master_lost(proc), 5, f"{sb.master.name} lost")


def writing(workers: list[Any]) -> None:
    """Every worker is connected and has written (a login while the master is dead is
    another test's subject)."""
    wait_for(lambda: all(w.ok_at for w in workers), 10, "every worker writing")


def first_write_after(workers: list[Any], at: float) -> float:
    """Seconds from `at` to the first write any worker had acknowledged after it (waiting up
    to RESUME_S + 2 s for one)."""
    wait_for(lambda: any(t > at for w in workers for t in w.ok_at), RESUME_S + 2, "a write")
    return min(t for w in workers for t in w.ok_at if t > at) - at


def only_in_flight_at_the_kill(workers: list[Any], acted_at: float) -> None:
    """Writes in flight when the master died get 9103 (outcome unknown); every other write
    was held until the new master took it, so nothing failed after the operator acted."""
    late = [(w.index, code, msg) for w in workers for t, code, msg in w.errors
            if code != 9103 or t > acted_at]
    assert late == [], late


def baton_failover(proc: BatonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "failover", "--admin", f"127.0.0.1:{proc.admin_port}",
         "--admin-user", "admin", "--admin-password", "admin", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )


def refused(proc: BatonProcess, command: str) -> str:
    with pytest.raises(pymysql.err.MySQLError) as info:
        admin_rows(proc, command)
    return str(info.value.args[1])


def test_failover_command_in_manual_mode_brings_8_writers_back_within_3s(
    make_sandbox: MakeSandbox, baton: StartBaton
) -> None:
    sb, proc = topology_with_baton(make_sandbox, baton, mode="manual", buffer_window_ms=20000,
        semi_sync=True,  # without it a crash may lose an acknowledged write: MariaDB, not Baton
    )

    alive = refused(proc, "FAILOVER")
    assert "master db1 is alive" in alive and "SWITCHOVER" in alive, alive
    assert "unknown backend 'nope'" in refused(proc, "FAILOVER TO 'nope'")

    load = run_load(proc, {"write": 8})
    writing(load)
    kill_master(sb, proc)
    waiting = show_timeline(proc, "manual, before FAILOVER")[0]
    assert waiting["outcome"] == "in progress", waiting
    assert "waiting for an operator (mode manual)" in str(waiting["steps"]), waiting
    time.sleep(0.5)  # nothing moves in manual mode
    assert master_row(proc)["name"] == "db1"

    ordered_at = time.monotonic()
    rows = admin_rows(proc, "FAILOVER")
    answered = time.monotonic() - ordered_at
    new = wait_promoted(proc)
    resumed = first_write_after(load, ordered_at)
    time.sleep(0.5)
    stop_load(load)
    rec = show_timeline(proc, "manual FAILOVER")[0]
    print(f"\nFAILOVER answered in {answered:.3f} s; first write {resumed:.3f} s after it")
    assert rows == [{"backend": new, "outcome": "promoted", "master": new, "epoch": 2}], rows
    assert resumed <= RESUME_S, timeline(proc)
    assert (rec["kind"], rec["new"], rec["outcome"]) == ("admin", new, "promoted"), rec
    assert "admin ordered a failover of db1" in str(rec["steps"]), rec
    only_in_flight_at_the_kill(load, ordered_at)
    acked = [i for w in load for i in w.acked]
    assert ids_on(sb.instance(new), acked) == set(acked)
    other = next(r for r in sb.replicas if r.name != new)
    wait_for(lambda: (other.slave_status() or {}).get("Master_Port") == sb.instance(new).port,
             5, f"{other.name} repointed to {new}")


def test_failover_to_a_named_replica_and_refusal_when_it_cannot_be_promoted(
    make_sandbox: MakeSandbox, baton: StartBaton
) -> None:
    sb, proc = topology_with_baton(make_sandbox, baton, mode="manual")
    alive = baton_failover(proc)
    assert alive.returncode == 1 and "use SWITCHOVER" in alive.stderr, alive
    kill_master(sb, proc)
    assert "db1 is the master being replaced" in refused(proc, "FAILOVER TO 'db1'")
    sb.instance("db2").kill()
    wait_for(lambda: not any(r["name"] == "db2" and r["state"] == "ONLINE"
                             for r in admin_rows(proc, "SHOW BACKENDS")), 5, "db2 down")
    assert "db2 is unreachable" in refused(proc, "FAILOVER TO 'db2'")
    done = baton_failover(proc, "--to", "db3")  # the CLI, as an operator would
    assert done.returncode == 0, done
    assert re.search(r"db3\s+promoted\s+db3\s+2", done.stdout), done.stdout
    assert wait_promoted(proc) == "db3"


def _config_with_mode(proc: BatonProcess, mode: str) -> str:
    config = tomllib.loads(proc.config_path.read_text())
    config["failover"]["mode"] = mode
    return toml_dumps(config)


def _dead_master_in(mode: str, sb: ReplicationSandbox, proc: BatonProcess) -> list[Any]:
    load = run_load(proc, {"write": 4})
    writing(load)
    kill_master(sb, proc)
    time.sleep(1.0)
    assert master_row(proc)["name"] == "db1"
    rec = show_timeline(proc, f"{mode}, master dead")[0]
    assert rec["outcome"] == "in progress" and f"(mode {mode})" in str(rec["steps"]), rec
    return load


def test_reload_from_follow_to_auto_with_a_dead_master_fails_over_within_3s(
    make_sandbox: MakeSandbox, baton: StartBaton
) -> None:
    sb, proc = topology_with_baton(make_sandbox, baton, mode="follow", buffer_window_ms=20000)
    load = _dead_master_in("follow", sb, proc)
    assert "waiting for a promotion made elsewhere" in timeline(proc)

    proc.rewrite_config(_config_with_mode(proc, "auto"))
    reloaded_at = time.monotonic()
    admin_rows(proc, "RELOAD")
    wait_promoted(proc, timeout=RESUME_S + 2)
    promoted = time.monotonic() - reloaded_at
    resumed = first_write_after(load, reloaded_at)
    stop_load(load)
    rec = show_timeline(proc, "follow -> auto")[0]
    print(f"\nreload to auto: promoted {promoted:.3f} s, first write {resumed:.3f} s after RELOAD")
    assert promoted <= RESUME_S and resumed <= RESUME_S, timeline(proc)
    assert rec["outcome"] == "promoted" and "failing over now" in str(rec["steps"]), rec
    only_in_flight_at_the_kill(load, reloaded_at)


def test_set_failover_mode_auto_with_a_dead_master_fails_over(
    make_sandbox: MakeSandbox, baton: StartBaton
) -> None:
    sb, proc = topology_with_baton(make_sandbox, baton, mode="manual", buffer_window_ms=20000)
    assert "unknown failover mode" in refused(proc, "SET FAILOVER MODE 'sometimes'")
    load = _dead_master_in("manual", sb, proc)
    switched_at = time.monotonic()
    admin_rows(proc, "SET FAILOVER MODE 'auto'")
    wait_promoted(proc, timeout=RESUME_S + 2)
    resumed = first_write_after(load, switched_at)
    stop_load(load)
    print(f"\nSET FAILOVER MODE 'auto': first write {resumed:.3f} s after it")
    assert resumed <= RESUME_S, timeline(proc)
    only_in_flight_at_the_kill(load, switched_at)


def test_a_waiting_record_is_closed_when_the_master_comes_back(
    make_sandbox: MakeSandbox, baton: StartBaton
) -> None:
    sb, proc = topology_with_baton(make_sandbox, baton, mode="follow")
    kill_master(sb, proc)
    sb.master.start()
    rec = wait_for(lambda: (r := admin_rows(proc, "SHOW FAILOVERS")[0])["outcome"] != "in progress"
                   and r, 10, f"the record closed\n{timeline(proc)}")
    assert rec["outcome"] == "cancelled: master came back", rec
    assert "db1 answers again" in str(rec["steps"]), rec
    assert master_row(proc)["name"] == "db1"


def test_failover_is_refused_when_no_candidate_qualifies(
    make_sandbox: MakeSandbox, baton: StartBaton
) -> None:
    sb = make_sandbox()
    backends = [
        {"name": i.name, "address": i.address, "role": "master" if i is sb.master else "replica",
         "promotable": i is sb.master}
        for i in sb.instances
    ]
    proc = baton(sb, backends=backends, failover={"mode": "manual", "replication_user": "repl",
                                                  "replication_password": "repl"})
    wait_for(lambda: all(r["state"] == "ONLINE" for r in admin_rows(proc, "SHOW BACKENDS")), 10,
             "backends ONLINE")
    kill_master(sb, proc)
    reason = refused(proc, "FAILOVER")
    assert "no live replica is promotable" in reason, reason
    assert "promotable = false" in refused(proc, "FAILOVER TO 'db2'")
    rec = admin_rows(proc, "SHOW FAILOVERS")[0]
    assert rec["outcome"] == "refused: no live replica is promotable", timeline(proc)
    assert master_row(proc)["name"] == "db1"


def test_failover_of_a_master_the_operator_took_offline_fences_it(
    make_sandbox: MakeSandbox, baton: StartBaton
) -> None:
    sb, proc = topology_with_baton(make_sandbox, baton, mode="manual", buffer_window_ms=20000,
        semi_sync=True,  # without it a crash may lose an acknowledged write: MariaDB, not Baton
    )
    load = run_load(proc, {"write": 4})
    writing(load)
    admin_rows(proc, "SET BACKEND 'db1' OFFLINE_HARD")
    ordered_at = time.monotonic()
    rows = admin_rows(proc, "FAILOVER")
    new = wait_promoted(proc)
    resumed = first_write_after(load, ordered_at)
    stop_load(load)
    rec = show_timeline(proc, "FAILOVER of an OFFLINE_HARD master")[0]
    print(f"\nFAILOVER of a master taken offline: first write {resumed:.3f} s after it")
    assert rows[0]["outcome"] == "promoted" and rows[0]["master"] == new, rows
    assert resumed <= RESUME_S, timeline(proc)
    assert "STOP SLAVE IO_THREAD" in str(rec["steps"]), rec
    wait_for(lambda: sb.master.variable("read_only") == 1, 5, "db1 fenced read_only")
    acked = [i for w in load for i in w.acked]
    assert ids_on(sb.instance(new), acked) == set(acked)
