"""The compressed protocol's framing, sans-I/O: bytes in, bytes out.

Round trips under any chunking, the sequence ids a server answers with, where compressed
packets may end (clients depend on it), and every way a peer's compressed packet can be bad.
"""

from __future__ import annotations

import os
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.protocol.compression import (
    HEADER_LEN,
    MAX_CHUNK,
    MIN_COMPRESS_LENGTH,
    CompressedStream,
    compressed_packet,
)
from proxy.protocol.framing import frame, frames
from proxy.protocol.wire import ProtocolError


def split_packets(data: bytes) -> list[tuple[int, int, bytes]]:
    """(compressed seq, uncompressed length field, stream bytes) of each compressed packet."""
    out = []
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 3], "little")
        seq = data[pos + 3]
        raw_len = int.from_bytes(data[pos + 4 : pos + 7], "little")
        body = data[pos + 7 : pos + 7 + length]
        assert len(body) == length, "truncated compressed packet"
        out.append((seq, raw_len, body if raw_len == 0 else zlib.decompress(body)))
        pos += 7 + length
    return out


def inner_frame_ends(stream: bytes) -> list[int]:
    ends, pos = [], 0
    while pos < len(stream):
        pos += 4 + int.from_bytes(stream[pos : pos + 3], "little")
        ends.append(pos)
    assert pos == len(stream)
    return ends


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


payloads = st.lists(
    st.one_of(st.binary(max_size=300), st.builds(lambda n, b: b * n, st.integers(0, 5000), st.binary(min_size=1, max_size=3))),
    min_size=1,
    max_size=20,
)


@settings(max_examples=200, deadline=None)
@given(payloads, st.lists(st.integers(min_value=0), max_size=10), st.lists(st.integers(min_value=0), max_size=10))
def test_wrap_then_unwrap_gives_back_the_stream_under_any_chunking(
    items: list[bytes], write_cuts: list[int], read_cuts: list[int]
) -> None:
    stream = b"".join(frame(p, i & 0xFF) for i, p in enumerate(items))
    sender = CompressedStream()
    sender.next_seq = 1  # the answer to a command that came with compressed seq 0
    wire = b"".join(sender.wrap([piece]) for piece in chunked(stream, write_cuts))
    assert sender.unsent == 0  # whole inner packets were written, so all of it went out
    receiver = CompressedStream()
    got = b"".join(receiver.unwrap(piece) for piece in chunked(wire, read_cuts))
    assert got == stream
    assert receiver.buffered == 0
    seqs = [seq for seq, _, _ in split_packets(wire)]
    assert seqs == [(1 + i) & 0xFF for i in range(len(seqs))]
    assert receiver.next_seq == (1 + len(seqs)) & 0xFF


@settings(max_examples=200, deadline=None)
@given(payloads, st.lists(st.integers(min_value=0), max_size=10))
def test_compressed_packets_end_where_inner_packets_end(items: list[bytes], write_cuts: list[int]) -> None:
    stream = b"".join(frame(p, 0) for p in items)
    sender = CompressedStream()
    wire = b"".join(sender.wrap([piece]) for piece in chunked(stream, write_cuts))
    ends = set(inner_frame_ends(stream))
    offset = 0
    for _, _, body in split_packets(wire):
        offset += len(body)
        assert offset in ends


def test_a_partial_inner_packet_waits_for_the_rest() -> None:
    packet = frame(b"x" * 100, 3)
    sender = CompressedStream()
    assert sender.wrap([packet[:50]]) == b""
    assert sender.unsent == 50
    wire = sender.wrap([packet[50:], frame(b"y", 4)[:2]])
    assert [body for _, _, body in split_packets(wire)] == [packet]
    assert sender.unsent == 2


