"""Read-your-writes: the GTID of a session's write, and waiting for it on a replica.

After a write in "session" consistency (and after any DDL, for the router's barrier) Baton
asks the master connection for ``@@last_gtid``; a later read sent to a replica first checks
that the replica has applied it (the monitor may already know; else ``MASTER_GTID_WAIT``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..backend import BackendError

if TYPE_CHECKING:
    from ..backend import BackendConnection
    from .context import SessionHost


async def last_gtid(conn: BackendConnection) -> str | None:
    """The GTID of the last transaction ``conn`` committed; None if it cannot be learned."""
    try:
        result = await conn.query("SELECT @@last_gtid", timeout=2)
    except BackendError:
        return None
    value = result.rows[0][0] if result.rows else None
    return value.decode() if value else None


async def caught_up(
    conn: BackendConnection, gtid: str | None, host: SessionHost, timeout_s: float
) -> bool:
    """Has this replica applied ``gtid``? Waits up to ``timeout_s`` for it if needed."""
    if gtid is None or host.replica_has(conn.backend, gtid):
        return True
    try:
        result = await conn.query(
            f"SELECT MASTER_GTID_WAIT('{gtid}', {timeout_s:.3f})", timeout=timeout_s + 2
        )
    except BackendError:
        return False
    return bool(result.rows) and result.rows[0][0] == b"0"
