"""Per-backend failure detection: probe outcomes and lag samples in, state changes out.

Pure and clock-injected: the monitor does the probing and calls in here; nothing here
sleeps or does I/O.

Every rule lives in one table, `TRANSITIONS`, mapping (state, input) to the next state
(h11 style). Inputs are *edges* of three standing facts the detector keeps beside the
state:

- failing: `failure_threshold` consecutive probe failures seen and not yet `rise`
  consecutive successes since;
- lagging: last lag sample over the limit, with hysteresis (see `record_lag`);
- admin override: OFFLINE_SOFT / OFFLINE_HARD set by an operator, or none.

While an admin override holds, health inputs only update the facts; the state stays put.
ONLINE is where a backend lands when nothing holds it elsewhere, so on every arrival at
ONLINE the standing facts are re-asserted (failing wins over lagging). A (state, input)
pair missing from the table can only mean the facts and the state disagree, which is a
bug: it raises ImpossibleTransition naming both.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from proxy.health.states import BackendState, StateChange

ONLINE = BackendState.ONLINE
SHUNNED = BackendState.SHUNNED
OFFLINE_SOFT = BackendState.OFFLINE_SOFT
OFFLINE_HARD = BackendState.OFFLINE_HARD
LAGGING = BackendState.LAGGING

# A lagging replica is readable again only once lag <= limit * 0.8. With 0.5 a replica
# hovering just over the limit would stay out for long stretches; with no gap at all it
# would flap in and out on every sample. 0.8 damps the flapping and keeps replicas useful.
DEFAULT_LAG_RECOVERY_RATIO = 0.8


class Input(Enum):
    """What can happen to a backend. Health inputs are emitted only on edges of a fact."""

    PROBES_FAILING = "probes failing"  # failure_threshold consecutive failures reached
    PROBES_PASSING = "probes passing"  # rise consecutive successes after failing
    LAG_OVER = "lag over limit"
    LAG_RECOVERED = "lag recovered"
    ADMIN_SOFT = "admin OFFLINE_SOFT"
    ADMIN_HARD = "admin OFFLINE_HARD"
    ADMIN_ONLINE = "admin ONLINE"


_HEALTH_INPUTS = (Input.PROBES_FAILING, Input.PROBES_PASSING, Input.LAG_OVER, Input.LAG_RECOVERED)

TRANSITIONS: dict[tuple[BackendState, Input], BackendState] = {
    (ONLINE, Input.PROBES_FAILING): SHUNNED,
    (ONLINE, Input.LAG_OVER): LAGGING,
    (LAGGING, Input.PROBES_FAILING): SHUNNED,
    (LAGGING, Input.LAG_RECOVERED): ONLINE,
    (SHUNNED, Input.PROBES_PASSING): ONLINE,  # still lagging? arrival at ONLINE re-asserts it
    # Lag samples of a shunned backend only update the lagging fact.
    (SHUNNED, Input.LAG_OVER): SHUNNED,
    (SHUNNED, Input.LAG_RECOVERED): SHUNNED,
    # An admin override outranks probes: health inputs only update the facts.
    **{(OFFLINE_SOFT, i): OFFLINE_SOFT for i in _HEALTH_INPUTS},
    **{(OFFLINE_HARD, i): OFFLINE_HARD for i in _HEALTH_INPUTS},
    **{(s, Input.ADMIN_SOFT): OFFLINE_SOFT for s in BackendState},
    **{(s, Input.ADMIN_HARD): OFFLINE_HARD for s in BackendState},
    # ADMIN_ONLINE lifts an override; it never overrules failing probes or lag.
    (OFFLINE_SOFT, Input.ADMIN_ONLINE): ONLINE,
    (OFFLINE_HARD, Input.ADMIN_ONLINE): ONLINE,
    (ONLINE, Input.ADMIN_ONLINE): ONLINE,
    (SHUNNED, Input.ADMIN_ONLINE): SHUNNED,
    (LAGGING, Input.ADMIN_ONLINE): LAGGING,
}

_ADMIN_INPUTS = {
    ONLINE: Input.ADMIN_ONLINE,
    OFFLINE_SOFT: Input.ADMIN_SOFT,
    OFFLINE_HARD: Input.ADMIN_HARD,
}


class ImpossibleTransition(RuntimeError):
    """The detector's facts and state disagree: a bug, never a backend's fault."""

    def __init__(self, state: BackendState, event: Input) -> None:
        super().__init__(f"no transition from state {state.value} on input {event.value!r}")
        self.state = state
        self.input = event


class FailureDetector:
    """Health verdict for one backend.

    Each `record_*` / `set_admin_state` call returns the StateChange it caused, or None.
    """

    def __init__(
        self,
        failure_threshold: int,
        clock: Callable[[], float],
        *,
        rise: int = 1,
        lag_recovery_ratio: float = DEFAULT_LAG_RECOVERY_RATIO,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if rise < 1:
            raise ValueError(f"rise must be >= 1, got {rise}")
        if not 0.0 < lag_recovery_ratio <= 1.0:
            raise ValueError(f"lag_recovery_ratio must be in (0, 1], got {lag_recovery_ratio}")
        self.failure_threshold = failure_threshold
        self.rise = rise
        self.lag_recovery_ratio = lag_recovery_ratio
        self._clock = clock
        # Starts ONLINE like ProxySQL: the monitor probes at once, and a dead backend is
        # shunned within failure_threshold probes.
        self._state = ONLINE
        self._failing = False
        self._lagging = False
        self._consecutive_failures = 0
        self._consecutive_successes = 0
        self._last_success_at: float | None = None
        self._last_latency_s: float | None = None
        self._last_error: str | None = None
        self._lag_s: float | None = None

    # -- read-only view -------------------------------------------------------------

    @property
    def state(self) -> BackendState:
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive_failures

    @property
    def last_success_at(self) -> float | None:
        return self._last_success_at

    @property
    def last_latency_s(self) -> float | None:
        return self._last_latency_s

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @property
    def lag_s(self) -> float | None:
        """Latest lag sample (None: never sampled, or replication not running)."""
        return self._lag_s

    # -- inputs -----------------------------------------------------------------------

    def record_success(self, latency_s: float) -> StateChange | None:
        self._last_success_at = self._clock()
        self._last_latency_s = latency_s
        self._consecutive_failures = 0
        self._consecutive_successes += 1
        if self._failing and self._consecutive_successes >= self.rise:
            self._failing = False
            return self._apply(
                Input.PROBES_PASSING, f"{self._consecutive_successes} probe(s) succeeded"
            )
        return None

    def record_failure(self, reason: str) -> StateChange | None:
        self._last_error = reason
        self._consecutive_successes = 0
        self._consecutive_failures += 1
        if not self._failing and self._consecutive_failures >= self.failure_threshold:
            self._failing = True
            return self._apply(
                Input.PROBES_FAILING,
                f"{self._consecutive_failures} consecutive probe failures, last: {reason}",
            )
        return None

    def record_lag(self, lag_s: float | None, limit_s: float) -> StateChange | None:
        """Feed one replication lag sample. Only for replicas: a master has no lag.

        LAGGING when lag > limit_s; readable again only when lag <= limit_s * ratio
        (hysteresis, default 0.8). None (Seconds_Behind_Master NULL: replication stopped
        or broken) counts as over the limit: unknown lag is no basis for reads.
        """
        if limit_s < 0:
            raise ValueError(f"lag limit must be >= 0, got {limit_s}")
        self._lag_s = lag_s
        if lag_s is None:
            over, recovered = True, False
            why = "replication lag unknown (replication not running)"
        else:
            over = lag_s > limit_s
            recovered = lag_s <= limit_s * self.lag_recovery_ratio
            why = f"replication lag {lag_s:g}s, limit {limit_s:g}s"
        if not self._lagging and over:
            self._lagging = True
            return self._apply(Input.LAG_OVER, why)
        if self._lagging and recovered:
            self._lagging = False
            return self._apply(Input.LAG_RECOVERED, why)
        return None

    def set_admin_state(self, state: BackendState) -> StateChange | None:
        """OFFLINE_SOFT / OFFLINE_HARD override probes until ONLINE lifts the override."""
        try:
            event = _ADMIN_INPUTS[state]
        except KeyError:
            raise ValueError(
                f"admin can set ONLINE, OFFLINE_SOFT or OFFLINE_HARD, not {state.value}"
            ) from None
        return self._apply(event, f"admin set {state.value}")

    # -- the one place where state changes ----------------------------------------------

    def _apply(self, event: Input, reason: str) -> StateChange | None:
        old = self._state
        reasons = [reason]
        self._step(event)
        if self._state is ONLINE and old is not ONLINE:
            self._reassert_facts(reasons)
        if self._state is old:
            return None
        return StateChange(old, self._state, "; ".join(reasons), self._clock(), self._lag_s)

    def _reassert_facts(self, reasons: list[str]) -> None:
        if self._failing:
            self._step(Input.PROBES_FAILING)
            reasons.append(f"probes still failing: {self._last_error}")
        elif self._lagging:
            self._step(Input.LAG_OVER)
            lag = "unknown" if self._lag_s is None else f"{self._lag_s:g}s"
            reasons.append(f"still lagging (last sample {lag})")

    def _step(self, event: Input) -> None:
        try:
            self._state = TRANSITIONS[(self._state, event)]
        except KeyError:
            raise ImpossibleTransition(self._state, event) from None
