"""Per-user limits (issue 11, item 4): ``[[users]] max_connections`` and
``max_backend_connections`` are read and validated (errors name file, key and reason), and
UserLimits admits a user's sessions up to its limit, refusing the next with MySQL's own error
1226 (42000) and text, while other users are unaffected."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy import errors
from proxy.config import ConfigError, UserConfig, describe, diff_configs, parse_config
from proxy.protocol.packets import parse_err
from proxy.user_limits import UserLimits

BACKEND = '[[backends]]\nname = "db1"\naddress = "127.0.0.1:3306"\n'


def config(*users: str, proxy: str = "") -> str:
    return "\n".join([proxy, BACKEND, *users])


def user(name: str = "app", **keys: object) -> str:
    lines = [f'[[users]]\nname = "{name}"\npassword = "pw"']
    lines += [f"{k} = {v}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "baton.toml")
    return caught.value.errors


# ------------------------------------------------------------------ config


def test_limits_default_to_unlimited() -> None:
    u = parse_config(config(user())).user("app")
    assert (u.max_connections, u.max_backend_connections) == (0, 0)


def test_limits_are_read() -> None:
    c = parse_config(config(user(max_connections=50, max_backend_connections=20), user("bi")))
    assert (c.user("app").max_connections, c.user("app").max_backend_connections) == (50, 20)
    assert c.user("bi").max_connections == 0


def test_backend_share_may_equal_the_pool() -> None:
    text = config(user(max_backend_connections=30), proxy="[proxy]\nmax_backend_connections = 30")
    assert parse_config(text).user("app").max_backend_connections == 30


def test_backend_share_larger_than_the_pool_is_refused() -> None:
    text = config(
        user(),
        user("bi", max_backend_connections=31),
        proxy="[proxy]\nmax_backend_connections = 30",
    )
    assert errors_of(text) == [
        "baton.toml: users[1].max_backend_connections: must be <= [proxy] "
        "max_backend_connections (30), the size of each backend's pool that this is a share "
        "of; got 31"
    ]


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("max_connections", "-1", "must be >= 0, got -1"),
        ("max_backend_connections", "-5", "must be >= 0, got -5"),
        ("max_connections", '"10"', "expected an integer, got '10' (string)"),
        ("max_connections", "true", "expected an integer, got true (boolean)"),
        ("max_connection", "10", "unknown key (did you mean 'max_connections'?)"),
    ],
)
def test_bad_limits_name_file_key_and_reason(key: str, value: str, reason: str) -> None:
    found = errors_of(config(user(**{key: value})))
    assert len(found) == 1 and found[0].startswith(f"baton.toml: users[0].{key}: {reason}")


def test_describe_and_diff_show_the_limits() -> None:
    old = parse_config(config(user(), user("bi")))
    new = parse_config(config(user(max_connections=5, max_backend_connections=2), user("bi")))
    assert "users (2): app (5 sessions max, 2 connections per backend), bi" in describe(new)
    d = diff_configs(old, new)
    assert d.users_changed == ("app",)
    assert ("users[app].max_connections", 0, 5) in d.settings_changed


# ------------------------------------------------------------------ UserLimits


def test_user_at_its_limit_is_refused_with_mysqls_error_and_others_are_not() -> None:
    limits = UserLimits()
    app = UserConfig("app", password="pw", max_connections=2)
    other = UserConfig("bi", password="pw")
    assert limits.try_open(app) is None
    assert limits.try_open(app) is None
    refusal = limits.try_open(app)
    assert refusal is not None and refusal.error is errors.USER_CONNECTIONS_LIMIT
    err = parse_err(refusal.frame(2)[4:])
    assert (err.code, err.sqlstate, err.message) == (
        1226,
        "42000",
        "User 'app' has exceeded the 'max_user_connections' resource (current value: 2)",
    )
    assert refusal.frame(2)[3] == 2  # sequence id as asked
    for _ in range(100):
        assert limits.try_open(other) is None  # unlimited, and not counted against app
    assert limits.snapshot() == {"app": 2, "bi": 100}
    limits.close("app")
    assert limits.try_open(app) is None
    assert limits.try_open(app) is not None


def test_a_new_limit_applies_to_the_next_login() -> None:
    limits = UserLimits()
    for _ in range(3):
        assert limits.try_open(UserConfig("app", password="pw")) is None
    lowered = UserConfig("app", password="pw", max_connections=2)
    assert limits.try_open(lowered) is not None  # the open sessions stay, the next is refused
    limits.close("app")
    limits.close("app")
    assert limits.try_open(lowered) is None


def test_pool_share_error_names_the_limit() -> None:
    message = errors.USER_POOL_EXHAUSTED.packet(
        user="app", limit=20, backend="db1", timeout_ms=10000
    ).message
    assert "user 'app'" in message and "max_backend_connections=20" in message


@given(
    st.integers(0, 5),
    st.lists(st.tuples(st.sampled_from(["a", "b"]), st.booleans()), max_size=60),
)
def test_counts_follow_a_model(limit: int, steps: list[tuple[str, bool]]) -> None:
    limits = UserLimits()
    users = {
        n: UserConfig(n, password="pw", max_connections=limit if n == "a" else 0) for n in "ab"
    }
    model = {"a": 0, "b": 0}
    for name, opening in steps:
        if opening:
            refused = limits.try_open(users[name]) is not None
            assert refused == (name == "a" and limit > 0 and model["a"] >= limit)
            model[name] += not refused
        elif model[name]:
            limits.close(name)
            model[name] -= 1
        assert limits.sessions(name) == model[name]
    assert limits.snapshot() == {n: c for n, c in model.items() if c}
