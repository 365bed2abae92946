"""Pure decisions for automatic failover: is the master dead, and whom to promote.

GTIDs are MariaDB's: `domain-server_id-seq`, lists separated by commas
("0-1-100,1-2-5"). Within a replication domain sequence numbers keep increasing across
masters (a new master continues from where it is), so the higher seq is the more
advanced position *if the histories are the same*. Positions carry only the last GTID per
domain, so divergence is provable only when two positions name the same seq with
different server ids; then we refuse. Divergence at different seqs (an errant
transaction followed by more writes) cannot be seen from positions alone; MariaDB's
gtid_strict_mode catches it when the replica connects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_GTID = re.compile(r"(\d+)-(\d+)-(\d+)", re.ASCII)
_MAX_U32 = 2**32 - 1
_MAX_U64 = 2**64 - 1


class GtidError(ValueError):
    """Unreadable GTID text, or one list that contradicts itself."""


@dataclass(frozen=True, order=True)
class Gtid:
    domain: int
    server_id: int
    seq: int

    def __str__(self) -> str:
        return f"{self.domain}-{self.server_id}-{self.seq}"


GtidPositions = dict[int, Gtid]  # domain -> last GTID in that domain


def _entries(text: str) -> list[Gtid]:
    gtids = []
    # Blank items are skipped: empty positions are "", and SHOW SLAVE STATUS wraps long
    # lists with ",\n".
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        m = _GTID.fullmatch(item)
        if m is None:
            raise GtidError(f"not a GTID: {item!r} in {text!r}")
        domain, server_id, seq = (int(g) for g in m.groups())
        if domain > _MAX_U32 or server_id > _MAX_U32 or seq > _MAX_U64:
            raise GtidError(f"GTID out of range: {item!r}")
        gtids.append(Gtid(domain, server_id, seq))
    return gtids


def parse_gtid_list(text: str) -> GtidPositions:
    """Parse a position list (gtid_slave_pos, Gtid_IO_Pos, gtid_binlog_pos) by domain.

    A domain listed twice (as in gtid_binlog_state) keeps its highest seq; two entries
    with the same domain and seq but different servers are divergent: GtidError.
    """
    positions: GtidPositions = {}
    for g in _entries(text):
        current = positions.get(g.domain)
        if current is None or g.seq > current.seq:
            positions[g.domain] = g
        elif g.seq == current.seq and g.server_id != current.server_id:
            raise GtidError(f"{current} and {g} in one list: divergent histories")
    return positions


def format_gtid_list(positions: Mapping[int, Gtid]) -> str:
    return ",".join(str(positions[d]) for d in sorted(positions))


def _by_server(text: str) -> dict[tuple[int, int], int]:
    last: dict[tuple[int, int], int] = {}
    for g in _entries(text):
        key = (g.domain, g.server_id)
        last[key] = max(last.get(key, -1), g.seq)
    return last


def gtid_contains(a: str, b: str) -> bool:
    """Whether history `a` has every transaction named by `b`.

    Used before an old master rejoins: its @@gtid_binlog_pos (b) must be contained in
    the new master's @@gtid_binlog_state (a). Compared per (domain, server_id): `a` must
    hold the same server's GTIDs in that domain up to at least b's seq. Comparing per
    server is what catches the classic loss: old master at 0-1-105, new master promoted
    at 0-1-103 and now at 0-2-110; a bare seq comparison (110 >= 105) would wrongly say
    yes. Pass a's binlog *state* (one entry per server), not its *pos* (one per domain):
    with a pos the answer errs on the side of False.
    """
    return not gtid_missing(a, b)


def gtid_missing(a: str, b: str) -> list[str]:
    """What history `b` has that history `a` lacks, per (domain, server_id): each entry is
    b's last GTID from a server whose transactions `a` holds only up to a lower seq (or not
    at all). Empty when `a` contains `b`; see gtid_contains for what to pass."""
    have = _by_server(a)
    return [
        str(Gtid(domain, server_id, seq))
        for (domain, server_id), seq in sorted(_by_server(b).items())
        if have.get((domain, server_id), -1) < seq
    ]


def _covers(a: GtidPositions, b: GtidPositions) -> bool:
    return all(d in a and a[d].seq >= g.seq for d, g in b.items())


@dataclass(frozen=True)
class ReplicaStatus:
    name: str
    promotable: bool
    alive: bool
    gtid_io_pos: str  # received (Gtid_IO_Pos)
    gtid_slave_pos: str  # applied (@@gtid_slave_pos)
    io_running: bool
    sql_running: bool
    lag_s: float | None


@dataclass(frozen=True)
class Choice:
    name: str
    catch_up_to: str  # what it must have applied before taking writes (MASTER_GTID_WAIT)
    backlog: int  # transactions received but not yet applied
    reason: str


@dataclass(frozen=True)
class Refusal:
    reason: str


def choose_candidate(replicas: Sequence[ReplicaStatus]) -> Choice | Refusal:
    """Pick the failover target for `auto` mode, or refuse and say why.

    The candidate must be alive, promotable, with its SQL thread running, and have
    received (max of Gtid_IO_Pos and gtid_slave_pos: the IO position is empty after an
    IO thread restart) at least as much as every other live replica in every domain,
    promotable or not: promoting anyone else would drop transactions a replica holds and
    leave that replica unable to follow. Among those, the fewest transactions left to
    apply wins, then configuration order (the order of `replicas`). Dead replicas are
    ignored: their positions are unknown.

    Refuses when no live replica is promotable, when GTID text is unreadable, when two
    positions name the same (domain, seq) with different server ids (divergent
    histories: a human must decide which to keep), or when a non-candidate is ahead.
    """
    alive = [r for r in replicas if r.alive]
    if not alive:
        return Refusal("no replica is alive")

    received: dict[str, GtidPositions] = {}
    applied: dict[str, GtidPositions] = {}
    seen: dict[tuple[int, int], tuple[Gtid, str]] = {}
    for r in alive:
        try:
            io_pos = parse_gtid_list(r.gtid_io_pos)
            applied[r.name] = parse_gtid_list(r.gtid_slave_pos)
        except GtidError as e:
            return Refusal(f"{r.name}: {e}")
        for g in (*io_pos.values(), *applied[r.name].values()):
            first, holder = seen.setdefault((g.domain, g.seq), (g, r.name))
            if first.server_id != g.server_id:
                return Refusal(
                    f"divergent histories in domain {g.domain}: {holder} has {first}, "
                    f"{r.name} has {g}"
                )
        received[r.name] = {**applied[r.name]}
        for d, g in io_pos.items():
            if d not in received[r.name] or g.seq > received[r.name][d].seq:
                received[r.name][d] = g

    promotable = [r for r in alive if r.promotable]
    if not promotable:
        return Refusal("no live replica is promotable")
    eligible = [r for r in promotable if r.sql_running]
    if not eligible:
        names = ", ".join(r.name for r in promotable)
        return Refusal(f"SQL thread stopped on every promotable replica ({names})")

    qualified = [
        r for r in eligible if all(_covers(received[r.name], received[o.name]) for o in alive)
    ]
    if not qualified:
        return Refusal(_why_none_covers(eligible, alive, received))

    def backlog(r: ReplicaStatus) -> int:
        done = applied[r.name]
        return sum(g.seq - (done[d].seq if d in done else 0) for d, g in received[r.name].items())

    order = {r.name: i for i, r in enumerate(replicas)}
    best = min(qualified, key=lambda r: (backlog(r), order[r.name]))
    catch_up_to = format_gtid_list(received[best.name])
    return Choice(
        name=best.name,
        catch_up_to=catch_up_to,
        backlog=backlog(best),
        reason=(
            f"{best.name} has received all any live replica has ({catch_up_to or 'nothing'}), "
            f"{backlog(best)} transaction(s) left to apply"
        ),
    )


def _why_none_covers(
    eligible: list[ReplicaStatus],
    alive: list[ReplicaStatus],
    received: dict[str, GtidPositions],
) -> str:
    # Name one concrete gap, from the candidate closest to qualifying.
    best = max(eligible, key=lambda r: sum(g.seq for g in received[r.name].values()))
    mine = received[best.name]
    for o in alive:
        for d, g in received[o.name].items():
            if d not in mine or mine[d].seq < g.seq:
                has = mine[d] if d in mine else "nothing"
                return (
                    f"no promotable replica has received everything: {o.name} has {g}, "
                    f"best candidate {best.name} has {has} in domain {d}"
                )
    raise AssertionError("unreachable: best candidate covers every live replica")


def master_confirmed_dead(baton_view_failed: bool, replica_io_states: list[bool | None]) -> bool:
    """The master is dead only if Baton's probes failed AND every reachable replica's IO
    thread has lost it too (Orchestrator's rule).

    `replica_io_states`: per replica, True = IO thread connected to the master, False =
    lost it (Slave_IO_Running "No"/"Connecting"), None = replica unreachable, no opinion.
    A partition between Baton and a healthy master leaves the replicas connected, so no
    failover. Baton's view alone never suffices: with no reachable replica, not dead.
    Replicas notice within slave_net_timeout (Orchestrator recommends 4 s).
    """
    if not baton_view_failed:
        return False
    opinions = [s for s in replica_io_states if s is not None]
    return bool(opinions) and not any(opinions)
