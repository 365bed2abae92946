"""Signed coordination records (proxy.health.signing) and the [redis] security settings.

Proves: a sealed record round-trips; any change to a signed field, a missing or foreign
signature, a stale or future timestamp, a wrong type or an unknown kind is rejected with its
reason; arbitrary bytes or JSON never make the parser raise; without a secret unsigned records
are accepted; the loader reads the secret from the key, a file or the environment; and the
other instances' heartbeats veto a failover when at least half of them still see the master.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import REDIS_SECRET_ENV, ConfigError, RedisConfig, parse_config
from proxy.health.cluster import InstanceView, master_seen_up
from proxy.health.signing import (
    REJECTION_REASONS,
    Record,
    Rejection,
    Sealer,
    decode_lease,
    encode_lease,
)

SECRET = b"0123456789abcdef-shared"
NOW = 1_800_000_000.0


def sealer(secret: bytes | None = SECRET, at: float = NOW) -> Sealer:
    return Sealer(secret, clock=lambda: at)


def promoted(s: Sealer, **overrides: object) -> str:
    fields = {"new": "db2", "old": "db1", "source": "auto", **overrides}
    return s.seal("promoted", "baton-a", 2, **fields)


def test_sealed_record_round_trips() -> None:
    record = sealer().unseal(promoted(sealer()), "promoted")
    assert isinstance(record, Record)
    assert (record.kind, record.instance, record.epoch, record.ts) == ("promoted", "baton-a", 2, NOW)
    assert dict(record.fields) == {"new": "db2", "old": "db1", "source": "auto"}
    assert record.signed


@pytest.mark.parametrize(
    ("field", "value"),
    [("new", "db3"), ("old", None), ("epoch", 99), ("instance", "baton-b"), ("ts", NOW + 1),
     ("source", "admin")],
)
def test_any_changed_field_breaks_the_signature(field: str, value: object) -> None:
    body = json.loads(promoted(sealer()))
    body[field] = value
    result = sealer().unseal(json.dumps(body), "promoted")
    assert isinstance(result, Rejection) and result.reason == "bad_signature"


def test_unsigned_and_foreign_records_are_rejected() -> None:
    unsigned = promoted(sealer(secret=None))
    assert sealer().unseal(unsigned, "promoted") == Rejection(
        "unsigned", "promoted record from 'baton-a' has no sig"
    )
    foreign = promoted(sealer(secret=b"another-secret-of-16+"))
    result = sealer().unseal(foreign, "promoted")
    assert isinstance(result, Rejection) and result.reason == "bad_signature"
    body = json.loads(promoted(sealer()))
    body["sig"] = 12345  # not even a string
    result = sealer().unseal(json.dumps(body), "promoted")
    assert isinstance(result, Rejection) and result.reason == "bad_signature"


@pytest.mark.parametrize("age_s", [31.0, -31.0, 3600.0])
def test_old_or_future_records_are_replays(age_s: float) -> None:
    text = promoted(sealer(at=NOW - age_s))
    result = sealer().unseal(text, "promoted")
    assert isinstance(result, Rejection) and result.reason == "stale"


def test_the_stored_topology_does_not_expire() -> None:
    """The stored topology stays valid until a newer epoch replaces it (the epoch orders it)."""
    text = sealer(at=NOW - 86400).seal("topology", "baton-a", 3, master="db2", old=None)
    record = sealer().unseal(text, "topology")
    assert isinstance(record, Record) and record.fields["master"] == "db2"


def test_without_a_secret_unsigned_records_are_accepted() -> None:
    open_sealer = sealer(secret=None)
    record = open_sealer.unseal(promoted(open_sealer), "promoted")
    assert isinstance(record, Record) and not record.signed
    # A signed record is fine too: the signature is simply not checked.
    assert isinstance(open_sealer.unseal(promoted(sealer()), "promoted"), Record)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (b"\xff\xfe not utf-8", "promoted"),
        (b"not json", "promoted"),
        (b"[1, 2]", "promoted"),
        (b'{"type": "promoted"}', "promoted"),
        (b'{"type": "nope", "instance": "a", "epoch": 1, "ts": 1}', "promoted"),
        (b'{"type": "promoted", "instance": "a", "epoch": "2", "ts": 1, "new": "db2", '
         b'"old": null, "source": "auto"}', "promoted"),
        (b'{"type": "promoted", "instance": "a", "epoch": true, "ts": 1, "new": "db2", '
         b'"old": null, "source": "auto"}', "promoted"),
        (b'{"type": "promoted", "instance": "a", "epoch": 2, "ts": 1, "new": 7, '
         b'"old": null, "source": "auto"}', "promoted"),
        (b'{"type": "promoted", "instance": "a", "epoch": 2, "ts": 1, "new": "db2", '
         b'"old": null, "source": "auto", "extra": 1}', "promoted"),
        (b'{"type": "promoted", "instance": "a", "epoch": 2, "ts": NaN, "new": "db2", '
         b'"old": null, "source": "auto"}', "promoted"),
        (b'{"type": "lease", "instance": "a", "epoch": 2, "ts": 1}', "promoted"),
        (b"[" * 100_000, "promoted"),
    ],
)
def test_malformed_records_are_rejected_as_malformed(text: bytes, kind: str) -> None:
    result = sealer(secret=None).unseal(text, kind)
    assert isinstance(result, Rejection) and result.reason == "malformed", result


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=20,
)
_LIKELY_KEYS = st.sampled_from(
    ["type", "instance", "epoch", "ts", "sig", "new", "old", "source", "master", "address"]
)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    for secret in (None, SECRET):
        result = sealer(secret).unseal(raw, "promoted")
        assert isinstance(result, Record | Rejection)


@given(st.dictionaries(_LIKELY_KEYS | st.text(max_size=5), _JSON, max_size=9))
def test_arbitrary_json_objects_never_raise(body: dict[str, object]) -> None:
    raw = json.dumps(body).encode()
    for kind in ("promoted", "topology", "heartbeat", "lease"):
        for secret in (None, SECRET):
            result = sealer(secret).unseal(raw, kind)
            assert isinstance(result, Record | Rejection)
            if isinstance(result, Rejection):
                assert result.reason in REJECTION_REASONS


def test_lease_value_names_its_holder_and_the_epoch_it_creates() -> None:
    s = sealer()
    lease = decode_lease(s, encode_lease(s, "baton-a", 5))
    assert isinstance(lease, Record) and (lease.instance, lease.epoch) == ("baton-a", 5)
    assert isinstance(decode_lease(s, b"baton-a"), Rejection)  # the old, unsigned format


def test_sealing_a_record_that_breaks_the_schema_is_a_bug() -> None:
    with pytest.raises(ValueError, match="field 'new'"):
        sealer().seal("promoted", "baton-a", 2, new=None, old=None, source="auto")


# --- [redis] settings ---------------------------------------------------------------------------

BACKENDS = '[[backends]]\nname = "db1"\naddress = "127.0.0.1:3306"\n'
USERS = '[[users]]\nname = "app"\npassword = "app"\n'


def redis_config(body: str, base: Path) -> RedisConfig:
    return parse_config(f"[redis]\n{body}\n{BACKENDS}{USERS}", str(base / "config.toml")).redis


def redis_errors(body: str, base: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        redis_config(body, base)
    return caught.value.errors


def test_secret_from_the_key_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(REDIS_SECRET_ENV, raising=False)
    url = 'url = "redis://127.0.0.1:1/0"\n'
    assert redis_config(url + f'secret = "{"x" * 32}"', tmp_path).secret == "x" * 32
    (tmp_path / "secret").write_text("y" * 32 + "\n")
    assert redis_config(url + 'secret_file = "secret"', tmp_path).secret == "y" * 32
    monkeypatch.setenv(REDIS_SECRET_ENV, "z" * 32)
    assert redis_config(url, tmp_path).secret == "z" * 32
    monkeypatch.delenv(REDIS_SECRET_ENV)
    assert redis_config(url, tmp_path).secret == ""


def test_redis_security_settings_are_checked(tmp_path: Path) -> None:
    url = 'url = "redis://127.0.0.1:1/0"\n'
    short = redis_errors(url + 'secret = "short"', tmp_path)
    assert any("redis.secret" in e and "at least 16 bytes" in e for e in short), short
    both = redis_errors(url + f'secret = "{"x" * 20}"\nsecret_file = "s"', tmp_path)
    assert any("redis.secret" in e and "set one" in e for e in both)
    missing = redis_errors(url + 'secret_file = "absent"', tmp_path)
    assert any("redis.secret_file" in e and "cannot read" in e for e in missing)
    (tmp_path / "ca.pem").write_text("x")
    plain = redis_errors(url + 'tls_ca = "ca.pem"', tmp_path)
    assert any("redis.tls_ca" in e and "rediss://" in e for e in plain)
    config = redis_config(
        'url = "rediss://127.0.0.1:1/0"\ntls_ca = "ca.pem"\nusername = "baton"\npassword = "pw"',
        tmp_path,
    )
    assert (config.username, config.password, config.tls_ca) == (
        "baton", "pw", str(tmp_path / "ca.pem")
    )


# --- the other instances' veto ------------------------------------------------------------------


def peer(name: str, up: bool, epoch: int = 1, master: str = "db1") -> InstanceView:
    return InstanceView(
        id=name, address="", epoch=epoch, master=master, master_up=up, lease_holder=False,
        heartbeat_age_ms=100, failover="active", reason="", rejected=0,
    )


@pytest.mark.parametrize(
    ("peers", "vetoed_by"),
    [
        ([], []),  # alone: nobody to ask, the replicas decide
        ([peer("b", True)], ["b"]),
        ([peer("b", False)], []),
        ([peer("b", True), peer("c", False)], ["b"]),  # half: still doubtful, no failover
        ([peer("b", True), peer("c", False), peer("d", False)], []),
        ([peer("b", True), peer("c", True), peer("d", False)], ["b", "c"]),
        # Only instances on this epoch and master have an opinion on this master.
        ([peer("b", True, epoch=0), peer("c", True, master="db2")], []),
    ],
)
def test_master_seen_up_by_at_least_half_vetoes(
    peers: list[InstanceView], vetoed_by: list[str]
) -> None:
    assert master_seen_up(peers, "db1", 1) == vetoed_by
