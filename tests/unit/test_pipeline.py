"""Baton's own commands written at once (``BackendConnection.pipeline``): the server answers
them in order, and each answer is matched to its command however the bytes arrive (all in one
read, or split anywhere), with an error for one command not hiding the others' answers.
In-process, with a transport that records writes; the answers are real packet bytes."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.backend import BackendConnection, BackendError
from proxy.net import within
from proxy.protocol.constants import Command
from proxy.protocol.framing import frame
from proxy.protocol.packets import ErrPacket, encode_err

OK = frame(b"\x00\x00\x00\x02\x00\x00\x00", 1)
REFUSED = ErrPacket(1049, "42000", "Unknown database 'nope'")
ERR = frame(encode_err(REFUSED), 1)
COMMANDS = [(Command.RESET_CONNECTION, b""), (Command.INIT_DB, b"nope"), (Command.QUERY, b"SET @a = 1")]


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data) -> None:  # type: ignore[no-untyped-def, override]
        self.written.append(bytes(data))

    def writelines(self, data) -> None:  # type: ignore[no-untyped-def, override]
        self.written += [bytes(d) for d in data]

    def get_extra_info(self, name, default=None):  # type: ignore[no-untyped-def, override]
        return default

    def abort(self) -> None:
        self.closed = True

    def close(self) -> None:
        self.closed = True


def connection(loop: asyncio.AbstractEventLoop) -> tuple[BackendConnection, Transport]:
    conn = BackendConnection("db1", loop)
    transport = Transport()
    conn.connection_made(transport)
    conn.alive = True
    conn._login_reader = None  # logged in
    return conn, transport


async def run_pipeline(chunks: list[bytes]) -> tuple[list[ErrPacket | None], list[bytes], bool]:
    conn, transport = connection(asyncio.get_running_loop())
    task = asyncio.ensure_future(conn.pipeline(COMMANDS, timeout=5))
    await asyncio.sleep(0)
    for chunk in chunks:
        conn.data_received(chunk)
    errors = await task
    return errors, transport.written, conn.busy


def test_every_command_is_written_in_one_write_and_answered_in_order() -> None:
    errors, written, busy = asyncio.run(run_pipeline([OK + ERR + OK]))
    assert errors == [None, REFUSED, None]
    assert written == [frame(bytes((c,)) + body, 0) for c, body in COMMANDS]
    assert not busy


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(OK + ERR + OK) - 1), unique=True))
def test_answers_split_anywhere_are_matched_to_their_commands(cuts: list[int]) -> None:
    data = OK + ERR + OK
    bounds = [0, *sorted(cuts), len(data)]
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    errors, _, busy = asyncio.run(run_pipeline(chunks))
    assert errors == [None, REFUSED, None] and not busy


def test_bytes_past_the_last_answer_break_the_connection() -> None:
    async def main() -> bool:
        conn, transport = connection(asyncio.get_running_loop())
        task = asyncio.ensure_future(conn.pipeline(COMMANDS[:1], timeout=5))
        await asyncio.sleep(0)
        conn.data_received(OK + OK)
        await task
        return transport.closed

    assert asyncio.run(main())


def test_a_pipeline_with_an_answer_missing_times_out_and_drops_the_connection() -> None:
    async def main() -> bool:
        conn, transport = connection(asyncio.get_running_loop())
        task = asyncio.ensure_future(conn.pipeline(COMMANDS, timeout=0.05))
        await asyncio.sleep(0)
        conn.data_received(OK + ERR)
        with pytest.raises(BackendError, match="timed out"):
            await task
        return transport.closed

    assert asyncio.run(main())


def test_within_returns_when_the_future_is_done_and_fails_it_after_the_timeout() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_later(0.01, done.set_result, None)
        await within(done, 5)
        late = loop.create_future()
        with pytest.raises(TimeoutError):
            await within(late, 0.02)
        assert late.done()  # a waker that comes later sees it done and passes it by
        assert len(loop._scheduled) == 0  # type: ignore[attr-defined]  # no timer left behind

    asyncio.run(main())
