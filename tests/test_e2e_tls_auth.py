"""Client TLS and logins through Baton: encrypted sessions, caching_sha2_password's full
authentication (over TLS, and over RSA without TLS), refused logins, and a master that is down.

Full authentication only happens when Baton cannot take the fast path, that is when it does not
know the user's plain password: those tests configure the user with ``password_hash`` (what
``SELECT PASSWORD('app')`` prints; the backend account app/app exists) and use a Baton of their
own, since a successful full authentication is cached and turns the next login into a fast one.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import mysql.connector
import pymysql
import pytest
from certs import CertFiles, self_signed_cert
from pymysql.cursors import SSCursor
from test_e2e_core import (
    AUTH_PLUGINS,
    MiB,
    RssSampler,
    connector_connect,
    launch_baton,
    pymysql_connect,
)

from proxy.sandbox import ReplicationSandbox, free_port
from proxy.sandbox.baton_process import BatonProcess

StartBaton = Callable[..., BatonProcess]
BACKEND_UNREACHABLE = 9100  # proxy/errors.py
NO_MASTER = 9101


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return self_signed_cert(tmp_path_factory.mktemp("certs"))


def _tls(certs: CertFiles) -> dict[str, Any]:
    return {"tls_cert": str(certs.cert), "tls_key": str(certs.key)}


@pytest.fixture(scope="module", params=AUTH_PLUGINS)
def tls_proxy(
    request: pytest.FixtureRequest,
    sandbox: ReplicationSandbox,
    certs: CertFiles,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BatonProcess]:
    with launch_baton(
        sandbox,
        tmp_path_factory.mktemp("baton-tls"),
        proxy={"auth_plugin": request.param, **_tls(certs)},
    ) as process:
        yield process


@pytest.fixture(scope="module")
def app_password_hash(sandbox: ReplicationSandbox) -> str:
    ((text,),) = sandbox.master.sql("SELECT PASSWORD('app')")
    return str(text)


@pytest.fixture
def hash_only_proxy(
    baton: StartBaton, sandbox: ReplicationSandbox, certs: CertFiles, app_password_hash: str
) -> BatonProcess:
    """A fresh caching_sha2 Baton that knows app's password only as a hash: the first login
    of app must use full authentication."""
    return baton(
        sandbox,
        admin={"listen": ""},
        proxy={"auth_plugin": "caching_sha2_password", **_tls(certs)},
        users=[{"name": "app", "password_hash": app_password_hash}],
    )


def _verified_ssl(certs: CertFiles) -> dict[str, Any]:
    """PyMySQL options for TLS that verifies Baton's certificate and its 127.0.0.1 name."""
    return {"ssl_ca": str(certs.cert), "ssl_verify_cert": True, "ssl_verify_identity": True}


def _whoami(conn: pymysql.Connection) -> tuple[Any, ...]:
    with conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER(), DATABASE()")
        return cur.fetchone()


# --- TLS -------------------------------------------------------------------------------------


