"""Password scrambles, checked against independent implementations and a real MariaDB's bytes.

PyMySQL's and mysql-connector's scramble functions are separate implementations of the same
algorithms; the golden capture is a login MariaDB accepted, and PASSWORD() is its own hash.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymysql import _auth as pymysql_auth

from proxy.protocol import auth
from proxy.protocol.framing import PacketReader
from proxy.protocol.packets import parse_auth_switch, parse_handshake, parse_handshake_response
from tests.support import golden

_password = st.binary(min_size=1, max_size=40)
_nonce = st.binary(min_size=20, max_size=20)


def _payloads(data: bytes) -> list[bytes]:
    reader = PacketReader()
    reader.feed(data)
    out = []
    while (pkt := reader.next_packet()) is not None:
        out.append(pkt[1])
    return out


@pytest.fixture(scope="module")
def rsa_key():  # type: ignore[no-untyped-def]
    return auth.generate_rsa_key()


# --- mysql_native_password -----------------------------------------------------------------


@given(_password, _nonce)
def test_native_scramble_matches_pymysql(password: bytes, nonce: bytes) -> None:
    assert auth.scramble_native(password, nonce) == pymysql_auth.scramble_native_password(
        password, nonce
    )


@given(_password, _nonce)
def test_native_scramble_matches_the_definition(password: bytes, nonce: bytes) -> None:
    sha1 = hashlib.sha1
    stage1 = sha1(password).digest()
    mask = sha1(nonce + sha1(stage1).digest()).digest()
    assert auth.scramble_native(password, nonce) == bytes(a ^ b for a, b in zip(stage1, mask, strict=True))


def test_native_scramble_is_the_answer_mariadb_accepted() -> None:
    ex = golden.login("login_ok")
    greeting = parse_handshake(_payloads(ex["greeting"])[0])  # type: ignore[arg-type]
    sent = parse_handshake_response(_payloads(ex["requests"][0])[0])  # type: ignore[index]
    assert _payloads(ex["replies"][0])[0][0] == 0x00  # type: ignore[index]  # MariaDB said OK
    password = golden.load()["logins"]["password"].encode()  # type: ignore[index]
    assert sent.auth_response == auth.scramble_native(password, greeting.auth_data)


def test_native_answer_to_an_auth_switch_is_what_mariadb_accepted() -> None:
    ex = golden.login("auth_switch")
    replies, requests = ex["replies"], ex["requests"]
    switch = parse_auth_switch(_payloads(replies[0])[0])  # type: ignore[index]
    password = golden.load()["logins"]["password"].encode()  # type: ignore[index]
    assert _payloads(requests[1])[0] == auth.scramble_native(password, switch.data)  # type: ignore[index]
    assert _payloads(replies[1])[0][0] == 0x00  # type: ignore[index]


def test_native_hash_text_is_mariadb_password_function() -> None:
    logins = golden.load()["logins"]
    assert auth.native_hash_text(logins["password"].encode()) == logins["password_hash"]  # type: ignore[index]


def test_empty_password_scrambles_to_nothing() -> None:
    assert auth.scramble_native(b"", b"n" * 20) == b""
    assert auth.scramble_caching_sha2(b"", b"n" * 20) == b""


@given(_password, _nonce)
def test_verify_native_recovers_stage1(password: bytes, nonce: bytes) -> None:
    answer = auth.scramble_native(password, nonce)
    stage1 = auth.verify_native(auth.native_stage2(password), nonce, answer)
    assert stage1 == hashlib.sha1(password).digest()
    # stage1 alone answers any other nonce exactly as the password would.
    other = bytes(reversed(nonce))
    assert auth.scramble_native_from_stage1(stage1, other) == auth.scramble_native(password, other)


def test_verify_native_rejects_wrong_answers() -> None:
    nonce = bytes(range(20))
    stage2 = auth.native_stage2(b"secret")
    assert auth.verify_native(stage2, nonce, auth.scramble_native(b"Secret", nonce)) is None
    assert auth.verify_native(stage2, nonce, auth.scramble_native(b"secret", nonce)[:19]) is None
    assert auth.verify_native(stage2, nonce, b"") is None
    assert auth.verify_native(stage2, nonce[::-1], auth.scramble_native(b"secret", nonce)) is None


def test_nonce_with_trailing_nul_uses_the_first_20_bytes() -> None:
    nonce = bytes(range(1, 21))
    assert auth.scramble_native(b"pw", nonce + b"\0") == auth.scramble_native(b"pw", nonce)


def test_random_nonce_is_20_bytes_without_nul() -> None:
    from proxy.protocol.handshake import random_nonce

    nonces = {random_nonce() for _ in range(50)}
    assert len(nonces) == 50
    for n in nonces:
        assert len(n) == 20 and b"\0" not in n


# --- caching_sha2_password -----------------------------------------------------------------


@given(_password, _nonce)
def test_caching_sha2_scramble_matches_pymysql(password: bytes, nonce: bytes) -> None:
    assert auth.scramble_caching_sha2(password, nonce) == pymysql_auth.scramble_caching_sha2(
        password, nonce
    )


@given(_password, _nonce)
def test_caching_sha2_verify(password: bytes, nonce: bytes) -> None:
    answer = auth.scramble_caching_sha2(password, nonce)
    stage2 = auth.sha2_stage2(password)
    assert auth.verify_caching_sha2(stage2, nonce, answer)
    assert not auth.verify_caching_sha2(stage2, nonce, auth.scramble_caching_sha2(password + b"x", nonce))
    assert not auth.verify_caching_sha2(stage2, nonce, answer[:31])
    assert not auth.verify_caching_sha2(stage2, bytes(20), answer) or nonce == bytes(20)


# --- RSA (caching_sha2 full authentication without TLS) ------------------------------------


@settings(max_examples=10, deadline=None)
@given(_password, _nonce)
def test_rsa_round_trip(rsa_key, password: bytes, nonce: bytes) -> None:  # type: ignore[no-untyped-def]
    pem = auth.public_key_pem(rsa_key)
    assert auth.rsa_decrypt_password(rsa_key, auth.rsa_encrypt_password(password, nonce, pem), nonce) == password


def test_rsa_decrypts_what_pymysql_encrypts(rsa_key) -> None:  # type: ignore[no-untyped-def]
    nonce = bytes(range(30, 50))
    pem = auth.public_key_pem(rsa_key)
    data = pymysql_auth.sha2_rsa_encrypt(b"s3cret", nonce, pem)
    assert auth.rsa_decrypt_password(rsa_key, data, nonce) == b"s3cret"


def test_rsa_with_the_wrong_nonce_does_not_give_the_password(rsa_key) -> None:  # type: ignore[no-untyped-def]
    pem = auth.public_key_pem(rsa_key)
    data = auth.rsa_encrypt_password(b"s3cret", b"a" * 20, pem)
    assert auth.rsa_decrypt_password(rsa_key, data, b"b" * 20) != b"s3cret"


def test_rsa_encrypt_refuses_a_non_rsa_key() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="RSA"):
        auth.rsa_encrypt_password(b"pw", b"n" * 20, pem)
