"""Security-related config keys: backend TLS verification and RSA key pinning, admin
credentials off loopback, and reprs that never show a secret."""

from __future__ import annotations

from pathlib import Path

import pytest
from certs import self_signed_cert

from proxy.config import ConfigError, parse_config
from proxy.protocol import auth

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
