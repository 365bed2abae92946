"""ClusterLink: several Baton instances on one topology, through Redis.

Each instance runs its own monitor, so each may notice a promotion by itself; the link makes
them agree and act once:

* Every promotion an instance makes or adopts is written to a Redis key (epoch, master) with a
  compare-and-set on the epoch, and published on ``[redis] channel``. The others adopt it with
  ``FailoverCoordinator.promote(source="redis", epoch=...)``; the Topology accepts only a newer
  epoch, so a stale or replayed message changes nothing.
* A starting instance reads the key and adopts a newer epoch before serving.
* In ``auto`` mode only the instance that takes the failover lease (proxy.health.lease) performs
  the failover; the others watch the lease and take over if it runs out before its holder's
  promotion arrives.

Redis is a coordination aid, not a dependency: if it is unreachable the instance carries on
alone (and performs failovers itself), logging the problem, and reconnects in the background.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from .events import Event, MasterPromoted
from .lease import FailoverLease

if TYPE_CHECKING:
    from ..config import RedisConfig
    from .failover import FailoverCoordinator
    from .topology import Topology

log = logging.getLogger("baton.cluster")

# Sets the shared state only if its epoch is newer than the stored one.
_CAS_EPOCH = """
local current = redis.call('HGET', KEYS[1], 'epoch')
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'master', ARGV[2], 'old', ARGV[3], 'instance', ARGV[4])
return 1
"""


class ClusterLink:
    def __init__(self, cfg: RedisConfig, topology: Topology, failover: FailoverCoordinator) -> None:
        self.cfg = cfg
        self.instance_id = cfg.instance_id or f"{socket.gethostname()}:{os.getpid()}"
        self._topology = topology
        self._failover = failover
        self._redis: Any = None
        self.lease: FailoverLease | None = None  # from start(): the coordinator's lease
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[Any]] = set()
        self.connected = False
        self.received = 0
        self.published = 0

    @property
    def _state_key(self) -> str:
        return f"baton:{self.cfg.channel}:topology"

    @property
    def _lock_key(self) -> str:
        return f"baton:{self.cfg.channel}:failover-lock"

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(self.cfg.url, socket_connect_timeout=2, socket_timeout=5)
        self.lease = FailoverLease(self._redis, self._lock_key, self.instance_id)
        try:
            await self._adopt_stored()
        except Exception as exc:  # noqa: BLE001 - any Redis failure: run alone for now
            log.warning("cluster_unreachable url=%s error=%r (running alone)", _safe(self.cfg.url), exc)
        self._task = asyncio.ensure_future(self._listen())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        if self._redis is not None:
            await self._redis.aclose()

    # -- outgoing ---------------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Bus subscriber: share our own promotions (not the ones Redis told us about)."""
        if isinstance(event, MasterPromoted) and event.source != "redis":
            task = asyncio.ensure_future(self._publish(event))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _publish(self, event: MasterPromoted) -> None:
        message = json.dumps(
            {"type": "promoted", "new": event.new, "old": event.old, "epoch": event.epoch,
             "source": event.source, "instance": self.instance_id}
        )
        try:
            stored = await self._redis.eval(
                _CAS_EPOCH, 1, self._state_key, event.epoch, event.new, event.old or "", self.instance_id
            )
            await self._redis.publish(self.cfg.channel, message)
            self.published += 1
            log.info("cluster_published new=%s epoch=%s stored=%s", event.new, event.epoch, bool(stored))
        except Exception as exc:  # noqa: BLE001
            log.warning("cluster_publish_failed new=%s epoch=%s error=%r", event.new, event.epoch, exc)

    # -- incoming ---------------------------------------------------------------------------------

    async def _adopt_stored(self) -> None:
        data = await self._redis.hgetall(self._state_key)
        if not data:
            return
        fields = {k.decode(): v.decode() for k, v in data.items()}
        epoch = int(fields.get("epoch", "0"))
        if epoch > self._topology.epoch:
            await self._adopt(fields.get("master", ""), fields.get("old") or None, epoch, fields.get("instance", "?"))

    async def _listen(self) -> None:
        delay = 0.5
        while True:
            try:
                pubsub = self._redis.pubsub()
                await pubsub.subscribe(self.cfg.channel)
                if not self.connected:
                    self.connected = True
                    log.info("cluster_joined channel=%s instance=%s", self.cfg.channel, self.instance_id)
                    await self._adopt_stored()  # catch up on what happened while away
                delay = 0.5
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        await self._message(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                if self.connected:
                    log.warning("cluster_disconnected error=%r", exc)
                self.connected = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _message(self, data: bytes) -> None:
        try:
            msg = json.loads(data)
        except ValueError:
            log.warning("cluster_bad_message data=%r", data[:200])
            return
        if msg.get("type") != "promoted" or msg.get("instance") == self.instance_id:
            return
        self.received += 1
        await self._adopt(str(msg.get("new", "")), msg.get("old"), int(msg.get("epoch", 0)), str(msg.get("instance")))

    async def _adopt(self, new: str, old: str | None, epoch: int, instance: str) -> None:
        from .failover import PromotionRefused

        if new not in self._topology.backends():
            log.error("cluster_unknown_backend new=%s epoch=%s from=%s", new, epoch, instance)
            return
        try:
            await self._failover.promote(new, source="redis", old=old, epoch=epoch)
            log.info("cluster_adopted new=%s epoch=%s from=%s", new, epoch, instance)
        except PromotionRefused as exc:
            log.warning("cluster_adopt_refused new=%s epoch=%s from=%s reason=%s", new, epoch, instance, exc)


def _safe(url: str) -> str:
    """A Redis URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
