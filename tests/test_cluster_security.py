"""Redis messages are not trusted blindly (issue 9, item 4), on real Redis and MariaDB.

Proves: with [redis] secret set, a PUBLISH naming a replica master that is unsigned, signed
with another key or malformed (or naming an unknown backend), and an HSET of the stored topology with a bad signature, change
nothing (no read_only flips, writes keep flowing through every instance, the same master and
epoch) and are counted (metrics, SHOW CLUSTER); the listener survives them. A correctly signed
message (a mistaken instance) naming a read-only replica while the master is healthy is
refused too, as is an unsigned one when no secret is set. Baton reaches a Redis that requires
an ACL user over TLS with a verified certificate, and refuses one whose certificate it cannot
verify.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from certs import self_signed_cert
from cluster_tools import WRITES_TABLE, Traffic, metric, read_only_flags

from proxy.health.signing import Record, Sealer
from proxy.sandbox import RedisInstance, ReplicationSandbox, free_port, spawn, terminate
from proxy.sandbox.baton_process import BatonProcess, admin_rows, wait_for

pytestmark = pytest.mark.slow

SECRET = "s3cret-shared-by-the-cluster-0123"


def masters(proc: BatonProcess) -> list[tuple[str, int]]:
    return [(r["name"], r["epoch"]) for r in admin_rows(proc, "SHOW BACKENDS") if r["role"] == "master"]


def rejected(proc: BatonProcess, reason: str) -> float:
    return metric(proc, "baton_cluster_messages_rejected_total", f'reason="{reason}"') or 0.0


def forged_promotion(sealer: Sealer, new: str, epoch: int) -> str:
    return sealer.seal("promoted", "intruder", epoch, new=new, old="db1", source="auto")


def test_forged_messages_and_topology_change_nothing(
    make_sandbox: Callable[..., ReplicationSandbox],
    redis_server: RedisInstance,
    baton: Callable[..., BatonProcess],
) -> None:
    sb = make_sandbox()
    sb.master.sql(WRITES_TABLE)
    sb.wait_caught_up()
    channel = f"sec-{uuid.uuid4().hex[:8]}"
    sections = {
        "failover": {"mode": "auto", "min_interval_s": 0},
        "redis": {"url": redis_server.url, "channel": channel, "secret": SECRET},
    }
    a, b = baton(sb, **sections), baton(sb, **sections)
    before = read_only_flags(sb)
    replica = next(name for name, ro in before.items() if ro == 1)
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    with Traffic([a, b]) as traffic:
        wait_for(lambda: traffic.ok > 20, 10, "writes through both instances")
        client.publish(channel, forged_promotion(Sealer(None), replica, 50))  # unsigned
        client.publish(channel, forged_promotion(Sealer(b"not-the-cluster-secret"), replica, 51))
        for garbage in (b"{not json", b"[]", json.dumps({"type": "promoted", "epoch": "x"})):
            client.publish(channel, garbage)
        # Well signed, but naming a backend this cluster does not have.
        client.publish(channel, forged_promotion(Sealer(SECRET.encode()), "db9", 53))
        # The stored topology, overwritten with a bad signature and a far higher epoch.
        forged = Sealer(b"not-the-cluster-secret").seal("topology", "intruder", 99,
                                                        master=replica, old=None)
        client.hset(f"baton:{channel}:topology", mapping={"record": forged, "epoch": 99,
                                                          "master": replica})
        for proc in (a, b):
            wait_for(lambda p=proc: rejected(p, "unsigned") >= 1 and rejected(p, "malformed") >= 3
                     and rejected(p, "bad_signature") >= 1 and rejected(p, "unknown_backend") >= 1,
                     10, "the forged messages to be counted")
        # The forged topology: read (and rejected, then replaced) by at least one of them.
        wait_for(lambda: rejected(a, "bad_signature") + rejected(b, "bad_signature") >= 3, 10,
                 "the forged topology to be counted")
        # The listener survived all that: one more forged message is seen and counted.
        seen = rejected(a, "unsigned")
        client.publish(channel, forged_promotion(Sealer(None), replica, 52))
        wait_for(lambda: rejected(a, "unsigned") > seen, 10, "the listener to still be reading")
        time.sleep(2)  # a couple more heartbeats, each re-reading the stored topology
        ok_before = traffic.ok
        wait_for(lambda: traffic.ok > ok_before + 20, 10, "writes to keep flowing")
    assert traffic.errors == [], traffic.errors[:5]
    assert read_only_flags(sb) == before, "no server's read_only may flip"
    for proc in (a, b):
        assert masters(proc) == [("db1", 1)]
        rows = admin_rows(proc, "SHOW CLUSTER")
        assert len(rows) == 2 and all(r["rejected"] > 0 for r in rows), rows
        assert "cluster_record_rejected reason=bad_signature" in proc.log_text()
    # The valid instances rewrote the stored topology with their own signed record.
    stored = wait_for(lambda: client.hget(f"baton:{channel}:topology", "record"), 5, "a record")
    record = Sealer(SECRET.encode()).unseal(stored, "topology")
    assert isinstance(record, Record) and record.epoch == 1, record
    client.close()


def test_signed_promotion_the_servers_contradict_is_refused(
    make_sandbox: Callable[..., ReplicationSandbox],
    redis_server: RedisInstance,
    baton: Callable[..., BatonProcess],
) -> None:
    """A valid signature is not enough: a message naming a read-only, replicating node while
    the master is healthy and writable is not adopted, with or without a secret."""
    sb = make_sandbox()
    sb.master.sql(WRITES_TABLE)
    sb.wait_caught_up()
    secured, open_channel = f"ok-{uuid.uuid4().hex[:8]}", f"open-{uuid.uuid4().hex[:8]}"
    a = baton(sb, redis={"url": redis_server.url, "channel": secured, "secret": SECRET})
    b = baton(sb, redis={"url": redis_server.url, "channel": open_channel})
    assert "cluster_unauthenticated" in b.log_text() and "cluster_unauthenticated" not in a.log_text()
    before = read_only_flags(sb)
    replica = next(name for name, ro in before.items() if ro == 1)
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    with Traffic([a, b]) as traffic:
        wait_for(lambda: traffic.ok > 20, 10, "writes through both instances")
        client.publish(secured, forged_promotion(Sealer(SECRET.encode()), replica, 7))
        client.publish(open_channel, forged_promotion(Sealer(None), replica, 7))
        for proc in (a, b):
            wait_for(lambda p=proc: "cluster_adopt_refused" in p.log_text(), 10, "a refusal")
        time.sleep(1)
    assert traffic.errors == [], traffic.errors[:5]
    assert read_only_flags(sb) == before
    for proc in (a, b):
        assert masters(proc) == [("db1", 1)]
        assert "servers contradict it" in proc.log_text()
        assert "fenced db1" not in proc.log_text()
    client.close()


def _tls_redis(tmp_path: Path) -> tuple[int, object, Path]:
    """redis-server with TLS only (port 0 = no plain port) and an ACL user `baton`."""
    certs = self_signed_cert(tmp_path / "certs")
    port = free_port()
    process = spawn(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(certs.cert), "--tls-key-file", str(certs.key),
         "--tls-ca-cert-file", str(certs.cert), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
         "--user", "default", "off",
         "--user", "baton", "on", ">baton-pw", "~baton:*", "&*", "+@all"],
        log_path=tmp_path / "redis.log",
    )
    wait_for(lambda: "Ready to accept connections" in (tmp_path / "redis.log").read_text(), 10,
             "redis-server with TLS to start")
    return port, process, certs.cert


def test_redis_with_acl_user_and_verified_tls(
    tmp_path: Path, sandbox: ReplicationSandbox, baton: Callable[..., BatonProcess]
) -> None:
    port, process, ca = _tls_redis(tmp_path)
    try:
        url = f"rediss://127.0.0.1:{port}/0"
        auth = {"username": "baton", "password": "baton-pw", "secret": SECRET}
        auto = {"mode": "auto"}
        good = baton(sandbox, failover=auto,
                     redis={"url": url, "tls_ca": str(ca), **auth, "channel": "tls"})
        wait_for(lambda: admin_rows(good, "SHOW CLUSTER")[0]["heartbeat_age_ms"] is not None, 10,
                 "the heartbeat to be written over TLS")
        row = admin_rows(good, "SHOW CLUSTER")[0]
        assert (row["failover"], row["reason"]) == ("active", ""), row
        # Another CA, all else equal: the certificate does not verify, Redis is unreachable.
        other_ca = self_signed_cert(tmp_path / "other").cert
        bad = baton(sandbox, failover=auto,
                    redis={"url": url, "tls_ca": str(other_ca), **auth, "channel": "tls"})
        assert "cluster_unreachable" in bad.log_text()
        rows = admin_rows(bad, "SHOW CLUSTER")
        assert len(rows) == 1 and rows[0]["heartbeat_age_ms"] is None
        assert (rows[0]["failover"], rows[0]["reason"]) == ("suspended", "redis unreachable")
        # A wrong password: refused by Redis's ACL.
        wrong = baton(sandbox, redis={"url": url, "tls_ca": str(ca), **auth, "password": "nope",
                                      "channel": "tls"})
        assert "cluster_unreachable" in wrong.log_text()
    finally:
        terminate(process)  # type: ignore[arg-type]
