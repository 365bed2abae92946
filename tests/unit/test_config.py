"""Tests for proxy.config: the example file, defaults, every class of error, hashes, diffs."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import ipaddress
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import (
    LISTS,
    SECTIONS,
    BackendConfig,
    Config,
    ConfigError,
    ProxyConfig,
    RoutingConfig,
    UserConfig,
    describe,
    diff_configs,
    load_config,
    parse_address,
    parse_config,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config.toml"

BACKEND = '[[backends]]\nname = "db1"\naddress = "127.0.0.1:3306"\n'
USER = '[[users]]\nname = "app"\npassword = "app"\n'


def config_text(*sections: str, backends: str = BACKEND, users: str = USER) -> str:
    """Sections first (top-level keys must precede any table), then the lists."""
    return "\n".join([*sections, backends, users])


def errors_of(text: str, source: str = "config.toml") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source)
    assert str(caught.value) == "\n".join(caught.value.errors)
    return caught.value.errors


def native(password: str) -> bytes:
    return hashlib.sha1(hashlib.sha1(password.encode()).digest()).digest()


# ---------------------------------------------------------------------------------------------
# The example file


def test_example_config_loads():
    config = load_config(EXAMPLE)
    assert [b.name for b in config.backends] == ["db1", "db2", "db3"]
    assert [(b.host, b.port, b.role) for b in config.backends] == [
        ("127.0.0.1", 3306, "master"),
        ("127.0.0.1", 3307, "replica"),
        ("127.0.0.1", 3308, "replica"),
    ]
    assert config.master_hint is config.backend("db1")
    assert config.backend("db3").promotable is False
    assert config.user("app").native_hash == native("app")
    assert config.source == str(EXAMPLE)


def test_example_sets_every_option_to_its_default():
    """config.toml documents the defaults; if a default changes, the example must follow."""
    example = load_config(EXAMPLE)
    minimal = parse_config(config_text())
    for name in SECTIONS:
        assert getattr(example, name) == getattr(minimal, name), name
    assert dataclasses.replace(example.backends[0], role="replica") == minimal.backends[0]


def test_example_spells_out_every_key_with_a_comment():
    text = EXAMPLE.read_text()
    document = tomllib.loads(text)
    for name, cls in SECTIONS.items():
        expected = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("derived")}
        assert set(document[name]) == expected, name
    backend_keys = {
        f.name for f in dataclasses.fields(BackendConfig) if not f.metadata.get("derived")
    }
    assert set(document["backends"][0]) == backend_keys
    # Each key's first appearance comes right after a comment or after a key sharing its comment.
    lines = text.splitlines()
    seen: set[str] = set()
    for index, line in enumerate(lines):
        key = line.split("=")[0].strip() if "=" in line and not line.startswith("#") else None
        if key and key not in seen:
            seen.add(key)
            above = lines[index - 1]
            assert above.startswith("#") or "=" in above, f"{key} has no comment above it"


# ---------------------------------------------------------------------------------------------
# Defaults and derived values


def test_missing_sections_and_keys_take_defaults():
    config = parse_config(config_text())
    assert config.proxy == ProxyConfig()
    assert (config.proxy.host, config.proxy.port) == ("127.0.0.1", 6033)
    assert (config.admin.port, config.metrics.port) == (6032, 6070)
    assert config.routing == RoutingConfig()
    assert config.backends[0] == BackendConfig(
        name="db1",
        address="127.0.0.1:3306",
        host="127.0.0.1",
        port=3306,
        role="replica",
        weight=1,
        max_replication_lag_ms=1000,
        promotable=True,
        tls=False,
    )
    assert config.master_hint is None  # zero masters is fine: the monitor discovers it


def test_backend_lag_limit_inherits_routing_unless_set():
    text = config_text(
        "[routing]\nmax_replication_lag_ms = 250",
        backends=BACKEND + '[[backends]]\nname = "db2"\naddress = "[::1]:3307"\n'
        "max_replication_lag_ms = 5000\n",
    )
    config = parse_config(text)
    assert config.backend("db1").max_replication_lag_ms == 250
    assert config.backend("db2").max_replication_lag_ms == 5000
    assert (config.backend("db2").host, config.backend("db2").port) == ("::1", 3307)


def test_empty_listen_disables_admin_and_metrics():
    config = parse_config(config_text('[admin]\nlisten = ""', '[metrics]\nlisten = ""'))
    assert not config.admin.enabled and not config.metrics.enabled
    assert (config.admin.host, config.admin.port) == ("", 0)
    assert config.proxy.tls_enabled is False and config.redis.enabled is False


def test_lookups_by_name():
    config = parse_config(config_text(users=USER + '[[users]]\nname = "bob"\npassword = "b"\n'))
    assert config.user("bob").name == "bob"
    assert config.user("nobody") is None and config.backend("nope") is None
    assert config.user("APP") is None  # MySQL user names are case-sensitive


def test_config_is_frozen():
    config = parse_config(config_text())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.proxy.port = 1  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# Errors: each names the file, the key path and the reason


BAD = [
    # (config text, key path, part of the reason)
    pytest.param("[proxy\n", "line 1, column 7", "invalid TOML", id="toml-syntax"),
    pytest.param(
        '[proxy]\nlisten = "a"\nlisten = "b"\n', "line 3", "invalid TOML", id="toml-dup-key"
    ),
    pytest.param(config_text("bogus = 1"), "bogus", "unknown section", id="unknown-top-level"),
    *(
        pytest.param(
            config_text(f"[{section}]\nbogus = 1"),
            f"{section}.bogus",
            "unknown key",
            id=f"unknown-key-{section}",
        )
        for section in SECTIONS
    ),
    pytest.param(
        config_text(backends=BACKEND + "bogus = 1\n"),
        "backends[0].bogus",
        "unknown key",
        id="unknown-key-backend",
    ),
    pytest.param(
        config_text(users=USER + "bogus = 1\n"),
        "users[0].bogus",
        "unknown key",
        id="unknown-key-user",
    ),
    pytest.param(
        config_text('[proxy]\nlistn = "127.0.0.1:1"'),
        "proxy.listn",
        "did you mean 'listen'",
        id="typo-hint",
    ),
    # wrong types
    pytest.param(
        config_text("proxy = 5"),
        "proxy",
        "expected a table [proxy], got 5 (integer)",
        id="section-not-table",
    ),
    pytest.param(
        config_text('[proxy]\nmax_backend_connections = "100"'),
        "proxy.max_backend_connections",
        "expected an integer, got '100' (string)",
        id="string-as-int",
    ),
    pytest.param(
        config_text("[proxy]\nconnect_timeout_ms = 1.5"),
        "proxy.connect_timeout_ms",
        "expected an integer, got 1.5 (float)",
        id="float-as-int",
    ),
    pytest.param(
        config_text("[proxy]\nmax_backend_connections = true"),
        "proxy.max_backend_connections",
        "expected an integer, got true (boolean)",
        id="bool-as-int",
    ),
    pytest.param(
        config_text(backends=BACKEND + "weight = false\n"),
        "backends[0].weight",
        "expected an integer, got false (boolean)",
        id="bool-as-int-backend",
    ),
    pytest.param(
        config_text("[routing]\nread_write_split = 1"),
        "routing.read_write_split",
        "expected true or false, got 1 (integer)",
        id="int-as-bool",
    ),
    pytest.param(
        config_text('[failover]\nauto_rejoin = "yes"'),
        "failover.auto_rejoin",
        "expected true or false",
        id="string-as-bool",
    ),
    pytest.param(
        config_text('[proxy]\ncompression = "on"'),
        "proxy.compression",
        "expected true or false, got 'on' (string)",
        id="string-as-bool-compression",
    ),
    pytest.param(
        config_text("[admin]\nuser = 5"),
        "admin.user",
        "expected a string, got 5",
        id="int-as-string",
    ),
    pytest.param(
        config_text("[log]\nlevel = 3"),
        "log.level",
        "expected one of 'debug', 'info', 'warning', 'error', got 3",
        id="int-as-enum",
    ),
    pytest.param(
        config_text("[proxy]\nlisten = 6033"),
        "proxy.listen",
        "expected a string HOST:PORT",
        id="int-as-address",
    ),
    pytest.param(
        config_text("[proxy]\npid_file = 1979-05-27"),
        "proxy.pid_file",
        "(date/time)",
        id="date-as-string",
    ),
    # values out of range
    pytest.param(
        config_text("[proxy]\nmax_backend_connections = 0"),
        "proxy.max_backend_connections",
        "must be >= 1, got 0",
        id="zero-pool",
    ),
    pytest.param(
        config_text("[proxy]\nconnect_timeout_ms = -5"),
        "proxy.connect_timeout_ms",
        "must be >= 1, got -5",
        id="negative-timeout",
    ),
    pytest.param(
        config_text("[proxy]\nmax_allowed_packet = 10"),
        "proxy.max_allowed_packet",
        "must be from 1024 to 1073741824, got 10",
        id="packet-too-small",
    ),
    pytest.param(
        config_text("[proxy]\nmax_allowed_packet = 2147483648"),
        "proxy.max_allowed_packet",
        "must be from 1024 to 1073741824",
        id="packet-too-big",
    ),
    pytest.param(
        config_text("[proxy]\nshutdown_grace_s = -1"),
        "proxy.shutdown_grace_s",
        "must be >= 0",
        id="negative-grace",
    ),
    pytest.param(
        config_text("[monitor]\ninterval_ms = 0"),
        "monitor.interval_ms",
        "must be >= 1",
        id="zero-interval",
    ),
    pytest.param(
        config_text("[monitor]\nfailure_threshold = 0"),
        "monitor.failure_threshold",
        "must be >= 1",
        id="zero-threshold",
    ),
    pytest.param(
        config_text("[routing]\nmax_replication_lag_ms = -1"),
        "routing.max_replication_lag_ms",
        "must be >= 0",
        id="negative-lag",
    ),
    pytest.param(
        config_text("[failover]\nbuffer_max = -1"),
        "failover.buffer_max",
        "must be >= 0",
        id="negative-buffer",
    ),
    pytest.param(
        config_text(backends=BACKEND + "weight = -1\n"),
        "backends[0].weight",
        "must be >= 0, got -1",
        id="negative-weight",
    ),
    # enums
    pytest.param(
        config_text('[routing]\nconsistency = "strong"'),
        "routing.consistency",
        "expected one of 'eventual', 'session'; got 'strong'",
        id="bad-consistency",
    ),
    pytest.param(
        config_text('[failover]\nmode = "yolo"'),
        "failover.mode",
        "expected one of 'follow', 'auto', 'manual'",
        id="bad-failover-mode",
    ),
    pytest.param(
        config_text('[log]\nformat = "xml"'),
        "log.format",
        "expected one of 'kv', 'json'",
        id="bad-log-format",
    ),
    pytest.param(
        config_text('[proxy]\nauth_plugin = "ed25519"'),
        "proxy.auth_plugin",
        "expected one of 'mysql_native_password', 'caching_sha2_password'",
        id="bad-auth-plugin",
    ),
    pytest.param(
        config_text(backends=BACKEND + 'role = "primary"\n'),
        "backends[0].role",
        "expected one of 'master', 'replica'",
        id="bad-role",
    ),
    # addresses
    pytest.param(
        config_text(backends='[[backends]]\nname = "db3"\naddress = "db3"\n'),
        "backends[0].address",
        "expected HOST:PORT",
        id="address-no-port",
    ),
    pytest.param(
        config_text('[proxy]\nlisten = "::1:6033"'),
        "proxy.listen",
        "need brackets",
        id="ipv6-no-brackets",
    ),
    pytest.param(
        config_text('[proxy]\nlisten = "[::1]"'),
        "proxy.listen",
        "expected HOST:PORT",
        id="ipv6-no-port",
    ),
    pytest.param(
        config_text('[proxy]\nlisten = "[db1]:6033"'),
        "proxy.listen",
        "not an IPv6 address",
        id="brackets-not-ipv6",
    ),
    pytest.param(
        config_text('[proxy]\nlisten = "999.1.1.1:6033"'),
        "proxy.listen",
        "not a valid IPv4 address",
        id="bad-ipv4",
    ),
    pytest.param(
        config_text('[proxy]\nlisten = "bad host:6033"'),
        "proxy.listen",
        "not a valid host name",
        id="bad-hostname",
    ),
    pytest.param(
        config_text('[proxy]\nlisten = ""'), "proxy.listen", "got ''", id="empty-where-required"
    ),
    pytest.param(
        config_text('[admin]\nlisten = "nope"'),
        "admin.listen",
        'or "" to disable',
        id="bad-admin-listen",
    ),
    *(
        pytest.param(
            config_text(f'[metrics]\nlisten = "127.0.0.1:{port}"'),
            "metrics.listen",
            "port must be a number from 1 to 65535",
            id=f"port-{port or 'empty'}",
        )
        for port in ("0", "65536", "99999", "-1", "", "http", "٣٣٠٦")
    ),
    pytest.param(
        config_text('[admin]\nlisten = "127.0.0.1:6033"'),
        "admin.listen",
        "clashes with proxy.listen",
        id="listener-clash",
    ),
    pytest.param(
        config_text('[metrics]\nlisten = "0.0.0.0:6032"'),
        "metrics.listen",
        "clashes with admin.listen",
        id="listener-clash-wildcard",
    ),
    # other string checks
    pytest.param(
        config_text('[proxy]\nserver_version = "10.11\\u0001"'),
        "proxy.server_version",
        "printable ASCII",
        id="bad-server-version",
    ),
    pytest.param(
        config_text('[redis]\nurl = "http://127.0.0.1:6380"'),
        "redis.url",
        "redis://, rediss:// or unix://",
        id="bad-redis-url",
    ),
    pytest.param(
        config_text('[redis]\nchannel = ""'),
        "redis.channel",
        "must not be empty",
        id="empty-channel",
    ),
    pytest.param(
        config_text(backends='[[backends]]\nname = "db 1"\naddress = "127.0.0.1:1"\n'),
        "backends[0].name",
        "letters, digits",
        id="bad-backend-name",
    ),
    pytest.param(
        config_text(users=f'[[users]]\nname = "{"u" * 81}"\npassword = "p"\n'),
        "users[0].name",
        "at most 80 characters",
        id="long-user-name",
    ),
    # TLS
    pytest.param(
        config_text('[proxy]\ntls_cert = "cert.pem"'),
        "proxy.tls_key",
        "tls_cert is set but tls_key is not",
        id="cert-without-key",
    ),
    pytest.param(
        config_text('[proxy]\ntls_key = "key.pem"'),
        "proxy.tls_cert",
        "tls_key is set but tls_cert is not",
        id="key-without-cert",
    ),
    pytest.param(
        config_text('[proxy]\ntls_cert = "/nonexistent/c.pem"\ntls_key = "/nonexistent/k.pem"'),
        "proxy.tls_cert",
        "cannot read '/nonexistent/c.pem'",
        id="unreadable-cert",
    ),
    # lists and cross-checks
    pytest.param(
        config_text(backends=""),
        "backends",
        "missing; define at least one [[backends]]",
        id="missing-backends",
    ),
    pytest.param(
        config_text(users=""), "users", "missing; define at least one [[users]]", id="missing-users"
    ),
    pytest.param("backends = []\n" + USER, "backends", "must not be empty", id="empty-backends"),
    pytest.param(
        config_text(backends='[backends]\nname = "db1"\n'),
        "backends",
        "expected an array of tables [[backends]]",
        id="backends-single-table",
    ),
    pytest.param(
        "backends = [1]\n" + USER,
        "backends[0]",
        "expected a table, got 1",
        id="backends-not-tables",
    ),
    pytest.param(
        config_text(backends='[[backends]]\nname = "db1"\n'),
        "backends[0].address",
        "missing; this key is required",
        id="backend-without-address",
    ),
    pytest.param(
        config_text(backends='[[backends]]\naddress = "127.0.0.1:1"\n'),
        "backends[0].name",
        "missing; this key is required",
        id="backend-without-name",
    ),
    pytest.param(
        config_text(backends=BACKEND + BACKEND.replace("3306", "3307")),
        "backends[1].name",
        "duplicate name 'db1' (also backends[0])",
        id="duplicate-backend-name",
    ),
    pytest.param(
        config_text(backends=BACKEND + BACKEND.replace("db1", "db2")),
        "backends[1].address",
        "duplicate address '127.0.0.1:3306' (also backends[0])",
        id="duplicate-address",
    ),
    pytest.param(
        config_text(
            backends=BACKEND
            + BACKEND.replace('"127.0.0.1', '"LOCALHOST').replace("db1", "db2")
            + BACKEND.replace('"127.0.0.1', '"localhost').replace("db1", "db3")
        ),
        "backends[2].address",
        "duplicate address 'localhost:3306' (also backends[1])",
        id="duplicate-address-case",
    ),
    pytest.param(
        config_text(
            backends=BACKEND
            + 'role = "master"\n'
            + BACKEND.replace("db1", "db2").replace("3306", "3307")
            + 'role = "master"\n'
        ),
        "backends[1].role",
        'only one backend may have role = "master"',
        id="two-masters",
    ),
    pytest.param(
        config_text(users=USER + USER), "users[1].name", "duplicate name 'app'", id="duplicate-user"
    ),
    pytest.param(
        config_text(users=USER + f'password_hash = "*{"A" * 40}"\n'),
        "users[0].password",
        "both password and password_hash given; set exactly one",
        id="password-and-hash",
    ),
    pytest.param(
        config_text(users='[[users]]\nname = "app"\n'),
        "users[0].password",
        "neither password nor password_hash given",
        id="no-password",
    ),
    pytest.param(
        config_text(users='[[users]]\nname = "app"\npassword = ""\n'),
        "users[0].password",
        "must not be empty",
        id="empty-password",
    ),
    pytest.param(
        config_text(users='[[users]]\nname = "app"\npassword_hash = "*XYZ"\n'),
        "users[0].password_hash",
        "expected '*' and 40 hex digits",
        id="short-hash",
    ),
    pytest.param(
        config_text(users=f'[[users]]\nname = "app"\npassword_hash = "{"A" * 41}"\n'),
        "users[0].password_hash",
        "expected '*' and 40 hex digits",
        id="hash-without-star",
    ),
    pytest.param(
        config_text(users=f'[[users]]\nname = "app"\npassword_hash = "*{"G" * 40}"\n'),
        "users[0].password_hash",
        "expected '*' and 40 hex digits",
        id="hash-not-hex",
    ),
]


@pytest.mark.parametrize(("text", "key", "reason"), BAD)
def test_bad_config_is_reported_with_file_key_and_reason(text, key, reason):
    errors = errors_of(text, source="/etc/baton/baton.toml")
    matching = [e for e in errors if e.startswith(f"/etc/baton/baton.toml: {key}")]
    assert matching, errors
    assert any(reason in e for e in matching), errors


def test_error_message_format_matches_the_schema():
    errors = errors_of(
        config_text(
            backends=BACKEND.replace("db1", "db0").replace("3306", "1")
            + BACKEND.replace("3306", "2")
            + '[[backends]]\nname = "db3"\naddress = "db3"\n'
        )
    )
    assert errors[0].startswith("config.toml: backends[2].address: expected HOST:PORT (")
    assert errors[0].endswith(", got 'db3'")


def test_all_errors_are_reported_not_just_the_first():
    text = config_text(
        "[proxy]\nmax_backend_connections = true\nlistn = 1",
        '[routing]\nconsistency = "strong"',
        backends=BACKEND + "weight = -1\n" + BACKEND,
        users='[[users]]\nname = "app"\n',
    )
    errors = errors_of(text)
    keys = [e.split(": ")[1] for e in errors]
    assert keys == [
        "proxy.max_backend_connections",
        "proxy.listn",
        "routing.consistency",
        "backends[0].weight",
        "users[0].password",
        "backends[1].name",
        "backends[1].address",
    ]


def test_secrets_are_not_echoed_in_errors():
    secret = "*" + "s3cr3tZ" * 5
    errors = errors_of(config_text(users=f'[[users]]\nname = "app"\npassword_hash = "{secret}"\n'))
    assert "s3cr3tZ" not in "\n".join(errors)
    errors = errors_of(config_text('[admin]\npassword = ["hunter2"]'))
    assert errors == ["config.toml: admin.password: expected a string, got a value (array)"]


def test_valid_alternatives_are_accepted():
    """The counterparts of some BAD cases, so those fail for the stated reason only."""
    config = parse_config(
        config_text(
            '[proxy]\nlisten = "[::1]:6033"\nauth_plugin = "caching_sha2_password"\nserver_version = "8.0.36"',
            '[admin]\nlisten = "localhost:7032"',
            '[redis]\nurl = "unix:///run/redis.sock"',
            backends=BACKEND
            + 'role = "master"\nweight = 0\n'
            + BACKEND.replace("db1", "db-2.x").replace("3306", "65535"),
            users=f'[[users]]\nname = "app"\npassword_hash = "*{"ab" * 20}"\n',
        )
    )
    assert (config.proxy.host, config.proxy.port) == ("::1", 6033)
    assert config.backend("db-2.x").port == 65535
    assert config.user("app").password_hash == "*" + "AB" * 20  # normalised to PASSWORD()'s case


def test_missing_file_and_bad_encoding(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read: No such file"):
        load_config(tmp_path / "nope.toml")
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(config_text('[admin]\nuser = "é"').encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml: not UTF-8"):
        load_config(latin1)


# ---------------------------------------------------------------------------------------------
# TLS files


def write_cert(directory: Path, *, encrypt: bool = False) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "baton-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    encryption = (
        serialization.BestAvailableEncryption(b"pw") if encrypt else serialization.NoEncryption()
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return cert_path, key_path


def test_tls_paths_are_relative_to_the_config_file(tmp_path):
    cert, key = write_cert(tmp_path / "tls")
    path = tmp_path / "baton.toml"
    path.write_text(config_text('[proxy]\ntls_cert = "tls/cert.pem"\ntls_key = "tls/key.pem"'))
    config = load_config(path)
    assert config.proxy.tls_enabled
    assert (config.proxy.tls_cert, config.proxy.tls_key) == (str(cert), str(key))


def test_tls_key_not_matching_the_certificate_is_rejected(tmp_path):
    cert, _ = write_cert(tmp_path / "a")
    _, other_key = write_cert(tmp_path / "b")
    errors = errors_of(config_text(f'[proxy]\ntls_cert = "{cert}"\ntls_key = "{other_key}"'))
    assert len(errors) == 1 and errors[0].startswith("config.toml: proxy.tls_cert: cannot load")


def test_encrypted_tls_key_is_rejected_without_prompting(tmp_path):
    cert, key = write_cert(tmp_path, encrypt=True)
    errors = errors_of(config_text(f'[proxy]\ntls_cert = "{cert}"\ntls_key = "{key}"'))
    assert "unencrypted key" in errors[0]


# ---------------------------------------------------------------------------------------------
# Password hashes

# Captured from a throwaway MariaDB 10.11.19 with `SELECT PASSWORD('app'), PASSWORD('admin'),
# PASSWORD('s3cr3t pässwörd')` (mariadb client, utf8mb4).
MARIADB_PASSWORD = {
    "app": "*5BCB3E6AC345B435C7C2E6B7949A04CE6F6563D3",
    "admin": "*4ACFE3202A5FF5CF467898FC58AAB1D615029441",
    "s3cr3t pässwörd": "*AE047758F4518352DA197F35A867D4096F96D443",
}


@pytest.mark.parametrize("password", list(MARIADB_PASSWORD))
def test_native_hash_matches_mariadb_password_function(password):
    from_password = UserConfig(name="u", password=password).native_hash
    from_hash = UserConfig(name="u", password_hash=MARIADB_PASSWORD[password]).native_hash
    assert from_password == from_hash == bytes.fromhex(MARIADB_PASSWORD[password][1:])
    assert len(from_password) == 20


@given(st.text(min_size=1))
def test_native_hash_is_sha1_of_sha1(password):
    assert UserConfig(name="u", password=password).native_hash == native(password)


def test_hash_loaded_from_config_decodes_to_the_same_bytes():
    lower = MARIADB_PASSWORD["app"].lower()
    config = parse_config(
        config_text(users=f'[[users]]\nname = "app"\npassword_hash = "{lower}"\n')
    )
    assert config.user("app").native_hash == native("app")
    assert config.user("app").caching_sha2_hash is None
    password_user = UserConfig(name="u", password="app")
    assert (
        password_user.caching_sha2_hash == hashlib.sha256(hashlib.sha256(b"app").digest()).digest()
    )


def test_repr_hides_passwords():
    config = parse_config(
        config_text(
            '[monitor]\npassword = "m0n-secret"',
            '[admin]\npassword = "adm-secret"',
            users='[[users]]\nname = "app"\npassword = "app-secret"\n',
        )
    )
    shown = repr(config) + describe(config)
    for secret in ("m0n-secret", "adm-secret", "app-secret"):
        assert secret not in shown


# ---------------------------------------------------------------------------------------------
# parse_address

hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{1,8}){0,3}", fullmatch=True).filter(
        lambda h: not h.replace(".", "").isdigit()
    ),
)


@given(hosts, st.integers(1, 65535))
def test_any_valid_address_round_trips(host, port):
    parsed_host, parsed_port = parse_address(f"{host}:{port}", "k")
    assert parsed_port == port
    assert parsed_host == host.strip("[]")
    if host.startswith("["):
        assert ipaddress.ip_address(parsed_host) == ipaddress.ip_address(host.strip("[]"))


@given(st.integers().filter(lambda p: not 1 <= p <= 65535))
def test_ports_outside_range_are_rejected(port):
    with pytest.raises(ConfigError, match=r"^k: port must be a number from 1 to 65535"):
        parse_address(f"127.0.0.1:{port}", "k")


@given(st.text(max_size=40))
def test_arbitrary_text_parses_or_raises_config_error(text):
    try:
        host, port = parse_address(text, "k")
    except ConfigError as e:
        assert e.errors[0].startswith("k: ")
    else:
        assert 1 <= port <= 65535 and host


def test_empty_address_only_where_it_disables():
    assert parse_address("", "admin.listen", allow_empty=True) == ("", 0)
    with pytest.raises(ConfigError, match=r"^proxy\.listen: expected HOST:PORT"):
        parse_address("", "proxy.listen")


@given(st.integers(-(2**63), 2**63 - 1))
def test_weight_accepted_exactly_when_not_negative(weight):
    text = config_text(backends=BACKEND + f"weight = {weight}\n")
    if weight >= 0:
        assert parse_config(text).backends[0].weight == weight
    else:
        assert errors_of(text) == [f"config.toml: backends[0].weight: must be >= 0, got {weight}"]


# ---------------------------------------------------------------------------------------------
# describe and diff


def test_describe_lists_listeners_backends_users_and_modes():
    text = describe(load_config(EXAMPLE))
    for expected in (
        "127.0.0.1:6033",
        "127.0.0.1:6032",
        "127.0.0.1:6070",
        "consistency eventual",
        "mode follow",
        "users (1): app",
    ):
        assert expected in text
    assert any(
        line.split()[:3] == ["db1", "127.0.0.1:3306", "master"] for line in text.splitlines()
    )
    assert "never promoted" in next(line for line in text.splitlines() if "db3" in line)
    disabled = describe(parse_config(config_text('[admin]\nlisten = ""')))
    assert "admin     disabled" in disabled


def test_identical_configs_have_no_diff():
    old = load_config(EXAMPLE)
    reordered = dataclasses.replace(old, backends=tuple(reversed(old.backends)))
    diff = diff_configs(old, reordered)
    assert not diff and diff.summary() == "no changes"


def test_diff_reports_adds_removes_and_changes():
    old = parse_config(
        config_text(
            "[routing]\nmax_replication_lag_ms = 1000",
            backends=BACKEND + BACKEND.replace("db1", "db2").replace("3306", "3307"),
            users=USER + '[[users]]\nname = "bob"\npassword = "b"\n',
        )
    )
    new = parse_config(
        config_text(
            '[routing]\nmax_replication_lag_ms = 1000\nconsistency = "session"',
            '[proxy]\nlisten = "127.0.0.1:7033"',
            backends=BACKEND
            + "weight = 0\n"
            + BACKEND.replace("db1", "db3").replace("3306", "3308"),
            users='[[users]]\nname = "app"\npassword = "new-secret"\n[[users]]\nname = "carol"\npassword = "c"\n',
        )
    )
    diff = diff_configs(old, new)
    assert diff.backends_added == ("db3",)
    assert diff.backends_removed == ("db2",)
    assert diff.backends_changed == ("db1",)
    assert (diff.users_added, diff.users_removed, diff.users_changed) == (
        ("carol",),
        ("bob",),
        ("app",),
    )
    assert diff.settings_changed == (
        ("proxy.listen", "127.0.0.1:6033", "127.0.0.1:7033"),
        ("routing.consistency", "eventual", "session"),
        ("backends[db1].weight", 1, 0),
        ("users[app].password", "***", "***"),
    )
    assert diff.restart_required == ("proxy.listen",)
    summary = diff.summary()
    assert "backends: +db3 -db2 ~db1" in summary and "users: +carol -bob ~app" in summary
    assert "routing.consistency: 'eventual' -> 'session'" in summary
    assert "new-secret" not in summary and "new-secret" not in repr(diff)


def test_diff_masks_every_secret():
    old = parse_config(config_text('[redis]\nurl = "redis://:old-pw@127.0.0.1:6380/0"'))
    new = parse_config(
        config_text(
            '[redis]\nurl = "redis://u:new-pw@127.0.0.1:6380/0"',
            '[admin]\npassword = "new-admin"',
            '[monitor]\npassword = "new-monitor"',
            '[failover]\nreplication_user = "repl"\nreplication_password = "new-repl"',
            users=f'[[users]]\nname = "app"\npassword_hash = "{MARIADB_PASSWORD["admin"]}"\n',
        )
    )
    diff = diff_configs(old, new)
    assert dict((k, (a, b)) for k, a, b in diff.settings_changed) == {
        "admin.password": ("***", "***"),
        "monitor.password": ("***", "***"),
        "failover.replication_user": ("", "repl"),
        "failover.replication_password": ("", "***"),
        "redis.url": ("redis://:***@127.0.0.1:6380/0", "redis://u:***@127.0.0.1:6380/0"),
        "users[app].password": ("***", None),
        "users[app].password_hash": (None, "***"),
    }
    assert "redis.url" in diff.restart_required
    text = diff.summary() + repr(diff)
    secrets = ("old-pw", "new-pw", "new-admin", "new-monitor", "new-repl", MARIADB_PASSWORD["admin"])
    for secret in secrets:
        assert secret not in text
    assert "new-repl" not in repr(new.failover)


def test_every_config_field_is_compared_by_diff():
    """A field added to a section later must show up in diffs without touching diff_configs."""
    base = parse_config(config_text())
    for name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.metadata.get("derived"):
                continue
            value = getattr(getattr(base, name), f.name)
            changed = (
                (not value)
                if isinstance(value, bool)
                else (value + 1 if isinstance(value, int) else value + "x")
            )
            new = dataclasses.replace(
                base, **{name: dataclasses.replace(getattr(base, name), **{f.name: changed})}
            )
            keys = [k for k, _, _ in diff_configs(base, new).settings_changed]
            assert keys == [f"{name}.{f.name}"]
    assert set(LISTS) == {"backends", "users"} and isinstance(base, Config)
