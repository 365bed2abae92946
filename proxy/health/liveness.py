"""Is the backend alive: the ping loop and the fresh-connect loop of every backend.

- liveness, every `interval_ms`: COM_PING on a kept-open connection (reconnecting when it
  breaks). A probe fails if no answer comes within `timeout_ms`. One request is in flight
  at a time: while a ping or handshake is unanswered, later probes wait on the same answer
  instead of piling connections onto a hung server, and each probe that waited past its
  timeout counts as one failure. So a hung (SIGSTOPped) server is SHUNNED
  `timeout_ms + (failure_threshold - 1) * interval_ms` after the first probe it left
  unanswered (up to one interval more after it hung), a killed one (connection refused at
  once) after `failure_threshold` probes. Defaults: about 1.0-1.25 s and 0.5-0.75 s.
- a fresh connect + login + COM_QUIT every `connect_interval_ms`: catches a server that
  takes no new connections while old ones still work.

Both only record successes and failures in the backend's FailureDetector; its verdicts go to
the Topology (watch.apply_change). Kept apart from the Monitor because the scheduling here
(one request, many waiting probes) is the subtle part and deserves to be read alone.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from proxy.backend import BackendError
from proxy.config import MonitorConfig
from proxy.health.topology import Topology
from proxy.health.watch import HANDSHAKE_PATIENCE_S, Watch, apply_change, log_in
from proxy.protocol.constants import Command


class LivenessProbes:
    """The two liveness loops of each Watch; `cfg` is replaced on reload."""

    def __init__(
        self,
        cfg: MonitorConfig,
        topology: Topology,
        *,
        connect_timeout_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.cfg = cfg
        self._topology = topology
        self._connect_timeout_s = connect_timeout_s
        self._clock = clock

    async def liveness_loop(self, w: Watch) -> None:
        waiting: deque[float] = deque()  # issue times of probes waiting on `request`
        request: asyncio.Task[str | None] | None = None
        started = 0.0
        next_tick = self._clock()
        try:
            while not w.stopping:
                interval = self.cfg.interval_ms / 1000
                timeout = self.cfg.timeout_ms / 1000
                now = self._clock()
                if now >= next_tick:
                    waiting.append(now)
                    next_tick += interval
                    if next_tick <= now:
                        next_tick = now + interval
                    if request is None:
                        started = now
                        request = asyncio.ensure_future(self._liveness_request(w))
                wake = min(next_tick, waiting[0] + timeout) if waiting else next_tick
                delay = max(0.0, wake - self._clock())
                if request is not None:
                    await asyncio.wait({request}, timeout=delay)
                else:
                    await asyncio.sleep(delay)
                now = self._clock()
                if request is not None and request.done():
                    error = request.result()
                    request = None
                    # One answer is one observation, however many probes waited on it: a
                    # single dropped connection must not count as several failures.
                    if waiting:
                        waiting.clear()
                        if error is None:
                            self._record_success(w, now - started)
                        else:
                            self._record_failure(w, error)
                while waiting and now - waiting[0] >= timeout:
                    waiting.popleft()
                    self._record_failure(w, f"no answer within {self.cfg.timeout_ms} ms")
        finally:
            if request is not None:
                request.cancel()

    async def _liveness_request(self, w: Watch) -> str | None:
        """One ping (or, with no usable connection, one handshake). None on success."""
        try:
            conn = w.ping_conn
            if conn is not None and conn.alive:
                # A ping unanswered for the whole failure window is abandoned: a silently
                # dropped connection must not keep a healthy server SHUNNED.
                give_up = self.cfg.timeout_ms * max(1, self.cfg.failure_threshold) / 1000
                tracker = await conn.command(Command.PING, timeout=give_up)
                if tracker.error is not None:
                    return f"ping refused: {tracker.error}"
                return None
            w.ping_conn = None
            w.ping_conn = await log_in(w, self.cfg, HANDSHAKE_PATIENCE_S)
            return None
        except BackendError as e:
            w.ping_conn = None
            return e.reason
        except Exception as e:  # never let one odd failure stop the probing
            w.ping_conn = None
            return f"{type(e).__name__}: {e}"

    async def connect_probe_loop(self, w: Watch) -> None:
        while not w.stopping:
            await asyncio.sleep(self.cfg.connect_interval_ms / 1000)
            if not w.alive:
                continue  # the liveness loop is reconnecting already
            started = self._clock()
            handshake = asyncio.ensure_future(log_in(w, self.cfg, HANDSHAKE_PATIENCE_S))
            try:
                done, _ = await asyncio.wait({handshake}, timeout=self._connect_timeout_s)
                if not done:
                    self._record_failure(
                        w,
                        f"new connection not logged in within {self._connect_timeout_s * 1000:.0f} ms",
                    )
                try:
                    conn = await handshake
                except BackendError as e:
                    if done:
                        self._record_failure(w, f"new connection failed: {e.reason}")
                    continue
                conn.close()  # COM_QUIT: a clean disconnect, not an aborted one
                if done:
                    self._record_success(w, self._clock() - started)
            finally:
                handshake.cancel()

    def _record_success(self, w: Watch, latency_s: float) -> None:
        w.checks += 1
        w.alive = True
        w.last_check_at = self._clock()
        apply_change(w, w.detector.record_success(latency_s), self._topology)

    def _record_failure(self, w: Watch, reason: str) -> None:
        w.checks += 1
        w.failures += 1
        w.alive = False
        w.last_check_at = self._clock()
        w.last_error = reason
        apply_change(w, w.detector.record_failure(reason), self._topology)
