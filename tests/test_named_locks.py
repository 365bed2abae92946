"""Named locks tracked by name (issue 11, item 2): the classifier reads the literal lock names of
GET_LOCK / RELEASE_LOCK / RELEASE_ALL_LOCKS / IS_FREE_LOCK / IS_USED_LOCK, and NamedLocks keeps a
session pinned exactly while it may hold one. The last test checks NamedLocks against a real
MariaDB: whatever the statements, it never says "unpinned" while the server says the connection
holds a lock."""

from __future__ import annotations

import random

import pymysql
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymysql.constants import CLIENT

from proxy.routing.classifier import Classification, LockCall, Pin, classify
from proxy.routing.classifier import LockFunction as F
from proxy.routing.named_locks import NamedLocks
from proxy.sandbox import ReplicationSandbox

GET, REL, ALL = F.GET_LOCK, F.RELEASE_LOCK, F.RELEASE_ALL_LOCKS
FREE, USED = F.IS_FREE_LOCK, F.IS_USED_LOCK


def calls(*pairs: tuple[F, str]) -> tuple[LockCall, ...]:
    return tuple(LockCall(f, n) for f, n in pairs)


# (sql, lock_calls, exact, unknown)
LOCK_CASES = [
    (b"SELECT GET_LOCK('a', 0)", calls((GET, "a")), True, False),
    (b"select get_lock ( 'a' , 10 )", calls((GET, "a")), True, False),
    (b"SeLeCt GeT_lOcK('Job', 1.5) AS got", calls((GET, "Job")), True, False),
    (b"SELECT GET_LOCK('a', -1) `r`", calls((GET, "a")), True, False),
    (b"SELECT GET_LOCK('a', @t) r FROM DUAL;", calls((GET, "a")), True, False),
    (b"DO GET_LOCK('a', NULL)", calls((GET, "a")), True, False),
    (
        b"/* baton:master */ SELECT /* x */ GET_LOCK/**/('a', 1) -- c",
        calls((GET, "a")),
        True,
        False,
    ),
    (b"# c\nSELECT GET_LOCK('a',1)", calls((GET, "a")), True, False),
    (b"/*!50000 SELECT GET_LOCK('a', 1) */", calls((GET, "a")), True, False),
    # quoting and escapes: the name is the string's value
    (b"SELECT GET_LOCK('a''b', 0)", calls((GET, "a'b")), True, False),
    (b'SELECT GET_LOCK("x", 0)', calls((GET, "x")), True, False),
    (b'SELECT GET_LOCK("say ""hi""", 0)', calls((GET, 'say "hi"')), True, False),
    (b"SELECT GET_LOCK('\"q\"', 0)", calls((GET, '"q"')), True, False),
    (b"SELECT GET_LOCK('a\\\\b', 0)", calls((GET, "a\\b")), True, False),
    (b"SELECT GET_LOCK('tab\\tnl\\n\\x', 0)", calls((GET, "tab\tnl\nx")), True, False),
    (b"SELECT GET_LOCK('50\\%', 0)", calls((GET, "50\\%")), True, False),
    (b"SELECT GET_LOCK('', 0)", calls((GET, "")), True, False),
    (b"SELECT GET_LOCK('Abc ', 0)", calls((GET, "Abc ")), True, False),  # exact: MariaDB too
    (b"SELECT GET_LOCK('caf\xc3\xa9', 0)", calls((GET, "caf\u00e9")), True, False),
    (b"SELECT GET_LOCK('-- not a comment', 0)", calls((GET, "-- not a comment")), True, False),
    (b"SELECT GET_LOCK('RELEASE_LOCK(x)', 0)", calls((GET, "RELEASE_LOCK(x)")), True, False),
    # the other functions, several calls, multi-statements
    (b"SELECT RELEASE_LOCK('a')", calls((REL, "a")), True, False),
    (b"DO RELEASE_LOCK('a')", calls((REL, "a")), True, False),
    (b"SELECT RELEASE_ALL_LOCKS()", calls((ALL, "")), True, False),
    (
        b"SELECT IS_FREE_LOCK('a'), IS_USED_LOCK('b') u",
        calls((FREE, "a"), (USED, "b")),
        True,
        False,
    ),
    (
        b"SELECT GET_LOCK('a', 0), GET_LOCK('b', 0), RELEASE_LOCK('a')",
        calls((GET, "a"), (GET, "b"), (REL, "a")),
        True,
        False,
    ),
    # calls that may run any number of times: names kept, not exact
    (b"SELECT GET_LOCK('a', 0) FROM t", calls((GET, "a")), False, False),
    (b"SELECT GET_LOCK('a', 0) FROM DUAL WHERE 0", calls((GET, "a")), False, False),
    (b"SELECT 0 AND RELEASE_LOCK('a')", calls((REL, "a")), False, False),
    (b"SELECT IF(GET_LOCK('a', 0), 1, 0)", calls((GET, "a")), False, False),
    (b"SELECT GET_LOCK('a', 0) INTO @got", calls((GET, "a")), False, False),
    (b"SELECT GET_LOCK('a', 0) LIMIT 0", calls((GET, "a")), False, False),
    (b"SELECT SQL_NO_CACHE GET_LOCK('a', 0)", calls((GET, "a")), False, False),
    (b"SELECT (GET_LOCK('a', 0))", calls((GET, "a")), False, False),
    (b"SET @got = GET_LOCK('a', 5)", calls((GET, "a")), False, False),
    (b"INSERT INTO t SELECT GET_LOCK('a', 1)", calls((GET, "a")), False, False),
    (b"ANALYZE SELECT GET_LOCK('a', 0)", calls((GET, "a")), False, False),  # rows: the plan
    (b"EXPLAIN ANALYZE SELECT GET_LOCK('a', 0)", calls((GET, "a")), False, False),
    (
        b"SET STATEMENT max_statement_time=1 FOR SELECT GET_LOCK('a', 0)",
        calls((GET, "a")),
        True,
        False,
    ),
    (b"UPDATE t SET a = RELEASE_LOCK('a')", calls((REL, "a")), False, False),
    # names that are not one string literal
    (b"SELECT GET_LOCK(CONCAT('job', 1), 0)", (), False, True),
    (b"SELECT GET_LOCK(@name, 0)", (), False, True),
    (b"SELECT GET_LOCK('a' 'b', 0)", (), False, True),  # adjacent literals concatenate
    (b"SELECT GET_LOCK(N'a', 0)", (), False, True),
    (b"SELECT GET_LOCK(_utf8mb4'a', 0)", (), False, True),
    (b"SELECT GET_LOCK(X'61', 0)", (), False, True),
    (b"SELECT db.GET_LOCK('a', 0)", (), False, True),  # a stored function
    (b"SELECT GET_LOCK('it\\'s', 0)", (), False, True),  # the two string readings disagree
    (b"SELECT RELEASE_LOCK(@name)", (), False, False),  # a release we cannot match: ignored
    (b"SELECT GET_LOCK(@n, 0), GET_LOCK('b', 0)", calls((GET, "b")), False, True),
    # not lock calls at all
    (b"SELECT 'GET_LOCK(\\'a\\', 0)'", (), False, False),
    (b"SELECT `GET_LOCK`('a', 0)", (), False, False),
    (b"SELECT my_get_lock('a', 0)", (), False, False),
    (b"EXPLAIN SELECT GET_LOCK('a', 0)", (), False, False),  # not executed
    (b"SELECT 1 -- GET_LOCK('a', 0)", (), False, False),
]


