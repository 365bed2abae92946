"""Baton's configuration: config.toml read into frozen dataclasses.

The contract is /work/notes/CONFIG_SCHEMA.md. Design choices:

* Frozen, slotted dataclasses. A Config is a value: the running proxy holds one reference, and
  SIGHUP reload builds a whole new Config, diffs it against the old one and swaps the reference.
  Nothing can half-apply a reload by mutating a shared object, and every coroutine holding the old
  Config still sees a consistent one.
* Validation happens once, here, so the rest of Baton never re-checks a port range or an enum.
  Derived values are computed here too (listen "HOST:PORT" is split into host/port; a backend
  without max_replication_lag_ms inherits [routing]'s value).
* Collect every error, do not stop at the first. Whoever fixes a config file (or a reload that was
  refused) wants the whole list in one go, each line naming file, key path and reason, and saying
  what would have been accepted.
* Defaults live in one place: the dataclass field defaults. The reader takes missing keys from
  them, so config.toml, the schema and the code cannot drift apart silently (a test checks that
  the documented example spells out exactly these defaults).
* Secrets never leave through repr(), error messages or diffs.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import ipaddress
import os
import re
import ssl
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "AdminConfig",
    "BackendConfig",
    "Config",
    "ConfigDiff",
    "ConfigError",
    "FailoverConfig",
    "LogConfig",
    "MetricsConfig",
    "MonitorConfig",
    "ProxyConfig",
    "RedisConfig",
    "RoutingConfig",
    "UserConfig",
    "describe",
    "diff_configs",
    "load_config",
    "parse_address",
    "parse_config",
]

AUTH_PLUGINS = ("mysql_native_password", "caching_sha2_password")
CONSISTENCY_MODES = ("eventual", "session")
FAILOVER_MODES = ("follow", "auto", "manual")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("kv", "json")
ROLES = ("master", "replica")
REDIS_SCHEMES = ("redis", "rediss", "unix")

# MySQL's own limits for max_allowed_packet.
MIN_PACKET = 1024
MAX_PACKET = 1024 * 1024 * 1024

# Metadata marking fields computed from another key (host/port from listen/address): they are
# not TOML keys and are left out of diffs, where the original string already shows the change.
_DERIVED = {"derived": True}
# Metadata marking secrets: hidden from repr() and masked in diffs.
_SECRET = {"secret": True}
MASK = "***"


class ConfigError(Exception):
    """The configuration is invalid. `errors` holds one line per problem found."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


# --------------------------------------------------------------------------------------------
# The configuration values


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    listen: str = "127.0.0.1:6033"
    host: str = field(default="127.0.0.1", metadata=_DERIVED)
    port: int = field(default=6033, metadata=_DERIVED)
    auth_plugin: str = "mysql_native_password"
    tls_cert: str = ""
    tls_key: str = ""
    compression: bool = True
    server_version: str = ""
    max_backend_connections: int = 100
    max_client_connections: int = 10000
    connect_timeout_ms: int = 1000
    max_allowed_packet: int = 64 * 1024 * 1024
    idle_backend_timeout_s: int = 300
    pid_file: str = ""
    shutdown_grace_s: int = 10
    # Processes accepting client connections (SO_REUSEPORT); 0 = "auto", one per core.
    workers: int = 0
    # Before login (see README, Security): time allowed for the whole login, and how many
    # connections may be at the login prompt at once, in all and per client address. These do
    # not count toward max_client_connections, which counts logged-in sessions.
    handshake_timeout_ms: int = 10_000
    max_unauthenticated_connections: int = 1000
    max_unauthenticated_per_address: int = 100
    # An address with this many failed logins in the window is refused (1129) until the oldest
    # leaves it; 0 = no throttling. The admin port has its own, stricter: 5 per 60 s.
    max_login_failures: int = 10
    login_failure_window_s: int = 60
    # After login (see README, Security): a client's unread replies past this many bytes, or
    # none of them read for this long, cut the session; pipelined commands queued behind the
    # running one, past these, are left unread in the socket.
    client_output_buffer_limit: int = 16 << 20
    client_write_timeout_s: int = 60
    max_queued_commands: int = 64
    max_queued_bytes: int = 16 << 20
    # Prepared statements open per session at once (error 1461 beyond; MySQL's
    # max_prepared_stmt_count is the same idea, server-wide).
    max_prepared_statements: int = 1024
    # Every client must log in over TLS (needs tls_cert); per user: [[users]] require_tls.
    require_tls: bool = False

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert)

    @property
    def worker_count(self) -> int:
        """How many processes serve clients: ``workers``, or the number of cores for "auto"."""
        return self.workers or os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: str = "127.0.0.1:6032"
    host: str = field(default="127.0.0.1", metadata=_DERIVED)
    port: int = field(default=6032, metadata=_DERIVED)
    user: str = "admin"
    password: str = field(default="admin", repr=False, metadata=_SECRET)

    @property
    def enabled(self) -> bool:
        return bool(self.listen)


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    user: str = "monitor"
    password: str = field(default="monitor", repr=False, metadata=_SECRET)
    interval_ms: int = 250
    timeout_ms: int = 500
    replication_interval_ms: int = 500
    connect_interval_ms: int = 2000
    failure_threshold: int = 3


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    read_write_split: bool = True
    fallback_to_master: bool = True
    read_only_trx_to_replica: bool = False
    max_replication_lag_ms: int = 1000
    consistency: str = "eventual"
    causal_read_timeout_ms: int = 500


