"""Raw-socket clients for hostile-input tests: ``RawClient`` logs in properly with Baton's own
sans-I/O handshake and framing, then sends whatever bytes a test wants; ``Canary`` is a
well-behaved PyMySQL session querying in a thread that must see no error. Shared by
test_e2e_bad_input.py and test_fuzz_sockets.py.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from proxy.protocol.constants import SUPPORTED_CAPABILITIES, Capability
from proxy.protocol.framing import PacketReader, frame
from proxy.protocol.handshake import ClientHandshake, Failed, Ready, Send
from proxy.sandbox.baton_process import BatonProcess
from tests.support.clients import pymysql_connect

# Classic result sets (EOF packets, no session tracking): easy to read by hand.
RAW_CAPABILITIES = int(
    SUPPORTED_CAPABILITIES & ~Capability.DEPRECATE_EOF & ~Capability.SESSION_TRACK
)


@dataclass(frozen=True, slots=True)
class Err:
    code: int
    sqlstate: str
    message: str


def parse_err(payload: bytes) -> Err | None:
    """An ERR packet (0xFF, code, '#', SQLSTATE, message), or None if it is not one."""
    if payload[:1] != b"\xff" or len(payload) < 9 or payload[3:4] != b"#":
        return None
    return Err(
        int.from_bytes(payload[1:3], "little"),
        payload[4:9].decode("ascii", "replace"),
        payload[9:].decode("utf-8", "replace"),
    )


class RawClient:
    """A MySQL client that is just a socket: log in properly, then send whatever."""

    def __init__(self, port: int, timeout: float = 5, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
        )
        self.reader = PacketReader()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_packet(self) -> tuple[int, bytes] | None:
        """The next packet, or None once Baton has closed the connection."""
        while (packet := self.reader.next_packet()) is None:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.reader.feed(data)
        return packet

    def login(self, user: str = "app", password: bytes = b"app") -> None:
        handshake = ClientHandshake(
            user=user, password=password, database="test", capabilities=RAW_CAPABILITIES
        )
        while True:
            packet = self.read_packet()
            assert packet is not None, "Baton closed the connection during login"
            for action in handshake.receive(*packet):
                if isinstance(action, Send):
                    self.send(action.data)
                elif isinstance(action, Failed):
                    raise AssertionError(f"login refused: {action.error}")
                elif isinstance(action, Ready):
                    return

    def query(self, sql: str) -> list[bytes] | Err:
        """Text-protocol rows (raw payloads), [] for an OK, or the ERR."""
        self.send(frame(b"\x03" + sql.encode(), 0))
        return self.read_response()

    def read_response(self) -> list[bytes] | Err:
        packet = self._must_read()
        if (err := parse_err(packet)) is not None:
            return err
        if packet[0] == 0x00:
            return []
        for _ in range(packet[0] + 1):  # column definitions, then EOF
            self._must_read()
        rows = []
        while not ((row := self._must_read())[0] == 0xFE and len(row) < 9):
            rows.append(row)
        return rows

    def _must_read(self) -> bytes:
        packet = self.read_packet()
        assert packet is not None, "connection closed in the middle of a response"
        return packet[1]

    def error_then_close(self, within: float = 5) -> Err:
        """Baton's last word must be an ERR packet, followed by closing the connection."""
        self.sock.settimeout(within)
        packet = self.read_packet()
        assert packet is not None, "closed without an error packet"
        err = parse_err(packet[1])
        assert err is not None, f"expected an ERR packet, got {packet[1][:32]!r}"
        self.assert_closed(within)
        return err

    def assert_closed(self, within: float = 5) -> list[Err]:
        """Wait for Baton to close; any packet it sends meanwhile must be an ERR."""
        self.sock.settimeout(within)
        errors = []
        deadline = time.monotonic() + within
        while (packet := self.read_packet()) is not None:
            err = parse_err(packet[1])
            assert err is not None, f"expected nothing or an ERR packet, got {packet[1][:32]!r}"
            errors.append(err)
            assert time.monotonic() < deadline, "Baton kept the connection open"
        return errors


@dataclass
class Canary:
    """A well-behaved client querying in a loop in a thread, recording any error."""

    proxy: BatonProcess
    queries: int = 0
    errors: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        try:
            with pymysql_connect(self.proxy, read_timeout=10) as conn, conn.cursor() as cur:
                while not self._stop.is_set():
                    cur.execute("SELECT %s, COUNT(*) FROM seq_1_to_100", (self.queries,))
                    assert cur.fetchone() == (self.queries, 100)
                    self.queries += 1
        except BaseException as exc:  # noqa: BLE001 -- any failure is what we look for
            self.errors.append(exc)

    def wait_for(self, more: int, timeout: float = 10) -> None:
        """Block until the canary has run ``more`` further queries."""
        target = self.queries + more
        deadline = time.monotonic() + timeout
        while self.queries < target and not self.errors:
            assert time.monotonic() < deadline, "the canary stalled"
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()


@contextmanager
def canary_running(proxy: BatonProcess, warm_up: int) -> Iterator[Canary]:
    """A Canary querying in its thread for the block, once it has run ``warm_up`` queries."""
    bird = Canary(proxy)
    thread = threading.Thread(target=bird.run, daemon=True)
    thread.start()
    bird.wait_for(warm_up)
    try:
        yield bird
    finally:
        bird.stop()
        thread.join(15)
