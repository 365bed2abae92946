"""Backend accounts that use MariaDB's ed25519 plugin, through Baton.

The application logs in to Baton as usual (mysql_native_password here); Baton logs in to
the master and the replicas with the account's ed25519 signature, which needs the plain
password in ``[[users]]``. With only a hash configured, the client gets a clear error.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pymysql
import pytest
from test_e2e_core import launch_baton, pymysql_connect, scratch_table

from proxy.protocol import auth, ed25519
from proxy.sandbox import ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess

USER, PASSWORD = "edapp", "ed-secret-ü"  # non-ASCII: the signature is over the UTF-8 bytes


@pytest.fixture(scope="module")
def ed25519_account(sandbox: ReplicationSandbox) -> Iterator[str]:
    """An ed25519 account on every server (plugin loaded on each; the user replicates)."""
    for inst in sandbox.instances:
        loaded = inst.sql("SELECT COUNT(*) FROM information_schema.PLUGINS WHERE PLUGIN_NAME = 'ed25519'")
        if loaded == [(0,)]:
            inst.sql("INSTALL SONAME 'auth_ed25519'")
    sandbox.master.sql(f"CREATE USER '{USER}'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('{PASSWORD}')")
    sandbox.master.sql(f"GRANT ALL ON test.* TO '{USER}'@'%'")
    sandbox.wait_caught_up()
    try:
        yield USER
    finally:
        sandbox.master.sql(f"DROP USER '{USER}'@'%'")
        sandbox.wait_caught_up()


@pytest.fixture(scope="module")
def proxy(
    sandbox: ReplicationSandbox, ed25519_account: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BatonProcess]:
    users = [
        {"name": "app", "password": "app"},
        {"name": ed25519_account, "password": PASSWORD},
    ]
    with launch_baton(sandbox, tmp_path_factory.mktemp("baton-ed25519"), users=users) as process:
        yield process


def test_the_stored_key_is_the_one_baton_derives(sandbox: ReplicationSandbox, ed25519_account: str) -> None:
    stored = sandbox.master.sql(
        f"SELECT JSON_VALUE(Priv, '$.authentication_string') FROM mysql.global_priv "
        f"WHERE User = '{ed25519_account}'"
    )[0][0]
    assert stored == base64.b64encode(ed25519.public_key(PASSWORD.encode())).decode().rstrip("=")


def test_reads_and_writes_as_an_ed25519_account(
    proxy: BatonProcess, sandbox: ReplicationSandbox, ed25519_account: str
) -> None:
    with scratch_table(sandbox, "id INT PRIMARY KEY") as table:
        conn = pymysql_connect(proxy, user=ed25519_account, password=PASSWORD.encode())  # PyMySQL would encode a str as latin-1
        try:
            with conn.cursor() as cur:
                cur.execute(f"INSERT INTO {table} VALUES (1), (2)")
                cur.execute("/* baton:master */ SELECT CURRENT_USER(), @@server_id")
                assert cur.fetchall() == ((f"{ed25519_account}@%", sandbox.master.server_id),)
                sandbox.wait_caught_up()
                seen = set()
                for _ in range(4):  # reads go round robin over both replicas
                    cur.execute(f"SELECT CURRENT_USER(), @@server_id, COUNT(*) FROM {table}")
                    user, server_id, count = cur.fetchall()[0]
                    assert (user, count) == (f"{ed25519_account}@%", 2)
                    seen.add(server_id)
                assert seen == {r.server_id for r in sandbox.replicas}
        finally:
            conn.close()
        assert sandbox.master.sql(f"SELECT COUNT(*) FROM {table}") == [(2,)]


def test_a_hash_only_user_gets_a_clear_error_for_an_ed25519_backend(
    sandbox: ReplicationSandbox, ed25519_account: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    users = [
        {"name": "app", "password": "app"},
        {"name": ed25519_account, "password_hash": auth.native_hash_text(PASSWORD.encode())},
    ]
    with launch_baton(sandbox, tmp_path_factory.mktemp("baton-ed25519-hash"), users=users) as process:
        # The login to Baton is fine; the backend login behind it (for the default schema)
        # is what cannot be done.
        with pytest.raises(pymysql.err.OperationalError) as caught:
            pymysql_connect(process, user=ed25519_account, password=PASSWORD.encode())
    code, message = caught.value.args
    assert code == 9100
    assert "client_ed25519, which needs the plain password" in message