@dataclass(frozen=True, slots=True)
class FailoverConfig:
    mode: str = "follow"
    buffer_window_ms: int = 10000
    buffer_max: int = 1000
    min_interval_s: int = 60
    auto_rejoin: bool = False
    fence_read_only: bool = True
    # Replication account for CHANGE MASTER when Baton repoints a server. "" = keep the
    # account the server already has (an old master has none: it needs these to rejoin).
    replication_user: str = ""
    replication_password: str = field(default="", repr=False, metadata=_SECRET)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str = "127.0.0.1:6070"
    host: str = field(default="127.0.0.1", metadata=_DERIVED)
    port: int = field(default=6070, metadata=_DERIVED)

    @property
    def enabled(self) -> bool:
        return bool(self.listen)


@dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str = field(default="", repr=False, metadata=_SECRET)  # may carry a password
    channel: str = "baton"
    instance_id: str = ""  # "" = hostname:pid, filled in by whoever joins the channel
    username: str = ""  # Redis ACL user ("" = the URL's, or none)
    password: str = field(default="", repr=False, metadata=_SECRET)
    tls_ca: str = ""  # CA file verifying a rediss:// server ("" = the system CAs)
    # HMAC key signing every record instances share; the loader fills it from secret_file or
    # the BATON_REDIS_SECRET environment variable when the key itself is absent.
    secret: str = field(default="", repr=False, metadata=_SECRET)
    secret_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.url)


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    format: str = "kv"


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str
    address: str
    host: str = field(metadata=_DERIVED)
    port: int = field(metadata=_DERIVED)
    role: str = "replica"  # a starting hint only: the monitor decides who is master
    weight: int = 1
    max_replication_lag_ms: int = 1000  # the loader fills in [routing]'s value when absent
    promotable: bool = True
    tls: bool = False
    # Whom Baton trusts to be this server (see README "Security"). tls_verify defaults to
    # true when tls_ca is set (the loader decides); without a CA it verifies against the
    # system's trusted CAs.
    tls_ca: str = ""
    tls_verify: bool = False
    tls_server_name: str = ""  # "" = the host of `address`
    tls_cert: str = ""  # client certificate, for accounts that REQUIRE X509
    tls_key: str = ""
    # caching_sha2_password full authentication without verified TLS encrypts the password to
    # this RSA public key (PEM file); asking the server for its key is refused unless allowed.
    server_public_key: str = ""
    get_server_public_key: bool = False

    @property
    def tls_settings(self) -> tuple[object, ...]:
        """Everything that decides how a login to this server is protected: a change to any of
        it means new connections (and a new TLS context)."""
        return (
            self.tls, self.tls_ca, self.tls_verify, self.tls_server_name or self.host,
            self.tls_cert, self.tls_key, self.server_public_key, self.get_server_public_key,
        )


@dataclass(frozen=True, slots=True)
class UserConfig:
    """A client account. Exactly one of password / password_hash is set (the loader checks)."""

    name: str
    password: str | None = field(default=None, repr=False, metadata=_SECRET)
    password_hash: str | None = field(default=None, repr=False, metadata=_SECRET)
    max_connections: int = 0  # client sessions of this user at once; 0 = unlimited
    max_backend_connections: int = 0  # its share of each backend's pool; 0 = the whole pool
    require_tls: bool = False  # this user logs in over TLS only (as MySQL's REQUIRE SSL)

    @property
    def login(self) -> tuple[object, ...]:
        """What a login as this user is checked against."""
        return (self.password, self.password_hash, self.require_tls)

    @property
    def native_hash(self) -> bytes:
        """SHA1(SHA1(password)), 20 bytes: what mysql_native_password verifies a scramble against.

        It is the binary form of MariaDB's PASSWORD() / mysql.user.authentication_string.
        Passwords are encoded as UTF-8, as clients using a utf8 charset send them.
        """
        if self.password is not None:
            return hashlib.sha1(hashlib.sha1(self.password.encode()).digest()).digest()
        if self.password_hash is not None:
            return bytes.fromhex(self.password_hash[1:])
        raise ValueError(f"user {self.name!r} has neither password nor password_hash")

    @property
    def caching_sha2_hash(self) -> bytes | None:
        """SHA256(SHA256(password)) for caching_sha2_password fast auth; None if only a
        mysql_native_password hash is configured (then only full auth can verify the client)."""
        if self.password is None:
            return None
        return hashlib.sha256(hashlib.sha256(self.password.encode()).digest()).digest()


@dataclass(frozen=True, slots=True)
class Config:
    backends: tuple[BackendConfig, ...]
    users: tuple[UserConfig, ...]
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    failover: FailoverConfig = field(default_factory=FailoverConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: str = field(default="config.toml", compare=False)
    # Name indexes: user lookup happens on every client login.
    _backends_by_name: dict[str, BackendConfig] = field(init=False, repr=False, compare=False)
    _users_by_name: dict[str, UserConfig] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_backends_by_name", {b.name: b for b in self.backends})
        object.__setattr__(self, "_users_by_name", {u.name: u for u in self.users})

    def backend(self, name: str) -> BackendConfig | None:
        return self._backends_by_name.get(name)

    def user(self, name: str) -> UserConfig | None:
        return self._users_by_name.get(name)

    @property
    def master_hint(self) -> BackendConfig | None:
        """The backend configured with role = "master", if any (the monitor has the last word)."""
        return next((b for b in self.backends if b.role == "master"), None)


# Sections in file order; each is a table whose keys are the dataclass's non-derived fields.
SECTIONS: dict[str, type] = {
    "proxy": ProxyConfig,
    "admin": AdminConfig,
    "monitor": MonitorConfig,
    "routing": RoutingConfig,
    "failover": FailoverConfig,
    "metrics": MetricsConfig,
    "redis": RedisConfig,
    "log": LogConfig,
}
LISTS: dict[str, type] = {"backends": BackendConfig, "users": UserConfig}

# Keys whose change a reload cannot apply by swapping the Config object alone: a listener must be
# rebound, the TLS context rebuilt, the Redis link reopened or the pid file moved. The reloader
# decides whether it does that live or asks for a restart.
RESTART_REQUIRED = frozenset(
    {
        "proxy.listen",
        "proxy.tls_cert",
        "proxy.tls_key",
        "proxy.pid_file",
        "proxy.workers",
        "admin.listen",
        "metrics.listen",
        "redis.url",
        "redis.channel",
        "redis.instance_id",
        "redis.username",
        "redis.password",
        "redis.tls_ca",
        "redis.secret",
        "redis.secret_file",
    }
)


def _keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if not f.metadata.get("derived")]


