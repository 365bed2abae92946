"""Captures a real MariaDB's exact response bytes as golden data for the protocol tests.

    .venv/bin/python -m tests.support.golden.capture            # throwaway mariadbd
    .venv/bin/python -m tests.support.golden.capture --port N   # a running server (root over TCP)

It logs in over a raw socket with a hand-built HandshakeResponse41 and ``scramble_native`` (so a
successful login is itself proof that the scramble matches the server's), once with and once
without CLIENT_DEPRECATE_EOF, sends every command in ``_captures()`` and records the server's
bytes as hex.

Where a response ends is decided without the code under test: the capture reads until the
server goes quiet, then sends COM_PING and requires exactly one OK packet with sequence id 1
back, so no late byte of the previous response can hide. At the end ResponseTracker is run over
each capture and any disagreement is printed (the unit tests then fail on it too).

The 17 MiB row is stored run-length encoded and checked by SHA-256 (see ``encode_runs``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pymysql

from proxy.protocol import auth
from proxy.protocol.constants import (
    CACHING_SHA2_PASSWORD,
    NATIVE_PASSWORD,
    SUPPORTED_CAPABILITIES,
    Capability,
    Command,
    FieldType,
)
from proxy.protocol.framing import PacketReader, frame
from proxy.protocol.packets import (
    HandshakeResponse,
    encode_handshake_response,
    parse_handshake,
)
from proxy.protocol.response import ResponseTracker
from proxy.protocol.wire import int1, int2, int4, int8, lenenc_str
from tests.support.golden import decode_runs, encode_runs

OUT = Path(__file__).with_name("mariadb.json")

USER, PASSWORD = "golden", "golden-pw"
NOPW_USER = "golden_nopw"
SCHEMA = "golden"
BIG_ROW_LEN = 17 * 1024 * 1024
INFILE_DATA = b"from-infile-1\nfrom-infile-2\n"

_SETUP = [
    f"DROP DATABASE IF EXISTS {SCHEMA}",
    f"CREATE DATABASE {SCHEMA}",
    f"CREATE TABLE {SCHEMA}.t (id INT PRIMARY KEY, name VARCHAR(20) NOT NULL, note VARCHAR(20))",
    f"INSERT INTO {SCHEMA}.t VALUES (1, 'one', NULL), (2, 'two', 'second'), (3, 'three', NULL),"
    " (4, 'four', 'fourth')",
    f"CREATE TABLE {SCHEMA}.ins (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20))",
    f"CREATE PROCEDURE {SCHEMA}.two_results() BEGIN SELECT 1 AS a; "
    "SELECT 'x' AS b, NULL AS c; END",
    f"DROP USER IF EXISTS '{USER}'@'%'",
    f"CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'",
    f"GRANT ALL ON {SCHEMA}.* TO '{USER}'@'%'",
    f"GRANT ALL ON test.* TO '{USER}'@'%'",
    f"DROP USER IF EXISTS '{NOPW_USER}'@'%'",
    f"CREATE USER '{NOPW_USER}'@'%'",
]


# --- raw client ----------------------------------------------------------------------------


class RawClient:
    """A blocking socket that speaks just enough MySQL to log in and record responses."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = PacketReader()

    def close(self) -> None:
        self.sock.close()

    def packet(self) -> tuple[int, bytes, bytes]:
        """(seq, payload, the raw framed bytes) of the next packet."""
        self.sock.settimeout(10)
        while True:
            got = self.reader.next_packet()
            if got is not None:
                seq, payload = got
                return seq, payload, frame(payload, seq)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.reader.feed(data)

    def send(self, payload: bytes, seq: int = 0) -> None:
        self.sock.sendall(frame(payload, seq))

    def quiet_read(self, first_timeout: float, quiet: float) -> bytes:
        """Everything the server sends until it has said nothing for ``quiet`` seconds."""
        assert self.reader.buffered() == 0, "login left bytes behind"
        chunks: list[bytes] = []
        self.sock.settimeout(first_timeout)
        try:
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    raise ConnectionError("server closed the connection")
                chunks.append(data)
                self.sock.settimeout(quiet)
        except TimeoutError:
            pass
        return b"".join(chunks)

    def command(
        self, command: int, body: bytes, *, first_timeout: float = 10, quiet: float = 0.3
    ) -> bytes:
        self.send(bytes((command,)) + body)
        return self.quiet_read(first_timeout, quiet)

    def check_idle(self) -> None:
        """A COM_PING must come back as one OK packet: proof the last capture was complete."""
        reply = self.command(Command.PING, b"")
        if len(reply) < 11 or reply[3] != 1 or reply[4] != 0 or len(reply) != 4 + reply[0]:
            raise RuntimeError(f"stray bytes before the PING reply: {reply[:64].hex()}")


