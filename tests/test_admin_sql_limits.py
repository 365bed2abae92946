"""The admin port's SELECT may call only the SQLite functions on an allow-list (never
fts3_tokenizer, load_extension, readfile, randomblob...) and returns at most a bounded number
of rows and bytes, refusing more with an error that says so. Unit tests of run_select, then a
real Baton's admin port through PyMySQL."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import pymysql
import pytest
from test_admin import app_connect

from proxy.admin.tables import ALLOWED_FUNCTIONS, QueryRefused, Table, run_select
from proxy.sandbox import ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess, admin_rows

SOURCES = {"stats": lambda: Table(("variable", "value"), [(f"v{i}", i) for i in range(20)])}
DENIED = [
    "SELECT hex(fts3_tokenizer('simple'))",
    "SELECT load_extension('/tmp/x.so')",
    "SELECT readfile('/etc/passwd')",
    "SELECT writefile('/tmp/x', 'y')",
    "SELECT length(randomblob(10))",
    "SELECT length(zeroblob(10))",
    "SELECT sqlite_version()",
    "SELECT sqlite_compileoption_used('ENABLE_FTS3')",
    "SELECT * FROM stats WHERE value = (SELECT fts3_tokenizer('simple'))",
]
WIDE = "SELECT printf('%.*c', 1000000, 'x') AS wide FROM stats a, stats b"


@pytest.mark.parametrize("sql", DENIED)
def test_functions_off_the_allow_list_are_refused(sql: str) -> None:
    with pytest.raises(QueryRefused, match="not authorized|no such function"):
        run_select(SOURCES, sql)


def test_ordinary_functions_work() -> None:
    sql = (
        "SELECT count(*), sum(value), avg(value), max(value), group_concat(variable, ''), "
        "upper(min(variable)), coalesce(NULL, 1), round(1.5), typeof(1), "
        "datetime(0, 'unixepoch') FROM stats"
    )
    [row] = run_select(SOURCES, sql).rows
    assert row[:4] == (20, 190, 9.5, 19) and row[5:] == ("V0", 1, 2.0, "integer", "1970-01-01 00:00:00")
    ranks = run_select(SOURCES, "SELECT rank() OVER (ORDER BY value DESC) FROM stats LIMIT 1")
    assert ranks.rows == [(1,)]
    assert {"count", "fts3_tokenizer"} & ALLOWED_FUNCTIONS == {"count"}


def test_results_are_capped_in_bytes() -> None:
    started = time.monotonic()
    with pytest.raises(QueryRefused, match="larger than 1000000 bytes"):
        run_select(SOURCES, WIDE, max_bytes=1_000_000)
    assert time.monotonic() - started < 2
    assert len(run_select(SOURCES, "SELECT * FROM stats", max_bytes=1000).rows) == 20


def test_a_refused_result_is_never_held_whole() -> None:
    """The byte cap is checked row by row: 400 rows of 1 MB are refused holding ~8 MiB, not
    400 MB (tracemalloc sees the row values Python holds)."""
    tracemalloc.start()
    try:
        with pytest.raises(QueryRefused, match="larger than"):
            run_select(SOURCES, WIDE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.0f} MiB"


@pytest.fixture
def proc(sandbox: ReplicationSandbox, baton: Any) -> BatonProcess:
    return baton(sandbox)


@pytest.mark.parametrize("sql", ["SELECT hex(fts3_tokenizer('simple'))",
                                 "SELECT load_extension('x') FROM stats"])
def test_admin_port_refuses_dangerous_functions(proc: BatonProcess, sql: str) -> None:
    with pytest.raises(pymysql.err.ProgrammingError) as caught:
        admin_rows(proc, sql)
    code, message = caught.value.args
    assert code == 1064 and "not authorized to use function" in message


def test_admin_port_refuses_a_wide_result_and_clients_carry_on(proc: BatonProcess) -> None:
    client = app_connect(proc)
    started = time.monotonic()
    with pytest.raises(pymysql.err.ProgrammingError) as caught:
        admin_rows(proc, WIDE)
    elapsed = time.monotonic() - started
    assert caught.value.args[0] == 1064
    assert "result larger than 8388608 bytes" in caught.value.args[1]
    assert elapsed < 3, elapsed
    with client.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    client.close()
    assert admin_rows(proc, "SELECT count(*) AS n FROM stats")[0]["n"] > 0
