"""A user's share of a backend pool (``[[users]] max_backend_connections``, issue 11 item 4),
against a real MariaDB: a user never has more connections than its share, on the pool's books
or on the server; at its share it waits for one of its own connections (and gets error
UserShareExhausted naming the user after the timeout) while other users keep connecting; and a
release wakes a waiter of the same user before waiters for the pool."""

from __future__ import annotations

import asyncio
import random

import pytest

from proxy.backend import Credentials
from proxy.pool import BackendPool, PoolExhausted, PoolKey, UserShareExhausted
from proxy.protocol.constants import SUPPORTED_CAPABILITIES
from proxy.sandbox import ReplicationSandbox

CAPS = int(SUPPORTED_CAPABILITIES)
APP, MONITOR = PoolKey("app", CAPS, 45), PoolKey("monitor", CAPS, 45)
CREDS = {
    "app": Credentials("app", b"app", None),
    "monitor": Credentials("monitor", b"monitor", None),
}


def make_pool(sandbox: ReplicationSandbox, size: int) -> BackendPool:
    return BackendPool(
        "db1", "127.0.0.1", sandbox.master.port, max_connections=size, connect_timeout=5.0
    )


async def get(pool: BackendPool, key: PoolKey, share: int = 0, timeout: float = 5.0):
    return await pool.acquire(key, CREDS[key.user], timeout=timeout, user_limit=share)


def server_connections(sandbox: ReplicationSandbox, user: str) -> int:
    rows = sandbox.master.sql(
        f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '{user}'"
    )
    return int(rows[0][0])


def test_a_user_at_its_share_waits_and_others_still_connect(sandbox: ReplicationSandbox) -> None:
    async def main() -> None:
        pool = make_pool(sandbox, 10)
        mine = [await get(pool, APP, share=2) for _ in range(2)]
        with pytest.raises(UserShareExhausted) as caught:
            await get(pool, APP, share=2, timeout=0.3)
        assert (caught.value.user, caught.value.limit) == ("app", 2)
        assert isinstance(caught.value, PoolExhausted)  # today's sessions map it to 9106
        assert "'app'" in str(caught.value)
        others = [await get(pool, MONITOR) for _ in range(3)]  # not held by app's share
        assert (pool.user_total("app"), pool.user_total("monitor")) == (2, 3)
        # a release of app's connection serves app's waiter
        waiter = asyncio.ensure_future(get(pool, APP, share=2))
        await asyncio.sleep(0.05)
        assert not waiter.done() and pool.waiting == 1
        pool.release(mine[0])
        assert await asyncio.wait_for(waiter, 5) is mine[0]
        for conn in [mine[1], mine[0], *others]:
            pool.release(conn)
        pool.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_release_wakes_the_same_users_waiter_before_the_pools(sandbox: ReplicationSandbox) -> None:
    async def main() -> None:
        pool = make_pool(sandbox, 3)
        app = [await get(pool, APP, share=2) for _ in range(2)]
        mon = await get(pool, MONITOR)  # the pool is full
        app_waiter = asyncio.ensure_future(get(pool, APP, share=2))
        await asyncio.sleep(0.02)
        mon_waiter = asyncio.ensure_future(get(pool, MONITOR))  # waits for the pool's cap
        await asyncio.sleep(0.05)
        assert pool.waiting == 2
        pool.release(app[0])
        assert await asyncio.wait_for(app_waiter, 5) is app[0]
        await asyncio.sleep(0.05)
        assert not mon_waiter.done()  # app's connection was not handed to monitor
        pool.release(mon)
        assert await asyncio.wait_for(mon_waiter, 5) is mon
        for conn in (app[0], app[1], mon):
            pool.release(conn)
        pool.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_share_replaces_its_own_idle_connection_of_another_kind(
    sandbox: ReplicationSandbox,
) -> None:
    async def main() -> None:
        pool = make_pool(sandbox, 10)
        other_charset = PoolKey("app", CAPS, 8)
        a = await get(pool, other_charset, share=1)
        pool.release(a)  # idle, but of no use to a utf8mb4 session
        b = await asyncio.wait_for(get(pool, APP, share=1), 5)
        assert b is not a and not a.alive and pool.user_total("app") == 1
        pool.release(b)
        pool.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_never_more_than_the_share_under_churn(sandbox: ReplicationSandbox) -> None:
    share, peak_pool, peak_server = 3, [0], [0]

    async def worker(pool: BackendPool, rng: random.Random) -> None:
        for _ in range(15):
            conn = await get(pool, APP, share=share, timeout=20)
            peak_pool[0] = max(peak_pool[0], pool.user_total("app"))
            await conn.query("SELECT SLEEP(0.005)", timeout=5)
            if rng.random() < 0.2:
                conn.close()  # dies in use: the pool forgets it
                pool.forget(conn)
            else:
                pool.release(conn)

    async def watch(stop: asyncio.Event) -> None:
        while not stop.is_set():
            n = await asyncio.to_thread(server_connections, sandbox, "app")
            peak_server[0] = max(peak_server[0], n)
            await asyncio.sleep(0.02)

    async def main() -> None:
        before = server_connections(sandbox, "app")
        assert before == 0, "another test left app connections on the master"
        pool = make_pool(sandbox, 20)
        stop = asyncio.Event()
        watcher = asyncio.ensure_future(watch(stop))
        rng = random.Random(11)
        await asyncio.gather(*(worker(pool, random.Random(rng.random())) for _ in range(12)))
        stop.set()
        await watcher
        assert pool.waiting == 0 and pool.user_total("app") <= share
        pool.close()
        await asyncio.sleep(0.1)

    asyncio.run(asyncio.wait_for(main(), 120))
    assert peak_pool[0] <= share
    assert 0 < peak_server[0] <= share
