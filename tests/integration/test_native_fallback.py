"""The same Baton compiled and interpreted (proxy/native.py): the statement path gives the same
answers either way, and the startup log says which one runs. The rest of the suite runs the
compiled build (./run setup makes it); this file and the interpreted unit pass below keep the
fallback honest."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql
import pytest

from proxy.sandbox import ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess
from tests.support.clients import connector_connect, pymysql_connect, scratch_table

REPO_ROOT = Path(__file__).resolve().parents[2]


def _workload(proc: BatonProcess, table: str) -> list[Any]:
    """Writes, a transaction rolled back, reads from the replicas, multi-results and a
    server-side prepared statement: what each gives, in order."""
    seen: list[Any] = []
    conn = pymysql_connect(proc, client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
    try:
        with conn.cursor() as cur:
            for i in range(20):
                seen.append(cur.execute(f"INSERT INTO {table} (id, v) VALUES ({i}, 'v{i}')"))
            cur.execute("BEGIN")
            cur.execute(f"UPDATE {table} SET v = 'gone' WHERE id < 10")
            cur.execute("ROLLBACK")
            cur.execute(f"SELECT COUNT(*), SUM(v = 'gone') FROM {table} /* master */")
            seen.append(cur.fetchall())
            cur.execute("SELECT 1; SELECT 2, 'two'")
            seen.append(cur.fetchall())
            cur.nextset()
            seen.append(cur.fetchall())
            cur.execute("SET @x = 41")
            cur.execute("SELECT @x + 1")
            seen.append(cur.fetchall())
            with pytest.raises(pymysql.err.ProgrammingError) as info:
                cur.execute("SELECT * FROM no_such_table_here")
            seen.append(info.value.args[0])
    finally:
        conn.close()
    prepared = connector_connect(proc)
    try:
        cur = prepared.cursor(prepared=True)
        cur.execute(f"SELECT v FROM {table} WHERE id = ? /* master */", (7,))
        seen.append(cur.fetchall())
        cur.close()
    finally:
        prepared.close()
    return seen


@pytest.mark.parametrize("mode", ["compiled", "interpreted"])
def test_the_statement_path_answers_alike_compiled_or_interpreted(
    sandbox: ReplicationSandbox, baton: Callable[..., BatonProcess],
    monkeypatch: pytest.MonkeyPatch, mode: str,
) -> None:
    if mode == "interpreted":
        monkeypatch.setenv("BATON_NATIVE", "0")
    else:
        monkeypatch.delenv("BATON_NATIVE", raising=False)
    proc = baton(sandbox)
    hot_path = re.search(r"hot_path=\"?(\w+)", proc.log_text())
    assert hot_path is not None, proc.log_text()
    if mode == "compiled" and hot_path.group(1) != "compiled":
        pytest.fail(f"Baton did not run compiled: {proc.log_text()[-500:]} (./run setup builds it)")
    assert hot_path.group(1) == mode
    with scratch_table(sandbox, "id INT PRIMARY KEY, v VARCHAR(20)") as table:
        seen = _workload(proc, table)
    assert seen == [*[1] * 20, ((20, 0),), ((1,),), ((2, "two"),), ((42,),), 1146, [("v7",)]]


def test_the_unit_suite_passes_interpreted() -> None:
    """Every unit test against the .py files (BATON_NATIVE=0), as on a machine with no C
    compiler: the compiled build must never be the only thing that works."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/unit"],
        cwd=REPO_ROOT, env={**os.environ, "BATON_NATIVE": "0"},
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert re.search(r"\d+ passed", result.stdout), result.stdout[-500:]
