"""Connection phase: ServerHandshake (Baton as a server) and ClientHandshake (Baton logging into
a backend), against golden MariaDB bytes and against each other (a live MariaDB:
tests/integration/test_handshake_live.py)."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.protocol import auth
from proxy.protocol.constants import (
    CACHING_SHA2_PASSWORD,
    NATIVE_PASSWORD,
    SUPPORTED_CAPABILITIES,
    Capability,
    ServerStatus,
)
from proxy.protocol.framing import PacketReader
from proxy.protocol.handshake import (
    Account,
    Authenticated,
    ClientHandshake,
    Failed,
    Ready,
    Send,
    ServerHandshake,
    StartTLS,
)
from proxy.protocol.packets import (
    ErrPacket,
    HandshakeResponse,
    OkPacket,
    encode_err,
    encode_handshake,
    encode_handshake_response,
    encode_ok,
    encode_ssl_request,
    parse_auth_switch,
    parse_handshake,
    parse_handshake_response,
)
from proxy.protocol.wire import ProtocolError
from tests.support import golden

CLIENT_CAPS = int(SUPPORTED_CAPABILITIES) & ~int(Capability.SSL)
PASSWORD = b"s3cret"
USER = "alice"


def unframe(data: bytes) -> list[tuple[int, bytes]]:
    reader = PacketReader()
    reader.feed(data)
    out = []
    while (pkt := reader.next_packet()) is not None:
        out.append(pkt)
    return out


def sent(actions: list[object]) -> list[tuple[int, bytes]]:
    """(seq, payload) of every packet the actions send, in order."""
    return [pkt for a in actions if isinstance(a, Send) for pkt in unframe(a.data)]


def accounts(*accts: Account):  # type: ignore[no-untyped-def]
    by_name = {a.name: a for a in accts}
    return by_name.get


def known(name: str = USER, password: bytes = PASSWORD) -> Account:
    return Account(name, auth.native_stage2(password), password)


def hash_only(name: str = USER, password: bytes = PASSWORD) -> Account:
    return Account(name, auth.native_stage2(password))


def login_payload(
    nonce: bytes,
    user: str = USER,
    password: bytes = PASSWORD,
    plugin: str = NATIVE_PASSWORD,
    caps: int = CLIENT_CAPS,
    database: str | None = None,
) -> bytes:
    answer = (
        auth.scramble_caching_sha2(password, nonce)
        if plugin == CACHING_SHA2_PASSWORD
        else auth.scramble_native(password, nonce)
    )
    if database:
        caps |= Capability.CONNECT_WITH_DB
    return encode_handshake_response(
        HandshakeResponse(caps, user=user, auth_response=answer, database=database,
                          auth_plugin=plugin, attributes={"_client_name": "test"})
    )


def server(*accts: Account, **kw) -> ServerHandshake:  # type: ignore[no-untyped-def]
    kw.setdefault("client_host", "127.0.0.1")
    hs = ServerHandshake("5.5.5-10.11.0-Baton", 42, accounts(*accts), **kw)
    hs.greeting()
    return hs


# --- ServerHandshake -----------------------------------------------------------------------


def test_greeting_offers_the_nonce_plugin_and_tls_only_when_available() -> None:
    for tls in (False, True):
        hs = ServerHandshake("5.5.5-10.11.0-Baton", 7, accounts(), tls_available=tls)
        [(seq, payload)] = unframe(hs.greeting())
        greeting = parse_handshake(payload)
        assert seq == 0
        assert greeting.auth_data == hs.nonce and len(hs.nonce) == 20
        assert greeting.auth_plugin == NATIVE_PASSWORD
        assert greeting.connection_id == 7
        assert greeting.status == ServerStatus.AUTOCOMMIT
        assert bool(greeting.capabilities & Capability.SSL) == tls


def test_native_login_succeeds_and_reveals_stage1() -> None:
    hs = server(known())
    [ok] = hs.receive(1, login_payload(hs.nonce, database="app_db"))
    assert isinstance(ok, Authenticated)
    assert (ok.user, ok.database, ok.seq) == (USER, "app_db", 2)
    assert ok.stage1 == hashlib.sha1(PASSWORD).digest()
    assert ok.password == PASSWORD
    assert ok.capabilities == (CLIENT_CAPS | Capability.CONNECT_WITH_DB) & hs.capabilities
    assert ok.attributes == {"_client_name": "test"}


def test_native_login_of_a_hash_only_account() -> None:
    hs = server(hash_only())
    [ok] = hs.receive(1, login_payload(hs.nonce))
    assert isinstance(ok, Authenticated)
    assert ok.password is None
    assert ok.stage1 == hashlib.sha1(PASSWORD).digest()


def test_wrong_password_is_denied_exactly_as_mariadb_denies_it() -> None:
    ex = golden.login("wrong_password")
    user = str(ex["user"])
    hs = server(known(user, b"the-real-one"))
    [failed] = hs.receive(1, login_payload(hs.nonce, user=user, password=b"a-guess"))
    assert isinstance(failed, Failed)
    assert (failed.error.code, failed.error.sqlstate) == (1045, "28000")
    assert failed.error.message == (
        f"Access denied for user '{user}'@'127.0.0.1' (using password: YES)"
    )
    assert hs.failure_bytes == ex["replies"][0]  # type: ignore[index]  # byte for byte


def test_unknown_user_is_denied_exactly_as_mariadb_denies_it() -> None:
    ex = golden.login("unknown_user")
    hs = server(known())
    [failed] = hs.receive(1, login_payload(hs.nonce, user=str(ex["user"])))
    assert isinstance(failed, Failed)
    assert hs.failure_bytes == ex["replies"][0]  # type: ignore[index]


def test_empty_password() -> None:
    hs = server(known("nopw", b""))
    [ok] = hs.receive(1, login_payload(hs.nonce, user="nopw", password=b""))
    assert isinstance(ok, Authenticated) and ok.password == b"" and ok.stage1 is None

    hs = server(known())
    [failed] = hs.receive(1, login_payload(hs.nonce, password=b""))
    assert isinstance(failed, Failed)
    assert failed.error.message.endswith("(using password: NO)")


def test_auth_switch_when_the_client_picks_another_plugin() -> None:
    hs = server(known())
    actions = hs.receive(1, login_payload(hs.nonce, plugin=CACHING_SHA2_PASSWORD))
    [(seq, payload)] = sent(actions)
    switch = parse_auth_switch(payload)
    assert seq == 2
    assert (switch.plugin, switch.data) == (NATIVE_PASSWORD, hs.nonce)
    [ok] = hs.receive(3, auth.scramble_native(PASSWORD, switch.data))
    assert isinstance(ok, Authenticated) and ok.seq == 4


def test_auth_switch_then_wrong_password() -> None:
    hs = server(known())
    hs.receive(1, login_payload(hs.nonce, plugin="dialog"))
    [failed] = hs.receive(3, auth.scramble_native(b"nope", hs.nonce))
    assert isinstance(failed, Failed) and failed.error.code == 1045
    assert unframe(hs.failure_bytes)[0][0] == 4


def test_client_without_plugin_auth_is_never_switched() -> None:
    hs = server(known(), auth_plugin=CACHING_SHA2_PASSWORD)
    caps = CLIENT_CAPS & ~Capability.PLUGIN_AUTH
    [ok] = hs.receive(1, login_payload(hs.nonce, caps=caps))
    assert isinstance(ok, Authenticated)


def test_caching_sha2_fast_path() -> None:
    hs = server(known(), auth_plugin=CACHING_SHA2_PASSWORD)
    actions = hs.receive(1, login_payload(hs.nonce, plugin=CACHING_SHA2_PASSWORD))
    assert sent(actions) == [(2, b"\x01\x03")]  # fast auth succeeded
    assert isinstance(actions[-1], Authenticated) and actions[-1].seq == 3
    assert actions[-1].password == PASSWORD


def test_caching_sha2_fast_path_wrong_password_falls_back_to_full_auth() -> None:
    """As MySQL: a scramble that does not match asks for the password itself, which is then
    checked (and wrong); the same exchange as for an unknown or hash-only user."""
    hs = server(known(), auth_plugin=CACHING_SHA2_PASSWORD)
    actions = hs.receive(1, login_payload(hs.nonce, password=b"x", plugin=CACHING_SHA2_PASSWORD))
    assert sent(actions) == [(2, b"\x01\x04")]
    [failed] = hs.receive(3, b"\x02")  # no RSA key and no TLS: nothing to send the password on
    assert isinstance(failed, Failed) and failed.error.code == 1045


def test_caching_sha2_full_auth_after_a_wrong_scramble_checks_the_password() -> None:
    hs = server(known(), auth_plugin=CACHING_SHA2_PASSWORD, tls_available=True)
    hs.receive(1, encode_ssl_request(CLIENT_CAPS, 45))
    hs.receive(2, login_payload(hs.nonce, password=b"x", plugin=CACHING_SHA2_PASSWORD))
    [ok] = hs.receive(4, PASSWORD + b"\0")
    assert isinstance(ok, Authenticated) and ok.password == PASSWORD


def _sha2_exchange(account: Account | None, rsa_key: object, tls: bool) -> list[object]:
    """What a client guessing a password sees from Baton, packet by packet."""
    hs = server(*([account] if account else []), auth_plugin=CACHING_SHA2_PASSWORD,
                rsa_key=rsa_key, tls_available=tls)
    seq = 1
    if tls:
        hs.receive(seq, encode_ssl_request(CLIENT_CAPS, 45))
        seq += 1
    seen: list[object] = [sent(hs.receive(seq, login_payload(hs.nonce, password=b"guess",
                                                               plugin=CACHING_SHA2_PASSWORD)))]
    if tls:
        final = hs.receive(seq + 2, b"guess\0")
    else:
        [(_, key)] = sent(hs.receive(seq + 2, b"\x02"))
        seen.append(key)
        final = hs.receive(seq + 4, auth.rsa_encrypt_password(b"guess", hs.nonce, key[1:]))
    [failed] = final
    assert isinstance(failed, Failed)
    seen.append((failed.error.code, failed.error.sqlstate, failed.error.message, hs.failure_bytes))
    return seen


@pytest.mark.parametrize("tls", [False, True])
def test_caching_sha2_does_not_reveal_which_users_exist(rsa_key, tls: bool) -> None:  # type: ignore[no-untyped-def]
    """An unknown user, a user known only by hash and a user with a plain password get the
    same bytes back, packet for packet, for the same guess."""
    exchanges = [_sha2_exchange(a, rsa_key, tls) for a in (None, hash_only(), known())]
    assert exchanges[0] == exchanges[1] == exchanges[2], exchanges


def test_caching_sha2_full_auth_over_tls_then_fast_path_from_the_cache() -> None:
    cache: dict[str, tuple[bytes, bytes]] = {}
    hs = server(hash_only(), auth_plugin=CACHING_SHA2_PASSWORD, tls_available=True,
                sha2_cache=cache)
    assert hs.receive(1, encode_ssl_request(CLIENT_CAPS, 45)) == [StartTLS()]
    assert hs.tls_active
    actions = hs.receive(2, login_payload(hs.nonce, plugin=CACHING_SHA2_PASSWORD))
    assert sent(actions) == [(3, b"\x01\x04")]  # full authentication
    [ok] = hs.receive(4, PASSWORD + b"\0")
    assert isinstance(ok, Authenticated) and ok.seq == 5
    assert ok.password == PASSWORD and ok.stage1 == hashlib.sha1(PASSWORD).digest()
    assert USER in cache

    again = server(hash_only(), auth_plugin=CACHING_SHA2_PASSWORD, sha2_cache=cache)
    actions = again.receive(1, login_payload(again.nonce, plugin=CACHING_SHA2_PASSWORD))
    assert sent(actions) == [(2, b"\x01\x03")]
    assert isinstance(actions[-1], Authenticated)
    assert actions[-1].stage1 == hashlib.sha1(PASSWORD).digest()


def test_caching_sha2_full_auth_over_tls_wrong_password() -> None:
    hs = server(hash_only(), auth_plugin=CACHING_SHA2_PASSWORD, tls_available=True)
    hs.receive(1, encode_ssl_request(CLIENT_CAPS, 45))
    hs.receive(2, login_payload(hs.nonce, plugin=CACHING_SHA2_PASSWORD))
    [failed] = hs.receive(4, b"wrong\0")
    assert isinstance(failed, Failed) and failed.error.code == 1045


def test_sha2_cache_is_not_trusted_after_the_password_changes() -> None:
    cache = {USER: (auth.sha2_stage2(b"old"), hashlib.sha1(b"old").digest())}
    hs = server(hash_only(password=b"new"), auth_plugin=CACHING_SHA2_PASSWORD, sha2_cache=cache)
    actions = hs.receive(1, login_payload(hs.nonce, password=b"old", plugin=CACHING_SHA2_PASSWORD))
    assert not any(isinstance(a, Authenticated) for a in actions)
    assert sent(actions) == [(2, b"\x01\x04")]  # back to full authentication


@pytest.fixture(scope="module")
def rsa_key():  # type: ignore[no-untyped-def]
    return auth.generate_rsa_key()


def test_caching_sha2_full_auth_with_rsa_public_key_request(rsa_key) -> None:  # type: ignore[no-untyped-def]
    hs = server(hash_only(), auth_plugin=CACHING_SHA2_PASSWORD, rsa_key=rsa_key)
    assert sent(hs.receive(1, login_payload(hs.nonce, plugin=CACHING_SHA2_PASSWORD))) == [
        (2, b"\x01\x04")
    ]
    [(seq, payload)] = sent(hs.receive(3, b"\x02"))  # request public key
    assert seq == 4 and payload == b"\x01" + auth.public_key_pem(rsa_key)
    encrypted = auth.rsa_encrypt_password(PASSWORD, hs.nonce, payload[1:])
    [ok] = hs.receive(5, encrypted)
    assert isinstance(ok, Authenticated) and ok.seq == 6 and ok.password == PASSWORD


def test_caching_sha2_rsa_wrong_password_and_garbage(rsa_key) -> None:  # type: ignore[no-untyped-def]
    pem = auth.public_key_pem(rsa_key)
    for answer in (auth.rsa_encrypt_password(b"wrong", b"x" * 20, pem), b"not rsa at all"):
        hs = server(hash_only(), auth_plugin=CACHING_SHA2_PASSWORD, rsa_key=rsa_key)
        hs.receive(1, login_payload(hs.nonce, plugin=CACHING_SHA2_PASSWORD))
        hs.receive(3, b"\x02")
        [failed] = hs.receive(5, answer)
        assert isinstance(failed, Failed) and failed.error.code == 1045


def test_public_key_request_without_a_key_is_denied() -> None:
    hs = server(hash_only(), auth_plugin=CACHING_SHA2_PASSWORD)
    hs.receive(1, login_payload(hs.nonce, plugin=CACHING_SHA2_PASSWORD))
    [failed] = hs.receive(3, b"\x02")
    assert isinstance(failed, Failed) and failed.error.code == 1045


def test_ssl_request_when_tls_is_not_offered_is_a_handshake_error() -> None:
    hs = server(known())
    [failed] = hs.receive(1, encode_ssl_request(CLIENT_CAPS, 45))
    assert isinstance(failed, Failed)
    assert (failed.error.code, failed.error.sqlstate) == (1043, "08S01")


def test_packets_after_the_handshake_ended_are_refused() -> None:
    hs = server(known())
    hs.receive(1, login_payload(hs.nonce))
    [failed] = hs.receive(3, b"\x03SELECT 1")
    assert isinstance(failed, Failed) and failed.error.code == 1043


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([NATIVE_PASSWORD, CACHING_SHA2_PASSWORD]),
    st.booleans(),
    st.lists(st.binary(max_size=120), min_size=1, max_size=4),
)
def test_server_handshake_never_raises_on_arbitrary_packets(
    plugin: str, good_first: bool, payloads: list[bytes]
) -> None:
    hs = server(known(), hash_only("bob"), auth_plugin=plugin, tls_available=True)
    if good_first:
        payloads = [login_payload(hs.nonce, user="bob", plugin=plugin), *payloads]
    for i, payload in enumerate(payloads):
        actions = hs.receive(1 + 2 * i, payload)
        assert isinstance(actions, list)


# --- ClientHandshake against golden MariaDB bytes ------------------------------------------


def _golden_greeting(kind: str) -> tuple[int, bytes]:
    [pkt] = unframe(golden.login(kind)["greeting"])  # type: ignore[arg-type]
    return pkt


def test_client_answers_the_mariadb_greeting() -> None:
    seq, greeting = _golden_greeting("login_ok")
    nonce = parse_handshake(greeting).auth_data
    hs = ClientHandshake("golden", b"golden-pw", database="golden",
                         attributes={"program_name": "baton"})
    [(rseq, payload)] = sent(hs.receive(seq, greeting))
    resp = parse_handshake_response(payload)
    assert rseq == 1
    assert resp.user == "golden" and resp.database == "golden"
    assert resp.auth_plugin == NATIVE_PASSWORD
    assert resp.auth_response == auth.scramble_native(b"golden-pw", nonce)
    caps = Capability(resp.capabilities)
    assert Capability.PROTOCOL_41 in caps and Capability.CONNECT_WITH_DB in caps
    assert Capability.LONG_PASSWORD in caps  # "not a MariaDB-extended client"
    assert Capability.SSL not in caps
    assert resp.capabilities & ~parse_handshake(greeting).capabilities == Capability.LONG_PASSWORD
    assert resp.attributes == {"program_name": "baton"}

    [(oseq, ok)] = unframe(golden.login("login_ok")["replies"][0])  # type: ignore[index]
    [ready] = hs.receive(oseq, ok)
    assert isinstance(ready, Ready)
    assert ready.capabilities == resp.capabilities
    assert ready.status & ServerStatus.AUTOCOMMIT
    assert ready.handshake.auth_data == nonce


def test_client_follows_mariadb_auth_switch() -> None:
    ex = golden.login("auth_switch")
    seq, greeting = _golden_greeting("auth_switch")
    password = golden.load()["logins"]["password"].encode()  # type: ignore[index]
    hs = ClientHandshake("golden", password, database="golden")
    hs.receive(seq, greeting)
    [(sseq, switch)] = unframe(ex["replies"][0])  # type: ignore[index]
    [(aseq, answer)] = sent(hs.receive(sseq, switch))
    assert (aseq, answer) == unframe(ex["requests"][1])[0]  # type: ignore[index]  # what MariaDB accepted
    [(oseq, ok)] = unframe(ex["replies"][1])  # type: ignore[index]
    assert isinstance(hs.receive(oseq, ok)[0], Ready)


def test_client_reports_mariadb_access_denied() -> None:
    seq, greeting = _golden_greeting("login_ok")
    hs = ClientHandshake("golden", b"wrong")
    hs.receive(seq, greeting)
    [(eseq, err)] = unframe(golden.login("wrong_password")["replies"][0])  # type: ignore[index]
    [failed] = hs.receive(eseq, err)
    assert isinstance(failed, Failed)
    assert (failed.error.code, failed.error.sqlstate) == (1045, "28000")


def test_client_with_stage1_only_answers_like_the_password() -> None:
    seq, greeting = _golden_greeting("login_ok")
    by_password = ClientHandshake("u", b"pw")
    by_stage1 = ClientHandshake("u", stage1=hashlib.sha1(b"pw").digest())
    assert by_password.receive(seq, greeting) == by_stage1.receive(seq, greeting)


def test_client_reports_an_error_greeting() -> None:
    hs = ClientHandshake("u", b"pw")
    [failed] = hs.receive(0, encode_err(ErrPacket(1129, "HY000", "Host is blocked")))
    assert isinstance(failed, Failed) and failed.error.code == 1129


# --- ClientHandshake against a scripted server ---------------------------------------------

NONCE = bytes(range(65, 85))


def greeting(plugin: str = NATIVE_PASSWORD, caps: int | None = None) -> bytes:
    """MariaDB's real greeting with a known nonce, another plugin, and TLS offered."""
    real = parse_handshake(_golden_greeting("login_ok")[1])
    if caps is None:
        caps = real.capabilities | Capability.SSL
    return encode_handshake(
        dataclasses.replace(real, auth_data=NONCE, auth_plugin=plugin, capabilities=caps)
    )


