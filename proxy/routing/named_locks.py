"""NamedLocks: the GET_LOCK locks one client session holds, so it is pinned only while it holds one.

A named lock belongs to the server connection that took it. While a session holds one, it must
stay on that backend connection (a move would leave the lock behind, and a pooled connection
holding it would hand it to another client). Once it holds none, it may move again: reads go
back to the replicas. MariaDB's locks are recursive (``GET_LOCK('a')`` twice needs two
``RELEASE_LOCK('a')``) and their names compare exactly (case and trailing spaces count).

The session feeds each statement's ``Classification`` (see ``proxy.routing.classifier``), and,
when it collected them, the values of the row of a ``lock_calls_exact`` SELECT. Mistakes may only
err towards staying pinned, so for each name the count kept is an upper bound of how many times
the session holds it:

- GET_LOCK in an exact statement adds one, unless its value is known to be 0 (timeout) or NULL
  (error). Elsewhere (``SELECT GET_LOCK('a', 0) FROM t`` runs once per row) the name's count
  becomes unbounded.
- RELEASE_LOCK in an exact statement that succeeded subtracts one; a known value of 0 (held by
  another connection) or NULL (no such lock) means the session holds none of that name.
  Elsewhere (``SELECT 0 AND RELEASE_LOCK('a')`` never runs it) nothing changes.
- IS_FREE_LOCK returning 1, or IS_USED_LOCK returning NULL, means nobody holds the name.
- RELEASE_ALL_LOCKS in an exact statement that succeeded releases everything.
- A GET_LOCK whose name is not a literal (``GET_LOCK(CONCAT('job', id), 0)``) pins the session
  until RELEASE_ALL_LOCKS or the connection is lost: names cannot be matched.

Pure: no I/O, no clock. A session holds one and, in place of ``Pin.GET_LOCK`` from ``pin`` /
``unpin``: after each COM_QUERY, ``locks.apply(cls, ok, row)`` (row: read from the response
collected when ``cls.lock_calls_exact``, else None) says whether it stays pinned where the
statement ran; ``clear()`` when that backend connection is lost or reset (COM_RESET_CONNECTION,
COM_CHANGE_USER), as the server then released its locks.
"""

from __future__ import annotations

from collections.abc import Sequence

from .classifier import Classification, LockCall, LockFunction

__all__ = ["NamedLocks"]

_GET, _RELEASE, _RELEASE_ALL = (
    LockFunction.GET_LOCK,
    LockFunction.RELEASE_LOCK,
    LockFunction.RELEASE_ALL_LOCKS,
)
_IS_FREE, _IS_USED = LockFunction.IS_FREE_LOCK, LockFunction.IS_USED_LOCK


class _Unknown:
    """A call's value that the session did not read."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = _Unknown()
Value = int | None | _Unknown


class NamedLocks:
    """Named locks held by one session on its backend connection."""

    __slots__ = ("_held", "_unknown")

    def __init__(self) -> None:
        self._held: dict[str, int | None] = {}  # name -> upper bound of holds; None: unbounded
        self._unknown = False  # a GET_LOCK whose name we could not read

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NamedLocks):
            return NotImplemented
        return (self._held, self._unknown) == (other._held, other._unknown)

    def __repr__(self) -> str:
        return f"NamedLocks({self._held!r}{', unknown' if self._unknown else ''})"

    @property
    def pinned(self) -> bool:
        return self._unknown or bool(self._held)

    @property
    def names(self) -> tuple[str, ...]:
        """The names the session may hold, for logs and SHOW output."""
        return tuple(self._held)

    def clear(self) -> None:
        """The backend connection is gone (or was reset): its locks went with it."""
        self._held.clear()
        self._unknown = False

    def apply(
        self,
        cls: Classification,
        ok: bool = True,
        row: Sequence[bytes | int | None] | None = None,
    ) -> bool:
        """Takes in what one statement did; returns whether the session is now pinned.

        ok: the statement (every part of a multi-statement) succeeded. row: the values of the
        single row of a ``lock_calls_exact`` SELECT as the server sent them (text protocol:
        b"1", b"0", None), or None if they were not collected; ignored for other statements.
        """
        if cls.parts:
            for part in cls.parts:
                self._apply(part, ok, None)
        else:
            self._apply(cls, ok, row)
        return self.pinned

    def _apply(
        self, cls: Classification, ok: bool, row: Sequence[bytes | int | None] | None
    ) -> None:
        if cls.lock_names_unknown:
            self._unknown = True
        if not cls.lock_calls:
            return
        if not cls.lock_calls_exact:
            for call in cls.lock_calls:
                if call.function is _GET:
                    self._held[call.name] = None
            return
        values: Sequence[Value]
        if ok and row is not None and len(row) == len(cls.lock_calls):
            values = [_value(v) for v in row]
        else:
            values = [UNKNOWN] * len(cls.lock_calls)
        for call, value in zip(cls.lock_calls, values, strict=True):
            self._call(call, ok, value)

    def _call(self, call: LockCall, ok: bool, value: Value) -> None:
        """One call of an exact statement: it ran once, unless the statement failed."""
        f, name = call.function, call.name
        if f is _GET:
            if value is UNKNOWN or value == 1:
                count = self._held.get(name, 0)
                self._held[name] = None if count is None else count + 1
        elif not ok:
            return  # it may not have run: a release cannot be trusted
        elif f is _RELEASE:
            if value is UNKNOWN or value == 1:
                self._release_one(name)
            else:  # 0: another connection holds it; NULL: nobody does
                self._held.pop(name, None)
        elif f is _RELEASE_ALL:
            self.clear()
        elif (f is _IS_FREE and value == 1) or (f is _IS_USED and value is None):
            self._held.pop(name, None)

    def _release_one(self, name: str) -> None:
        count = self._held.get(name, 0)
        if count is None:
            return  # held an unknown number of times: still held
        if count <= 1:
            self._held.pop(name, None)
        else:
            self._held[name] = count - 1


def _value(raw: bytes | int | None) -> Value:
    if raw is None or isinstance(raw, int):
        return raw
    try:
        return int(raw)
    except ValueError:
        return UNKNOWN
