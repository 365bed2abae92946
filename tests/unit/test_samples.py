"""Replication samples without a server: what the monitor makes of its two queries' results
(the variables row and SHOW SLAVE STATUS, as MariaDB formats them) and the sub-second lag
estimate from the master's position history."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.backend import QueryResult
from proxy.health.samples import (
    VARIABLES,
    ReplicationSample,
    estimate_lag,
    has_applied,
    one_line,
    parse_sample,
)

NO_ROWS = QueryResult(columns=[], rows=[], status=0)


def variables(*values: bytes | None) -> QueryResult:
    """The `SELECT @@read_only, ...` row, for as many variables as values given."""
    return QueryResult(columns=list(VARIABLES[: len(values)]), rows=[values], status=0)


def slave_status(**fields: str | None) -> QueryResult:
    """One SHOW SLAVE STATUS row with the given columns (MariaDB sends text, NULL as None)."""
    row = tuple(None if v is None else v.encode() for v in fields.values())
    return QueryResult(columns=list(fields), rows=[row], status=0)


# --- parse_sample -------------------------------------------------------------------------------


def test_a_master_sample_has_no_replication_source_and_one_line_gtids() -> None:
    sample = parse_sample(
        10.0,
        10.002,
        variables(b"0", b"1", b"0-1-5,\n1-1-7", b"0-1-5,\n1-1-7", b"", b"1", b"0"),
        NO_ROWS,
    )
    assert sample == ReplicationSample(
        sent_at=10.0,
        received_at=10.002,
        read_only=False,
        server_id=1,
        gtid_binlog_pos="0-1-5,1-1-7",
        gtid_current_pos="0-1-5,1-1-7",
        gtid_slave_pos="",
        semi_sync_master=True,
        semi_sync_slave=False,
    )


def test_a_server_without_semi_sync_variables_reads_them_as_unknown() -> None:
    sample = parse_sample(1.0, 1.1, variables(b"1", b"3", b"", b"0-1-5", b"0-1-5"), NO_ROWS)
    assert sample.read_only is True
    assert (sample.semi_sync_master, sample.semi_sync_slave) == (None, None)
    assert sample.gtid_slave_pos == "0-1-5"


def test_a_replica_sample_reads_its_source_threads_and_io_position() -> None:
    sample = parse_sample(
        5.0,
        5.001,
        variables(b"1", b"2", b"", b"0-1-9", b"0-1-9", b"0", b"1"),
        slave_status(
            Master_Host="127.0.0.1",
            Master_Port="33061",
            Slave_IO_Running="Connecting",
            Slave_SQL_Running="Yes",
            Seconds_Behind_Master=None,  # NULL whenever the IO thread is not connected
            Gtid_IO_Pos="0-1-9,\n1-1-3",
        ),
    )
    assert (sample.master_host, sample.master_port) == ("127.0.0.1", 33061)
    assert sample.io_state == "Connecting"
    assert sample.sql_running is True
    assert sample.seconds_behind_master is None
    assert sample.gtid_io_pos == "0-1-9,1-1-3"
    assert (sample.semi_sync_master, sample.semi_sync_slave) == (False, True)


def test_a_stopped_sql_thread_and_a_lagging_replica_are_read_as_such() -> None:
    sample = parse_sample(
        5.0,
        5.001,
        variables(b"1", b"2", b"", b"0-1-4", b"0-1-4"),
        slave_status(
            Master_Host="db1",
            Master_Port="3306",
            Slave_IO_Running="Yes",
            Slave_SQL_Running="No",
            Seconds_Behind_Master="7",
            Gtid_IO_Pos="",
        ),
    )
    assert sample.sql_running is False
    assert sample.seconds_behind_master == 7
    assert sample.gtid_io_pos == ""


def test_an_empty_master_host_means_no_source() -> None:
    # RESET SLAVE ALL leaves no row; RESET SLAVE leaves one with an empty host.
    sample = parse_sample(
        1.0,
        1.0,
        variables(b"0", b"1", b"", b"", b""),
        slave_status(Master_Host="", Master_Port="3306", Slave_IO_Running="No"),
    )
    assert sample.master_host is None


# --- one_line and has_applied -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("wrapped", "flat"),
    [
        ("", ""),
        ("0-1-5", "0-1-5"),
        ("0-1-5,\n1-3-7", "0-1-5,1-3-7"),
        (" 0-1-5 , 1-3-7 ,", "0-1-5,1-3-7"),
    ],
)
def test_one_line_unwraps_gtid_lists(wrapped: str, flat: str) -> None:
    assert one_line(wrapped) == flat


@given(st.lists(st.from_regex(r"[0-9]{1,3}-[0-9]{1,3}-[0-9]{1,6}", fullmatch=True), max_size=5))
def test_one_line_joins_what_it_split_and_is_idempotent(gtids: list[str]) -> None:
    text = one_line(",\n".join(gtids))
    assert text == ",".join(gtids)
    assert one_line(text) == text


def test_applied_compares_each_domain_of_the_position_by_sequence() -> None:
    assert has_applied("0-1-9", "0-1-9")
    assert has_applied("0-1-10", "0-1-9")
    assert not has_applied("0-1-8", "0-1-9")
    # Seqs keep rising across masters within a domain: the server id does not matter.
    assert has_applied("0-2-12", "0-1-9")
    # Every domain of the position must be there and reached; extra domains are fine.
    assert not has_applied("0-1-9", "0-1-9,1-3-1")
    assert not has_applied("0-1-9,1-3-0", "0-1-9,1-3-1")
    assert has_applied("0-1-9,1-3-1,2-4-4", "0-1-9,1-3-1")
    assert has_applied("", "")


# --- estimate_lag -------------------------------------------------------------------------------


def _replica_sample(
    slave_pos: str, *, at: float = 11.2, sql_running: bool = True, sbm: int | None = None
) -> ReplicationSample:
    return ReplicationSample(
        sent_at=at,
        received_at=at + 0.001,
        read_only=True,
        server_id=2,
        gtid_binlog_pos=slave_pos,
        gtid_current_pos=slave_pos,
        gtid_slave_pos=slave_pos,
        semi_sync_master=False,
        semi_sync_slave=False,
        master_host="127.0.0.1",
        master_port=3306,
        io_state="Yes",
        sql_running=sql_running,
        seconds_behind_master=sbm,
    )


def test_lag_is_the_age_of_the_oldest_master_position_not_yet_applied() -> None:
    history = [(10.0, "0-1-5"), (10.5, "0-1-8"), (11.0, "0-1-9"), (11.5, "0-1-12")]
    assert estimate_lag(_replica_sample("0-1-9"), history) == 0.0  # 11.5 is after the sample
    assert estimate_lag(_replica_sample("0-1-8"), history) == pytest.approx(0.2)
    assert estimate_lag(_replica_sample("0-1-4"), history) == pytest.approx(1.2)
    # Seconds_Behind_Master bounds it below; alone it is all there is.
    assert estimate_lag(_replica_sample("0-1-8", sbm=2), history) == 2.0
    assert estimate_lag(_replica_sample("0-1-8", sbm=0), None) == 0.0
    assert estimate_lag(_replica_sample("0-1-8", sbm=None), [(12.0, "0-1-9")]) is None
    # SQL thread stopped and no Seconds_Behind_Master: unknown, whatever the history says.
    assert estimate_lag(_replica_sample("0-1-9", sql_running=False), history) is None
    # Several domains: every one must be applied.
    two = [(10.0, "0-1-5,1-3-7")]
    assert estimate_lag(_replica_sample("0-1-5,1-3-7"), two) == 0.0
    assert estimate_lag(_replica_sample("0-1-5"), two) == pytest.approx(1.2)


def test_a_stopped_sql_thread_still_reports_seconds_behind_master() -> None:
    history = [(10.0, "0-1-5"), (11.0, "0-1-9")]
    assert estimate_lag(_replica_sample("0-1-5", sql_running=False, sbm=4), history) == 4.0


def test_an_unreadable_position_falls_back_to_seconds_behind_master() -> None:
    # Two servers at the same domain and seq: divergent, so no estimate from the history.
    divergent = "0-1-5,0-2-5"
    history = [(10.0, "0-1-9")]
    assert estimate_lag(_replica_sample(divergent, sbm=3), history) == 3.0
    assert estimate_lag(_replica_sample(divergent), history) is None


@given(
    applied=st.integers(0, 50),
    seqs=st.lists(st.integers(1, 60), min_size=1, max_size=20, unique=True).map(sorted),
    sbm=st.none() | st.integers(0, 30),
)
def test_lag_is_never_below_seconds_behind_master_nor_older_than_the_history(
    applied: int, seqs: list[int], sbm: int | None
) -> None:
    history = [(float(i), f"0-1-{seq}") for i, seq in enumerate(seqs)]
    sample = _replica_sample(f"0-1-{applied}", at=float(len(seqs)), sbm=sbm)
    lag = estimate_lag(sample, history)
    assert lag is not None and lag >= 0.0
    if sbm is not None:
        assert lag >= sbm
    else:
        assert lag <= sample.sent_at  # no older than the oldest position seen
        assert (lag == 0.0) == (applied >= seqs[-1])
