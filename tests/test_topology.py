"""Topology: epochs, fencing, split-brain alarms, observed promotions, and the EventBus."""

from __future__ import annotations

import dataclasses
import logging
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.health.events import (
    BackendDown,
    BackendFenced,
    BackendStateChanged,
    BackendUp,
    Event,
    EventBus,
    MasterLost,
    MasterPromoted,
    ReplicaCaughtUp,
    ReplicaLagging,
    SplitBrainSuspected,
)
from proxy.health.states import BackendState, StateChange
from proxy.health.topology import Role, Topology, TopologyError

E = TypeVar("E")

ONLINE = BackendState.ONLINE
SHUNNED = BackendState.SHUNNED
OFFLINE_SOFT = BackendState.OFFLINE_SOFT
OFFLINE_HARD = BackendState.OFFLINE_HARD
LAGGING = BackendState.LAGGING


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self, bus: EventBus) -> None:
        self.events: list[Event] = []
        bus.subscribe(self.events.append)

    def take(self) -> list[Event]:
        taken = list(self.events)
        self.events.clear()
        return taken

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]


def change(old: BackendState, new: BackendState, lag_s: float | None = None) -> StateChange:
    return StateChange(old, new, f"{old.value}->{new.value}", 0.0, lag_s)


def make(
    backends: list[tuple[str, str]] | None = None,
) -> tuple[Topology, Recorder, FakeClock]:
    bus = EventBus()
    rec = Recorder(bus)
    clock = FakeClock()
    topo = Topology(
        backends if backends is not None else [("a", "master"), ("b", "replica"), ("c", "replica")],
        bus,
        clock,
    )
    return topo, rec, clock


def shun(topo: Topology, name: str) -> None:
    topo.apply_state_change(name, change(topo.state(name), SHUNNED))


def revive(topo: Topology, name: str) -> None:
    topo.apply_state_change(name, change(topo.state(name), ONLINE))


# -- construction and queries ------------------------------------------------------------


def test_initial_topology_follows_the_hints() -> None:
    topo, rec, _ = make()
    assert topo.master == "a"
    assert topo.epoch == 1
    assert topo.writable_master() == "a"
    assert topo.replicas() == ["b", "c"]
    assert topo.readable_replicas() == ["b", "c"]
    assert topo.role("a") is Role.MASTER
    assert rec.events == []


def test_no_master_hint_means_no_writer() -> None:
    topo, _, _ = make([("b", "replica")])
    assert topo.master is None
    assert topo.writable_master() is None


@pytest.mark.parametrize(
    "backends",
    [
        [("a", "master"), ("b", "master")],
        [("a", "master"), ("a", "replica")],
    ],
)
def test_rejects_bad_backend_lists(backends: list[tuple[str, str]]) -> None:
    with pytest.raises(TopologyError):
        make(backends)


def test_unknown_backend_is_an_error() -> None:
    topo, _, _ = make()
    with pytest.raises(TopologyError, match="nope"):
        topo.state("nope")
    with pytest.raises(TopologyError):
        topo.observe("nope", True, None)
    with pytest.raises(TopologyError):
        topo.promote("nope", source="admin")


# -- state changes -----------------------------------------------------------------------


def test_master_shunned_publishes_in_order_and_stops_writes() -> None:
    topo, rec, _ = make()
    topo.apply_state_change("a", change(ONLINE, SHUNNED))
    assert rec.take() == [
        BackendStateChanged("a", ONLINE, SHUNNED, "ONLINE->SHUNNED"),
        BackendDown("a", "ONLINE->SHUNNED"),
        MasterLost("a", 1),
    ]
    assert topo.writable_master() is None
    assert topo.master == "a"  # still the master of epoch 1, just unusable


def test_master_offline_hard_is_lost_but_offline_soft_is_not() -> None:
    topo, rec, _ = make()
    topo.apply_state_change("a", change(ONLINE, OFFLINE_SOFT))
    assert rec.of(MasterLost) == []
    assert topo.writable_master() is None
    topo.apply_state_change("a", change(OFFLINE_SOFT, OFFLINE_HARD))
    assert rec.of(MasterLost) == [MasterLost("a", 1)]


