"""Backend TLS that verifies the server: a real MariaDB with a certificate from a CA this test
makes, a second CA Baton is not told about, and a man in the middle with its own certificate.

Proves: with ``tls_ca`` Baton logs in over verified TLS (end to end, through a client); a server
whose certificate is not signed by ``tls_ca``, or does not carry the expected name, is refused
with an error that says so, before anything about the user is sent; a client certificate is
presented when configured; a man in the middle never sees a login, and without verification it
never gets a caching_sha2 password in clear.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from certs import CertFiles, self_signed_cert, signed_cert

from proxy.app import BACKEND_CAPABILITIES_BASE
from proxy.backend import BackendError, Credentials, connect
from proxy.config import parse_config
from proxy.protocol import auth
from proxy.protocol.constants import CACHING_SHA2_PASSWORD, SUPPORTED_CAPABILITIES, Capability
from proxy.protocol.framing import PacketReader, frame
from proxy.protocol.packets import Handshake, encode_handshake
from proxy.sandbox import MariaDBInstance, ServerStartError, free_port, free_ports, toml_dumps
from proxy.sandbox.baton_process import BatonProcess, wait_for
from proxy.tls import BackendSecurity, backend_security, client_context, server_context


class TLSMariaDB(MariaDBInstance):
    """A MariaDB that offers TLS with a given certificate and checks client certificates
    against ``client_ca``."""

    server_cert: CertFiles
    client_ca: Path

    def options(self) -> list[str]:
        return [
            *super().options(),
            f"--ssl-cert={self.server_cert.cert}",
            f"--ssl-key={self.server_cert.key}",
            f"--ssl-ca={self.client_ca}",
        ]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertFiles]:
    """Two CAs, each with a server certificate for 127.0.0.1/localhost, and a client CA with
    a client certificate. Baton is only ever told about a CA, never a leaf."""
    base = tmp_path_factory.mktemp("pki")
    trusted = self_signed_cert(base / "trusted", "baton-test-ca")
    rogue = self_signed_cert(base / "rogue", "someone-elses-ca")
    client_ca = self_signed_cert(base / "client-ca", "baton-client-ca")
    return {
        "trusted": trusted,
        "server": signed_cert(base / "server", trusted),
        "rogue": rogue,
        "rogue_server": signed_cert(base / "rogue-server", rogue),
        "client_ca": client_ca,
        "client": signed_cert(base / "client", client_ca, "baton-client"),
    }


@pytest.fixture(scope="module")
def server(
    pki: dict[str, CertFiles], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TLSMariaDB]:
    inst = TLSMariaDB("tlsdb", free_port(), tmp_path_factory.mktemp("tlsdb"), server_id=1)
    inst.server_cert = pki["server"]
    inst.client_ca = pki["client_ca"].cert
    try:
        inst.start()
    except ServerStartError as exc:
        pytest.skip(f"MariaDB did not start with TLS: {exc}")
    try:
        inst.sql("CREATE USER 'x509'@'%' IDENTIFIED BY 'x509' REQUIRE X509")
        inst.sql("GRANT USAGE ON *.* TO 'x509'@'%'")
        yield inst
    finally:
        inst.stop()


def _backend(server: MariaDBInstance, **keys: Any) -> dict[str, Any]:
    return {"name": "db1", "address": server.address, "role": "master", **keys}


def _security(directory: Path, backend: dict[str, Any]) -> BackendSecurity:
    """What Baton's pools use, built from config text the way Baton reads it."""
    text = toml_dumps({"backends": [backend], "users": [{"name": "app", "password": "app"}]})
    path = directory / "backend.toml"
    path.write_text(text)
    config = parse_config(text, str(path))
    return backend_security(config.backends[0])


def _login(port: int, security: BackendSecurity, user: str = "app", password: str = "app") -> Any:
    async def run() -> Any:
        conn = await connect(
            "db1", "127.0.0.1", port, Credentials(user, password.encode(), None),
            timeout=5, security=security, capabilities=BACKEND_CAPABILITIES_BASE,
        )
        try:
            return (await conn.query("SHOW SESSION STATUS LIKE 'Ssl_version'")).rows
        finally:
            conn.close()

    return asyncio.run(run())


def _baton(server: MariaDBInstance, workdir: Path, **backend: Any) -> BatonProcess:
    proxy_port, admin_port = free_ports(2)
    text = toml_dumps({
        "proxy": {"listen": f"127.0.0.1:{proxy_port}", "server_version": "5.5.5-10.11-test"},
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "metrics": {"listen": ""},
        "monitor": {"user": "monitor", "password": "monitor"},
        "backends": [_backend(server, **backend)],
        "users": [{"name": "app", "password": "app"}],
    })
    return BatonProcess(text, workdir).start()