def _defaults(cls: type) -> dict[str, Any]:
    return {
        f.name: f.default
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING and not f.metadata.get("derived")
    }


# --------------------------------------------------------------------------------------------
# Addresses


class _Invalid(Exception):
    """A value was rejected; the message is the reason (the caller adds file and key)."""


_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_PORT = re.compile(r"[0-9]{1,5}")
_ADDRESS_FORMS = "HOST:PORT (e.g. '127.0.0.1:3306', 'db1.example:3306' or '[::1]:3306')"


def _split_address(text: str, *, allow_empty: bool) -> tuple[str, int]:
    accepted = _ADDRESS_FORMS + (', or "" to disable' if allow_empty else "")
    if text == "":
        if allow_empty:
            return "", 0
        raise _Invalid(f"expected {accepted}, got ''")
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise _Invalid(f"expected {accepted}, got {text!r}")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Invalid(f"{host!r} in brackets is not an IPv6 address; got {text!r}") from None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not host:
            raise _Invalid(f"expected {accepted}, got {text!r}")
        if ":" in host:
            raise _Invalid(f"IPv6 addresses need brackets, e.g. '[::1]:3306'; got {text!r}")
        _check_host(host, text)
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise _Invalid(f"port must be a number from 1 to 65535, got {port_text!r} in {text!r}")
    return host, int(port_text)


def _check_host(host: str, text: str) -> None:
    labels = host.split(".")
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise _Invalid(f"{host!r} is not a valid host name or IPv4 address; got {text!r}")
    if all(label.isdigit() for label in labels):  # looks numeric: must then be real IPv4
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise _Invalid(f"{host!r} is not a valid IPv4 address; got {text!r}") from None


def parse_address(text: str, key: str, *, allow_empty: bool = False) -> tuple[str, int]:
    """Split "HOST:PORT" / "[IPV6]:PORT" into (host, port); IPv6 hosts come back unbracketed.

    With allow_empty, "" is accepted and returns ("", 0), meaning "disabled".
    Raises ConfigError naming `key`.
    """
    try:
        return _split_address(text, allow_empty=allow_empty)
    except _Invalid as e:
        raise ConfigError([f"{key}: {e}"]) from None


# --------------------------------------------------------------------------------------------
# Reading TOML tables


def _toml_type(value: object) -> str:
    names = {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        list: "array",
        dict: "table",
    }
    return names.get(type(value), "date/time")


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Table:
    """Reads one TOML table against a dataclass `schema` (its non-derived fields are the keys,
    its field defaults the defaults). Problems are reported, not raised, and a stand-in value is
    returned so that reading goes on and every problem in the file gets listed."""

    def __init__(
        self,
        table: Mapping[str, Any],
        path: str,
        report: Callable[[str, str], None],
        schema: type,
    ) -> None:
        self._table = table
        self.path = path
        self.report = report
        self._defaults = _defaults(schema)
        self._accepted = _keys(schema)

    def key(self, name: str) -> str:
        return f"{self.path}.{name}"

    def present(self, name: str) -> bool:
        return name in self._table

    def _get(self, name: str, check: Callable[[Any], Any], stand_in: Any) -> Any:
        """The value of `name` passed through `check` (which raises _Invalid); the default when
        the key is absent; `stand_in` when it is absent without a default, or invalid."""
        if name not in self._table:
            if name in self._defaults:
                return self._defaults[name]
            self.report(self.key(name), "missing; this key is required")
            return stand_in
        try:
            return check(self._table[name])
        except _Invalid as e:
            self.report(self.key(name), str(e))
            return stand_in

    def integer(
        self, name: str, *, minimum: int, maximum: int | None = None, default: int | None = None
    ) -> int:
        if default is not None and name not in self._table:
            return default

        def check(value: Any) -> int:
            if type(value) is not int:  # bool is an int subclass: true is not 1 here
                raise _Invalid(f"expected an integer, got {_show(value)} ({_toml_type(value)})")
            if maximum is not None and not minimum <= value <= maximum:
                raise _Invalid(f"must be from {minimum} to {maximum}, got {value}")
            if value < minimum:
                raise _Invalid(f"must be >= {minimum}, got {value}")
            return value

        return self._get(name, check, minimum)

    def flag(self, name: str, *, default: bool | None = None) -> bool:
        if default is not None and name not in self._table:
            return default

        def check(value: Any) -> bool:
            if type(value) is not bool:
                raise _Invalid(f"expected true or false, got {_show(value)} ({_toml_type(value)})")
            return value

        return self._get(name, check, False)

    def text(
        self,
        name: str,
        *,
        choices: tuple[str, ...] = (),
        nonempty: bool = False,
        secret: bool = False,
        check: Callable[[str], None] | None = None,
    ) -> str:
        def read(value: Any) -> str:
            expected = "one of " + ", ".join(repr(c) for c in choices) if choices else "a string"
            if type(value) is not str:
                shown = "a value" if secret else _show(value)
                raise _Invalid(f"expected {expected}, got {shown} ({_toml_type(value)})")
            if choices and value not in choices:
                raise _Invalid(f"expected {expected}; got {_show(value)}")
            if nonempty and not value:
                raise _Invalid("must not be empty")
            if "\0" in value:
                raise _Invalid("must not contain NUL characters")
            if check is not None:
                check(value)
            return value

        return self._get(name, read, "")

    def address(self, name: str, *, allow_empty: bool = False) -> tuple[str, str, int]:
        """(original text, host, port)."""

        def read(value: Any) -> tuple[str, str, int]:
            if type(value) is not str:
                raise _Invalid(
                    f"expected a string {_ADDRESS_FORMS}, got {_show(value)} ({_toml_type(value)})"
                )
            return (value, *_split_address(value, allow_empty=allow_empty))

        if name not in self._table and name in self._defaults:
            default = self._defaults[name]
            return (default, *_split_address(default, allow_empty=True))
        return self._get(name, read, ("", "", 0))

    def finish(self) -> None:
        for name in self._table:
            if name not in self._accepted:
                self.report(self.key(name), _unknown_key(name, self._accepted))