def test_master_lost_fires_once_per_loss() -> None:
    topo, rec, _ = make()
    topo.apply_state_change("a", change(ONLINE, SHUNNED))
    topo.apply_state_change("a", change(SHUNNED, OFFLINE_HARD))
    assert len(rec.of(MasterLost)) == 1


def test_backend_back_online_publishes_up() -> None:
    topo, rec, _ = make()
    shun(topo, "b")
    rec.take()
    revive(topo, "b")
    assert rec.take() == [
        BackendStateChanged("b", SHUNNED, ONLINE, "SHUNNED->ONLINE"),
        BackendUp("b"),
    ]


def test_lagging_replica_is_not_readable_and_events_say_so() -> None:
    topo, rec, _ = make()
    topo.apply_state_change("b", change(ONLINE, LAGGING, lag_s=12.0))
    assert rec.take() == [
        BackendStateChanged("b", ONLINE, LAGGING, "ONLINE->LAGGING"),
        ReplicaLagging("b", 12.0),
    ]
    assert topo.readable_replicas() == ["c"]
    topo.apply_state_change("b", change(LAGGING, ONLINE, lag_s=1.0))
    assert rec.take() == [
        BackendStateChanged("b", LAGGING, ONLINE, "LAGGING->ONLINE"),
        ReplicaCaughtUp("b"),
    ]
    assert topo.readable_replicas() == ["b", "c"]


def test_a_lagging_master_still_takes_writes() -> None:
    topo, _, _ = make()
    topo.apply_state_change("a", change(ONLINE, LAGGING, lag_s=None))
    assert topo.writable_master() == "a"


def test_repeated_state_is_not_republished() -> None:
    topo, rec, _ = make()
    topo.apply_state_change("b", change(ONLINE, ONLINE))
    assert rec.events == []


# -- promotion, epochs, fencing ----------------------------------------------------------


def test_promote_bumps_epoch_fences_old_master_publishes_in_order() -> None:
    topo, rec, clock = make()
    clock.now = 200.0
    event = topo.promote("b", source="auto")
    assert event == MasterPromoted("a", "b", 2, "auto")
    assert rec.take() == [BackendFenced("a", 2), event]
    assert topo.epoch == 2
    assert topo.master == "b"
    assert topo.writable_master() == "b"
    assert topo.is_fenced("a") and not topo.is_fenced("b")
    assert topo.role("a") is Role.REPLICA and topo.role("b") is Role.MASTER
    assert topo.replicas() == ["a", "c"]
    assert topo.readable_replicas() == ["c"]  # a is fenced until seen rejoined
    assert topo.snapshot().epoch_started_at == 200.0


def test_promoting_the_current_master_is_a_no_op() -> None:
    topo, rec, _ = make()
    assert topo.promote("a", source="admin") is None
    assert topo.epoch == 1 and rec.events == []


def test_stale_epoch_is_ignored() -> None:
    topo, rec, _ = make()
    topo.promote("b", source="auto")  # epoch 2
    rec.take()
    assert topo.promote("c", source="redis", epoch=1) is None
    assert topo.promote("b", source="redis", epoch=2) is None  # our own news echoed back
    assert rec.events == []
    assert (topo.master, topo.epoch) == ("b", 2)


def test_equal_epoch_naming_another_master_is_an_alarm_not_a_promotion() -> None:
    topo, rec, _ = make()
    topo.promote("b", source="auto")
    rec.take()
    assert topo.promote("c", source="redis", epoch=2) is None
    assert rec.take() == [SplitBrainSuspected(("b", "c"))]
    assert (topo.master, topo.epoch) == ("b", 2)


def test_higher_remote_epoch_is_adopted_and_counting_continues_from_it() -> None:
    topo, rec, _ = make()
    event = topo.promote("c", source="redis", old="a", epoch=7)
    assert event == MasterPromoted("a", "c", 7, "redis")
    assert topo.epoch == 7
    next_event = topo.promote("b", source="admin")
    assert next_event is not None and next_event.epoch == 8
    assert topo.is_fenced("a") and topo.is_fenced("c")


