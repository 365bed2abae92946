"""Several Baton instances share one topology through a real Redis.

Both instances run in auto mode and both see the master die; exactly one performs the
failover (the one that takes the Redis lock), the other adopts its promotion, and both send
writes to the new master. A third instance started afterwards learns the new epoch from Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pymysql
import pytest

from proxy.sandbox import RedisInstance, ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess, admin_rows, wait_for

pytestmark = pytest.mark.slow




def write_lands_on(proc: BatonProcess) -> int | None:
    """Inserts @@server_id through Baton; returns the server id that took the write."""
    try:
        conn = pymysql.connect(host="127.0.0.1", port=proc.proxy_port, user="app", password="app",
                               database="test", autocommit=True, connect_timeout=3, read_timeout=15)
    except pymysql.err.OperationalError:
        return None
    try:
        with conn.cursor() as cur:
            token = uuid.uuid4().hex
            cur.execute("INSERT INTO cluster_probe (token, server_id) VALUES (%s, @@server_id)", (token,))
            cur.execute("/* baton:master */ SELECT server_id FROM cluster_probe WHERE token = %s", (token,))
            row = cur.fetchone()
            return int(row[0]) if row else None
    except pymysql.err.MySQLError:
        return None
    finally:
        conn.close()




def test_two_instances_fail_over_once_and_together(
    make_sandbox: Callable[..., ReplicationSandbox],
    redis_server: RedisInstance,
    baton: Callable[..., BatonProcess],
) -> None:
    sb = make_sandbox()
    sb.master.sql("CREATE TABLE test.cluster_probe (token CHAR(32) PRIMARY KEY, server_id INT)")
    sb.wait_caught_up()
    sections = {
        "failover": {"mode": "auto", "min_interval_s": 0},
        "redis": {"url": redis_server.url, "channel": f"test-{uuid.uuid4().hex[:8]}"},
    }
    a = baton(sb, **sections)
    b = baton(sb, **sections)
    master_id = int(sb.master.sql("SELECT @@server_id")[0][0])
    assert write_lands_on(a) == master_id
    assert write_lands_on(b) == master_id

    sb.master.kill()
    wait_for(lambda: (w := write_lands_on(a)) is not None and w != master_id, 10, "instance A to write to a new master")
    wait_for(lambda: (w := write_lands_on(b)) is not None and w != master_id, 10, "instance B to write to a new master")
    new_id = write_lands_on(a)
    assert write_lands_on(b) == new_id, "both instances must write to the same new master"

    failovers = {name: admin_rows(p, "SHOW FAILOVERS") for name, p in (("a", a), ("b", b))}
    performed = [name for name, rows in failovers.items()
                 if any(r["kind"] == "auto" and r["outcome"] == "promoted" for r in rows)]
    assert len(performed) == 1, f"exactly one instance performs the failover: {failovers}"
    performer = a if performed == ["a"] else b
    holder = [f"127.0.0.1:{performer.proxy_port}"]
    for proc in (a, b):  # the lease (still within its TTL) is held by the one that performed
        wait_for(lambda p=proc: [r["address"] for r in admin_rows(p, "SHOW CLUSTER")
                                 if r["lease_holder"]] == holder, 3, "SHOW CLUSTER's lease holder")
    for proc in (a, b):
        masters = [(r["name"], r["epoch"]) for r in admin_rows(proc, "SHOW BACKENDS") if r["role"] == "master"]
        assert len(masters) == 1 and masters[0][1] == 2, f"one master, of epoch 2: {masters}"

    # A late joiner learns the current master from Redis before it serves.
    c = baton(sb, **sections)
    masters = [r["name"] for r in admin_rows(c, "SHOW BACKENDS") if r["role"] == "master"]
    assert masters and int(sb.instance(masters[0]).sql("SELECT @@server_id")[0][0]) == new_id
    assert write_lands_on(c) == new_id


def test_instance_runs_alone_when_redis_is_unreachable(
    sandbox: ReplicationSandbox, baton: Callable[..., BatonProcess]
) -> None:
    from proxy.sandbox import free_port

    proc = baton(sandbox, redis={"url": f"redis://127.0.0.1:{free_port()}/0"})
    conn = pymysql.connect(host="127.0.0.1", port=proc.proxy_port, user="app", password="app", autocommit=True)
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    conn.close()
    assert "cluster_unreachable" in proc.log_text()