OK = encode_ok(OkPacket(status=2), CLIENT_CAPS)


def test_scripted_caching_sha2_fast_path() -> None:
    hs = ClientHandshake("u", b"pw")
    [(_, payload)] = sent(hs.receive(0, greeting(CACHING_SHA2_PASSWORD)))
    resp = parse_handshake_response(payload)
    assert resp.auth_plugin == CACHING_SHA2_PASSWORD
    assert resp.auth_response == auth.scramble_caching_sha2(b"pw", NONCE)
    assert hs.receive(2, b"\x01\x03") == []
    assert isinstance(hs.receive(3, OK)[0], Ready)


def test_scripted_caching_sha2_full_auth_requests_the_public_key_when_allowed(rsa_key) -> None:  # type: ignore[no-untyped-def]
    hs = ClientHandshake("u", b"pw", get_server_public_key=True)
    hs.receive(0, greeting(CACHING_SHA2_PASSWORD))
    assert sent(hs.receive(2, b"\x01\x04")) == [(3, b"\x02")]
    [(seq, encrypted)] = sent(hs.receive(4, b"\x01" + auth.public_key_pem(rsa_key)))
    assert seq == 5
    assert auth.rsa_decrypt_password(rsa_key, encrypted, NONCE) == b"pw"
    assert isinstance(hs.receive(6, OK)[0], Ready)


