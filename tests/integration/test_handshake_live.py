"""ClientHandshake (Baton logging into a backend) against a live MariaDB: a password, SHA1 of
it only, an empty one, an auth switch and a wrong password, each over a real socket."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.protocol.constants import CACHING_SHA2_PASSWORD, Command
from proxy.protocol.framing import PacketReader, frame
from proxy.protocol.handshake import ClientHandshake, Failed, Ready, Send
from proxy.protocol.packets import encode_handshake, parse_handshake


@pytest.fixture(scope="module")
def mariadb() -> Iterator[object]:
    from proxy.sandbox import MariaDBInstance, ServerStartError, free_port

    with tempfile.TemporaryDirectory(prefix="baton-hs-") as tmp:
        inst = MariaDBInstance("hs", free_port(), Path(tmp), server_id=1)
        try:
            inst.start()
        except (ServerStartError, OSError) as exc:
            pytest.skip(f"no MariaDB: {exc}")
        try:
            inst.sql("CREATE USER 'nopw'@'%'")
            yield inst
        finally:
            inst.stop()


def live_login(port: int, hs: ClientHandshake, plugin_override: str | None = None) -> object:
    """Runs a ClientHandshake over a real socket; returns Ready/Failed, or raises."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = PacketReader()
        first = True
        while True:
            pkt = reader.next_packet()
            if pkt is None:
                data = sock.recv(65536)
                assert data, "server closed the connection"
                reader.feed(data)
                continue
            seq, payload = pkt
            if first and plugin_override:
                payload = encode_handshake(
                    dataclasses.replace(parse_handshake(payload), auth_plugin=plugin_override)
                )
            first = False
            for action in hs.receive(seq, payload):
                if isinstance(action, Send):
                    sock.sendall(action.data)
                elif isinstance(action, Failed):
                    return action
                elif isinstance(action, Ready):
                    sock.sendall(frame(bytes((Command.PING,)), 0))  # really logged in?
                    reader.feed(sock.recv(64))
                    pong = reader.next_packet()
                    assert pong is not None and pong[0] == 1 and pong[1][0] == 0x00
                    assert reader.next_packet() is None
                    return action


def test_live_login_with_password(mariadb) -> None:  # type: ignore[no-untyped-def]
    ready = live_login(mariadb.port, ClientHandshake("app", b"app", database="test"))
    assert isinstance(ready, Ready)
    assert "MariaDB" in ready.handshake.server_version


def test_live_login_with_stage1_only(mariadb) -> None:  # type: ignore[no-untyped-def]
    hs = ClientHandshake("app", stage1=hashlib.sha1(b"app").digest())
    assert isinstance(live_login(mariadb.port, hs), Ready)


def test_live_login_with_empty_password(mariadb) -> None:  # type: ignore[no-untyped-def]
    assert isinstance(live_login(mariadb.port, ClientHandshake("nopw", b"")), Ready)


def test_live_auth_switch(mariadb) -> None:  # type: ignore[no-untyped-def]
    # Told the server prefers caching_sha2_password, the client answers with it; MariaDB does
    # not have it and switches the client to mysql_native_password.
    hs = ClientHandshake("app", b"app")
    assert isinstance(live_login(mariadb.port, hs, CACHING_SHA2_PASSWORD), Ready)


def test_live_wrong_password(mariadb) -> None:  # type: ignore[no-untyped-def]
    failed = live_login(mariadb.port, ClientHandshake("app", b"wrong"))
    assert isinstance(failed, Failed)
    assert (failed.error.code, failed.error.sqlstate) == (1045, "28000")
    assert failed.error.message == "Access denied for user 'app'@'127.0.0.1' (using password: YES)"
