"""Packets as dataclasses, with ``parse_*`` and ``encode_*`` functions.

Encoders take the negotiated capabilities as an argument: the same OK packet has a different
shape with and without CLIENT_SESSION_TRACK, and EOF packets vanish with CLIENT_DEPRECATE_EOF.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .constants import (
    AUTH_SWITCH_HEADER,
    CHARSET_UTF8MB4_GENERAL_CI,
    ED25519,
    EOF_HEADER,
    ERR_HEADER,
    MAX_PAYLOAD,
    OK_HEADER,
    Capability,
    FieldType,
    ServerStatus,
    SessionTrack,
)
from .wire import PayloadReader, ProtocolError, int1, int2, int4, lenenc_int, lenenc_str

_CAP_41 = int(Capability.PROTOCOL_41)
_CAP_SESSION_TRACK = int(Capability.SESSION_TRACK)
_STATUS_STATE_CHANGED = int(ServerStatus.SESSION_STATE_CHANGED)


# --- Handshake -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Handshake:
    """HandshakeV10, the server's first packet."""

    server_version: str
    connection_id: int
    auth_data: bytes  # the scramble ("nonce"), 20 bytes for the usual plugins
    capabilities: int
    charset: int = CHARSET_UTF8MB4_GENERAL_CI
    status: int = int(ServerStatus.AUTOCOMMIT)
    auth_plugin: str = "mysql_native_password"
    mariadb_capabilities: int = 0


def encode_handshake(h: Handshake) -> bytes:
    caps = h.capabilities
    data = h.auth_data
    part1, part2 = data[:8], data[8:]
    plugin_data_len = len(data) + 1 if caps & Capability.PLUGIN_AUTH else 0
    return b"".join(
        (
            b"\x0a",
            h.server_version.encode() + b"\0",
            int4(h.connection_id),
            part1.ljust(8, b"\0"),
            b"\0",
            int2(caps & 0xFFFF),
            int1(h.charset),
            int2(h.status),
            int2((caps >> 16) & 0xFFFF),
            int1(plugin_data_len),
            b"\0" * 6,
            int4(h.mariadb_capabilities),
            part2 + b"\0",
            (h.auth_plugin.encode() + b"\0") if caps & Capability.PLUGIN_AUTH else b"",
        )
    )


def parse_handshake(payload: bytes) -> Handshake:
    r = PayloadReader(payload)
    version = r.int1()
    if version != 10:
        if version == ERR_HEADER:
            err = parse_err(payload, _CAP_41)
            raise ProtocolError(f"server refused the connection: {err.code} {err.message}")
        raise ProtocolError(f"unsupported handshake protocol version {version}")
    server_version = r.null_terminated().decode("utf-8", "replace")
    connection_id = r.int4()
    part1 = r.bytes(8)
    r.skip(1)
    caps = r.int2()
    charset = status = 0
    auth_plugin = ""
    part2 = b""
    mariadb_caps = 0
    if r.remaining():
        charset = r.int1()
        status = r.int2()
        caps |= r.int2() << 16
        plugin_data_len = r.int1()
        r.skip(6)
        mariadb_caps = r.int4()
        if caps & Capability.SECURE_CONNECTION:
            n = max(13, plugin_data_len - 8)
            part2 = r.bytes(min(n, r.remaining()))
            if part2.endswith(b"\0"):
                part2 = part2[:-1]
        if caps & Capability.PLUGIN_AUTH and r.remaining():
            auth_plugin = r.rest().rstrip(b"\0").decode("ascii", "replace")
    return Handshake(
        server_version=server_version,
        connection_id=connection_id,
        auth_data=part1 + part2,
        capabilities=caps,
        charset=charset,
        status=status,
        auth_plugin=auth_plugin or "mysql_native_password",
        mariadb_capabilities=mariadb_caps,
    )


@dataclass(frozen=True, slots=True)
class HandshakeResponse:
    """HandshakeResponse41, the client's answer (also SSLRequest when ``ssl_request``)."""

    capabilities: int
    max_packet: int = MAX_PAYLOAD
    charset: int = CHARSET_UTF8MB4_GENERAL_CI
    user: str = ""
    auth_response: bytes = b""
    database: str | None = None
    auth_plugin: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    ssl_request: bool = False