@pytest.mark.parametrize("size", [MAX_CHUNK - 4, MAX_CHUNK - 3, MAX_CHUNK, MAX_CHUNK + 1, 2 * MAX_CHUNK + 7])
def test_packets_of_sixteen_mib_span_at_most_two_compressed_packets(size: int) -> None:
    """mysql-connector-python reads one more compressed packet, not two, to finish an
    inner packet: a 16 MiB frame plus its header must straddle exactly one boundary."""
    payload = os.urandom(1024) * (size // 1024) + os.urandom(size % 1024)
    stream = b"".join(bytes(b) for b in frames(payload, 0)) + frame(b"tail" * 20, 9)
    sender = CompressedStream()
    wire = b"".join(sender.wrap([stream[i : i + (1 << 20)]]) for i in range(0, len(stream), 1 << 20))
    packets = split_packets(wire)
    assert b"".join(body for _, _, body in packets) == stream
    assert all(len(body) <= MAX_CHUNK for _, _, body in packets)
    bounds, offset = [], 0
    for _, _, body in packets:
        bounds.append((offset, offset + len(body)))
        offset += len(body)
    start = 0
    for end in inner_frame_ends(stream):
        spanned = [b for b in bounds if b[0] < end and b[1] > start]
        assert len(spanned) <= 2, (start, end, spanned)
        start = end


def test_short_and_incompressible_chunks_go_out_as_they_are() -> None:
    short = frame(b"ok", 1)
    assert len(short) < MIN_COMPRESS_LENGTH
    assert compressed_packet(short, 5) == len(short).to_bytes(3, "little") + b"\x05" + b"\x00\x00\x00" + short
    noise = frame(os.urandom(4000), 1)
    packed = compressed_packet(noise, 6)
    assert packed[4:7] == b"\x00\x00\x00" and packed[HEADER_LEN:] == noise
    text = frame(b"SELECT 1 FROM dual WHERE x = 'aaaa'" * 20, 0)
    packed = compressed_packet(text, 0)
    assert int.from_bytes(packed[4:7], "little") == len(text)
    assert zlib.decompress(packed[HEADER_LEN:]) == text
    assert len(packed) < len(text)


def test_the_answer_takes_the_sequence_id_after_the_commands() -> None:
    """A command in compressed packets 0..k is answered from k+1 on; the next command starts
    at 0 again, and so does the answer's count."""
    server = CompressedStream()
    command = frame(b"\x03" + b"SELECT 1" * 10, 0)
    server.unwrap(compressed_packet(command, 0))
    assert server.next_seq == 1
    answer = server.wrap([frame(b"\x00\x00\x00\x02\x00\x00\x00", 1)])
    assert answer[3] == 1 and server.next_seq == 2
    big = frame(b"\x03" + b"z" * 100, 0)
    server.unwrap(compressed_packet(big[:60], 0) + compressed_packet(big[60:], 1))
    assert server.next_seq == 2
    assert server.wrap([frame(b"\x00" * 7, 1)])[3] == 2


def test_unwrap_with_a_budget_leaves_whole_packets_for_later() -> None:
    stream = b"".join(frame(bytes([i]) * 1_000_000, 0) for i in range(10))
    sender = CompressedStream()
    wire = b"".join(sender.wrap([stream[i : i + 1_000_004]]) for i in range(0, len(stream), 1_000_004))
    assert len(wire) < 100_000  # ten zlib "bombs" of 1 MB each
    receiver = CompressedStream()
    first = receiver.unwrap(wire, budget=2_500_000)
    assert len(first) == 3 * 1_000_004  # stops after the packet that crosses the budget
    assert receiver.backlog
    rest = []
    while receiver.backlog:
        rest.append(receiver.unwrap(b"", budget=2_500_000))
    assert first + b"".join(rest) == stream
    assert receiver.buffered == 0 and receiver.next_seq == 10


def test_backlog_is_only_a_whole_packet() -> None:
    receiver = CompressedStream()
    packet = compressed_packet(frame(b"x" * 100, 0), 0)
    receiver.unwrap(packet[:-1], budget=0)
    assert not receiver.backlog and receiver.buffered == len(packet) - 1
    assert receiver.unwrap(packet[-1:], budget=0) == b""  # budget 0: nothing inflated yet
    assert receiver.backlog
    assert receiver.unwrap(b"") == frame(b"x" * 100, 0)


def test_unwrap_of_a_bad_zlib_body_is_a_protocol_error() -> None:
    body = b"\x78\x9c" + b"\xff" * 20
    with pytest.raises(ProtocolError, match="does not inflate"):
        CompressedStream().unwrap(len(body).to_bytes(3, "little") + b"\x00" + (100).to_bytes(3, "little") + body)


@pytest.mark.parametrize(
    "claimed, real",
    [(100, b"a" * 50), (10, b"a" * 10_000_000), (5, b"hello world and more")],
    ids=["shorter-than-claimed", "zlib-bomb", "longer-than-claimed"],
)
def test_unwrap_insists_on_the_claimed_length(claimed: int, real: bytes) -> None:
    body = zlib.compress(real)
    packet = len(body).to_bytes(3, "little") + b"\x00" + claimed.to_bytes(3, "little") + body
    with pytest.raises(ProtocolError, match="header says"):
        CompressedStream().unwrap(packet)


def test_unwrap_refuses_bytes_after_the_zlib_stream() -> None:
    body = zlib.compress(b"q" * 200) + b"junk"
    packet = len(body).to_bytes(3, "little") + b"\x00" + (200).to_bytes(3, "little") + body
    with pytest.raises(ProtocolError):
        CompressedStream().unwrap(packet)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_unwrap_of_arbitrary_bytes_never_fails_otherwise(data: bytes) -> None:
    stream = CompressedStream()
    try:
        out = stream.unwrap(data)
    except ProtocolError:
        return
    assert isinstance(out, bytes)
    assert stream.buffered <= len(data)