def _unknown_key(name: str, accepted: list[str], what: str = "key") -> str:
    hint = difflib.get_close_matches(name, accepted, n=1)
    did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
    return f"unknown {what}{did_you_mean}; accepted {what}s: {', '.join(accepted)}"


# --------------------------------------------------------------------------------------------
# One reader per section: the rules for each key are spelled out here, next to each other.


def _read_proxy(t: _Table, base: Path) -> ProxyConfig:
    listen, host, port = t.address("listen")
    tls_cert, tls_key = _check_tls(t, t.text("tls_cert"), t.text("tls_key"), base)
    return ProxyConfig(
        listen=listen,
        host=host,
        port=port,
        auth_plugin=t.text("auth_plugin", choices=AUTH_PLUGINS),
        tls_cert=tls_cert,
        tls_key=tls_key,
        compression=t.flag("compression"),
        server_version=t.text("server_version", check=_check_server_version),
        max_backend_connections=t.integer("max_backend_connections", minimum=1),
        max_client_connections=t.integer("max_client_connections", minimum=1),
        connect_timeout_ms=t.integer("connect_timeout_ms", minimum=1),
        max_allowed_packet=t.integer("max_allowed_packet", minimum=MIN_PACKET, maximum=MAX_PACKET),
        idle_backend_timeout_s=t.integer("idle_backend_timeout_s", minimum=1),
        pid_file=t.text("pid_file"),
        shutdown_grace_s=t.integer("shutdown_grace_s", minimum=0),
        handshake_timeout_ms=t.integer("handshake_timeout_ms", minimum=100, maximum=3_600_000),
        max_unauthenticated_connections=t.integer("max_unauthenticated_connections", minimum=1),
        max_unauthenticated_per_address=t.integer("max_unauthenticated_per_address", minimum=1),
        max_login_failures=t.integer("max_login_failures", minimum=0),
        login_failure_window_s=t.integer("login_failure_window_s", minimum=1, maximum=86_400),
        client_output_buffer_limit=t.integer("client_output_buffer_limit", minimum=64 << 10),
        client_write_timeout_s=t.integer("client_write_timeout_s", minimum=1),
        max_queued_commands=t.integer("max_queued_commands", minimum=1),
        max_queued_bytes=t.integer("max_queued_bytes", minimum=MIN_PACKET),
        max_prepared_statements=t.integer("max_prepared_statements", minimum=1),
        require_tls=_require_tls(t, bool(tls_cert)),
        workers=_read_workers(t),
    )


MAX_WORKERS = 256


def _read_workers(t: _Table) -> int:
    """``workers = N`` (1 to MAX_WORKERS) or "auto" (also 0): one worker per core."""

    def check(value: Any) -> int:
        if value == "auto":
            return 0
        if type(value) is not int:
            raise _Invalid(f'expected "auto" or an integer, got {_show(value)} ({_toml_type(value)})')
        if not 0 <= value <= MAX_WORKERS:
            raise _Invalid(f'must be from 1 to {MAX_WORKERS}, or "auto" (0 also means "auto"), got {value}')
        return value

    workers: int = t._get("workers", check, 1)
    return workers


def _require_tls(t: _Table, tls_enabled: bool) -> bool:
    """``require_tls`` of [proxy] or a [[users]] entry: only with client TLS configured."""
    required = t.flag("require_tls")
    if required and not tls_enabled:
        t.report(
            t.key("require_tls"),
            "client TLS is not configured: set [proxy] tls_cert and tls_key, or require_tls = false",
        )
        return False
    return required


def _check_server_version(value: str) -> None:
    if not value.isprintable() or not value.isascii():
        raise _Invalid("must be printable ASCII (clients parse it), e.g. '10.11.6-MariaDB'")


def _check_tls(t: _Table, cert: str, key: str, base: Path) -> tuple[str, str]:
    """Both or neither; relative paths are taken from the config file's directory; the pair is
    loaded once here so that a wrong path or a mismatched key fails at check time, not at the
    first client's TLS handshake."""
    if not cert and not key:
        return "", ""
    if not cert or not key:
        missing, given = ("tls_key", "tls_cert") if cert else ("tls_cert", "tls_key")
        t.report(
            t.key(missing),
            f"{given} is set but {missing} is not; set both (PEM files) or neither (TLS off)",
        )
        return "", ""
    cert_path, key_path = (str(p if p.is_absolute() else base / p) for p in (Path(cert), Path(key)))
    for name, path in (("tls_cert", cert_path), ("tls_key", key_path)):
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            t.report(t.key(name), f"cannot read {path!r}: {e.strerror or e}")
            return "", ""
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # A passphrase callback that gives none: an encrypted key fails instead of prompting.
        context.load_cert_chain(cert_path, key_path, password=lambda: b"")
    except (ssl.SSLError, ValueError, OSError) as e:
        t.report(
            t.key("tls_cert"),
            f"cannot load certificate {cert_path!r} with key {key_path!r} "
            f"({e}); expected PEM files, an unencrypted key matching the "
            "certificate",
        )
        return "", ""
    return cert_path, key_path