def test_scripted_caching_sha2_full_auth_with_a_known_public_key(rsa_key) -> None:  # type: ignore[no-untyped-def]
    hs = ClientHandshake("u", b"pw", server_public_key=auth.public_key_pem(rsa_key))
    hs.receive(0, greeting(CACHING_SHA2_PASSWORD))
    [(seq, encrypted)] = sent(hs.receive(2, b"\x01\x04"))
    assert seq == 3 and auth.rsa_decrypt_password(rsa_key, encrypted, NONCE) == b"pw"


def test_scripted_sha2_full_auth_without_tls_refuses_to_ask_for_the_key() -> None:
    """Asking the server for its RSA key lets anyone on the path hand Baton theirs: refused
    unless get_server_public_key, and nothing is sent (the 0x02 request included)."""
    hs = ClientHandshake("u", b"pw")
    hs.receive(0, greeting(CACHING_SHA2_PASSWORD))
    with pytest.raises(ProtocolError, match="server_public_key"):
        hs.receive(2, b"\x01\x04")


def test_scripted_sha2_full_auth_encrypts_to_the_pinned_key_not_to_one_sent(rsa_key) -> None:  # type: ignore[no-untyped-def]
    """With a pinned key, a key the server (or a man in the middle) sends is never used: Baton
    does not even ask, and a key pushed at it is a protocol error."""
    attacker = auth.generate_rsa_key()
    hs = ClientHandshake("u", b"pw", server_public_key=auth.public_key_pem(rsa_key),
                         get_server_public_key=True)
    hs.receive(0, greeting(CACHING_SHA2_PASSWORD))
    [(seq, encrypted)] = sent(hs.receive(2, b"\x01\x04"))
    assert seq == 3 and encrypted != b"\x02"
    assert auth.rsa_decrypt_password(rsa_key, encrypted, NONCE) == b"pw"
    with pytest.raises(ValueError):
        auth.rsa_decrypt_password(attacker, encrypted, NONCE)
    with pytest.raises(ProtocolError):
        hs.receive(4, b"\x01" + auth.public_key_pem(attacker))


