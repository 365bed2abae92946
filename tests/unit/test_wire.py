"""Primitive wire types: fixed and length-encoded integers and strings, PayloadReader."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.protocol.wire import (
    PayloadReader,
    ProtocolError,
    int1,
    int2,
    int3,
    int4,
    int8,
    lenenc_int,
    lenenc_str,
)

# (value, encoding) at every boundary of the length-encoded integer format.
LENENC_VECTORS = [
    (0, "00"),
    (250, "fa"),
    (251, "fcfb00"),
    (0xFFFF, "fcffff"),
    (0x10000, "fd000001"),
    (0xFFFFFF, "fdffffff"),
    (0x1000000, "fe0000000100000000"),
    (17 * 1024 * 1024, "fe0000100100000000"),  # the 17 MiB golden row's prefix
    (2**64 - 1, "feffffffffffffffff"),
]


@pytest.mark.parametrize(("value", "encoded"), LENENC_VECTORS)
def test_lenenc_int_encodes_each_size_class(value: int, encoded: str) -> None:
    assert lenenc_int(value).hex() == encoded
    r = PayloadReader(bytes.fromhex(encoded))
    assert r.lenenc_int() == value
    assert r.remaining() == 0


def test_lenenc_int_rejects_negative_and_oversized_values() -> None:
    with pytest.raises(ValueError):
        lenenc_int(-1)
    with pytest.raises(ValueError):
        lenenc_int(2**64)


def test_lenenc_0xfb_reads_as_sql_null_and_0xff_is_invalid() -> None:
    assert PayloadReader(b"\xfb").lenenc_int() is None
    assert PayloadReader(b"\xfb").lenenc_bytes() is None
    with pytest.raises(ProtocolError):
        PayloadReader(b"\xfb").lenenc_bytes_strict()
    with pytest.raises(ProtocolError, match="0xff"):
        PayloadReader(b"\xff").lenenc_int()


def test_fixed_width_integers_are_little_endian_and_truncate_to_width() -> None:
    assert int1(0x1FF) == b"\xff"
    assert int2(0x0102) == b"\x02\x01"
    assert int3(0x010203) == b"\x03\x02\x01"
    assert int3(0xFF010203) == b"\x03\x02\x01"
    assert int4(0x01020304) == b"\x04\x03\x02\x01"
    assert int8(1) == b"\x01" + b"\0" * 7
    r = PayloadReader(b"\x01\x02\x01\x03\x02\x01\x04\x03\x02\x01" + int8(2**63))
    assert (r.int1(), r.int2(), r.int3(), r.int4(), r.int8()) == (1, 0x0102, 0x010203, 0x01020304, 2**63)


@pytest.mark.parametrize(
    "read",
    ["int1", "int2", "int3", "int4", "int8", "bytes", "skip", "lenenc_int", "null_terminated"],
)
def test_reading_past_the_end_raises_protocol_error(read: str) -> None:
    r = PayloadReader(b"\x00")
    r.int1()
    with pytest.raises(ProtocolError):
        getattr(r, read)(*((2,) if read in ("bytes", "skip") else ()))
    assert r.pos == 1  # a failed read consumes nothing


def test_lenenc_string_longer_than_the_packet_raises_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        PayloadReader(b"\x05abc").lenenc_bytes()


def test_truncated_lenenc_int_raises_protocol_error() -> None:
    for data in (b"\xfc\x01", b"\xfd\x01\x02", b"\xfe" + b"\0" * 7):
        with pytest.raises(ProtocolError):
            PayloadReader(data).lenenc_int()


def test_null_terminated_works_on_bytes_bytearray_and_memoryview() -> None:
    for data in (b"ab\0cd\0", bytearray(b"ab\0cd\0"), memoryview(b"xxab\0cd\0")[2:]):
        r = PayloadReader(data)
        assert r.null_terminated() == b"ab"
        assert r.null_terminated() == b"cd"
        assert r.remaining() == 0
    with pytest.raises(ProtocolError):
        PayloadReader(memoryview(b"no terminator")).null_terminated()


def test_null_terminated_does_not_look_past_the_reader_end() -> None:
    r = PayloadReader(b"abc\0")
    r.end = 3  # as if the packet ended before the NUL
    with pytest.raises(ProtocolError):
        r.null_terminated()


def test_rest_returns_the_remainder_and_empties_the_reader() -> None:
    r = PayloadReader(b"\x01tail")
    r.int1()
    assert r.rest() == b"tail"
    assert r.remaining() == 0
    assert r.rest() == b""


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_lenenc_int_round_trips(value: int) -> None:
    r = PayloadReader(lenenc_int(value) + b"tail")
    assert r.lenenc_int() == value
    assert r.rest() == b"tail"


@given(st.binary(max_size=70000))
def test_lenenc_str_round_trips(value: bytes) -> None:
    r = PayloadReader(lenenc_str(value) + lenenc_str(b"next"))
    assert r.lenenc_bytes_strict() == value
    assert r.lenenc_bytes_strict() == b"next"
    assert r.remaining() == 0


_OPS = st.lists(
    st.sampled_from(
        ["int1", "int2", "int3", "int4", "int8", "lenenc_int", "lenenc_bytes",
         "lenenc_bytes_strict", "null_terminated", "rest", "skip", "bytes"]
    ),
    max_size=12,
)


@given(st.binary(max_size=64), _OPS)
def test_arbitrary_bytes_read_or_raise_protocol_error(data: bytes, ops: list[str]) -> None:
    r = PayloadReader(data)
    try:
        for op in ops:
            if op in ("skip", "bytes"):
                getattr(r, op)(3)
            else:
                getattr(r, op)()
            assert 0 <= r.pos <= r.end
    except ProtocolError:
        pass