def _read_admin(t: _Table, base: Path) -> AdminConfig:
    listen, host, port = t.address("listen", allow_empty=True)
    return AdminConfig(
        listen=listen,
        host=host,
        port=port,
        user=t.text("user", nonempty=True),
        password=t.text("password", secret=True),
    )


def _read_monitor(t: _Table, base: Path) -> MonitorConfig:
    return MonitorConfig(
        user=t.text("user", nonempty=True),
        password=t.text("password", secret=True),
        interval_ms=t.integer("interval_ms", minimum=1),
        timeout_ms=t.integer("timeout_ms", minimum=1),
        replication_interval_ms=t.integer("replication_interval_ms", minimum=1),
        connect_interval_ms=t.integer("connect_interval_ms", minimum=1),
        failure_threshold=t.integer("failure_threshold", minimum=1),
    )


def _read_routing(t: _Table, base: Path) -> RoutingConfig:
    return RoutingConfig(
        read_write_split=t.flag("read_write_split"),
        fallback_to_master=t.flag("fallback_to_master"),
        read_only_trx_to_replica=t.flag("read_only_trx_to_replica"),
        max_replication_lag_ms=t.integer("max_replication_lag_ms", minimum=0),
        consistency=t.text("consistency", choices=CONSISTENCY_MODES),
        causal_read_timeout_ms=t.integer("causal_read_timeout_ms", minimum=0),
    )


def _read_failover(t: _Table, base: Path) -> FailoverConfig:
    return FailoverConfig(
        mode=t.text("mode", choices=FAILOVER_MODES),
        buffer_window_ms=t.integer("buffer_window_ms", minimum=0),
        buffer_max=t.integer("buffer_max", minimum=0),
        min_interval_s=t.integer("min_interval_s", minimum=0),
        auto_rejoin=t.flag("auto_rejoin"),
        fence_read_only=t.flag("fence_read_only"),
        replication_user=t.text("replication_user"),
        replication_password=t.text("replication_password", secret=True),
    )


def _read_metrics(t: _Table, base: Path) -> MetricsConfig:
    listen, host, port = t.address("listen", allow_empty=True)
    return MetricsConfig(listen=listen, host=host, port=port)


def _check_redis_url(value: str) -> None:
    if value and urlsplit(value).scheme not in REDIS_SCHEMES:
        raise _Invalid(
            'expected a redis://, rediss:// or unix:// URL, or "" to disable; '
            f"got scheme {urlsplit(value).scheme!r}"
        )


# Where the coordination secret comes from when neither secret nor secret_file is set, so
# that it need not be written in config.toml at all.
REDIS_SECRET_ENV = "BATON_REDIS_SECRET"
MIN_SECRET_BYTES = 16


def _read_redis(t: _Table, base: Path) -> RedisConfig:
    url = t.text("url", secret=True, check=_check_redis_url)
    tls_ca = t.text("tls_ca")
    if tls_ca:
        tls_ca = str(Path(tls_ca) if Path(tls_ca).is_absolute() else base / tls_ca)
        if not os.access(tls_ca, os.R_OK):
            t.report(t.key("tls_ca"), f"cannot read {tls_ca!r}")
        elif urlsplit(url).scheme != "rediss":
            t.report(t.key("tls_ca"), "set, but url is not a rediss:// URL (TLS is off)")
    return RedisConfig(
        url=url,
        channel=t.text("channel", nonempty=True),
        instance_id=t.text("instance_id"),
        username=t.text("username"),
        password=t.text("password", secret=True),
        tls_ca=tls_ca,
        secret=_redis_secret(t, base),
        secret_file=t.text("secret_file"),
    )


def _redis_secret(t: _Table, base: Path) -> str:
    """secret, else secret_file's content (outer whitespace stripped), else $BATON_REDIS_SECRET,
    else "" (the cluster then runs unauthenticated, with a warning at start)."""
    secret, path = t.text("secret", secret=True), t.text("secret_file")
    if secret and path:
        t.report(t.key("secret"), "both secret and secret_file are set; set one")
        return ""
    where = t.key("secret")
    if path:
        full = Path(path) if Path(path).is_absolute() else base / path
        where = t.key("secret_file")
        try:
            secret = full.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            t.report(where, f"cannot read {str(full)!r}: {getattr(e, 'strerror', None) or e}")
            return ""
    elif not secret:
        where, secret = f"{REDIS_SECRET_ENV} (environment)", os.environ.get(REDIS_SECRET_ENV, "")
    if secret and len(secret.encode()) < MIN_SECRET_BYTES:
        t.report(
            where,
            f"a secret of at least {MIN_SECRET_BYTES} bytes is required, got "
            f"{len(secret.encode())}; e.g. openssl rand -hex 32",
        )
        return ""
    return secret


def _read_log(t: _Table, base: Path) -> LogConfig:
    return LogConfig(
        level=t.text("level", choices=LOG_LEVELS), format=t.text("format", choices=LOG_FORMATS)
    )


_BACKEND_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _check_backend_name(value: str) -> None:
    # Names appear in admin commands, metric labels and log lines: keep them plain.
    if not _BACKEND_NAME.fullmatch(value):
        raise _Invalid(
            "expected 1-64 letters, digits, '_', '.', '-' (starting with a letter or "
            f"digit), got {_show(value)}"
        )


