"""One Baton instance cut off from the master must not cause a failover (issue 9, done-when).

Instance B runs in a network namespace of its own, linked to the host by a veth pair with
10.200.x.1/.2 addresses that exist only on that pair (no routing, nothing leaves the machine).
Inside the namespace, relays on 127.0.0.1 carry each MariaDB and Redis port over the veth to a
relay on the host side, so B's config is the same as instance A's (which runs on the host).

Proves, with A and B both in auto mode on one Redis:
1. The veth cut (B loses master, replicas and Redis): no failover anywhere, A's clients see no
   error, and B comes back to the same master and epoch when the link does.
2. Only B's path to the master cut: B's coordinator waits because the replicas still see the
   master; when the replicas' IO threads stop too (so B alone would call the master dead),
   A's heartbeat, which still sees the master healthy, vetoes B's failover.
In both, no server's read_only changes and no promotion is recorded by either instance.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cluster_tools import WRITES_TABLE, Traffic, read_only_flags

from proxy.sandbox import RedisInstance, ReplicationSandbox, free_ports, spawn
from proxy.sandbox.baton_process import REPO_ROOT, BatonProcess, admin_rows, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

SECRET = "partition-test-secret-0123456789"
ADMIN_PW = "partition-admin-pw"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Namespace:
    """A network namespace linked to the host by one veth pair; relays carry chosen loopback
    ports across it. `cut()`/`mend()` take the link down and up."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.name, self.host_if, self.ns_if = f"baton-{tag}", f"bvh{tag}", f"bvn{tag}"
        subnet = random.randint(1, 250)
        self.host_ip, self.ns_ip = f"10.200.{subnet}.1", f"10.200.{subnet}.2"
        self.relays: dict[int, list[subprocess.Popen[bytes]]] = {}
        _ip("netns", "add", self.name)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _ip("link", "set", self.ns_if, "netns", self.name)
        _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        for args in (("addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if),
                     ("link", "set", self.ns_if, "up"), ("link", "set", "lo", "up")):
            _ip("netns", "exec", self.name, "ip", *args)

    def relay(self, port: int) -> None:
        """127.0.0.1:port inside the namespace reaches 127.0.0.1:port on the host."""
        host = subprocess.Popen(
            ["socat", f"TCP-LISTEN:{port},bind={self.host_ip},fork,reuseaddr",
             f"TCP:127.0.0.1:{port}"], start_new_session=True, stderr=subprocess.DEVNULL)
        inside = subprocess.Popen(
            ["ip", "netns", "exec", self.name, "socat",
             f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr", f"TCP:{self.host_ip}:{port}"],
            start_new_session=True, stderr=subprocess.DEVNULL)
        self.relays[port] = [host, inside]

    def drop_relay(self, port: int) -> None:
        """Kill both relays of `port` and every connection they carry (their process groups)."""
        for proc in self.relays.pop(port, []):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def cut(self) -> None:
        _ip("link", "set", self.host_if, "down")

    def mend(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def close(self) -> None:
        for port in list(self.relays):
            self.drop_relay(port)
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)
        subprocess.run(["ip", "link", "delete", self.host_if], capture_output=True)


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    ns = Namespace()
    try:
        yield ns
    finally:
        ns.close()


def start_in(ns: Namespace, text: str, workdir: Path) -> BatonProcess:
    """A Baton process inside the namespace; its admin port listens on the namespace's veth
    address, the only way in from the host."""
    proc = BatonProcess(text, workdir=workdir)
    proc.process = spawn(
        ["ip", "netns", "exec", ns.name, sys.executable, "-m", "proxy", "run", "--config",
         str(proc.config_path)],
        log_path=proc.log_path, cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    wait_for(lambda: _admin_ok(proc, ns), 20, "Baton in the namespace to start")
    return proc


def _admin_ok(proc: BatonProcess, ns: Namespace) -> bool:
    try:
        admin_rows(proc, "SHOW VERSION", host=ns.ns_ip, password=ADMIN_PW, connect_timeout=1)
        return True
    except Exception:  # noqa: BLE001 - not up yet
        assert proc.is_running(), proc.log_text()
        return False


def promotions(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    return [r for r in rows if str(r.get("outcome", "")).startswith("promoted")]


def test_an_instance_cut_off_from_the_master_causes_no_failover(
    tmp_path: Path,
    namespace: Namespace,
    make_sandbox: Callable[..., ReplicationSandbox],
    baton: Callable[..., BatonProcess],
) -> None:
    sb = make_sandbox()
    sb.master.sql(WRITES_TABLE)
    sb.wait_caught_up()
    redis = RedisInstance(tmp_path / "redis").start()
    try:
        for port in [inst.port for inst in sb.instances] + [redis.port]:
            namespace.relay(port)
        sections = {
            "failover": {"mode": "auto", "min_interval_s": 0},
            "redis": {"url": redis.url, "channel": f"part-{uuid.uuid4().hex[:8]}",
                      "secret": SECRET},
        }
        a = baton(sb, **sections)
        proxy_port, admin_port = free_ports(2)
        # Off loopback the admin console refuses the default password (issue 12).
        text = sb.config_toml(proxy_port, admin_port, 0, admin={"password": ADMIN_PW}, **sections)
        text = text.replace(f'"127.0.0.1:{proxy_port}"', f'"{namespace.ns_ip}:{proxy_port}"')
        text = text.replace(f'"127.0.0.1:{admin_port}"', f'"{namespace.ns_ip}:{admin_port}"')
        b = start_in(namespace, text, tmp_path / "b")
        try:
            def b_rows(statement: str) -> list[dict[str, object]]:
                return admin_rows(b, statement, host=namespace.ns_ip, password=ADMIN_PW)

            wait_for(lambda: len(admin_rows(a, "SHOW CLUSTER")) == 2, 10, "A to see B")
            before = read_only_flags(sb)

            # 1. The veth goes down: B loses master, replicas and Redis at once.
            with Traffic([a]) as traffic:
                wait_for(lambda: traffic.ok > 20, 10, "traffic through A")
                namespace.cut()
                wait_for(lambda: len(admin_rows(a, "SHOW CLUSTER")) == 1, 10,
                         "B's heartbeat to expire")
                time.sleep(8)  # B's detection, confirmation and lease would all be done by now
                namespace.mend()
                wait_for(lambda: _admin_ok(b, namespace), 10, "B reachable again")
                wait_for(lambda: len(admin_rows(a, "SHOW CLUSTER")) == 2, 10, "B back in Redis")
            assert traffic.errors == [], traffic.errors[:5]
            assert "master db1 lost" in b.log_text(), "B must have lost the master"
            assert read_only_flags(sb) == before

            # 2. Only B's path to the master is cut (replicas and Redis still reachable).
            wait_for(lambda: any(r["name"] == "db1" and r["state"] == "ONLINE"
                                 for r in b_rows("SHOW BACKENDS")), 15, "B to see db1 again")
            namespace.drop_relay(sb.master.port)
            wait_for(lambda: "still connected" in b.log_text().split("master db1 lost")[-1], 15,
                     "B to wait for the replicas, which still see the master")
            time.sleep(2)
            assert read_only_flags(sb) == before
            # The replicas lose the master too (as seen from B): A still sees it healthy.
            for replica in sb.replicas:
                replica.sql("STOP SLAVE IO_THREAD")
            wait_for(lambda: "cluster_failover_vetoed" in b.log_text(), 20,
                     "A's heartbeat to veto B's failover")
            time.sleep(1)
            assert read_only_flags(sb) == before
            for replica in sb.replicas:
                replica.sql("START SLAVE IO_THREAD")
            namespace.relay(sb.master.port)

            for rows in (admin_rows(a, "SHOW FAILOVERS"), b_rows("SHOW FAILOVERS")):
                assert promotions(rows) == [], rows
            assert [(r["name"], r["epoch"]) for r in admin_rows(a, "SHOW BACKENDS")
                    if r["role"] == "master"] == [("db1", 1)]
            assert [(r["name"], r["epoch"]) for r in b_rows("SHOW BACKENDS")
                    if r["role"] == "master"] == [("db1", 1)]
        finally:
            b.stop()
    finally:
        redis.stop()