def test_remote_old_master_is_fenced_too() -> None:
    """We missed an epoch: we think a is master, the news says b was replaced by c."""
    topo, rec, _ = make()
    topo.promote("c", source="redis", old="b", epoch=3)
    assert rec.of(BackendFenced) == [BackendFenced("a", 3), BackendFenced("b", 3)]
    assert topo.is_fenced("a") and topo.is_fenced("b")


def test_adopted_epoch_for_the_same_master_does_not_fence_it() -> None:
    topo, _, _ = make()
    event = topo.promote("a", source="redis", epoch=4)
    assert event == MasterPromoted("a", "a", 4, "redis")
    assert not topo.is_fenced("a")
    assert topo.writable_master() == "a"


def test_local_promotion_of_a_fenced_node_is_refused() -> None:
    topo, _, _ = make()
    topo.promote("b", source="auto")
    with pytest.raises(TopologyError, match="fenced"):
        topo.promote("a", source="admin")
    assert (topo.master, topo.epoch) == ("b", 2)


def test_remote_promotion_of_a_fenced_node_stops_writes_everywhere() -> None:
    """Refusing would keep us writing to a master the cluster has moved past."""
    topo, _, _ = make()
    topo.promote("b", source="auto")  # a fenced
    event = topo.promote("a", source="redis", epoch=5)
    assert event is not None and event.epoch == 5
    assert topo.master == "a"
    assert topo.writable_master() is None
    assert topo.is_fenced("b")


def test_unknown_promotion_source_is_refused() -> None:
    topo, _, _ = make()
    with pytest.raises(TopologyError):
        topo.promote("b", source="magic")  # type: ignore[arg-type]
    assert topo.epoch == 1


def test_fenced_old_master_returning_writable_is_never_the_writer() -> None:
    """The measured ProxySQL failure: old master comes back with read_only=0."""
    topo, rec, _ = make()
    topo.observe("a", False, None)
    shun(topo, "a")  # kill -9
    topo.observe("b", False, None)
    assert topo.observed_promotion_candidate() == "b"
    topo.promote("b", source="observed")
    assert rec.of(SplitBrainSuspected) == []  # a's pre-crash read_only=0 is stale
    revive(topo, "a")  # it comes back ...
    topo.observe("a", False, None)  # ... still read_only=0
    assert topo.writable_master() == "b"
    assert rec.of(SplitBrainSuspected) == [SplitBrainSuspected(("a", "b"))]
    topo.observe("a", False, None)
    assert len(rec.of(SplitBrainSuspected)) == 1  # no repeat while nothing changes
    assert "a" not in topo.readable_replicas()


def test_fenced_node_writable_alone_is_still_an_alarm() -> None:
    topo, rec, _ = make()
    topo.promote("b", source="auto")
    shun(topo, "b")
    topo.observe("a", False, None)
    assert rec.of(SplitBrainSuspected) == [SplitBrainSuspected(("a",))]
    assert topo.writable_master() is None


def test_fenced_old_master_serves_reads_once_rejoined() -> None:
    topo, _, _ = make()
    topo.promote("b", source="auto")
    topo.observe("a", True, "a")  # read-only but pointing at itself: not rejoined
    assert "a" not in topo.readable_replicas()
    topo.observe("a", True, "b")
    assert topo.readable_replicas() == ["a", "c"]
    assert topo.writable_master() == "b"


def test_unfenced_former_master_is_an_ordinary_replica_again() -> None:
    """Fencing ends (the coordinator checked its history): promotable, readable, no alarm."""
    topo, rec, _ = make()
    topo.promote("b", source="switchover")
    topo.observe("a", True, "b")
    assert not topo.unfence("b")  # the master is not fenced
    assert topo.unfence("a") and not topo.is_fenced("a")
    assert not topo.unfence("a")  # already not fenced
    assert topo.readable_replicas() == ["a", "c"]
    assert topo.observed_promotion_candidate() is None
    event = topo.promote("a", source="hook")  # a DBA switched back by hand
    assert event == MasterPromoted("b", "a", 3, "hook")
    assert topo.writable_master() == "a" and topo.is_fenced("b")
    assert rec.of(SplitBrainSuspected) == []