def _read_backend(t: _Table, routing: RoutingConfig, base: Path) -> BackendConfig:
    name = t.text("name", check=_check_backend_name)
    address, host, port = t.address("address")
    return BackendConfig(
        name=name,
        address=address,
        host=host,
        port=port,
        role=t.text("role", choices=ROLES),
        weight=t.integer("weight", minimum=0),
        max_replication_lag_ms=t.integer(
            "max_replication_lag_ms", minimum=0, default=routing.max_replication_lag_ms
        ),
        promotable=t.flag("promotable"),
        **_read_backend_security(t, base),
    )


def _read_backend_security(t: _Table, base: Path) -> dict[str, Any]:
    """The TLS and RSA-key keys of a backend; files are read now so a wrong path fails here."""
    tls = t.flag("tls")
    tls_ca = _readable_path(t, "tls_ca", base)
    tls_verify = t.flag("tls_verify", default=bool(tls_ca))
    tls_cert, tls_key = _check_tls(t, t.text("tls_cert"), t.text("tls_key"), base)
    tls_server_name = t.text("tls_server_name")
    server_public_key = _readable_path(t, "server_public_key", base)
    if server_public_key:
        _check_public_key(t, server_public_key)
    if not tls:
        given = {"tls_ca": tls_ca, "tls_verify": tls_verify, "tls_server_name": tls_server_name,
                 "tls_cert": tls_cert}
        for name, value in given.items():
            if value:
                t.report(t.key(name), f"{name} is set but tls is false; set tls = true to use it")
    if tls_ca:
        try:
            ssl.create_default_context(cafile=tls_ca)
        except (ssl.SSLError, ValueError, OSError) as e:
            t.report(t.key("tls_ca"), f"cannot load CA certificates from {tls_ca!r} ({e}); "
                     "expected a PEM file of one or more certificates")
    return {
        "tls": tls,
        "tls_ca": tls_ca,
        "tls_verify": tls_verify,
        "tls_server_name": tls_server_name,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "server_public_key": server_public_key,
        "get_server_public_key": t.flag("get_server_public_key"),
    }


def _readable_path(t: _Table, name: str, base: Path) -> str:
    """A file path key: relative to the config file's directory; reported if unreadable."""
    value = t.text(name)
    if not value:
        return ""
    path = str(Path(value) if Path(value).is_absolute() else base / value)
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        t.report(t.key(name), f"cannot read {path!r}: {e.strerror or e}")
        return ""
    return path


