"""Resuming a failover from what the servers say (pure): a writable detached replica is
adopted, a detached read-only one is finished, stopped replicas are started again, and
anything ambiguous is refused. Finishing and undoing happen only on a takeover."""

from __future__ import annotations

from proxy.health.monitor import BackendHealth
from proxy.health.states import BackendState
from proxy.health.takeover import Resume, plan_resume


def server(name: str, *, read_only: bool = True, master: str | None = "db1",
           io: str = "Connecting", sql: bool = True, alive: bool = True) -> BackendHealth:
    return BackendHealth(
        name=name, address="127.0.0.1:1", state=BackendState.ONLINE, alive=alive,
        last_check_at=1.0, last_error=None, latency_ms=1.0, checks=1, failures=0,
        replication_checked_at=1.0, read_only=read_only,
        master_host="127.0.0.1" if master else None, master_port=1 if master else None,
        master_name=master, io_state=io if master else None, io_running=io == "Yes",
        sql_running=sql if master else False,
    )


DEAD_MASTER = server("db1", read_only=False, master=None, alive=False)


def test_nothing_half_done_means_an_election() -> None:
    plan = plan_resume("db1", [DEAD_MASTER, server("db2"), server("db3")], [], took_over=True)
    assert plan == Resume() and plan.elect


def test_a_writable_detached_replica_is_adopted_even_without_a_takeover() -> None:
    servers = [server("db2", read_only=False, master=None), server("db3")]
    for took_over in (True, False):
        assert plan_resume("db1", servers, [], took_over=took_over) == Resume(adopt="db2")


def test_a_detached_read_only_replica_is_finished_only_on_a_takeover() -> None:
    servers = [server("db2", master=None), server("db3")]
    assert plan_resume("db1", servers, [], took_over=True) == Resume(finish="db2")
    assert plan_resume("db1", servers, [], took_over=False).elect


def test_replicas_stopped_by_the_dead_holder_are_started_again_on_a_takeover() -> None:
    servers = [server("db2", io="No"), server("db3", sql=False), server("db4", master="db9", io="No")]
    assert plan_resume("db1", servers, [], took_over=True) == Resume(restart=("db2", "db3"))
    assert plan_resume("db1", servers, [], took_over=False) == Resume()


def test_fenced_and_unreachable_servers_take_no_part() -> None:
    fenced_old_master = server("db0", master=None)  # detached and read-only, like a half-promotion
    gone = server("db3", read_only=False, master=None, alive=False)
    plan = plan_resume("db1", [fenced_old_master, gone, server("db2")], ["db0"], took_over=True)
    assert plan.elect and plan.restart == ()


def test_ambiguous_states_are_refused() -> None:
    two_writers = [server("db2", read_only=False, master=None), server("db3", read_only=False, master=None)]
    assert "db2, db3" in str(plan_resume("db1", two_writers, [], took_over=False).conflict)
    writer_and_half = [server("db2", read_only=False, master=None), server("db3", master=None)]
    assert plan_resume("db1", writer_and_half, [], took_over=True).conflict is not None
    two_half = [server("db2", master=None), server("db3", master=None)]
    assert plan_resume("db1", two_half, [], took_over=True).conflict is not None
    assert not plan_resume("db1", two_half, [], took_over=True).elect