@pytest.mark.parametrize(
    ("sql", "lock_calls", "exact", "unknown"),
    LOCK_CASES,
    ids=[c[0].decode("latin-1")[:60] for c in LOCK_CASES],
)
def test_lock_calls(sql: bytes, lock_calls: tuple[LockCall, ...], exact: bool, unknown: bool):
    c = classify(sql)
    assert (c.lock_calls, c.lock_calls_exact, c.lock_names_unknown) == (lock_calls, exact, unknown)


def test_router_fields_are_unchanged() -> None:
    # today's pins stay for the router: the lock fields are additive
    assert (
        classify(b"SELECT GET_LOCK('a', 0)").pin,
        classify(b"SELECT GET_LOCK('a', 0)").unpin,
    ) == (
        Pin.GET_LOCK,
        None,
    )
    assert classify(b"SELECT RELEASE_ALL_LOCKS()").unpin is Pin.GET_LOCK
    assert classify(b"SELECT RELEASE_LOCK('a')").pin is None


def test_summary_properties() -> None:
    c = classify(
        b"SELECT GET_LOCK('a', 0), RELEASE_LOCK('b'), RELEASE_ALL_LOCKS(), GET_LOCK('c', 1)"
    )
    assert (c.locks_taken, c.locks_released, c.release_all_locks) == (("a", "c"), ("b",), True)
    assert classify(b"SELECT 1").locks_taken == ()


