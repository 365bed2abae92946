"""The failover lease: which Baton instance performs an automatic failover, and for how long.

One Redis key per channel holds the lease: who holds it and the epoch its failover will
create (a fencing token: a lease naming an epoch we already have is about a failover that
is over). The TTL is short (LEASE_TTL_MS) and the holder renews it every RENEW_EVERY_S
while it works, so when the holder dies mid-promotion the key expires within a few seconds
and another instance takes over, resuming from what the servers say (see
proxy.health.takeover). Renewing and releasing compare the stored value first (a small Lua
script), so an instance whose lease expired can never extend or delete its successor's.

Values are JSON made by `encode` and read by `decode`; a FailoverLease takes another pair
(for example signed values) as `encoder`/`decoder`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("baton.lease")

# Lease life without renewal: the bound on how long a dead holder blocks a failover.
LEASE_TTL_MS = 3000
# Renewal period while the holder works: three chances before the lease runs out.
RENEW_EVERY_S = 1.0

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
_READ = "return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}"
# Deletes a value that is not a live lease (unreadable, forged, or for an epoch already
# reached), only if it is still the value we judged.
_CLEAR = _RELEASE


class LeaseUnavailable(Exception):
    """Redis could not be asked; the caller decides what that means."""


@dataclass(frozen=True)
class LeaseHolder:
    instance: str
    epoch: int  # the epoch the holder's failover will create
    ttl_ms: int  # left before it expires unless renewed


def encode(instance: str, epoch: int) -> str:
    return json.dumps({"instance": instance, "epoch": epoch}, sort_keys=True)


def decode(raw: bytes | str) -> tuple[str, int] | None:
    """(instance, epoch), or None for a value that is not a lease."""
    try:
        value = json.loads(raw)
        instance, epoch = value["instance"], value["epoch"]
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(instance, str) or not isinstance(epoch, int) or isinstance(epoch, bool):
        return None
    return instance, epoch


class FailoverLease:
    """The lease over a redis.asyncio client. Holding it starts a renewal task."""

    def __init__(
        self,
        redis: Any,
        key: str,
        instance: str,
        *,
        ttl_ms: int = LEASE_TTL_MS,
        renew_every_s: float = RENEW_EVERY_S,
        encoder: Callable[[str, int], str] = encode,
        decoder: Callable[[bytes | str], tuple[str, int] | None] = decode,
    ) -> None:
        self._redis = redis
        self._encode = encoder
        self._decode = decoder
        self.key = key
        self.instance = instance
        self.ttl_ms = ttl_ms
        self._renew_every_s = renew_every_s
        self._value: str | None = None  # what we stored, while we believe we hold it
        self._renewer: asyncio.Task[None] | None = None

    @property
    def held(self) -> bool:
        """Whether this instance holds the lease, as far as its last renewal knows."""
        return self._value is not None

    async def acquire(self, epoch: int) -> bool:
        """Take the lease for the failover that creates `epoch`; False if someone holds it."""
        value = self._encode(self.instance, epoch)
        try:
            got = await self._redis.set(self.key, value, nx=True, px=self.ttl_ms)
        except Exception as exc:  # noqa: BLE001 - any Redis failure means "cannot say"
            raise LeaseUnavailable(repr(exc)) from exc
        if not got:
            if not await self._cleared_obsolete(epoch):
                return False
            try:
                got = await self._redis.set(self.key, value, nx=True, px=self.ttl_ms)
            except Exception as exc:  # noqa: BLE001
                raise LeaseUnavailable(repr(exc)) from exc
            if not got:
                return False
        self._value = value
        self._renewer = asyncio.ensure_future(self._keep())
        log.info("lease_acquired key=%s epoch=%d ttl_ms=%d", self.key, epoch, self.ttl_ms)
        return True

    async def _cleared_obsolete(self, epoch: int) -> bool:
        """Whether the value in the way was no lease at all and is now gone: one that does not
        decode (garbage, or forged where values are signed) or names an epoch below the one
        we want (its failover is over, or it is replayed). Otherwise anyone who can write to
        Redis could block failovers for as long as they like."""
        try:
            raw = await self._redis.get(self.key)
            if raw is None:
                return True
            decoded = self._decode(raw)
            if decoded is not None and decoded[1] >= epoch:
                return False
            log.warning("lease_obsolete_cleared key=%s value=%r", self.key, raw[:200])
            await self._redis.eval(_CLEAR, 1, self.key, raw)
        except Exception as exc:  # noqa: BLE001
            raise LeaseUnavailable(repr(exc)) from exc
        return True

    async def renew(self) -> bool:
        """Extend our lease; False once it is not ours any more (it expired or was taken)."""
        value = self._value
        if value is None:
            return False
        try:
            ok = await self._redis.eval(_RENEW, 1, self.key, value, self.ttl_ms)
        except Exception as exc:  # noqa: BLE001
            raise LeaseUnavailable(repr(exc)) from exc
        if not ok and self._value == value:
            self._value = None
            log.error("lease_lost key=%s (expired or taken by another instance)", self.key)
        return bool(ok)

    async def release(self) -> None:
        """Give the lease up (only if still ours) and stop renewing."""
        value, self._value = self._value, None
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
        if value is None:
            return
        try:
            await self._redis.eval(_RELEASE, 1, self.key, value)
        except Exception as exc:  # noqa: BLE001 - it expires by itself
            log.warning("lease_release_failed key=%s error=%r", self.key, exc)

    async def holder(self) -> LeaseHolder | None:
        """Who holds the lease now, or None when it is free (or holds no lease value)."""
        try:
            raw, ttl = await self._redis.eval(_READ, 1, self.key)
        except Exception as exc:  # noqa: BLE001
            raise LeaseUnavailable(repr(exc)) from exc
        if raw is None:
            return None
        decoded = self._decode(raw)
        if decoded is None:
            log.warning("lease_unreadable key=%s value=%r", self.key, raw[:200])
            return None
        return LeaseHolder(decoded[0], decoded[1], int(ttl))

    async def _keep(self) -> None:
        while self._value is not None:
            await asyncio.sleep(self._renew_every_s)
            try:
                await self.renew()
            except LeaseUnavailable as exc:
                # Keep trying: if Redis comes back before the TTL runs out, the lease is ours.
                log.warning("lease_renew_failed key=%s error=%s", self.key, exc)
