"""UserLimits: client sessions per user, held to ``[[users]] max_connections``.

As ProxySQL's ``mysql_users.max_connections`` and MySQL's ``MAX_USER_CONNECTIONS``: one user
cannot take every client slot of the proxy, and a user at its limit gets MySQL's own error 1226
naming the limit while other users log in as before. (The global ``[proxy]
max_client_connections`` is checked before, at accept, with 1040.)

Counts only, no I/O. The session calls ``try_open(user)`` once authentication succeeded (a client
that fails to log in never counts, nor learns that the limit is reached), and ``close(name)``
exactly once when a session that was admitted ends. The limit is read from the ``UserConfig`` at
each login, so a reload applies to the next login; sessions already open are never cut.
A refused client gets ``refusal.frame(seq)`` in place of the login's OK. The other limit,
``max_backend_connections``, is the pool's: ``BackendPool.acquire(..., user_limit=...)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from . import errors
from .config import UserConfig
from .errors import ErrorCode

__all__ = ["Refusal", "UserLimits"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a login was refused, as the error packet the client gets."""

    error: ErrorCode
    params: Mapping[str, object]

    @property
    def message(self) -> str:
        return self.error.template.format(**self.params)

    def frame(self, seq: int) -> bytes:
        return self.error.frame(seq, **self.params)


class UserLimits:
    """Open client sessions per user name."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def try_open(self, user: UserConfig) -> Refusal | None:
        """Counts a new session of ``user`` in, or says why it may not open (not counted)."""
        n = self._open.get(user.name, 0)
        if user.max_connections and n >= user.max_connections:
            return Refusal(
                errors.USER_CONNECTIONS_LIMIT, {"user": user.name, "limit": user.max_connections}
            )
        self._open[user.name] = n + 1
        return None

    def close(self, name: str) -> None:
        """A session admitted by ``try_open`` ended."""
        n = self._open.get(name, 0)
        if n <= 1:
            self._open.pop(name, None)
        else:
            self._open[name] = n - 1

    def sessions(self, name: str) -> int:
        return self._open.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        """Open sessions per user (users with none are absent), for SHOW POOLS / metrics."""
        return dict(self._open)