def test_verified_tls_through_baton(server: TLSMariaDB, pki: dict[str, CertFiles],
                                    tmp_path: Path) -> None:
    baton = _baton(server, tmp_path, tls=True, tls_ca=str(pki["trusted"].cert))
    try:
        conn = pymysql.connect(host="127.0.0.1", port=baton.proxy_port, user="app",
                               password="app", connect_timeout=10)
        with conn.cursor() as cur:
            cur.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
            ((_, version),) = cur.fetchall()
        conn.close()
        assert version.startswith("TLSv1.")
    finally:
        baton.stop()


def test_certificate_from_another_ca_is_refused_through_baton(
    server: TLSMariaDB, pki: dict[str, CertFiles], tmp_path: Path
) -> None:
    baton = _baton(server, tmp_path, tls=True, tls_ca=str(pki["rogue"].cert))
    try:
        with pytest.raises(pymysql.err.OperationalError) as caught:
            pymysql.connect(host="127.0.0.1", port=baton.proxy_port, user="app",
                            password="app", connect_timeout=10)
        code, message = caught.value.args
        assert code == 9100, message
        assert "server certificate not trusted" in message and "login not sent" in message
        # The monitor's probes fail the same way, and the operator reads why in the log.
        wait_for(lambda: "server certificate not trusted" in baton.log_text(), timeout=15,
                 what="the monitor to log the refused certificate")
    finally:
        baton.stop()


def test_verification_checks_the_name(server: TLSMariaDB, pki: dict[str, CertFiles],
                                      tmp_path: Path) -> None:
    trusted = str(pki["trusted"].cert)
    right = _security(tmp_path, _backend(server, tls=True, tls_ca=trusted,
                                         tls_server_name="localhost"))
    assert right.verified and _login(server.port, right)[0][1].startswith(b"TLSv1.")
    wrong = _security(tmp_path, _backend(server, tls=True, tls_ca=trusted,
                                         tls_server_name="db.example"))
    with pytest.raises(BackendError, match="not trusted.*db.example|not trusted.*mismatch"):
        _login(server.port, wrong)


def test_tls_verify_false_keeps_working_without_checks(
    server: TLSMariaDB, pki: dict[str, CertFiles], tmp_path: Path
) -> None:
    """An explicit opt-out (e.g. while rolling out CAs) still encrypts, and says it does not
    verify, so that caching_sha2 full authentication is refused over it."""
    lax = _security(tmp_path, _backend(server, tls=True,
                                       tls_ca=str(pki["rogue"].cert), tls_verify=False))
    assert not lax.verified
    assert _login(server.port, lax)[0][1].startswith(b"TLSv1.")


def test_client_certificate_is_presented(server: TLSMariaDB, pki: dict[str, CertFiles],
                                         tmp_path: Path) -> None:
    trusted, client = str(pki["trusted"].cert), pki["client"]
    without = _security(tmp_path, _backend(server, tls=True, tls_ca=trusted))
    with pytest.raises(BackendError, match="Access denied"):
        _login(server.port, without, "x509", "x509")
    with_cert = _security(tmp_path, _backend(server, tls=True, tls_ca=trusted,
                                             tls_cert=str(client.cert), tls_key=str(client.key)))
    assert _login(server.port, with_cert, "x509", "x509")[0][1].startswith(b"TLSv1.")


