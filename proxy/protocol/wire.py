"""Primitive MySQL wire types: fixed and length-encoded integers and strings.

``PayloadReader`` walks a packet payload with ``struct.unpack_from`` and an offset, so reading
fields never slices the packet except to return a string the caller asked for.
"""

from __future__ import annotations

import struct

_U16 = struct.Struct("<H")
_U24_LO = struct.Struct("<HB")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class ProtocolError(Exception):
    """Bytes that do not follow the MySQL protocol. The only exception codecs may raise."""


def int1(value: int) -> bytes:
    return bytes((value & 0xFF,))


def int2(value: int) -> bytes:
    return _U16.pack(value & 0xFFFF)


def int3(value: int) -> bytes:
    return _U32.pack(value & 0xFFFFFF)[:3]


def int4(value: int) -> bytes:
    return _U32.pack(value & 0xFFFFFFFF)


def int8(value: int) -> bytes:
    return _U64.pack(value & 0xFFFFFFFFFFFFFFFF)


def lenenc_int(value: int) -> bytes:
    if value < 0:
        raise ValueError("length-encoded integers are unsigned")
    if value < 0xFB:
        return bytes((value,))
    if value < 1 << 16:
        return b"\xfc" + _U16.pack(value)
    if value < 1 << 24:
        return b"\xfd" + _U32.pack(value)[:3]
    if value < 1 << 64:
        return b"\xfe" + _U64.pack(value)
    raise ValueError("length-encoded integer out of range")


def lenenc_str(value: bytes) -> bytes:
    return lenenc_int(len(value)) + value


# PayloadReader has a method named ``bytes``; annotations after it inside the class would name
# the method, not the type, so they use this alias.
_Bytes = bytes


class PayloadReader:
    """Sequential reader over one packet payload. Raises ProtocolError when it runs out."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes | bytearray | memoryview, pos: int = 0) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data)

    def remaining(self) -> int:
        return self.end - self.pos

    def _need(self, n: int) -> None:
        if self.pos + n > self.end:
            raise ProtocolError(
                f"packet truncated: need {n} byte(s) at offset {self.pos}, have {self.end - self.pos}"
            )

    def int1(self) -> int:
        self._need(1)
        value = self.data[self.pos]
        self.pos += 1
        return value

    def int2(self) -> int:
        self._need(2)
        (value,) = _U16.unpack_from(self.data, self.pos)
        self.pos += 2
        return value

    def int3(self) -> int:
        self._need(3)
        lo, hi = _U24_LO.unpack_from(self.data, self.pos)
        self.pos += 3
        return lo | (hi << 16)

    def int4(self) -> int:
        self._need(4)
        (value,) = _U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return value

    def int8(self) -> int:
        self._need(8)
        (value,) = _U64.unpack_from(self.data, self.pos)
        self.pos += 8
        return value

    def lenenc_int(self) -> int | None:
        """A length-encoded integer; None for 0xFB (SQL NULL in text rows)."""
        first = self.int1()
        if first < 0xFB:
            return first
        if first == 0xFB:
            return None
        if first == 0xFC:
            return self.int2()
        if first == 0xFD:
            return self.int3()
        if first == 0xFE:
            return self.int8()
        raise ProtocolError(f"invalid length-encoded integer prefix 0xff at offset {self.pos - 1}")

    def bytes(self, n: int) -> bytes:
        self._need(n)
        value = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return value

    def skip(self, n: int) -> None:
        self._need(n)
        self.pos += n

    def lenenc_bytes(self) -> _Bytes | None:
        length = self.lenenc_int()
        if length is None:
            return None
        return self.bytes(length)

    def lenenc_bytes_strict(self) -> _Bytes:
        value = self.lenenc_bytes()
        if value is None:
            raise ProtocolError(f"unexpected NULL marker at offset {self.pos - 1}")
        return value

    def null_terminated(self) -> _Bytes:
        data = self.data
        if isinstance(data, memoryview):
            found = bytes(data[self.pos : self.end]).find(b"\0")
            end = found + self.pos if found >= 0 else -1
        else:
            end = data.find(b"\0", self.pos, self.end)
        if end < 0:
            raise ProtocolError(f"missing NUL terminator after offset {self.pos}")
        value = bytes(data[self.pos : end])
        self.pos = end + 1
        return value

    def rest(self) -> _Bytes:
        value = bytes(self.data[self.pos : self.end])
        self.pos = self.end
        return value
