"""Failover target choice, GTID parsing and containment, master death confirmation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.health.election import (
    Choice,
    Gtid,
    GtidError,
    Refusal,
    ReplicaStatus,
    choose_candidate,
    format_gtid_list,
    gtid_contains,
    gtid_missing,
    master_confirmed_dead,
    parse_gtid_list,
)


def replica(
    name: str,
    io: str,
    applied: str | None = None,
    *,
    promotable: bool = True,
    alive: bool = True,
    sql_running: bool = True,
) -> ReplicaStatus:
    return ReplicaStatus(
        name=name,
        promotable=promotable,
        alive=alive,
        gtid_io_pos=io,
        gtid_slave_pos=io if applied is None else applied,
        io_running=False,  # the master is gone: IO threads are reconnecting
        sql_running=sql_running,
        lag_s=None,
    )


# -- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n", ",", " , "])
def test_empty_lists(text: str) -> None:
    assert parse_gtid_list(text) == {}


def test_multiple_domains_and_whitespace() -> None:
    assert parse_gtid_list(" 0-1-100,\n1-2-5 ") == {0: Gtid(0, 1, 100), 1: Gtid(1, 2, 5)}


def test_domain_listed_twice_keeps_the_latest() -> None:
    # gtid_binlog_state lists one entry per (domain, server)
    assert parse_gtid_list("0-1-100,0-2-250,0-3-7") == {0: Gtid(0, 2, 250)}


def test_same_seq_from_two_servers_in_one_list_is_divergent() -> None:
    with pytest.raises(GtidError, match="divergent"):
        parse_gtid_list("0-1-100,0-2-100")


@pytest.mark.parametrize(
    "text",
    [
        "0-1",
        "0-1-2-3",
        "a-1-2",
        "0-1-x",
        "0 -1-2",
        "-1-2-3",
        "0-1-+2",
        "0-1-²",
        "0-4294967296-1",
        "0-1-18446744073709551616",
    ],
)
def test_garbage_is_rejected(text: str) -> None:
    with pytest.raises(GtidError):
        parse_gtid_list(text)


def test_largest_values_are_accepted() -> None:
    g = parse_gtid_list("4294967295-4294967295-18446744073709551615")
    assert g == {4294967295: Gtid(4294967295, 4294967295, 2**64 - 1)}


def test_format_round_trips_sorted_by_domain() -> None:
    assert format_gtid_list(parse_gtid_list("1-2-5, 0-1-100")) == "0-1-100,1-2-5"


_gtids = st.builds(Gtid, st.integers(0, 5), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))


@given(st.dictionaries(st.integers(0, 5), _gtids, max_size=6))
def test_format_then_parse_is_identity(raw: dict[int, Gtid]) -> None:
    positions = {d: Gtid(d, g.server_id, g.seq) for d, g in raw.items()}
    assert parse_gtid_list(format_gtid_list(positions)) == positions


@given(st.text(max_size=40))
def test_any_text_parses_or_raises_gtid_error(text: str) -> None:
    try:
        parse_gtid_list(text)
    except GtidError:
        pass


# -- containment (may an old master rejoin?) ---------------------------------------------


def test_contains_basic() -> None:
    assert gtid_contains("0-1-100", "0-1-100")
    assert gtid_contains("0-1-100", "0-1-99")
    assert not gtid_contains("0-1-99", "0-1-100")
    assert gtid_contains("0-1-100", "")
    assert not gtid_contains("", "0-1-1")


def test_old_master_with_unreplicated_writes_cannot_rejoin() -> None:
    """Old master wrote 0-1-104..105 that never left it; new master went on from 103."""
    new_master_state = "0-1-103,0-2-110"
    assert not gtid_contains(new_master_state, "0-1-105")


def test_old_master_that_lost_nothing_can_rejoin() -> None:
    assert gtid_contains("0-1-100,0-2-120", "0-1-100")


def test_every_domain_must_be_contained() -> None:
    assert gtid_contains("0-1-100,1-1-50", "0-1-100,1-1-50")
    assert not gtid_contains("0-1-100,1-1-49", "0-1-100,1-1-50")
    assert not gtid_contains("0-1-100", "0-1-100,1-1-1")


def test_binlog_state_as_mariadb_prints_it() -> None:
    """Captured from MariaDB 10.11: writes as server 1, then 2, then 1 again at seq 10.
    @@gtid_binlog_state was "0-2-5,0-1-10" and @@gtid_binlog_pos "0-1-10"."""
    state = "0-2-5,0-1-10"
    assert parse_gtid_list(state) == parse_gtid_list("0-1-10")
    assert gtid_contains(state, "0-2-5")
    assert gtid_contains(state, "0-1-10")
    assert not gtid_contains(state, "0-2-6")


def test_a_position_instead_of_a_state_errs_towards_no() -> None:
    assert not gtid_contains("0-2-110", "0-1-100")


# -- choosing a candidate ----------------------------------------------------------------


def test_picks_the_most_advanced_received() -> None:
    result = choose_candidate(
        [replica("b", "0-1-100"), replica("c", "0-1-105", "0-1-90"), replica("d", "0-1-101")]
    )
    assert isinstance(result, Choice)
    assert result.name == "c"
    assert result.catch_up_to == "0-1-105"
    assert result.backlog == 15


def test_equal_received_prefers_most_applied_then_config_order() -> None:
    result = choose_candidate(
        [replica("b", "0-1-100", "0-1-95"), replica("c", "0-1-100", "0-1-99")]
    )
    assert isinstance(result, Choice) and result.name == "c"
    result = choose_candidate([replica("b", "0-1-100"), replica("c", "0-1-100")])
    assert isinstance(result, Choice) and result.name == "b"
    result = choose_candidate([replica("c", "0-1-100"), replica("b", "0-1-100")])
    assert isinstance(result, Choice) and result.name == "c"


def test_respects_promotable_false() -> None:
    result = choose_candidate([replica("b", "0-1-100", promotable=False), replica("c", "0-1-100")])
    assert isinstance(result, Choice) and result.name == "c"


def test_refuses_when_a_non_promotable_replica_is_ahead() -> None:
    result = choose_candidate([replica("b", "0-1-101", promotable=False), replica("c", "0-1-100")])
    assert isinstance(result, Refusal)
    assert "b has 0-1-101" in result.reason and "c" in result.reason


def test_candidate_must_cover_every_domain() -> None:
    """b is ahead in domain 0, c in domain 1: neither has everything."""
    result = choose_candidate([replica("b", "0-1-100,1-1-5"), replica("c", "0-1-99,1-1-6")])
    assert isinstance(result, Refusal)
    result = choose_candidate([replica("b", "0-1-100,1-1-6"), replica("c", "0-1-99,1-1-6")])
    assert isinstance(result, Choice) and result.name == "b"


def test_missing_domain_counts_as_behind() -> None:
    result = choose_candidate([replica("b", "0-1-100"), replica("c", "0-1-100,1-3-1")])
    assert isinstance(result, Choice) and result.name == "c"


def test_empty_io_position_falls_back_to_applied() -> None:
    """Gtid_IO_Pos is empty right after an IO thread restart."""
    result = choose_candidate([replica("b", "", "0-1-100"), replica("c", "0-1-99")])
    assert isinstance(result, Choice) and result.name == "b"
    assert result.backlog == 0


def test_ignores_dead_replicas() -> None:
    result = choose_candidate([replica("b", "0-1-200", alive=False), replica("c", "0-1-100")])
    assert isinstance(result, Choice) and result.name == "c"


def test_stopped_sql_thread_is_not_a_candidate() -> None:
    result = choose_candidate([replica("b", "0-1-100", sql_running=False), replica("c", "0-1-100")])
    assert isinstance(result, Choice) and result.name == "c"
    result = choose_candidate([replica("b", "0-1-100", sql_running=False)])
    assert isinstance(result, Refusal) and "SQL thread" in result.reason


@pytest.mark.parametrize(
    "replicas, why",
    [
        ([], "alive"),
        ([replica("b", "0-1-1", alive=False)], "alive"),
        ([replica("b", "0-1-1", promotable=False)], "promotable"),
        (
            [replica("b", "0-1-1", alive=False), replica("c", "0-1-1", promotable=False)],
            "promotable",
        ),
    ],
)
def test_refuses_when_no_candidate(replicas: list[ReplicaStatus], why: str) -> None:
    result = choose_candidate(replicas)
    assert isinstance(result, Refusal) and why in result.reason


def test_refuses_on_divergent_histories() -> None:
    result = choose_candidate([replica("b", "0-1-100"), replica("c", "0-2-100")])
    assert isinstance(result, Refusal)
    assert (
        "divergent" in result.reason and "0-1-100" in result.reason and "0-2-100" in result.reason
    )


def test_divergence_between_applied_and_received_is_caught() -> None:
    result = choose_candidate([replica("b", "0-1-100", "0-1-90"), replica("c", "0-1-95", "0-2-90")])
    assert isinstance(result, Refusal) and "divergent" in result.reason


def test_later_writes_by_a_new_server_are_not_divergence() -> None:
    """After an earlier failover, domain 0 continues under server 2."""
    result = choose_candidate([replica("b", "0-1-100"), replica("c", "0-2-130", "0-1-100")])
    assert isinstance(result, Choice) and result.name == "c" and result.backlog == 30


def test_refuses_on_unreadable_gtid() -> None:
    result = choose_candidate([replica("b", "0-1-100"), replica("c", "garbage")])
    assert isinstance(result, Refusal) and result.reason.startswith("c:")


def test_nobody_has_anything_yet() -> None:
    result = choose_candidate([replica("b", ""), replica("c", "")])
    assert isinstance(result, Choice) and result.name == "b" and result.catch_up_to == ""


_positions = st.lists(st.integers(0, 50), min_size=1, max_size=6)


@given(st.lists(st.tuples(_positions, st.booleans()), min_size=1, max_size=5))
def test_a_choice_never_loses_a_transaction_any_live_replica_has(
    rows: list[tuple[list[int], bool]],
) -> None:
    """One linear history (server 1), random received positions and promotability."""
    replicas = [
        replica(f"r{i}", f"0-1-{max(seqs)}", f"0-1-{min(seqs)}", promotable=promotable)
        for i, (seqs, promotable) in enumerate(rows)
    ]
    result = choose_candidate(replicas)
    best = max(max(seqs) for seqs, _ in rows)
    if isinstance(result, Choice):
        chosen = replicas[int(result.name[1:])]
        assert chosen.promotable
        assert parse_gtid_list(result.catch_up_to)[0].seq == best
    else:
        assert not any(max(seqs) == best and p for seqs, p in rows)


# -- is the master really dead? ----------------------------------------------------------


def test_baton_alone_cannot_declare_the_master_dead() -> None:
    assert not master_confirmed_dead(True, [])
    assert not master_confirmed_dead(True, [None, None])


def test_dead_only_when_baton_and_every_reachable_replica_agree() -> None:
    assert master_confirmed_dead(True, [False, False])
    assert master_confirmed_dead(True, [False, None])  # one replica unreachable: no vote
    assert not master_confirmed_dead(True, [False, True])  # a replica still sees it


def test_partition_between_baton_and_master_is_not_death() -> None:
    assert not master_confirmed_dead(True, [True, True])


def test_healthy_from_batons_view_is_never_dead() -> None:
    assert not master_confirmed_dead(False, [False, False])


def test_gtid_missing_names_what_a_history_lacks_per_server() -> None:
    # A former master that rejoined cleanly: everything it has, the master has.
    assert gtid_missing("0-1-105,0-2-130", "0-1-105,0-2-120") == []
    assert gtid_missing("0-1-100", "") == []
    # Its own unreplicated write 0-1-106 (the master got only to 0-1-105, then wrote as 2).
    assert gtid_missing("0-1-105,0-2-130", "0-1-106,0-2-120") == ["0-1-106"]
    # Per domain and per server: another domain, another server id.
    assert gtid_missing("0-1-5,1-1-9", "0-1-5,1-1-10,0-3-1,2-1-1") == ["0-3-1", "1-1-10", "2-1-1"]
    # A seq comparison alone would say yes (130 >= 106): containment is per server.
    assert not gtid_contains("0-2-130", "0-1-106")
    with pytest.raises(GtidError):
        gtid_missing("0-1-1", "zero")


@given(st.dictionaries(st.tuples(st.integers(0, 3), st.integers(1, 4)), st.integers(0, 50)),
       st.dictionaries(st.tuples(st.integers(0, 3), st.integers(1, 4)), st.integers(0, 50)))
def test_gtid_missing_is_empty_exactly_when_every_server_is_covered(
    a: dict[tuple[int, int], int], b: dict[tuple[int, int], int]
) -> None:
    def text(d: dict[tuple[int, int], int]) -> str:
        return ",".join(f"{dom}-{srv}-{seq}" for (dom, srv), seq in d.items())

    covered = all(a.get(k, -1) >= seq for k, seq in b.items())
    assert (gtid_missing(text(a), text(b)) == []) is covered
    assert gtid_contains(text(a), text(b)) is covered
    assert gtid_missing(text(a), text(a)) == []