def test_a_fenced_node_named_master_by_a_remote_epoch_stays_fenced() -> None:
    topo, _, _ = make()
    topo.promote("b", source="auto")
    topo.promote("a", source="redis", epoch=5)  # writes wait: a is fenced
    with pytest.raises(TopologyError, match="master of epoch 5"):
        topo.unfence("a")
    assert topo.writable_master() is None


# -- observations ------------------------------------------------------------------------


def test_second_writer_while_master_is_writable_is_an_alarm() -> None:
    topo, rec, _ = make()
    topo.observe("a", False, None)
    topo.observe("b", True, "a")
    assert rec.events == []
    topo.observe("b", False, None)
    assert rec.take() == [SplitBrainSuspected(("a", "b"))]
    assert topo.writable_master() == "a"  # never route writes by read_only
    topo.observe("c", False, None)
    assert rec.take() == [SplitBrainSuspected(("a", "b", "c"))]
    topo.observe("b", True, "a")  # one writer leaves: no new alarm ...
    assert rec.take() == []
    topo.observe("b", False, None)  # ... but it coming back is news
    assert rec.take() == [SplitBrainSuspected(("a", "b", "c"))]
    topo.observe("b", True, "a")
    topo.observe("c", True, "a")
    assert rec.take() == []
    topo.observe("b", False, None)  # the same situation again, after it had cleared
    assert rec.take() == [SplitBrainSuspected(("a", "b"))]


def test_unobserved_master_counts_as_a_writer() -> None:
    topo, rec, _ = make()
    topo.observe("c", False, None)
    assert rec.of(SplitBrainSuspected) == [SplitBrainSuspected(("a", "c"))]


def test_replica_writable_while_master_read_only_is_not_an_alarm() -> None:
    """A switchover by someone else: old master set read-only, new one opened."""
    topo, rec, _ = make()
    topo.observe("a", True, None)
    topo.observe("b", False, None)
    assert rec.events == []
    assert topo.observed_promotion_candidate() == "b"


def test_two_writable_replicas_with_master_down_is_an_alarm_and_no_candidate() -> None:
    topo, rec, _ = make()
    shun(topo, "a")
    topo.observe("b", False, None)
    assert topo.observed_promotion_candidate() == "b"
    topo.observe("c", False, None)
    assert rec.of(SplitBrainSuspected) == [SplitBrainSuspected(("b", "c"))]
    assert topo.observed_promotion_candidate() is None


def test_no_candidate_while_master_is_healthy() -> None:
    topo, _, _ = make()
    topo.observe("b", False, None)
    assert topo.observed_promotion_candidate() is None


@pytest.mark.parametrize("master_state", [SHUNNED, OFFLINE_SOFT, OFFLINE_HARD])
def test_candidate_when_master_is_out(master_state: BackendState) -> None:
    topo, _, _ = make()
    topo.apply_state_change("a", change(ONLINE, master_state))
    topo.observe("c", False, None)
    assert topo.observed_promotion_candidate() == "c"


def test_candidate_must_have_stopped_replicating() -> None:
    topo, _, _ = make()
    shun(topo, "a")
    topo.observe("b", False, "a")
    assert topo.observed_promotion_candidate() is None


def test_candidate_must_be_observed_up_and_not_fenced() -> None:
    topo, _, _ = make()
    shun(topo, "a")
    assert topo.observed_promotion_candidate() is None  # nothing observed yet
    topo.observe("b", False, None)
    topo.apply_state_change("b", change(ONLINE, OFFLINE_SOFT))
    assert topo.observed_promotion_candidate() is None  # drained by an admin
    topo.apply_state_change("b", change(OFFLINE_SOFT, LAGGING, lag_s=None))
    assert topo.observed_promotion_candidate() == "b"  # stopped replicating => lag unknown

    topo2, _, _ = make()
    topo2.promote("b", source="auto")
    shun(topo2, "b")
    topo2.observe("a", False, None)  # the fenced old master
    assert topo2.observed_promotion_candidate() is None