def encode_ssl_request(capabilities: int, charset: int, max_packet: int = MAX_PAYLOAD) -> bytes:
    return int4(capabilities | Capability.SSL) + int4(max_packet) + int1(charset) + b"\0" * 23


def encode_handshake_response(resp: HandshakeResponse) -> bytes:
    caps = resp.capabilities
    parts = [
        int4(caps),
        int4(resp.max_packet),
        int1(resp.charset),
        b"\0" * 23,
        resp.user.encode() + b"\0",
    ]
    if caps & Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA:
        parts.append(lenenc_str(resp.auth_response))
    elif caps & Capability.SECURE_CONNECTION:
        parts.append(int1(len(resp.auth_response)) + resp.auth_response)
    else:
        parts.append(resp.auth_response + b"\0")
    if caps & Capability.CONNECT_WITH_DB:
        parts.append((resp.database or "").encode() + b"\0")
    if caps & Capability.PLUGIN_AUTH:
        parts.append((resp.auth_plugin or "").encode() + b"\0")
    if caps & Capability.CONNECT_ATTRS:
        attrs = b"".join(
            lenenc_str(k.encode()) + lenenc_str(v.encode()) for k, v in resp.attributes.items()
        )
        parts.append(lenenc_str(attrs))
    return b"".join(parts)


def parse_handshake_response(payload: bytes) -> HandshakeResponse:
    """Parses HandshakeResponse41 or SSLRequest (32 bytes, SSL flag set)."""
    r = PayloadReader(payload)
    caps = r.int4()
    if not caps & _CAP_41:
        raise ProtocolError("client does not speak protocol 4.1 (HandshakeResponse320 unsupported)")
    max_packet = r.int4()
    charset = r.int1()
    r.skip(23)
    if not r.remaining() and caps & Capability.SSL:
        return HandshakeResponse(caps, max_packet, charset, ssl_request=True)
    user = r.null_terminated().decode("utf-8", "replace")
    if caps & Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA:
        auth = r.lenenc_bytes_strict()
    elif caps & Capability.SECURE_CONNECTION:
        auth = r.bytes(r.int1())
    else:
        auth = r.null_terminated()
    database = None
    if caps & Capability.CONNECT_WITH_DB and r.remaining():
        database = r.null_terminated().decode("utf-8", "replace") or None
    plugin = None
    if caps & Capability.PLUGIN_AUTH and r.remaining():
        plugin = r.null_terminated().decode("ascii", "replace")
    attrs: dict[str, str] = {}
    if caps & Capability.CONNECT_ATTRS and r.remaining():
        block = PayloadReader(r.lenenc_bytes_strict())
        while block.remaining():
            key = block.lenenc_bytes_strict().decode("utf-8", "replace")
            attrs[key] = block.lenenc_bytes_strict().decode("utf-8", "replace")
    return HandshakeResponse(caps, max_packet, charset, user, auth, database, plugin, attrs)


# --- Auth exchange ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthSwitchRequest:
    plugin: str
    data: bytes


def encode_auth_switch(req: AuthSwitchRequest) -> bytes:
    return bytes((AUTH_SWITCH_HEADER,)) + req.plugin.encode() + b"\0" + req.data + b"\0"


def parse_auth_switch(payload: bytes) -> AuthSwitchRequest:
    r = PayloadReader(payload, 1)
    if not r.remaining():  # old-style "use old password" request
        return AuthSwitchRequest("mysql_old_password", b"")
    plugin = r.null_terminated().decode("ascii", "replace")
    data = r.rest()
    if data.endswith(b"\0") and plugin != ED25519:
        data = data[:-1]  # scrambles are NUL-terminated; an ed25519 nonce is 32 raw bytes
    return AuthSwitchRequest(plugin, data)


# --- OK / ERR / EOF --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OkPacket:
    affected_rows: int = 0
    last_insert_id: int = 0
    status: int = int(ServerStatus.AUTOCOMMIT)
    warnings: int = 0
    info: bytes = b""
    session_state: bytes = b""  # raw session-state block, see parse_session_state
    header: int = OK_HEADER  # 0xFE when it stands in for an EOF (CLIENT_DEPRECATE_EOF)


