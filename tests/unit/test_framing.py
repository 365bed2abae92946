"""Framing: 4-byte headers, 16 MiB continuation frames, PacketReader reassembly and limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.protocol.constants import MAX_PAYLOAD
from proxy.protocol.framing import (
    PacketReader,
    PacketTooLarge,
    frame,
    frames,
    header,
    next_seq_after,
)
from proxy.protocol.wire import ProtocolError
from tests.support import golden

# Payload sizes around the 0xFFFFFF frame limit; 2 * 0xFFFFFF needs an empty trailing frame.
BOUNDARY_SIZES = [0, 1, MAX_PAYLOAD - 1, MAX_PAYLOAD, MAX_PAYLOAD + 1, 2 * MAX_PAYLOAD]


def _layout(data: bytes) -> list[tuple[int, int]]:
    """(length, seq) of each frame, read with plain slicing, independent of PacketReader."""
    return [(length, seq) for _, length, seq in golden.split_frames(data)]


def test_header_packs_length_and_sequence_id() -> None:
    assert header(3, 1) == b"\x03\x00\x00\x01"
    assert header(MAX_PAYLOAD, 0xFF) == b"\xff\xff\xff\xff"
    assert header(0, 0x100) == b"\x00\x00\x00\x00"  # sequence ids wrap at 256


def test_small_packet_is_one_frame() -> None:
    assert frame(b"\x0e", 0) == b"\x01\x00\x00\x00\x0e"
    assert frame(b"", 7) == b"\x00\x00\x00\x07"


def test_a_small_payload_is_one_buffer_and_a_large_one_is_not_copied() -> None:
    """A statement goes out in one write (one bytes: the transport's direct write path, no
    writev request); a payload of 64 KiB or more is written from the caller's buffer."""
    small = memoryview(b"\x03SELECT 1")
    assert frames(small, 0) == [frame(b"\x03SELECT 1", 0)]
    large = bytearray(b"x" * (64 * 1024))
    buffers = frames(memoryview(large), 5)
    assert len(buffers) == 2 and buffers[0] == header(len(large), 5)
    large[0] = ord("y")  # the view still reads the caller's bytes: nothing was copied
    assert bytes(buffers[1][:1]) == b"y"
    assert frames(b"x" * (64 * 1024 - 1), 0) == [frame(b"x" * (64 * 1024 - 1), 0)]


