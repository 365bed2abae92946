"""Signed coordination records: what Baton instances write to Redis, and how it is checked.

Anyone who can PUBLISH on the channel or HSET a key could otherwise name any node master at
any epoch. With ``[redis] secret`` set, every record (a published promotion, the stored
topology, a heartbeat, the failover lease) carries an HMAC-SHA256 over a canonical encoding of
all its fields, the instance id, epoch and wall-clock timestamp among them; a record that is
unsigned, badly signed or (for the kinds that expire) older than the replay window is rejected
with a reason the caller counts.

Pure: no I/O, no asyncio. ``seal`` makes the text to store or publish; ``unseal`` parses text
from Redis and never raises: it returns a ``Record`` or a ``Rejection``, whatever the bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Version tag inside the signed text: a future encoding cannot be confused with this one.
_DOMAIN = b"baton-cluster-v1\n"
# Records older (or further in the future, for clock skew) than this are replays. The stored
# topology is exempt: it is current until a newer epoch replaces it, which the epoch orders.
REPLAY_WINDOW_S = 30.0
_MAX_TEXT = 64 * 1024

# What each kind of record must carry besides type, instance, epoch and ts, and the type of
# each field. Unknown kinds and extra fields are refused: the schema is the contract.
_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "promoted": {"new": (str,), "old": (str, type(None)), "source": (str,)},
    "topology": {"master": (str,), "old": (str, type(None))},
    "heartbeat": {
        "address": (str,),
        "master": (str, type(None)),
        "master_up": (bool,),
        "failover": (str,),
        "reason": (str,),
        "rejected": (int,),
    },
    "lease": {},
}
# A lease value is kept for as long as its holder renews it (Redis expires it): its age says
# nothing; a replayed one names an epoch already reached and is cleared (lease.py).
_EXPIRING = frozenset({"promoted", "heartbeat"})


@dataclass(frozen=True, slots=True)
class Record:
    """A checked record: `fields` holds the kind-specific fields, already type-checked."""

    kind: str
    instance: str
    epoch: int
    ts: float
    fields: Mapping[str, Any] = field(default_factory=dict)
    signed: bool = False


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record was not accepted: malformed, unsigned, bad_signature or stale."""

    reason: str
    detail: str


REJECTION_REASONS = ("malformed", "unsigned", "bad_signature", "stale", "unknown_backend")


@dataclass(frozen=True, slots=True)
class Sealer:
    """Seals and checks records with one shared secret (None: unauthenticated, accept all)."""

    secret: bytes | None
    clock: Callable[[], float] = time.time
    window_s: float = REPLAY_WINDOW_S

    @property
    def authenticated(self) -> bool:
        return self.secret is not None

    def seal(self, kind: str, instance: str, epoch: int, **fields: Any) -> str:
        body: dict[str, Any] = {
            "type": kind, "instance": instance, "epoch": epoch, "ts": round(self.clock(), 3),
            **fields,
        }
        problem = _schema_problem(body)
        if problem is not None:
            raise ValueError(f"cannot seal a {kind} record: {problem}")
        if self.secret is not None:
            body["sig"] = _mac(self.secret, body)
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    def unseal(self, raw: bytes | str | None, kind: str) -> Record | Rejection:
        """The record in `raw` if it is a well-formed `kind` record this secret signed."""
        body = _parse(raw)
        if isinstance(body, Rejection):
            return body
        sig = body.pop("sig", None)
        problem = _schema_problem(body)
        if problem is not None:
            return Rejection("malformed", problem)
        if body["type"] != kind:
            return Rejection("malformed", f"expected a {kind} record, got {body['type']!r}")
        if self.secret is not None:
            if sig is None:
                return Rejection("unsigned", f"{kind} record from {body['instance']!r} has no sig")
            if not isinstance(sig, str) or not hmac.compare_digest(sig, _mac(self.secret, body)):
                return Rejection(
                    "bad_signature", f"{kind} record from {body['instance']!r}: signature mismatch"
                )
        if kind in _EXPIRING:
            age = self.clock() - body["ts"]
            if abs(age) > self.window_s:
                return Rejection(
                    "stale", f"{kind} record from {body['instance']!r} is {age:.0f}s old"
                )
        return Record(
            kind=kind,
            instance=body["instance"],
            epoch=body["epoch"],
            ts=float(body["ts"]),
            fields={k: body[k] for k in _FIELDS[kind]},
            signed=self.secret is not None,
        )


def encode_lease(sealer: Sealer, instance: str, epoch: int) -> str:
    """The failover lease's value: who holds it and the epoch its failover will create (a
    fencing token). The one encoding of the lease: whoever writes or reads it uses this pair."""
    return sealer.seal("lease", instance, epoch)


def decode_lease(sealer: Sealer, raw: bytes | str | None) -> Record | Rejection:
    """The holder and epoch of a lease value (`encode_lease`), or why it is not valid."""
    return sealer.unseal(raw, "lease")


def _mac(secret: bytes, body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(secret, _DOMAIN + canonical.encode(), hashlib.sha256).hexdigest()


def _parse(raw: bytes | str | None) -> dict[str, Any] | Rejection:
    if raw is None:
        return Rejection("malformed", "empty record")
    if len(raw) > _MAX_TEXT:
        return Rejection("malformed", f"record of {len(raw)} bytes")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        body = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        return Rejection("malformed", f"not JSON: {type(e).__name__}")
    if not isinstance(body, dict):
        return Rejection("malformed", f"expected an object, got {type(body).__name__}")
    return body


def _schema_problem(body: Mapping[str, Any]) -> str | None:
    kind = body.get("type")
    if not isinstance(kind, str) or kind not in _FIELDS:
        return f"unknown type {kind!r}"
    instance, epoch, ts = body.get("instance"), body.get("epoch"), body.get("ts")
    if not isinstance(instance, str) or not instance:
        return "instance must be a non-empty string"
    if type(epoch) is not int or epoch < 0:
        return "epoch must be a non-negative integer"
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        return "ts must be a finite number"
    expected = _FIELDS[kind]
    for name, types in expected.items():
        if name not in body:
            return f"missing field {name!r}"
        value = body[name]
        if type(value) not in types:  # exact types: a bool is not an int here
            return f"field {name!r} has type {type(value).__name__}"
    extra = set(body) - set(expected) - {"type", "instance", "epoch", "ts"}
    if extra:
        return f"unexpected fields {sorted(extra)}"
    return None