def encode_ok(ok: OkPacket, capabilities: int) -> bytes:
    parts = [
        bytes((ok.header,)),
        lenenc_int(ok.affected_rows),
        lenenc_int(ok.last_insert_id),
        int2(ok.status),
        int2(ok.warnings),
    ]
    if capabilities & _CAP_SESSION_TRACK:
        # As servers do: info is present whenever the state block follows, even when empty.
        if ok.info or ok.status & _STATUS_STATE_CHANGED:
            parts.append(lenenc_str(ok.info))
        if ok.status & _STATUS_STATE_CHANGED:
            parts.append(lenenc_str(ok.session_state))
    else:
        parts.append(ok.info)
    return b"".join(parts)


def parse_ok(payload: bytes | memoryview, capabilities: int) -> OkPacket:
    r = PayloadReader(payload)
    header = r.int1()
    affected = r.lenenc_int() or 0
    insert_id = r.lenenc_int() or 0
    status = r.int2()
    warnings = r.int2()
    info = b""
    state = b""
    if capabilities & _CAP_SESSION_TRACK:
        if r.remaining():
            info = r.lenenc_bytes_strict()
        if status & _STATUS_STATE_CHANGED and r.remaining():
            state = r.lenenc_bytes_strict()
    else:
        info = r.rest()
    return OkPacket(affected, insert_id, status, warnings, info, state, header)


@dataclass(frozen=True, slots=True)
class ErrPacket:
    code: int
    sqlstate: str
    message: str

    def __str__(self) -> str:
        return f"({self.code}, {self.sqlstate}) {self.message}"


def encode_err(err: ErrPacket) -> bytes:
    return (
        b"\xff"
        + int2(err.code)
        + b"#"
        + err.sqlstate.encode("ascii")[:5].ljust(5, b"0")
        + err.message.encode("utf-8", "replace")
    )


def parse_err(payload: bytes | memoryview, capabilities: int = _CAP_41) -> ErrPacket:
    r = PayloadReader(payload, 1)
    code = r.int2()
    if code == 0xFFFF:  # progress report (MariaDB); not an error
        return ErrPacket(code, "HY000", "progress report")
    sqlstate = "HY000"
    if r.remaining() and r.data[r.pos] == 0x23:  # '#'
        r.skip(1)
        sqlstate = r.bytes(5).decode("ascii", "replace")
    return ErrPacket(code, sqlstate, r.rest().decode("utf-8", "replace"))


@dataclass(frozen=True, slots=True)
class EofPacket:
    warnings: int = 0
    status: int = int(ServerStatus.AUTOCOMMIT)


def encode_eof(eof: EofPacket) -> bytes:
    return b"\xfe" + int2(eof.warnings) + int2(eof.status)


def encode_terminator(status: int, capabilities: int, warnings: int = 0) -> bytes:
    """The end of a result set: EOF, or an OK with header 0xFE under CLIENT_DEPRECATE_EOF."""
    if capabilities & Capability.DEPRECATE_EOF:
        return encode_ok(OkPacket(status=status, warnings=warnings, header=EOF_HEADER), capabilities)
    return encode_eof(EofPacket(warnings, status))


def terminator_status(payload: bytes | memoryview, capabilities: int) -> int:
    """Status flags of an EOF packet or of an OK packet (either header)."""
    if payload[:1] == b"\xfe" and len(payload) < 9:
        if len(payload) >= 5:
            return payload[3] | (payload[4] << 8)
        return 0
    return parse_ok(payload, capabilities).status


# --- Session state tracking ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionChanges:
    """What an OK packet's session-state block says changed."""

    variables: tuple[tuple[str, str], ...] = ()
    schema: str | None = None
    gtid: str | None = None
    state_changed: bool = False
    transaction_state: str | None = None
    transaction_characteristics: str | None = None


