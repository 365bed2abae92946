"""Per-session memory caps (issue 12, item 4), each with the error a MySQL server gives:

- long data (COM_STMT_SEND_LONG_DATA) held for an execute: at most max_allowed_packet per
  session; past it the data is dropped and the execute fails with 1105 (MariaDB's text);
- pipelined commands queued behind a running one: past max_queued_bytes the client's socket is
  not read (TCP pushes back, as with a server), and every command is still answered in order;
- prepared statements open per session: max_prepared_statements, then 1461 (42000);
- LOCAL INFILE uploads stream to the server at its pace (not buffered whole).

Baton's RSS is measured from /proc while a client pushes 200 MiB of long data or 12 x 8 MiB
of queued queries; it must stay under 150 MiB.
"""

from __future__ import annotations

import struct
import threading
from pathlib import Path
from typing import Any

import pytest

from proxy.protocol.framing import frame
from proxy.sandbox import ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess
from tests.support.clients import MiB, RssSampler, connector_connect, scratch_table
from tests.support.raw_client import Err, RawClient, canary_running, parse_err

LIMIT = 150 * MiB


@pytest.fixture
def proc(sandbox: ReplicationSandbox, baton: Any) -> BatonProcess:
    return baton(sandbox, proxy={"max_prepared_statements": 3})


def _prepare(client: RawClient, sql: str) -> int | Err:
    """COM_STMT_PREPARE; Baton's statement id, or the ERR."""
    client.send(frame(b"\x16" + sql.encode(), 0))
    first = client._must_read()
    if (err := parse_err(first)) is not None:
        return err
    stmt_id, columns, params = struct.unpack_from("<IHH", first, 1)
    for count in (params, columns):
        for _ in range(count + 1 if count else 0):  # definitions, then EOF
            client._must_read()
    return int(stmt_id)


def _long_data(stmt_id: int, data: bytes) -> bytes:
    return frame(b"\x18" + struct.pack("<IH", stmt_id, 0) + data, 0)


def _execute_one_blob(client: RawClient, stmt_id: int) -> list[bytes] | Err:
    """COM_STMT_EXECUTE of a one-parameter statement whose value came as long data."""
    body = struct.pack("<IBI", stmt_id, 0, 1) + b"\x00" + b"\x01" + b"\xfc\x00"  # BLOB, bound
    client.send(frame(b"\x17" + body, 0))
    return client.read_response()


def _length_of(rows: list[bytes] | Err) -> int:
    assert isinstance(rows, list) and len(rows) == 1, rows
    return int(struct.unpack_from("<i", rows[0], 2)[0])  # binary row: header, null bitmap, INT


def test_200_mib_of_long_data_is_refused_with_1105_and_baton_stays_small(proc: BatonProcess) -> None:
    client = RawClient(proc.proxy_port, timeout=60)
    client.login()
    stmt_id = _prepare(client, "SELECT LENGTH(?)")
    assert isinstance(stmt_id, int), stmt_id
    chunk = _long_data(stmt_id, b"z" * MiB)
    with canary_running(proc, warm_up=5) as bystander, RssSampler(proc.pid) as rss:
        try:
            for _ in range(200):
                client.send(chunk)
            err = _execute_one_blob(client, stmt_id)
            bystander.wait_for(5)
        finally:
            print(f"Baton RSS peak {rss.peak / MiB:.0f} MiB (200 MiB of long data)")
    assert not bystander.errors, bystander.errors
    assert isinstance(err, Err) and (err.code, err.sqlstate) == (1105, "HY000"), err
    assert "longer than 'max_allowed_packet' bytes" in err.message
    assert rss.peak < LIMIT, f"Baton's RSS peaked at {rss.peak / MiB:.0f} MiB"
    client.send(_long_data(stmt_id, b"abc"))  # the statement and the session carry on
    assert _length_of(_execute_one_blob(client, stmt_id)) == 3
    client.close()


def test_twelve_8_mib_queries_queued_behind_a_sleep_keep_baton_small(proc: BatonProcess) -> None:
    client = RawClient(proc.proxy_port, timeout=120)
    client.login()
    count, size = 12, 8 * MiB
    queries = [frame(b"\x03SELECT LENGTH('" + b"q" * (size + i) + b"')", 0) for i in range(count)]
    with RssSampler(proc.pid) as rss:
        try:
            client.send(frame(b"\x03SELECT SLEEP(3)", 0))
            sender = threading.Thread(target=lambda: [client.send(q) for q in queries], daemon=True)
            sender.start()
            assert client.read_response() == [b"\x010"]  # the SLEEP, then every query in order
            answers = [client.read_response() for _ in range(count)]
            sender.join(30)
        finally:
            print(f"Baton RSS peak {rss.peak / MiB:.0f} MiB (12 x 8 MiB queued)")
    assert answers == [[b"%c%d" % (len(str(size + i)), size + i)] for i in range(count)]
    assert rss.peak < LIMIT, f"Baton's RSS peaked at {rss.peak / MiB:.0f} MiB"
    client.close()


def test_prepared_statements_per_session_are_capped_with_1461(proc: BatonProcess) -> None:
    client = RawClient(proc.proxy_port)
    client.login()
    ids = [_prepare(client, f"SELECT {i}") for i in range(3)]
    assert all(isinstance(i, int) for i in ids), ids
    err = _prepare(client, "SELECT 4")
    assert isinstance(err, Err) and (err.code, err.sqlstate) == (1461, "42000"), err
    assert "max_prepared_stmt_count" in err.message and "3" in err.message
    client.send(frame(b"\x19" + struct.pack("<I", ids[0]), 0))  # COM_STMT_CLOSE: no answer
    assert isinstance(_prepare(client, "SELECT 5"), int)  # room again
    assert client.query("SELECT 'usable'") == [b"\x06usable"]
    client.close()


def test_a_local_infile_upload_streams_at_the_servers_pace(
    proc: BatonProcess, sandbox: ReplicationSandbox, tmp_path: Path
) -> None:
    rows = 400_000  # long rows, few of them: the replicas apply them quickly
    data = tmp_path / "rows.csv"
    with data.open("w") as f:
        for i in range(rows):
            f.write(f"{i},{'p' * 480}\n")  # ~186 MiB
    with scratch_table(sandbox, "id INT PRIMARY KEY, v TEXT") as table:
        conn = connector_connect(proc, allow_local_infile=True, connection_timeout=120)
        try:
            with RssSampler(proc.pid) as rss:
                try:
                    cur = conn.cursor()
                    cur.execute(
                        f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE {table} FIELDS TERMINATED BY ','"
                    )
                    cur.execute(f"/* baton:master */ SELECT COUNT(*) FROM {table}")
                    assert cur.fetchall() == [(rows,)]
                finally:
                    print(f"Baton RSS peak {rss.peak / MiB:.0f} MiB (LOCAL INFILE of {data.stat().st_size / MiB:.0f} MiB)")
        finally:
            conn.close()
        sandbox.wait_caught_up(timeout=120)  # the shared replicas are left in sync for the next tests
    assert rss.peak < LIMIT, f"Baton's RSS peaked at {rss.peak / MiB:.0f} MiB"
