"""Changes of master against real MariaDB: followed, automatic, planned, told, and fenced.

Each test builds its own topology (make_sandbox): they kill and promote servers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest
from test_monitor import Harness, new_table, run, sql, until, value

from proxy.config import FailoverConfig
from proxy.health.events import MasterLost, MasterPromoted, SplitBrainSuspected
from proxy.health.failover import FailoverCoordinator, PromotionRefused
from proxy.health.states import BackendState
from proxy.health.timeline import Timeline
from proxy.sandbox import MariaDBInstance, ReplicationSandbox

MakeSandbox = Callable[..., ReplicationSandbox]
REPL = {"replication_user": "repl", "replication_password": "repl"}


def coordinator(h: Harness) -> FailoverCoordinator:
    assert h.coordinator is not None
    return h.coordinator


async def slave_status(inst: MariaDBInstance) -> dict[str, object] | None:
    return await asyncio.to_thread(inst.slave_status)


async def replicating_from(inst: MariaDBInstance, master: MariaDBInstance) -> bool:
    s = await slave_status(inst)
    return bool(
        s
        and s["Master_Port"] == master.port
        and s["Slave_IO_Running"] == "Yes"
        and s["Slave_SQL_Running"] == "Yes"
    )


async def until_async(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[misc]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def steps_text(h: Harness, record_id: int) -> str:
    record = next(r for r in coordinator(h).timeline.records() if r.id == record_id)
    return "\n".join(text for _, text in record.steps)


# ---------------------------------------------------------------------------------------------


def test_follow_adopts_an_external_promotion_and_fences_the_old_master_when_it_returns(
    make_sandbox: MakeSandbox,
) -> None:
    sb = make_sandbox()
    db1, db2, db3 = sb.instances

    async def main() -> None:
        async with Harness(sb, failover=FailoverConfig(mode="follow")) as h:
            await h.ready()
            await asyncio.to_thread(db1.kill)
            await until(lambda: bool(h.of(MasterLost)), 5, "master loss not seen")
            await asyncio.sleep(0.5)
            assert h.of(MasterPromoted) == [], "follow mode must not promote by itself"

            started = time.monotonic()
            await asyncio.to_thread(sb.promote, "db2")  # what Orchestrator would do
            returned = time.monotonic()
            await until(lambda: bool(h.of(MasterPromoted)), 2, "promotion not adopted in 2 s")
            at, event = h.of(MasterPromoted)[0]
            print(f"\nfollow: adopted {(at - started) * 1000:.0f} ms after the promotion began")
            assert at - returned < 2
            assert event == MasterPromoted("db1", "db2", 2, "observed")
            assert h.topology.master == "db2" and h.topology.is_fenced("db1")
            assert h.topology.writable_master() == "db2"
            await until(
                lambda: h.topology.readable_replicas() == ["db3"], 3, "db3 not seen under db2"
            )
            [row] = [r for r in coordinator(h).timeline.as_rows() if r["epoch"] == 2]
            assert (row["kind"], row["old"], row["new"], row["outcome"]) == (
                "observed",
                "db1",
                "db2",
                "promoted",
            )
            assert row["promoted_ms"] is not None and row["promoted_ms"] > 0

            # The old master restarts writable (its config says read_only=0): an alarm,
            # then fenced read_only; it takes no reads, since it has not rejoined.
            since = time.monotonic()
            await asyncio.to_thread(db1.start)
            await until(
                lambda: any("db1" in e.writers for _, e in h.of(SplitBrainSuspected, since)),
                5,
                "split brain not reported",
            )
            await until_async(
                lambda: value_is(db1, "SELECT @@read_only", 1), 5, "old master not fenced"
            )
            await until(lambda: coordinator(h).split_brain is None, 3, "alarm never cleared")
            assert h.topology.writable_master() == "db2"
            assert "db1" not in h.topology.readable_replicas()
            assert await slave_status(db1) is None  # auto_rejoin is off

    run(main())


async def value_is(inst: MariaDBInstance, statement: str, expected: object) -> bool:
    return await value(inst, statement) == expected


def test_auto_failover_promotes_the_most_advanced_replica_and_refuses_to_flap(
    make_sandbox: MakeSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    sb = make_sandbox()
    db1, db2, db3 = sb.instances
    cfg = FailoverConfig(mode="auto", min_interval_s=60, auto_rejoin=True, **REPL)

    async def main() -> None:
        table = new_table()
        async with Harness(sb, failover=cfg) as h:
            await h.ready()
            await sql(db1, f"CREATE TABLE {table} (id INT PRIMARY KEY)")
            await asyncio.to_thread(sb.wait_caught_up)
            # db2 stops receiving: db3 ends up the most advanced although db2 comes first.
            await sql(db2, "STOP SLAVE IO_THREAD")
            for i in range(5):
                await sql(db1, f"INSERT INTO {table} VALUES ({i})")
            pos = await value(db1, "SELECT @@gtid_binlog_pos")
            await until_async(
                lambda: value_is(db3, "SELECT @@gtid_slave_pos", pos), 5, "db3 behind"
            )
            await until(lambda: h.monitor.health("db3").gtid_slave_pos == pos, 3, "monitor behind")

            killed = time.monotonic()
            await asyncio.to_thread(db1.kill)
            await until(lambda: bool(h.of(MasterPromoted)), 15, "no automatic promotion")
            at, event = h.of(MasterPromoted)[0]
            print(
                f"\nauto failover: master killed -> db3 promoted in {(at - killed) * 1000:.0f} ms"
            )
            assert event == MasterPromoted("db1", "db3", 2, "auto")
            assert h.topology.epoch == 2 and h.topology.is_fenced("db1")
            assert await value(db3, "SELECT @@read_only") == 0
            assert await slave_status(db3) is None
            # db2 was repointed and fetched from db3 what it had missed.
            await until_async(lambda: replicating_from(db2, db3), 5, "db2 not under db3")
            await until_async(
                lambda: value_is(db2, f"SELECT COUNT(*) FROM {table}", 5), 5, "db2 lost rows"
            )

            timeline = coordinator(h).timeline
            await sql(db3, f"INSERT INTO {table} VALUES (10)")
            timeline.note_first_write(2)
            [record] = [r for r in timeline.records() if r.epoch == 2]
            assert (record.kind, record.old, record.new, record.outcome) == (
                "auto",
                "db1",
                "db3",
                "promoted",
            )
            assert record.detected_at <= record.decided_at <= record.promoted_at  # type: ignore[operator]
            assert record.promoted_at <= record.first_write_at  # type: ignore[operator]
            steps = steps_text(h, record.id)
            for expected in (
                "master db1 lost",
                "confirmed dead",
                "chose db3",
                "db3: STOP SLAVE IO_THREAD",
                "db3 has applied",
                "db3: RESET SLAVE ALL",
                "db3: SET GLOBAL read_only = 0",
                "db2: CHANGE MASTER TO",
                "db3 is master of epoch 2",
            ):
                assert expected in steps, f"{expected!r} missing from:\n{steps}"
            assert "MASTER_PASSWORD='***'" in steps and "MASTER_PASSWORD='repl'" not in steps
            row = timeline.as_rows()[0]
            assert row["first_write_ms"] is not None and row["promoted_ms"] is not None

            # The old master comes back: fenced, then (auto_rejoin) a replica of db3.
            await asyncio.to_thread(db1.start)
            await until_async(lambda: replicating_from(db1, db3), 10, "db1 never rejoined")
            assert await value(db1, "SELECT @@read_only") == 1
            await until(
                lambda: "db1" in h.topology.readable_replicas(), 5, "rejoined db1 not readable"
            )
            await until_async(
                lambda: value_is(db1, f"SELECT COUNT(*) FROM {table}", 6), 5, "db1 not caught up"
            )

            # A second failure within min_interval_s: refused, logged, nothing moves.
            caplog.clear()
            since = time.monotonic()
            await asyncio.to_thread(db3.kill)
            await until(lambda: bool(h.of(MasterLost, since)), 5, "loss of db3 not seen")
            await until(
                lambda: timeline.records()[-1].outcome.startswith("refused"), 3, "not refused"
            )
            assert "min_interval_s=60" in timeline.records()[-1].outcome
            assert any(
                "min_interval_s" in r.getMessage() and r.levelno == logging.ERROR
                for r in caplog.records
            )
            await asyncio.sleep(1.0)
            assert h.topology.master == "db3" and h.topology.epoch == 2
            assert len(h.of(MasterPromoted)) == 1

    with caplog.at_level(logging.INFO, logger="baton.failover"):
        run(main())


def test_auto_failover_skips_unpromotable_replicas_and_carries_semi_sync_over(
    make_sandbox: MakeSandbox,
) -> None:
    sb = make_sandbox(semi_sync=True)
    db1, db2, db3 = sb.instances

    async def main() -> None:
        async with Harness(
            sb, failover=FailoverConfig(mode="auto"), db2={"promotable": False}
        ) as h:
            await h.ready()
            await sql(db3, "SET GLOBAL rpl_semi_sync_master_enabled = 0")
            await sql(db1, f"CREATE TABLE {new_table()} (id INT PRIMARY KEY)")
            await asyncio.to_thread(sb.wait_caught_up)
            await until(
                lambda: all(h.monitor.health(n).lag_s == 0 for n in ("db2", "db3")), 3, "lag"
            )
            await asyncio.to_thread(db1.kill)
            await until(lambda: bool(h.of(MasterPromoted)), 15, "no automatic promotion")
            assert h.of(MasterPromoted)[0][1] == MasterPromoted("db1", "db3", 2, "auto")
            assert await value(db3, "SELECT @@rpl_semi_sync_master_enabled") == 1
            await until_async(lambda: replicating_from(db2, db3), 5, "db2 not under db3")

    run(main())


def test_switchover_leaves_old_master_replicating_from_the_new_one(
    make_sandbox: MakeSandbox,
) -> None:
    sb = make_sandbox()
    db1, db2, db3 = sb.instances

    async def main() -> None:
        table = new_table()
        async with Harness(sb, failover=FailoverConfig(mode="follow", **REPL)) as h:
            await h.ready()
            await sql(db1, f"CREATE TABLE {table} (id INT PRIMARY KEY)")
            await sql(db1, f"INSERT INTO {table} VALUES (1)")
            await until(
                lambda: all(h.monitor.health(n).lag_s == 0 for n in ("db2", "db3")), 3, "lag"
            )
            with pytest.raises(PromotionRefused, match="already the master"):
                await coordinator(h).switchover("db1")

            started = time.monotonic()
            record = await coordinator(h).switchover("db2")
            print(f"\nswitchover took {(time.monotonic() - started) * 1000:.0f} ms")
            assert (record.kind, record.old, record.new, record.epoch, record.outcome) == (
                "switchover",
                "db1",
                "db2",
                2,
                "promoted",
            )
            assert not coordinator(h).switchover_in_progress
            assert h.of(MasterPromoted)[-1][1] == MasterPromoted("db1", "db2", 2, "switchover")
            assert await value(db2, "SELECT @@read_only") == 0
            assert await slave_status(db2) is None
            assert await value(db1, "SELECT @@read_only") == 1
            assert await replicating_from(db1, db2)
            assert await replicating_from(db3, db2)

            await sql(db2, f"INSERT INTO {table} VALUES (2)")
            pos = await value(db2, "SELECT @@gtid_binlog_pos")
            for inst in (db1, db3):
                await until_async(
                    lambda inst=inst: value_is(inst, "SELECT @@gtid_binlog_pos", pos),  # type: ignore[misc]
                    5,
                    f"{inst.name} did not reach {pos}",
                )
                assert await value(inst, f"SELECT COUNT(*) FROM {table}") == 2
            await until(
                lambda: h.topology.readable_replicas() == ["db1", "db3"], 3, "old master unreadable"
            )
            assert h.topology.writable_master() == "db2"
            # The old master replicates from db2 with nothing db2 lacks: fencing ends, and
            # it may be promoted again (a DBA switching back after maintenance).
            await until(lambda: not h.topology.is_fenced("db1"), 3, "db1 still fenced")
            assert coordinator(h).backend_note("db1") is None
            assert coordinator(h).split_brain is None

    run(main())


def test_manual_mode_does_nothing_until_told(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox()
    db1 = sb.instances[0]

    async def main() -> None:
        async with Harness(sb, failover=FailoverConfig(mode="manual")) as h:
            await h.ready()
            await asyncio.to_thread(db1.kill)
            await until(lambda: bool(h.of(MasterLost)), 5, "master loss not seen")
            await asyncio.to_thread(sb.promote, "db3")
            await asyncio.sleep(1.5)
            assert h.of(MasterPromoted) == [] and h.topology.master == "db1"
            [record] = coordinator(h).timeline.records()
            assert (record.kind, record.outcome) == ("admin", "in progress")

            told = coordinator(h).promote
            with pytest.raises(PromotionRefused, match="unknown backend"):
                await told("db9", source="admin")
            with pytest.raises(PromotionRefused, match="read_only=1"):
                await told("db2", source="admin")
            # Naming the current (lost) master changes nothing.
            assert (await told("db1", source="admin")).outcome.startswith("unchanged")

            record = await told("db3", source="admin")
            assert (record.kind, record.old, record.new, record.epoch, record.outcome) == (
                "admin",
                "db1",
                "db3",
                2,
                "promoted",
            )
            assert h.of(MasterPromoted)[0][1] == MasterPromoted("db1", "db3", 2, "admin")
            assert h.topology.writable_master() == "db3" and h.topology.is_fenced("db1")
            assert (await told("db3", source="admin")).outcome.startswith("unchanged")
            with pytest.raises(PromotionRefused, match="fenced"):
                await told("db1", source="admin")
            # A promotion from another Baton with an older epoch is ignored.
            stale = await told("db3", source="redis", epoch=1)
            assert stale.outcome == "ignored: epoch 1 is not newer"
            assert h.topology.epoch == 2 and len(h.of(MasterPromoted)) == 1

    run(main())


def test_returning_old_master_with_transactions_the_new_one_lacks_is_left_offline(
    make_sandbox: MakeSandbox,
) -> None:
    sb = make_sandbox()
    db1, db2, db3 = sb.instances
    cfg = FailoverConfig(mode="auto", auto_rejoin=True, **REPL)

    async def main() -> None:
        table = new_table()
        async with Harness(sb, failover=cfg) as h:
            await h.ready()
            await sql(db1, f"CREATE TABLE {table} (id INT PRIMARY KEY)")
            await asyncio.to_thread(sb.wait_caught_up)
            for replica in (db2, db3):
                await sql(replica, "STOP SLAVE IO_THREAD")
            await sql(db1, f"INSERT INTO {table} VALUES (1)")  # only db1 will ever have it
            await asyncio.to_thread(db1.kill)
            await until(lambda: bool(h.of(MasterPromoted)), 15, "no automatic promotion")
            assert h.of(MasterPromoted)[0][1].new == "db2"

            await asyncio.to_thread(db1.start)
            await until(
                lambda: h.monitor.health("db1").state is BackendState.OFFLINE_HARD,
                10,
                "diverged old master not taken out",
            )
            assert await value(db1, "SELECT @@read_only") == 1
            assert await slave_status(db1) is None
            assert "db1" not in h.topology.readable_replicas()
            steps = "\n".join(t for r in coordinator(h).timeline.records() for _, t in r.steps)
            assert "db1 has transactions db2 lacks" in steps

    run(main())


# --- the timeline on its own (pure) ------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_timeline_counts_statements_held_while_the_loss_was_being_detected() -> None:
    clock = FakeClock()
    timeline = Timeline(clock)
    assert timeline.note_client("held") is False  # the master's loss is not confirmed yet
    clock.now += 0.7
    rec = timeline.open("auto", "db1")  # detection: the held statement was part of it
    assert rec.held == 1
    timeline.promoted(rec, "db2", 2, "auto")
    timeline.note_first_write(2)
    clock.now += 30
    assert timeline.note_client("held") is False  # a later hold belongs to a later failover
    rec2 = timeline.open("auto", "db2")
    assert (rec.held, rec2.held) == (1, 1)


def test_timeline_measures_from_detection_and_counts_what_clients_saw() -> None:
    clock = FakeClock()
    timeline = Timeline(clock, keep=2)
    clock.now -= 60
    assert timeline.note_client("held") is False  # no failover yet: kept aside...
    clock.now += 60  # ...and dropped when no failover follows within PENDING_WINDOW_S
    rec = timeline.open("auto", "db1")
    clock.now += 0.3
    timeline.decided(rec, "db2")
    timeline.step(rec, "db2: RESET SLAVE ALL")
    clock.now += 0.2
    timeline.promoted(rec, "db2", 2, "auto")
    assert timeline.note_client("held") and timeline.note_client("held")
    timeline.note_first_write(1)  # not this record's epoch
    clock.now += 0.05
    timeline.note_first_write(2)
    clock.now += 1
    timeline.note_first_write(2)  # only the first write counts
    assert timeline.note_client("retried")
    clock.now += 10
    assert timeline.note_client("failed") is False  # long after the switch
    timeline.finish(rec, "failed")  # a promoted record keeps its outcome
    [row] = timeline.as_rows()
    assert row == {
        "id": 1,
        "kind": "auto",
        "old": "db1",
        "new": "db2",
        "epoch": 2,
        "outcome": "promoted",
        "age_s": 11.5,
        "decided_ms": 300.0,
        "promoted_ms": 500.0,
        "first_write_ms": 550.0,
        "held": 2,
        "retried": 1,
        "failed": 0,
        "steps": "+300ms db2: RESET SLAVE ALL",
        "error": None,
    }
    with pytest.raises(ValueError):
        timeline.note_client("dropped")  # type: ignore[arg-type]
    timeline.open("switchover", "db2")
    timeline.open("admin", "db3")
    assert [r.id for r in timeline.records()] == [2, 3]  # keeps the last `keep`


def test_with_no_master_configured_the_writable_server_is_discovered(
    sandbox: ReplicationSandbox,
) -> None:
    async def main() -> None:
        failover = FailoverConfig(mode="manual")
        async with Harness(sandbox, failover=failover, db1={"role": "replica"}) as h:
            assert h.topology.master is None and h.topology.writable_master() is None
            await until(lambda: h.topology.writable_master() == "db1", 5, "master not found")
            assert h.of(MasterPromoted)[0][1] == MasterPromoted(None, "db1", 2, "observed")
            assert not h.topology.is_fenced("db1")
            await until(
                lambda: h.topology.readable_replicas() == ["db2", "db3"], 3, "replicas unreadable"
            )

    run(main())


def test_switchover_to_a_replica_that_cannot_catch_up_gives_the_master_back(
    make_sandbox: MakeSandbox,
) -> None:
    sb = make_sandbox()
    db1, db2, db3 = sb.instances

    async def main() -> None:
        table = new_table()
        async with Harness(
            sb,
            failover=FailoverConfig(mode="follow", **REPL),
            coordinator_options={"switchover_timeout_s": 0.5},
        ) as h:
            await h.ready()
            await sql(db1, f"CREATE TABLE {table} (id INT PRIMARY KEY)")
            await until(
                lambda: all(h.monitor.health(n).lag_s == 0 for n in ("db2", "db3")), 3, "lag"
            )
            # db2's applier blocks on a table lock: it cannot apply the next write.
            blocker = await asyncio.to_thread(db2.connect)
            try:
                await asyncio.to_thread(blocker.cursor().execute, f"LOCK TABLES {table} WRITE")
                await sql(db1, f"INSERT INTO {table} VALUES (1)")
                with pytest.raises(PromotionRefused, match="db1 is master again"):
                    await coordinator(h).switchover("db2")
            finally:
                await asyncio.to_thread(blocker.close)
            assert not coordinator(h).switchover_in_progress
            assert await value(db1, "SELECT @@read_only") == 0
            assert h.topology.master == "db1" and h.topology.epoch == 1
            assert h.of(MasterPromoted) == []
            record = coordinator(h).timeline.records()[-1]
            assert (record.kind, record.outcome) == (
                "switchover",
                "failed: target did not catch up",
            )
            await sql(db1, f"INSERT INTO {table} VALUES (2)")
            await asyncio.to_thread(sb.wait_caught_up)
            assert await replicating_from(db2, db1)

    run(main())
