"""The index of sessions holding a connection between statements: a waiting session takes the
connection of the one idle longest, passes by holders that cannot give theirs back (busy
again, pinned by a transaction or a lock) and drops them, and sessions that close leave it."""

from __future__ import annotations

from proxy.session.idle_holders import IdleHolders


class Holder:
    def __init__(self, name: str, free: bool = True) -> None:
        self.name = name
        self.free = free
        self.gave: list[str] = []

    def give_back_idle(self, backend: str) -> bool:
        if self.free:
            self.gave.append(backend)
        return self.free

    def __repr__(self) -> str:
        return self.name


def test_the_longest_idle_holder_gives_its_connection_back_first() -> None:
    index = IdleHolders()
    a, b, c = Holder("a"), Holder("b"), Holder("c")
    index.add(a, ["db1"])
    index.add(b, ["db1", "db2"])
    index.add(c, ["db1"])
    index.add(a, ["db1"])  # a ran another statement: idle since now, to the back
    assert index.give_back("db1") and b.gave == ["db1"]
    assert index.give_back("db1") and c.gave == ["db1"]
    assert index.give_back("db1") and a.gave == ["db1"]
    assert not index.give_back("db1")
    assert index.give_back("db2") and b.gave == ["db1", "db2"]
    assert len(index) == 0


def test_holders_that_cannot_move_are_passed_by_and_dropped() -> None:
    index = IdleHolders()
    pinned, free = Holder("pinned", free=False), Holder("free")
    index.add(pinned, ["db1"])
    index.add(free, ["db1"])
    assert index.give_back("db1") and free.gave == ["db1"]
    assert len(index) == 0  # the pinned one enters again after its next response
    assert not index.give_back("db1")


def test_a_closed_session_leaves_every_backend_list() -> None:
    index = IdleHolders()
    gone = Holder("gone")
    index.add(gone, ["db1", "db2", "db3"])
    index.discard(gone)
    assert len(index) == 0
    assert not index.give_back("db1") and gone.gave == []
