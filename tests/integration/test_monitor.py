"""The monitor against real MariaDB: roles, GTIDs, lag, clean probes, a hang versus a crash.

Short intervals everywhere (probes every 100 ms) so the tests stay quick; the detection
bounds asserted are the ones the defaults scale up from.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from proxy.config import MonitorConfig
from proxy.health.events import (
    BackendStateChanged,
    BackendUp,
    MasterLost,
    ReplicaCaughtUp,
    ReplicaLagging,
)
from proxy.health.states import BackendState
from proxy.sandbox import ReplicationSandbox
from tests.support.monitor_harness import (
    FAST,
    Harness,
    aborted_connects,
    new_table,
    run,
    sql,
    until,
    value,
)


def test_reports_roles_read_only_gtids_and_leaves_no_aborted_connects(
    sandbox: ReplicationSandbox,
) -> None:
    master, db2, db3 = sandbox.instances

    async def main() -> None:
        before = {i.name: await aborted_connects(i) for i in sandbox.instances}
        table = new_table()
        async with Harness(sandbox) as h:
            await h.ready()
            await sql(master, f"CREATE TABLE {table} (id INT PRIMARY KEY)")
            await sql(master, f"INSERT INTO {table} VALUES (1)")
            pos = await value(master, "SELECT @@gtid_binlog_pos")

            def seen() -> bool:
                return h.monitor.health("db1").gtid_binlog_pos == pos and all(
                    h.monitor.health(n).gtid_slave_pos == pos and h.monitor.health(n).lag_s == 0
                    for n in ("db2", "db3")
                )

            await until(seen, 5, f"monitor never saw {pos} everywhere")
            m = h.monitor.health("db1")
            assert (m.read_only, m.is_replica, m.server_id, m.state) == (
                False,
                False,
                1,
                BackendState.ONLINE,
            )
            assert m.lag_s == 0 and m.semi_sync_master is False
            for name, inst in (("db2", db2), ("db3", db3)):
                r = h.monitor.health(name)
                assert r.read_only is True and r.server_id == inst.server_id
                assert (r.master_name, r.master_port) == ("db1", master.port)
                assert (r.io_state, r.io_running, r.sql_running) == ("Yes", True, True)
                assert r.gtid_io_pos == pos and r.gtid_current_pos == pos
                assert r.seconds_behind_master == 0 and r.lag_s == 0
            views = {v.name: v for v in h.topology.snapshot().backends}
            assert views["db2"].replicating_from == "db1" and views["db1"].replicating_from is None
            assert h.topology.readable_replicas() == ["db2", "db3"]
            statuses = {s.name: s for s in h.monitor.replica_statuses()}
            assert set(statuses) == {"db2", "db3"}
            assert all(
                s.alive and s.promotable and s.gtid_slave_pos == pos for s in statuses.values()
            )

            await asyncio.sleep(1.0)  # several pings and fresh connects on every server
            for health in h.monitor.all_health():
                assert health.checks >= 10 and health.failures == 0, health
                assert health.latency_ms is not None and health.latency_ms < 400
        await sql(master, f"DROP TABLE {table}")
        after = {i.name: await aborted_connects(i) for i in sandbox.instances}
        assert after == before, "a health check left an aborted connection on a server"

    run(main())


def test_stopping_mid_login_leaves_no_aborted_connects(sandbox: ReplicationSandbox) -> None:
    """A stop (shutdown, reload) landing in the middle of a probe's login lets it finish.

    Probes every 5 ms and stops at varying points make it near certain that some stop
    catches a login between the TCP connect and the OK packet; cutting that short is what
    the server counts as an aborted connect (and, repeated, blocks the host).
    """
    busy = MonitorConfig(
        interval_ms=5,
        timeout_ms=400,
        replication_interval_ms=5,
        connect_interval_ms=5,
        failure_threshold=3,
    )

    async def main() -> None:
        before = {i.name: await aborted_connects(i) for i in sandbox.instances}
        for round_ in range(30):
            async with Harness(sandbox, busy):
                await asyncio.sleep(0.002 * round_)
        after = {i.name: await aborted_connects(i) for i in sandbox.instances}
        assert after == before, "a stop cut a monitor login short"

    run(main())


def test_lag_unknown_with_sql_thread_stopped_and_measured_with_io_thread_stopped(
    sandbox: ReplicationSandbox,
) -> None:
    master, db2, _ = sandbox.instances
    limit = {"max_replication_lag_ms": 300}

    async def main() -> None:
        table = new_table()
        await sql(master, f"CREATE TABLE {table} (id INT PRIMARY KEY)")
        async with Harness(sandbox, db2=limit, db3=limit) as h:
            await h.ready()

            # SQL thread stopped while the master takes writes: lag unknown, so LAGGING.
            await sql(db2, "STOP SLAVE SQL_THREAD")
            try:
                for i in range(5):
                    await sql(master, f"INSERT INTO {table} VALUES ({i})")
                    await asyncio.sleep(0.05)
                await until(
                    lambda: h.topology.state("db2") is BackendState.LAGGING, 3, "db2 never LAGGING"
                )
                r = h.monitor.health("db2")
                assert r.lag_s is None and not r.sql_running and r.io_running
                assert [e.name for _, e in h.of(ReplicaLagging)] == ["db2"]
                assert h.topology.state("db3") is BackendState.ONLINE
                assert h.topology.readable_replicas() == ["db3"]
            finally:
                await sql(db2, "START SLAVE SQL_THREAD")
            await until(
                lambda: h.topology.state("db2") is BackendState.ONLINE, 3, "db2 never recovered"
            )
            assert [e.name for _, e in h.of(ReplicaCaughtUp)] == ["db2"]
            await until(lambda: h.monitor.health("db2").lag_s == 0, 3, "db2 lag never 0")

            # IO thread stopped (as when the master dies): Seconds_Behind_Master is NULL, yet
            # the lag is measured, below a second, from the master's position history.
            await sql(db2, "STOP SLAVE IO_THREAD")
            try:
                stopped = time.monotonic()
                await sql(master, f"INSERT INTO {table} VALUES (100)")
                await until(lambda: (h.monitor.health("db2").lag_s or 0) > 0, 3, "no lag measured")
                await asyncio.sleep(0.5)
                r = h.monitor.health("db2")
                assert r.seconds_behind_master is None and r.io_state == "No"
                assert r.lag_s is not None and 0.3 < r.lag_s <= time.monotonic() - stopped
                assert h.topology.state("db2") is BackendState.LAGGING
            finally:
                await sql(db2, "START SLAVE IO_THREAD")
            await until(lambda: h.monitor.health("db2").lag_s == 0, 3, "db2 lag never back to 0")
            await until(
                lambda: h.topology.state("db2") is BackendState.ONLINE, 3, "db2 never readable"
            )
        await sql(master, f"DROP TABLE {table}")
        await asyncio.to_thread(sandbox.wait_caught_up)

    run(main())


def test_a_short_hang_changes_nothing_a_long_hang_and_a_crash_are_detected_fast(
    make_sandbox: Callable[..., ReplicationSandbox],
) -> None:
    sb = make_sandbox()
    master, db2, _ = sb.instances
    window_hang = (FAST.timeout_ms + (FAST.failure_threshold - 1) * FAST.interval_ms) / 1000
    window_crash = (FAST.interval_ms * FAST.failure_threshold + FAST.timeout_ms) / 1000

    async def main() -> None:
        async with Harness(sb) as h:
            await h.ready()
            # A hiccup shorter than the probe timeout: not even one failed probe.
            t = time.monotonic()
            master.pause()
            await asyncio.sleep(0.2)
            master.resume()
            await asyncio.sleep(1.0)
            assert h.of(BackendStateChanged, since=t) == []
            assert h.monitor.health("db1").state is BackendState.ONLINE

            # A hang past the window: SHUNNED, and back when it resumes, with every
            # handshake completed rather than aborted.
            aborted = await aborted_connects(db2)
            t = time.monotonic()
            db2.pause()
            try:
                hang_detected = await until(
                    lambda: h.topology.state("db2") is BackendState.SHUNNED, 5, "hang not seen"
                )
                await asyncio.sleep(1.5)  # past the point where the ping is given up
            finally:
                db2.resume()
            await until(lambda: h.topology.state("db2") is BackendState.ONLINE, 5, "no recovery")
            await asyncio.sleep(0.5)
            assert await aborted_connects(db2) == aborted

            # A crash: connections refused at once.
            t = time.monotonic()
            await asyncio.to_thread(master.kill)
            crash_detected = await until(
                lambda: bool(h.of(MasterLost, since=t)), 5, "no MasterLost"
            )
            assert h.of(MasterLost, since=t)[0][1] == MasterLost("db1", 1)
            assert h.monitor.health("db1").alive is False
            print(
                f"\ndetection: hang {hang_detected * 1000:.0f} ms (window {window_hang * 1000:.0f}), "
                f"crash {crash_detected * 1000:.0f} ms (window {window_crash * 1000:.0f})"
            )
            assert hang_detected < window_hang + 0.5
            assert crash_detected < window_crash + 0.5

            t = time.monotonic()
            await asyncio.to_thread(master.start)
            await until(lambda: bool(h.of(BackendUp, since=t)), 5, "restarted master not up")
            assert h.topology.state("db1") is BackendState.ONLINE

    run(main())


def test_config_reload_adds_and_removes_backends(sandbox: ReplicationSandbox) -> None:
    async def main() -> None:
        async with Harness(sandbox) as h:
            everything = h.backends
            h.topology.remove_backend("db3")
            h.monitor.update(everything[:2], FAST)
            await asyncio.sleep(0.3)
            assert h.monitor.backends() == ["db1", "db2"]
            with pytest.raises(KeyError):
                h.monitor.health("db3")
            checks = h.monitor.health("db2").checks
            assert h.monitor.health("db1").alive

            h.topology.add_backend("db3", "replica")
            slower = MonitorConfig(interval_ms=300, timeout_ms=400, failure_threshold=5)
            h.monitor.update(everything, slower)
            await until(
                lambda: h.monitor.health("db3").replication_checked_at is not None, 5, "db3 unseen"
            )
            assert h.monitor.health("db3").master_name == "db1"
            assert h.monitor.health("db2").checks > checks  # kept its history

    run(main())
