"""Every KILL a client sends is answered by Baton (issue 12): its number is a Baton connection
id, and on a backend the same number names another thread. ``KILL HARD n``, ``KILL /*c*/ n``,
``KILL SOFT QUERY n``, ``KILL CONNECTION n`` resolve among Baton's sessions; ``KILL USER``,
``KILL QUERY ID``, a KILL in a multi-statement and a prepared KILL are refused with 1235.
None of them reaches a backend: a backend thread with that number, of the same account, lives.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from proxy.protocol.framing import frame
from proxy.sandbox import ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess
from tests.support.clients import kill_a_running_sleep, pymysql_connect
from tests.support.raw_client import RawClient, parse_err


@pytest.fixture
def proc(sandbox: ReplicationSandbox, baton: Any) -> BatonProcess:
    return baton(sandbox)


@pytest.fixture
def backend_thread(sandbox: ReplicationSandbox) -> Iterator[pymysql.Connection]:
    """A connection straight to the master, as the same account the clients use."""
    conn = pymysql.connect(host="127.0.0.1", port=sandbox.master.port, user="app",
                           password="app", autocommit=True, connect_timeout=5)
    try:
        yield conn
    finally:
        conn.close()


def _alive(conn: pymysql.Connection) -> bool:
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            return cur.fetchone() == (1,)
    except pymysql.err.OperationalError:
        return False


@pytest.mark.parametrize("form", ["KILL HARD {n}", "KILL /*c*/ {n}", "KILL SOFT QUERY {n}",
                                  "KILL CONNECTION {n}", "/*!50000 KILL {n} */"])
def test_a_kill_naming_a_backend_thread_id_never_reaches_the_backend(
    proc: BatonProcess, backend_thread: pymysql.Connection, form: str
) -> None:
    n = backend_thread.thread_id()
    with pymysql_connect(proc) as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.OperationalError) as caught:
            cur.execute(form.format(n=n))
        assert caught.value.args[0] == 1094  # no Baton session has that id
    assert _alive(backend_thread)


@pytest.mark.parametrize("sql", ["KILL USER app", "KILL QUERY ID {n}", "KILL HARD CONNECTION USER app",
                                 "SELECT 1; KILL {n}", "KILL {n}+0"])
def test_kills_baton_cannot_resolve_are_refused_with_1235(
    proc: BatonProcess, backend_thread: pymysql.Connection, sql: str
) -> None:
    n = backend_thread.thread_id()
    flags = pymysql.constants.CLIENT.MULTI_STATEMENTS
    with pymysql_connect(proc, client_flag=flags) as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.MySQLError) as caught:
            cur.execute(sql.format(n=n))
        code, message = caught.value.args
        assert code == 1235 and "Baton does not support" in message
        cur.execute("SELECT 'usable'")
        assert cur.fetchone() == ("usable",)
    assert _alive(backend_thread)


def test_a_prepared_kill_is_refused(proc: BatonProcess, backend_thread: pymysql.Connection) -> None:
    client = RawClient(proc.proxy_port)
    client.login()
    client.send(frame(b"\x16" + f"KILL {backend_thread.thread_id()}".encode(), 0))
    packet = client.read_packet()
    assert packet is not None
    err = parse_err(packet[1])
    assert err is not None and err.code == 1235 and "prepared statement" in err.message
    assert client.query("SELECT 'usable'") == [b"\x06usable"]
    client.close()
    assert _alive(backend_thread)


def test_kill_hard_and_a_commented_kill_resolve_to_baton_sessions(proc: BatonProcess) -> None:
    with pymysql_connect(proc) as victim, pymysql_connect(proc) as killer:
        outcome = kill_a_running_sleep(victim, killer, f"KILL HARD QUERY /* the slow one */ {victim.thread_id()}")
        assert outcome["interrupted"] and outcome["seconds"] < 3, outcome
        with killer.cursor() as cur:
            cur.execute(f"KILL /*c*/ {victim.thread_id()}")
        with pytest.raises(pymysql.err.OperationalError), victim.cursor() as cur:
            cur.execute("SELECT 1")
