"""The test topologies are real: replication, read_only, GTID, semi-sync, crashes, promotion.

These tests need MariaDB and Redis but not Baton; every other integration test builds on them.
"""

from __future__ import annotations

import socket
import time
import tomllib
import uuid
from collections.abc import Callable

import pymysql
import pytest
import redis

from proxy.sandbox import (
    STATE_FILE,
    MariaDBInstance,
    RedisInstance,
    ReplicationSandbox,
    sandbox_down,
)

MakeSandbox = Callable[..., ReplicationSandbox]


def _new_table() -> str:
    return f"test.t_{uuid.uuid4().hex[:12]}"


def _tcp(inst: MariaDBInstance, user: str = "app", password: str = "app") -> pymysql.Connection:
    host, port = inst.address.split(":")
    return pymysql.connect(
        host=host, port=int(port), user=user, password=password, autocommit=True, connect_timeout=3
    )


def _wait_for(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_insert_on_master_appears_on_every_replica(sandbox: ReplicationSandbox) -> None:
    table = _new_table()
    sandbox.master.sql(f"CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(20))")
    try:
        sandbox.master.sql(f"INSERT INTO {table} VALUES (1, 'hello')")
        sandbox.wait_caught_up()
        assert len(sandbox.replicas) == 2
        for replica in sandbox.replicas:
            assert replica.sql(f"SELECT id, v FROM {table}") == [(1, "hello")]
    finally:
        sandbox.master.sql(f"DROP TABLE IF EXISTS {table}")
        sandbox.wait_caught_up()


def test_replicas_are_read_only_for_the_app_account(sandbox: ReplicationSandbox) -> None:
    assert sandbox.master.variable("read_only") == 0
    with _tcp(sandbox.master) as conn, conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone() == ("app@%",)
    for replica in sandbox.replicas:
        assert replica.variable("read_only") == 1
        with _tcp(replica) as conn, conn.cursor() as cur:
            with pytest.raises(pymysql.err.OperationalError) as err:
                cur.execute(f"CREATE TABLE {_new_table()} (id INT)")
            assert err.value.args[0] == 1290  # ER_OPTION_PREVENTS_STATEMENT


def test_topology_uses_gtid_replication_with_distinct_server_ids(
    sandbox: ReplicationSandbox,
) -> None:
    assert len({inst.variable("server_id") for inst in sandbox.instances}) == 3
    for inst in sandbox.instances:
        assert inst.variable("gtid_strict_mode") == 1
        assert inst.variable("log_bin") == 1
        assert inst.variable("log_slave_updates") == 1
        assert inst.variable("binlog_format") == "ROW"
        assert inst.variable("slave_net_timeout") == 4
    assert sandbox.master.slave_status() is None
    for replica in sandbox.replicas:
        status = replica.slave_status()
        assert status is not None
        assert status["Using_Gtid"] == "Slave_Pos"
        assert int(status["Master_Port"]) == sandbox.master.port
        assert int(status["Connect_Retry"]) == 1
        assert (status["Slave_IO_Running"], status["Slave_SQL_Running"]) == ("Yes", "Yes")


def test_accounts_exist_on_every_server_and_root_is_socket_only(
    sandbox: ReplicationSandbox,
) -> None:
    for inst in sandbox.instances:
        with _tcp(inst, "monitor", "monitor") as conn, conn.cursor() as cur:
            cur.execute("SHOW SLAVE STATUS")  # the monitor must read replication state
        _tcp(inst, "repl", "repl").close()
        assert inst.sql("SELECT COUNT(*) FROM mysql.user WHERE user = ''") == [(0,)]
        assert inst.sql("SHOW DATABASES LIKE 'test'") == [("test",)]
        with pytest.raises(pymysql.err.OperationalError) as err:
            _tcp(inst, "root", "")
        assert err.value.args[0] == 1045  # access denied


def test_paused_server_accepts_tcp_but_sends_no_greeting(sandbox: ReplicationSandbox) -> None:
    replica = sandbox.replicas[-1]
    replica.pause()
    try:
        with socket.create_connection(("127.0.0.1", replica.port), timeout=1) as sock:
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                sock.recv(1)
    finally:
        replica.resume()
    with socket.create_connection(("127.0.0.1", replica.port), timeout=5) as sock:
        assert len(sock.recv(4)) > 0  # the handshake packet arrives once resumed


def test_semi_sync_replication_can_be_enabled(make_sandbox: MakeSandbox) -> None:
    topology = make_sandbox(replicas=1, semi_sync=True)
    master, replica = topology.master, topology.replicas[0]
    assert master.variable("rpl_semi_sync_master_wait_point") == "AFTER_SYNC"
    assert master.status_variable("Rpl_semi_sync_master_status") == "ON"
    _wait_for(lambda: master.status_variable("Rpl_semi_sync_master_clients") == "1")
    assert replica.status_variable("Rpl_semi_sync_slave_status") == "ON"
    before = int(master.status_variable("Rpl_semi_sync_master_yes_tx") or 0)
    master.sql(f"CREATE TABLE {_new_table()} (id INT PRIMARY KEY)")
    assert int(master.status_variable("Rpl_semi_sync_master_yes_tx") or 0) == before + 1


def test_killed_master_restarts_on_its_port_with_its_data(make_sandbox: MakeSandbox) -> None:
    topology = make_sandbox(replicas=1)
    master, replica = topology.master, topology.replicas[0]
    table = _new_table()
    master.sql(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
    master.sql(f"INSERT INTO {table} VALUES (1)")
    master.kill()
    assert not master.is_running()
    with pytest.raises(pymysql.err.OperationalError):
        _tcp(master)
    master.start()
    assert master.sql(f"SELECT id FROM {table}") == [(1,)]
    master.sql(f"INSERT INTO {table} VALUES (2)")
    topology.wait_caught_up(timeout=15)  # the replica reconnected by itself
    assert replica.sql(f"SELECT id FROM {table} ORDER BY id") == [(1,), (2,)]


def test_killed_replica_restarts_read_only_and_catches_up(make_sandbox: MakeSandbox) -> None:
    topology = make_sandbox(replicas=1)
    master, replica = topology.master, topology.replicas[0]
    table = _new_table()
    master.sql(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
    # Applied before the kill: a replica killed between applying a DDL (binlogged at once, with
    # --log-slave-updates) and recording it in mysql.gtid_slave_pos fetches it again on restart
    # and stops on gtid strict mode's out-of-order error (seen: 1 run in 12). That is MariaDB's
    # window for DDL, not what this test is about: the INSERT made while the replica is down.
    topology.wait_caught_up(timeout=15)
    replica.kill()
    master.sql(f"INSERT INTO {table} VALUES (1)")
    replica.start()
    assert replica.variable("read_only") == 1
    topology.wait_caught_up(timeout=15)
    assert replica.sql(f"SELECT id FROM {table}") == [(1,)]


def test_promote_makes_a_replica_writable_and_repoints_the_other(
    make_sandbox: MakeSandbox,
) -> None:
    topology = make_sandbox(replicas=2)
    old_master = topology.master
    db2, db3 = topology.instance("db2"), topology.instance("db3")
    table = _new_table()
    old_master.sql(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
    topology.wait_caught_up()

    assert topology.promote("db2") is db2

    assert topology.master is db2 and topology.replicas == [db3]
    assert db2.variable("read_only") == 0 and db2.slave_status() is None
    status = db3.slave_status()
    assert status is not None and int(status["Master_Port"]) == db2.port
    assert old_master.is_running() and old_master.variable("read_only") == 0  # untouched
    with _tcp(db2) as conn, conn.cursor() as cur:
        cur.execute(f"INSERT INTO {table} VALUES (1)")
    topology.wait_caught_up()
    assert db3.sql(f"SELECT id FROM {table}") == [(1,)]
    assert old_master.sql(f"SELECT id FROM {table}") == []


def test_sandbox_restarts_from_its_state_file_with_roles_after_a_promotion(
    make_sandbox: MakeSandbox,
) -> None:
    topology = make_sandbox(replicas=2)
    topology.promote("db2")
    topology.rejoin("db1")
    topology.refresh_roles()
    topology.save_state()
    topology.stop()

    again = ReplicationSandbox.from_state(topology.base_dir)
    assert again is not None
    try:
        again.start()
        again.refresh_roles()
        assert again.master.name == "db2"
        assert sorted(r.name for r in again.replicas) == ["db1", "db3"]
        assert again.instance("db1").variable("read_only") == 1
        again.master.sql(f"CREATE TABLE {_new_table()} (id INT)")
        again.wait_caught_up()
        again.save_state()
        pids = [inst.pid for inst in again.instances]
    finally:
        sandbox_down(topology.base_dir)
    assert not topology.base_dir.exists()
    assert all(inst.process is not None for inst in again.instances)
    assert not any(inst.is_running() for inst in again.instances), pids
    assert not (topology.base_dir / STATE_FILE).exists()


def test_config_toml_describes_the_topology_and_merges_overrides(
    sandbox: ReplicationSandbox,
) -> None:
    text = sandbox.config_toml(
        7001,
        7002,
        proxy={"max_backend_connections": 5},
        routing={"consistency": "session"},
        failover={"mode": "auto"},
    )
    config = tomllib.loads(text)
    assert config["proxy"] == {"listen": "127.0.0.1:7001", "workers": 1, "max_backend_connections": 5}
    assert config["admin"] == {"listen": "127.0.0.1:7002"}
    assert config["metrics"] == {"listen": ""}
    assert config["monitor"] == {"user": "monitor", "password": "monitor"}
    assert config["routing"] == {"consistency": "session"}
    assert config["failover"] == {"mode": "auto"}
    assert config["users"] == [{"name": "app", "password": "app"}]
    assert [(b["name"], b["address"], b["role"]) for b in config["backends"]] == [
        ("db1", sandbox.master.address, "master"),
        ("db2", sandbox.replicas[0].address, "replica"),
        ("db3", sandbox.replicas[1].address, "replica"),
    ]


def test_redis_answers_ping(redis_server: RedisInstance) -> None:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=2)
    try:
        assert client.ping() is True
    finally:
        client.close()
