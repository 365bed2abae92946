"""FailureDetector: thresholds, rise, lag hysteresis, admin precedence, the table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.health.detector import (
    TRANSITIONS,
    FailureDetector,
    ImpossibleTransition,
    Input,
)
from proxy.health.states import BackendState, StateChange

ONLINE = BackendState.ONLINE
SHUNNED = BackendState.SHUNNED
OFFLINE_SOFT = BackendState.OFFLINE_SOFT
OFFLINE_HARD = BackendState.OFFLINE_HARD
LAGGING = BackendState.LAGGING


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(threshold: int = 3, **kw: object) -> tuple[FailureDetector, FakeClock]:
    clock = FakeClock()
    return FailureDetector(threshold, clock, **kw), clock  # type: ignore[arg-type]


@pytest.mark.parametrize("threshold", [1, 2, 3, 5])
def test_threshold_minus_one_failures_keep_online_threshold_shuns(threshold: int) -> None:
    d, _ = make(threshold)
    for _ in range(threshold - 1):
        assert d.record_failure("timeout") is None
        assert d.state is ONLINE
    change = d.record_failure("connection refused")
    assert change is not None
    assert (change.old, change.new) == (ONLINE, SHUNNED)
    assert "connection refused" in change.reason
    assert d.state is SHUNNED
    assert d.consecutive_failures == threshold


def test_one_success_resets_the_failure_count() -> None:
    d, _ = make(3)
    d.record_failure("timeout")
    d.record_failure("timeout")
    d.record_success(0.001)
    assert d.consecutive_failures == 0
    assert d.record_failure("timeout") is None
    assert d.record_failure("timeout") is None
    assert d.state is ONLINE
    assert d.record_failure("timeout") is not None
    assert d.state is SHUNNED


def test_failures_after_shunning_do_not_repeat_the_change() -> None:
    d, _ = make(2)
    d.record_failure("a")
    assert d.record_failure("b") is not None
    assert d.record_failure("c") is None
    assert d.state is SHUNNED
    assert d.last_error == "c"
    assert d.consecutive_failures == 3


def test_one_success_brings_a_shunned_backend_back_by_default() -> None:
    d, clock = make(2)
    d.record_failure("x")
    d.record_failure("x")
    clock.now = 1005.0
    change = d.record_success(0.002)
    assert isinstance(change, StateChange)
    assert (change.old, change.new, change.at) == (SHUNNED, ONLINE, 1005.0)
    assert d.state is ONLINE
    assert d.last_success_at == 1005.0
    assert d.last_latency_s == 0.002


def test_rise_count_needs_consecutive_successes() -> None:
    d, _ = make(1, rise=3)
    d.record_failure("x")
    assert d.record_success(0.001) is None
    assert d.record_success(0.001) is None
    d.record_failure("again")  # breaks the run of successes
    assert d.record_success(0.001) is None
    assert d.record_success(0.001) is None
    assert d.state is SHUNNED
    change = d.record_success(0.001)
    assert change is not None and change.new is ONLINE


def test_state_change_carries_the_clock_time() -> None:
    d, clock = make(1)
    clock.now = 42.5
    change = d.record_failure("boom")
    assert change is not None and change.at == 42.5


# -- lag ---------------------------------------------------------------------------------


def test_lag_over_limit_goes_lagging_and_recovers_only_below_80_percent() -> None:
    d, _ = make()
    assert d.record_lag(10.0, 10.0) is None  # equal to the limit is fine
    change = d.record_lag(10.5, 10.0)
    assert change is not None and (change.old, change.new) == (ONLINE, LAGGING)
    assert change.lag_s == 10.5
    assert d.record_lag(9.0, 10.0) is None  # under the limit, but not under 8
    assert d.record_lag(8.1, 10.0) is None
    assert d.state is LAGGING
    change = d.record_lag(8.0, 10.0)
    assert change is not None and (change.old, change.new) == (LAGGING, ONLINE)
    assert d.record_lag(9.9, 10.0) is None  # back inside the band: stays ONLINE
    assert d.state is ONLINE


def test_lag_recovery_ratio_is_configurable() -> None:
    d, _ = make(lag_recovery_ratio=0.5)
    d.record_lag(3.0, 2.0)
    assert d.record_lag(1.1, 2.0) is None
    assert d.record_lag(1.0, 2.0) is not None
    assert d.state is ONLINE


def test_unknown_lag_counts_as_over_the_limit() -> None:
    d, _ = make()
    change = d.record_lag(None, 5.0)
    assert change is not None and change.new is LAGGING
    assert change.lag_s is None
    assert d.record_lag(0.0, 5.0) is not None
    assert d.state is ONLINE


def test_zero_lag_limit() -> None:
    d, _ = make()
    assert d.record_lag(0.0, 0.0) is None
    assert d.record_lag(1.0, 0.0) is not None
    assert d.record_lag(0.0, 0.0) is not None
    assert d.state is ONLINE


def test_shunned_replica_that_was_lagging_returns_lagging() -> None:
    d, _ = make(1)
    d.record_lag(30.0, 10.0)
    d.record_failure("down")
    assert d.state is SHUNNED
    change = d.record_success(0.001)
    assert change is not None and (change.old, change.new) == (SHUNNED, LAGGING)


def test_lag_samples_while_shunned_are_remembered() -> None:
    d, _ = make(1)
    d.record_failure("down")
    assert d.record_lag(30.0, 10.0) is None
    assert d.state is SHUNNED
    d.record_success(0.001)
    assert d.state is LAGGING
    d.record_failure("down")
    assert d.record_lag(1.0, 10.0) is None
    d.record_success(0.001)
    assert d.state is ONLINE


def test_failing_probes_shun_a_lagging_replica() -> None:
    d, _ = make(1)
    d.record_lag(30.0, 10.0)
    change = d.record_failure("down")
    assert change is not None and (change.old, change.new) == (LAGGING, SHUNNED)


# -- admin -------------------------------------------------------------------------------


@pytest.mark.parametrize("admin", [OFFLINE_SOFT, OFFLINE_HARD])
def test_admin_override_beats_probes(admin: BackendState) -> None:
    d, _ = make(1)
    change = d.set_admin_state(admin)
    assert change is not None and (change.old, change.new) == (ONLINE, admin)
    assert d.record_failure("down") is None
    assert d.record_success(0.001) is None
    assert d.record_lag(100.0, 1.0) is None
    assert d.state is admin


def test_lifting_the_override_reveals_what_probes_say_now() -> None:
    d, _ = make(2)
    d.set_admin_state(OFFLINE_SOFT)
    d.record_failure("down")
    d.record_failure("refused")
    change = d.set_admin_state(ONLINE)
    assert change is not None and (change.old, change.new) == (OFFLINE_SOFT, SHUNNED)
    assert "refused" in change.reason


def test_lifting_the_override_on_a_lagging_replica() -> None:
    d, _ = make()
    d.set_admin_state(OFFLINE_HARD)
    d.record_lag(50.0, 10.0)
    change = d.set_admin_state(ONLINE)
    assert change is not None and change.new is LAGGING


def test_lifting_the_override_on_a_healthy_backend() -> None:
    d, _ = make()
    d.set_admin_state(OFFLINE_HARD)
    change = d.set_admin_state(ONLINE)
    assert change is not None and (change.old, change.new) == (OFFLINE_HARD, ONLINE)


def test_admin_online_does_not_overrule_failing_probes() -> None:
    d, _ = make(1)
    d.record_failure("down")
    assert d.set_admin_state(ONLINE) is None
    assert d.state is SHUNNED


def test_admin_can_move_between_soft_and_hard() -> None:
    d, _ = make()
    d.set_admin_state(OFFLINE_SOFT)
    change = d.set_admin_state(OFFLINE_HARD)
    assert change is not None and (change.old, change.new) == (OFFLINE_SOFT, OFFLINE_HARD)
    assert d.set_admin_state(OFFLINE_HARD) is None  # repeating is harmless


@pytest.mark.parametrize("bad", [SHUNNED, LAGGING])
def test_admin_cannot_set_probe_states(bad: BackendState) -> None:
    d, _ = make()
    with pytest.raises(ValueError, match=bad.value):
        d.set_admin_state(bad)


# -- the table ---------------------------------------------------------------------------


def test_missing_transition_raises_naming_the_state() -> None:
    assert (ONLINE, Input.PROBES_PASSING) not in TRANSITIONS
    d, _ = make()
    with pytest.raises(ImpossibleTransition, match="ONLINE") as info:
        d._step(Input.PROBES_PASSING)
    assert info.value.state is ONLINE


def test_every_state_handles_every_admin_input() -> None:
    for state in BackendState:
        for event in (Input.ADMIN_SOFT, Input.ADMIN_HARD, Input.ADMIN_ONLINE):
            assert (state, event) in TRANSITIONS


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"rise": 0},
        {"lag_recovery_ratio": 0.0},
        {"lag_recovery_ratio": 1.5},
    ],
)
def test_rejects_bad_configuration(kwargs: dict[str, float]) -> None:
    args: dict[str, object] = {"failure_threshold": 3, "clock": FakeClock(), **kwargs}
    with pytest.raises(ValueError):
        FailureDetector(**args)  # type: ignore[arg-type]


_actions = st.one_of(
    st.tuples(st.just("ok")),
    st.tuples(st.just("fail")),
    st.tuples(st.just("lag"), st.one_of(st.none(), st.floats(0, 20))),
    st.tuples(st.just("admin"), st.sampled_from([ONLINE, OFFLINE_SOFT, OFFLINE_HARD])),
)


@given(st.integers(1, 4), st.integers(1, 3), st.lists(_actions, max_size=60))
def test_any_sequence_keeps_state_consistent_with_facts(
    threshold: int, rise: int, actions: list[tuple]
) -> None:
    """No input sequence reaches a missing transition, changes chain up, and the state
    is always what the standing facts say it should be."""
    d, _ = make(threshold, rise=rise)
    admin: BackendState | None = None
    failing = lagging = False
    fails = oks = 0
    for action in actions:
        before = d.state
        if action[0] == "ok":
            change = d.record_success(0.001)
            fails, oks = 0, oks + 1
            if failing and oks >= rise:
                failing = False
        elif action[0] == "fail":
            change = d.record_failure("x")
            fails, oks = fails + 1, 0
            if fails >= threshold:
                failing = True
        elif action[0] == "lag":
            lag = action[1]
            change = d.record_lag(lag, 10.0)
            if lag is None or lag > 10.0:
                lagging = True
            elif lag <= 8.0:
                lagging = False
        else:
            change = d.set_admin_state(action[1])
            admin = None if action[1] is ONLINE else action[1]
        expected = admin or (SHUNNED if failing else LAGGING if lagging else ONLINE)
        assert d.state is expected
        if change is None:
            assert d.state is before
        else:
            assert (change.old, change.new) == (before, d.state) and change.old is not change.new