def test_multi_statement_keeps_each_statement_calls() -> None:
    c = classify(b"SELECT GET_LOCK('a', 0); SELECT 1; DO RELEASE_LOCK('a')")
    assert [p.lock_calls for p in c.parts] == [calls((GET, "a")), (), calls((REL, "a"))]
    assert [p.lock_calls_exact for p in c.parts] == [True, False, True]
    assert c.lock_calls == calls((GET, "a"), (REL, "a")) and not c.lock_calls_exact
    c = classify(b"SELECT GET_LOCK(@x, 0); SELECT 2")
    assert c.lock_names_unknown and c.parts[0].lock_names_unknown


def test_without_multi_statements_the_head_statement_decides() -> None:
    c = classify(b"SELECT GET_LOCK('a', 0); SELECT RELEASE_LOCK('a')", multi_statements=False)
    assert not c.lock_calls_exact  # the ";" is not an alias or FROM DUAL
    assert c.locks_taken == ("a",)


# ------------------------------------------------------------------ NamedLocks


def run(locks: NamedLocks, sql: bytes, ok: bool = True, row=None) -> bool:
    return locks.apply(classify(sql), ok, row)


def test_take_and_release_unpins() -> None:
    locks = NamedLocks()
    assert run(locks, b"SELECT GET_LOCK('a', 0)")
    assert locks.names == ("a",)
    assert not run(locks, b"SELECT RELEASE_LOCK('a')")


def test_locks_are_recursive_and_per_name() -> None:
    locks = NamedLocks()
    run(locks, b"SELECT GET_LOCK('a', 0)")
    run(locks, b"SELECT GET_LOCK('a', 0)")
    run(locks, b"SELECT GET_LOCK('b', 0)")
    assert run(locks, b"SELECT RELEASE_LOCK('a')")
    assert run(locks, b"SELECT RELEASE_LOCK('A')")  # another name: 'a' is still held once
    assert run(locks, b"SELECT RELEASE_LOCK('a')")  # 'b' still held
    assert not run(locks, b"DO RELEASE_LOCK('b')")


def test_get_lock_returning_0_or_null_takes_nothing() -> None:
    locks = NamedLocks()
    assert not run(locks, b"SELECT GET_LOCK('a', 0)", row=[b"0"])
    assert not run(locks, b"SELECT GET_LOCK('a', 0)", row=[None])
    assert run(locks, b"SELECT GET_LOCK('a', 0)", row=[b"1"])


def test_unknown_get_lock_result_counts_as_taken() -> None:
    locks = NamedLocks()
    assert run(locks, b"SELECT GET_LOCK('a', 0)", ok=False)  # it may have run
    assert run(locks, b"SELECT RELEASE_LOCK('a')", ok=False)  # may not have run: kept
    assert not run(locks, b"SELECT RELEASE_LOCK('a')")


def test_release_result_0_or_null_means_none_held() -> None:
    locks = NamedLocks()
    run(locks, b"SELECT GET_LOCK('a', 0), GET_LOCK('a', 0)")
    assert run(locks, b"SELECT RELEASE_LOCK('a')", row=[b"1"])
    locks2 = NamedLocks()
    run(locks2, b"SELECT GET_LOCK('a', 0), GET_LOCK('a', 0)")
    assert not run(locks2, b"SELECT RELEASE_LOCK('a')", row=[None])
    run(locks2, b"SELECT GET_LOCK('a', 0) FROM t")  # unbounded
    assert run(locks2, b"SELECT RELEASE_LOCK('a')", row=[b"1"])
    assert not run(locks2, b"SELECT RELEASE_LOCK('a')", row=[b"0"])


def test_release_all_and_is_free_unpin() -> None:
    locks = NamedLocks()
    run(locks, b"SELECT GET_LOCK('a', 0) FROM t")
    run(locks, b"SELECT GET_LOCK(@x, 0)")
    assert run(locks, b"SELECT RELEASE_LOCK('a')")  # unbounded count: still held
    assert not run(locks, b"SELECT RELEASE_ALL_LOCKS()")
    run(locks, b"SELECT GET_LOCK('a', 0) FROM t")
    assert run(locks, b"SELECT IS_FREE_LOCK('a')", row=[b"0"])
    assert run(locks, b"SELECT IS_FREE_LOCK('a')")  # value not read: nothing learnt
    assert not run(locks, b"SELECT IS_FREE_LOCK('a')", row=[b"1"])
    run(locks, b"SELECT GET_LOCK('a', 0)")
    assert run(locks, b"SELECT IS_USED_LOCK('a')", row=[b"17"])
    assert not run(locks, b"SELECT IS_USED_LOCK('a')", row=[None])