def test_candidate_with_no_known_master() -> None:
    topo, rec, _ = make([("b", "replica"), ("c", "replica")])
    topo.observe("c", False, None)
    assert topo.observed_promotion_candidate() == "c"
    event = topo.promote("c", source="observed")
    assert event == MasterPromoted(None, "c", 2, "observed")
    assert rec.of(BackendFenced) == []


def test_shunning_clears_stale_observations() -> None:
    topo, _, _ = make()
    topo.observe("b", True, "a", lag_s=0.5)
    shun(topo, "b")
    view = {v.name: v for v in topo.snapshot().backends}["b"]
    assert view.read_only is None and view.replicating_from is None


# -- config reload -----------------------------------------------------------------------


def test_add_and_remove_replicas() -> None:
    topo, rec, _ = make()
    topo.add_backend("d", "replica")
    assert topo.replicas() == ["b", "c", "d"]
    assert topo.readable_replicas() == ["b", "c", "d"]
    topo.remove_backend("c")
    assert topo.replicas() == ["b", "d"]
    assert rec.events == []
    with pytest.raises(TopologyError):
        topo.add_backend("b", "replica")


def test_cannot_remove_the_master_or_add_a_second_one() -> None:
    topo, _, _ = make()
    with pytest.raises(TopologyError, match="promote"):
        topo.remove_backend("a")
    with pytest.raises(TopologyError):
        topo.add_backend("d", "master")
    assert "d" not in topo.backends()


def test_adding_a_master_when_there_is_none_is_an_admin_promotion() -> None:
    topo, rec, _ = make([("b", "replica")])
    topo.add_backend("n", Role.MASTER)
    assert rec.events == [MasterPromoted(None, "n", 2, "admin")]
    assert topo.writable_master() == "n"


def test_fencing_survives_remove_and_add() -> None:
    topo, rec, _ = make()
    topo.promote("b", source="auto")
    topo.remove_backend("a")
    topo.add_backend("a", "replica")
    assert topo.is_fenced("a")
    with pytest.raises(TopologyError, match="fenced"):
        topo.promote("a", source="admin")


def test_removing_a_claimed_writer_clears_the_alarm() -> None:
    topo, rec, _ = make()
    topo.observe("b", False, None)
    topo.remove_backend("b")
    topo.add_backend("b", "replica")
    topo.observe("b", False, None)
    assert rec.of(SplitBrainSuspected) == [SplitBrainSuspected(("a", "b"))] * 2


# -- snapshot ----------------------------------------------------------------------------


def test_snapshot_is_a_frozen_view() -> None:
    topo, _, clock = make()
    topo.promote("b", source="switchover")
    topo.observe("c", True, "b", lag_s=0.25)
    topo.apply_state_change("c", change(ONLINE, LAGGING, lag_s=3.0))
    clock.now = 300.0
    snap = topo.snapshot()
    assert (snap.epoch, snap.master, snap.writable_master, snap.taken_at) == (2, "b", "b", 300.0)
    views = {v.name: v for v in snap.backends}
    assert [v.name for v in snap.backends] == ["a", "b", "c"]
    assert views["a"].fenced and views["a"].epoch == 1 and views["a"].role is Role.REPLICA
    assert views["b"].epoch == 2 and views["b"].role is Role.MASTER
    assert views["c"].state is LAGGING and views["c"].lag_s == 3.0 and views["c"].epoch is None
    assert views["c"].read_only is True and views["c"].replicating_from == "b"
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.epoch = 9  # type: ignore[misc]
    topo.promote("c", source="auto")
    assert snap.master == "b"  # a snapshot does not move


# -- EventBus ----------------------------------------------------------------------------


