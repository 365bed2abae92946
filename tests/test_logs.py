"""Log lines cannot be forged: every argument is escaped in kv format, and in JSON a value can
neither add a field nor replace ts/level/logger/msg/event. Unit tests of the formatters, then a
real Baton that logs a refused login of a user named with a newline, quotes and backslashes."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pymysql
import pytest

from proxy.logs import JsonFormatter, KeyValueFormatter, escape_value, fields
from proxy.sandbox import ReplicationSandbox
from proxy.sandbox.baton_process import BatonProcess, wait_for

FORGED = 'bob\nts=2026-01-01T00:00:00.000Z level=error logger=baton admin_login user=root\\ "x"'


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad\nts=forged level=error")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("baton", logging.INFO, __file__, 1, msg, args, exc_info)


def test_kv_value_cannot_start_a_line_or_add_a_field() -> None:
    line = KeyValueFormatter().format(record("login_refused client=%s user=%s peer=%s", 7, FORGED, "h:1"))
    assert "\n" not in line
    assert fields(line) == {
        "ts": fields(line)["ts"], "level": "info", "logger": "baton", "client": "7",
        "user": FORGED, "peer": "h:1",
    }
    assert 'user="bob\\nts=2026' in line and '\\\\ \\"x\\""' in line


@pytest.mark.parametrize("char", ["\r", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\t"])
def test_every_control_character_is_escaped(char: str) -> None:
    line = KeyValueFormatter().format(record("event user=%s", f"a{char}b"))
    assert char not in line
    assert fields(line)["user"] == f"a{char}b"


def test_repr_arguments_are_escaped_too() -> None:
    line = KeyValueFormatter().format(record("event error=%r other=%r", FORGED, OSError("x\ny")))
    assert "\n" not in line
    assert fields(line)["error"] == FORGED
    assert fields(line)["other"] == repr(OSError("x\ny"))


def test_plain_values_stay_plain() -> None:
    line = KeyValueFormatter().format(record("listening address=%s n=%d", "127.0.0.1:6033", 3))
    assert line.endswith("listening address=127.0.0.1:6033 n=3")
    assert escape_value("") == "" and escape_value("a b") == '"a b"'


def test_traceback_lines_cannot_pass_for_log_lines() -> None:
    text = KeyValueFormatter().format(record("event", exc=True))
    assert all(line.startswith("    ") for line in text.splitlines()[1:])
    assert "bad\\nts=forged" in text


def test_json_fields_cannot_override_the_reserved_ones() -> None:
    doc = json.loads(JsonFormatter().format(
        record("login_refused client=%s user=%s peer=%s", 7, "x level=error event=admin_login", "p")
    ))
    assert (doc["level"], doc["event"], doc["logger"]) == ("info", "login_refused", "baton")
    assert doc["user"] == "x level=error event=admin_login"
    doc = json.loads(JsonFormatter().format(record("event msg=%s user=%s", "fake", FORGED)))
    assert doc["msg"].startswith("event msg=fake") and doc["user"] == FORGED
    assert doc["event"] == "event"


@pytest.mark.parametrize("fmt", ["kv", "json"])
def test_a_refused_login_with_a_forged_user_name_logs_one_line(
    fmt: str, sandbox: ReplicationSandbox,
    baton: Callable[..., BatonProcess],
) -> None:
    proc = baton(sandbox, admin={"listen": ""}, log={"format": fmt, "level": "info"})
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(host="127.0.0.1", port=proc.proxy_port, user=FORGED, password="nope",
                        connect_timeout=5)
    refused = wait_for(lambda: [ln for ln in proc.log_text().splitlines() if "login_refused" in ln],
                       what="login_refused in the log")
    lines = proc.log_text().splitlines()
    assert not any(ln.startswith(("ts=2026-01-01", '{"ts": "2026-01-01')) for ln in lines), lines
    assert not any("admin_login" in ln and "login_refused" not in ln for ln in lines), lines
    [line] = refused
    if fmt == "json":
        doc = json.loads(line)
        assert doc["user"] == FORGED and doc["level"] == "info" and doc["event"] == "login_refused"
    else:
        assert fields(line)["user"] == FORGED and fields(line)["level"] == "info"