def test_scripted_sha2_full_auth_over_unverified_tls_is_refused() -> None:
    """TLS that does not check the server is no place for a plain password."""
    hs = ClientHandshake("u", b"pw", use_tls=True, tls_verified=False)
    hs.receive(0, greeting(CACHING_SHA2_PASSWORD))
    with pytest.raises(ProtocolError, match="does not verify the server"):
        hs.receive(3, b"\x01\x04")


def test_scripted_tls_login_sends_the_plain_password_after_starttls() -> None:
    hs = ClientHandshake("u", b"pw", use_tls=True, tls_verified=True)
    actions = hs.receive(0, greeting(CACHING_SHA2_PASSWORD))
    assert [type(a) for a in actions] == [Send, StartTLS, Send]
    [(s1, ssl_req)], [(s2, resp)] = sent(actions[:1]), sent(actions[2:])
    assert (s1, s2) == (1, 2)
    assert parse_handshake_response(ssl_req).ssl_request
    assert parse_handshake_response(resp).capabilities & Capability.SSL
    assert sent(hs.receive(3, b"\x01\x04")) == [(4, b"pw\0")]


def test_scripted_tls_refused_when_the_backend_does_not_offer_it() -> None:
    hs = ClientHandshake("u", b"pw", use_tls=True)
    with pytest.raises(ProtocolError, match="TLS"):
        hs.receive(0, greeting(caps=int(SUPPORTED_CAPABILITIES) & ~Capability.SSL))


