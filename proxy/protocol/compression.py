"""The compressed protocol (CLIENT_COMPRESS): zlib frames around the packet stream.

Once the login's OK packet is through, both directions carry compressed packets: a 7-byte
header (3-byte compressed length, 1-byte compressed sequence id, 3-byte uncompressed length)
and a payload that is zlib data, or the bytes as they are when the uncompressed length is 0
(senders skip compression for short or incompressible chunks). A payload is a slice of the
ordinary packet stream: it may hold several packets, or part of one, and the inner packets
keep their own headers and sequence ids.

Compressed packets count their own sequence: the client starts each command at 0 and the
server answers with the id after the last one it received, as MySQL's net_serv does.

Sans-I/O: bytes in, bytes out. The front end wraps a client's transport with it only when
the client asked for compression; backends are always spoken to uncompressed.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from .wire import ProtocolError

HEADER_LEN = 7
# The uncompressed length is a 3-byte field, so one compressed packet carries at most this.
MAX_CHUNK = 0xFFFFFF
# Below this many bytes zlib's own overhead outweighs the gain; MySQL uses the same cut-off.
MIN_COMPRESS_LENGTH = 50


def compressed_packet(chunk: bytes | memoryview, seq: int, level: int = 6) -> bytes:
    """One compressed packet for up to MAX_CHUNK stream bytes."""
    length = len(chunk)
    if length > MAX_CHUNK:
        raise ValueError(f"chunk of {length} bytes exceeds {MAX_CHUNK}")
    if length >= MIN_COMPRESS_LENGTH:
        packed = zlib.compress(chunk, level)
        if len(packed) < length:
            return _header(len(packed), seq, length) + packed
    return _header(length, seq, 0) + bytes(chunk)


def _header(length: int, seq: int, uncompressed: int) -> bytes:
    return (length | (seq & 0xFF) << 24).to_bytes(4, "little") + uncompressed.to_bytes(3, "little")


class CompressedStream:
    """One connection's compressed framing, both directions.

    ``unwrap`` takes bytes from the peer and returns the packet stream inside them (buffering
    a partial compressed packet); ``wrap`` turns outgoing stream bytes into compressed
    packets with the right sequence ids.
    """

    def __init__(self, level: int = 6) -> None:
        self.level = level
        self.next_seq = 0  # id of the next compressed packet this side sends
        self._buf = bytearray()  # bytes received, not yet a whole compressed packet
        self._out = bytearray()  # stream bytes written, not yet a whole inner packet
        self._frame_end = 0  # offset in _out where the inner packet being written ends

    def unwrap(self, data: bytes | memoryview, budget: int | None = None) -> bytes:
        """The packet stream inside the compressed packets received so far.

        With a ``budget``, stops after the packet that brings the output to that many bytes
        and keeps the rest (``backlog`` says whether a whole packet is left): a few KiB of
        zlib may claim 16 MiB each, so inflating all a read brought in at once would let a
        client make Baton hold hundreds of MiB from one TCP read.
        """
        buf = self._buf
        buf += data
        out: list[bytes] = []
        produced = 0
        pos = 0
        end = len(buf)
        while end - pos >= HEADER_LEN:
            if budget is not None and produced >= budget:
                break
            word = int.from_bytes(buf[pos : pos + 4], "little")
            length, seq = word & 0xFFFFFF, word >> 24
            uncompressed = int.from_bytes(buf[pos + 4 : pos + 7], "little")
            start = pos + HEADER_LEN
            if end - start < length:
                break
            body = bytes(buf[start : start + length])
            chunk = body if uncompressed == 0 else _inflate(body, uncompressed)
            out.append(chunk)
            produced += len(chunk)
            self.next_seq = (seq + 1) & 0xFF
            pos = start + length
        del buf[:pos]
        return b"".join(out)

    @property
    def backlog(self) -> bool:
        """A whole compressed packet is buffered, left by a budget."""
        buf = self._buf
        return len(buf) >= HEADER_LEN and len(buf) - HEADER_LEN >= int.from_bytes(buf[:3], "little")

    def wrap(self, buffers: Iterable[bytes | bytearray | memoryview]) -> bytes:
        """Compressed packets for the whole packets among the stream bytes written so far.

        Compressed packets end where inner packets end, and an inner packet (at most
        16 MiB + 4 bytes) never spans more than two compressed packets: that is how a server
        frames them, and clients rely on it (mysql-connector-python reads at most one more
        compressed packet to finish an inner one). A partial inner packet waits for the rest.
        """
        out = self._out
        for buf in buffers:
            out += buf
        n = len(out)
        ends: list[int] = []  # where whole inner packets end, in order
        end = self._frame_end
        while end <= n:
            ends.append(end)
            if end + 4 > n:
                break
            end += 4 + (out[end] | out[end + 1] << 8 | out[end + 2] << 16)
        self._frame_end = end
        ready = ends[-1] if ends else 0
        if n - ready >= MAX_CHUNK:
            ready += MAX_CHUNK  # the head of an inner packet too big for one compressed packet
        packets = []
        view = memoryview(out)
        start = 0
        i = 0
        while start < ready:
            cut = ready
            if cut - start > MAX_CHUNK:
                limit = start + MAX_CHUNK
                cut = limit  # inside an inner packet bigger than a compressed one
                while i < len(ends) and ends[i] <= limit:
                    if ends[i] > start:
                        cut = ends[i]
                    i += 1
            packets.append(compressed_packet(view[start:cut], self.next_seq, self.level))
            self.next_seq = (self.next_seq + 1) & 0xFF
            start = cut
        view.release()
        if ready:
            del out[:ready]
            self._frame_end -= ready
        return b"".join(packets)

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete compressed packet still waiting for the rest."""
        return len(self._buf)

    @property
    def unsent(self) -> int:
        """Stream bytes of an incomplete inner packet, held until it is whole."""
        return len(self._out)


def _inflate(body: bytes, expected: int) -> bytes:
    """Decompress exactly ``expected`` bytes; anything else is a malformed packet.

    The limit is passed to zlib, so a small packet claiming a small size cannot expand into
    gigabytes (a zlib bomb) before the check.
    """
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(body, expected)
    except zlib.error as exc:
        raise ProtocolError(f"compressed packet does not inflate: {exc}") from None
    if len(data) != expected or inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
        raise ProtocolError(
            f"compressed packet inflates to {'more than ' if inflater.unconsumed_tail else ''}"
            f"{len(data)} bytes, header says {expected}"
        )
    return data
