"""Structured log lines: ``key=value`` by default, JSON with ``--log-format json``.

Call sites log with %-style arguments whose format is ``event key=%s key=%s``; the formatter
adds time, level and logger. Passwords never reach a log call.

Argument values come from clients (user names, schema names, SQL) and servers (error texts), so
they are escaped before they reach the line, as logfmt does: control characters become ``\\n``,
``\\r``, ``\\t``, ``\\xHH`` or ``\\uHHHH``, a backslash or quote is escaped, and a value with
spaces is double-quoted. A value can then never start a line of its own nor add a ``key=`` to
the line; in JSON, the fields come from the escaped line and cannot replace ts, level, logger,
msg or event.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping

_CONTROLS: dict[int, str] = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
_CONTROLS.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
_CONTROLS.update({0x2028: "\\u2028", 0x2029: "\\u2029"})  # line breaks to some log viewers
_VALUE = {**_CONTROLS, ord("\\"): "\\\\", ord('"'): '\\"'}
_NEEDS_QUOTES = re.compile(r'[\s"=]')


def escape_value(text: str, *, quote: bool = False) -> str:
    """One field value as it may appear in a kv line: escaped, and quoted when it has spaces,
    quotes or '=' (or when ``quote``)."""
    escaped = text.translate(_VALUE)
    if quote or _NEEDS_QUOTES.search(text):
        return f'"{escaped}"'
    return escaped


def escape_controls(text: str) -> str:
    """Control characters only: for text that is ours but may embed a value (a format string,
    a traceback's message)."""
    return text.translate(_CONTROLS)


class _Field:
    """Wraps a log argument so that %s and %r print it escaped."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return escape_value(str(self.value))

    def __repr__(self) -> str:
        if isinstance(self.value, str):
            return escape_value(self.value, quote=True)
        return escape_value(repr(self.value))


def _wrap(value: object) -> object:
    return value if isinstance(value, int | float) else _Field(value)


def escaped_message(record: logging.LogRecord) -> str:
    """``record.getMessage()`` with every argument escaped."""
    args = record.args
    if not args:
        return escape_controls(str(record.msg))
    if isinstance(args, Mapping):
        escaped: object = {k: _wrap(v) for k, v in args.items()}
    else:
        escaped = tuple(_wrap(a) for a in args)
    try:
        return escape_controls(str(record.msg) % escaped)
    except (TypeError, ValueError):  # a format the wrapper cannot serve (e.g. %x of a str)
        return escape_controls(record.getMessage())


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _indented(text: str) -> str:
    """A traceback below its line: indented, so that no line of it can pass for a log line."""
    return "\n".join("    " + escape_controls(line) for line in text.splitlines())


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"ts={_timestamp(record)} level={record.levelname.lower()} logger={record.name} {escaped_message(record)}"
        if record.exc_info:
            line += "\n" + _indented(self.formatException(record.exc_info))
        return line


# A token of an escaped line: a run of non-space characters and double-quoted strings.
_TOKEN = re.compile(r'(?:[^\s"]|"(?:[^"\\]|\\.)*")+')
_UNESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|.)")
_SIMPLE = {"n": "\n", "r": "\r", "t": "\t"}


def _unescape(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]

    def one(m: re.Match[str]) -> str:
        code = m.group(1)
        if len(code) > 1:
            return chr(int(code[1:], 16))
        return _SIMPLE.get(code, code)

    return _UNESCAPE.sub(one, value)


def fields(message: str) -> dict[str, str]:
    """``key=value`` fields of an escaped line, values unescaped; the first of a key wins."""
    found: dict[str, str] = {}
    for token in _TOKEN.findall(message):
        key, sep, value = token.partition("=")
        if sep and key.isidentifier() and key not in found:
            found[key] = _unescape(value)
    return found


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = escaped_message(record)
        event, _, rest = message.partition(" ")
        doc: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": message,
            "event": event,
        }
        for key, value in fields(rest).items():
            doc.setdefault(key, value)  # a field never replaces ts, level, logger, msg, event
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup(level: str = "info", fmt: str = "kv") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
