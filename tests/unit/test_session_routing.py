"""SessionRouting, the value the router reads: responses, pins, temporary tables, lost
transactions and lost pinned state, reset; and the session state machine, which refuses
impossible moves. In-process, no sockets."""

from __future__ import annotations

import pytest

from proxy.protocol.constants import ServerStatus
from proxy.routing.classifier import Pin, classify
from proxy.routing.session_routing import SessionPin, SessionRouting
from proxy.session.state import (
    COMMAND_STATES,
    ClientState,
    ImpossibleTransition,
    next_state,
    shown_activity,
)

AUTOCOMMIT = int(ServerStatus.AUTOCOMMIT)
IN_TRANS = int(ServerStatus.IN_TRANS | ServerStatus.AUTOCOMMIT)


def test_a_fresh_session_is_free_to_move() -> None:
    s = SessionRouting()
    assert s.autocommit and not s.in_transaction and s.free_to_move_between_statements


def test_responses_open_and_close_the_transaction_where_it_runs() -> None:
    s = SessionRouting()
    s.responded(IN_TRANS, "db1")
    assert (s.trx_backend, s.last_backend, s.in_transaction) == ("db1", "db1", True)
    assert not s.free_to_move_between_statements
    s.responded(AUTOCOMMIT, "db1")
    assert s.trx_backend is None and not s.in_transaction
    s.responded(0, "db1")  # SET autocommit=0: replayed elsewhere, so nothing ties it
    assert not s.autocommit and s.free_to_move_between_statements
    s.responded(int(ServerStatus.IN_TRANS), "db1")  # its next statement opened a transaction
    assert not s.free_to_move_between_statements and s.trx_backend == "db1"
    s.responded(0, "db1")  # COMMIT: free again until the next statement opens one
    assert s.free_to_move_between_statements and s.trx_backend is None


def test_temp_table_pins_until_the_last_one_is_dropped() -> None:
    s = SessionRouting()
    s.apply(classify(b"CREATE TEMPORARY TABLE a (x INT)"), "db1", ok=True)
    s.apply(classify(b"CREATE TEMPORARY TABLE b (x INT)"), "db1", ok=True)
    assert s.pins == {Pin.TEMP_TABLE: 2} and s.pinned_on == "db1"
    s.apply(classify(b"DROP TABLE a"), "db1", ok=True)
    assert Pin.TEMP_TABLE in s.pins and s.temp_tables == {"b"}
    s.apply(classify(b"DROP TEMPORARY TABLE B"), "db1", ok=True)
    assert s.pins == {} and s.temp_tables == set()


def test_a_failed_create_pins_but_remembers_no_table() -> None:
    s = SessionRouting()
    s.apply(classify(b"CREATE TEMPORARY TABLE a (x INT)"), "db1", ok=False)
    assert s.temp_tables == set() and Pin.TEMP_TABLE in s.pins


def test_sql_prepare_counts_each_statement() -> None:
    s = SessionRouting()
    s.apply(classify(b"PREPARE s1 FROM 'SELECT 1'"), "db1", ok=True)
    s.apply(classify(b"PREPARE s2 FROM 'SELECT 2'"), "db1", ok=True)
    s.apply(classify(b"DEALLOCATE PREPARE s1"), "db1", ok=True)
    assert s.pins == {Pin.SQL_PREPARE: 1}
    s.apply(classify(b"DEALLOCATE PREPARE s2"), "db1", ok=True)
    assert s.pins == {}


def test_found_rows_does_not_pin_the_session() -> None:
    s = SessionRouting()
    s.apply(classify(b"SELECT SQL_CALC_FOUND_ROWS * FROM t"), "db2", ok=True)
    assert s.pins == {}


def test_session_pins_read_as_their_names() -> None:
    s = SessionRouting()
    s.pin(SessionPin.UNREPLAYABLE_SET, "db1")
    s.pin(Pin.GET_LOCK, "db1")
    assert s.pinned_reason() == "unreplayable_set,get_lock"


def test_losing_the_transaction_backend_reports_once_and_carries_on() -> None:
    s = SessionRouting()
    s.responded(IN_TRANS, "db1")
    s.backend_gone("db2")  # another backend: nothing lost
    assert s.trx_lost is None and s.in_transaction
    s.backend_gone("db1")
    assert (s.trx_lost, s.trx_backend, s.in_transaction) == ("db1", None, False)


def test_pinned_state_dies_with_its_backend() -> None:
    s = SessionRouting()
    s.apply(classify(b"CREATE TEMPORARY TABLE a (x INT)"), "db1", ok=True)
    s.backend_gone("db1")
    assert s.pins == {} and s.temp_tables == set() and s.pinned_on is None
    assert s.state_lost == "temp_table held on db1 were lost with it"


def test_clear_forgets_everything_that_tied_the_session() -> None:
    s = SessionRouting(consistency="session", causal_gtid="0-1-2", pin_next=True)
    s.responded(IN_TRANS, "db1")
    s.pin(Pin.LOCK_TABLES, "db1")
    s.named_locks(classify(b"SELECT GET_LOCK('a', 0)"), "db1", True, (b"1",))
    s.clear()
    assert s.last_backend == "db1"  # where the previous statement ran is still true
    assert s == SessionRouting(last_backend="db1")


