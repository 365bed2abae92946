"""One login on a port where Baton is the server (client port and admin port alike).

``ServerLogin`` drives a sans-I/O ``ServerHandshake`` over a connection: it writes the
greeting, arms the login timeout, sends what the handshake asks, and tells its ``LoginPort``
(the session) about a TLS upgrade, a refusal or success. The sessions keep only what differs
between the ports: which accounts exist, what a refusal is logged as, what follows success.

Before login a client is a stranger, on either port: its packets are capped at
``PRE_AUTH_MAX_PACKET`` (a handshake response fits in a few KiB), and a port's ``LoginGate``
bounds how many strangers wait at its login prompt (in all and per address, so that silent
sockets cannot lock real clients out) and refuses an address with too many failed logins
before its greeting (``proxy.throttle``).
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from typing import NamedTuple, Protocol

from . import errors
from .protocol.handshake import Authenticated, Failed, Send, ServerHandshake, StartTLS
from .throttle import LoginThrottle

# Largest packet a client may send before it has logged in (MySQL clients send a few hundred
# bytes; connection attributes and a long TLS-less RSA exchange stay well below this).
PRE_AUTH_MAX_PACKET = 16 << 10


class Refusal(NamedTuple):
    """Why a connection gets no greeting: the ERR packet it is closed with, and for the log."""

    error: bytes
    reason: str
    throttled: bool  # failed logins (1129), else too many strangers (1040)


class LoginGate:
    """The strangers at one port's login prompt: how many, from which address, and the
    addresses refused for failed logins. ``admit`` counts a stranger in, ``ServerLogin.stop``
    counts it out (logged in, refused or gone)."""

    def __init__(
        self, max_waiting: int, max_per_address: int, throttle: LoginThrottle
    ) -> None:
        self.max_waiting = max_waiting
        self.max_per_address = max_per_address
        self.throttle = throttle
        self.waiting = 0
        self._per_address: Counter[str] = Counter()

    def configure(
        self, max_waiting: int, max_per_address: int, max_failures: int, window_s: float
    ) -> None:
        """A reload: the new limits apply to the next connections."""
        self.max_waiting, self.max_per_address = max_waiting, max_per_address
        self.throttle.configure(max_failures, window_s)

    def refusal(self, address: str) -> Refusal | None:
        """Why ``address`` may not see a greeting now, as (ERR packet, log reason); None: it may
        (and is then counted as waiting until its ``ServerLogin`` stops)."""
        if self.waiting >= self.max_waiting or self._per_address[address] >= self.max_per_address:
            return Refusal(
                errors.TOO_MANY_CONNECTIONS.frame(0), "too many unauthenticated connections", False
            )
        retry_s = math.ceil(self.throttle.retry_after(address))
        if retry_s:
            error = errors.LOGIN_THROTTLED.frame(
                0, host=address, failures=self.throttle.max_failures, retry_s=retry_s
            )
            return Refusal(error, f"too many failed logins; retry in {retry_s} s", True)
        self.waiting += 1
        self._per_address[address] += 1
        return None

    def left(self, address: str) -> None:
        self.waiting -= 1
        n = self._per_address[address] - 1
        if n > 0:
            self._per_address[address] = n
        else:
            del self._per_address[address]


class LoginPort(Protocol):
    """The session a login runs on."""

    def login_write(self, data: bytes) -> None: ...
    def login_start_tls(self) -> None: ...
    def login_refused(self, user: str, reply: bytes) -> None: ...
    def login_succeeded(self, auth: Authenticated) -> None: ...
    def login_timed_out(self) -> None: ...


class ServerLogin:
    """Greeting, authentication exchange and timeout of one login."""

    __slots__ = ("hs", "_port", "_timer", "_gate", "_address", "_waiting")

    def __init__(
        self, hs: ServerHandshake, port: LoginPort, gate: LoginGate | None = None, address: str = ""
    ) -> None:
        self.hs = hs
        self._port = port
        self._timer: asyncio.TimerHandle | None = None
        self._gate = gate  # counts failures (and, once admitted, the stranger) by address
        self._address = address
        self._waiting = False

    def admit(self) -> Refusal | None:
        """A new connection at the login prompt: None if it may log in (then it counts as a
        stranger until ``stop``), else the ERR packet to close it with and why."""
        if self._gate is None:
            return None
        refusal = self._gate.refusal(self._address)
        self._waiting = refusal is None
        return refusal

    def greet(self, timeout_s: float) -> None:
        """Sends the greeting; the client has ``timeout_s`` to complete its login."""
        self._port.login_write(self.hs.greeting())
        self._timer = asyncio.get_running_loop().call_later(timeout_s, self._expired)

    def receive(self, seq: int, payload: bytes) -> bool:
        """A packet from the client; True if the stream switches to TLS (stop reading it)."""
        port = self._port
        for action in self.hs.receive(seq, payload):
            if isinstance(action, Send):
                port.login_write(action.data)
            elif isinstance(action, StartTLS):
                port.login_start_tls()
                return True
            elif isinstance(action, Failed):
                if self._gate is not None:
                    self._gate.throttle.failed(self._address)
                self.stop()
                port.login_refused(self.hs.user, self.hs.failure_bytes)
            elif isinstance(action, Authenticated):
                if self._gate is not None:
                    self._gate.throttle.succeeded(self._address)
                self.stop()
                port.login_succeeded(action)
        return False

    def stop(self) -> None:
        """No timeout any more, and no longer a stranger (logged in, refused, or gone)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiting and self._gate is not None:
            self._waiting = False
            self._gate.left(self._address)

    def _expired(self) -> None:
        self._timer = None
        self._port.login_timed_out()
