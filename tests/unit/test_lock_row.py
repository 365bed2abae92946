"""lock_row: the values of a named-lock SELECT's single row, read from the response the session
collected, with and without DEPRECATE_EOF; None for anything that is not exactly one row."""

from __future__ import annotations

import pytest

from proxy.protocol.constants import Capability, Command, ServerStatus
from proxy.protocol.framing import frame
from proxy.protocol.packets import Column, OkPacket, encode_ok, encode_result_set
from proxy.protocol.response import ResponseTracker
from proxy.session.effects import lock_row

CAPS = int(Capability.PROTOCOL_41 | Capability.SECURE_CONNECTION | Capability.TRANSACTIONS)
MODES = [CAPS, CAPS | int(Capability.DEPRECATE_EOF)]


def tracked(caps: int, response: bytes) -> ResponseTracker:
    tracker = ResponseTracker(caps)
    tracker.start(int(Command.QUERY), collect=True)
    assert tracker.feed(response) == len(response) and tracker.done
    return tracker


@pytest.mark.parametrize("caps", MODES)
def test_one_row_gives_its_values(caps: int) -> None:
    cols = [Column("GET_LOCK('a', 0)"), Column("RELEASE_LOCK('b')")]
    response = encode_result_set(cols, [[1, None]], caps, int(ServerStatus.AUTOCOMMIT))
    assert lock_row(tracked(caps, response)) == (b"1", None)


@pytest.mark.parametrize("caps", MODES)
@pytest.mark.parametrize("rows", [[], [[1], [0]]])
def test_no_row_or_several_give_none(caps: int, rows: list[list[int]]) -> None:
    response = encode_result_set([Column("x")], rows, caps, int(ServerStatus.AUTOCOMMIT))
    assert lock_row(tracked(caps, response)) is None


def test_an_ok_gives_none() -> None:
    response = frame(encode_ok(OkPacket(status=int(ServerStatus.AUTOCOMMIT)), CAPS), 1)
    assert lock_row(tracked(CAPS, response)) is None
