"""Security-related config keys: backend TLS verification and RSA key pinning, admin
credentials off loopback, and reprs that never show a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, parse_config
from proxy.protocol import auth
from tests.support.certs import self_signed_cert

USER = '[[users]]\nname = "app"\npassword = "app"\n'


def backend(**keys: object) -> str:
    extra = "".join(
        f"{k} = {str(v).lower() if isinstance(v, bool) else repr(str(v))}\n" for k, v in keys.items()
    )
    return '[[backends]]\nname = "db1"\naddress = "127.0.0.1:3306"\n' + extra


def errors_of(text: str, source: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source)
    return caught.value.errors


def test_tls_verify_defaults_on_when_a_ca_is_given(tmp_path: Path) -> None:
    certs = self_signed_cert(tmp_path)
    source = str(tmp_path / "config.toml")
    with_ca = parse_config(backend(tls=True, tls_ca="cert.pem") + USER, source).backends[0]
    assert with_ca.tls_verify and with_ca.tls_ca == str(certs.cert)  # relative to the file
    opted_out = backend(tls=True, tls_ca="cert.pem", tls_verify=False) + USER
    assert not parse_config(opted_out, source).backends[0].tls_verify
    assert not parse_config(backend(tls=True) + USER, source).backends[0].tls_verify


def test_backend_tls_keys_are_checked(tmp_path: Path) -> None:
    self_signed_cert(tmp_path)
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    source = str(tmp_path / "config.toml")
    errors = errors_of(backend(tls_ca="cert.pem") + USER, source)
    assert errors == [f"{source}: backends[0].tls_ca: tls_ca is set but tls is false; "
                      "set tls = true to use it",
                      f"{source}: backends[0].tls_verify: tls_verify is set but tls is false; "
                      "set tls = true to use it"]
    [missing] = errors_of(backend(tls=True, tls_ca="nope.pem") + USER, source)
    assert missing.startswith(f"{source}: backends[0].tls_ca: cannot read ")
    [junk] = errors_of(backend(tls=True, tls_ca="junk.pem") + USER, source)
    assert junk.startswith(f"{source}: backends[0].tls_ca: cannot load CA certificates")


def test_server_public_key_must_be_an_rsa_public_key(tmp_path: Path) -> None:
    certs = self_signed_cert(tmp_path)
    source = str(tmp_path / "config.toml")
    (tmp_path / "rsa.pem").write_bytes(auth.public_key_pem(auth.generate_rsa_key()))
    config = parse_config(backend(server_public_key="rsa.pem") + USER, source)
    assert config.backends[0].server_public_key == str(tmp_path / "rsa.pem")
    assert not config.backends[0].get_server_public_key
    [error] = errors_of(backend(server_public_key=str(certs.key)) + USER, source)
    assert error.startswith(f"{source}: backends[0].server_public_key: ")
    assert "not a PEM public key" in error


ADMIN_PUBLIC = '[admin]\nlisten = "{listen}"\n'


@pytest.mark.parametrize("listen", ["0.0.0.0:6032", "[::]:6032", "192.0.2.10:6032",
                                    "admin.example:6032"])
@pytest.mark.parametrize("password", ["admin", ""])
def test_admin_off_loopback_refuses_default_or_empty_password(listen: str, password: str) -> None:
    text = ADMIN_PUBLIC.format(listen=listen)
    text += f'password = "{password}"\n' if password != "admin" else ""  # "admin" is the default
    [error] = errors_of(text + backend() + USER, "/etc/baton/baton.toml")
    assert error.startswith("/etc/baton/baton.toml: admin.password: ")
    assert repr(listen) in error and "not a loopback address" in error
    assert ("an empty password" if not password else "the default password 'admin'") in error


@pytest.mark.parametrize("listen", ["127.0.0.1:6032", "127.8.9.1:6032", "[::1]:6032",
                                    "localhost:6032", ""])
def test_admin_on_loopback_or_off_may_keep_the_default(listen: str) -> None:
    config = parse_config(ADMIN_PUBLIC.format(listen=listen) + backend() + USER)
    assert config.admin.password == "admin"


def test_admin_off_loopback_with_a_real_password_is_fine() -> None:
    text = ADMIN_PUBLIC.format(listen="0.0.0.0:6032") + 'password = "s3cret-Admin"\n'
    assert parse_config(text + backend() + USER).admin.host == "0.0.0.0"


def test_reprs_of_credential_holders_never_show_secrets() -> None:
    from proxy.backend import Credentials
    from proxy.protocol.handshake import Account, Authenticated, ClientHandshake, ServerHandshake

    text = (
        '[admin]\npassword = "adm-SECRET1"\n[monitor]\npassword = "mon-SECRET2"\n'
        '[failover]\nreplication_user = "repl"\nreplication_password = "rep-SECRET3"\n'
        '[redis]\nurl = "redis://:red-SECRET4@127.0.0.1:6379/0"\n'
        + backend() + '[[users]]\nname = "app"\npassword = "app-SECRET5"\n'
        '[[users]]\nname = "h"\npassword_hash = "*5BCB3E6AC345B435C7C2E6B7949A04CE6F6563D3"\n'
    )
    config = parse_config(text)
    secret = b"pw-SECRET6"
    stage1 = auth.native_stage1(secret)
    objects: list[object] = [
        config, config.admin, config.monitor, config.failover, config.redis, *config.users,
        Credentials("app", secret, stage1),
        Account("app", auth.native_stage2(secret), secret),
        Authenticated("app", None, 0, 45, 0, {}, stage1, secret, 2),
        ClientHandshake("app", secret, stage1),
        ServerHandshake("v", 1, lambda n: None, sha2_cache={"app": (b"s2", stage1)}),
    ]
    shown = "".join(repr(o) for o in objects)
    for n in range(1, 7):
        assert f"SECRET{n}" not in shown, n
    for hidden in (stage1, auth.native_stage2(secret), secret):
        assert repr(hidden)[2:-1] not in shown and hidden.hex() not in shown
    assert "5BCB3E6AC345B435C7C2E6B7949A04CE6F6563D3" not in shown


def test_require_tls_needs_client_tls(tmp_path: Path) -> None:
    self_signed_cert(tmp_path)
    source = str(tmp_path / "config.toml")
    text = '[proxy]\nrequire_tls = true\n' + backend() + USER + "require_tls = true\n"
    assert errors_of(text, source) == [
        f"{source}: proxy.require_tls: client TLS is not configured: set [proxy] tls_cert and "
        "tls_key, or require_tls = false",
        f"{source}: users[0].require_tls: client TLS is not configured: set [proxy] tls_cert and "
        "tls_key, or require_tls = false",
    ]
    tls = '[proxy]\ntls_cert = "cert.pem"\ntls_key = "key.pem"\nrequire_tls = true\n'
    config = parse_config(tls + backend() + USER + "require_tls = true\n", source)
    assert config.proxy.require_tls and config.users[0].require_tls