def test_full_auth_without_the_password_is_a_protocol_error() -> None:
    hs = ClientHandshake("u", stage1=hashlib.sha1(b"pw").digest())
    hs.receive(0, greeting(CACHING_SHA2_PASSWORD))
    with pytest.raises(ProtocolError, match="plain password"):
        hs.receive(2, b"\x01\x04")


def test_switch_to_caching_sha2_without_the_password_is_a_protocol_error() -> None:
    hs = ClientHandshake("u", stage1=hashlib.sha1(b"pw").digest())
    hs.receive(0, greeting())
    with pytest.raises(ProtocolError, match="caching_sha2_password"):
        hs.receive(2, b"\xfe" + CACHING_SHA2_PASSWORD.encode() + b"\0" + NONCE + b"\0")


def test_switch_to_an_unsupported_plugin_is_a_protocol_error() -> None:
    hs = ClientHandshake("u", b"pw")
    hs.receive(0, greeting())
    with pytest.raises(ProtocolError, match="dialog"):
        hs.receive(2, b"\xfedialog\0")


def test_empty_packet_during_login_is_a_protocol_error() -> None:
    hs = ClientHandshake("u", b"pw")
    hs.receive(0, greeting())
    with pytest.raises(ProtocolError):
        hs.receive(2, b"")


