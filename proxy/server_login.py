"""One login on a port where Baton is the server (client port and admin port alike).

``ServerLogin`` drives a sans-I/O ``ServerHandshake`` over a connection: it writes the
greeting, arms the login timeout, sends what the handshake asks, and tells its ``LoginPort``
(the session) about a TLS upgrade, a refusal or success. The sessions keep only what differs
between the ports: which accounts exist, what a refusal is logged as, what follows success.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from .protocol.handshake import Authenticated, Failed, Send, ServerHandshake, StartTLS


class LoginPort(Protocol):
    """The session a login runs on."""

    def login_write(self, data: bytes) -> None: ...
    def login_start_tls(self) -> None: ...
    def login_refused(self, user: str, reply: bytes) -> None: ...
    def login_succeeded(self, auth: Authenticated) -> None: ...
    def login_timed_out(self) -> None: ...


class ServerLogin:
    """Greeting, authentication exchange and timeout of one login."""

    __slots__ = ("hs", "_port", "_timer")

    def __init__(self, hs: ServerHandshake, port: LoginPort) -> None:
        self.hs = hs
        self._port = port
        self._timer: asyncio.TimerHandle | None = None

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
                port.login_refused(self.hs.user, self.hs.failure_bytes)
            elif isinstance(action, Authenticated):
                self.stop()
                port.login_succeeded(action)
        return False

    def stop(self) -> None:
        """No timeout any more (logged in, or the connection closes)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        self._port.login_timed_out()
