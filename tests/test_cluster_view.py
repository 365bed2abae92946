"""The cluster view and Redis outages (issue 9, item 5), three real Baton instances.

Proves: SHOW CLUSTER (and SELECT ... FROM cluster, and the metrics) on every instance lists the
three live instances with address, epoch, master, lease holder, heartbeat age and failover
state; when Redis is killed clients of every instance see no error and each instance shows
itself alone with automatic failover suspended ("redis unreachable"); a change of master made
while Redis was away (a switchover through one instance, the others in manual mode so they do
not follow it by themselves) reaches every instance within 5 s of Redis coming back: one epoch
everywhere, the highest.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis as redis_client
from cluster_tools import WRITES_TABLE, Traffic, metric

from proxy.sandbox import RedisInstance, ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess, admin_rows, wait_for

pytestmark = pytest.mark.slow

SECRET = "view-test-secret-0123456789abcdef"
REPL = {"replication_user": "repl", "replication_password": "repl"}


def server_client(server: RedisInstance) -> redis_client.Redis:
    return redis_client.Redis(host="127.0.0.1", port=server.port)


def cluster(proc: BatonProcess) -> list[dict[str, object]]:
    return admin_rows(proc, "SHOW CLUSTER")


def master_of(proc: BatonProcess) -> tuple[str, int] | None:
    rows = [(r["name"], r["epoch"]) for r in admin_rows(proc, "SHOW BACKENDS") if r["role"] == "master"]
    return rows[0] if len(rows) == 1 else None


def test_cluster_view_redis_outage_and_convergence(
    tmp_path: Path,
    make_sandbox: Callable[..., ReplicationSandbox],
    baton: Callable[..., BatonProcess],
) -> None:
    sb = make_sandbox()
    sb.master.sql(WRITES_TABLE)
    sb.wait_caught_up()
    server = RedisInstance(tmp_path / "redis").start()
    try:
        redis = {"url": server.url, "channel": f"view-{uuid.uuid4().hex[:8]}", "secret": SECRET}
        a = baton(sb, failover={"mode": "auto", **REPL}, redis={**redis, "instance_id": "a"})
        b = baton(sb, failover={"mode": "manual", **REPL}, redis={**redis, "instance_id": "b"})
        c = baton(sb, failover={"mode": "manual", **REPL}, redis={**redis, "instance_id": "c"})
        procs = (a, b, c)

        # -- the view: three live instances on every one of them
        for proc in procs:
            wait_for(lambda p=proc: len(cluster(p)) == 3
                     and all(r["heartbeat_age_ms"] is not None for r in cluster(p)), 10,
                     "three instances with heartbeats")
        rows = {r["id"]: r for r in cluster(b)}
        assert sorted(rows) == ["a", "b", "c"]
        assert rows["a"]["address"] == f"127.0.0.1:{a.proxy_port}"
        for r in rows.values():
            assert (r["epoch"], r["master"], r["lease_holder"]) == (1, "db1", 0), r
            assert 0 <= int(r["heartbeat_age_ms"]) < 3000, r  # type: ignore[arg-type]
        assert (rows["a"]["failover"], rows["a"]["reason"]) == ("active", "")
        assert (rows["b"]["failover"], rows["b"]["reason"]) == ("off", "failover mode manual")
        selected = admin_rows(c, "SELECT id FROM cluster WHERE failover = 'active'")
        assert selected == [{"id": "a"}]
        assert metric(a, "baton_cluster_instances") == 3
        assert metric(a, "baton_cluster_epoch", 'instance="c"') == 1
        assert metric(a, "baton_failover_suspended") == 0

        # -- Redis killed: no client error, failover suspended and said so
        with Traffic(procs) as traffic:
            wait_for(lambda: traffic.ok > 30, 10, "traffic through all three")
            assert server.process is not None
            server.process.kill()
            server.process.wait()
            wait_for(lambda: metric(a, "baton_failover_suspended") == 1, 10, "suspension")
            for proc in procs:
                wait_for(lambda p=proc: len(cluster(p)) == 1, 10, "each instance alone")
            row = cluster(a)[0]
            assert (row["id"], row["failover"], row["reason"]) == ("a", "suspended",
                                                                  "redis unreachable")
            assert row["heartbeat_age_ms"] is None
            assert metric(a, "baton_cluster_instances") == 1
            ok_before = traffic.ok
            wait_for(lambda: traffic.ok > ok_before + 30, 10, "traffic to go on without Redis")
        assert traffic.errors == [], traffic.errors[:5]
        print(f"\n{traffic.ok} statements through 3 instances while Redis died, 0 errors")
        assert "cluster_disconnected" in a.log_text()

        # -- while Redis is away, a switchover through `a` only: b and c (manual) stay behind
        switched = admin_rows(a, "SWITCHOVER TO 'db2'")
        assert switched[0]["epoch"] == 2, switched
        assert master_of(a) == ("db2", 2)
        assert master_of(b) == ("db1", 1) and master_of(c) == ("db1", 1)

        # -- Redis back: one epoch everywhere, the highest, within 5 s
        server.start()
        started = time.monotonic()
        wait_for(lambda: all(master_of(p) == ("db2", 2) for p in procs), 5,
                 "every instance on epoch 2 (master db2)", interval=0.02)
        converged_s = time.monotonic() - started
        print(f"\nconverged on epoch 2 in {converged_s:.2f}s after Redis came back")
        for proc in procs:
            wait_for(lambda p=proc: {r["epoch"] for r in cluster(p)} == {2} and len(cluster(p)) == 3,
                     5, "SHOW CLUSTER to agree on epoch 2")
        assert cluster(a)[0]["failover"] == "active"
        # Every listener subscribed again: a message on the channel reaches each instance.
        client = server_client(server)
        client.publish(redis["channel"], b"{not json")
        for proc in procs:
            wait_for(lambda p=proc: (metric(p, "baton_cluster_messages_rejected_total",
                                            'reason="malformed"') or 0) >= 1, 10,
                     "the message to be read (and rejected) after Redis came back")
        client.close()
        with Traffic(procs) as traffic:
            wait_for(lambda: traffic.ok > 30, 10, "writes through all three to db2")
        assert traffic.errors == [], traffic.errors[:5]
        db2_id = int(sb.instance("db2").sql("SELECT @@server_id")[0][0])
        assert int(sb.instance("db2").sql("SELECT @@read_only")[0][0]) == 0
        assert db2_id != int(sb.instance("db1").sql("SELECT @@server_id")[0][0])
    finally:
        server.stop()
