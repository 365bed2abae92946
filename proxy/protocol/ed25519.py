"""Ed25519 signing from an arbitrary-length password, for MariaDB's client_ed25519 plugin.

MariaDB's ed25519 authentication is standard Ed25519 (RFC 8032) except for one step: the
64-byte expanded secret is SHA-512 of the password itself, of any length, where RFC 8032
hashes a 32-byte seed. Libraries (``cryptography`` included) accept only the seed, so the
signature is computed here: extended twisted Edwards coordinates, RFC 8032's formulas. It
runs only when a backend login asks for it (a few milliseconds), never per query. For a
32-byte password the result equals any RFC 8032 implementation's, which the tests check.
"""

from __future__ import annotations

import hashlib

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493  # order of the base point
_D = -121665 * pow(121666, _P - 2, _P) % _P
_GX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_GY = 46316835694926478169428394003475163141307993866256225615783033603165251855960
_BASE = (_GX, _GY, 1, _GX * _GY % _P)

_Point = tuple[int, int, int, int]  # (X, Y, Z, T) with x = X/Z, y = Y/Z, x*y = T/Z


def _add(p: _Point, q: _Point) -> _Point:
    a = (p[1] - p[0]) * (q[1] - q[0]) % _P
    b = (p[1] + p[0]) * (q[1] + q[0]) % _P
    c = 2 * p[3] * q[3] * _D % _P
    d = 2 * p[2] * q[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _multiply(scalar: int, point: _Point) -> _Point:
    result: _Point = (0, 1, 1, 0)  # the neutral element
    while scalar:
        if scalar & 1:
            result = _add(result, point)
        point = _add(point, point)
        scalar >>= 1
    return result


def _encode(point: _Point) -> bytes:
    z_inv = pow(point[2], _P - 2, _P)
    x = point[0] * z_inv % _P
    y = point[1] * z_inv % _P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _expand(password: bytes) -> tuple[int, bytes]:
    digest = hashlib.sha512(password).digest()
    scalar = int.from_bytes(digest[:32], "little")
    scalar &= (1 << 254) - 8  # clear the 3 low bits and the 2 high ones
    scalar |= 1 << 254
    return scalar, digest[32:]


def public_key(password: bytes) -> bytes:
    """The 32-byte public key a server stores for this password (base64 in mysql.global_priv)."""
    scalar, _ = _expand(password)
    return _encode(_multiply(scalar, _BASE))


def sign(password: bytes, message: bytes) -> bytes:
    """The 64-byte signature R || S of ``message`` under the key derived from ``password``."""
    scalar, prefix = _expand(password)
    encoded_a = _encode(_multiply(scalar, _BASE))
    r = int.from_bytes(hashlib.sha512(prefix + message).digest(), "little") % _L
    encoded_r = _encode(_multiply(r, _BASE))
    k = int.from_bytes(hashlib.sha512(encoded_r + encoded_a + message).digest(), "little") % _L
    s = (r + k * scalar) % _L
    return encoded_r + s.to_bytes(32, "little")
