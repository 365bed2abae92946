"""Password scrambles for mysql_native_password and caching_sha2_password, as pure functions.

Both sides live here: the proxy verifies clients (server side) and authenticates to backends
(client side). Comparisons use ``hmac.compare_digest``.

mysql_native_password, with stage1 = SHA1(password) and stage2 = SHA1(stage1) (the stored hash):
    client sends   stage1 XOR SHA1(nonce + stage2)
A server that knows only stage2 can recover stage1 from a correct answer, and with stage1 it can
answer any other server's nonce: that is how Baton logs into backends for users configured with
a hash only (as ProxySQL does).

caching_sha2_password fast path, with s1 = SHA256(password), s2 = SHA256(s1):
    client sends   s1 XOR SHA256(s2 + nonce)
Full authentication sends the password itself, in clear over TLS, or RSA-OAEP encrypted
(password + NUL, XORed with the nonce) with the server's public key.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=False))


def _nonce20(nonce: bytes) -> bytes:
    return nonce[:20]


def native_stage1(password: bytes) -> bytes:
    return hashlib.sha1(password).digest()


def native_stage2(password: bytes) -> bytes:
    return hashlib.sha1(hashlib.sha1(password).digest()).digest()


def native_hash_text(password: bytes) -> str:
    """The ``*HEX`` form MySQL stores and ``PASSWORD()`` returns."""
    return "*" + native_stage2(password).hex().upper()


def scramble_native(password: bytes, nonce: bytes) -> bytes:
    if not password:
        return b""
    return scramble_native_from_stage1(native_stage1(password), nonce)


def scramble_native_from_stage1(stage1: bytes, nonce: bytes) -> bytes:
    stage2 = hashlib.sha1(stage1).digest()
    return _xor(stage1, hashlib.sha1(_nonce20(nonce) + stage2).digest())


def verify_native(stage2: bytes, nonce: bytes, response: bytes) -> bytes | None:
    """Checks a native scramble; returns stage1 (SHA1 of the password) when it is right."""
    if len(response) != 20:
        return None
    stage1 = _xor(response, hashlib.sha1(_nonce20(nonce) + stage2).digest())
    if hmac.compare_digest(hashlib.sha1(stage1).digest(), stage2):
        return stage1
    return None


def sha2_stage2(password: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(password).digest()).digest()


def scramble_caching_sha2(password: bytes, nonce: bytes) -> bytes:
    if not password:
        return b""
    s1 = hashlib.sha256(password).digest()
    s2 = hashlib.sha256(s1).digest()
    return _xor(s1, hashlib.sha256(s2 + _nonce20(nonce)).digest())


def verify_caching_sha2(stage2: bytes, nonce: bytes, response: bytes) -> bool:
    if len(response) != 32:
        return False
    s1 = _xor(response, hashlib.sha256(stage2 + _nonce20(nonce)).digest())
    return hmac.compare_digest(hashlib.sha256(s1).digest(), stage2)


def rsa_encrypt_password(password: bytes, nonce: bytes, public_key_pem: bytes) -> bytes:
    key = serialization.load_pem_public_key(public_key_pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("server public key is not an RSA key")
    plain = password + b"\0"
    n20 = _nonce20(nonce)
    masked = bytes(c ^ n20[i % len(n20)] for i, c in enumerate(plain))
    return key.encrypt(masked, _OAEP)


def rsa_decrypt_password(private_key: rsa.RSAPrivateKey, data: bytes, nonce: bytes) -> bytes:
    masked = private_key.decrypt(data, _OAEP)
    n20 = _nonce20(nonce)
    plain = bytes(c ^ n20[i % len(n20)] for i, c in enumerate(masked))
    return plain[:-1] if plain.endswith(b"\0") else plain


_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


def generate_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_key_pem(private_key: rsa.RSAPrivateKey) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
