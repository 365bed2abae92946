"""The backend pool against a real MariaDB: what happens to a login its session gave up on.

A client that hangs up while Baton is logging in to a backend on its behalf cancels that
acquire. Cutting the backend handshake short would count as an aborted connect on the
server (and, repeated, trips max_connect_errors into blocking Baton's host); the pool lets
the login finish and keeps the connection for the next session.
"""

from __future__ import annotations

import asyncio

from proxy.backend import Credentials
from proxy.pool import BackendPool, PoolKey
from proxy.protocol.constants import SUPPORTED_CAPABILITIES
from proxy.sandbox import ReplicationSandbox

KEY = PoolKey("app", int(SUPPORTED_CAPABILITIES), 45)
APP = Credentials("app", b"app", None)


def aborted_connects(sandbox: ReplicationSandbox) -> int:
    return int(sandbox.master.status_variable("Aborted_connects") or 0)


def test_acquires_cancelled_mid_login_leave_no_aborted_connects_and_pool_the_connection(
    sandbox: ReplicationSandbox,
) -> None:
    before = aborted_connects(sandbox)

    async def main() -> None:
        pool = BackendPool("db1", "127.0.0.1", sandbox.master.port, max_connections=50, connect_timeout=5.0)
        for round_ in range(30):
            acquire = asyncio.ensure_future(pool.acquire(KEY, APP, timeout=5.0, database="test"))
            await asyncio.sleep(0.0005 * round_)  # from before the TCP connect to after the OK
            acquire.cancel()
            try:
                conn = await acquire
            except asyncio.CancelledError:
                continue
            pool.release(conn)  # finished before the cancel landed: an ordinary release

        async def settled() -> None:
            while pool.total != pool.idle:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(settled(), 10)
        assert pool.in_use == 0 and pool.idle >= 1
        assert pool.stats.connect_errors == 0
        # What the pool kept is a working connection on the schema it was opened with.
        conn = await pool.acquire(KEY, APP, timeout=5.0, database="test")
        result = await conn.query("SELECT DATABASE(), CURRENT_USER()", timeout=5.0)
        assert result.rows == [(b"test", b"app@%")]
        pool.release(conn)
        pool.close()
        await asyncio.sleep(0.1)  # COM_QUIT on the way out, not a dropped socket

    asyncio.run(asyncio.wait_for(main(), 60))
    assert aborted_connects(sandbox) == before, "a cancelled acquire cut a backend login short"