def test_no_context_allows_renegotiation(pki: dict[str, CertFiles], tmp_path: Path) -> None:
    trusted = pki["trusted"]
    contexts = [
        server_context(str(trusted.cert), str(trusted.key)),
        client_context(),
        client_context(True, str(trusted.cert), str(trusted.cert), str(trusted.key)),
    ]
    for ctx in contexts:
        assert ctx.options & ssl.OP_NO_RENEGOTIATION
        assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_a_rotated_ca_file_is_read_again(pki: dict[str, CertFiles], tmp_path: Path) -> None:
    """Same settings and files: the same object (pools compare by identity). A replaced CA
    file: a new context. A CA file that vanished: the previous context stays."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki["trusted"].cert.read_bytes())
    backend = {"name": "db1", "address": "127.0.0.1:3306", "tls": True, "tls_ca": str(ca)}
    first = _security(tmp_path, backend)
    assert _security(tmp_path, backend) is first
    ca.write_bytes(pki["trusted"].cert.read_bytes() + pki["rogue"].cert.read_bytes())
    os.utime(ca, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    rotated = _security(tmp_path, backend)
    assert rotated is not first and rotated.tls is not None
    assert len(rotated.tls.get_ca_certs()) == 2
    text = toml_dumps({"backends": [backend], "users": [{"name": "app", "password": "app"}]})
    config = parse_config(text, str(tmp_path / "backend.toml"))
    ca.unlink()
    assert backend_security(config.backends[0]) is rotated


# --- a man in the middle --------------------------------------------------------------------


class ManInTheMiddle:
    """Answers like a MySQL server with caching_sha2_password, offering TLS with its own
    certificate when given one, and asks for full authentication; sends its own RSA key to
    whoever asks. Records every byte it could read, and every password it could decrypt: what
    an attacker on the Baton-to-database path would collect."""

    NONCE = b"0123456789abcdefghij"

    def __init__(self, cert: CertFiles | None) -> None:
        self.ctx: ssl.SSLContext | None = None
        if cert is not None:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(cert.cert, cert.key)
        self.key = auth.generate_rsa_key()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.read = bytearray()
        self.stolen: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        conn.settimeout(5)
        caps = SUPPORTED_CAPABILITIES | Capability.SSL if self.ctx else SUPPORTED_CAPABILITIES
        greeting = Handshake(
            server_version="8.0.36", connection_id=7, auth_data=self.NONCE,
            capabilities=int(caps), charset=45, status=2, auth_plugin=CACHING_SHA2_PASSWORD,
        )
        try:
            conn.sendall(frame(encode_handshake(greeting), 0))
            io: socket.socket = conn
            if self.ctx is not None:
                conn.recv(36)  # SSLRequest
                io = self.ctx.wrap_socket(conn, server_side=True)
            self._converse(io)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()
            self.sock.close()

    def _converse(self, io: socket.socket) -> None:
        reader = PacketReader()
        first = True
        while data := io.recv(65536):
            self.read += data
            reader.feed(data)
            while (packet := reader.next_packet()) is not None:
                seq, payload = packet
                if first:  # the HandshakeResponse: "full authentication, please"
                    io.sendall(frame(b"\x01\x04", seq + 1))
                    first = False
                elif payload == b"\x02":  # "your public key?": the attacker's
                    io.sendall(frame(b"\x01" + auth.public_key_pem(self.key), seq + 1))
                else:  # the password, in whatever form: keep what can be read, hang up
                    try:
                        self.stolen.append(auth.rsa_decrypt_password(self.key, payload, self.NONCE))
                    except ValueError:
                        pass
                    return


@pytest.mark.parametrize("verify", [True, False])
def test_man_in_the_middle_never_gets_the_password(
    pki: dict[str, CertFiles], tmp_path: Path, verify: bool
) -> None:
    mitm = ManInTheMiddle(pki["rogue_server"])
    backend = {"name": "db1", "address": f"127.0.0.1:{mitm.port}", "tls": True,
               "tls_ca": str(pki["trusted"].cert), "tls_verify": verify}
    security = _security(tmp_path, backend)
    secret = "correct horse battery staple"
    with pytest.raises(BackendError) as caught:
        _login(mitm.port, security, "app", secret)
    mitm.thread.join(5)
    assert secret.encode() not in bytes(mitm.read) and mitm.stolen == []
    if verify:
        assert "server certificate not trusted" in caught.value.reason
        assert mitm.read == b""  # not even the user name
    else:
        assert "does not verify the server" in caught.value.reason


@pytest.mark.parametrize("policy", ["refuse", "pinned", "get_server_public_key"])
def test_sha2_full_auth_without_tls_encrypts_only_to_the_pinned_key(
    tmp_path: Path, policy: str
) -> None:
    """Without TLS, a man in the middle asks for full authentication and offers its own key.
    By default Baton refuses (nothing about the password is sent); with a pinned key the
    password goes out encrypted to that key, which the attacker cannot read; only the
    get_server_public_key opt-out hands it the password, which is why it is off."""
    mitm = ManInTheMiddle(None)
    pinned = tmp_path / "server.pem"
    pinned.write_bytes(auth.public_key_pem(auth.generate_rsa_key()))  # the real server's key
    backend: dict[str, Any] = {"name": "db1", "address": f"127.0.0.1:{mitm.port}"}
    if policy == "pinned":
        backend["server_public_key"] = str(pinned)
    if policy == "get_server_public_key":
        backend["get_server_public_key"] = True
    secret = "correct horse battery staple"
    with pytest.raises(BackendError) as caught:
        _login(mitm.port, _security(tmp_path, backend), "app", secret)
    mitm.thread.join(5)
    assert secret.encode() not in bytes(mitm.read)
    if policy == "refuse":
        assert "without TLS; refused" in caught.value.reason
        assert mitm.stolen == []
    elif policy == "pinned":
        assert mitm.stolen == [] and len(mitm.read) > 256  # an RSA-2048 blob went out
    else:
        assert mitm.stolen == [secret.encode()]