def login_payload(
    caps: int, user: str, auth_response: bytes, plugin: str, database: str | None
) -> bytes:
    return encode_handshake_response(
        HandshakeResponse(
            capabilities=caps,
            max_packet=1 << 30,
            user=user,
            auth_response=auth_response,
            database=database,
            auth_plugin=plugin,
            attributes={"_client_name": "baton-golden-capture"},
        )
    )


def client_caps(server_caps: int, deprecate_eof: bool, database: str | None) -> int:
    caps = int(SUPPORTED_CAPABILITIES) & server_caps
    caps |= Capability.PROTOCOL_41 | Capability.LONG_PASSWORD
    caps &= ~Capability.SSL
    if database is None:
        caps &= ~Capability.CONNECT_WITH_DB
    if deprecate_eof:
        caps |= Capability.DEPRECATE_EOF
    else:
        caps &= ~Capability.DEPRECATE_EOF
    return caps


@dataclass
class Login:
    client: RawClient
    greeting: bytes  # framed
    requests: list[bytes]  # framed packets the client sent, in order
    replies: list[bytes]  # framed packets after the HandshakeResponse, in order
    caps: int
    nonce: bytes


def login(
    host: str,
    port: int,
    user: str,
    password: bytes,
    *,
    deprecate_eof: bool = True,
    database: str | None = SCHEMA,
    plugin: str = NATIVE_PASSWORD,
) -> Login:
    """Logs in by hand. ``plugin=caching_sha2_password`` makes MariaDB ask for an auth switch."""
    client = RawClient(host, port)
    _, payload, greeting = client.packet()
    hs = parse_handshake(payload)
    caps = client_caps(hs.capabilities, deprecate_eof, database)
    if plugin == CACHING_SHA2_PASSWORD:
        answer = auth.scramble_caching_sha2(password, hs.auth_data)
    else:
        answer = auth.scramble_native(password, hs.auth_data)
    requests = [frame(login_payload(caps, user, answer, plugin, database), 1)]
    client.sock.sendall(requests[-1])
    replies = []
    while True:
        seq, payload, raw = client.packet()
        replies.append(raw)
        if payload[0] == 0xFE:  # auth switch: answer with the plugin asked for
            nonce = payload[payload.index(b"\0") + 1 :].rstrip(b"\0")
            requests.append(frame(auth.scramble_native(password, nonce), seq + 1))
            client.sock.sendall(requests[-1])
            continue
        if payload[0] in (0x00, 0xFF):
            return Login(client, greeting, requests, replies, caps, hs.auth_data)
        raise RuntimeError(f"unexpected login packet {raw.hex()}")


# --- what to capture -----------------------------------------------------------------------

CURSOR_TYPE_READ_ONLY = 1
MYSQL_OPTION_MULTI_STATEMENTS_ON = 0
MYSQL_OPTION_MULTI_STATEMENTS_OFF = 1