def test_unusable_public_key_is_a_protocol_error() -> None:
    hs = ClientHandshake("u", b"pw", get_server_public_key=True)
    hs.receive(0, greeting(CACHING_SHA2_PASSWORD))
    hs.receive(2, b"\x01\x04")
    with pytest.raises(ProtocolError, match="public key"):
        hs.receive(4, b"\x01-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([NATIVE_PASSWORD, CACHING_SHA2_PASSWORD]),
       st.lists(st.binary(max_size=80), min_size=1, max_size=4))
def test_client_handshake_gives_actions_or_protocol_error(plugin: str, payloads: list[bytes]) -> None:
    hs = ClientHandshake("u", b"pw")
    hs.receive(0, greeting(plugin))
    try:
        for i, payload in enumerate(payloads):
            assert isinstance(hs.receive(2 + 2 * i, payload), list)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120))
def test_client_handshake_greeting_gives_actions_or_protocol_error(payload: bytes) -> None:
    try:
        assert isinstance(ClientHandshake("u", b"pw").receive(0, payload), list)
    except ProtocolError:
        pass


# --- ClientHandshake and ServerHandshake talking to each other -----------------------------


def converse(server_hs: ServerHandshake, client_hs: ClientHandshake) -> object:
    """Pumps packets between the two sides; returns the server's final action."""
    to_client = unframe(server_hs.greeting())
    for _ in range(10):
        to_server: list[tuple[int, bytes]] = []
        for seq, payload in to_client:
            try:
                actions = client_hs.receive(seq, payload)
            except ProtocolError as exc:
                return exc
            to_server += sent(actions)
        to_client = []
        for seq, payload in to_server:
            for action in server_hs.receive(seq, payload):
                if isinstance(action, Send):
                    to_client += unframe(action.data)
                elif isinstance(action, Authenticated | Failed):
                    return action
    raise AssertionError("no outcome after 10 rounds")