@pytest.fixture(scope="module")
def big_payloads() -> dict[int, bytes]:
    # Distinct byte patterns per size so that a misplaced frame boundary shows.
    return {size: bytes(range(251)) * (size // 251) + bytes(size % 251) for size in BOUNDARY_SIZES}


@pytest.mark.parametrize("size", BOUNDARY_SIZES)
def test_frames_split_at_0xffffff_and_end_with_a_short_frame(
    size: int, big_payloads: dict[int, bytes]
) -> None:
    payload = big_payloads[size]
    data = b"".join(frames(payload, 250))
    full, last = divmod(size, MAX_PAYLOAD)
    expected = [(MAX_PAYLOAD, (250 + i) & 0xFF) for i in range(full)]
    expected.append((last, (250 + full) & 0xFF))
    assert _layout(data) == expected
    assert frame(payload, 250) == data
    assert next_seq_after(size, 250) == (250 + full + 1) & 0xFF
    # The payload survives the split byte for byte.
    assert b"".join(data[off + 4 : off + 4 + n] for off, n, _ in golden.split_frames(data)) == payload


@pytest.mark.parametrize("size", BOUNDARY_SIZES)
def test_packet_reader_reassembles_continued_packets(
    size: int, big_payloads: dict[int, bytes]
) -> None:
    payload = big_payloads[size]
    data = frame(payload, 3) + frame(b"next", next_seq_after(size, 3))
    reader = PacketReader()
    chunk = 1 << 20
    got = []
    for i in range(0, len(data), chunk):
        reader.feed(data[i : i + chunk])
        while (pkt := reader.next_packet()) is not None:
            got.append(pkt)
    assert len(got) == 2
    assert got[0][0] == 3 and got[0][1] == payload  # seq of the first frame
    assert got[1] == (next_seq_after(size, 3), b"next")
    assert reader.last_seq == next_seq_after(size, 3)
    assert reader.buffered() == 0


def test_packet_reader_waits_for_the_empty_trailing_frame() -> None:
    payload = b"y" * MAX_PAYLOAD
    data = frame(payload, 0)
    reader = PacketReader()
    reader.feed(data[:-4])  # everything but the empty frame's header
    assert reader.next_packet() is None
    reader.feed(data[-4:])
    assert reader.next_packet() == (0, payload)
    assert reader.last_seq == 1


def test_packet_reader_one_byte_at_a_time() -> None:
    packets = [(0, b""), (1, b"\x03SELECT 1"), (2, bytes(range(256)) * 3)]
    data = b"".join(frame(p, s) for s, p in packets)
    reader = PacketReader()
    got = []
    for i in range(len(data)):
        reader.feed(data[i : i + 1])
        while (pkt := reader.next_packet()) is not None:
            got.append(pkt)
    assert got == packets


def test_packet_too_large_is_raised_from_the_header_before_the_payload_arrives() -> None:
    reader = PacketReader(max_payload=100)
    reader.feed(header(101, 0))  # only the header: nothing of the payload is buffered yet
    with pytest.raises(PacketTooLarge) as info:
        reader.next_packet()
    assert (info.value.size, info.value.limit) == (101, 100)
    assert isinstance(info.value, ProtocolError)


def test_packet_too_large_counts_continuation_frames() -> None:
    reader = PacketReader(max_payload=MAX_PAYLOAD + 10)
    reader.feed(frame(b"z" * MAX_PAYLOAD, 0)[: 4 + MAX_PAYLOAD])  # first frame only
    assert reader.next_packet() is None
    reader.feed(header(11, 1))  # the continuation would make it MAX_PAYLOAD + 11
    with pytest.raises(PacketTooLarge) as info:
        reader.next_packet()
    assert info.value.size == MAX_PAYLOAD + 11


def test_packet_at_the_limit_is_accepted() -> None:
    reader = PacketReader(max_payload=5)
    reader.feed(frame(b"12345", 0))
    assert reader.next_packet() == (0, b"12345")


def test_take_raw_hands_over_unparsed_bytes() -> None:
    reader = PacketReader()
    reader.feed(frame(b"ssl-request", 1) + b"\x16\x03\x01 client hello")
    assert reader.next_packet() == (1, b"ssl-request")
    assert reader.take_raw() == b"\x16\x03\x01 client hello"
    assert reader.buffered() == 0
    assert reader.next_packet() is None


def test_take_raw_refuses_in_the_middle_of_a_continued_packet() -> None:
    reader = PacketReader()
    reader.feed(frame(b"a" * MAX_PAYLOAD, 0)[: 4 + MAX_PAYLOAD])
    assert reader.next_packet() is None
    with pytest.raises(ProtocolError):
        reader.take_raw()


def test_golden_responses_split_into_packets_that_reframe_to_the_same_bytes() -> None:
    for variant in golden.VARIANTS:
        for name in golden.names():
            data = golden.response(variant, name).response
            reader = PacketReader()
            reader.feed(data)
            packets = []
            while (pkt := reader.next_packet()) is not None:
                packets.append(pkt)
            assert b"".join(frame(p, s) for s, p in packets) == data, name
            assert [s for s, _ in packets] == list(range(1, len(packets) + 1)), name


_payloads = st.lists(
    st.tuples(st.integers(0, 255), st.binary(max_size=300)), min_size=1, max_size=8
)


@given(_payloads, st.data())
def test_any_chunking_yields_the_same_packets(
    packets: list[tuple[int, bytes]], data: st.DataObject
) -> None:
    stream = b"".join(frame(p, s) for s, p in packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    reader = PacketReader()
    got = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        reader.feed(stream[prev:cut])
        prev = cut
        while (pkt := reader.next_packet()) is not None:
            got.append(pkt)
    assert got == packets


@settings(max_examples=300)
@given(st.binary(max_size=200), st.integers(0, 300))
def test_arbitrary_bytes_give_packets_none_or_protocol_error(data: bytes, limit: int) -> None:
    reader = PacketReader(max_payload=limit)
    reader.feed(data)
    try:
        while reader.next_packet() is not None:
            pass
    except ProtocolError:
        pass