def test_failing_subscriber_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    seen: list[tuple[str, Event]] = []

    def broken(event: Event) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe(lambda e: seen.append(("first", e)))
    bus.subscribe(broken)
    bus.subscribe(lambda e: seen.append(("third", e)))
    with caplog.at_level(logging.ERROR, logger="proxy.health.events"):
        bus.publish(BackendUp("x"))
        bus.publish(BackendUp("y"))
    assert seen == [
        ("first", BackendUp("x")),
        ("third", BackendUp("x")),
        ("first", BackendUp("y")),
        ("third", BackendUp("y")),
    ]
    assert "subscriber bug" in caplog.text


def test_unsubscribe_stops_delivery_and_is_idempotent() -> None:
    bus = EventBus()
    seen: list[Event] = []
    unsubscribe = bus.subscribe(seen.append)
    bus.publish(BackendUp("x"))
    unsubscribe()
    unsubscribe()
    bus.publish(BackendUp("y"))
    assert seen == [BackendUp("x")]


def test_events_published_by_subscribers_keep_global_order() -> None:
    bus = EventBus()
    first: list[Event] = []
    second: list[Event] = []

    def reacts(event: Event) -> None:
        first.append(event)
        if isinstance(event, MasterLost):
            bus.publish(BackendFenced(event.name, event.epoch + 1))

    bus.subscribe(reacts)
    bus.subscribe(second.append)
    bus.publish(MasterLost("a", 1))
    assert first == second == [MasterLost("a", 1), BackendFenced("a", 2)]


def test_unsubscribe_during_delivery_takes_effect_at_once() -> None:
    bus = EventBus()
    seen: list[Event] = []
    holder: dict[str, object] = {}

    def first(event: Event) -> None:
        holder["unsub"]()  # type: ignore[operator]

    bus.subscribe(first)
    holder["unsub"] = bus.subscribe(seen.append)
    bus.publish(BackendUp("x"))
    assert seen == []


def test_master_promoted_rejects_unknown_source() -> None:
    with pytest.raises(ValueError):
        MasterPromoted("a", "b", 2, "guess")  # type: ignore[arg-type]


# -- properties --------------------------------------------------------------------------

NAMES = ["a", "b", "c", "d"]

_ops = st.one_of(
    st.tuples(
        st.just("promote"),
        st.sampled_from(NAMES),
        st.sampled_from(["observed", "admin", "redis", "hook", "auto", "switchover"]),
        st.one_of(st.none(), st.sampled_from(NAMES)),
        st.one_of(st.none(), st.integers(-2, 30)),
    ),
    st.tuples(st.just("state"), st.sampled_from(NAMES), st.sampled_from(list(BackendState))),
    st.tuples(
        st.just("observe"),
        st.sampled_from(NAMES),
        st.booleans(),
        st.one_of(st.none(), st.sampled_from(NAMES)),
    ),
)


@settings(max_examples=300)
@given(st.lists(_ops, max_size=40))
def test_epoch_never_decreases_and_writer_is_never_fenced(ops: list[tuple]) -> None:
    topo, rec, _ = make([("a", "master"), ("b", "replica"), ("c", "replica"), ("d", "replica")])
    last_epoch = topo.epoch
    for op in ops:
        if op[0] == "promote":
            _, name, source, old, epoch = op
            try:
                topo.promote(name, source=source, old=old, epoch=epoch)
            except TopologyError:
                assert topo.is_fenced(name)
        elif op[0] == "state":
            topo.apply_state_change(op[1], change(topo.state(op[1]), op[2]))
        else:
            topo.observe(op[1], op[2], op[3])
        assert topo.epoch >= last_epoch
        last_epoch = topo.epoch
        writer = topo.writable_master()
        assert writer is None or (writer == topo.master and not topo.is_fenced(writer))
        assert writer is None or topo.state(writer).accepts_writes
    promoted = [e.epoch for e in rec.of(MasterPromoted)]
    assert promoted == sorted(set(promoted))  # strictly increasing epochs on the bus
