"""Malformed client input: Baton drops only the offending client, with an error packet where the
protocol allows one, while other sessions keep running and new clients are still accepted.

The bad clients are raw sockets (tests/support/raw_client.py) that log in by hand with Baton's
own sans-I/O handshake (``ClientHandshake``) and framing; everything after the login is bytes
written on purpose.
A canary client runs queries in a thread through every test and must see no error at all.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from proxy.protocol.framing import frame
from proxy.sandbox import ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess
from tests.support.clients import MiB, launch_baton, pymysql_connect, scratch_table
from tests.support.raw_client import Canary, Err, RawClient, canary_running

StartBaton = Callable[..., BatonProcess]


ER_HANDSHAKE_ERROR = 1043
ER_UNKNOWN_COM_ERROR = 1047
ER_NET_PACKET_TOO_LARGE = 1153
ER_NET_PACKETS_OUT_OF_ORDER = 1156


@pytest.fixture
def canary(proxy: BatonProcess) -> Iterator[Canary]:
    with canary_running(proxy, 20) as bird:
        yield bird


def assert_baton_unharmed(proxy: BatonProcess, canary: Canary) -> None:
    """The canary kept going without an error and a new client is served."""
    canary.wait_for(20)
    assert canary.errors == []
    with pymysql_connect(proxy) as conn, conn.cursor() as cur:
        cur.execute("SELECT 'still accepting'")
        assert cur.fetchone() == ("still accepting",)
    assert proxy.is_running()


@pytest.fixture(scope="module")
def proxy(
    sandbox: ReplicationSandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BatonProcess]:
    with launch_baton(sandbox, tmp_path_factory.mktemp("baton-bad-input")) as process:
        yield process


@pytest.fixture
def client(proxy: BatonProcess) -> Iterator[RawClient]:
    raw = RawClient(proxy.proxy_port)
    try:
        yield raw
    finally:
        raw.close()


# --- before login ----------------------------------------------------------------------------


def test_raw_client_logs_in_and_queries(client: RawClient) -> None:
    """The harness itself: a hand-made login and query work, so failures below mean what
    they say."""
    client.login()
    assert client.query("SELECT 1") == [b"\x011"]


def test_garbage_handshake_response_gets_error_1043(
    proxy: BatonProcess, canary: Canary, client: RawClient
) -> None:
    assert client.read_packet() is not None  # the greeting
    client.send(frame(b"\xde\xad", 1))
    err = client.error_then_close()
    assert (err.code, err.sqlstate) == (ER_HANDSHAKE_ERROR, "08S01")
    assert_baton_unharmed(proxy, canary)


@pytest.mark.slow
def test_http_request_on_the_mysql_port_is_dropped(
    proxy: BatonProcess, canary: Canary, client: RawClient
) -> None:
    # "GET " reads as a 5.5 MB packet that never comes: Baton drops the client at its
    # handshake timeout (10 s) instead of waiting forever.
    assert client.read_packet() is not None
    client.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n")
    client.assert_closed(within=12)
    assert_baton_unharmed(proxy, canary)


def test_truncated_header_then_hang_up_during_login(
    proxy: BatonProcess, canary: Canary, client: RawClient
) -> None:
    assert client.read_packet() is not None
    client.send(b"\x20\x00")
    client.sock.shutdown(socket.SHUT_WR)
    client.assert_closed()
    assert_baton_unharmed(proxy, canary)


# --- after login -----------------------------------------------------------------------------


def test_garbage_bytes_then_hang_up(proxy: BatonProcess, canary: Canary, client: RawClient) -> None:
    client.login()
    client.send(random.Random(1234).randbytes(4096))
    client.sock.shutdown(socket.SHUT_WR)
    client.assert_closed()
    assert_baton_unharmed(proxy, canary)


def test_truncated_header_then_hang_up(
    proxy: BatonProcess, canary: Canary, client: RawClient
) -> None:
    client.login()
    client.send(b"\x05\x00")
    client.sock.shutdown(socket.SHUT_WR)
    client.assert_closed()
    assert_baton_unharmed(proxy, canary)


def test_packet_claiming_16_mib_then_hang_up(
    proxy: BatonProcess, canary: Canary, client: RawClient
) -> None:
    client.login()
    # A full-size frame announces a continuation; only 2 MiB of it ever arrives.
    client.send(b"\xff\xff\xff\x00\x03SELECT '" + b"x" * (2 * MiB))
    client.close()
    assert_baton_unharmed(proxy, canary)


def test_wrong_sequence_id_gets_error_1156(
    proxy: BatonProcess, canary: Canary, client: RawClient
) -> None:
    client.login()
    client.send(frame(b"\x03SELECT 1", 5))
    err = client.error_then_close()
    assert (err.code, err.sqlstate) == (ER_NET_PACKETS_OUT_OF_ORDER, "08S01")
    assert_baton_unharmed(proxy, canary)


def test_unknown_command_gets_error_1047_and_the_session_goes_on(
    proxy: BatonProcess, canary: Canary, client: RawClient
) -> None:
    client.login()
    client.send(frame(b"\x20", 0))
    response = client.read_response()
    assert isinstance(response, Err), response
    assert response.code == ER_UNKNOWN_COM_ERROR
    assert client.query("SELECT 1") == [b"\x011"]
    assert_baton_unharmed(proxy, canary)


def test_empty_command_packet_gets_an_error(
    proxy: BatonProcess, canary: Canary, client: RawClient
) -> None:
    client.login()
    client.send(frame(b"", 0))
    client.error_then_close()
    assert_baton_unharmed(proxy, canary)


def test_pipelined_commands_are_answered_in_order(client: RawClient) -> None:
    """Not bad input, but the edge of it: several commands in one write."""
    client.login()
    client.send(b"".join(frame(f"\x03SELECT {n}".encode(), 0) for n in range(1, 6)))
    assert [client.read_response() for _ in range(5)] == [
        [b"\x01" + str(n).encode()] for n in range(1, 6)
    ]


def test_command_trickling_in_one_byte_at_a_time(client: RawClient) -> None:
    client.login()
    client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for byte in frame(b"\x03SELECT 'slow'", 0):
        client.send(bytes([byte]))
        time.sleep(0.002)
    assert client.read_response() == [b"\x04slow"]
    assert client.query("SELECT 'next'") == [b"\x04next"]


def test_hang_up_in_the_middle_of_a_result_leaves_no_trace(
    proxy: BatonProcess, canary: Canary, client: RawClient
) -> None:
    client.login()
    client.send(frame(b"\x03SELECT seq, REPEAT('r', 200) FROM seq_1_to_1000000", 0))
    for _ in range(100):
        assert client.read_packet() is not None
    client.close()  # with most of a 200 MB result still on its way
    for _ in range(5):  # whatever backend connection the next clients get must be clean
        with pymysql_connect(proxy) as conn, conn.cursor() as cur:
            cur.execute("SELECT 'clean', COUNT(*) FROM seq_1_to_10")
            assert cur.fetchall() == (("clean", 10),)
    assert_baton_unharmed(proxy, canary)


def test_hang_up_in_the_middle_of_a_local_infile(
    proxy: BatonProcess, canary: Canary, client: RawClient, sandbox: ReplicationSandbox
) -> None:
    with scratch_table(sandbox, "id INT PRIMARY KEY") as table:
        client.login()
        client.send(frame(f"\x03LOAD DATA LOCAL INFILE 'rows.txt' INTO TABLE {table}".encode(), 0))
        seq, request = client.read_packet() or (0, b"")
        assert request == b"\xfbrows.txt"  # the server asks for the file
        client.send(frame(b"".join(b"%d\n" % i for i in range(1, 1001)), seq + 1))
        client.close()  # before the empty packet that ends the file
        assert_baton_unharmed(proxy, canary)
        deadline = time.monotonic() + 10  # the aborted statement leaves nothing behind
        while sandbox.master.sql(f"SELECT COUNT(*) FROM {table}") != [(0,)]:
            assert time.monotonic() < deadline, "rows of an unfinished LOAD DATA were committed"
            time.sleep(0.1)
        with pymysql_connect(proxy) as conn, conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (1)")  # no lock left on the table
            assert sandbox.master.sql(f"SELECT id FROM {table}") == [(1,)]


# --- max_allowed_packet ----------------------------------------------------------------------


@pytest.fixture
def small_packets(baton: StartBaton, sandbox: ReplicationSandbox) -> BatonProcess:
    return baton(sandbox, admin={"listen": ""}, proxy={"max_allowed_packet": MiB})


def test_packet_over_max_allowed_packet_gets_error_1153(
    proxy: BatonProcess, canary: Canary, small_packets: BatonProcess
) -> None:
    with pymysql_connect(small_packets) as conn, conn.cursor() as cur:  # just under: accepted
        text = "y" * (MiB - 100)
        cur.execute("SELECT LENGTH(%s)", (text,))
        assert cur.fetchone() == (len(text),)
    client = RawClient(small_packets.proxy_port)
    try:
        client.login()
        payload = b"\x03SELECT '" + b"z" * (2 * MiB) + b"'"
        client.send(frame(payload, 0)[: 64 * 1024])  # the header says it all
        err = client.error_then_close()
        assert (err.code, err.sqlstate) == (ER_NET_PACKET_TOO_LARGE, "08S01")
    finally:
        client.close()
    with pymysql_connect(small_packets) as conn, conn.cursor() as cur:
        cur.execute("SELECT 'still accepting'")
        assert cur.fetchone() == ("still accepting",)
    assert_baton_unharmed(proxy, canary)


def test_many_bad_clients_at_once(proxy: BatonProcess, canary: Canary) -> None:
    """A burst of misbehaving clients of every kind above, concurrently."""
    behaviours: list[Callable[[RawClient], None]] = [
        lambda c: (c.read_packet(), c.send(frame(os.urandom(3), 1))),
        lambda c: (c.login(), c.send(frame(b"\x03SELECT 1", 9))),
        lambda c: (c.login(), c.send(frame(b"", 0))),
        lambda c: (c.login(), c.send(b"\xff\xff\xff\x00\x03" + b"q" * 100_000)),
        lambda c: (c.login(), c.send(b"\x01")),
    ]
    clients = []
    for i in range(50):
        raw = RawClient(proxy.proxy_port)
        behaviours[i % len(behaviours)](raw)
        clients.append(raw)
    for raw in clients:
        raw.close()
    assert_baton_unharmed(proxy, canary)
