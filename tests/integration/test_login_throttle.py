"""Limits on strangers at the admin port's login prompt. Failed-login throttling per client
address: the pure sliding window with a fake clock, then a real Baton, where a sixth try from
an address that failed five times is refused with 1129 before any password check (the right
password included), while another loopback address still logs in. Before login, packets are
capped at 16 KiB (1153), and silent sockets are capped per address (1040) so that they cannot
lock the operator out."""

from __future__ import annotations

import socket
from typing import Any

import pymysql
import pytest

from proxy.protocol.framing import PacketReader, frame
from proxy.sandbox import ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess, admin_rows
from proxy.throttle import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_refused_after_max_failures_until_the_oldest_leaves_the_window() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=3, window_s=60, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("10.0.0.1") == 0
        throttle.failed("10.0.0.1")
        clock.now += 10
    assert throttle.retry_after("10.0.0.1") == pytest.approx(30)
    assert throttle.retry_after("10.0.0.2") == 0  # per address
    clock.now += 30
    assert throttle.retry_after("10.0.0.1") == 0  # the first failure is a minute old


def test_a_success_clears_the_record() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=2, window_s=60, clock=clock)
    throttle.failed("a")
    throttle.succeeded("a")
    throttle.failed("a")
    assert throttle.retry_after("a") == 0


def test_zero_failures_turns_throttling_off() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=2, window_s=60, clock=clock)
    throttle.failed("a")
    throttle.failed("a")
    assert throttle.retry_after("a") > 0
    throttle.configure(0, 60)  # a reload
    throttle.failed("a")
    assert throttle.retry_after("a") == 0 and not throttle._failures


def test_memory_is_bounded() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=2, window_s=60, clock=clock, max_addresses=100)
    for i in range(1000):
        throttle.failed(f"2001:db8::{i:x}")
    assert len(throttle._failures) <= 100
    throttle.failed("2001:db8::3e7")
    assert throttle.retry_after("2001:db8::3e7") > 0  # the latest are kept


@pytest.fixture
def proc(sandbox: ReplicationSandbox, baton: Any) -> BatonProcess:
    return baton(sandbox)


def _admin(proc: BatonProcess, password: str, source: str = "127.0.0.1") -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=proc.admin_port, user="admin",
                           password=password, bind_address=source, connect_timeout=5)


def test_admin_port_throttles_an_address_after_five_failures(proc: BatonProcess) -> None:
    for _ in range(5):
        with pytest.raises(pymysql.err.OperationalError) as caught:
            _admin(proc, "wrong")
        assert caught.value.args[0] == 1045
    with pytest.raises(pymysql.err.OperationalError) as caught:
        _admin(proc, "admin")  # even the right password: no guessing goes on
    code, message = caught.value.args
    assert code == 1129 and "after 5 failed logins; retry in" in message
    assert "admin_login_throttled" in proc.log_text()
    conn = _admin(proc, "admin", source="127.0.0.2")  # another address is not affected
    conn.close()
    assert admin_rows(proc, "SHOW VERSION", bind_address="127.0.0.3")


def _stranger(proc: BatonProcess, source: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proc.admin_port), timeout=5,
                                    source_address=(source, 0))


def _last_error(sock: socket.socket) -> int | None:
    """The code of the ERR packet Baton sends before closing (None if it sends none)."""
    reader = PacketReader()
    code = None
    while data := sock.recv(65536):
        reader.feed(data)
        while (packet := reader.next_packet()) is not None:
            if packet[1][:1] == b"\xff":
                code = int.from_bytes(packet[1][1:3], "little")
    return code


def test_admin_port_caps_silent_sockets_per_address(proc: BatonProcess) -> None:
    silent = [_stranger(proc, "127.0.0.9") for _ in range(8)]
    try:
        for sock in silent:
            assert sock.recv(65536)  # each got its greeting, and says nothing
        with _stranger(proc, "127.0.0.9") as ninth:
            assert _last_error(ninth) == 1040
        conn = _admin(proc, "admin")  # the operator, from elsewhere, is not locked out
        conn.close()
    finally:
        for sock in silent:
            sock.close()


def test_admin_port_caps_packets_before_login(proc: BatonProcess) -> None:
    with _stranger(proc, "127.0.0.10") as sock:
        sock.recv(65536)
        sock.sendall(frame(b"\x8d\xa6" + b"x" * (20 << 10), 1))
        assert _last_error(sock) == 1153
    big = admin_rows(proc, "SELECT '" + "x" * (100 << 10) + "' AS v")  # after login: 1 MiB
    assert len(big[0]["v"]) == 100 << 10
