"""ResponseTracker against a real MariaDB's responses, fed whole, byte by byte, and with trailing
bytes (h11 style), plus synthetic edge cases and fuzzing.

The expectations below are written by hand from what each command must produce, not read from
the tracker: a capture the table does not cover fails ``test_every_capture_has_an_expectation``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.protocol.constants import MAX_PAYLOAD, Capability, Command, ServerStatus
from proxy.protocol.framing import PacketReader, frame, frames
from proxy.protocol.packets import (
    Column,
    EofPacket,
    ErrPacket,
    OkPacket,
    encode_column,
    encode_eof,
    encode_err,
    encode_ok,
    encode_result_set,
    encode_terminator,
    parse_ok,
    parse_session_state,
)
from proxy.protocol.response import ResponseTracker, expects_response
from proxy.protocol.wire import ProtocolError, int2, int4, lenenc_int, lenenc_str
from tests.support import golden

AUTOCOMMIT = ServerStatus.AUTOCOMMIT
IN_TRANS = ServerStatus.IN_TRANS
MORE = ServerStatus.MORE_RESULTS_EXISTS
CURSOR = ServerStatus.CURSOR_EXISTS
LAST_ROW = ServerStatus.LAST_ROW_SENT
CHANGED = ServerStatus.SESSION_STATE_CHANGED
DEPRECATE_EOF = int(Capability.DEPRECATE_EOF)


@dataclass(frozen=True)
class Expect:
    results: int = 1
    error: int | None = None
    status_set: int = 0  # flags that must be set at the end
    status_clear: int = int(MORE)  # flags that must be clear at the end
    state_oks: int = 0
    prepare: tuple[int, int] | None = None  # (columns, params) of a COM_STMT_PREPARE OK
    infile: bool = False


EXPECTED: dict[str, Expect] = {
    "query_select_1": Expect(status_set=AUTOCOMMIT),
    "query_rows_with_nulls": Expect(status_set=AUTOCOMMIT),
    "query_empty_result": Expect(status_set=AUTOCOMMIT),
    "query_insert": Expect(status_set=AUTOCOMMIT),
    "query_err_syntax": Expect(results=0, error=1064),
    "query_err_unknown_table": Expect(results=0, error=1146),
    "query_multi_statement": Expect(results=3, status_set=AUTOCOMMIT),
    # The ERR ends the response: no more results can follow, whatever the last EOF said.
    "query_multi_statement_err": Expect(results=1, error=1064),
    "query_call_two_results": Expect(results=3, status_set=AUTOCOMMIT),
    "query_local_infile": Expect(results=0, infile=True),
    "stmt_prepare_select": Expect(prepare=(3, 2)),
    "stmt_prepare_insert": Expect(prepare=(0, 1)),
    "stmt_prepare_no_params": Expect(prepare=(1, 0)),
    "stmt_prepare_call": Expect(prepare=(0, 0)),
    "stmt_execute_select": Expect(status_set=AUTOCOMMIT),
    "stmt_execute_insert": Expect(status_set=AUTOCOMMIT),
    "stmt_execute_cursor": Expect(status_set=CURSOR | AUTOCOMMIT, status_clear=MORE | LAST_ROW),
    "stmt_fetch_2": Expect(status_set=CURSOR, status_clear=MORE | LAST_ROW),
    "stmt_fetch_rest": Expect(status_set=LAST_ROW),
    "stmt_execute_call": Expect(results=3, status_set=AUTOCOMMIT),
    "stmt_close": Expect(results=0),
    "field_list": Expect(status_set=AUTOCOMMIT),
    "statistics": Expect(),
    "set_option_multi_off": Expect(status_set=AUTOCOMMIT),
    "set_option_multi_on": Expect(status_set=AUTOCOMMIT),
    "ping": Expect(status_set=AUTOCOMMIT),
    "query_enable_tracking": Expect(status_set=CHANGED | AUTOCOMMIT, state_oks=1),
    "query_set_autocommit_0": Expect(status_set=CHANGED, status_clear=AUTOCOMMIT | MORE,
                                     state_oks=1),
    "query_begin": Expect(status_set=IN_TRANS, status_clear=AUTOCOMMIT | MORE | CHANGED),
    "query_commit": Expect(status_clear=IN_TRANS | AUTOCOMMIT | MORE),
    "query_enable_trx_tracking": Expect(status_set=CHANGED, state_oks=1),
    "query_begin_tracked": Expect(status_set=IN_TRANS | ServerStatus.IN_TRANS_READONLY | CHANGED,
                                  state_oks=1),
    "query_rollback_tracked": Expect(status_set=CHANGED, status_clear=IN_TRANS | MORE,
                                     state_oks=1),
    "query_use_schema": Expect(status_set=CHANGED, state_oks=1),
    "init_db": Expect(status_set=CHANGED, state_oks=1),
    "query_set_autocommit_1": Expect(status_set=CHANGED | AUTOCOMMIT, state_oks=1),
    "reset_connection": Expect(status_set=AUTOCOMMIT),
    "query_big_row": Expect(status_set=AUTOCOMMIT),
}

CASES = [(v, n) for v in golden.VARIANTS for n in golden.names()]
CASE_IDS = [f"{v}-{n}" for v, n in CASES]


def outcome(t: ResponseTracker) -> tuple[object, ...]:
    err = (t.error.code, t.error.sqlstate, t.error.message) if t.error else None
    return (t.state, t.status, t.results, err, tuple(t.state_oks), t.prepare_ok, tuple(t.packets))


def tracker_for(g: golden.GoldenResponse, collect: bool = False) -> ResponseTracker:
    t = ResponseTracker(g.capabilities)
    t.start(Command[g.command], collect)
    return t


def feed_all(t: ResponseTracker, data: bytes, chunk: int) -> int:
    used = 0
    for i in range(0, len(data), chunk):
        used += t.feed(data[i : i + chunk])
    return used


def check(t: ResponseTracker, g: golden.GoldenResponse) -> None:
    exp = EXPECTED[g.name]
    if exp.infile:
        assert t.awaiting_infile and not t.done
    else:
        assert t.done
    assert t.results == exp.results
    assert (t.error.code if t.error else None) == exp.error
    assert t.status & exp.status_set == exp.status_set, f"status {ServerStatus(t.status)!r}"
    assert not t.status & exp.status_clear, f"status {ServerStatus(t.status)!r}"
    assert len(t.state_oks) == exp.state_oks
    if exp.prepare is None:
        assert t.prepare_ok is None
    else:
        assert t.prepare_ok is not None
        columns = int.from_bytes(t.prepare_ok[5:7], "little")
        params = int.from_bytes(t.prepare_ok[7:9], "little")
        assert (columns, params) == exp.prepare


def test_every_capture_has_an_expectation() -> None:
    assert set(golden.names(include_big=True)) == set(EXPECTED)


@pytest.mark.parametrize(("variant", "name"), CASES, ids=CASE_IDS)
def test_golden_response_fed_whole(variant: str, name: str) -> None:
    g = golden.response(variant, name)
    t = tracker_for(g)
    assert t.feed(g.response) == len(g.response)
    check(t, g)


@pytest.mark.parametrize(("variant", "name"), CASES, ids=CASE_IDS)
def test_golden_response_fed_one_byte_at_a_time(variant: str, name: str) -> None:
    g = golden.response(variant, name)
    whole = tracker_for(g, collect=True)
    whole.feed(g.response)
    t = tracker_for(g, collect=True)
    assert feed_all(t, g.response, 1) == len(g.response)
    check(t, g)
    assert outcome(t) == outcome(whole)


@pytest.mark.parametrize(("variant", "name"), CASES, ids=CASE_IDS)
def test_golden_response_leaves_trailing_bytes_alone(variant: str, name: str) -> None:
    g = golden.response(variant, name)
    trailing = golden.response(variant, "query_select_1").response + b"\xff\xff"
    t = tracker_for(g)
    assert t.feed(g.response + trailing) == len(g.response)
    check(t, g)
    assert t.feed(trailing) == 0  # a finished (or infile-waiting) response takes nothing more


@pytest.mark.parametrize(("variant", "name"), CASES, ids=CASE_IDS)
def test_collect_keeps_exactly_the_packets_packet_reader_sees(variant: str, name: str) -> None:
    g = golden.response(variant, name)
    t = tracker_for(g, collect=True)
    t.feed(g.response)
    reader = PacketReader()
    reader.feed(g.response)
    expected = []
    while (pkt := reader.next_packet()) is not None:
        expected.append(pkt[1])
    assert t.packets == expected


@pytest.mark.parametrize("variant", golden.VARIANTS)
def test_local_infile_waits_for_the_file_then_reads_the_ok(variant: str) -> None:
    g = golden.response(variant, "query_local_infile")
    assert g.response[4:] == b"\xfbgolden.csv"
    t = tracker_for(g)
    assert t.feed(g.response + b"junk") == len(g.response)
    assert t.awaiting_infile
    assert t.feed(b"anything") == 0
    t.infile_sent()
    assert g.after_infile is not None
    assert t.feed(g.after_infile) == len(g.after_infile)
    assert t.done and not t.awaiting_infile
    assert t.results == 1 and t.error is None
    ok = parse_ok(g.after_infile[4:], g.capabilities)
    assert ok.affected_rows == 2


def test_infile_sent_without_a_request_is_a_protocol_error() -> None:
    t = ResponseTracker(0)
    t.start(Command.QUERY)
    with pytest.raises(ProtocolError):
        t.infile_sent()


@pytest.mark.parametrize("variant", golden.VARIANTS)
def test_cursor_execute_then_fetches(variant: str) -> None:
    caps = golden.response(variant, "stmt_execute_cursor").capabilities
    t = ResponseTracker(caps)
    for name, cursor, last in (
        ("stmt_execute_cursor", True, False),
        ("stmt_fetch_2", True, False),
        ("stmt_fetch_rest", False, True),
    ):
        g = golden.response(variant, name)
        t.start(Command[g.command])
        assert t.feed(g.response) == len(g.response)
        assert t.done
        assert bool(t.status & CURSOR) == cursor
        assert bool(t.status & LAST_ROW) == last


def test_session_state_oks_are_the_tracked_packets() -> None:
    g = golden.response("deprecate_eof", "query_set_autocommit_0")
    t = tracker_for(g)
    t.feed(g.response)
    [payload] = t.state_oks
    changes = parse_session_state(parse_ok(payload, g.capabilities).session_state)
    assert changes.variables == (("autocommit", "OFF"),)


def test_status_is_kept_across_commands_and_an_err_does_not_change_it() -> None:
    variant = "eof"
    t = ResponseTracker(golden.response(variant, "query_begin").capabilities)
    for name in ("query_begin", "query_err_syntax"):
        g = golden.response(variant, name)
        t.start(Command[g.command])
        t.feed(g.response)
    assert t.status & IN_TRANS  # ERR packets carry no status: the last known one stays
    assert t.error is not None


def test_start_while_a_response_is_open_is_a_protocol_error() -> None:
    t = ResponseTracker(0)
    t.start(Command.QUERY)
    t.feed(b"\x01\x00\x00\x01\x01")
    with pytest.raises(ProtocolError, match="COLUMNS"):
        t.start(Command.PING)
    t.reset()
    t.start(Command.PING)
    assert t.feed(frame(encode_ok(OkPacket(), 0), 1)) == 11
    assert t.done


def test_commands_without_a_response() -> None:
    for command in (Command.STMT_CLOSE, Command.STMT_SEND_LONG_DATA, Command.QUIT):
        assert not expects_response(command)
        t = ResponseTracker(0)
        t.start(command)
        assert t.done
        assert t.feed(b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00") == 0
    assert expects_response(Command.QUERY)
    assert expects_response(Command.PING)


# --- packets of 16 MiB and more ------------------------------------------------------------


@pytest.mark.parametrize("variant", golden.VARIANTS)
def test_big_golden_row_is_what_the_framing_encoder_makes(variant: str) -> None:
    g = golden.response(variant, "query_big_row")
    assert hashlib.sha256(g.response).hexdigest() == golden._entry(variant, "query_big_row")[
        "response_sha256"
    ]
    layout = golden.split_frames(g.response)
    # column count, column definition, [EOF], the row in two frames, terminator
    lengths = [length for _, length, _ in layout]
    row_at = 3 if variant == "deprecate_eof" else 4
    assert lengths[row_at - 1] == MAX_PAYLOAD
    row_value = b"x" * (17 * 1024 * 1024)
    row = lenenc_str(row_value)
    assert row[0] == 0xFE  # a text row that starts like an EOF packet
    first_offset = layout[row_at - 1][0]
    end = first_offset + 8 + len(row)  # two frame headers
    assert g.response[first_offset:end] == b"".join(frames(row, row_at))


@pytest.mark.parametrize("variant", golden.VARIANTS)
@pytest.mark.parametrize("chunk", [1 << 20, 65537, 10**9])
def test_big_golden_row_in_chunks(variant: str, chunk: int) -> None:
    g = golden.response(variant, "query_big_row")
    t = tracker_for(g)
    assert feed_all(t, g.response + b"trailing", chunk) == len(g.response)
    check(t, g)


@pytest.mark.parametrize("variant", golden.VARIANTS)
def test_big_golden_row_cut_around_every_frame_boundary(variant: str) -> None:
    g = golden.response(variant, "query_big_row")
    whole = tracker_for(g)
    whole.feed(g.response)
    for offset, _, _ in golden.split_frames(g.response):
        for delta in range(-2, 6):
            cut = max(0, offset + delta)
            t = tracker_for(g)
            used = t.feed(memoryview(g.response)[:cut]) + t.feed(memoryview(g.response)[cut:])
            assert used == len(g.response)
            assert outcome(t) == outcome(whole)


@pytest.mark.parametrize("caps", [0, DEPRECATE_EOF])
@pytest.mark.parametrize("size", [MAX_PAYLOAD - 1, MAX_PAYLOAD, MAX_PAYLOAD + 1, 2 * MAX_PAYLOAD])
def test_rows_around_the_frame_limit(caps: int, size: int) -> None:
    # A single-column text row whose payload is `size` bytes, then a terminator.
    prefix = lenenc_int(size - 9) if size - 9 >= 1 << 24 else lenenc_int(size - 4)
    row = prefix + b"r" * (size - len(prefix))
    assert len(row) == size
    col = encode_column(Column("c"))
    pkts = [lenenc_int(1), col] + ([] if caps else [encode_eof(EofPacket())])
    data = b"".join(frame(p, i + 1) for i, p in enumerate(pkts))
    seq = len(pkts) + 1
    data += b"".join(frames(row, seq))
    data += frame(encode_terminator(0x22, caps), seq + size // MAX_PAYLOAD + 1)
    for collect in (False, True):
        t = ResponseTracker(caps)
        t.start(Command.QUERY, collect)
        assert feed_all(t, data + b"x", 1 << 22) == len(data)
        assert t.done and t.results == 1 and t.status == 0x22
        if collect:
            assert t.packets[-2] == row


def test_binary_rows_starting_with_0x00_are_not_ok_packets() -> None:
    caps = DEPRECATE_EOF
    col = encode_column(Column("c"))
    binary_row = b"\x00\x00" + lenenc_str(b"\x00\x00\x00\x02\x00\x00\x00")  # looks like an OK
    data = b"".join(
        frame(p, i + 1)
        for i, p in enumerate([b"\x01", col, binary_row, binary_row, encode_terminator(2, caps)])
    )
    t = ResponseTracker(caps)
    t.start(Command.STMT_EXECUTE)
    assert t.feed(data) == len(data)
    assert t.done and t.results == 1


def test_err_in_the_middle_of_rows_ends_the_response() -> None:
    caps = DEPRECATE_EOF
    data = encode_result_set([Column("a")], [(1,), (2,)], caps)
    err = frame(encode_err(ErrPacket(1317, "70100", "Query execution was interrupted")), 5)
    data = data[: -len(frame(encode_terminator(2, caps), 0))] + err
    t = ResponseTracker(caps)
    t.start(Command.QUERY)
    assert t.feed(data + b"tail") == len(data)
    assert t.done and t.error is not None and t.error.code == 1317


@pytest.mark.parametrize("caps", [0, DEPRECATE_EOF])
def test_encoded_result_sets_are_tracked(caps: int) -> None:
    data = encode_result_set([Column("a"), Column("b")], [(1, None), ("x", b"y")], caps)
    t = ResponseTracker(caps)
    t.start(Command.QUERY)
    assert t.feed(data) == len(data)
    assert t.done and t.results == 1


def test_empty_packet_where_a_status_is_expected_is_a_protocol_error() -> None:
    # column count 1, one column definition, then an empty packet where the EOF belongs
    data = frame(b"\x01", 1) + frame(encode_column(Column("c")), 2) + frame(b"", 3)
    t = ResponseTracker(0)
    t.start(Command.QUERY)
    with pytest.raises(ProtocolError):
        t.feed(data)


# --- properties ----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(CASES), st.data())
def test_any_chunking_of_a_golden_response_gives_the_same_outcome(
    case: tuple[str, str], data: st.DataObject
) -> None:
    g = golden.response(*case)
    whole = tracker_for(g, collect=True)
    whole.feed(g.response)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(g.response)), max_size=20))))
    t = tracker_for(g, collect=True)
    used = 0
    prev = 0
    for cut in [*cuts, len(g.response)]:
        used += t.feed(g.response[prev:cut])
        prev = cut
    assert used == len(g.response)
    assert outcome(t) == outcome(whole)


_payload = st.one_of(
    st.binary(max_size=24),
    st.tuples(
        st.sampled_from([0x00, 0x01, 0x02, 0x03, 0xFB, 0xFC, 0xFE, 0xFF]), st.binary(max_size=16)
    ).map(lambda t: bytes((t[0],)) + t[1]),
)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(list(Command)),
    st.sampled_from([0, DEPRECATE_EOF]),
    st.booleans(),
    st.lists(_payload, max_size=10),
    st.binary(max_size=8),
)
def test_arbitrary_packets_are_tracked_or_raise_protocol_error(
    command: Command, caps: int, collect: bool, payloads: list[bytes], tail: bytes
) -> None:
    data = b"".join(frame(p, i + 1) for i, p in enumerate(payloads)) + tail
    t = ResponseTracker(caps)
    t.start(command, collect)
    try:
        used = t.feed(data)
    except ProtocolError:
        return
    assert 0 <= used <= len(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(Command)), st.binary(max_size=64))
def test_arbitrary_bytes_are_tracked_or_raise_protocol_error(command: Command, data: bytes) -> None:
    t = ResponseTracker(DEPRECATE_EOF)
    t.start(command)
    try:
        t.feed(data)
    except ProtocolError:
        pass


def test_prepare_with_too_short_ok_is_a_protocol_error() -> None:
    t = ResponseTracker(0)
    t.start(Command.STMT_PREPARE)
    with pytest.raises(ProtocolError):
        t.feed(frame(b"\x00" + int4(1) + int2(0), 1))


def _fed(command: Command, caps: int, data: bytes, chunk: int) -> tuple[object, ...]:
    """Outcome of feeding data in chunks of ``chunk`` bytes (0: whole), or the error."""
    t = ResponseTracker(caps)
    t.status = int(AUTOCOMMIT)
    t.start(command)
    used = 0
    try:
        if chunk:
            for i in range(0, len(data), chunk):
                n = t.feed(data[i : i + chunk])
                used += n
                if n < len(data[i : i + chunk]) or t.done:
                    break
        else:
            used = t.feed(data)
    except ProtocolError as exc:
        return ("error", str(exc))
    return (*outcome(t), used)


_status_packet = st.tuples(
    st.sampled_from([0x00, 0xFE]),
    st.binary(min_size=0, max_size=3),  # lenenc bytes (or EOF warnings)
    st.sampled_from([0, int(MORE), int(CURSOR), int(CHANGED), int(IN_TRANS | AUTOCOMMIT)]),
    st.binary(max_size=6),
).map(lambda t: bytes((t[0],)) + t[1] + int2(t[2]) + t[3])


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from([Command.QUERY, Command.STMT_EXECUTE, Command.STMT_FETCH, Command.PING]),
    st.sampled_from([0, DEPRECATE_EOF]),
    st.lists(st.one_of(_payload, _status_packet), max_size=10),
)
def test_whole_packets_read_in_place_match_the_byte_by_byte_reading(
    command: Command, caps: int, payloads: list[bytes]
) -> None:
    """The in-place reading of whole packets (column counts, EOFs, OKs without collect) ends
    where, and with what, reading the same bytes one at a time ends."""
    data = b"".join(frame(p, i + 1) for i, p in enumerate(payloads))
    assert _fed(command, caps, data, 0) == _fed(command, caps, data, 1)