@pytest.mark.parametrize("plugin", [NATIVE_PASSWORD, CACHING_SHA2_PASSWORD])
@pytest.mark.parametrize("account", ["known", "hash_only"])
@pytest.mark.parametrize("credential", ["password", "stage1", "wrong"])
@pytest.mark.parametrize("tls", [False, True])
def test_baton_client_and_server_agree(  # type: ignore[no-untyped-def]
    plugin: str, account: str, credential: str, tls: bool, rsa_key
) -> None:
    acct = known() if account == "known" else hash_only()
    srv = ServerHandshake("5.5.5-Baton", 1, accounts(acct), auth_plugin=plugin,
                          tls_available=tls, rsa_key=rsa_key)
    cli = ClientHandshake(
        USER,
        password={"password": PASSWORD, "wrong": b"nope"}.get(credential),
        stage1=hashlib.sha1(PASSWORD).digest() if credential == "stage1" else None,
        use_tls=tls,
        tls_verified=tls,  # the sans-I/O exchange stands for a TLS that checked the server
        server_public_key=auth.public_key_pem(rsa_key),
    )
    outcome = converse(srv, cli)
    if credential == "wrong":
        assert isinstance(outcome, Failed) and outcome.error.code == 1045
    elif credential == "stage1" and plugin == CACHING_SHA2_PASSWORD:
        # caching_sha2 cannot be answered from SHA1(password): the client says so.
        assert isinstance(outcome, ProtocolError)
    else:
        assert isinstance(outcome, Authenticated), outcome
        assert outcome.stage1 == hashlib.sha1(PASSWORD).digest()
        assert srv.tls_active == tls


