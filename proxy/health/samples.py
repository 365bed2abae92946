"""Replication state as the monitor reads it: parsing and sub-second lag, without I/O.

The monitor (health/replication_state.py) sends two queries per sample, ``SELECT`` of `VARIABLES` and
``SHOW SLAVE STATUS``, and hands both results to `parse_sample`; `estimate_lag` then compares
the replica's sample with the master's position history. Both are pure, so they are tested
directly with values, not through a server.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from proxy.backend import QueryResult
from proxy.health.election import GtidError, parse_gtid_list

# What the monitor selects, in this order. A server without semi-sync lacks the last two and
# is asked for the first five only; `parse_sample` reads the missing ones as unknown.
VARIABLES = (
    "@@read_only",
    "@@server_id",
    "@@gtid_binlog_pos",
    "@@gtid_current_pos",
    "@@gtid_slave_pos",
    "@@rpl_semi_sync_master_enabled",
    "@@rpl_semi_sync_slave_enabled",
)


@dataclass(frozen=True)
class ReplicationSample:
    """One replication-state reading. sent_at/received_at bracket the moment it was true."""

    sent_at: float
    received_at: float
    read_only: bool
    server_id: int | None
    gtid_binlog_pos: str
    gtid_current_pos: str
    gtid_slave_pos: str
    semi_sync_master: bool | None
    semi_sync_slave: bool | None
    master_host: str | None = None
    master_port: int | None = None
    io_state: str | None = None
    sql_running: bool = False
    seconds_behind_master: int | None = None
    gtid_io_pos: str = ""


def parse_sample(
    sent_at: float, received_at: float, variables: QueryResult, slave: QueryResult
) -> ReplicationSample:
    """The sample from the `VARIABLES` row and SHOW SLAVE STATUS (no row: not a replica)."""
    row = list(variables.rows[0]) + [None] * (len(VARIABLES) - len(variables.rows[0]))
    read_only, server_id, binlog_pos, current_pos, slave_pos, semi_master, semi_slave = row
    sample = ReplicationSample(
        sent_at=sent_at,
        received_at=received_at,
        read_only=bool(_flag(read_only)),
        server_id=int(server_id) if server_id is not None else None,
        # SHOW SLAVE STATUS and some variables wrap long GTID lists with ",\n".
        gtid_binlog_pos=one_line(_text(binlog_pos)),
        gtid_current_pos=one_line(_text(current_pos)),
        gtid_slave_pos=one_line(_text(slave_pos)),
        semi_sync_master=_flag(semi_master),
        semi_sync_slave=_flag(semi_slave),
    )
    rows = slave.dicts()
    if not rows:
        return sample
    r = rows[0]
    sbm = r.get("Seconds_Behind_Master")
    port = r.get("Master_Port")
    return dataclasses.replace(
        sample,
        master_host=r.get("Master_Host") or None,
        master_port=int(port) if port else None,
        io_state=r.get("Slave_IO_Running"),
        sql_running=r.get("Slave_SQL_Running") == "Yes",
        seconds_behind_master=int(sbm) if sbm is not None else None,
        gtid_io_pos=one_line(r.get("Gtid_IO_Pos") or ""),
    )


def one_line(gtids: str) -> str:
    """A GTID list as the server wraps it (``"0-1-5,\\n1-3-7"``) on one line, no spaces."""
    return ",".join(part.strip() for part in gtids.split(",") if part.strip())


def has_applied(applied: str, position: str) -> bool:
    """Whether a replica's gtid_slave_pos has reached a master's gtid_binlog_pos.

    Per domain by sequence number: within a domain seqs keep rising across masters.
    """
    mine = parse_gtid_list(applied)
    return all(d in mine and mine[d].seq >= g.seq for d, g in parse_gtid_list(position).items())


def estimate_lag(
    s: ReplicationSample, master_positions: Iterable[tuple[float, str]] | None
) -> float | None:
    """Replication lag of a replica sample, sub-second.

    Seconds_Behind_Master counts whole seconds and is NULL whenever the IO thread is down,
    so it is only a lower bound here. The estimate: the master's position history says
    when each position was first seen; the oldest position this replica has not applied
    already existed then, so the replica is at least that far behind. Caught up with every
    position seen by the time of the sample: lag 0. SQL thread stopped with no
    Seconds_Behind_Master: unknown (None).
    """
    sbm = s.seconds_behind_master
    if not s.sql_running and sbm is None:
        return None
    estimate: float | None = None
    known = [(t, p) for t, p in master_positions or () if t <= s.sent_at]
    if s.gtid_slave_pos and known:
        try:
            # Newest first: applying is in order, so once one position is applied every
            # older one is too. Usually the newest is, and that is a single comparison.
            estimate = 0.0
            for seen_at, position in reversed(known):
                if has_applied(s.gtid_slave_pos, position):
                    break
                estimate = s.sent_at - seen_at
        except GtidError:
            estimate = None
    if estimate is None:
        return None if sbm is None else float(sbm)
    return estimate if sbm is None else max(estimate, float(sbm))


def _flag(value: bytes | None) -> bool | None:
    if value is None:
        return None
    text = value.decode().strip().upper()
    return text in ("1", "ON", "YES")


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode()
