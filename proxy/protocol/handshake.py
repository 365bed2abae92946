"""Connection-phase state machines, one per side. Sans-I/O: packets in, actions out.

``ServerHandshake`` is Baton acting as a server towards an application; ``ClientHandshake`` is
Baton logging into a backend. Each ``receive(seq, payload)`` returns a list of actions for the
glue to carry out in order: ``Send`` (framed bytes), ``StartTLS`` (upgrade the transport before
the next action), and finally ``Authenticated``/``Ready`` or ``Failed``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa

from . import auth, ed25519
from .constants import (
    CACHING_SHA2_PASSWORD,
    CHARSET_UTF8MB4_GENERAL_CI,
    ED25519,
    NATIVE_PASSWORD,
    SUPPORTED_CAPABILITIES,
    Capability,
    ServerStatus,
)
from .framing import frame
from .packets import (
    AuthSwitchRequest,
    ErrPacket,
    Handshake,
    HandshakeResponse,
    encode_auth_switch,
    encode_err,
    encode_handshake,
    encode_handshake_response,
    encode_ssl_request,
    parse_auth_switch,
    parse_err,
    parse_handshake,
    parse_handshake_response,
)
from .wire import ProtocolError

ER_ACCESS_DENIED = 1045
ER_HANDSHAKE_ERROR = 1043
ER_SECURE_TRANSPORT_REQUIRED = 3159
_INSECURE = "Connections using insecure transport are prohibited while --require_secure_transport=ON."
ER_NOT_SUPPORTED_AUTH_MODE = 1251


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes


@dataclass(frozen=True, slots=True)
class StartTLS:
    pass


@dataclass(frozen=True, slots=True)
class Failed:
    error: ErrPacket


@dataclass(frozen=True, slots=True)
class Account:
    """What the server side needs to know about a user to check a password."""

    name: str
    native_stage2: bytes = field(repr=False)
    password: bytes | None = field(default=None, repr=False)  # known only when configured in plain text
    require_tls: bool = False  # refused (as a wrong password) without TLS, as REQUIRE SSL


@dataclass(frozen=True, slots=True)
class Authenticated:
    user: str
    database: str | None
    capabilities: int  # what the client asked for, intersected with what Baton offers
    charset: int
    max_packet: int
    attributes: dict[str, str]
    stage1: bytes | None = field(repr=False)  # SHA1(password): answers a backend's native challenge
    password: bytes | None = field(repr=False)  # the password itself, when the exchange revealed it
    seq: int  # sequence id for the final OK packet


_NO_ACCOUNT_STAGE2 = hashlib.sha1(os.urandom(20)).digest()  # matches no password


def random_nonce() -> bytes:
    """20 printable-safe bytes: never NUL, since some clients treat the scramble as C string."""
    return bytes((b % 94) + 33 for b in os.urandom(20))


class _SrvState(Enum):
    INITIAL = auto()
    RESPONSE = auto()
    SWITCH_RESPONSE = auto()
    SHA2_FULL = auto()
    SHA2_RSA = auto()
    DONE = auto()


@dataclass
class ServerHandshake:
    """Baton as a MySQL server: greets, optionally upgrades to TLS, verifies the password."""

    server_version: str
    connection_id: int
    lookup: Callable[[str], Account | None]
    client_host: str = "localhost"
    auth_plugin: str = NATIVE_PASSWORD
    tls_available: bool = False
    rsa_key: rsa.RSAPrivateKey | None = field(default=None, repr=False)
    capabilities: int = int(SUPPORTED_CAPABILITIES)
    charset: int = CHARSET_UTF8MB4_GENERAL_CI
    nonce: bytes = field(default_factory=random_nonce)
    # Verified caching_sha2 logins of hash-only users, so the next login can take the fast path.
    sha2_cache: dict[str, tuple[bytes, bytes]] = field(default_factory=dict, repr=False)
    # Every login must be over TLS (MySQL's require_secure_transport): refused with 3159 at the
    # login response, before any password is looked at.
    require_tls: bool = False

    def __post_init__(self) -> None:
        if self.tls_available:
            self.capabilities |= Capability.SSL
        self._state = _SrvState.INITIAL
        self._tls = False
        self._response: HandshakeResponse | None = None
        self._account: Account | None = None
        self._plugin = self.auth_plugin

    @property
    def tls_active(self) -> bool:
        return self._tls

    @property
    def user(self) -> str:
        """The user the client logs in as ("" until its login response arrives)."""
        return self._response.user if self._response is not None else ""

    def expect_change_user(self, tls_active: bool) -> None:
        """COM_CHANGE_USER: no greeting is sent; the next packet is a login response
        (re-encoded from the command) on a connection that may already be TLS."""
        self._tls = tls_active
        self._state = _SrvState.RESPONSE

    def greeting(self) -> bytes:
        """The framed HandshakeV10 packet to send first."""
        self._state = _SrvState.RESPONSE
        payload = encode_handshake(
            Handshake(
                server_version=self.server_version,
                connection_id=self.connection_id,
                auth_data=self.nonce,
                capabilities=self.capabilities,
                charset=self.charset,
                status=int(ServerStatus.AUTOCOMMIT),
                auth_plugin=self.auth_plugin,
            )
        )
        return frame(payload, 0)

    def receive(self, seq: int, payload: bytes) -> list[object]:
        try:
            return self._receive(seq, payload)
        except ProtocolError as exc:
            self._state = _SrvState.DONE
            return [self._fail(seq, ER_HANDSHAKE_ERROR, "08S01", f"Bad handshake: {exc}")]

    def _receive(self, seq: int, payload: bytes) -> list[object]:
        state = self._state
        if state == _SrvState.RESPONSE:
            resp = parse_handshake_response(payload)
            if resp.ssl_request:
                if not self.tls_available or self._tls:
                    raise ProtocolError("TLS requested but not offered")
                self._tls = True
                return [StartTLS()]
            self._response = resp
            if self.require_tls and not self._tls:
                return [self._fail(seq, ER_SECURE_TRANSPORT_REQUIRED, "HY000", _INSECURE)]
            account = self.lookup(resp.user)
            self._account = account
            client_plugin = resp.auth_plugin if resp.capabilities & Capability.PLUGIN_AUTH else NATIVE_PASSWORD
            if self._plugin == CACHING_SHA2_PASSWORD and not resp.capabilities & Capability.PLUGIN_AUTH:
                self._plugin = NATIVE_PASSWORD  # an old client cannot switch plugins
            if client_plugin != self._plugin:
                self._state = _SrvState.SWITCH_RESPONSE
                switch = encode_auth_switch(AuthSwitchRequest(self._plugin, self.nonce))
                return [Send(frame(switch, seq + 1))]
            return self._verify(seq, resp.auth_response)
        if state == _SrvState.SWITCH_RESPONSE:
            return self._verify(seq, payload)
        if state == _SrvState.SHA2_FULL:
            if payload == b"\x02":
                if self.rsa_key is None:
                    return [self._deny(seq)]
                self._state = _SrvState.SHA2_RSA
                return [Send(frame(b"\x01" + auth.public_key_pem(self.rsa_key), seq + 1))]
            if self._tls:
                return self._check_plain(seq, payload.rstrip(b"\0"))
            return self._decrypt_and_check(seq, payload)
        if state == _SrvState.SHA2_RSA:
            return self._decrypt_and_check(seq, payload)
        raise ProtocolError(f"unexpected packet in handshake state {state.name}")

    def _decrypt_and_check(self, seq: int, payload: bytes) -> list[object]:
        if self.rsa_key is None:
            return [self._deny(seq)]
        try:
            password = auth.rsa_decrypt_password(self.rsa_key, payload, self.nonce)
        except ValueError:
            return [self._deny(seq)]
        return self._check_plain(seq, password)

    def _verify(self, seq: int, response: bytes) -> list[object]:
        account = self._account
        if account is None:
            if self._plugin == CACHING_SHA2_PASSWORD and response:
                return self._full_auth(seq)  # as for a user whose scramble did not match
            return [self._deny(seq, bool(response))]
        if self._plugin == NATIVE_PASSWORD:
            if not response:
                if account.native_stage2 == auth.native_stage2(b"") and account.password in (b"", None):
                    return [self._success(seq, None, b"")]
                return [self._deny(seq, False)]
            stage1 = auth.verify_native(account.native_stage2, self.nonce, response)
            if stage1 is None:
                return [self._deny(seq)]
            return [self._success(seq, stage1, account.password)]
        # caching_sha2_password
        if account.require_tls and not self._tls:
            return self._full_auth(seq)  # no fast-path "OK" that would reveal the password was right
        if not response:
            if account.password == b"":
                return [self._success(seq, None, b"")]
            return [self._deny(seq, False)]
        known = account.password
        if known is not None:
            if auth.verify_caching_sha2(auth.sha2_stage2(known), self.nonce, response):
                return [Send(frame(b"\x01\x03", seq + 1)), self._success(seq + 1, None, known)]
            return self._full_auth(seq)
        cached = self.sha2_cache.get(account.name)
        # Trust a cached entry only while it belongs to the account's current password: after a
        # reload changes the hash, the old password must not keep working through the cache.
        if (
            cached
            and hmac.compare_digest(hashlib.sha1(cached[1]).digest(), account.native_stage2)
            and auth.verify_caching_sha2(cached[0], self.nonce, response)
        ):
            return [Send(frame(b"\x01\x03", seq + 1)), self._success(seq + 1, cached[1], None)]
        return self._full_auth(seq)

    def _full_auth(self, seq: int) -> list[object]:
        """caching_sha2: the fast path did not succeed, ask for the password itself. The same
        answer whether the user is unknown, known only by hash, or sent a wrong scramble (as
        MySQL does): the exchange must not reveal which user names exist."""
        self._state = _SrvState.SHA2_FULL
        return [Send(frame(b"\x01\x04", seq + 1))]

    def _check_plain(self, seq: int, password: bytes) -> list[object]:
        account = self._account
        # An unknown user costs the same hash and comparison as a known one.
        stage2 = account.native_stage2 if account is not None else _NO_ACCOUNT_STAGE2
        if not hmac.compare_digest(auth.native_stage2(password), stage2) or account is None:
            return [self._deny(seq)]
        if account.password is None:
            self.sha2_cache[account.name] = (auth.sha2_stage2(password), auth.native_stage1(password))
        return [self._success(seq, auth.native_stage1(password), password)]

    def _success(
        self, seq: int, stage1: bytes | None, password: bytes | None
    ) -> Authenticated | Failed:
        account = self._account
        if account is not None and account.require_tls and not self._tls:
            return self._deny(seq)  # the same answer as a wrong password: no oracle
        self._state = _SrvState.DONE
        resp = self._response
        assert resp is not None
        if stage1 is None and password is not None:
            stage1 = auth.native_stage1(password) if password else None
        return Authenticated(
            user=resp.user,
            database=resp.database,
            capabilities=resp.capabilities & self.capabilities,
            charset=resp.charset,
            max_packet=resp.max_packet,
            attributes=resp.attributes,
            stage1=stage1,
            password=password,
            seq=(seq + 1) & 0xFF,
        )

    def _deny(self, seq: int, using_password: bool = True) -> Failed:
        user = self._response.user if self._response else ""
        return self._fail(
            seq,
            ER_ACCESS_DENIED,
            "28000",
            f"Access denied for user '{user}'@'{self.client_host}' "
            f"(using password: {'YES' if using_password else 'NO'})",
        )

    def _fail(self, seq: int, code: int, sqlstate: str, message: str) -> Failed:
        self._state = _SrvState.DONE
        err = ErrPacket(code, sqlstate, message)
        self.failure_bytes = frame(encode_err(err), seq + 1)
        return Failed(err)


# --- Baton as a client of a backend ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """Logged in: the backend's greeting and the capabilities both sides agreed on."""

    handshake: Handshake
    capabilities: int
    status: int