def test_pymysql_session_is_encrypted(tls_proxy: BatonProcess, certs: CertFiles) -> None:
    blob = bytes(range(256)) * (4 * MiB // 256)  # several TLS records each way
    with pymysql_connect(tls_proxy, max_allowed_packet=64 * MiB, **_verified_ssl(certs)) as conn:
        assert isinstance(conn._sock, ssl.SSLSocket)
        assert conn._sock.version() in ("TLSv1.2", "TLSv1.3")
        assert _whoami(conn) == ("app@%", "test")
        with conn.cursor() as cur:
            cur.execute("SELECT %s, LENGTH(%s)", (blob, blob))
            assert cur.fetchone() == (blob, len(blob))


@pytest.mark.slow
@pytest.mark.parametrize("tls_proxy", [AUTH_PLUGINS[0]], indirect=True)
def test_million_row_stream_over_tls_keeps_baton_memory_bounded(
    tls_proxy: BatonProcess, certs: CertFiles
) -> None:
    limit = 100 * MiB
    with (
        RssSampler(tls_proxy.pid) as rss,
        pymysql_connect(tls_proxy, **_verified_ssl(certs)) as conn,
    ):
        assert isinstance(conn._sock, ssl.SSLSocket)
        with conn.cursor(SSCursor) as cur:
            cur.execute("SELECT seq, REPEAT('x', 100) FROM seq_1_to_1000000")
            assert cur.fetchone() == (1, "x" * 100)
            time.sleep(2)  # a slow reader
            count = 1
            while rows := cur.fetchmany(20_000):
                count += len(rows)
        assert count == 1_000_000
    assert rss.peak < limit, f"Baton RSS peaked at {rss.peak / MiB:.0f} MiB"


def test_connector_session_is_encrypted(tls_proxy: BatonProcess, certs: CertFiles) -> None:
    conn = connector_connect(tls_proxy, ssl_ca=str(certs.cert), ssl_verify_cert=True)
    try:
        assert conn.is_secure
        cur = conn.cursor()
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchall() == [("app@%",)]
    finally:
        conn.close()


def test_mariadb_cli_session_is_encrypted(tls_proxy: BatonProcess, certs: CertFiles) -> None:
    result = subprocess.run(
        [
            "mariadb",
            "-h127.0.0.1",
            f"-P{tls_proxy.proxy_port}",
            "-uapp",
            "-papp",
            "--ssl",
            f"--ssl-ca={certs.cert}",
            "--ssl-verify-server-cert",
            "-e",
            "status",
            "test",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    ssl_line = next(line for line in result.stdout.splitlines() if line.startswith("SSL:"))
    assert "Cipher in use is" in ssl_line, result.stdout


def test_plaintext_client_still_served_when_tls_is_offered(tls_proxy: BatonProcess) -> None:
    with pymysql_connect(tls_proxy, ssl_disabled=True) as conn:
        assert not isinstance(conn._sock, ssl.SSLSocket)
        assert _whoami(conn) == ("app@%", "test")


# --- caching_sha2_password full authentication -----------------------------------------------


def test_sha2_full_auth_over_tls_pymysql(hash_only_proxy: BatonProcess, certs: CertFiles) -> None:
    with pymysql_connect(hash_only_proxy, **_verified_ssl(certs)) as conn:
        assert isinstance(conn._sock, ssl.SSLSocket)
        assert _whoami(conn) == ("app@%", "test")  # Baton logged into the backend as app
    with pymysql_connect(hash_only_proxy, **_verified_ssl(certs)) as conn:  # now the fast path
        assert _whoami(conn) == ("app@%", "test")


def test_sha2_full_auth_over_tls_connector(hash_only_proxy: BatonProcess, certs: CertFiles) -> None:
    conn = connector_connect(hash_only_proxy, ssl_ca=str(certs.cert), ssl_verify_cert=True)
    try:
        assert conn.is_secure
        cur = conn.cursor()
        cur.execute("SELECT CURRENT_USER(), DATABASE()")
        assert cur.fetchall() == [("app@%", "test")]
    finally:
        conn.close()


def test_sha2_full_auth_over_rsa_without_tls(hash_only_proxy: BatonProcess) -> None:
    with pymysql_connect(hash_only_proxy, ssl_disabled=True) as conn:
        assert not isinstance(conn._sock, ssl.SSLSocket)
        # PyMySQL asked Baton for its RSA key and sent the password encrypted with it.
        assert conn.server_public_key.startswith(b"-----BEGIN PUBLIC KEY-----")
        assert _whoami(conn) == ("app@%", "test")


def test_sha2_full_auth_with_a_wrong_password_over_rsa(hash_only_proxy: BatonProcess) -> None:
    with pytest.raises(pymysql.err.OperationalError) as err:
        pymysql_connect(hash_only_proxy, password="wrong", ssl_disabled=True)
    assert err.value.args[0] == 1045


def test_sha2_full_auth_refuses_a_cleartext_password_without_tls(
    hash_only_proxy: BatonProcess,
) -> None:
    # mysql-connector answers "full authentication" with the plain password even on an
    # unencrypted link; Baton must not accept a password sent in the clear.
    with pytest.raises(mysql.connector.Error) as err:
        connector_connect(hash_only_proxy, ssl_disabled=True)
    assert (err.value.errno, err.value.sqlstate) == (1045, "28000")


# --- refused logins --------------------------------------------------------------------------


@pytest.fixture(scope="module", params=AUTH_PLUGINS)
def plain_proxy(
    request: pytest.FixtureRequest,
    sandbox: ReplicationSandbox,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BatonProcess]:
    with launch_baton(
        sandbox, tmp_path_factory.mktemp("baton-auth"), proxy={"auth_plugin": request.param}
    ) as process:
        yield process


@pytest.mark.parametrize(("user", "password"), [("app", "wrong"), ("app", ""), ("nobody", "app")])
def test_refused_login_is_1045_with_sqlstate_28000(
    plain_proxy: BatonProcess, user: str, password: str
) -> None:
    with pytest.raises(mysql.connector.Error) as err:
        connector_connect(plain_proxy, user=user, password=password)
    assert (err.value.errno, err.value.sqlstate) == (1045, "28000")
    assert f"'{user}'" in err.value.msg
    with pytest.raises(pymysql.err.OperationalError) as err2:
        pymysql_connect(plain_proxy, user=user, password=password)
    assert err2.value.args[0] == 1045
    with pymysql_connect(plain_proxy) as conn:  # Baton still serves the right password
        assert _whoami(conn) == ("app@%", "test")


@pytest.mark.parametrize("client_plugin", AUTH_PLUGINS)
def test_login_whichever_plugin_the_client_starts_with(
    plain_proxy: BatonProcess, client_plugin: str
) -> None:
    """A client answering the greeting with the other plugin is switched (AuthSwitchRequest)."""
    conn = connector_connect(plain_proxy, auth_plugin=client_plugin)
    try:
        cur = conn.cursor()
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchall() == [("app@%",)]
    finally:
        conn.close()
    with pytest.raises(mysql.connector.Error) as err:
        connector_connect(plain_proxy, auth_plugin=client_plugin, password="wrong")
    assert err.value.errno == 1045


# --- a master that is down -------------------------------------------------------------------


class SilentServer:
    """A TCP port that accepts connections (the kernel does, from the backlog) and never says
    a word: a hung server. Baton must give up after connect_timeout_ms."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


def _closed_port_address() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there


def _down_master(
    baton: StartBaton, sandbox: ReplicationSandbox, address: str, **failover: Any
) -> BatonProcess:
    """Baton whose only backend, the master, is down from the start."""
    proxy = baton(
        sandbox,
        admin={"listen": ""},
        proxy={"connect_timeout_ms": int(CONNECT_TIMEOUT * 1000)},
        monitor={"interval_ms": 100, "timeout_ms": 200, "failure_threshold": 2},
        failover=failover,
        backends=[{"name": "down", "address": address, "role": "master"}],
    )
    time.sleep(1.5)  # Baton's monitor has noticed by now, as it would have in production
    return proxy


def _connect_and_query(proxy: BatonProcess, database: str | None, wait: float) -> tuple[Any, float]:
    """Connect (naming a schema, which Baton checks on the master, or not, so the client's
    first statement is what fails) and query; the error and how long it took."""
    started = time.monotonic()
    with pytest.raises(pymysql.err.OperationalError) as err:
        with pymysql_connect(proxy, database=database, read_timeout=wait) as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
    return err.value, time.monotonic() - started


CONNECT_TIMEOUT = 1.0


@pytest.mark.parametrize("kind", ["closed_port", "silent_server"])
def test_down_master_gives_error_9100_within_connect_timeout(
    baton: StartBaton, sandbox: ReplicationSandbox, silent_server: SilentServer, kind: str
) -> None:
    address = _closed_port_address() if kind == "closed_port" else silent_server.address
    proxy = _down_master(baton, sandbox, address)
    bound = CONNECT_TIMEOUT + 1
    for database in ("test", None):
        err, elapsed = _connect_and_query(proxy, database, wait=bound + 1)
        assert (err.args[0], err.sqlstate) == (BACKEND_UNREACHABLE, "08S01"), err
        assert "down" in err.args[1]
        assert elapsed < bound


@pytest.mark.parametrize("kind", ["closed_port", "silent_server"])
def test_down_master_gives_a_documented_error_within_the_failover_window(
    baton: StartBaton, sandbox: ReplicationSandbox, silent_server: SilentServer, kind: str
) -> None:
    address = _closed_port_address() if kind == "closed_port" else silent_server.address
    window = 0.3
    proxy = _down_master(baton, sandbox, address, buffer_window_ms=int(window * 1000))
    bound = CONNECT_TIMEOUT + window + 1
    for database in ("test", None):
        err, elapsed = _connect_and_query(proxy, database, wait=bound + 5)
        assert err.args[0] in (BACKEND_UNREACHABLE, NO_MASTER), err
        assert err.args[1].startswith("Baton: ")
        assert elapsed < bound
