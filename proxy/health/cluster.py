"""ClusterLink: several Baton instances on one topology, through Redis.

Each instance runs its own monitor, so each may notice a promotion by itself; the link makes
them agree and act once:

* Every promotion an instance makes or adopts is stored in Redis (a hash whose ``record`` is
  the signed (epoch, master) record, replaced by compare-and-set only by a newer valid epoch)
  and published on ``[redis] channel``. The others adopt it with
  ``FailoverCoordinator.promote(source="redis", epoch=...)``; the Topology accepts only a newer
  epoch, so a stale or replayed message changes nothing, and a promotion the servers
  contradict is refused there.
* Every second each instance writes a heartbeat (a key per instance, TTL 3 s: address, epoch,
  master and whether it sees it up, whether automatic failover is active) and re-reads the
  stored topology: the highest valid epoch wins, so instances converge again after Redis was
  away. ``view`` is the cluster as last read, for SHOW CLUSTER and the metrics.
* In ``auto`` mode an instance performs a failover only if Redis is reachable, the other live
  instances do not still see the master healthy (a partition between one Baton and the master
  must not cause a failover), and it takes the failover lease (proxy.health.lease: signed,
  short TTL, renewed while its holder works). The others watch the lease and take over if it
  runs out before its holder's promotion arrives.

Every record is sealed by ``signing.Sealer``: with ``[redis] secret`` unsigned, badly signed,
stale or malformed records are ignored, logged (rate-limited) and counted in ``rejected``.

Redis is a coordination aid, not a dependency for serving: if it is unreachable the instance
keeps routing with what it knows, but suspends automatic failover (it could not agree with the
others on who performs it) and says so in SHOW CLUSTER; it reconnects in the background.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .events import Event, MasterLost, MasterPromoted
from .lease import FailoverLease, LeaseHolder, LeaseUnavailable
from .signing import Record, Rejection, Sealer, decode_lease, encode_lease

if TYPE_CHECKING:
    from ..config import RedisConfig
    from .failover import FailoverCoordinator
    from .topology import Topology

log = logging.getLogger("baton.cluster")

HEARTBEAT_PERIOD_S = 1.0
HEARTBEAT_TTL_MS = 3000
# Redis commands are small: an answer slower than this means Redis is not usable right now.
REDIS_TIMEOUT_S = 2.0
# How long a failing-over instance waits for the others' heartbeats to stop calling the master
# healthy before it accepts their veto: their view lags a real death by about a heartbeat plus
# failure detection, a partition of this instance alone never ends.
VETO_WAIT_S = 2 * HEARTBEAT_TTL_MS / 1000
# A stored promotion that was refused is tried again this often, not at every heartbeat.
RETRY_REFUSED_S = 5.0
LOG_EVERY_S = 10.0

# Replaces the stored topology only if its record is still the one the caller read (and
# checked in Python: Redis cannot verify an HMAC).
_CAS_RECORD = """
local current = redis.call('HGET', KEYS[1], 'record') or ''
if current ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'epoch', ARGV[3], 'master', ARGV[4],
           'old', ARGV[5], 'instance', ARGV[6])
