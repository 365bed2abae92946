"""Failed-login throttling per client address, on the client and admin ports.

A sliding window, as fail2ban or MySQL's max_connect_errors but forgiving: an address with
``max_failures`` failed logins in the last ``window_s`` seconds is refused before it sees a
greeting until the oldest of them leaves the window; a successful login clears its record.
Pure logic with an injected clock, so tests never sleep.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LoginThrottle:
    max_failures: int = 5
    window_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    # Bounds memory when many addresses fail (IPv6 gives an attacker plenty): past this, the
    # addresses whose last failure is oldest are forgotten first.
    max_addresses: int = 10_000
    _failures: dict[str, deque[float]] = field(default_factory=dict, repr=False)

    def configure(self, max_failures: int, window_s: float) -> None:
        """New limits (a reload); 0 failures turns throttling off and forgets every record."""
        if max_failures != self.max_failures:
            self._failures.clear()  # each record holds at most max_failures times
        self.max_failures, self.window_s = max_failures, window_s

    def retry_after(self, address: str) -> float:
        """0 if ``address`` may try to log in now, else the seconds until it may."""
        if self.max_failures <= 0:
            return 0.0
        times = self._recent(address)
        if times is None or len(times) < self.max_failures:
            return 0.0
        return max(0.0, times[0] + self.window_s - self.clock())

    def failed(self, address: str) -> None:
        if self.max_failures <= 0:
            return
        times = self._recent(address)
        if times is None:
            if len(self._failures) >= self.max_addresses:
                self._forget_oldest()
            times = self._failures[address] = deque(maxlen=self.max_failures)
        else:
            self._failures[address] = self._failures.pop(address)  # most recent last
        times.append(self.clock())

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)

    def _recent(self, address: str) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        horizon = self.clock() - self.window_s
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def _forget_oldest(self) -> None:
        for address in list(self._failures)[: max(1, self.max_addresses // 10)]:
            del self._failures[address]