def test_named_locks_pin_by_name_until_the_last_is_released() -> None:
    s = SessionRouting()
    s.named_locks(classify(b"SELECT GET_LOCK('a', 0)"), "db1", True, (b"1",))
    s.named_locks(classify(b"SELECT GET_LOCK('b', 0)"), "db1", True, None)  # value unread
    assert s.pins == {Pin.GET_LOCK: 1} and s.pinned_on == "db1"
    s.named_locks(classify(b"SELECT RELEASE_LOCK('a')"), "db1", True, (b"1",))
    assert not s.free_to_move_between_statements
    s.named_locks(classify(b"SELECT RELEASE_LOCK('b')"), "db1", True, (b"1",))
    assert s.pins == {} and s.free_to_move_between_statements
    s.named_locks(classify(b"SELECT GET_LOCK('a', 0)"), "db1", True, (b"0",))  # timed out
    assert s.pins == {}


def test_the_classifiers_get_lock_pin_is_left_to_named_locks() -> None:
    s = SessionRouting()
    s.apply(classify(b"SELECT GET_LOCK('a', 0)"), "db1", ok=True)
    assert s.pins == {}  # named_locks decides, with the statement's value
    s.named_locks(classify(b"SELECT GET_LOCK(@n, 0)"), "db1", True, None)
    s.named_locks(classify(b"SELECT RELEASE_LOCK('x')"), "db1", True, (b"1",))
    assert s.pins == {Pin.GET_LOCK: 1}  # a name it could not read: until RELEASE_ALL_LOCKS
    s.apply(classify(b"SELECT RELEASE_ALL_LOCKS()"), "db1", ok=True)
    s.named_locks(classify(b"SELECT RELEASE_ALL_LOCKS()"), "db1", True, (b"1",))
    assert s.pins == {}


def test_a_lost_backend_takes_its_named_locks() -> None:
    s = SessionRouting()
    s.named_locks(classify(b"SELECT GET_LOCK('a', 0)"), "db1", True, (b"1",))
    s.backend_gone("db1")
    assert s.pins == {} and not s.locks.pinned and s.state_lost is not None


# -- the state machine -------------------------------------------------------------------------

S = ClientState
LEGAL = [
    (S.LOGIN, S.WAITING),
    (S.WAITING, S.IDLE),
    (S.IDLE, S.ACTIVE),
    (S.ACTIVE, S.IDLE),
    (S.ACTIVE, S.WAITING),
    (S.WAITING, S.ACTIVE),
    (S.ACTIVE, S.INFILE),
    (S.INFILE, S.ACTIVE),
    (S.ACTIVE, S.LOGIN),
    (S.IDLE, S.CLOSED),
    (S.LOGIN, S.CLOSED),
    (S.INFILE, S.CLOSED),
]
IMPOSSIBLE = [
    (S.LOGIN, S.IDLE),
    (S.LOGIN, S.ACTIVE),
    (S.IDLE, S.WAITING),
    (S.IDLE, S.INFILE),
    (S.IDLE, S.LOGIN),
    (S.INFILE, S.WAITING),
    (S.CLOSED, S.IDLE),
    (S.CLOSED, S.CLOSED),
    (S.WAITING, S.INFILE),
    (S.IDLE, S.IDLE),
]


@pytest.mark.parametrize(("old", "new"), LEGAL, ids=[f"{a.name}->{b.name}" for a, b in LEGAL])
def test_legal_moves(old: ClientState, new: ClientState) -> None:
    assert next_state(old, new) is new


@pytest.mark.parametrize(
    ("old", "new"), IMPOSSIBLE, ids=[f"{a.name}->{b.name}" for a, b in IMPOSSIBLE]
)
def test_impossible_moves_raise_naming_both_states(old: ClientState, new: ClientState) -> None:
    with pytest.raises(ImpossibleTransition) as info:
        next_state(old, new)
    assert old.name in str(info.value) and new.name in str(info.value)


def test_every_state_but_closed_can_close() -> None:
    for state in ClientState:
        if state is not S.CLOSED:
            assert next_state(state, S.CLOSED) is S.CLOSED


def test_commands_queue_only_once_logged_in() -> None:
    assert COMMAND_STATES == {S.IDLE, S.WAITING, S.ACTIVE}


def test_show_clients_says_waiting_only_while_a_command_has_no_backend_yet() -> None:
    shown = {state: shown_activity(state, in_transaction=False) for state in ClientState}
    assert shown == {
        S.LOGIN: "login",
        S.IDLE: "idle",
        S.WAITING: "waiting",
        S.ACTIVE: "active",
        S.INFILE: "active",
        S.CLOSED: "idle",
    }
    assert shown_activity(S.IDLE, in_transaction=True) == "in-transaction"
    assert shown_activity(S.WAITING, in_transaction=True) == "waiting"  # the command first