return 1
"""


@dataclass(frozen=True, slots=True)
class InstanceView:
    """One live Baton instance, as its heartbeat (or, for this one, its own state) says."""

    id: str
    address: str
    epoch: int
    master: str | None
    master_up: bool
    lease_holder: bool
    heartbeat_age_ms: int | None  # None: this instance's heartbeat is not in Redis
    failover: str  # active | suspended | off
    reason: str
    rejected: int  # records this instance rejected since it started


class ClusterLink:
    def __init__(
        self,
        cfg: RedisConfig,
        topology: Topology,
        failover: FailoverCoordinator,
        *,
        address: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.instance_id = cfg.instance_id or f"{socket.gethostname()}:{os.getpid()}"
        self.address = address
        self.sealer = Sealer(cfg.secret.encode() if cfg.secret else None, clock)
        self._topology = topology
        self._failover = failover
        self._redis: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self.lease: ClusterLease | None = None  # from start(): the coordinator's lease
        self._pending: set[asyncio.Task[Any]] = set()
        self.reachable = False
        self._outages = 0  # bumped when Redis comes back: the listener subscribes again
        self.received = 0
        self.published = 0
        self.rejected: Counter[str] = Counter()
        self.lease_holder: str | None = None
        # The others as their heartbeats said at the last beat, and our heartbeat's age then.
        self._peers: list[InstanceView] = []
        self._own_age: int | None = None
        self._logged_at: dict[str, float] = {}
        self._refused_at: dict[tuple[str, int], float] = {}

    @property
    def _prefix(self) -> str:
        return f"baton:{self.cfg.channel}"

    @property
    def _state_key(self) -> str:
        return f"{self._prefix}:topology"

    @property
    def _lock_key(self) -> str:
        return f"{self._prefix}:failover-lock"

    def _heartbeat_key(self, instance: str) -> str:
        return f"{self._prefix}:instance:{instance}"

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self._redis = connect(self.cfg)
        if not self.sealer.authenticated:
            log.warning(
                "cluster_unauthenticated channel=%s: anyone who can write to this Redis can name "
                "a master; set [redis] secret (or secret_file, or BATON_REDIS_SECRET)",
                self.cfg.channel,
            )
        self.lease = ClusterLease(self, FailoverLease(
            self._redis, self._lock_key, self.instance_id,
            encoder=lambda instance, epoch: encode_lease(self.sealer, instance, epoch),
            decoder=self._lease_value,
        ))
        try:
            newer = await asyncio.wait_for(self._tick(), REDIS_TIMEOUT_S * 2)
        except Exception as exc:  # noqa: BLE001 - any Redis failure: run alone for now
            log.warning("cluster_unreachable url=%s error=%r (automatic failover suspended)",
                        _safe(self.cfg.url), exc)
        else:
            await self._catch_up(newer)  # before serving: a starting instance learns the master
        self._tasks = [asyncio.ensure_future(self._listen()), asyncio.ensure_future(self._beat())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        if self._redis is not None:
            if self.reachable:  # leave SHOW CLUSTER now rather than when the key expires
                try:
                    await self._redis.delete(self._heartbeat_key(self.instance_id))
                except Exception:  # noqa: BLE001 - leaving anyway: the key expires
                    pass
            await self._redis.aclose()

    # -- what this instance says about itself -----------------------------------------------------

    def failover_status(self) -> tuple[str, str]:
        """(active | suspended | off, why): may this instance perform an automatic failover?"""
        mode = self._failover.mode
        if mode != "auto":
            return "off", f"failover mode {mode}"
        if not self.reachable:
            return "suspended", "redis unreachable"
        return "active", ""

    def own_view(self, heartbeat_age_ms: int | None = None) -> InstanceView:
        topo = self._topology
        state, reason = self.failover_status()
        return InstanceView(
            id=self.instance_id,
            address=self.address,
            epoch=topo.epoch,
            master=topo.master,
            master_up=topo.master is not None and topo.state(topo.master).is_up,
            lease_holder=self.lease_holder == self.instance_id,
            heartbeat_age_ms=heartbeat_age_ms,
            failover=state,
            reason=reason,
            rejected=sum(self.rejected.values()),
        )

    # -- heartbeat and convergence ----------------------------------------------------------------

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_PERIOD_S)
            try:
                newer = await asyncio.wait_for(self._tick(), REDIS_TIMEOUT_S * 2)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: carry on alone, say so
                self._unreachable(exc)
                continue
            await self._catch_up(newer)  # outside the timeout: it runs SQL on the servers

    async def _tick(self) -> Record | None:
        """One heartbeat: say who we are, store our topology if it is the newest, read the
        others. Returns the stored topology when it is newer than ours, for `_catch_up`."""
        if not self.reachable:
            await self._redis.ping()  # before the heartbeat: it must not say "unreachable"
            self.reachable = True
            self._outages += 1
            log.info("cluster_joined channel=%s instance=%s", self.cfg.channel, self.instance_id)
        await self._write_heartbeat()
        newer = await self._sync_topology()
        self._own_age, self._peers = await self._read_view()
        return newer

    async def _write_heartbeat(self) -> None:
        own = self.own_view()
        record = self.sealer.seal(
            "heartbeat", self.instance_id, own.epoch, address=own.address, master=own.master,
            master_up=own.master_up, failover=own.failover, reason=own.reason,
            rejected=own.rejected,
        )
        await self._redis.set(self._heartbeat_key(self.instance_id), record, px=HEARTBEAT_TTL_MS)

    async def _say_master_lost(self) -> None:
        """At once, not at the next beat: another instance deciding whether the master is
        dead reads this heartbeat, and must not wait a period for our (agreeing) view."""
        try:
            await self._write_heartbeat()
        except Exception:  # noqa: BLE001 - the next beat tries again and reports Redis away
            pass

    def _unreachable(self, exc: BaseException) -> None:
        if self.reachable:
            log.warning("cluster_disconnected error=%r (automatic failover suspended)", exc)
        self.reachable = False
        self.lease_holder = None
        self._own_age, self._peers = None, []

    @property
    def view(self) -> list[InstanceView]:
        """Every live instance, by id: this one as it is now, the others as of the last beat
        (at most HEARTBEAT_PERIOD_S old, plus their own heartbeat's age)."""
        return sorted([self.own_view(self._own_age), *self._peers], key=lambda v: v.id)

    async def _read_view(self) -> tuple[int | None, list[InstanceView]]:
        """Our heartbeat's age and the other instances with a live heartbeat, read now."""
        raw_lease = await self._redis.get(self._lock_key)
        lease = self._accept(decode_lease(self.sealer, raw_lease)) if raw_lease else None
        self.lease_holder = lease.instance if lease is not None else None
        keys = [k async for k in self._redis.scan_iter(match=self._heartbeat_key("*"), count=100)]
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
            pipe.pttl(key)
        answers = await pipe.execute() if keys else []
        own_age: int | None = None
        views = []
        for key, raw, ttl in zip(keys, answers[::2], answers[1::2], strict=True):
            age = HEARTBEAT_TTL_MS - ttl if ttl is not None and ttl >= 0 else None
            beat = self._unseal(raw, "heartbeat") if raw is not None else None
            if beat is None:
                continue
            if _text(key) != self._heartbeat_key(beat.instance):  # a copy under another name
                self._reject(Rejection("malformed", f"heartbeat of {beat.instance!r} at {key!r}"))
                continue
            if beat.instance == self.instance_id:
                own_age = age
                continue
            f = beat.fields
            views.append(InstanceView(
                id=beat.instance, address=f["address"], epoch=beat.epoch, master=f["master"],
                master_up=f["master_up"], lease_holder=beat.instance == self.lease_holder,
                heartbeat_age_ms=age, failover=f["failover"], reason=f["reason"],
                rejected=f["rejected"],
            ))
        return own_age, views

    async def _sync_topology(self) -> Record | None:
        """The highest valid epoch wins: the stored topology if newer than ours (to adopt),
        else ours is stored if newer (or the stored one is missing or invalid)."""
        raw = await self._redis.hget(self._state_key, "record")
        stored = self._unseal(raw, "topology") if raw is not None else None
        topo = self._topology
        if stored is not None and stored.epoch > topo.epoch:
            return stored
        if topo.master is not None and (stored is None or stored.epoch < topo.epoch):
            await self._store(topo.epoch, topo.master, None)
        return None

    async def _catch_up(self, stored: Record | None) -> None:
        """Adopt a newer stored topology; one refused is tried again after RETRY_REFUSED_S."""
        if stored is None or stored.epoch <= self._topology.epoch:
            return
        master, old = stored.fields["master"], stored.fields["old"]
        now = time.monotonic()
        if now - self._refused_at.get((master, stored.epoch), -RETRY_REFUSED_S) < RETRY_REFUSED_S:
            return
        try:
            adopted = await self._adopt(master, old, stored.epoch, stored.instance)
        except Exception:  # noqa: BLE001 - the heartbeat must go on; the next one retries
            log.exception("cluster_catch_up_failed master=%s epoch=%d", master, stored.epoch)
            adopted = False
        if not adopted:
            self._refused_at[(master, stored.epoch)] = now

    async def _store(self, epoch: int, master: str, old: str | None) -> bool:
        """Compare-and-set of the stored topology; False if a newer valid one is there."""
        record = self.sealer.seal("topology", self.instance_id, epoch, master=master, old=old)
        for _ in range(3):
            raw = await self._redis.hget(self._state_key, "record")
            stored = self._unseal(raw, "topology") if raw is not None else None
            if stored is not None and stored.epoch >= epoch:
                return False
            expected = raw if raw is not None else b""
            args = (record, epoch, master, old or "", self.instance_id)
            if await self._redis.eval(_CAS_RECORD, 1, self._state_key, expected, *args):
                log.info("cluster_stored epoch=%d master=%s", epoch, master)
                return True
        return False

    # -- outgoing ---------------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Bus subscriber: share our own promotions (not the ones Redis told us about), and a
        lost master as soon as it is lost."""
        if isinstance(event, MasterPromoted) and event.source != "redis":
            self._spawn(self._publish(event))
        elif isinstance(event, MasterLost) and self.reachable:
            self._spawn(self._say_master_lost())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _publish(self, event: MasterPromoted) -> None:
        message = self.sealer.seal(
            "promoted", self.instance_id, event.epoch, new=event.new, old=event.old,
            source=event.source,
        )
        try:
            stored = await self._store(event.epoch, event.new, event.old)
            await self._redis.publish(self.cfg.channel, message)
            self.published += 1
            log.info("cluster_published new=%s epoch=%s stored=%s", event.new, event.epoch, stored)
        except Exception as exc:  # noqa: BLE001 - the heartbeat stores it once Redis is back
            log.warning("cluster_publish_failed new=%s epoch=%s error=%r", event.new, event.epoch, exc)

    def _lease_value(self, raw: bytes | str) -> tuple[str, int] | None:
        """A lease value this cluster's secret signed, as (holder, epoch); None otherwise."""
        record = self._accept(decode_lease(self.sealer, raw))
        return (record.instance, record.epoch) if record is not None else None

    async def _vetoed(self) -> bool:
        """Whether the other live instances forbid this failover: one is on a newer epoch
        already, or `master_seen_up` still after VETO_WAIT_S (time for them to notice)."""
        topo = self._topology
        master, epoch = topo.master, topo.epoch
        deadline = time.monotonic() + VETO_WAIT_S
        while True:
            _, peers = await self._read_view()
            if any(v.epoch > epoch for v in peers):
                log.info("cluster_failover_by_other reason=%r", "an instance is on a newer epoch")
                return True
            up = master_seen_up(peers, master, epoch)
            if not up:
                return False
            if time.monotonic() >= deadline:
                log.warning(
                    "cluster_failover_vetoed master=%s epoch=%d seen_up_by=%s: this instance "
                    "alone lost the master; no failover", master, epoch, ",".join(up),
                )
                return True
            await asyncio.sleep(HEARTBEAT_PERIOD_S / 4)

    # -- incoming ---------------------------------------------------------------------------------

    async def _listen(self) -> None:
        delay = 0.5
        while True:
            pubsub = None
            try:
                pubsub = self._redis.pubsub()
                await pubsub.subscribe(self.cfg.channel)
                outages = self._outages
                delay = 0.5
                # Until Redis was away (the heartbeat saw it): then subscribe again.
                while self._outages == outages:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        await self._message(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the connection, not a message: retry
                self._log_limited("listener", "cluster_listener_lost error=%r", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                if pubsub is not None:
                    try:
                        await pubsub.aclose()
                    except Exception:  # noqa: BLE001
                        pass

    async def _message(self, data: bytes) -> None:
        """One published message; never raises (a bad message must not end the listener)."""
        try:
            msg = self._unseal(data, "promoted")
            if msg is None or msg.instance == self.instance_id:
                return
            self.received += 1
            await self._adopt(msg.fields["new"], msg.fields["old"], msg.epoch, msg.instance)
        except Exception:  # noqa: BLE001
            log.exception("cluster_message_failed data=%r", data[:200])

    async def _adopt(self, new: str, old: str | None, epoch: int, instance: str) -> bool:
        from .failover import PromotionRefused

        known = self._topology.backends()
        if new not in known or (old is not None and old not in known):
            self._reject(Rejection("unknown_backend", f"{new!r} (epoch {epoch}, from {instance})"))
            return False
        try:
            await self._failover.promote(new, source="redis", old=old, epoch=epoch)
        except PromotionRefused as exc:
            log.warning("cluster_adopt_refused new=%s epoch=%s from=%s reason=%s",
                        new, epoch, instance, exc)
            return False
        log.info("cluster_adopted new=%s epoch=%s from=%s", new, epoch, instance)
        return True

    # -- checking records -------------------------------------------------------------------------

    def _unseal(self, raw: bytes | str | None, kind: str) -> Record | None:
        return self._accept(self.sealer.unseal(raw, kind))

    def _accept(self, checked: Record | Rejection) -> Record | None:
        """The record, or None after counting and logging why it was rejected."""
        if isinstance(checked, Rejection):
            self._reject(checked)
            return None
        return checked

    def _reject(self, rejection: Rejection) -> None:
        self.rejected[rejection.reason] += 1
        self._log_limited(
            f"reject:{rejection.reason}", "cluster_record_rejected reason=%s detail=%s count=%d",
            rejection.reason, rejection.detail, self.rejected[rejection.reason],
        )

    def _log_limited(self, key: str, fmt: str, *args: Any) -> None:
        """At most one line per LOG_EVERY_S per key: a flood of forged records (or a Redis that
        stays away) must not flood the log."""
        now = time.monotonic()
        if now - self._logged_at.get(key, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._logged_at[key] = now
            log.warning(fmt, *args)


def master_seen_up(peers: Sequence[InstanceView], master: str | None, epoch: int) -> list[str]:
    """The instances whose heartbeats say `master` (of `epoch`) is up, if they are at least half
    of the live instances on that epoch and master; else []. Enough to say that an instance
    which lost the master is the one cut off, not the master dead."""
    same = [v for v in peers if v.epoch == epoch and v.master == master]
    up = [v.id for v in same if v.master_up]
    return up if up and 2 * len(up) >= len(same) else []


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def connect(cfg: RedisConfig) -> Any:
    """A Redis client for `cfg`: ACL user and password, TLS with verification for rediss://."""
    import redis.asyncio as aioredis

    options: dict[str, Any] = {
        "socket_connect_timeout": REDIS_TIMEOUT_S,
        "socket_timeout": REDIS_TIMEOUT_S,
    }
    if cfg.username:
        options["username"] = cfg.username
    if cfg.password:
        options["password"] = cfg.password
    if cfg.url.startswith("rediss://"):
        options["ssl_cert_reqs"] = "required"
        options["ssl_check_hostname"] = True
        if cfg.tls_ca:
            options["ssl_ca_certs"] = cfg.tls_ca
    return aioredis.Redis.from_url(cfg.url, **options)


def _safe(url: str) -> str:
    """A Redis URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


class ClusterLease:
    """The coordinator's failover lease in a cluster (failover.FailoverLeaseLike): a
    FailoverLease with signed values, taken only while Redis answers (otherwise automatic
    failover is suspended: the instances could not agree on who performs it) and while the
    other live instances do not veto it (they still see the master healthy)."""

    def __init__(self, link: ClusterLink, lease: FailoverLease) -> None:
        self._link = link
        self._lease = lease

    async def acquire(self, epoch: int) -> bool:
        link = self._link
        if not link.reachable:
            raise LeaseUnavailable("redis unreachable: automatic failover suspended")
        try:
            if await link._vetoed():
                return False
        except Exception as exc:  # noqa: BLE001 - Redis failed while we asked the others
            link._unreachable(exc)
            raise LeaseUnavailable(repr(exc)) from exc
        got = await self._lease.acquire(epoch)
        if got:
            link.lease_holder = link.instance_id
        return got

    async def renew(self) -> bool:
        return await self._lease.renew()

    async def release(self) -> None:
        await self._lease.release()

    async def holder(self) -> LeaseHolder | None:
        return await self._lease.holder()
