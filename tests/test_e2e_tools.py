"""The usual command-line tools through Baton: the mariadb client, mysqlslap and sysbench.

They use MariaDB Connector/C, a third client implementation besides PyMySQL and
mysql-connector-python, with its own ideas about capabilities, multi-statements and prepared
statements (sysbench prepares every statement).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from test_e2e_core import AUTH_PLUGINS, launch_baton, one_auth_plugin, scratch_table

from proxy.sandbox import ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess


@pytest.fixture(scope="module", params=AUTH_PLUGINS)
def proxy(
    request: pytest.FixtureRequest,
    sandbox: ReplicationSandbox,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BatonProcess]:
    with launch_baton(
        sandbox, tmp_path_factory.mktemp("baton-tools"), proxy={"auth_plugin": request.param}
    ) as process:
        yield process


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def mariadb_cli(
    proxy: BatonProcess, *args: str, script: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`mariadb` against Baton in batch mode (tab-separated output, no boxes); ``script`` is
    fed on stdin, where --force goes on after an error (it does not with -e)."""
    return subprocess.run(
        [
            _tool("mariadb"),
            "-h127.0.0.1",
            f"-P{proxy.proxy_port}",
            "-uapp",
            "-papp",
            "--batch",
            "--skip-ssl",
            *args,
        ],
        input=script,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- mariadb client --------------------------------------------------------------------------


def test_mariadb_cli_batch_output(proxy: BatonProcess) -> None:
    result = mariadb_cli(
        proxy,
        "test",
        "-e",
        "SELECT 1 AS a, 'x y' AS b, NULL AS c; SELECT seq FROM seq_1_to_3; "
        "SELECT CURRENT_USER() AS who, DATABASE() AS db",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "a\tb\tc\n1\tx y\tNULL\nseq\n1\n2\n3\nwho\tdb\napp@%\ttest\n"
    assert result.stderr == ""


def test_mariadb_cli_reports_a_server_error_and_carries_on(proxy: BatonProcess) -> None:
    result = mariadb_cli(
        proxy, "--force", "test", script="SELECT * FROM no_such_table_e2e;\nSELECT 'after' AS x;\n"
    )
    assert "ERROR 1146 (42S02) at line 1" in result.stderr
    assert result.stdout == "x\nafter\n"


def test_mariadb_cli_load_data_local_infile(
    proxy: BatonProcess, sandbox: ReplicationSandbox, tmp_path: Path
) -> None:
    data = tmp_path / "rows.csv"
    data.write_text("".join(f"{i},row-{i}\n" for i in range(1, 100_001)))
    with scratch_table(sandbox, "id INT PRIMARY KEY, v VARCHAR(20)") as table:
        result = mariadb_cli(
            proxy,
            "--local-infile=1",
            "-e",
            f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE {table} FIELDS TERMINATED BY ','",
        )
        assert result.returncode == 0, result.stderr
        assert sandbox.master.sql(f"SELECT COUNT(*), SUM(id) FROM {table}") == [
            (100_000, Decimal(5_000_050_000))
        ]


def test_mariadb_cli_local_infile_of_a_missing_file(
    proxy: BatonProcess, sandbox: ReplicationSandbox, tmp_path: Path
) -> None:
    with scratch_table(sandbox, "id INT") as table:
        result = mariadb_cli(
            proxy,
            "--local-infile=1",
            "--force",
            script=f"LOAD DATA LOCAL INFILE '{tmp_path / 'absent.csv'}' INTO TABLE {table};\n"
            f"SELECT COUNT(*) AS n FROM {table};\n",
        )
        assert "absent.csv' not found" in result.stderr  # the client's own error
        assert result.stdout == "n\n0\n"  # same session, still in step


# --- load tools ------------------------------------------------------------------------------


@one_auth_plugin
@pytest.mark.slow
def test_mysqlslap_fifty_concurrent_clients(proxy: BatonProcess) -> None:
    result = subprocess.run(
        [
            _tool("mysqlslap"),
            "-h127.0.0.1",
            f"--port={proxy.proxy_port}",
            "--user=app",
            "--password=app",
            "--concurrency=50",
            "--iterations=3",
            "--auto-generate-sql",
            "--create-schema=e2e_slap",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "error" not in output.lower(), output
    assert "Number of clients running queries: 50" in result.stdout, output


def _sysbench_stat(output: str, name: str) -> int:
    match = re.search(rf"^\s*{name}:\s+(\d+)", output, re.MULTILINE)
    assert match is not None, f"no '{name}' in sysbench output:\n{output}"
    return int(match.group(1))


@one_auth_plugin
@pytest.mark.slow
def test_sysbench_oltp_read_write_sixteen_threads(
    proxy: BatonProcess, sandbox: ReplicationSandbox
) -> None:
    sysbench = _tool("sysbench")
    # Uniform row choice: sysbench's default hot-spot distribution makes InnoDB deadlocks (which
    # sysbench counts as "ignored errors") happen even when connected straight to the server.
    common = [
        "oltp_read_write",
        "--mysql-user=app",
        "--mysql-password=app",
        "--mysql-db=test",
        "--tables=4",
        "--table-size=10000",
        "--rand-type=uniform",
    ]
    master = ["--mysql-host=127.0.0.1", f"--mysql-port={sandbox.master.port}"]
    subprocess.run(
        [sysbench, *common, *master, "prepare"], check=True, capture_output=True, timeout=300
    )
    try:
        sandbox.wait_caught_up(timeout=60)
        result = subprocess.run(
            [
                sysbench,
                *common,
                "--mysql-host=127.0.0.1",
                f"--mysql-port={proxy.proxy_port}",
                "--threads=16",
                "--time=30",
                "--report-interval=0",
                "run",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        subprocess.run([sysbench, *common, *master, "cleanup"], capture_output=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "FATAL" not in output, output
    assert _sysbench_stat(output, "transactions") > 0
    assert _sysbench_stat(output, "ignored errors") == 0, output
    assert _sysbench_stat(output, "reconnects") == 0, output