def _check_public_key(t: _Table, path: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (ValueError, TypeError) as e:
        t.report(t.key("server_public_key"), f"{path!r} is not a PEM public key ({e})")
        return
    if not isinstance(key, rsa.RSAPublicKey):
        t.report(t.key("server_public_key"), f"{path!r} is not an RSA public key")


_NATIVE_HASH = re.compile(r"\*[0-9A-Fa-f]{40}")


def _check_user_name(value: str) -> None:
    if len(value) > 80:
        raise _Invalid(f"MariaDB user names are at most 80 characters, got {len(value)}")


def _check_native_hash(value: str) -> None:
    if not _NATIVE_HASH.fullmatch(value):
        raise _Invalid(
            "expected '*' and 40 hex digits, as SELECT PASSWORD('...') prints; "
            f"got {len(value)} characters"
        )


def _read_user(t: _Table, proxy: ProxyConfig) -> UserConfig:
    name = t.text("name", nonempty=True, check=_check_user_name)
    has_password, has_hash = t.present("password"), t.present("password_hash")
    password = t.text("password", secret=True, nonempty=True) if has_password else None
    password_hash = (
        t.text("password_hash", secret=True, check=_check_native_hash) if has_hash else None
    )
    if has_password == has_hash:
        t.report(
            t.key("password"),
            f"{'both password and' if has_password else 'neither password nor'} password_hash "
            "given; set exactly one",
        )
    return UserConfig(
        name=name,
        password=password,
        password_hash=password_hash.upper() if password_hash else None,
        max_connections=t.integer("max_connections", minimum=0),
        max_backend_connections=_backend_share(t, proxy),
        require_tls=_require_tls(t, proxy.tls_enabled),
    )


def _backend_share(t: _Table, proxy: ProxyConfig) -> int:
    share = t.integer("max_backend_connections", minimum=0)
    if share > proxy.max_backend_connections:
        t.report(
            t.key("max_backend_connections"),
            f"must be <= [proxy] max_backend_connections ({proxy.max_backend_connections}), "
            f"the size of each backend's pool that this is a share of; got {share}",
        )
        return 0
    return share


_SECTION_READERS: dict[str, Callable[[_Table, Path], Any]] = {
    "proxy": _read_proxy,
    "admin": _read_admin,
    "monitor": _read_monitor,
    "routing": _read_routing,
    "failover": _read_failover,
    "metrics": _read_metrics,
    "redis": _read_redis,
    "log": _read_log,
}


# --------------------------------------------------------------------------------------------
# Whole file


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; raises ConfigError listing every problem."""
    source = os.fspath(path)
    try:
        text = Path(source).read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError([f"{source}: cannot read: {e.strerror or e}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{source}: not UTF-8 text (byte {e.start})"]) from None
    return parse_config(text, source)


_TOML_POSITION = re.compile(
    r"^(?P<reason>.*) \((?:at line (?P<line>\d+), column (?P<col>\d+)|(?P<end>at end of document))\)$"
)


def parse_config(text: str, source: str = "config.toml") -> Config:
    """Validate TOML text; `source` names the file in messages and anchors relative TLS paths."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        match = _TOML_POSITION.match(str(e))
        if match:
            where = (
                "end of file" if match["end"] else f"line {match['line']}, column {match['col']}"
            )
            raise ConfigError([f"{source}: {where}: invalid TOML: {match['reason']}"]) from None
        raise ConfigError([f"{source}: invalid TOML: {e}"]) from None

    errors: list[str] = []

    def report(key: str, reason: str) -> None:
        errors.append(f"{source}: {key}: {reason}")

    base = Path(source).parent
    for name in document:
        if name not in SECTIONS and name not in LISTS:
            report(name, _unknown_key(name, [*SECTIONS, *LISTS], "section"))

    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        value = document.get(name, {})
        if not isinstance(value, dict):
            report(name, f"expected a table [{name}], got {_show(value)} ({_toml_type(value)})")
            value = {}
        table = _Table(value, name, report, cls)
        sections[name] = _SECTION_READERS[name](table, base)
        table.finish()

    routing = sections["routing"]
    backends = _read_list(document, "backends", lambda t: _read_backend(t, routing, base), report)
    users = _read_list(document, "users", lambda t: _read_user(t, sections["proxy"]), report)
    _check_backends(backends, report)
    _check_unique("users", [u.name for u in users], report)
    _check_listeners(sections, report)
    _check_admin_credentials(sections["admin"], report)
    if errors:
        raise ConfigError(errors)
    return Config(backends=backends, users=users, source=source, **sections)


def _read_list(
    document: dict[str, Any],
    name: str,
    read: Callable[[_Table], Any],
    report: Callable[[str, str], None],
) -> tuple[Any, ...]:
    """Read every [[name]] table; report a missing, empty or malformed list."""
    if name not in document:
        report(name, f"missing; define at least one [[{name}]] table")
        return ()
    value = document[name]
    if isinstance(value, dict):
        report(name, f"expected an array of tables [[{name}]], got a single table [{name}]")
        return ()
    if not isinstance(value, list):
        report(
            name,
            f"expected an array of tables [[{name}]], got {_show(value)} ({_toml_type(value)})",
        )
        return ()
    if not value:
        report(name, f"must not be empty; add at least one [[{name}]] table")
    items = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            report(f"{name}[{index}]", f"expected a table, got {_show(item)} ({_toml_type(item)})")
            continue
        table = _Table(item, f"{name}[{index}]", report, LISTS[name])
        items.append(read(table))
        table.finish()
    return tuple(items)


def _check_unique(
    name: str,
    keys: list[Any],
    report: Callable[[str, str], None],
    field_name: str = "name",
    shown: list[str] | None = None,
) -> None:
    first: dict[Any, int] = {}
    for index, key in enumerate(keys):
        if not key:  # missing or invalid: already reported
            continue
        if key in first:
            label = shown[index] if shown else key
            report(
                f"{name}[{index}].{field_name}",
                f"duplicate {field_name} {label!r} (also {name}[{first[key]}]); "
                f"each {field_name} may appear once",
            )
        else:
            first[key] = index


def _check_backends(
    backends: tuple[BackendConfig, ...], report: Callable[[str, str], None]
) -> None:
    _check_unique("backends", [b.name for b in backends], report)
    _check_unique(
        "backends",
        [(b.host.lower(), b.port) if b.host else None for b in backends],
        report,
        field_name="address",
        shown=[b.address for b in backends],
    )
    masters = [i for i, b in enumerate(backends) if b.role == "master"]
    for index in masters[1:]:
        report(
            f"backends[{index}].role",
            f'only one backend may have role = "master" (backends[{masters[0]}] '
            f'{backends[masters[0]].name!r} already has it); use "replica", or leave every '
            'role as "replica" and let the monitor find the master',
        )


_WILDCARDS = ("0.0.0.0", "::")


def _check_listeners(sections: dict[str, Any], report: Callable[[str, str], None]) -> None:
    """Two of Baton's own listeners on one port would fail at bind time; say so now."""
    taken: list[tuple[str, str, int]] = []
    for name in ("proxy", "admin", "metrics"):
        section = sections[name]
        if not section.port:
            continue
        for other, host, port in taken:
            if port == section.port and (
                host == section.host or {host, section.host} & set(_WILDCARDS)
            ):
                report(
                    f"{name}.listen",
                    f"{section.listen!r} clashes with {other}.listen; "
                    "give each listener its own port",
                )
        taken.append((name, section.host, section.port))


def is_loopback(host: str) -> bool:
    """Only this machine can reach a listener on ``host`` (a name other than localhost may
    resolve to anything; a wildcard listens everywhere)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_admin_credentials(admin: AdminConfig, report: Callable[[str, str], None]) -> None:
    """The admin console can promote, kill and shut down: off loopback, its password must be
    neither empty nor the well-known default."""
    if not admin.enabled or is_loopback(admin.host):
        return
    default = AdminConfig().password
    weak = "an empty password" if not admin.password else (
        f"the default password {default!r}" if admin.password == default else ""
    )
    if weak:
        report(
            "admin.password",
            f"admin.listen {admin.listen!r} is not a loopback address and the admin console "
            f"has {weak}; set a strong admin.password, or listen on 127.0.0.1",
        )


# --------------------------------------------------------------------------------------------
# Summary and diff


def describe(config: Config) -> str:
    """The human summary `baton check-config` prints. Never shows a password."""
    p, r, f, m = config.proxy, config.routing, config.failover, config.monitor
    on = {True: "on", False: "off"}
    redis = "disabled"
    if config.redis.enabled:
        signed = "signed" if config.redis.secret else "UNSIGNED: set secret"
        redis = f"{_mask_url(config.redis.url)}  channel {config.redis.channel}  {signed}"
    lines = [
        f"Baton configuration from {config.source}",
        f"  proxy     {p.listen}  auth {p.auth_plugin}, client TLS {on[p.tls_enabled]}, "
        f"{p.max_client_connections} clients max, {p.max_backend_connections} connections per backend, "
        f"{p.worker_count} worker{'s' if p.worker_count > 1 else ''}" + (" (auto)" if not p.workers else ""),
        f"  admin     {config.admin.listen or 'disabled'}"
        + (f"  (user {config.admin.user})" if config.admin.enabled else ""),
        f"  metrics   {config.metrics.listen or 'disabled'}",
        f"  redis     {redis}",
        f"  monitor   user {m.user}, probe every {m.interval_ms} ms (timeout {m.timeout_ms} ms), "
        f"down after {m.failure_threshold} failures",
        f"  routing   read/write split {on[r.read_write_split]}, consistency {r.consistency}, "
        f"max lag {r.max_replication_lag_ms} ms, fallback to master {on[r.fallback_to_master]}",
        f"  failover  mode {f.mode}, hold queries up to {f.buffer_window_ms} ms / {f.buffer_max} queries, "
        f"auto rejoin {on[f.auto_rejoin]}, fence old master {on[f.fence_read_only]}",
        f"  log       {config.log.level}, {config.log.format}",
        f"backends ({len(config.backends)}):",
    ]
    width = max(len(b.name) for b in config.backends) if config.backends else 0
    addr_width = max(len(b.address) for b in config.backends) if config.backends else 0
    for b in config.backends:
        traits = [f"max lag {b.max_replication_lag_ms} ms"]
        traits += ["promotable"] if b.promotable else ["never promoted"]
        traits += [("TLS, verified" if b.tls_verify else "TLS, not verified")] if b.tls else []
        lines.append(
            f"  {b.name:<{width}}  {b.address:<{addr_width}}  {b.role:<7}  weight {b.weight}, "
            + ", ".join(traits)
        )
    lines.append(
        f"users ({len(config.users)}): " + ", ".join(_user_summary(u) for u in config.users)
    )
    return "\n".join(lines)


def _user_summary(user: UserConfig) -> str:
    limits = []
    if user.max_connections:
        limits.append(f"{user.max_connections} sessions max")
    if user.max_backend_connections:
        limits.append(f"{user.max_backend_connections} connections per backend")
    return f"{user.name} ({', '.join(limits)})" if limits else user.name


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    """What a reload would change. `settings_changed` holds (key path, old, new) for every
    changed value, backend and user fields included (as backends[db2].weight), secrets masked;
    `restart_required` lists the changed keys that need more than a swap (see RESTART_REQUIRED)."""

    backends_added: tuple[str, ...] = ()
    backends_removed: tuple[str, ...] = ()
    backends_changed: tuple[str, ...] = ()
    users_added: tuple[str, ...] = ()
    users_removed: tuple[str, ...] = ()
    users_changed: tuple[str, ...] = ()
    settings_changed: tuple[tuple[str, object, object], ...] = ()
    restart_required: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in dataclasses.fields(self))

    def summary(self) -> str:
        if not self:
            return "no changes"
        lines = []
        for kind in ("backends", "users"):
            marks = [
                *(f"+{n}" for n in getattr(self, f"{kind}_added")),
                *(f"-{n}" for n in getattr(self, f"{kind}_removed")),
                *(f"~{n}" for n in getattr(self, f"{kind}_changed")),
            ]
            if marks:
                lines.append(f"{kind}: {' '.join(marks)}")
        lines += [
            f"{key}: {_shown(old)} -> {_shown(new)}" for key, old, new in self.settings_changed
        ]
        if self.restart_required:
            lines.append("needs listeners/links rebuilt: " + ", ".join(self.restart_required))
        return "\n".join(lines)


def _shown(value: object) -> str:
    return MASK if value == MASK else "(unset)" if value is None else _show(value)


def _mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return parts._replace(netloc=f"{user}:{MASK}@{hostinfo}").geturl()


def _masked(f: dataclasses.Field[Any], value: object) -> object:
    if not f.metadata.get("secret") or value is None or value == "":
        return value
    return _mask_url(value) if f.name == "url" and isinstance(value, str) else MASK


def _field_changes(
    prefix: str, old: DataclassInstance, new: DataclassInstance
) -> list[tuple[str, object, object]]:
    changes = []
    for f in dataclasses.fields(old):
        if f.metadata.get("derived"):
            continue
        before, after = getattr(old, f.name), getattr(new, f.name)
        if before != after:
            changes.append((f"{prefix}.{f.name}", _masked(f, before), _masked(f, after)))
    return changes


def _list_diff(
    old: tuple[Any, ...], new: tuple[Any, ...], kind: str
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], list[tuple[str, object, object]]]:
    before, after = {x.name: x for x in old}, {x.name: x for x in new}
    added = tuple(n for n in after if n not in before)
    removed = tuple(n for n in before if n not in after)
    changed = tuple(n for n in after if n in before and before[n] != after[n])
    changes = [c for n in changed for c in _field_changes(f"{kind}[{n}]", before[n], after[n])]
    return added, removed, changed, changes


def users_logged_out(old: Config, new: Config) -> frozenset[str]:
    """Users whose open sessions a reload ends: removed, or logging in differently now
    (password, hash or require_tls changed). Limits apply to the next login without that."""
    after = {u.name: u for u in new.users}
    return frozenset(
        u.name for u in old.users if u.name not in after or after[u.name].login != u.login
    )


def diff_configs(old: Config, new: Config) -> ConfigDiff:
    """Compare two configs by name (a backend moved in the file is not a change)."""
    settings = [
        c for name in SECTIONS for c in _field_changes(name, getattr(old, name), getattr(new, name))
    ]
    b_added, b_removed, b_changed, b_changes = _list_diff(old.backends, new.backends, "backends")
    u_added, u_removed, u_changed, u_changes = _list_diff(old.users, new.users, "users")
    return ConfigDiff(
        backends_added=b_added,
        backends_removed=b_removed,
        backends_changed=b_changed,
        users_added=u_added,
        users_removed=u_removed,
        users_changed=u_changed,
        settings_changed=tuple(settings + b_changes + u_changes),
        restart_required=tuple(key for key, _, _ in settings if key in RESTART_REQUIRED),
    )
