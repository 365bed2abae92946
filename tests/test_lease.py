"""The failover lease on a real Redis: one holder at a time, the epoch it will create, a short
TTL that only its holder renews or releases, and a value format kept in one place."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from proxy.health.lease import FailoverLease, LeaseHolder, LeaseUnavailable, decode, encode
from proxy.sandbox import RedisInstance, free_port


def test_values_round_trip_and_anything_else_is_not_a_lease() -> None:
    assert decode(encode("baton-a:12", 7)) == ("baton-a:12", 7)
    assert decode(encode("baton-a:12", 7).encode()) == ("baton-a:12", 7)
    for junk in (b"", b"baton-a:12", b"{}", b'{"instance": "a"}', b'{"instance": 1, "epoch": 2}',
                 b'{"instance": "a", "epoch": "2"}', b'{"instance": "a", "epoch": true}', b"[1, 2]",
                 b"\xff\xfe"):
        assert decode(junk) is None, junk


def _run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


def test_one_holder_renews_while_it_works_and_the_lease_runs_out_when_it_stops(
    redis_server: RedisInstance,
) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        key = "baton:test-lease:failover-lock"
        await client.delete(key)
        a = FailoverLease(client, key, "a", ttl_ms=600, renew_every_s=0.2)
        b = FailoverLease(client, key, "b", ttl_ms=600, renew_every_s=0.2)
        try:
            assert await b.holder() is None
            assert await a.acquire(2) and a.held
            assert not await b.acquire(2) and not b.held
            holder = await b.holder()
            assert isinstance(holder, LeaseHolder) and (holder.instance, holder.epoch) == ("a", 2)
            assert 0 < holder.ttl_ms <= 600
            # Renewed in the background: still held well past its TTL.
            await asyncio.sleep(1.5)
            assert (await b.holder()) is not None and not await b.acquire(2)
            # Neither renewing nor releasing works for an instance that does not hold it.
            assert not await b.renew()
            await b.release()
            assert (await b.holder()).instance == "a"  # type: ignore[union-attr]
            await a.release()
            assert not a.held and await b.holder() is None
            assert await b.acquire(3)
            await a.release()  # a no longer holds it: b's lease stays
            assert (await a.holder()).epoch == 3  # type: ignore[union-attr]

            # A holder that stops renewing (dies) loses the lease after its TTL; its
            # successor's lease is not extended by the old holder's late renewal.
            b_renewer = b._renewer
            assert b_renewer is not None
            b_renewer.cancel()
            await asyncio.sleep(0.8)
            assert await a.holder() is None
            assert await a.acquire(3)
            assert not await b.renew() and not b.held
            assert (await a.holder()).instance == "a"  # type: ignore[union-attr]
        finally:
            await a.release()
            await b.release()
            await client.aclose()

    _run(main())


def test_an_unreachable_redis_is_reported_not_taken_for_a_free_lease() -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(
            f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5
        )
        lease = FailoverLease(client, "k", "a")
        try:
            with pytest.raises(LeaseUnavailable):
                await lease.acquire(2)
            with pytest.raises(LeaseUnavailable):
                await lease.holder()
            assert not lease.held and not await lease.renew()
        finally:
            await client.aclose()

    _run(main())


def test_values_can_be_encoded_another_way_for_example_signed(redis_server: RedisInstance) -> None:
    def sign(instance: str, epoch: int) -> str:
        return "signed:" + encode(instance, epoch)

    def check(raw: bytes | str) -> tuple[str, int] | None:
        text = raw.decode() if isinstance(raw, bytes) else raw
        return decode(text.removeprefix("signed:")) if text.startswith("signed:") else None

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        key = "baton:test-lease-signed:failover-lock"
        await client.delete(key)
        a = FailoverLease(client, key, "a", encoder=sign, decoder=check)
        try:
            assert await a.acquire(4)
            assert (await client.get(key)).startswith(b"signed:")
            assert (await a.holder()) is not None and (await a.holder()).epoch == 4  # type: ignore[union-attr]
            assert await a.renew()
            await client.set(key, encode("forger", 9), px=1000)  # not signed: not a lease
            assert await a.holder() is None and not await a.renew()
        finally:
            await a.release()
            await client.aclose()

    _run(main())