def execute_body(stmt_id: int, params: list[tuple[int, bytes | None]], flags: int = 0) -> bytes:
    """COM_STMT_EXECUTE body (without the command byte), binding params on first execute."""
    body = int4(stmt_id) + int1(flags) + int4(1)
    if params:
        bitmap = bytearray((len(params) + 7) // 8)
        for i, (_, value) in enumerate(params):
            if value is None:
                bitmap[i // 8] |= 1 << (i % 8)
        body += bytes(bitmap) + b"\x01"
        body += b"".join(int2(ftype) for ftype, _ in params)
        body += b"".join(value for _, value in params if value is not None)
    return body


@dataclass(frozen=True)
class Capture:
    name: str
    command: Command
    body: Callable[[dict[str, int]], bytes]  # gets the statement ids prepared so far
    note: str
    expect_response: bool = True


def _q(name: str, sql: str, note: str) -> Capture:
    return Capture(name, Command.QUERY, lambda _ids: sql.encode(), note)


def _captures() -> list[Capture]:
    select_params: list[tuple[int, bytes | None]] = [
        (FieldType.LONGLONG, int8(0)),
        (FieldType.VAR_STRING, lenenc_str(b"zzz")),
    ]
    return [
        _q("query_select_1", "SELECT 1", "one column, one row"),
        _q("query_rows_with_nulls", "SELECT id, name, note FROM t ORDER BY id", "4 rows, 2 NULLs"),
        _q("query_empty_result", "SELECT id, name FROM t WHERE id < 0", "columns, no rows"),
        _q("query_insert", "INSERT INTO ins (v) VALUES ('a'), ('b'), ('c')",
           "OK: 3 affected rows, last insert id 1 (table truncated before each variant)"),
        _q("query_err_syntax", "SELEC 1", "ERR 1064 42000"),
        _q("query_err_unknown_table", "SELECT * FROM nope", "ERR 1146 42S02"),
        _q("query_multi_statement", "SELECT 1; SELECT 2; DO 1",
           "MULTI_STATEMENTS: two result sets with MORE_RESULTS_EXISTS, then an OK"),
        _q("query_multi_statement_err", "SELECT 1; SELEC 2",
           "a result set with MORE_RESULTS_EXISTS, then ERR 1064"),
        _q("query_call_two_results", "CALL two_results()",
           "a procedure: two result sets, then the CALL's OK"),
        _q("query_local_infile", "LOAD DATA LOCAL INFILE 'golden.csv' INTO TABLE ins (v)",
           "0xFB request naming the file; after_infile is the OK once the data and an empty "
           "packet were sent"),
        Capture("stmt_prepare_select", Command.STMT_PREPARE,
                lambda _ids: b"SELECT id, name, note FROM t WHERE id > ? AND name <> ?",
                "prepare OK, 2 parameter and 3 column definitions"),
        Capture("stmt_prepare_insert", Command.STMT_PREPARE,
                lambda _ids: b"INSERT INTO ins (v) VALUES (?)", "1 parameter, no columns"),
        Capture("stmt_prepare_no_params", Command.STMT_PREPARE,
                lambda _ids: b"SELECT 1 AS one", "no parameters, 1 column"),
        Capture("stmt_prepare_call", Command.STMT_PREPARE,
                lambda _ids: b"CALL two_results()", "no parameters, no columns"),
        Capture("stmt_execute_select", Command.STMT_EXECUTE,
                lambda ids: execute_body(ids["stmt_prepare_select"], select_params),
                "binary result set, 4 rows (2 with a NULL bit)"),
        Capture("stmt_execute_insert", Command.STMT_EXECUTE,
                lambda ids: execute_body(
                    ids["stmt_prepare_insert"], [(FieldType.VAR_STRING, lenenc_str(b"p"))]),
                "OK: 1 affected row"),
        Capture("stmt_execute_cursor", Command.STMT_EXECUTE,
                lambda ids: execute_body(
                    ids["stmt_prepare_select"], select_params, CURSOR_TYPE_READ_ONLY),
                "CURSOR_TYPE_READ_ONLY: column definitions, then a terminator with CURSOR_EXISTS"),
        Capture("stmt_fetch_2", Command.STMT_FETCH,
                lambda ids: int4(ids["stmt_prepare_select"]) + int4(2),
                "2 binary rows, then a terminator with CURSOR_EXISTS"),
        Capture("stmt_fetch_rest", Command.STMT_FETCH,
                lambda ids: int4(ids["stmt_prepare_select"]) + int4(100),
                "the last 2 rows, then a terminator with LAST_ROW_SENT"),
        Capture("stmt_execute_call", Command.STMT_EXECUTE,
                lambda ids: execute_body(ids["stmt_prepare_call"], []),
                "PS_MULTI_RESULTS: two binary result sets, then an OK"),
        Capture("stmt_close", Command.STMT_CLOSE,
                lambda ids: int4(ids["stmt_prepare_select"]), "no response at all",
                expect_response=False),
        Capture("field_list", Command.FIELD_LIST, lambda _ids: b"t\0",
                "3 column definitions, then a terminator"),
        Capture("statistics", Command.STATISTICS, lambda _ids: b"",
                "one packet of text, no header byte"),
        Capture("set_option_multi_off", Command.SET_OPTION,
                lambda _ids: int2(MYSQL_OPTION_MULTI_STATEMENTS_OFF), "an EOF (or 0xFE OK)"),
        Capture("set_option_multi_on", Command.SET_OPTION,
                lambda _ids: int2(MYSQL_OPTION_MULTI_STATEMENTS_ON), "an EOF (or 0xFE OK)"),
        Capture("ping", Command.PING, lambda _ids: b"", "OK"),
        _q("query_enable_tracking",
           "SET SESSION session_track_system_variables='*', session_track_schema=ON, "
           "session_track_state_change=ON",
           "OK with SESSION_STATE_CHANGED"),
        _q("query_set_autocommit_0", "SET autocommit=0",
           "OK with SESSION_STATE_CHANGED, autocommit=OFF tracked, AUTOCOMMIT status off"),
        _q("query_begin", "BEGIN", "OK with IN_TRANS"),
        _q("query_commit", "COMMIT", "OK, IN_TRANS cleared"),
        _q("query_enable_trx_tracking", "SET SESSION session_track_transaction_info='CHARACTERISTICS'",
           "OK with the variable tracked"),
        _q("query_begin_tracked", "START TRANSACTION READ ONLY",
           "OK with transaction state and characteristics tracked"),
        _q("query_rollback_tracked", "ROLLBACK", "OK with the transaction state tracked"),
        _q("query_use_schema", "USE test", "OK with the schema change tracked"),
        Capture("init_db", Command.INIT_DB, lambda _ids: SCHEMA.encode(),
                "COM_INIT_DB: OK with the schema change tracked"),
        _q("query_set_autocommit_1", "SET autocommit=1", "OK with autocommit=ON tracked"),
        Capture("reset_connection", Command.RESET_CONNECTION, lambda _ids: b"", "OK"),
    ]


# --- capture -------------------------------------------------------------------------------


def capture_variant(host: str, port: int, deprecate_eof: bool) -> dict[str, object]:
    logged = login(host, port, USER, PASSWORD.encode(), deprecate_eof=deprecate_eof)
    if logged.replies[-1][4] != 0x00:
        raise RuntimeError(f"login failed: {logged.replies[-1].hex()}")
    client = logged.client
    entries: list[dict[str, object]] = []
    ids: dict[str, int] = {}
    try:
        for cap in _captures():
            body = cap.body(ids)
            request = bytes((cap.command,)) + body
            if cap.expect_response:
                response = client.command(cap.command, body)
            else:
                response = client.command(cap.command, body, first_timeout=1.0)
            entry: dict[str, object] = {
                "name": cap.name,
                "command": cap.command.name,
                "request": request.hex(),
                "note": cap.note,
                "response": response.hex(),
            }
            if cap.command == Command.STMT_PREPARE and response[4] == 0x00:
                ids[cap.name] = int.from_bytes(response[5:9], "little")
            if cap.name == "query_local_infile":
                if response[4] != 0xFB:
                    raise RuntimeError(f"expected a LOCAL INFILE request: {response.hex()}")
                seq = response[3] + 1
                client.sock.sendall(frame(INFILE_DATA, seq) + frame(b"", seq + 1))
                entry["infile_data"] = INFILE_DATA.hex()
                entry["after_infile"] = client.quiet_read(10, 0.3).hex()
            entries.append(entry)
            client.check_idle()
        big_sql = f"SELECT REPEAT('x', {BIG_ROW_LEN})".encode()
        big = client.command(Command.QUERY, big_sql, first_timeout=60, quiet=1.5)
        client.check_idle()
        entries.append(
            {
                "name": "query_big_row",
                "command": "QUERY",
                "request": (bytes((Command.QUERY,)) + big_sql).hex(),
                "note": f"one row of {BIG_ROW_LEN} bytes: a text row starting with 0xFE, sent "
                "as a 0xFFFFFF frame and a continuation frame; stored run-length encoded",
                "response_runs": encode_runs(big),
                "response_sha256": hashlib.sha256(big).hexdigest(),
                "response_len": len(big),
            }
        )
    finally:
        client.close()
    return {
        "capabilities": logged.caps,
        "capability_names": [c.name for c in Capability if c & logged.caps],
        "login_ok": logged.replies[-1].hex(),
        "responses": entries,
    }


def _exchange(logged: Login) -> dict[str, object]:
    return {
        "greeting": logged.greeting.hex(),
        "requests": [r.hex() for r in logged.requests],
        "replies": [r.hex() for r in logged.replies],
    }


def capture_logins(host: str, port: int, root_password: str) -> dict[str, object]:
    """Greeting, auth switch, access-denied errors and an empty-password login."""
    ok = login(host, port, USER, PASSWORD.encode())
    ok.client.close()
    switch = login(host, port, USER, PASSWORD.encode(), plugin=CACHING_SHA2_PASSWORD)
    switch.client.close()
    wrong = login(host, port, USER, b"not-the-password")
    wrong.client.close()
    unknown = login(host, port, "nobody", b"whatever", database=None)
    unknown.client.close()
    empty = login(host, port, NOPW_USER, b"", database=None)
    empty.client.close()
    conn = pymysql.connect(host=host, port=port, user="root", password=root_password)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT PASSWORD(%s)", (PASSWORD,))
            password_hash = cur.fetchone()[0]
    finally:
        conn.close()
    return {
        "user": USER,
        "password": PASSWORD,
        "password_hash": password_hash,
        "login_ok": {
            "note": f"{USER} with database {SCHEMA}, CLIENT_DEPRECATE_EOF and SESSION_TRACK",
            **_exchange(ok),
        },
        "auth_switch": {
            "note": "HandshakeResponse named caching_sha2_password; MariaDB switched to "
            "mysql_native_password; the native answer to the switch nonce got OK",
            **_exchange(switch),
        },
        "wrong_password": {"user": USER, **_exchange(wrong)},
        "unknown_user": {"user": "nobody", **_exchange(unknown)},
        "empty_password": {"user": NOPW_USER, **_exchange(empty)},
    }


def setup(host: str, port: int, root_password: str) -> None:
    conn = pymysql.connect(host=host, port=port, user="root", password=root_password,
                           autocommit=True)
    try:
        with conn.cursor() as cur:
            for statement in _SETUP:
                cur.execute(statement)
    finally:
        conn.close()


def truncate_ins(host: str, port: int, root_password: str) -> None:
    conn = pymysql.connect(host=host, port=port, user="root", password=root_password,
                           autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(f"TRUNCATE {SCHEMA}.ins")
    finally:
        conn.close()


def cross_check(variants: dict[str, dict[str, object]]) -> list[str]:
    """Runs ResponseTracker over every capture; returns the disagreements found."""
    problems = []
    for key, variant in variants.items():
        caps = int(variant["capabilities"])  # type: ignore[call-overload]
        for entry in variant["responses"]:  # type: ignore[attr-defined]
            data = (
                decode_runs(entry["response_runs"])
                if "response_runs" in entry
                else bytes.fromhex(entry["response"])
            )
            tracker = ResponseTracker(caps)
            tracker.start(Command[entry["command"]])
            try:
                used = tracker.feed(data)
            except Exception as exc:  # noqa: BLE001 - reporting, not handling
                problems.append(f"{key}/{entry['name']}: {type(exc).__name__}: {exc}")
                continue
            if used != len(data) or not (tracker.done or tracker.awaiting_infile):
                problems.append(
                    f"{key}/{entry['name']}: consumed {used} of {len(data)}, "
                    f"state {tracker.state.name}"
                )
    return problems


def run(host: str, port: int, root_password: str) -> dict[str, object]:
    setup(host, port, root_password)
    variants = {}
    for key, deprecate_eof in (("deprecate_eof", True), ("eof", False)):
        truncate_ins(host, port, root_password)
        variants[key] = capture_variant(host, port, deprecate_eof)
        print(f"captured {len(variants[key]['responses'])} responses with {key}")  # type: ignore[arg-type]
    conn = pymysql.connect(host=host, port=port, user="root", password=root_password)
    version = conn.get_server_info()
    conn.close()
    data = {
        "producer": "tests/support/golden/capture.py",
        "server_version": version,
        "logins": capture_logins(host, port, root_password),
        "variants": variants,
    }
    for problem in cross_check(variants):
        print("ResponseTracker disagrees:", problem)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="use a running server instead of starting one")
    parser.add_argument("--root-password", default="")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.port:
        data = run(args.host, args.port, args.root_password)
    else:
        from proxy.sandbox import MariaDBInstance, free_port

        with tempfile.TemporaryDirectory(prefix="baton-golden-") as tmp:
            server = MariaDBInstance("golden", free_port(), Path(tmp), server_id=1)
            server.start()
            try:
                # root@localhost only: allow root over TCP for the setup.
                server.sql("CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'")
                server.sql("GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION")
                data = run("127.0.0.1", server.port, "")
            finally:
                server.stop()
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
