"""The router's decisions, in-process and in milliseconds: where reads, writes, transactions,
pinned sessions, hints and held writes go; what happens after a backend dies under a command;
suspicion and the DDL barrier expiring on a fake clock (no sleeping, no MariaDB)."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from proxy import errors
from proxy.config import BackendConfig, Config, FailoverConfig, RoutingConfig
from proxy.errors import BatonFailure
from proxy.health.events import EventBus
from proxy.health.states import BackendState, StateChange
from proxy.health.timeline import ClientOutcome
from proxy.health.topology import Topology
from proxy.protocol.constants import Command, ServerStatus
from proxy.routing.classifier import Pin, classify
from proxy.routing.router import RETRY, Close, Fail, Route, Router
from proxy.routing.session_routing import SessionRouting
from proxy.routing.statements import PreparedStatement
from proxy.stats import Stats

QUERY, EXECUTE, FIELD_LIST = int(Command.QUERY), int(Command.STMT_EXECUTE), int(Command.FIELD_LIST)
IN_TRANS = int(ServerStatus.IN_TRANS | ServerStatus.AUTOCOMMIT)
NO_AUTOCOMMIT = 0


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeHost:
    """The process as the router sees it: GTIDs replicas have, and what was noted."""

    applied: dict[str, set[str]] = field(default_factory=dict)
    promotable: bool = True
    writers: tuple[str, ...] | None = None
    notes: list[str] = field(default_factory=list)

    def replica_has(self, name: str, gtid: str) -> bool:
        return gtid in self.applied.get(name, set())

    def promotion_possible(self) -> bool:
        return self.promotable

    def topology_changed(self) -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()

    def timeline_note(self, kind: ClientOutcome) -> None:
        self.notes.append(kind)

    def split_brain_writers(self) -> Collection[str] | None:
        return self.writers


def config(**routing: Any) -> Config:
    backends = tuple(
        BackendConfig(name, f"127.0.0.1:{port}", "127.0.0.1", port, role=role)
        for name, port, role in (("db1", 1, "master"), ("db2", 2, "replica"), ("db3", 3, "replica"))
    )
    failover = FailoverConfig(buffer_window_ms=200, buffer_max=2)
    return Config(backends, (), routing=replace(RoutingConfig(), **routing), failover=failover)


@dataclass
class World:
    router: Router
    topology: Topology
    clock: FakeClock
    host: FakeHost
    stats: Stats


def world(**routing: Any) -> World:
    clock = FakeClock()
    cfg = config(**routing)
    topology = Topology([(b.name, b.role) for b in cfg.backends], EventBus(), clock)
    host = FakeHost()
    stats = Stats()
    return World(Router(topology, host, stats, cfg, clock=clock), topology, clock, host, stats)


def set_state(w: World, name: str, new: BackendState) -> None:
    old = w.topology.state(name)
    w.topology.apply_state_change(name, StateChange(old, new, "test", w.clock()))


def route(w: World, session: SessionRouting, sql: bytes) -> Route:
    return w.router.route(session, classify(sql), QUERY, b"\x03" + sql)


READS = {"db2", "db3"}


@pytest.mark.parametrize(
    ("sql", "targets", "read"),
    [
        (b"SELECT 1", READS, True),
        (b"SHOW TABLES", READS, True),
        (b"INSERT INTO t VALUES (1)", {"db1"}, False),
        (b"SELECT * FROM t FOR UPDATE", {"db1"}, False),
        (b"SET @a = 1", {"db1"}, False),
        (b"/* baton:master */ SELECT 1", {"db1"}, False),
        (b"/* baton:replica=db3 */ SELECT 1", {"db3"}, True),
        (b"/* baton:replica=db1 */ SELECT 1", {"db1"}, False),  # the master by name
        (b"START TRANSACTION READ ONLY", {"db1"}, False),  # read_only_trx_to_replica is off
    ],
)
def test_a_free_session_routes_by_statement(sql: bytes, targets: set[str], read: bool) -> None:
    w = world()
    r = route(w, SessionRouting(), sql)
    assert r.target in targets
    assert r.read is read


def test_route_changes_nothing_it_is_given() -> None:
    w = world()
    session = SessionRouting(causal_gtid="0-1-5", consistency="session")
    before = repr(session)
    r = route(w, session, b"SELECT 1")
    assert r.target in READS and r.read and r.causal
    assert repr(session) == before


@pytest.mark.parametrize(
    ("session", "sql", "target"),
    [
        (SessionRouting(status=IN_TRANS, trx_backend="db2"), b"INSERT INTO t VALUES (1)", "db2"),
        (
            SessionRouting(status=IN_TRANS, trx_backend="db1"),
            b"/* baton:replica */ SELECT 1",
            "db1",
        ),
        (SessionRouting(status=NO_AUTOCOMMIT), b"SELECT 1", "db1"),
        (SessionRouting(pins={Pin.TEMP_TABLE: 1}), b"SELECT * FROM tmp", "db1"),
        (SessionRouting(pin_next=True), b"SELECT FOUND_ROWS()", "db1"),
        (SessionRouting(last_backend="db3"), b"SHOW WARNINGS", "db3"),
    ],
)
def test_what_ties_a_session_decides_before_the_statement(
    session: SessionRouting, sql: bytes, target: str
) -> None:
    assert route(world(), session, sql).target == target


@pytest.mark.parametrize(
    ("sql", "targets", "read"),
    [
        (b"SELECT 1", {"db1"}, False),  # opens a transaction that may write next
        (b"SELECT * FROM t", {"db1"}, False),
        (b"INSERT INTO t VALUES (1)", {"db1"}, False),
        (b"/* baton:replica */ SELECT 1", READS, True),  # the client chose: it stays there
        (b"/* baton:replica=db3 */ SELECT 1", {"db3"}, True),
        (b"/* baton:master */ SELECT 1", {"db1"}, False),
        (b"START TRANSACTION READ ONLY", {"db1"}, False),  # read_only_trx_to_replica is off
    ],
)
def test_with_autocommit_off_a_statement_opens_its_transaction_on_the_master(
    sql: bytes, targets: set[str], read: bool
) -> None:
    r = route(world(), SessionRouting(status=NO_AUTOCOMMIT), sql)
    assert r.target in targets
    assert r.read is read


def test_with_autocommit_off_a_read_only_transaction_may_start_on_a_replica() -> None:
    w = world(read_only_trx_to_replica=True)
    r = route(w, SessionRouting(status=NO_AUTOCOMMIT), b"START TRANSACTION READ ONLY")
    assert r.target in READS
    session = SessionRouting(status=NO_AUTOCOMMIT, last_backend="db3")
    assert route(w, session, b"SHOW WARNINGS").target == "db3"


def test_reads_spread_over_the_replicas_by_weight() -> None:
    w = world()
    picks = [route(w, SessionRouting(), b"SELECT 1").target for _ in range(10)]
    assert set(picks) == READS


def test_causal_only_in_session_consistency_with_a_known_write() -> None:
    w = world()
    assert not route(w, SessionRouting(causal_gtid="0-1-5"), b"SELECT 1").causal  # eventual
    assert route(w, SessionRouting(causal_gtid="0-1-5", consistency="session"), b"SELECT 1").causal
    assert route(
        world(consistency="session"), SessionRouting(causal_gtid="0-1-5"), b"SELECT 1"
    ).causal
    assert not route(w, SessionRouting(consistency="session"), b"SELECT 1").causal


def test_no_split_sends_reads_to_the_master() -> None:
    assert route(world(read_write_split=False), SessionRouting(), b"SELECT 1").target == "db1"


def test_commands_other_than_query() -> None:
    w = world()
    free = SessionRouting()
    assert w.router.route(free, None, FIELD_LIST).target in READS
    read_stmt = PreparedStatement(1, b"SELECT ?", 1, 1, master_only=False, is_read=True)
    write_stmt = PreparedStatement(2, b"DELETE FROM t", 0, 0, master_only=True, is_read=False)
    assert w.router.route(free, None, EXECUTE, stmt=read_stmt).target in READS
    assert w.router.route(free, None, EXECUTE, stmt=write_stmt) == Route("db1")
    assert w.router.route(free, None, int(Command.INIT_DB)) == Route("db1")


def test_no_readable_replica_falls_back_to_the_master_or_fails() -> None:
    w = world()
    set_state(w, "db2", BackendState.SHUNNED)
    set_state(w, "db3", BackendState.LAGGING)
    assert route(w, SessionRouting(), b"SELECT 1") == Route("db1", True)
    strict = world(fallback_to_master=False)
    set_state(strict, "db2", BackendState.OFFLINE_SOFT)
    set_state(strict, "db3", BackendState.OFFLINE_SOFT)
    with pytest.raises(BatonFailure) as info:
        route(strict, SessionRouting(), b"SELECT 1")
    assert info.value.code is errors.NO_BACKEND


def test_writes_are_held_without_a_writable_master() -> None:
    w = world()
    set_state(w, "db1", BackendState.SHUNNED)
    assert route(w, SessionRouting(), b"INSERT INTO t VALUES (1)") == Route(None)
    w = world()
    w.router.hold_writes = True  # a planned switchover
    assert route(w, SessionRouting(), b"UPDATE t SET a = 1").target is None
    assert route(w, SessionRouting(), b"SELECT 1").target in READS  # reads go on


def test_ambiguous_writers_hold_writes_until_resolved() -> None:
    w = world()
    w.router.split_brain_alarm = True
    w.host.writers = ("db1", "db2")
    assert w.router.master() is None
    w.host.writers = None
    assert w.router.master() == "db1"
    assert w.router.split_brain_alarm is False


def test_a_suspected_master_is_held_until_the_suspicion_expires() -> None:
    w = world()
    w.router.suspect("db1")
    assert w.router.master() is None
    w.clock.now += 2.0
    assert w.router.master() == "db1"


def test_a_suspected_replica_gets_no_reads_until_it_expires() -> None:
    w = world()
    w.router.suspect("db2", seconds=5)
    assert {route(w, SessionRouting(), b"SELECT 1").target for _ in range(6)} == {"db3"}
    w.clock.now += 5
    assert {route(w, SessionRouting(), b"SELECT 1").target for _ in range(6)} == READS


def test_learned_master_only_statements_go_to_the_master() -> None:
    w = world()
    w.router.learn_master_only(b"\x03SELECT f()")
    assert route(w, SessionRouting(), b"SELECT f()") == Route("db1")
    assert route(w, SessionRouting(), b"SELECT g()").target in READS


def test_ddl_barrier_keeps_reads_off_replicas_until_they_applied_it() -> None:
    w = world()
    w.router.ddl_started()
    assert route(w, SessionRouting(), b"SELECT 1") == Route("db1", True)  # during the DDL
    w.router.ddl_finished("0-1-9")
    assert route(w, SessionRouting(), b"SELECT 1") == Route("db1", True)  # nobody has it
    w.host.applied["db3"] = {"0-1-9"}
    assert route(w, SessionRouting(), b"SELECT 1") == Route("db3", True, False)
    w.host.applied["db2"] = {"0-1-9"}
    assert {route(w, SessionRouting(), b"SELECT 1").target for _ in range(4)} == READS


def test_ddl_barrier_expires_on_the_clock() -> None:
    w = world()
    w.router.ddl_started()
    w.clock.now += Router.DDL_BARRIER_S
    assert route(w, SessionRouting(), b"SELECT 1").target in READS
    w.router.ddl_finished("0-1-9")
    assert route(w, SessionRouting(), b"SELECT 1").target == "db1"
    w.clock.now += Router.DDL_BARRIER_S
    assert route(w, SessionRouting(), b"SELECT 1").target in READS


def test_a_failed_ddl_lifts_the_hold_at_once() -> None:
    w = world()
    w.router.ddl_started()
    w.router.ddl_finished(None)
    assert route(w, SessionRouting(), b"SELECT 1").target in READS


# -- after a backend died under a command ----------------------------------------------------


def loss(
    w: World,
    session: SessionRouting,
    *,
    command: int = QUERY,
    read: bool = False,
    retries: int = 0,
    forwarded: int = 0,
    backend: str = "db2",
) -> object:
    return w.router.after_loss(session, backend, command, read, retries, forwarded)


def test_bytes_already_sent_mean_close() -> None:
    verdict = loss(world(), SessionRouting(), read=True, forwarded=10)
    assert isinstance(verdict, Close) and "db2" in verdict.reason


def test_the_transaction_backend_dying_loses_the_transaction() -> None:
    w = world()
    verdict = loss(w, SessionRouting(status=IN_TRANS, trx_backend="db2"), read=True)
    assert verdict == Fail(errors.TRANSACTION_LOST, transaction_lost=True)
    verdict = loss(w, SessionRouting(status=IN_TRANS, trx_backend="db1"), read=False)
    assert verdict == Fail(errors.TRANSACTION_LOST, transaction_lost=True)


def test_reads_are_retried_twice_then_fail_as_lost() -> None:
    w = world()
    assert loss(w, SessionRouting(), read=True, retries=0) is RETRY
    assert loss(w, SessionRouting(), read=True, retries=1) is RETRY
    assert loss(w, SessionRouting(), read=True, retries=2) == Fail(errors.BACKEND_LOST)
    assert w.stats.retried == 2
    assert w.host.notes == ["retried", "retried", "failed"]


def test_harmless_commands_are_retried_writes_are_not() -> None:
    w = world()
    assert loss(w, SessionRouting(), command=int(Command.STMT_PREPARE)) is RETRY
    assert loss(w, SessionRouting(), command=int(Command.INIT_DB), retries=2) == Fail(
        errors.OUTCOME_UNKNOWN
    )
    assert loss(w, SessionRouting(), command=QUERY, backend="db1") == Fail(errors.OUTCOME_UNKNOWN)


def test_a_loss_makes_the_backend_suspect() -> None:
    w = world()
    loss(w, SessionRouting(), read=True, backend="db1")
    assert w.router.master() is None


# -- holding a command while there is no master ----------------------------------------------


def test_wait_for_target_returns_once_routing_finds_one() -> None:
    w = world()
    answers = iter([Route(None), Route("db1")])

    async def run() -> Route:
        return await w.router.wait_for_target(lambda: next(answers))

    assert asyncio.run(run()) == Route("db1")
    assert w.router.held == 0 and w.stats.held == 1 and w.host.notes == ["held"]


def test_wait_for_target_fails_fast_when_nothing_can_take_over() -> None:
    w = world()
    w.host.promotable = False

    async def run() -> Route:
        return await w.router.wait_for_target(lambda: Route(None))

    with pytest.raises(BatonFailure) as info:
        asyncio.run(run())
    assert info.value.code is errors.BACKEND_UNREACHABLE


def test_wait_for_target_gives_up_after_the_buffer_window() -> None:
    w = world()

    def again() -> Route:
        w.clock.now += 0.3  # past buffer_window_ms=200 at the first look
        return Route(None)

    async def run() -> Route:
        return await w.router.wait_for_target(again)

    with pytest.raises(BatonFailure) as info:
        asyncio.run(run())
    assert info.value.code is errors.NO_MASTER
    assert w.host.notes == ["held", "failed"]


def test_wait_for_target_refuses_past_buffer_max() -> None:
    w = world()
    w.router.held = 2  # buffer_max

    async def run() -> Route:
        return await w.router.wait_for_target(lambda: Route(None))

    with pytest.raises(BatonFailure) as info:
        asyncio.run(run())
    assert info.value.code is errors.BUFFER_FULL
