"""The pure parts of [proxy] workers: the config key, cap shares, connection ids, the channel's
framing, a worker's Topology following the brain's, and the brain's sums."""

from __future__ import annotations

import asyncio
import os
import pickle

import pytest

from proxy.config import Config, ConfigError, parse_config
from proxy.health.events import BackendFenced, EventBus, MasterPromoted
from proxy.health.states import BackendState, StateChange
from proxy.health.topology import Topology
from proxy.pool import PoolStats
from proxy.protocol.constants import Command
from proxy.protocol.packets import ErrPacket
from proxy.stats import Stats
from proxy.workers.aggregate import merge_stats, pool_totals
from proxy.workers.channel import Channel, decode, encode
from proxy.workers.messages import ClientRow, PoolRow, Stop, TopologyChanged, TopologyState
from proxy.workers.mirror import follow
from proxy.workers.shares import connection_ids, share, worker_config, worker_of

BASE = '[[backends]]\nname = "db1"\naddress = "127.0.0.1:3306"\nrole = "master"\n' \
       '[[backends]]\nname = "db2"\naddress = "127.0.0.1:3307"\n' \
       '[[backends]]\nname = "db3"\naddress = "127.0.0.1:3308"\n' \
       '[[users]]\nname = "app"\npassword = "app"\nmax_connections = 5\nmax_backend_connections = 7\n' \
       '[[users]]\nname = "bulk"\npassword = "bulk"\n'


def config(proxy: str = "") -> Config:
    return parse_config(f"[proxy]\n{proxy}\n" + BASE, "/etc/baton/baton.toml")


# --- the config key ----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "workers", "count"), [
    ('"auto"', 0, os.cpu_count() or 1), ("0", 0, os.cpu_count() or 1), ("1", 1, 1), ("4", 4, 4),
])
def test_workers_accepts_auto_zero_and_a_count(value: str, workers: int, count: int) -> None:
    proxy = config(f"workers = {value}").proxy
    assert (proxy.workers, proxy.worker_count) == (workers, count)


def test_workers_defaults_to_auto() -> None:
    assert config().proxy.workers == 0


