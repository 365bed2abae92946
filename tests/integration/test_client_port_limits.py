"""Strangers on the client port (issue 12): before login a client may send packets of at most
16 KiB (1153), has ``handshake_timeout_ms`` to log in, and only so many connections may wait at
the login prompt, in all and per address (1040). Those connections do not count toward
``max_client_connections``, so silent sockets cannot lock real clients out. An address with
too many failed logins (a failed CHANGE_USER included) is refused before its greeting (1129).
A user with ``require_tls`` gets 1045 without TLS, exactly as for a wrong password, and the
attempt counts; ``[proxy] require_tls`` refuses every plain login with MySQL's 3159."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import mysql.connector
import pymysql
import pytest

from proxy.protocol.framing import frame
from proxy.sandbox import ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess, admin_rows
from tests.support.certs import CertFiles, self_signed_cert
from tests.support.clients import connector_connect, pymysql_connect
from tests.support.raw_client import RawClient


def _stranger(proc: BatonProcess, source: str = "127.0.0.1") -> socket.socket:
    """A connection that reads its greeting and then says nothing."""
    sock = socket.create_connection(("127.0.0.1", proc.proxy_port), timeout=5, source_address=(source, 0))
    assert sock.recv(65536)
    return sock


@contextmanager
def _strangers(proc: BatonProcess, n: int, source: str) -> Iterator[list[socket.socket]]:
    socks = [_stranger(proc, source) for _ in range(n)]
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def _refused_with(proc: BatonProcess, source: str) -> int:
    return RawClient(proc.proxy_port, source=source).error_then_close().code


@pytest.fixture
def proc(sandbox: ReplicationSandbox, baton: Any) -> BatonProcess:
    return baton(
        sandbox,
        proxy={
            "max_client_connections": 3,
            "max_unauthenticated_connections": 6,
            "max_unauthenticated_per_address": 4,
            "handshake_timeout_ms": 1500,
        },
    )


def test_a_large_packet_before_login_is_refused_with_1153(proc: BatonProcess) -> None:
    client = RawClient(proc.proxy_port)
    assert client.read_packet() is not None  # the greeting
    client.send(frame(b"\x00" * (20 << 10), 1))  # 20 KiB "handshake response"
    err = client.error_then_close()
    assert (err.code, err.sqlstate) == (1153, "08S01")


def test_silent_sockets_do_not_lock_real_clients_out(proc: BatonProcess) -> None:
    with _strangers(proc, 4, "127.0.0.21"):  # more than max_client_connections
        conns = [pymysql_connect(proc) for _ in range(3)]  # ... and real clients still log in
        try:
            with pytest.raises(pymysql.err.OperationalError) as caught:
                pymysql_connect(proc)  # the fourth logged-in session is one too many
            assert caught.value.args[0] == 1040
        finally:
            for conn in conns:
                conn.close()


def test_strangers_are_capped_per_address_and_in_all(proc: BatonProcess) -> None:
    with _strangers(proc, 4, "127.0.0.22"):
        assert _refused_with(proc, "127.0.0.22") == 1040  # per address
        with _strangers(proc, 2, "127.0.0.23"):
            assert _refused_with(proc, "127.0.0.24") == 1040  # in all
        with pymysql_connect(proc, bind_address="127.0.0.25") as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")  # a slot freed: a client from elsewhere logs in


def test_the_handshake_timeout_closes_a_silent_socket(proc: BatonProcess) -> None:
    sock = _stranger(proc, "127.0.0.26")
    started = time.monotonic()
    sock.settimeout(10)
    try:
        assert sock.recv(65536) == b""  # closed by Baton
    finally:
        sock.close()
    assert 1.0 < time.monotonic() - started < 5.0


def test_the_client_port_throttles_an_address_after_failed_logins(
    sandbox: ReplicationSandbox, baton: Any
) -> None:
    proc = baton(sandbox, proxy={"max_login_failures": 3, "login_failure_window_s": 60})
    for _ in range(3):
        with pytest.raises(pymysql.err.OperationalError) as caught:
            pymysql_connect(proc, password="wrong", bind_address="127.0.0.31")
        assert caught.value.args[0] == 1045
    with pytest.raises(pymysql.err.OperationalError) as caught:
        pymysql_connect(proc, bind_address="127.0.0.31")  # the right password: no more guessing
    code, message = caught.value.args
    assert code == 1129 and "after 3 failed logins; retry in" in message
    assert "client_login_throttled" in proc.log_text()
    with pymysql_connect(proc, bind_address="127.0.0.32") as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")  # another address is not affected


def test_a_failed_change_user_counts_as_a_failed_login(
    sandbox: ReplicationSandbox, baton: Any
) -> None:
    proc = baton(sandbox, proxy={"max_login_failures": 2})
    conn = connector_connect(proc)  # from 127.0.0.1
    with pytest.raises(mysql.connector.Error) as caught:
        conn.cmd_change_user(username="app", password="wrong", database="test")
    assert caught.value.errno == 1045
    conn.close()
    with pytest.raises(pymysql.err.OperationalError) as caught_login:
        pymysql_connect(proc, password="wrong")
    assert caught_login.value.args[0] == 1045
    with pytest.raises(pymysql.err.OperationalError) as caught:
        pymysql_connect(proc)
    assert caught.value.args[0] == 1129


# --- require_tls -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return self_signed_cert(tmp_path_factory.mktemp("certs"))


def _ssl(certs: CertFiles) -> dict[str, Any]:
    return {"ssl_ca": str(certs.cert), "ssl_verify_cert": True}


def test_a_user_that_requires_tls_is_refused_without_it_and_the_attempt_counts(
    sandbox: ReplicationSandbox, baton: Any, certs: CertFiles
) -> None:
    proc = baton(
        sandbox,
        proxy={"tls_cert": str(certs.cert), "tls_key": str(certs.key), "max_login_failures": 2},
        users=[{"name": "app", "password": "app", "require_tls": True},
               {"name": "monitor", "password": "monitor"}],
    )
    with pymysql_connect(proc, user="monitor", password="monitor", ssl_disabled=True) as conn:
        conn.ping()  # other users may still log in without TLS
    with pymysql_connect(proc, **_ssl(certs)) as conn, conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")  # over TLS: in
        assert cur.fetchone() == ("app@%",)
    for _ in range(2):
        with pytest.raises(pymysql.err.OperationalError) as caught:
            pymysql_connect(proc, ssl_disabled=True)  # the right password, but no TLS
        code, message = caught.value.args
        assert code == 1045 and "Access denied for user 'app'" in message
    stats = {r["variable"]: r["value"] for r in admin_rows(proc, "SHOW STATS")}
    assert int(stats["auth_failures"]) == 2
    with pytest.raises(pymysql.err.OperationalError) as caught:
        pymysql_connect(proc, **_ssl(certs))  # counted as failed logins: throttled now
    assert caught.value.args[0] == 1129


def test_require_tls_for_every_client(sandbox: ReplicationSandbox, baton: Any, certs: CertFiles) -> None:
    proc = baton(sandbox, proxy={"tls_cert": str(certs.cert), "tls_key": str(certs.key), "require_tls": True})
    with pytest.raises(pymysql.err.OperationalError) as caught:
        pymysql_connect(proc, ssl_disabled=True)
    code, message = caught.value.args
    assert code == 3159 and "insecure transport" in message
    with pymysql_connect(proc, **_ssl(certs)) as conn:
        conn.ping()