class _CliState(Enum):
    GREETING = auto()
    AUTH = auto()
    SHA2_KEY = auto()
    DONE = auto()


@dataclass
class ClientHandshake:
    """Baton logging into a backend with a user's credentials."""

    user: str
    password: bytes | None = field(default=None, repr=False)
    # enough for mysql_native_password when the password is unknown
    stage1: bytes | None = field(default=None, repr=False)
    database: str | None = None
    capabilities: int = int(SUPPORTED_CAPABILITIES)
    charset: int = CHARSET_UTF8MB4_GENERAL_CI
    attributes: dict[str, str] = field(default_factory=dict)
    use_tls: bool = False
    # The TLS layer checks the server's certificate and name: only then may the plain password
    # go over it (caching_sha2 full authentication).
    tls_verified: bool = False
    # Without verified TLS the password goes RSA-encrypted: to this pinned key (PEM), or, only
    # when get_server_public_key, to whatever key the server sends (MySQL's
    # --get-server-public-key: anyone on the path can send theirs).
    server_public_key: bytes | None = None
    get_server_public_key: bool = False

    def __post_init__(self) -> None:
        self._state = _CliState.GREETING
        self._nonce = b""
        self._caps = 0
        self._handshake: Handshake | None = None
        self._tls = False

    def receive(self, seq: int, payload: bytes) -> list[object]:
        state = self._state
        if not payload:
            raise ProtocolError("empty packet during backend login")
        if payload[:1] == b"\xff":
            self._state = _CliState.DONE
            return [Failed(parse_err(payload))]
        if state == _CliState.GREETING:
            return self._greeting(seq, payload)
        if state == _CliState.AUTH:
            first = payload[0]
            if first == 0x00:
                self._state = _CliState.DONE
                status = self._ok_status(payload)
                assert self._handshake is not None
                return [Ready(self._handshake, self._caps, status)]
            if first == 0xFE:
                switch = parse_auth_switch(payload)
                if switch.plugin not in (NATIVE_PASSWORD, CACHING_SHA2_PASSWORD, ED25519):
                    raise ProtocolError(f"backend asks for auth plugin {switch.plugin!r}, "
                                        "which Baton does not support")
                if switch.plugin != NATIVE_PASSWORD and self.password is None:
                    raise ProtocolError(f"backend wants {switch.plugin}, which needs the "
                                        "plain password; Baton knows only its hash")
                if switch.plugin == ED25519 and len(switch.data) != 32:
                    raise ProtocolError(f"backend sent a {len(switch.data)}-byte ed25519 nonce, not 32")
                self._nonce = switch.data or self._nonce
                data, _ = self._answer(switch.plugin)
                return [Send(frame(data, seq + 1))]
            if first == 0x01:
                return self._more_data(seq, payload[1:])
        if state == _CliState.SHA2_KEY and payload[:1] == b"\x01":
            self._state = _CliState.AUTH
            return [Send(frame(self._rsa(payload[1:]), seq + 1))]
        raise ProtocolError(f"unexpected packet 0x{payload[:1].hex()} during backend login")

    def _ok_status(self, payload: bytes) -> int:
        from .packets import parse_ok

        return parse_ok(payload, self._caps).status

    def _greeting(self, seq: int, payload: bytes) -> list[object]:
        hs = parse_handshake(payload)
        self._handshake = hs
        self._nonce = hs.auth_data
        if not hs.capabilities & Capability.PROTOCOL_41:
            raise ProtocolError("backend does not speak protocol 4.1")
        caps = (self.capabilities & hs.capabilities) | Capability.PROTOCOL_41
        caps |= Capability.LONG_PASSWORD  # "I am not a MariaDB-extended client"
        if self.database:
            caps |= Capability.CONNECT_WITH_DB
        else:
            caps &= ~Capability.CONNECT_WITH_DB
        actions: list[object] = []
        if self.use_tls:
            if not hs.capabilities & Capability.SSL:
                raise ProtocolError("backend does not offer TLS")
            caps |= Capability.SSL
            actions.append(Send(frame(encode_ssl_request(caps, self.charset), seq + 1)))
            actions.append(StartTLS())
            seq += 1
            self._tls = True
        else:
            caps &= ~Capability.SSL
        self._caps = caps
        data, plugin = self._answer(hs.auth_plugin)
        response = HandshakeResponse(
            capabilities=caps,
            charset=self.charset,
            user=self.user,
            auth_response=data,
            database=self.database,
            auth_plugin=plugin,
            attributes=self.attributes,
        )
        self._state = _CliState.AUTH
        actions.append(Send(frame(encode_handshake_response(response), seq + 1)))
        return actions

    def _answer(self, plugin: str) -> tuple[bytes, str]:
        """The auth response for a plugin; falls back to native when only stage1 is known."""
        if plugin == CACHING_SHA2_PASSWORD and self.password is not None:
            return auth.scramble_caching_sha2(self.password, self._nonce), plugin
        if plugin == ED25519 and self.password is not None and len(self._nonce) == 32:
            return ed25519.sign(self.password, self._nonce), plugin
        if self.password is not None:
            return auth.scramble_native(self.password, self._nonce), NATIVE_PASSWORD
        if self.stage1 is not None:
            return auth.scramble_native_from_stage1(self.stage1, self._nonce), NATIVE_PASSWORD
        return b"", NATIVE_PASSWORD

    def _more_data(self, seq: int, data: bytes) -> list[object]:
        if data == b"\x03":  # caching_sha2 fast auth succeeded; an OK follows
            return []
        if data == b"\x04":  # full authentication
            if self.password is None:
                raise ProtocolError("backend wants the plain password, which Baton does not know")
            return self._full_auth(seq, self.password)
        raise ProtocolError("unexpected auth-more-data from backend")

    def _full_auth(self, seq: int, password: bytes) -> list[object]:
        """caching_sha2 full authentication: the password itself, only where no one on the
        path can read it."""
        if self._tls:
            if not self.tls_verified:
                raise ProtocolError(
                    "backend asks for the plain password (caching_sha2 full authentication) "
                    "over TLS that does not verify the server; refused: set tls_ca (or "
                    "tls_verify = true) for this backend"
                )
            return [Send(frame(password + b"\0", seq + 1))]
        if self.server_public_key:
            return [Send(frame(self._rsa(self.server_public_key), seq + 1))]
        if not self.get_server_public_key:
            raise ProtocolError(
                "backend asks for the password (caching_sha2 full authentication) without TLS; "
                "refused: set server_public_key to the server's RSA public key, use verified "
                "TLS, or allow get_server_public_key"
            )
        self._state = _CliState.SHA2_KEY
        return [Send(frame(b"\x02", seq + 1))]

    def _rsa(self, pem: bytes) -> bytes:
        assert self.password is not None
        try:
            return auth.rsa_encrypt_password(self.password, self._nonce, pem)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ProtocolError(f"backend public key unusable: {exc}") from exc
