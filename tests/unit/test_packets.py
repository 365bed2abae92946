"""Packet codecs against a real MariaDB's bytes, encode/parse round trips, and fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.protocol.constants import (
    CACHING_SHA2_PASSWORD,
    NATIVE_PASSWORD,
    SUPPORTED_CAPABILITIES,
    Capability,
    FieldType,
    ServerStatus,
)
from proxy.protocol.framing import PacketReader
from proxy.protocol.packets import (
    AuthSwitchRequest,
    Column,
    EofPacket,
    ErrPacket,
    Handshake,
    HandshakeResponse,
    OkPacket,
    encode_auth_switch,
    encode_column,
    encode_eof,
    encode_err,
    encode_handshake,
    encode_handshake_response,
    encode_ok,
    encode_result_set,
    encode_ssl_request,
    encode_terminator,
    encode_text_row,
    parse_auth_switch,
    parse_column,
    parse_err,
    parse_handshake,
    parse_handshake_response,
    parse_ok,
    parse_session_state,
    parse_text_row,
    terminator_status,
)
from proxy.protocol.wire import ProtocolError
from tests.support import golden

TRACK = int(Capability.PROTOCOL_41 | Capability.SESSION_TRACK)
NO_TRACK = int(Capability.PROTOCOL_41)
AUTOCOMMIT = int(ServerStatus.AUTOCOMMIT)
STATE_CHANGED = int(ServerStatus.SESSION_STATE_CHANGED)


def packets(data: bytes) -> list[bytes]:
    reader = PacketReader()
    reader.feed(data)
    out = []
    while (pkt := reader.next_packet()) is not None:
        out.append(pkt[1])
    return out


def golden_packets(variant: str, name: str) -> list[bytes]:
    return packets(golden.response(variant, name).response)


# --- handshake -----------------------------------------------------------------------------


def test_mariadb_greeting_parses() -> None:
    ex = golden.login("login_ok")
    payload = packets(ex["greeting"])[0]  # type: ignore[arg-type]
    hs = parse_handshake(payload)
    assert hs.server_version.startswith("5.5.5-10.")  # MariaDB's replication-compatible prefix
    assert "MariaDB" in hs.server_version
    assert len(hs.auth_data) == 20 and b"\0" not in hs.auth_data
    assert hs.auth_plugin == NATIVE_PASSWORD
    caps = Capability(hs.capabilities)
    for needed in (Capability.PROTOCOL_41, Capability.SECURE_CONNECTION, Capability.PLUGIN_AUTH,
                   Capability.DEPRECATE_EOF, Capability.SESSION_TRACK, Capability.MULTI_RESULTS):
        assert needed in caps
    assert Capability.LONG_PASSWORD not in caps  # MariaDB clears bit 0 to say so
    assert hs.status & AUTOCOMMIT
    assert hs.charset == 45  # utf8mb4_general_ci, as the sandbox configures
    assert hs.mariadb_capabilities != 0


def test_mariadb_greeting_re_encodes_byte_for_byte() -> None:
    for kind in ("login_ok", "auth_switch"):
        payload = packets(golden.login(kind)["greeting"])[0]  # type: ignore[arg-type]
        assert encode_handshake(parse_handshake(payload)) == payload


def test_handshake_from_an_error_says_the_server_refused() -> None:
    err = encode_err(ErrPacket(1129, "HY000", "Host '10.0.0.1' is blocked"))
    with pytest.raises(ProtocolError, match="1129"):
        parse_handshake(err)
    with pytest.raises(ProtocolError, match="version 9"):
        parse_handshake(b"\x09rest")


def test_handshake_response_sent_to_mariadb_parses_back() -> None:
    ex = golden.login("login_ok")
    sent = packets(ex["requests"][0])[0]  # type: ignore[index]
    resp = parse_handshake_response(sent)
    assert resp.user == golden.load()["logins"]["user"]  # type: ignore[index]
    assert resp.database == "golden"
    assert resp.auth_plugin == NATIVE_PASSWORD
    assert len(resp.auth_response) == 20
    assert resp.attributes == {"_client_name": "baton-golden-capture"}
    assert encode_handshake_response(resp) == sent


def test_ssl_request_parses_as_such() -> None:
    payload = encode_ssl_request(int(SUPPORTED_CAPABILITIES), 45)
    assert len(payload) == 32
    resp = parse_handshake_response(payload)
    assert resp.ssl_request
    assert resp.capabilities & Capability.SSL


def test_pre_41_handshake_response_is_refused() -> None:
    with pytest.raises(ProtocolError, match="4.1"):
        parse_handshake_response(b"\x00\x00\x00\x00" + b"\0" * 28)


def test_mariadb_auth_switch_parses() -> None:
    replies = golden.login("auth_switch")["replies"]
    switch = parse_auth_switch(packets(replies[0])[0])  # type: ignore[index]
    assert switch.plugin == NATIVE_PASSWORD
    assert len(switch.data) == 20
    assert encode_auth_switch(switch) == packets(replies[0])[0]  # type: ignore[index]
    assert parse_auth_switch(b"\xfe") == AuthSwitchRequest("mysql_old_password", b"")


# --- OK / ERR / EOF ------------------------------------------------------------------------


def test_insert_ok_carries_affected_rows_last_insert_id_and_info() -> None:
    for variant in golden.VARIANTS:
        [payload] = golden_packets(variant, "query_insert")
        ok = parse_ok(payload, TRACK)
        assert (ok.affected_rows, ok.last_insert_id) == (3, 1)
        assert ok.info == b"Records: 3  Duplicates: 0  Warnings: 0"
        assert ok.status & AUTOCOMMIT
        assert encode_ok(ok, TRACK) == payload


def test_login_ok_reports_the_schema_in_its_session_state() -> None:
    payload = packets(golden.login("login_ok")["replies"][0])[0]  # type: ignore[index]
    ok = parse_ok(payload, TRACK)
    assert ok.status & STATE_CHANGED
    assert parse_session_state(ok.session_state).schema == "golden"
    assert encode_ok(ok, TRACK) == payload


@pytest.mark.parametrize(
    ("name", "variables", "schema"),
    [
        ("query_set_autocommit_0", (("autocommit", "OFF"),), None),
        ("query_set_autocommit_1", (("autocommit", "ON"),), None),
        ("query_use_schema", (), "test"),
        ("init_db", (), "golden"),
    ],
)
def test_session_state_blocks_from_mariadb_parse(
    name: str, variables: tuple[tuple[str, str], ...], schema: str | None
) -> None:
    for variant in golden.VARIANTS:
        [payload] = golden_packets(variant, name)
        ok = parse_ok(payload, TRACK)
        assert ok.status & STATE_CHANGED
        changes = parse_session_state(ok.session_state)
        assert changes.variables == variables
        assert changes.schema == schema
        assert changes.state_changed  # MariaDB sends the "1" with no length of its own
        assert encode_ok(ok, TRACK) == payload


def test_enabling_tracking_reports_the_changed_variables() -> None:
    [payload] = golden_packets("eof", "query_enable_tracking")
    changes = parse_session_state(parse_ok(payload, TRACK).session_state)
    names = dict(changes.variables)
    assert names["session_track_schema"] == "ON"
    assert names["session_track_state_change"] == "ON"
    assert names["session_track_system_variables"] == "*"


def test_transaction_state_tracking_from_mariadb() -> None:
    [payload] = golden_packets("deprecate_eof", "query_begin_tracked")
    ok = parse_ok(payload, TRACK)
    assert ok.status & ServerStatus.IN_TRANS and ok.status & ServerStatus.IN_TRANS_READONLY
    changes = parse_session_state(ok.session_state)
    assert changes.transaction_state == "T_______"
    assert changes.transaction_characteristics == "START TRANSACTION READ ONLY;"
    [payload] = golden_packets("deprecate_eof", "query_rollback_tracked")
    changes = parse_session_state(parse_ok(payload, TRACK).session_state)
    assert (changes.transaction_state, changes.transaction_characteristics) == ("________", "")


def test_session_state_other_entry_kinds() -> None:
    gtid = b"\x00" + b"\x0512345"  # encoding spec, then the GTID set
    trx = b"\x08T_______"
    block = (
        b"\x03" + bytes((len(gtid),)) + gtid
        + b"\x05" + bytes((len(trx),)) + trx
        + b"\x04\x01\x00"  # empty characteristics
        + b"\x09\x02zz"  # a kind this code does not know: skipped
    )
    changes = parse_session_state(block)
    assert changes.gtid == "12345"
    assert changes.transaction_state == "T_______"
    assert changes.transaction_characteristics == ""


def test_ok_with_state_changed_flag_always_writes_the_info_field() -> None:
    # Servers write info whenever SERVER_SESSION_STATE_CHANGED is set (MariaDB net_send_ok), and
    # clients read it before the state block; leaving it out makes them read past the packet.
    status = AUTOCOMMIT | STATE_CHANGED
    payload = encode_ok(OkPacket(status=status), TRACK)
    assert payload == b"\x00\x00\x00" + status.to_bytes(2, "little") + b"\x00\x00" + b"\x00\x00"
    assert parse_ok(payload, TRACK) == OkPacket(status=status)


def test_ok_without_session_track_has_info_as_the_rest() -> None:
    ok = OkPacket(affected_rows=300, last_insert_id=2**40, status=AUTOCOMMIT, warnings=2,
                  info=b"Rows matched: 1")
    payload = encode_ok(ok, NO_TRACK)
    assert payload.endswith(b"Rows matched: 1")
    assert parse_ok(payload, NO_TRACK) == ok


@pytest.mark.parametrize(
    ("name", "code", "sqlstate", "message_start"),
    [
        ("query_err_syntax", 1064, "42000", "You have an error in your SQL syntax"),
        ("query_err_unknown_table", 1146, "42S02", "Table 'golden.nope' doesn't exist"),
    ],
)
def test_mariadb_errors_parse_and_re_encode(
    name: str, code: int, sqlstate: str, message_start: str
) -> None:
    [payload] = golden_packets("eof", name)
    err = parse_err(payload)
    assert (err.code, err.sqlstate) == (code, sqlstate)
    assert err.message.startswith(message_start)
    assert encode_err(err) == payload


def test_err_without_sqlstate_and_progress_report() -> None:
    assert parse_err(b"\xff\x15\x04plain") == ErrPacket(1045, "HY000", "plain")
    assert parse_err(b"\xff\xff\xff\x01\x02").code == 0xFFFF


@pytest.mark.parametrize("name", ["query_rows_with_nulls", "query_select_1", "field_list"])
def test_terminators_match_what_mariadb_sends(name: str) -> None:
    for variant in golden.VARIANTS:
        caps = golden.response(variant, name).capabilities
        last = golden_packets(variant, name)[-1]
        status = terminator_status(last, caps)
        assert status & AUTOCOMMIT
        assert encode_terminator(status, caps) == last


def test_eof_and_short_ok_terminators_give_their_status() -> None:
    assert terminator_status(encode_eof(EofPacket(3, 0x22)), 0) == 0x22
    ok = encode_ok(OkPacket(status=0x4A, header=0xFE), TRACK)
    assert terminator_status(ok, TRACK | Capability.DEPRECATE_EOF) == 0x4A
    long_ok = encode_ok(OkPacket(affected_rows=70000, status=0x0A, header=0xFE), TRACK)
    assert terminator_status(long_ok, TRACK) == 0x0A
    with pytest.raises(ProtocolError):
        terminator_status(b"", TRACK)


# --- result sets ---------------------------------------------------------------------------


def test_mariadb_column_definitions_parse_and_re_encode() -> None:
    pkts = golden_packets("eof", "query_rows_with_nulls")
    cols = [parse_column(p) for p in pkts[1:4]]
    assert [c.name for c in cols] == ["id", "name", "note"]
    assert [c.type for c in cols] == [FieldType.LONG, FieldType.VAR_STRING, FieldType.VAR_STRING]
    assert {(c.schema, c.table, c.org_table) for c in cols} == {("golden", "t", "t")}
    assert cols[0].charset == 63 and cols[1].charset == 45
    for col, payload in zip(cols, pkts[1:4], strict=True):
        assert encode_column(col) == payload


def test_mariadb_text_rows_with_nulls() -> None:
    pkts = golden_packets("eof", "query_rows_with_nulls")
    rows = [parse_text_row(p, 3) for p in pkts[5:9]]
    assert rows == [
        (b"1", b"one", None),
        (b"2", b"two", b"second"),
        (b"3", b"three", None),
        (b"4", b"four", b"fourth"),
    ]
    assert [encode_text_row(r) for r in rows] == pkts[5:9]


def test_encode_result_set_matches_mariadb_select_1() -> None:
    for variant in golden.VARIANTS:
        g = golden.response(variant, "query_select_1")
        col = parse_column(packets(g.response)[1])
        assert encode_result_set([col], [(1,)], g.capabilities) == g.response


# --- round trips ---------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=20)
_status = st.integers(0, 0xFFFF)


@given(
    affected=st.integers(0, 2**64 - 1),
    insert_id=st.integers(0, 2**64 - 1),
    status=_status,
    warnings=st.integers(0, 0xFFFF),
    info=st.binary(max_size=40),
    state=st.binary(max_size=40),
    header=st.sampled_from([0x00, 0xFE]),
    track=st.booleans(),
)
def test_ok_round_trips(
    affected: int, insert_id: int, status: int, warnings: int, info: bytes, state: bytes,
    header: int, track: bool,
) -> None:
    caps = TRACK if track else NO_TRACK
    if not (track and status & STATE_CHANGED):
        state = b""  # the block exists only with the flag and CLIENT_SESSION_TRACK
    ok = OkPacket(affected, insert_id, status, warnings, info, state, header)
    assert parse_ok(encode_ok(ok, caps), caps) == ok


@given(st.integers(0, 0xFFFE), st.text(alphabet="0123456789ABCDEFHYZ", min_size=5, max_size=5),
       st.text(max_size=60))
def test_err_round_trips(code: int, sqlstate: str, message: str) -> None:
    err = ErrPacket(code, sqlstate, message.encode("utf-8", "replace").decode("utf-8"))
    assert parse_err(encode_err(err)) == err


@given(st.integers(0, 0xFFFF), _status)
def test_eof_round_trips(warnings: int, status: int) -> None:
    assert terminator_status(encode_eof(EofPacket(warnings, status)), 0) == status


@given(
    version=_text,
    conn_id=st.integers(0, 2**32 - 1),
    nonce=st.binary(min_size=20, max_size=20).filter(lambda b: b"\0" not in b),
    caps=st.integers(0, 2**32 - 1),
    charset=st.integers(0, 255),
    status=_status,
    plugin=st.sampled_from([NATIVE_PASSWORD, CACHING_SHA2_PASSWORD]),
    mariadb_caps=st.integers(0, 2**32 - 1),
)
def test_handshake_round_trips(
    version: str, conn_id: int, nonce: bytes, caps: int, charset: int, status: int, plugin: str,
    mariadb_caps: int,
) -> None:
    caps |= Capability.PROTOCOL_41 | Capability.SECURE_CONNECTION | Capability.PLUGIN_AUTH
    hs = Handshake(version, conn_id, nonce, caps, charset, status, plugin, mariadb_caps)
    assert parse_handshake(encode_handshake(hs)) == hs


@given(
    caps=st.integers(0, 2**32 - 1),
    max_packet=st.integers(0, 2**32 - 1),
    charset=st.integers(0, 255),
    user=_text,
    auth=st.binary(max_size=255),
    database=st.one_of(st.none(), _text.filter(bool)),
    plugin=st.sampled_from([NATIVE_PASSWORD, CACHING_SHA2_PASSWORD, "dialog"]),
    attrs=st.dictionaries(_text, _text, max_size=4),
)
def test_handshake_response_round_trips(
    caps: int, max_packet: int, charset: int, user: str, auth: bytes, database: str | None,
    plugin: str, attrs: dict[str, str],
) -> None:
    caps = (caps | Capability.PROTOCOL_41 | Capability.SECURE_CONNECTION | Capability.PLUGIN_AUTH
            | Capability.CONNECT_ATTRS) & ~Capability.SSL
    if database is not None:
        caps |= Capability.CONNECT_WITH_DB
    resp = HandshakeResponse(caps, max_packet, charset, user, auth, database, plugin, attrs)
    assert parse_handshake_response(encode_handshake_response(resp)) == resp


@given(
    name=_text, type_=st.sampled_from(list(FieldType)), charset=st.integers(0, 0xFFFF),
    length=st.integers(0, 2**32 - 1), flags=st.integers(0, 0xFFFF), decimals=st.integers(0, 255),
    schema=_text, table=_text,
)
def test_column_round_trips(
    name: str, type_: int, charset: int, length: int, flags: int, decimals: int, schema: str,
    table: str,
) -> None:
    col = Column(name, type_, charset, length, flags, decimals, schema, table, table, name)
    assert parse_column(encode_column(col)) == col


@given(st.lists(st.one_of(st.none(), st.binary(max_size=300)), max_size=6))
def test_text_row_round_trips(values: list[bytes | None]) -> None:
    assert parse_text_row(encode_text_row(values), len(values)) == tuple(values)


@given(st.sampled_from([NATIVE_PASSWORD, CACHING_SHA2_PASSWORD]),
       st.binary(max_size=32).filter(lambda b: not b.endswith(b"\0")))
def test_auth_switch_round_trips(plugin: str, data: bytes) -> None:
    req = AuthSwitchRequest(plugin, data)
    assert parse_auth_switch(encode_auth_switch(req)) == req


# --- fuzz: arbitrary bytes parse or raise ProtocolError, nothing else ---------------------

_interesting = st.one_of(
    st.binary(max_size=80),
    st.lists(st.sampled_from([0x00, 0x01, 0x0A, 0xFB, 0xFC, 0xFD, 0xFE, 0xFF, 0x23, 0x41]),
             max_size=40).map(bytes),
)


@settings(max_examples=400)
@given(_interesting, st.sampled_from([0, NO_TRACK, TRACK, 0xFFFFFFFF]))
def test_parsers_raise_only_protocol_error(data: bytes, caps: int) -> None:
    parsers = [
        parse_handshake,
        parse_handshake_response,
        parse_auth_switch,
        lambda d: parse_ok(d, caps),
        parse_err,
        parse_session_state,
        parse_column,
        lambda d: parse_text_row(d, 3),
        lambda d: terminator_status(d, caps),
    ]
    for parse in parsers:
        try:
            parse(data)
        except ProtocolError:
            pass
