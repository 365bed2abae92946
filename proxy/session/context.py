"""What a client session needs from the running process, handed to it (never looked up).

``app.Baton`` builds one ``SessionContext`` and keeps its changing fields current (the config
and TLS context on reload, the server version once learned); every session reads the same one.
``SessionHost`` is the narrow part of the process a session calls back into.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..server_login import LoginGate
from ..throttle import LoginThrottle
from ..user_limits import UserLimits
from .idle_holders import IdleHolders

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from ..backend import BackendConnection
    from ..config import Config
    from ..health.topology import Topology
    from ..pools import Pools
    from ..protocol.handshake import Account
    from ..routing.router import Router
    from ..stats import Stats


class SessionHost(Protocol):
    """The process as a session sees it (``app.Baton`` implements it)."""

    @property
    def accepting(self) -> bool: ...
    @property
    def paused(self) -> bool: ...
    async def wait_resumed(self, timeout: float) -> bool: ...
    def promotion_possible(self) -> bool: ...
    def note_write_ok(self) -> None: ...
    def replica_has(self, name: str, gtid: str) -> bool: ...
    def lookup_account(self, name: str) -> Account | None: ...
    def next_connection_id(self) -> int: ...
    async def kill_query(self, backend: str, thread_id: int) -> None: ...
    async def kill_elsewhere(self, client_id: int, user: str, query_only: bool) -> bool | None:
        """KILL of a session another worker process holds: True done, False not the user's
        session, None no such session."""


class PeerSession(Protocol):
    """Another session, as KILL sees it."""

    user: str

    def running_connection(self) -> BackendConnection | None: ...
    def kill(self, reason: str = ...) -> None: ...


@dataclass(slots=True)
class SessionContext:
    config: Config
    host: SessionHost
    router: Router
    pools: Pools
    stats: Stats
    topology: Topology
    sessions: dict[int, PeerSession]  # open sessions by connection id (KILL, limits)
    server_version: str
    backend_capabilities: int  # asked of backends whatever the client negotiated
    tls_context: ssl.SSLContext | None = None
    rsa_key: rsa.RSAPrivateKey | None = None
    sha2_cache: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    pause_timeout_s: float = 60.0  # PAUSE holds statements at most this long
    user_limits: UserLimits = field(default_factory=UserLimits)  # [[users]] max_connections
    login_gate: LoginGate = field(default_factory=lambda: LoginGate(1000, 100, LoginThrottle()))
    idle_holders: IdleHolders = field(default_factory=IdleHolders)  # who may give one back