def test_conservative_cases_stay_pinned() -> None:
    locks = NamedLocks()
    run(locks, b"SELECT GET_LOCK('a', 0)")
    assert run(locks, b"SELECT 0 AND RELEASE_LOCK('a')")  # maybe never ran
    assert run(locks, b"SELECT IF(1, RELEASE_ALL_LOCKS(), 0)")  # not exact: kept
    assert run(locks, b"SELECT RELEASE_ALL_LOCKS()", ok=False)
    locks.clear()  # the backend connection was lost
    assert not locks.pinned
    assert run(locks, b"SELECT GET_LOCK(CONCAT('a', 1), 0)")
    assert run(locks, b"SELECT RELEASE_LOCK(CONCAT('a', 1))")
    assert not run(locks, b"DO RELEASE_ALL_LOCKS()")


def test_calls_run_in_order() -> None:
    locks = NamedLocks()
    assert run(locks, b"SELECT RELEASE_ALL_LOCKS(), GET_LOCK('b', 0)")
    assert not run(locks, b"SELECT GET_LOCK('c', 0), RELEASE_ALL_LOCKS()")
    assert not run(locks, b"SELECT GET_LOCK('d', 0), RELEASE_LOCK('d')", row=[b"1", b"1"])


def test_multi_statement_applies_each_part() -> None:
    locks = NamedLocks()
    assert run(locks, b"SELECT GET_LOCK('a', 0); SELECT GET_LOCK('b', 0); DO RELEASE_LOCK('a')")
    assert locks.names == ("b",)
    assert run(locks, b"DO RELEASE_LOCK('b'); SELECT 1", ok=False)  # a part failed
    assert not run(locks, b"DO RELEASE_LOCK('b'); SELECT 1")


def test_a_row_of_the_wrong_shape_is_ignored() -> None:
    locks = NamedLocks()
    assert run(locks, b"SELECT GET_LOCK('a', 0)", row=[b"0", b"0"])  # treated as unknown
    assert run(locks, b"SELECT GET_LOCK('b', 0)", row=[b"yes"])


# ------------------------------------------------------------------ properties

FRAGMENTS = [
    b"SELECT ",
    b"DO ",
    b"SET @v = ",
    b"GET_LOCK(",
    b"RELEASE_LOCK(",
    b"RELEASE_ALL_LOCKS(",
    b"IS_FREE_LOCK(",
    b"IS_USED_LOCK(",
    b"'a'",
    b"'b'",
    b'"a"',
    b"'a''b'",
    b"'\\''",
    b"\\",
    b"'",
    b'"',
    b"`",
    b", 0)",
    b")",
    b"(",
    b",",
    b" ",
    b"AS r",
    b" FROM DUAL",
    b" FROM t",
    b";",
    b"/*",
    b"*/",
    b"-- ",
    b"\n",
    b"#",
    b"@x",
    b"CONCAT(",
    b"db.",
    b"/*!50000 ",
    b"N",
]
sql_like = st.lists(st.sampled_from(FRAGMENTS), max_size=30).map(b"".join)


def _parts(c: Classification) -> tuple[Classification, ...]:
    return c.parts or (c,)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=120), sql_like), st.lists(st.sampled_from([b"1", b"0", None])))
def test_arbitrary_sql_never_raises_and_never_loses_a_get_lock(sql: bytes, row) -> None:
    c = classify(sql)
    locks = NamedLocks()
    locks.apply(c, True, row)
    locks.apply(c, False, None)
    for part in _parts(c):
        # whatever the router pins for GET_LOCK, NamedLocks pins too
        if part.pin is Pin.GET_LOCK:
            assert part.locks_taken or part.lock_names_unknown, sql
        if part.lock_calls_exact:
            assert part.lock_calls and not part.lock_names_unknown