# --- require_tls -----------------------------------------------------------------------------


def _tls_required(name: str = USER) -> Account:
    return dataclasses.replace(known(name), require_tls=True)


@pytest.mark.parametrize("plugin", [NATIVE_PASSWORD, CACHING_SHA2_PASSWORD])
def test_a_user_that_requires_tls_is_denied_without_it_as_for_a_wrong_password(
    rsa_key, plugin: str  # type: ignore[no-untyped-def]
) -> None:
    """The right password without TLS gets exactly what a wrong one gets: no oracle."""

    def exchange(password: bytes) -> list[object]:
        hs = server(_tls_required(), auth_plugin=plugin, rsa_key=rsa_key, tls_available=True)
        seen: list[object] = []
        actions = hs.receive(1, login_payload(hs.nonce, password=password, plugin=plugin))
        seen.append(sent(actions))
        if plugin == CACHING_SHA2_PASSWORD:  # full authentication over RSA
            [(_, key)] = sent(hs.receive(3, b"\x02"))
            actions = hs.receive(5, auth.rsa_encrypt_password(password, hs.nonce, key[1:]))
        [failed] = [a for a in actions if not isinstance(a, Send)]
        assert isinstance(failed, Failed)
        seen.append((failed.error.code, failed.error.sqlstate, failed.error.message))
        return seen

    right, wrong = exchange(PASSWORD), exchange(b"guess")
    assert right == wrong and right[-1][0] == 1045, (right, wrong)


def test_a_user_that_requires_tls_logs_in_over_tls() -> None:
    hs = server(_tls_required(), tls_available=True)
    assert isinstance(hs.receive(1, encode_ssl_request(CLIENT_CAPS, 45))[0], StartTLS)
    [ok] = hs.receive(2, login_payload(hs.nonce))
    assert isinstance(ok, Authenticated)


def test_require_tls_for_everyone_refuses_a_plain_login_before_any_password_check() -> None:
    hs = server(known(), tls_available=True, require_tls=True)
    [failed] = hs.receive(1, login_payload(hs.nonce))
    assert isinstance(failed, Failed)
    assert (failed.error.code, failed.error.sqlstate) == (3159, "HY000")
    assert "insecure transport are prohibited" in failed.error.message
    hs = server(known(), tls_available=True, require_tls=True)
    hs.receive(1, encode_ssl_request(CLIENT_CAPS, 45))
    assert isinstance(hs.receive(2, login_payload(hs.nonce))[0], Authenticated)
