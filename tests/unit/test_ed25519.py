"""MariaDB's client_ed25519 signature: RFC 8032 vectors, any password length, the handshake.

For a 32-byte password MariaDB's derivation is exactly RFC 8032's (SHA-512 of the seed), so
the RFC's test vectors and ``cryptography``'s signer pin the arithmetic; for any other
length, ``cryptography``'s verifier must accept what Baton signs.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.protocol import ed25519
from proxy.protocol.constants import ED25519
from proxy.protocol.framing import PacketReader
from proxy.protocol.handshake import ClientHandshake, Send
from proxy.protocol.packets import Handshake, encode_handshake, parse_auth_switch
from proxy.protocol.wire import ProtocolError

RFC8032 = [  # RFC 8032 section 7.1, TEST 1 and TEST 2: (secret key, public key, message, signature)
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e3970"
        "1cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613"
        "d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032)
def test_rfc8032_vectors(secret: str, public: str, message: str, signature: str) -> None:
    assert ed25519.public_key(bytes.fromhex(secret)).hex() == public
    assert ed25519.sign(bytes.fromhex(secret), bytes.fromhex(message)).hex() == signature


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=64))
def test_a_32_byte_password_signs_as_any_rfc8032_signer(seed: bytes, message: bytes) -> None:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert ed25519.public_key(seed) == raw
    assert ed25519.sign(seed, message) == key.sign(message)


@settings(max_examples=25, deadline=None)
@given(st.binary(max_size=100), st.binary(min_size=32, max_size=32))
def test_signatures_from_any_password_verify(password: bytes, nonce: bytes) -> None:
    signature = ed25519.sign(password, nonce)
    assert len(signature) == 64
    Ed25519PublicKey.from_public_bytes(ed25519.public_key(password)).verify(signature, nonce)


def _greeting() -> bytes:
    payload = encode_handshake(
        Handshake(
            server_version="10.11.19-MariaDB",
            connection_id=7,
            auth_data=b"A" * 20,
            capabilities=0xFFFFFFFF & ~(1 << 11),  # everything but SSL
            charset=45,
            status=2,
            auth_plugin="mysql_native_password",
        )
    )
    return payload


def _switch(nonce: bytes) -> bytes:
    return b"\xfe" + ED25519.encode() + b"\0" + nonce


def test_login_answers_an_ed25519_switch_with_the_signature_of_the_raw_nonce() -> None:
    """The nonce is 32 raw bytes: one ending in a zero byte keeps it (scrambles of the other
    plugins end in a NUL terminator that is not part of them)."""
    nonce = bytes(range(1, 32)) + b"\0"
    assert parse_auth_switch(_switch(nonce)).data == nonce
    hs = ClientHandshake(user="edapp", password=b"ed-secret")
    hs.receive(0, _greeting())
    (reply,) = hs.receive(2, _switch(nonce))
    assert isinstance(reply, Send)
    reader = PacketReader()
    reader.feed(reply.data)
    seq, payload = reader.next_packet()  # type: ignore[misc]
    assert seq == 3
    assert payload == ed25519.sign(b"ed-secret", nonce)


def test_an_ed25519_switch_without_the_plain_password_is_refused_by_name() -> None:
    hs = ClientHandshake(user="edapp", password=None, stage1=b"\x01" * 20)
    hs.receive(0, _greeting())
    with pytest.raises(ProtocolError, match="client_ed25519, which needs the plain password"):
        hs.receive(2, _switch(b"n" * 32))


def test_an_ed25519_nonce_of_the_wrong_length_is_a_protocol_error() -> None:
    hs = ClientHandshake(user="edapp", password=b"pw")
    hs.receive(0, _greeting())
    with pytest.raises(ProtocolError, match="31-byte ed25519 nonce"):
        hs.receive(2, _switch(b"n" * 31))
