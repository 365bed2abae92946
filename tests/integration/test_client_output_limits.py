"""Clients that do not read their replies (issue 12, item 2).

A logged-in client that pipelines COM_PINGs (compressed or plain) and never reads used to make
Baton buffer every OK it owed (~21 KB of zlib grew Baton past 500 MiB). Now Baton stops serving
and reading such a client while its unread replies are above a high-water mark, so its memory
stays bounded and other sessions are unaffected; the client is cut after
``client_write_timeout_s`` without reading, or at once when its unread replies pass
``client_output_buffer_limit``.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from proxy.protocol.compression import CompressedStream
from proxy.protocol.framing import frame
from proxy.sandbox import ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess, admin_rows, wait_for
from tests.support.clients import MiB, RssSampler, connector_connect, pymysql_connect
from tests.support.raw_client import canary_running

PING = frame(b"\x0e", 0)
# 4 Mi PINGs in ~30 KiB of zlib (built once: compressing 20 MiB takes seconds)
ZWIRE = CompressedStream(level=9).wrap([PING * (4 << 20)])


def _push(sock: socket.socket, data: bytes, stall_s: float = 2.0) -> int:
    """Sends as much of ``data`` as the socket takes until it stays full for ``stall_s``
    (Baton stopped reading); the number of bytes sent."""
    sock.setblocking(False)
    sent, stalled_since = 0, None
    view = memoryview(data)
    while sent < len(data):
        try:
            n = sock.send(view[sent : sent + (1 << 20)])
        except BlockingIOError:
            now = time.monotonic()
            stalled_since = stalled_since or now
            if now - stalled_since > stall_s:
                break
            time.sleep(0.01)
            continue
        sent += n
        stalled_since = None
    return sent


def _clients(proc: BatonProcess) -> int:
    return len(admin_rows(proc, "SHOW CLIENTS"))


@pytest.fixture
def proc(sandbox: ReplicationSandbox, baton: Any) -> BatonProcess:
    return baton(sandbox, proxy={"client_write_timeout_s": 10})


def test_clients_that_pipeline_pings_and_never_read_keep_baton_small(proc: BatonProcess) -> None:
    compressed = connector_connect(proc, compress=True)
    zsock = compressed._socket.sock  # the connector's raw socket (pure-Python implementation)
    assert len(ZWIRE) < 64 << 10
    plain = pymysql_connect(proc)
    psock = plain._sock
    assert psock is not None
    with canary_running(proc, warm_up=5) as bystander, RssSampler(proc.pid) as rss:
        try:
            assert _push(zsock, ZWIRE) == len(ZWIRE)
            _push(psock, PING * (8 << 20))  # up to 8 Mi PINGs (40 MiB)
            assert _clients(proc) == 3  # both flooders still connected, neither read anything
            bystander.wait_for(20)  # other sessions are served all along
            wait_for(lambda: _clients(proc) == 1, timeout=20, what="the flooders to be cut")
            bystander.wait_for(5)
        finally:
            print(f"Baton RSS peak {rss.peak / MiB:.0f} MiB")
    assert not bystander.errors, bystander.errors
    log = proc.log_text()
    assert log.count("client_output_stalled") == 2, log[-2000:]
    assert rss.peak < 150 * MiB, f"Baton's RSS peaked at {rss.peak / MiB:.0f} MiB"
    zsock.close()
    psock.close()


def test_a_client_past_the_output_buffer_limit_is_cut(sandbox: ReplicationSandbox, baton: Any) -> None:
    """Unread replies pass the limit when one chunk read from the backend overshoots it (Baton
    stops reading the backend once the client's buffer passes its high-water mark, a quarter of
    the limit). On a backend connection just opened, TCP's windows are still small and so are
    the chunks: output could pause below the limit, and the client would then be cut by the
    write timeout instead (60 s; seen in 4 of 15 fresh Batons, stop 20's code 2 of 15). So the
    statement runs on a connection that has carried a result already: inside a transaction,
    both go to the same connection to the master."""
    proc = baton(sandbox, proxy={"client_output_buffer_limit": 65536})  # write timeout: 60 s
    conn = pymysql_connect(proc)
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SELECT REPEAT('x', 1000000) FROM seq_1_to_4")
        assert len(cur.fetchall()) == 4
    sock = conn._sock
    assert sock is not None
    started = time.monotonic()
    # ~64 MiB of rows that this client never reads
    sock.sendall(frame(b"\x03SELECT REPEAT('x', 1000000) FROM seq_1_to_64", 0))
    wait_for(lambda: "client_output_overflow" in proc.log_text(), timeout=20, what="the cut")
    assert time.monotonic() - started < 20
    wait_for(lambda: _clients(proc) == 0, timeout=5, what="the session to go")
    with pymysql_connect(proc) as other, other.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchall() == ((1,),)
    sock.close()