def parse_session_state(block: bytes) -> SessionChanges:
    r = PayloadReader(block)
    variables: list[tuple[str, str]] = []
    schema = gtid = trx_state = trx_chars = None
    changed = False
    while r.remaining():
        kind = r.int1()
        data = PayloadReader(r.lenenc_bytes_strict())
        if kind == SessionTrack.SYSTEM_VARIABLES:
            name = data.lenenc_bytes_strict().decode("utf-8", "replace")
            value = data.lenenc_bytes_strict().decode("utf-8", "replace")
            variables.append((name, value))
        elif kind == SessionTrack.SCHEMA:
            schema = data.lenenc_bytes_strict().decode("utf-8", "replace")
        elif kind == SessionTrack.STATE_CHANGE:
            # MySQL and MariaDB send the bare "1" (no inner length); accept the documented
            # lenenc form too.
            changed = data.rest() in (b"1", b"\x011")
        elif kind == SessionTrack.GTIDS:
            data.skip(1)  # encoding specification
            gtid = data.lenenc_bytes_strict().decode("ascii", "replace")
        elif kind == SessionTrack.TRANSACTION_STATE:
            trx_state = data.lenenc_bytes_strict().decode("ascii", "replace")
        elif kind == SessionTrack.TRANSACTION_CHARACTERISTICS:
            trx_chars = data.lenenc_bytes_strict().decode("utf-8", "replace")
    return SessionChanges(tuple(variables), schema, gtid, changed, trx_state, trx_chars)


# --- Result sets -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: int = FieldType.VAR_STRING
    charset: int = CHARSET_UTF8MB4_GENERAL_CI
    length: int = 1024
    flags: int = 0
    decimals: int = 0
    schema: str = ""
    table: str = ""
    org_table: str = ""
    org_name: str = ""


def encode_column(col: Column) -> bytes:
    return b"".join(
        (
            lenenc_str(b"def"),
            lenenc_str(col.schema.encode()),
            lenenc_str(col.table.encode()),
            lenenc_str(col.org_table.encode()),
            lenenc_str(col.name.encode()),
            lenenc_str(col.org_name.encode()),
            b"\x0c",
            int2(col.charset),
            int4(col.length),
            int1(col.type),
            int2(col.flags),
            int1(col.decimals),
            b"\0\0",
        )
    )


def parse_column(payload: bytes) -> Column:
    r = PayloadReader(payload)
    r.lenenc_bytes()  # catalog
    schema = r.lenenc_bytes_strict().decode("utf-8", "replace")
    table = r.lenenc_bytes_strict().decode("utf-8", "replace")
    org_table = r.lenenc_bytes_strict().decode("utf-8", "replace")
    name = r.lenenc_bytes_strict().decode("utf-8", "replace")
    org_name = r.lenenc_bytes_strict().decode("utf-8", "replace")
    r.lenenc_int()
    charset = r.int2()
    length = r.int4()
    col_type = r.int1()
    flags = r.int2()
    decimals = r.int1()
    return Column(name, col_type, charset, length, flags, decimals, schema, table, org_table, org_name)


def encode_text_row(values: list[object] | tuple[object, ...]) -> bytes:
    out = []
    for value in values:
        if value is None:
            out.append(b"\xfb")
            continue
        if isinstance(value, bytes):
            data = value
        elif isinstance(value, bool):
            data = b"1" if value else b"0"
        else:
            data = str(value).encode("utf-8")
        out.append(lenenc_int(len(data)))
        out.append(data)
    return b"".join(out)


def parse_text_row(payload: bytes, ncols: int) -> tuple[bytes | None, ...]:
    r = PayloadReader(payload)
    return tuple(r.lenenc_bytes() for _ in range(ncols))


def encode_result_set(
    columns: list[Column], rows: list[tuple[object, ...]] | list[list[object]], capabilities: int,
    status: int = int(ServerStatus.AUTOCOMMIT), seq: int = 1,
) -> bytes:
    """A whole text result set as framed bytes, starting at sequence id ``seq``."""
    from .framing import frame

    packets = [lenenc_int(len(columns))]
    packets.extend(encode_column(c) for c in columns)
    if not capabilities & Capability.DEPRECATE_EOF:
        packets.append(encode_eof(EofPacket(0, status)))
    packets.extend(encode_text_row(row) for row in rows)
    packets.append(encode_terminator(status, capabilities))
    out = []
    for p in packets:
        out.append(frame(p, seq))
        seq = (seq + 1) & 0xFF
    return b"".join(out)

