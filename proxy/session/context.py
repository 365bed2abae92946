"""What a client session needs from the running process, handed to it (never looked up).

``app.Baton`` builds one ``SessionContext`` and keeps its changing fields current (the config
and TLS context on reload, the server version once learned); every session reads the same one.
``SessionHost`` is the narrow part of the process a session calls back into.
"""

from __future__ import annotations

import ssl
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
    def kill(self, reason: str = "killed by admin") -> None: ...


class SessionContext:
    """Compiled with the hot path (``native.HOT_MODULES``): a session reads ``ctx.stats``,
    ``ctx.router``, ``ctx.topology``... several times per statement, as C struct members. A plain
    class, not a dataclass: mypyc builds a dataclass's annotations at import, and these types
    are imported for the type checker only."""

    __slots__ = (
        "config", "host", "router", "pools", "stats", "topology", "sessions", "server_version",
        "backend_capabilities", "tls_context", "rsa_key", "sha2_cache", "pause_timeout_s",
        "user_limits", "login_gate", "idle_holders",
    )

    def __init__(
        self,
        config: Config,
        host: SessionHost,
        router: Router,
        pools: Pools,
        stats: Stats,
        topology: Topology,
        sessions: dict[int, PeerSession],
        server_version: str,
        backend_capabilities: int,
        tls_context: ssl.SSLContext | None = None,
        rsa_key: rsa.RSAPrivateKey | None = None,
        idle_holders: IdleHolders | None = None,
    ) -> None:
        self.config = config
        self.host = host
        self.router = router
        self.pools = pools
        self.stats = stats
        self.topology = topology
        self.sessions = sessions  # open sessions by connection id (KILL, limits)
        self.server_version = server_version
        self.backend_capabilities = backend_capabilities  # asked of backends whatever the client negotiated
        self.tls_context = tls_context
        self.rsa_key = rsa_key
        self.sha2_cache: dict[str, tuple[bytes, bytes]] = {}
        self.pause_timeout_s = 60.0  # PAUSE holds statements at most this long
        self.user_limits = UserLimits()  # [[users]] max_connections
        self.login_gate = LoginGate(1000, 100, LoginThrottle())
        self.idle_holders = idle_holders if idle_holders is not None else IdleHolders()  # who may give one back
