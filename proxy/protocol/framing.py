"""Packet framing: 4-byte headers (3-byte length, 1-byte sequence id) and 16 MiB continuation.

A logical packet whose payload is 0xFFFFFF bytes or longer is sent as several frames: every full
frame of exactly 0xFFFFFF bytes is followed by another, and a payload that is an exact multiple
of 0xFFFFFF ends with an empty frame. Each frame takes the next sequence id.
"""

from __future__ import annotations

import struct
from typing import Final

from .constants import MAX_PAYLOAD
from .wire import ProtocolError

_HEADER: Final = struct.Struct("<I")
# Below this size a payload is copied behind its header into one buffer: one bytes object goes
# out through the transport's direct write (a write syscall), where a header and a payload view
# take uvloop's writelines path (a write request object, writev, a completion callback on the
# next loop turn), which costs more than copying a statement of a few KiB.
_COPY_LIMIT: Final = 64 * 1024


class PacketTooLarge(ProtocolError):
    """A peer announced a packet larger than the configured limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"packet of at least {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


def header(length: int, seq: int) -> bytes:
    return _HEADER.pack(length | ((seq & 0xFF) << 24))


def frame(payload: bytes, seq: int = 0) -> bytes:
    """One small packet as a single bytes object (payload below 16 MiB)."""
    if len(payload) >= MAX_PAYLOAD:
        return b"".join(frames(payload, seq))
    return _HEADER.pack(len(payload) | ((seq & 0xFF) << 24)) + payload


def frames(payload: bytes | memoryview, seq: int = 0) -> list[bytes | memoryview]:
    """Buffers to write for one logical packet: one buffer for a small payload, views (no
    copy) of a large one."""
    length = len(payload)
    if length < _COPY_LIMIT:
        return [header(length, seq) + payload]
    if length < MAX_PAYLOAD:
        return [header(length, seq), payload]
    view = memoryview(payload)
    out: list[bytes | memoryview] = []
    offset = 0
    while True:
        chunk = min(MAX_PAYLOAD, length - offset)
        out.append(header(chunk, seq))
        out.append(view[offset : offset + chunk])
        seq = (seq + 1) & 0xFF
        offset += chunk
        if chunk < MAX_PAYLOAD:
            return out


def next_seq_after(payload_len: int, seq: int) -> int:
    """The sequence id that follows a logical packet of this length sent with ``seq``."""
    return (seq + payload_len // MAX_PAYLOAD + 1) & 0xFF


class PacketReader:
    """Reassembles logical packets from a byte stream. Sans-I/O: feed bytes, pull packets.

    ``next_packet()`` returns ``(seq, payload)`` where seq is the id of the packet's first frame,
    or None when more bytes are needed. A packet over ``max_payload`` raises PacketTooLarge as
    soon as its headers say so, before its bytes are buffered.
    """

    __slots__ = ("_buf", "_pos", "max_payload", "_parts", "_parts_len", "_first_seq", "last_seq")

    def __init__(self, max_payload: int = 1 << 30) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_payload = max_payload
        self._parts: list[bytes] = []
        self._parts_len = 0
        self._first_seq = -1
        self.last_seq = -1  # sequence id of the last frame consumed

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > 65536:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def take_whole(self, data: bytes) -> tuple[int, bytes] | None:
        """Fast path: when nothing is buffered and ``data`` is exactly one small packet (the
        usual command), return it without buffering; otherwise None (then use feed())."""
        n = len(data)
        if self._pos != len(self._buf) or self._parts or n < 4:
            return None
        length = data[0] | (data[1] << 8) | (data[2] << 16)
        if length + 4 != n or length == MAX_PAYLOAD or length > self.max_payload:
            return None
        self.last_seq = data[3]
        return data[3], data[4:]

    def buffered(self) -> int:
        return len(self._buf) - self._pos + self._parts_len

    def next_packet(self) -> tuple[int, bytes] | None:
        buf = self._buf
        while True:
            pos = self._pos
            if len(buf) - pos < 4:
                return None
            (word,) = _HEADER.unpack_from(buf, pos)
            length = word & 0xFFFFFF
            seq = word >> 24
            total = self._parts_len + length
            if total > self.max_payload:
                raise PacketTooLarge(total, self.max_payload)
            end = pos + 4 + length
            if len(buf) < end:
                return None
            chunk = bytes(buf[pos + 4 : end])
            self._pos = end
            self.last_seq = seq
            if self._first_seq < 0:
                self._first_seq = seq
            if length == MAX_PAYLOAD:
                self._parts.append(chunk)
                self._parts_len += length
                continue
            first = self._first_seq
            if self._parts:
                self._parts.append(chunk)
                chunk = b"".join(self._parts)
                self._parts = []
                self._parts_len = 0
            self._first_seq = -1
            return first, chunk

    def take_raw(self) -> bytes:
        """Hand over bytes buffered but not yet parsed (used when a connection switches to TLS)."""
        if self._parts:
            raise ProtocolError("cannot switch transport in the middle of a packet")
        rest = bytes(self._buf[self._pos :])
        self._buf.clear()
        self._pos = 0
        return rest