def _literal(name: str, quote: str, backslash_quote: bool) -> bytes:
    """name as a string literal (server default: backslash escapes); the quote itself is
    escaped either by doubling or with a backslash."""
    body = name.replace("\\", "\\\\")
    body = body.replace(quote, ("\\" if backslash_quote else quote) + quote)
    return (quote + body + quote).encode("utf-8", "surrogateescape")


names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)


@settings(max_examples=400, deadline=None)
@given(names, st.sampled_from(["'", '"']), st.booleans())
def test_literal_names_round_trip(name: str, quote: str, backslashes: bool) -> None:
    lit = _literal(name, quote, backslashes)
    c = classify(b"SELECT GET_LOCK(" + lit + b", 0), RELEASE_LOCK(" + lit + b")")
    if b"\\" in lit and not c.lock_calls:
        assert c.lock_names_unknown  # the two string readings disagree: conservative
        return
    assert c.lock_calls == calls((GET, name), (REL, name)) and c.lock_calls_exact
    locks = NamedLocks()
    assert not locks.apply(c, True, [b"1", b"1"])


# ------------------------------------------------------------------ against MariaDB

LOCK_NAMES = ["a", "A", "a ", "b", "it's"]


def _random_statement(rng: random.Random) -> bytes:
    """One statement a session might send, drawn from shapes NamedLocks treats differently."""
    name = rng.choice(LOCK_NAMES).replace("'", "''")
    call = rng.choice(
        [
            f"GET_LOCK('{name}', 0)",
            f"RELEASE_LOCK('{name}')",
            f"IS_FREE_LOCK('{name}')",
            f"IS_USED_LOCK('{name}')",
            "RELEASE_ALL_LOCKS()",
        ]
    )
    shape = rng.choice(
        [
            "SELECT {c}",
            "SELECT {c}, {c2}",
            "DO {c}",
            "SELECT {c} FROM (SELECT 1 UNION SELECT 2 UNION SELECT 3) t",
            "SELECT {c} FROM (SELECT 1 AS x) t WHERE x > 5",
            "SELECT 0 AND {c}",
            "SELECT GET_LOCK(CONCAT('{n}', ''), 0)",
            "SELECT RELEASE_LOCK(CONCAT('{n}', ''))",
            "SELECT {c}; SELECT {c2}",
        ]
    )
    other = rng.choice(LOCK_NAMES).replace("'", "''")
    c2 = rng.choice([f"GET_LOCK('{other}', 0)", f"RELEASE_LOCK('{other}')"])
    return shape.format(c=call, c2=c2, n=name).encode()


def test_never_unpinned_while_the_server_says_a_lock_is_held(sandbox: ReplicationSandbox) -> None:
    m = sandbox.master
    session = pymysql.connect(
        unix_socket=str(m.socket), user="root", client_flag=CLIENT.MULTI_STATEMENTS
    )
    watcher = m.connect()
    session_id = session.thread_id()
    rng = random.Random(11)
    locks = NamedLocks()
    try:
        with session.cursor() as cur, watcher.cursor() as w:
            for _ in range(400):
                sql = _random_statement(rng)
                c = classify(sql)
                ok, row = True, None
                try:
                    cur.execute(sql.decode())
                    rows = cur.fetchall()
                    while cur.nextset():
                        cur.fetchall()
                    if c.lock_calls_exact and len(rows) == 1 and rng.random() < 0.7:
                        row = [None if v is None else str(v).encode() for v in rows[0]]
                except pymysql.MySQLError:
                    ok = False
                pinned = locks.apply(c, ok, row)
                w.execute("SELECT " + ", ".join("IS_USED_LOCK(%s)" for _ in LOCK_NAMES), LOCK_NAMES)
                holders = w.fetchone()
                held = [n for n, h in zip(LOCK_NAMES, holders, strict=True) if h == session_id]
                assert pinned or not held, (sql, held)
            # and it is precise on the plain shapes: release everything, then nothing pins
            cur.execute("SELECT RELEASE_ALL_LOCKS()")
            assert not locks.apply(classify(b"SELECT RELEASE_ALL_LOCKS()"), True, None)
            cur.execute("SELECT GET_LOCK('z', 0)")
            assert locks.apply(classify(b"SELECT GET_LOCK('z', 0)"), True, [b"1"])
            cur.execute("SELECT RELEASE_LOCK('z')")
            assert not locks.apply(classify(b"SELECT RELEASE_LOCK('z')"), True, [b"1"])
    finally:
        session.close()
        watcher.close()