@pytest.mark.parametrize(("value", "reason"), [
    ('"many"', 'expected "auto" or an integer'),
    ("-1", "must be from 1 to 256"),
    ("257", "must be from 1 to 256"),
    ("true", 'expected "auto" or an integer'),
    ("2.5", 'expected "auto" or an integer'),
])
def test_bad_workers_is_reported_with_file_key_and_reason(value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(f"workers = {value}")
    [error] = caught.value.errors
    assert error.startswith("/etc/baton/baton.toml: proxy.workers: ") and reason in error


# --- shares and ids ------------------------------------------------------------------------------


@pytest.mark.parametrize("total", [1, 2, 7, 100, 101])
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_shares_add_up_to_the_total_unless_it_is_below_the_worker_count(total: int, count: int) -> None:
    shares = [share(total, i, count) for i in range(count)]
    assert sum(shares) == max(total, count)
    assert max(shares) - min(shares) <= 1


def test_worker_config_divides_every_cap_and_keeps_unlimited_unlimited() -> None:
    full = config("max_backend_connections = 7\nmax_client_connections = 10")
    parts = [worker_config(full, i, 2) for i in range(2)]
    assert [p.proxy.max_backend_connections for p in parts] == [4, 3]
    assert [p.proxy.max_client_connections for p in parts] == [5, 5]
    assert [p.users[0].max_connections for p in parts] == [3, 2]
    assert [p.users[0].max_backend_connections for p in parts] == [4, 3]
    assert [p.users[1].max_connections for p in parts] == [0, 0]
    assert worker_config(full, 0, 1) is full


def test_connection_ids_are_unique_across_workers_and_name_their_worker() -> None:
    count = 3
    seen: set[int] = set()
    for index in range(count):
        for generation in range(2):
            ids = connection_ids(index, count, generation)
            batch = [next(ids) for _ in range(100)]
            assert all(worker_of(i, count) == index for i in batch)
            assert not seen & set(batch)
            seen.update(batch)
    assert min(seen) == 1


# --- the channel ---------------------------------------------------------------------------------


def test_frames_round_trip_and_foreign_classes_are_refused() -> None:
    frame = encode(Stop(graceful=True))
    assert decode(frame[4:]) == Stop(graceful=True)
    with pytest.raises(pickle.UnpicklingError, match="not a Baton message type"):
        decode(pickle.dumps(os.system))


def test_channel_delivers_split_and_coalesced_frames_in_order_and_answers_requests() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        got: list[object] = []

        async def answer(body: object) -> object:
            return ("echo", body)

        a = Channel(got.append, answer, lambda: None)
        b = Channel(got.append, answer, lambda: None)
        import socket

        sa, sb = socket.socketpair()
        await loop.create_unix_connection(lambda: a, sock=sa)
        await loop.create_unix_connection(lambda: b, sock=sb)
        assert await a.request(Stop(False), 5) == ("echo", Stop(False))
        data = encode(Stop(True)) + encode(Stop(False))
        for i in range(len(data)):  # one byte at a time
            b.data_received(data[i:i + 1])
        assert got == [Stop(True), Stop(False)]
        a.close()
        b.close()

    asyncio.run(run())


# --- a worker's topology follows the brain's -----------------------------------------------------


def topologies() -> tuple[Topology, Topology, list[object]]:
    backends = [("db1", "master"), ("db2", "replica"), ("db3", "replica")]
    brain = Topology(backends, EventBus(), lambda: 0.0)
    bus = EventBus()
    seen: list[object] = []
    bus.subscribe(seen.append)
    return brain, Topology(backends, bus, lambda: 0.0), seen


def change(old: BackendState, new: BackendState) -> StateChange:
    return StateChange(old, new, "test", 0.0)


def test_a_failover_reaches_the_worker_as_the_same_events() -> None:
    brain, worker, seen = topologies()
    brain.apply_state_change("db1", change(BackendState.ONLINE, BackendState.SHUNNED))
    follow(worker, brain.snapshot(), "auto")
    assert worker.writable_master() is None and worker.state("db1") is BackendState.SHUNNED
    brain.promote("db2", source="auto")
    follow(worker, brain.snapshot(), "auto")
    assert (worker.epoch, worker.master, worker.writable_master()) == (2, "db2", "db2")
    assert worker.is_fenced("db1")
    assert any(isinstance(e, MasterPromoted) and e.new == "db2" and e.epoch == 2 for e in seen)
    assert any(isinstance(e, BackendFenced) and e.name == "db1" for e in seen)
    before = len(seen)
    follow(worker, brain.snapshot(), "auto")  # the same snapshot again changes nothing
    assert len(seen) == before


def test_a_worker_started_late_catches_up_with_every_fenced_master() -> None:
    brain, worker, _ = topologies()
    brain.promote("db2", source="admin")
    brain.promote("db3", source="admin")  # db1 and db2 are both fenced now
    follow(worker, brain.snapshot(), "admin")
    assert (worker.epoch, worker.master) == (3, "db3")
    assert worker.is_fenced("db1") and worker.is_fenced("db2")
    assert worker.readable_replicas() == []


def test_observations_and_the_end_of_fencing_reach_the_worker() -> None:
    brain, worker, _ = topologies()
    brain.promote("db2", source="admin")
    follow(worker, brain.snapshot(), "admin")
    brain.observe("db1", read_only=True, replicating_from="db2")
    brain.unfence("db1")
    follow(worker, brain.snapshot(), "admin")
    assert not worker.is_fenced("db1")
    assert "db1" in worker.readable_replicas()


def test_topology_messages_pickle() -> None:
    brain, _, _ = topologies()
    message = TopologyChanged(TopologyState(brain.snapshot(), "auto", None))
    assert decode(encode(message)[4:]) == message


# --- the brain's sums ----------------------------------------------------------------------------


def test_stats_and_pools_of_every_worker_are_summed() -> None:
    a, b = Stats(), Stats()
    for stats, backend, n in ((a, "db1", 3), (b, "db1", 4), (b, "db2", 1)):
        for _ in range(n):
            stats.count(int(Command.QUERY), backend)
    b.count(int(Command.PING), "db2", ErrPacket(1317, "70100", "interrupted"))
    a.client_connections, b.client_connections = 2, 5
    a.reloads[True] = 1
    a.observe_latency(0.001)
    b.observe_latency(1.0)
    total = merge_stats([a, b])
    assert total.queries == {("db1", "query"): 7, ("db2", "query"): 1, ("db2", "ping"): 1}
    assert total.query_errors == {("db2", "ping"): 1} and total.backend_errors == {1317: 1}
    assert total.client_connections == 7 and total.reloads[True] == 1
    assert sum(total.latency_counts) == 2 and total.latency_sum == pytest.approx(1.001)
    rows = [
        {"db1": PoolRow(1, 2, 0, 1, PoolStats(connects=3), {"app": (1, 2)})},
        {"db1": PoolRow(2, 0, 1, 2, PoolStats(connects=2, reused=5), {"app": (2, 0), "bulk": (0, 0)})},
    ]
    pools = pool_totals(["db1", "db2"], rows)
    db1 = pools.get("db1")
    assert db1 is not None
    assert (db1.in_use, db1.idle, db1.waiting, db1.generation) == (3, 2, 1, 2)
    assert (db1.stats.connects, db1.stats.reused) == (5, 5)
    assert db1.counts_by_user() == {"app": (3, 2), "bulk": (0, 0)}
    empty = pools.get("db2")
    assert empty is not None and empty.in_use == 0


def test_client_rows_pickle_for_show_clients() -> None:
    row = ClientRow(3, "app", "127.0.0.1:5000", "tcp", None, "idle", ("db1",), 12.5, "")
    assert decode(encode(row)[4:]) == row
