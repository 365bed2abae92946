"""Statement classifier: what a COM_QUERY is, so the router knows where it may run.

This runs for every query, so it never parses SQL. A handful of precompiled regexes find
the head keyword and the few constructs that matter for routing: locking reads, lock and
sequence functions, user-variable assignment, and session state set by ``SET``. Anything
not recognised is a WRITE, the safe default. ``classify()`` never raises.

Lexical rules, and why they are safe:

- Leading whitespace and comments (``-- ``, ``#``, ``/* */``) are skipped, so a keyword in
  a comment never decides the kind. ``/*!50000 ... */`` and ``/*M!100100 ... */`` (also
  ``/*m!``) are code whatever their version: reading a version-gated fragment as executed
  can only make a statement look more like a write or a locking read.
- String literals and quoted identifiers are opaque: ``SELECT 'FOR UPDATE'`` is a plain
  read. Strings are lexed with backslash escapes (the server default) and, when the
  statement holds a backslash, also as under NO_BACKSLASH_ESCAPES; the scan for
  master-only constructs takes the union of both readings, so ``'C:\\' FOR UPDATE`` is
  master-only either way, and a statement that is not already a write is split into
  several if either reading says so. SET values assume backslash escapes.
- A ``;`` outside strings and comments followed by more code makes a multi-statement:
  each statement is classified into ``parts`` and the summary is READ or SESSION only if
  every part is. Compound bodies (``CREATE PROCEDURE ... BEGIN ...; END``) are split too,
  which is conservative: their head part is already a WRITE.

Conservative false positives (master-only or WRITE where a parser would say otherwise):
a bare or qualified column named ``nextval``/``currval`` (Oracle-mode sequence syntax), a
stored function named like a built-in lock/sequence function, version-gated code the
server would skip, a string with a backslash-escaped quote followed by a master-only
keyword (``'it\\'s FOR UPDATE'``), and ``WITH c AS (...) (SELECT ...)`` with a
parenthesised main query.

Not decided here: RELEASE_LOCK() releases one named lock, so it does not unpin; when a
statement creates several pins, ``pin`` names the one no statement releases
(USER_VAR_ASSIGN before FOUND_ROWS before ... GET_LOCK). Which named locks a session holds
is for ``proxy.routing.named_locks``: ``lock_calls`` lists the calls of GET_LOCK,
RELEASE_LOCK, RELEASE_ALL_LOCKS, IS_FREE_LOCK and IS_USED_LOCK whose name is a string
literal (read with backslash escapes, like SET values; a statement whose two string readings
disagree yields none), ``lock_names_unknown`` says a GET_LOCK name could not be read, and
``lock_calls_exact`` says each call runs exactly once with its value in its own column.
Reads of temporary tables are the router's business: it gets ``temp_table`` and
``dropped_tables``. A write longer than 64 KiB (a bulk load) is scanned for pins in its
first 64 KiB only.

Hints (``/* baton:master */``, ``/* baton:replica */``, ``/* baton:replica=db2 */``, any
case) are honoured only in the comments before the first keyword; the first one wins.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from itertools import islice
from typing import Final

__all__ = [
    "Classification",
    "Hint",
    "Kind",
    "LockCall",
    "LockFunction",
    "Pin",
    "SetItem",
    "classify",
    "is_literal",
]

_log = logging.getLogger(__name__)


class Kind(Enum):
    READ = "read"
    WRITE = "write"
    SESSION = "session"
    USE = "use"
    BEGIN = "begin"
    COMMIT = "commit"
    ROLLBACK = "rollback"
    SAVEPOINT = "savepoint"
    XA = "xa"
    LOCK_TABLES = "lock_tables"
    UNLOCK_TABLES = "unlock_tables"
    PREPARE = "prepare"
    EXECUTE = "execute"
    DEALLOCATE = "deallocate"
    OTHER = "other"  # empty or comment-only statement: nothing to run

    # Members are singletons compared by identity: hash them as objects. Enum's own
    # __hash__ is a Python function (hash of the name), called on every dict or set lookup.
    __hash__ = object.__hash__


class Pin(Enum):
    """Server-side state that exists only on the backend that created it."""

    TEMP_TABLE = "temp_table"
    LOCK_TABLES = "lock_tables"  # LOCK TABLES and FLUSH TABLES ... WITH READ LOCK
    GET_LOCK = "get_lock"
    USER_VAR_ASSIGN = "user_var_assign"
    SQL_PREPARE = "sql_prepare"
    FOUND_ROWS = "found_rows"
    HANDLER = "handler"  # HANDLER t OPEN keeps a cursor open
    XA = "xa"  # XA START .. XA COMMIT/ROLLBACK

    __hash__ = object.__hash__  # as Kind's


class LockFunction(Enum):
    """The server's named-lock functions (GET_LOCK and friends)."""

    GET_LOCK = "get_lock"
    RELEASE_LOCK = "release_lock"
    RELEASE_ALL_LOCKS = "release_all_locks"
    IS_FREE_LOCK = "is_free_lock"
    IS_USED_LOCK = "is_used_lock"


@dataclass(frozen=True, slots=True)
class LockCall:
    """One call of a named-lock function whose lock name is a string literal.

    name is the lock's name as the server sees it: quotes removed, doubled quotes and
    backslash escapes decoded (decoded UTF-8 with surrogateescape); "" for RELEASE_ALL_LOCKS.
    Names are compared exactly: MariaDB's lock names are case- and space-sensitive.
    """

    function: LockFunction
    name: str = ""


@dataclass(frozen=True, slots=True)
class Hint:
    target: str  # "master" | "replica"
    name: str | None = None  # a backend name, for "replica=db2"


@dataclass(frozen=True, slots=True)
class SetItem:
    """One assignment of a SET statement.

    scope is "session", "global", "user", "names", "charset" or "transaction". name is
    lower-case without ``@``/``@@``/scope prefixes. value is the original SQL text of the
    expression, trimmed (decoded UTF-8 with surrogateescape, so it round-trips to bytes).

    - ``SET NAMES cs [COLLATE co]`` gives ("names", "charset", cs) and ("names",
      "collation", co); ``SET CHARACTER SET cs`` gives ("charset", "charset", cs).
    - ``SET SESSION TRANSACTION ...`` gives ("transaction", "isolation_level", "READ
      COMMITTED") and/or ("transaction", "access_mode", "READ ONLY"); the bare
      ``SET TRANSACTION ...``, which affects only the next transaction, gives the same
      with names "next_isolation_level" / "next_access_mode"; ``SET GLOBAL TRANSACTION``
      gives scope "global".
    """

    scope: str
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class KillRequest:
    """A KILL statement as Baton answers it. Its number is a Baton connection id (the one in
    the greeting); on a backend it would name another thread, so a KILL is never forwarded:
    either ``target`` is resolved among Baton's sessions, or ``unsupported`` says which form
    Baton refuses (KILL USER, KILL QUERY ID, an expression, ...)."""

    target: int = 0
    query_only: bool = False
    unsupported: str = ""


@dataclass(frozen=True, slots=True)
class Classification:
    kind: Kind
    master_only: bool  # must run on the master (always true for WRITE)
    pin: Pin | None  # state created that ties the session to the master
    unpin: Pin | None  # state released; if pin is also set, apply unpin first
    hint: Hint | None
    read_only_trx: bool  # START TRANSACTION READ ONLY
    session_vars: tuple[SetItem, ...]
    schema: str | None  # USE
    temp_table: str | None  # CREATE TEMPORARY TABLE (as written, "db.t" or "t")
    dropped_tables: tuple[str, ...]  # DROP [TEMPORARY] TABLE; may drop a temp table
    statement_name: str | None  # PREPARE / EXECUTE / DEALLOCATE (lower-case)
    reads_last_statement: bool  # SHOW WARNINGS, GET DIAGNOSTICS, @@warning_count
    parts: tuple[Classification, ...]  # one per statement of a multi-statement
    # CREATE/ALTER/DROP/RENAME/TRUNCATE: a replica that has not applied it fails reads.
    ddl: bool
    # Any KILL: Baton answers it (or refuses it), it is never sent (see ``KillRequest``).
    kill: KillRequest | None
    # Only ``SET @baton_consistency = ...``: Baton's own setting, never sent to a backend.
    local: bool
    # Named locks (see the "named locks" section): literal-name calls, in statement order.
    lock_calls: tuple[LockCall, ...]
    lock_calls_exact: bool  # each call runs once; SELECT: column i is call i's value
    lock_names_unknown: bool  # a GET_LOCK whose name is not a string literal

    def __init__(
        self,
        kind: Kind,
        master_only: bool = False,
        pin: Pin | None = None,
        unpin: Pin | None = None,
        hint: Hint | None = None,
        read_only_trx: bool = False,
        session_vars: tuple[SetItem, ...] = (),
        schema: str | None = None,
        temp_table: str | None = None,
        dropped_tables: tuple[str, ...] = (),
        statement_name: str | None = None,
        reads_last_statement: bool = False,
        parts: tuple[Classification, ...] = (),
        ddl: bool = False,
        kill: KillRequest | None = None,
        local: bool = False,
        lock_calls: tuple[LockCall, ...] = (),
        lock_calls_exact: bool = False,
        lock_names_unknown: bool = False,
    ) -> None:
        # Written out, not generated: compiled (proxy/native.py) this runs in C; the
        # dataclass-generated __init__ stays interpreted (3.7 us, half of a statement's
        # classification when it is not cached). As a frozen dataclass's own __init__ does,
        # fields are set through object.__setattr__.
        _set = object.__setattr__
        _set(self, "kind", kind)
        _set(self, "master_only", master_only)
        _set(self, "pin", pin)
        _set(self, "unpin", unpin)
        _set(self, "hint", hint)
        _set(self, "read_only_trx", read_only_trx)
        _set(self, "session_vars", session_vars)
        _set(self, "schema", schema)
        _set(self, "temp_table", temp_table)
        _set(self, "dropped_tables", dropped_tables)
        _set(self, "statement_name", statement_name)
        _set(self, "reads_last_statement", reads_last_statement)
        _set(self, "parts", parts)
        _set(self, "ddl", ddl)
        _set(self, "kill", kill)
        _set(self, "local", local)
        _set(self, "lock_calls", lock_calls)
        _set(self, "lock_calls_exact", lock_calls_exact)
        _set(self, "lock_names_unknown", lock_names_unknown)

    @property
    def multi_statement(self) -> bool:
        return bool(self.parts)

    @property
    def locks_taken(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.lock_calls if c.function is LockFunction.GET_LOCK)

    @property
    def locks_released(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.lock_calls if c.function is LockFunction.RELEASE_LOCK)

    @property
    def release_all_locks(self) -> bool:
        return any(c.function is LockFunction.RELEASE_ALL_LOCKS for c in self.lock_calls)


# ---------------------------------------------------------------------------- lexing

# Single bytes as ints: ``59 in raw`` is a memchr, while ``b";" in raw`` first tries the
# argument as an int, raises and clears a TypeError, then searches (158 ns against 17).
_SEMICOLON: Final = ord(";")
_BACKSLASH: Final = ord("\\")
_AT: Final = ord("@")
_BACKTICK: Final = ord("`")
_DQUOTE: Final = ord('"')
_QUOTE: Final = ord("'")
_HASH: Final = ord("#")

# One token regex serves two scrubs. Executable-comment openers and the ``*/`` that
# closes them are removed while their content stays. ``--`` starts a comment only when
# followed by a space or control character, as in the server.
_TOKENS: Final = r"""
    {sq}
  | {dq}
  | `(?:[^`]++|``)*+`?
  | /\*[Mm]?!\d*
  | /\*.*?(?:\*/|\Z)
  | \*/
  | \#[^\n]*
  | --(?=[\x00-\x20]|\Z)[^\n]*
"""
_TOKEN_BS: Final = re.compile(
    _TOKENS.format(sq=r"'(?:[^'\\]++|\\.|'')*+'?", dq=r'"(?:[^"\\]++|\\.|"")*+"?').encode(),
    re.S | re.X,
)
_TOKEN_NBE: Final = re.compile(  # NO_BACKSLASH_ESCAPES reading
    _TOKENS.format(sq=r"'(?:[^']++|'')*+'?", dq=r'"(?:[^"]++|"")*+"?').encode(),
    re.S | re.X,
)


# One statement: code up to a ``;`` outside strings and comments. Matching whole
# statements keeps splitting at C speed, however many literals a bulk INSERT holds.
_STATEMENT: Final = r"(?:[^;'\"`/*\#\-]++|{tokens}|[/*\#\-])*+"
_STATEMENT_BS: Final = re.compile(
    _STATEMENT.format(tokens=_TOKEN_BS.pattern.decode()).encode(), re.S | re.X
)
_STATEMENT_NBE: Final = re.compile(
    _STATEMENT.format(tokens=_TOKEN_NBE.pattern.decode()).encode(), re.S | re.X
)


def _blank_token(m: re.Match[bytes]) -> bytes:
    tok = m.group()
    q = tok[0]
    n = len(tok)
    if q == 0x27 or q == 0x22 or q == 0x60:  # ' " `
        if n >= 2 and tok[-1] == q:
            return tok[:1] + b"x" * (n - 2) + tok[-1:]
        return tok[:1] + b"x" * (n - 1)
    return b" " * n


def _blank(raw: bytes, nbe: bool = False) -> bytes:
    """Same length as raw: comments become spaces, quoted content becomes ``x``.

    Offsets match raw, so names and values found here are sliced from raw.
    """
    return (_TOKEN_NBE if nbe else _TOKEN_BS).sub(_blank_token, raw)


_HEAD: Final = re.compile(
    rb"""(?:[\s(]++ | /\*[Mm]?!\d* | /\*.*?(?:\*/|\Z) | \*/ | \#[^\n]* | --(?=[\x00-\x20]|\Z)[^\n]*)*+
         ([A-Za-z_][A-Za-z0-9_]*)?""",
    re.S | re.X,
)
_HINT: Final = re.compile(rb"\bbaton:(master|replica)\b(?:=([A-Za-z0-9_.\-]+))?", re.I)

_IDENT: Final = rb"(?:`x*`|\"x*\"|[A-Za-z0-9_$\x80-\xff]+)"
_QNAME: Final = rb"(?P<a>" + _IDENT + rb")(?:\s*\.\s*(?P<b>" + _IDENT + rb"))?"


def _unquote(tok: bytes) -> str:
    q = tok[:1]
    if q in (b"`", b'"', b"'") and len(tok) >= 2 and tok[-1:] == q:
        tok = tok[1:-1].replace(q + q, q)
    return tok.decode("utf-8", "surrogateescape")


def _qname(raw: bytes, m: re.Match[bytes]) -> str:
    name = _unquote(raw[m.start("a") : m.end("a")])
    if m.group("b") is not None:
        name += "." + _unquote(raw[m.start("b") : m.end("b")])
    return name


def _text(raw: bytes, k: bytes, start: int, end: int) -> str | None:
    """raw[start:end] trimmed of whitespace and comments (found blank in k)."""
    seg = k[start:end]
    lead = len(seg) - len(seg.lstrip())
    trail = len(seg) - len(seg.rstrip())
    if lead == len(seg):
        return None
    return raw[start + lead : end - trail].decode("utf-8", "surrogateescape")


# ------------------------------------------------------------------- results

_PIN_RANK: Final = {  # one statement may create several pins; report the one never released
    Pin.USER_VAR_ASSIGN: 0,
    Pin.FOUND_ROWS: 1,
    Pin.TEMP_TABLE: 2,
    Pin.SQL_PREPARE: 3,
    Pin.HANDLER: 4,
    Pin.XA: 5,
    Pin.LOCK_TABLES: 6,
    Pin.GET_LOCK: 7,
}


def _pick(current: Pin | None, new: Pin | None) -> Pin | None:
    if current is None:
        return new
    if new is None or _PIN_RANK[current] <= _PIN_RANK[new]:
        return current
    return new


_READ_KIND: Final = Kind.READ
_WRITE_KIND: Final = Kind.WRITE
_PLAIN: Final = {(kind, mo): Classification(kind, master_only=mo) for kind in Kind for mo in (False, True)}
_WRITE: Final = _PLAIN[Kind.WRITE, True]


def _plain(kind: Kind, hint: Hint | None, master_only: bool = False) -> Classification:
    if hint is None:
        return _PLAIN[kind, master_only]
    return _result(kind, master_only, None, None, hint, False)


def _write(hint: Hint | None) -> Classification:
    return _PLAIN[Kind.WRITE, True] if hint is None else _plain(Kind.WRITE, hint, True)


# --------------------------------------------------------- master-only scan
# The scan runs on the flattened, upper-cased statement. Python's regex engine has no
# multi-keyword search, so the pattern starts with a non-word character: the engine
# then tries the alternatives (a trie by first letter, each a single literal compare
# when it fails) only at word starts. ``@@`` and ``:=`` fit the same mould: the leading
# class takes the first character and a lookbehind checks it.
# Flattened text starts with the head keyword, never with an interesting word.

_SCAN: Final = re.compile(
    rb"""[^A-Z0-9_$\x80-\xff]
    (?: F(?: OR\s+(?:UPDATE|SHARE)\b
           | OUND_ROWS\s*\( )
      | L(?: OCK\s+IN\s+SHARE\s+MODE\b
           | AST(?:_INSERT_ID|VAL)\s*\( )
      | I(?: NTO\b\s*(?:@(?P<into_var>))?
           | S_(?:USED|FREE)_LOCK\s*\( )
      | GET_LOCK\s*\((?P<get_lock>)
      | R(?: ELEASE_ALL_LOCKS\s*\((?P<release_all>)
           | ELEASE_LOCK\s*\(
           | OW_COUNT\s*\( )
      | NEXT(?: VAL\b                      # NEXTVAL(s), and s.nextval in Oracle mode
              | \s+VALUE\s+FOR\b )
      | CURRVAL\b
      | PREVIOUS\s+VALUE\s+FOR\b
      | S(?: ETVAL\s*\(
           | OURCE_POS_WAIT\s*\(
           | QL_CALC_FOUND_ROWS\b(?P<calc>) )
      | MASTER_(?:GTID|POS)_WAIT\s*\(
      | WAIT_(?:FOR_EXECUTED_GTID_SET|UNTIL_SQL_THREAD_AFTER_GTIDS)\s*\(
      | =(?<=:=)(?P<assign>)               # outside SET, only a user-variable assignment
      | @(?<=@@)(?:SESSION\s*\.\s*|LOCAL\s*\.\s*)?
          (?: (?:WARNING|ERROR)_COUNT\b(?P<diag>)
            | (?:IDENTITY|LAST_INSERT_ID|INSERT_ID|LAST_GTID)\b )
    )""",
    re.X,
)

# (master_only, pin, unpin, reads_last_statement)
_Effects = tuple[bool, Pin | None, Pin | None, bool]


def _scan(u: bytes) -> _Effects | None:
    """Effects of the flattened, upper-cased statement u; None if there are none."""
    m = _SCAN.search(u)
    if m is None:
        return None
    master_only = last = False
    pin = unpin = None
    while m is not None:
        g = m.lastgroup
        if g == "diag":
            last = True
        else:
            master_only = True
            if g == "into_var" or g == "assign":
                pin = _pick(pin, Pin.USER_VAR_ASSIGN)
            elif g == "get_lock":
                pin = _pick(pin, Pin.GET_LOCK)
            elif g == "calc":
                pin = _pick(pin, Pin.FOUND_ROWS)
            elif g == "release_all":
                unpin = Pin.GET_LOCK
        m = _SCAN.search(u, m.end() - 1)  # its last char may start the next word
    return master_only, pin, unpin, last


def _merge(a: _Effects | None, b: _Effects | None) -> _Effects | None:
    if a is None or b is None:
        return a or b
    return a[0] or b[0], _pick(a[1], b[1]), a[2] or b[2], a[3] or b[3]


def _effects(raw: bytes) -> _Effects | None:
    # Flatten: each string, quoted identifier and comment becomes one space.
    eff = _scan(_TOKEN_BS.sub(b" ", raw).upper())
    if _BACKSLASH in raw:
        eff = _merge(eff, _scan(_TOKEN_NBE.sub(b" ", raw).upper()))
    return eff


_RESULTS: Final[dict[tuple[object, ...], Classification]] = {}


def _result(
    kind: Kind,
    master_only: bool,
    pin: Pin | None,
    unpin: Pin | None,
    hint: Hint | None,
    last: bool,
) -> Classification:
    """Shared instance per combination: building a 13-field frozen dataclass costs µs."""
    key = (kind, master_only, pin, unpin, hint, last)
    c = _RESULTS.get(key)
    if c is None:
        c = Classification(
            kind,
            master_only=master_only,
            pin=pin,
            unpin=unpin,
            hint=hint,
            reads_last_statement=last,
        )
        if len(_RESULTS) < 1024:  # hint names come from clients: stay bounded
            _RESULTS[key] = c
    return c


def _scanned(kind: Kind, raw: bytes, hint: Hint | None) -> Classification:
    master_only = kind is _WRITE_KIND
    eff = _effects(raw)
    if eff is None:
        if hint is None:
            return _PLAIN[kind, master_only]
        return _result(kind, master_only, None, None, hint, False)
    mo, pin, unpin, last = eff
    c = _result(kind, master_only or mo, pin, unpin, hint, last)
    return _with_locks(c, raw) if mo else c


# ------------------------------------------------------------------ named locks
# Lock functions are rare, so their names are read only when the scan found a master-only
# construct and a cheap search sees a lock function. The session (proxy/routing/named_locks.py)
# tracks names from these calls. What it may trust depends on how often a call runs:
# ``SELECT GET_LOCK('a', 0) FROM t`` takes the lock once per row (MariaDB's locks are
# recursive), and ``SELECT 0 AND RELEASE_LOCK('a')`` never releases. Only a statement made of
# nothing but calls (``SELECT|DO call [[AS] alias], ... [FROM DUAL]``) runs each call exactly
# once, and for SELECT its single row holds call i's value in column i: lock_calls_exact.

_LOCK_FUNCTIONS: Final = {f.value.upper().encode(): f for f in LockFunction}
_LOCK_HINT: Final = re.compile(rb"_LOCK", re.I)  # cheap pre-check on raw
_LOCK_FN: Final = re.compile(
    rb"(?<![A-Za-z0-9_$\x80-\xff])(GET_LOCK|RELEASE_LOCK|RELEASE_ALL_LOCKS|IS_FREE_LOCK"
    rb"|IS_USED_LOCK)\s*\(",
    re.I,
)
# A literal name alone as the first argument: not N'..', _cs'..', 'a' 'b', CONCAT(..).
_LOCK_NAME: Final = re.compile(rb"\s*('x*'|\"x*\")\s*(?=[,)])")
_LOCK_ARGS: Final = rb"""\s*\(\s*(?:'x*'|"x*")\s*"""
_LOCK_TIMEOUT: Final = rb"(?:[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|NULL|@@?[\w$.]+)"
_LOCK_ALIAS: Final = (
    rb"""(?:\s*(?:AS\b\s*)?(?!FROM\b)(?:[A-Za-z_$\x80-\xff][\w$\x80-\xff]*|`x*`|'x*'|"x*"))?"""
)
_LOCK_ONE: Final = (
    rb"(?:GET_LOCK" + _LOCK_ARGS + rb",\s*" + _LOCK_TIMEOUT + rb"\s*\)"
    rb"|(?:RELEASE_LOCK|IS_FREE_LOCK|IS_USED_LOCK)" + _LOCK_ARGS + rb"\)"
    rb"|RELEASE_ALL_LOCKS\s*\(\s*\))" + _LOCK_ALIAS
)
_LOCK_EXACT: Final = re.compile(
    rb"\s*(?:SELECT|DO)\s+" + _LOCK_ONE + rb"(?:\s*,\s*" + _LOCK_ONE + rb")*"
    rb"(?:\s+FROM\s+DUAL\b)?[\s;]*\Z",
    re.I,
)
_ESCAPES: Final = {
    ord("0"): b"\0",
    ord("b"): b"\b",
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
    ord("Z"): b"\x1a",
    ord("%"): b"\\%",  # kept with their backslash, for LIKE patterns
    ord("_"): b"\\_",
}
_ESCAPE: Final = re.compile(rb"\\(.)", re.S)


def _string_value(literal: bytes) -> str:
    """The value of a quoted string literal, read with backslash escapes (the default)."""
    q = literal[:1]
    body = literal[1:-1]
    if _BACKSLASH in body:
        parts = []
        pos = 0
        for m in _ESCAPE.finditer(body):  # doubled quotes never hold a backslash
            parts.append(body[pos : m.start()].replace(q + q, q))
            c = m.group(1)[0]
            parts.append(_ESCAPES.get(c, m.group(1)))
            pos = m.end()
        parts.append(body[pos:].replace(q + q, q))
        body = b"".join(parts)
    else:
        body = body.replace(q + q, q)
    return body.decode("utf-8", "surrogateescape")


# (calls with literal names, exact, a GET_LOCK whose name could not be read)
_LockScan = tuple[tuple[LockCall, ...], bool, bool]


def _lock_scan(raw: bytes, k: bytes) -> _LockScan:
    """The lock calls of raw, found in k (raw blanked by one of the two string readings)."""
    calls: list[LockCall] = []
    unknown = False
    for m in _LOCK_FN.finditer(k):
        function = _LOCK_FUNCTIONS[m.group(1).upper()]
        if k[: m.start()].rstrip().endswith(b"."):  # db.get_lock(): a stored function
            unknown = unknown or function is LockFunction.GET_LOCK
        elif function is LockFunction.RELEASE_ALL_LOCKS:
            calls.append(LockCall(function))
        elif (n := _LOCK_NAME.match(k, m.end())) is not None:
            calls.append(LockCall(function, _string_value(raw[n.start(1) : n.end(1)])))
        else:
            unknown = unknown or function is LockFunction.GET_LOCK
    exact = bool(calls) and not unknown and _LOCK_EXACT.match(k) is not None
    return tuple(calls), exact, unknown


def _with_locks(c: Classification, raw: bytes) -> Classification:
    """c with the named-lock calls of raw (one statement), if it has any."""
    if _LOCK_HINT.search(raw) is None:
        return c
    calls, exact, unknown = scan = _lock_scan(raw, _blank(raw))
    if _BACKSLASH in raw:  # read as NO_BACKSLASH_ESCAPES too: trust only what both readings see
        other = _lock_scan(raw, _blank(raw, nbe=True))
        if other != scan:
            taken = any(x.function is LockFunction.GET_LOCK for x in calls + other[0])
            calls, exact, unknown = (), False, unknown or other[2] or taken
    if not calls and not unknown:
        return c
    return replace(c, lock_calls=calls, lock_calls_exact=exact, lock_names_unknown=unknown)


# ------------------------------------------------------------------ handlers
# Each takes (raw, pos after the head keyword, hint, depth) and returns a result.

_MAX_DEPTH: Final = 4  # SET STATEMENT / EXPLAIN ANALYZE / multi-statement nesting


def _read(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    return _scanned(_READ_KIND, raw, hint)


# A write runs on the master whatever the scan finds; the scan only looks for pins. Like
# ProxySQL (query_digests_max_query_length = 64 KB), bulk statements are looked at up to a
# limit, so a multi-megabyte INSERT does not hold the event loop for milliseconds.
_WRITE_SCAN_LIMIT: Final = 64 * 1024


def _dml(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    return _scanned(_WRITE_KIND, raw[:_WRITE_SCAN_LIMIT], hint)


def _help(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    return _plain(Kind.READ, hint)


_SHOW_DIAG: Final = re.compile(rb"\s*(?:COUNT\s*\(\s*\*\s*\)\s*)?(?:WARNINGS|ERRORS)\b", re.I)
_SHOW_BINLOG: Final = re.compile(rb"\s*(?:MASTER|BINARY|BINLOG)\b", re.I)


def _show(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    k = _blank(raw)
    if _SHOW_DIAG.match(k, pos):
        return _result(Kind.READ, False, None, None, hint, True)
    # a replica answers SHOW MASTER STATUS / BINLOG EVENTS about its own binlog
    return _plain(Kind.READ, hint, _SHOW_BINLOG.match(k, pos) is not None)


def _executed(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    """EXPLAIN ANALYZE / ANALYZE <stmt> runs the statement: it is what it runs."""
    inner = _classify(raw[pos:], depth + 1, hint)
    if inner.kind is Kind.READ and not inner.parts:
        # its rows describe the plan, not the calls' values
        return replace(inner, lock_calls_exact=False) if inner.lock_calls_exact else inner
    return Classification(
        Kind.WRITE,
        master_only=True,
        pin=inner.pin,
        unpin=inner.unpin,
        hint=hint,
        lock_calls=inner.lock_calls,
        lock_names_unknown=inner.lock_names_unknown,
    )


_EXPLAIN_OPTS: Final = re.compile(
    rb"(?:\s++|EXTENDED\b|PARTITIONS\b|FORMAT\s*=\s*[A-Za-z]+\b|(?P<analyze>ANALYZE)\b)*+", re.I
)


def _explain(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    # Plain EXPLAIN/DESCRIBE does not execute, even for UPDATE/DELETE/INSERT.
    m = _EXPLAIN_OPTS.match(_blank(raw), pos)
    assert m is not None  # matches the empty string
    if m.group("analyze"):
        return _executed(raw, m.end(), hint, depth)
    return _plain(Kind.READ, hint)


_ANALYZE_TABLE: Final = re.compile(rb"\s*(?:NO_WRITE_TO_BINLOG|LOCAL|TABLES?)\b", re.I)
_ANALYZE_OPTS: Final = re.compile(rb"(?:\s++|FORMAT\s*=\s*[A-Za-z]+\b)*+", re.I)


def _analyze(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    k = _blank(raw)
    if _ANALYZE_TABLE.match(k, pos):
        return _write(hint)
    m = _ANALYZE_OPTS.match(k, pos)
    assert m is not None  # matches the empty string
    return _executed(raw, m.end(), hint, depth)


_WITH_MAIN: Final = re.compile(rb"[()]|\b(SELECT|TABLE|VALUES|UPDATE|DELETE|INSERT|REPLACE)\b", re.I)
_READ_HEADS: Final = frozenset((b"SELECT", b"TABLE", b"VALUES"))


def _top_level(k: bytes, pos: int, pattern: re.Pattern[bytes]) -> re.Match[bytes] | None:
    """First match of pattern's group 1 outside parentheses; pattern also matches [()]."""
    depth = 0
    for m in pattern.finditer(k, pos):
        c = k[m.start()]
        if c == 0x28:
            depth += 1
        elif c == 0x29:
            depth -= 1
        elif depth == 0:
            return m
    return None


def _with(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    # The main statement follows the CTE list at parenthesis depth 0. A parenthesised
    # main query (``WITH c AS (...) (SELECT ...)``) is not found and falls to WRITE.
    m = _top_level(_blank(raw), pos, _WITH_MAIN)
    if m is None:
        return _write(hint)
    kind = Kind.READ if m.group(1).upper() in _READ_HEADS else Kind.WRITE
    return _scanned(kind, raw, hint)


# -------------------------------------------------------------------- SET

_SET_STATEMENT: Final = re.compile(rb"\s*STATEMENT\b", re.I)
_FOR_OR_PAREN: Final = re.compile(rb"[()]|\b(FOR)\b", re.I)
_SET_TRX: Final = re.compile(rb"\s*(?:(GLOBAL|SESSION|LOCAL)\s+)?TRANSACTION\b", re.I)
_TRX_CHAR: Final = re.compile(
    rb"""\s*(?:ISOLATION\s+LEVEL\s+(?P<level>READ\s+UNCOMMITTED|READ\s+COMMITTED
                                    |REPEATABLE\s+READ|SERIALIZABLE)
             |(?P<mode>READ\s+ONLY|READ\s+WRITE))\b\s*(?P<comma>,)?""",
    re.I | re.X,
)
_SPLIT: Final = re.compile(rb"[(),]")
_VAR: Final = rb"[A-Za-z0-9_$\x80-\xff]+(?:\.[A-Za-z0-9_$\x80-\xff]+)?|`x*`"
_SET_TARGET: Final = re.compile(
    rb"""\s*(?:(?P<kw>GLOBAL|SESSION|LOCAL|PERSIST|PERSIST_ONLY)\s+)?
    (?: (?P<names>NAMES)\b
      | (?P<charset>CHARACTER\s+SET|CHARSET)\b
      | @@(?:(?P<scope>GLOBAL|SESSION|LOCAL|PERSIST|PERSIST_ONLY)\s*\.\s*)?(?P<sysvar>"""
    + _VAR
    + rb""")
      | @(?P<user>[A-Za-z0-9_$.\x80-\xff]+|'x*'|"x*"|`x*`)
      | (?P<var>"""
    + _VAR
    + rb""")
    )\s*""",
    re.I | re.X,
)
_ASSIGN: Final = re.compile(rb":?=")
# A number, a string or one word cannot hold a master-only construct: skip the scan.
_SIMPLE_VALUE: Final = re.compile(rb"\s*(?:[-+]?[0-9.]+|'x*'|\"x*\"|[A-Za-z_][A-Za-z0-9_]*)\s*")
_CS: Final = rb"(?:[A-Za-z0-9_$]+|'x*'|\"x*\"|`x*`)"
_NAMES_VALUE: Final = re.compile(
    rb"(?P<cs>" + _CS + rb")(?:\s+COLLATE\s+(?P<co>" + _CS + rb"))?\s*\Z", re.I
)
_CHARSET_VALUE: Final = re.compile(rb"(?P<cs>" + _CS + rb")\s*\Z")
_SCOPES: Final = {
    b"GLOBAL": "global",
    b"PERSIST": "global",
    b"PERSIST_ONLY": "global",
    b"SESSION": "session",
    b"LOCAL": "session",
}
_NOT_VARIABLES: Final = frozenset(("password",))  # SET PASSWORD = ... changes an account


def _set(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    # (Repeated SET texts, as drivers send on every checkout, are answered by classify()'s
    # cache of recent statements before they get here.)
    k = _blank(raw)
    if _SET_STATEMENT.match(k, pos):  # MariaDB: SET STATEMENT v=x[, ...] FOR <stmt>
        m = _top_level(k, pos, _FOR_OR_PAREN)
        if m is None or depth >= _MAX_DEPTH:
            return _write(hint)
        return _classify(raw[m.end() :], depth + 1, hint)
    end = len(k.rstrip(b" \t\n\r\f\v;"))
    m = _SET_TRX.match(k, pos)
    if m is not None:
        return _set_transaction(raw, k, m, end, hint)

    items: list[SetItem] = []
    eff: _Effects | None = None
    default_scope = "session"  # the last GLOBAL/SESSION keyword carries to later items
    bounds = [pos - 1]
    level = 0
    for sm in _SPLIT.finditer(k, pos, end):
        c = k[sm.start()]
        if c == 0x28:
            level += 1
        elif c == 0x29:
            level -= 1
        elif level == 0:
            bounds.append(sm.start())
    bounds.append(end)
    for a, b in zip(bounds, bounds[1:], strict=False):
        t = _SET_TARGET.match(k, a + 1, b)
        if t is None:
            return _write(hint)
        p = t.end()
        if t.group("names") or t.group("charset"):
            vm = (_NAMES_VALUE if t.group("names") else _CHARSET_VALUE).match(k, p, b)
            if vm is None:
                return _write(hint)
            scope = "names" if t.group("names") else "charset"
            items.append(SetItem(scope, "charset", _raw_text(raw, vm, "cs")))
            if t.group("names") and vm.group("co"):
                items.append(SetItem(scope, "collation", _raw_text(raw, vm, "co")))
            continue
        am = _ASSIGN.match(k, p, b)
        value = None if am is None else _text(raw, k, am.end(), b)
        if am is None or value is None:
            return _write(hint)
        if kw := t.group("kw"):
            default_scope = _SCOPES[kw.upper()]
        if t.group("user"):
            scope, g = "user", "user"
        elif t.group("sysvar"):
            sc = t.group("scope")
            scope, g = (_SCOPES[sc.upper()] if sc else "session"), "sysvar"
        else:
            scope, g = default_scope, "var"
        name = _unquote(raw[t.start(g) : t.end(g)]).lower()
        if g == "var" and name in _NOT_VARIABLES:
            return _write(hint)
        items.append(SetItem(scope, name, value))
        if not _SIMPLE_VALUE.fullmatch(k, am.end(), b):
            eff = _merge(eff, _effects(raw[am.end() - 1 : b]))  # from "=": a non-word start
    if not items:
        return _write(hint)
    is_global = any(i.scope == "global" for i in items)
    mo, pin, unpin, last = eff or (False, None, None, False)
    result = Classification(
        Kind.WRITE if is_global else Kind.SESSION,
        master_only=is_global or mo,
        pin=pin,
        unpin=unpin,
        hint=hint,
        session_vars=tuple(items),
        reads_last_statement=last,
    )
    return _with_locks(result, raw) if mo else result


def _raw_text(raw: bytes, m: re.Match[bytes], group: str) -> str:
    return raw[m.start(group) : m.end(group)].decode("utf-8", "surrogateescape")


def _set_transaction(
    raw: bytes, k: bytes, m: re.Match[bytes], end: int, hint: Hint | None
) -> Classification:
    kw = m.group(1)
    scope = _SCOPES[kw.upper()] if kw else "transaction"
    if scope == "session":
        scope = "transaction"
    prefix = "" if kw else "next_"  # bare SET TRANSACTION: next transaction only
    items: list[SetItem] = []
    p = m.end()
    while True:
        c = _TRX_CHAR.match(k, p, end)
        if c is None:
            return _write(hint)
        g = "level" if c.group("level") else "mode"
        name = prefix + ("isolation_level" if g == "level" else "access_mode")
        items.append(SetItem(scope, name, _raw_text(raw, c, g)))
        p = c.end()
        if not c.group("comma"):
            break
    if p != end:
        return _write(hint)
    is_global = scope == "global"
    return Classification(
        Kind.WRITE if is_global else Kind.SESSION,
        master_only=is_global,
        hint=hint,
        session_vars=tuple(items),
    )


# ------------------------------------------------- transactions, locks, names

_USE: Final = re.compile(rb"\s*(?P<a>" + _IDENT + rb")[\s;]*\Z")
_BEGIN: Final = re.compile(rb"\s*(?:WORK\b)?[\s;]*\Z", re.I)
_START_TRX: Final = re.compile(rb"\s*TRANSACTION\b", re.I)
_START_CHAR: Final = re.compile(
    rb"\s*(?:(?P<ro>READ\s+ONLY)|READ\s+WRITE|WITH\s+CONSISTENT\s+SNAPSHOT)\b\s*(?P<comma>,)?",
    re.I,
)
_END_TRX: Final = re.compile(
    rb"\s*(?:WORK\b)?\s*(?:AND\s+(?:NO\s+)?CHAIN\b)?\s*(?:(?:NO\s+)?RELEASE\b)?[\s;]*\Z", re.I
)
_ROLLBACK_TO: Final = re.compile(rb"\s*(?:WORK\s+)?TO\b", re.I)
_SAVEPOINT: Final = re.compile(rb"\s*" + _IDENT + rb"[\s;]*\Z")
_RELEASE: Final = re.compile(rb"\s*SAVEPOINT\s+" + _IDENT + rb"[\s;]*\Z", re.I)
_XA: Final = re.compile(rb"\s*(START|BEGIN|END|PREPARE|COMMIT|ROLLBACK|RECOVER)\b", re.I)
_TABLES: Final = re.compile(rb"\s*TABLES?\b", re.I)
_FLUSH_LOCK: Final = re.compile(rb"\bWITH\s+READ\s+LOCK\b|\bFOR\s+EXPORT\b", re.I)
_PREPARE: Final = re.compile(rb"\s*(?P<a>" + _IDENT + rb")\s+FROM\b", re.I)
_EXECUTE: Final = re.compile(rb"\s*(?:(?P<imm>IMMEDIATE)\b|(?P<a>" + _IDENT + rb"))", re.I)
_DEALLOCATE: Final = re.compile(rb"\s*PREPARE\s+(?P<a>" + _IDENT + rb")", re.I)
_CREATE_TEMP: Final = re.compile(
    rb"\s*(?:OR\s+REPLACE\s+)?TEMPORARY\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?" + _QNAME, re.I
)
_DROP: Final = re.compile(
    rb"\s*(?:PREPARE\s+(?P<a>"
    + _IDENT
    + rb")|(?P<temp>TEMPORARY\s+)?TABLES?\s+(?:IF\s+EXISTS\b)?)",
    re.I,
)
_DROP_NAME: Final = re.compile(rb"\s*" + _QNAME + rb"\s*(?P<comma>,)?")
_HANDLER: Final = re.compile(rb"\s*" + _QNAME + rb"\s+(?:(?P<open>OPEN)|(?P<close>CLOSE))\b", re.I)
_DIAGNOSTICS: Final = re.compile(rb"\s*(?:CURRENT\s+|STACKED\s+)?DIAGNOSTICS\b", re.I)


def _use(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    m = _USE.match(_blank(raw), pos)
    if m is None:
        return _write(hint)
    return Classification(Kind.USE, hint=hint, schema=_unquote(raw[m.start("a") : m.end("a")]))


def _begin(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    # BEGIN NOT ATOMIC ... END is a MariaDB compound statement, not a transaction.
    if _BEGIN.match(_blank(raw), pos):
        return _plain(Kind.BEGIN, hint)
    return _write(hint)


def _start(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    k = _blank(raw)
    m = _START_TRX.match(k, pos)
    if m is None:  # START SLAVE / REPLICA / GROUP_REPLICATION
        return _write(hint)
    read_only = False
    p = m.end()
    end = len(k.rstrip(b" \t\n\r\f\v;"))
    while p < end:
        c = _START_CHAR.match(k, p, end)
        if c is None:
            return _write(hint)
        read_only = read_only or c.group("ro") is not None
        p = c.end()
        if not c.group("comma"):
            break
    if p < end:
        return _write(hint)
    if read_only:
        return Classification(Kind.BEGIN, hint=hint, read_only_trx=True)
    return _plain(Kind.BEGIN, hint)


def _commit(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    return _plain(Kind.COMMIT, hint) if _END_TRX.match(_blank(raw), pos) else _write(hint)


def _rollback(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    k = _blank(raw)
    if _ROLLBACK_TO.match(k, pos):
        return _plain(Kind.SAVEPOINT, hint)
    return _plain(Kind.ROLLBACK, hint) if _END_TRX.match(k, pos) else _write(hint)


def _savepoint(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    return _plain(Kind.SAVEPOINT, hint) if _SAVEPOINT.match(_blank(raw), pos) else _write(hint)


def _release(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    return _plain(Kind.SAVEPOINT, hint) if _RELEASE.match(_blank(raw), pos) else _write(hint)


def _xa(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    m = _XA.match(_blank(raw), pos)
    if m is None:
        return _write(hint)
    verb = m.group(1).upper()
    pin = Pin.XA if verb in (b"START", b"BEGIN") else None
    unpin = Pin.XA if verb in (b"COMMIT", b"ROLLBACK") else None
    return Classification(Kind.XA, master_only=True, pin=pin, unpin=unpin, hint=hint)


def _lock(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    if _TABLES.match(_blank(raw), pos):
        return Classification(Kind.LOCK_TABLES, master_only=True, pin=Pin.LOCK_TABLES, hint=hint)
    return _write(hint)  # LOCK INSTANCE FOR BACKUP and the like


def _unlock(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    if _TABLES.match(_blank(raw), pos):
        return Classification(
            Kind.UNLOCK_TABLES, master_only=True, unpin=Pin.LOCK_TABLES, hint=hint
        )
    return _write(hint)


def _flush(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    # FLUSH TABLES ... WITH READ LOCK / FOR EXPORT hold locks until UNLOCK TABLES.
    if _FLUSH_LOCK.search(_blank(raw), pos):
        return Classification(Kind.WRITE, master_only=True, pin=Pin.LOCK_TABLES, hint=hint)
    return _write(hint)


def _name(raw: bytes, m: re.Match[bytes]) -> str:
    return _unquote(raw[m.start("a") : m.end("a")]).lower()


def _prepare(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    m = _PREPARE.match(_blank(raw), pos)
    if m is None:
        return _write(hint)
    return Classification(
        Kind.PREPARE, master_only=True, pin=Pin.SQL_PREPARE, hint=hint, statement_name=_name(raw, m)
    )


def _execute(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    m = _EXECUTE.match(_blank(raw), pos)
    if m is None or m.group("imm"):  # EXECUTE IMMEDIATE runs SQL we do not see
        return _write(hint)
    return Classification(Kind.EXECUTE, master_only=True, hint=hint, statement_name=_name(raw, m))


def _deallocate(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    m = _DEALLOCATE.match(_blank(raw), pos)
    if m is None:
        return _write(hint)
    return Classification(
        Kind.DEALLOCATE,
        master_only=True,
        unpin=Pin.SQL_PREPARE,
        hint=hint,
        statement_name=_name(raw, m),
    )


def _create(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    m = _CREATE_TEMP.match(_blank(raw), pos)
    if m is None:
        return _write(hint)
    return Classification(
        Kind.WRITE, master_only=True, pin=Pin.TEMP_TABLE, hint=hint, temp_table=_qname(raw, m)
    )


def _drop(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    k = _blank(raw)
    m = _DROP.match(k, pos)
    if m is None:
        return _write(hint)
    if m.group("a"):  # DROP PREPARE
        return Classification(
            Kind.DEALLOCATE,
            master_only=True,
            unpin=Pin.SQL_PREPARE,
            hint=hint,
            statement_name=_name(raw, m),
        )
    names = []
    p = m.end()
    while (n := _DROP_NAME.match(k, p)) is not None:
        names.append(_qname(raw, n))
        p = n.end()
        if not n.group("comma"):
            break
    if not names:
        return _write(hint)
    return Classification(
        Kind.WRITE,
        master_only=True,
        unpin=Pin.TEMP_TABLE if m.group("temp") else None,
        hint=hint,
        dropped_tables=tuple(names),
    )


def _handler(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    m = _HANDLER.match(_blank(raw), pos)
    if m is None:
        return _write(hint)
    opened = m.group("open") is not None
    return Classification(
        Kind.WRITE,
        master_only=True,
        pin=Pin.HANDLER if opened else None,
        unpin=None if opened else Pin.HANDLER,
        hint=hint,
    )


_USER_VAR: Final = re.compile(rb"(?<!@)@(?!@)")


def _call(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    # A procedure is opaque; what we can see is a user variable passed as an OUT/INOUT
    # argument, which the call may set on the master only.
    if _AT in raw and _USER_VAR.search(_TOKEN_BS.sub(b" ", raw[:_WRITE_SCAN_LIMIT])):
        return _result(_WRITE_KIND, True, Pin.USER_VAR_ASSIGN, None, hint, False)
    return _write(hint)


def _get(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    if _DIAGNOSTICS.match(_blank(raw), pos):
        return _result(Kind.READ, False, None, None, hint, True)
    return _write(hint)


_KILL_TAIL: Final = re.compile(rb"[\s;]*\Z")


def _kill(raw: bytes, pos: int, hint: Hint | None, depth: int) -> Classification:
    """KILL [HARD | SOFT] [CONNECTION | QUERY] <id> (MariaDB's and MySQL's forms). Comments
    are skipped; the content of executable comments counts, as the server reads it."""
    words = _KILL_TAIL.sub(b"", _blank(raw)[pos:]).upper().split()
    return Classification(_WRITE_KIND, master_only=True, hint=hint, kill=_kill_request(words))


def _kill_request(words: list[bytes]) -> KillRequest:
    i = 1 if words[:1] in ([b"HARD"], [b"SOFT"]) else 0
    query_only = words[i : i + 1] == [b"QUERY"]
    if query_only or words[i : i + 1] == [b"CONNECTION"]:
        i += 1
    rest = words[i:]
    if query_only and rest[:1] == [b"ID"]:
        return KillRequest(unsupported="KILL QUERY ID (a server's query id)")
    if rest[:1] == [b"USER"]:
        return KillRequest(unsupported="KILL USER")
    if len(rest) == 1 and rest[0].isdigit():
        return KillRequest(int(rest[0]), query_only)
    return KillRequest(unsupported="KILL of anything but a connection id number")


_Handler = Callable[[bytes, int, "Hint | None", int], Classification]
_HANDLERS: Final[dict[bytes, _Handler]] = {
    b"SELECT": _read,
    b"TABLE": _read,
    b"VALUES": _read,
    b"WITH": _with,
    b"SHOW": _show,
    b"DESCRIBE": _explain,
    b"DESC": _explain,
    b"EXPLAIN": _explain,
    b"ANALYZE": _analyze,
    b"HELP": _help,
    b"SET": _set,
    b"USE": _use,
    b"BEGIN": _begin,
    b"START": _start,
    b"COMMIT": _commit,
    b"ROLLBACK": _rollback,
    b"SAVEPOINT": _savepoint,
    b"RELEASE": _release,
    b"XA": _xa,
    b"LOCK": _lock,
    b"UNLOCK": _unlock,
    b"FLUSH": _flush,
    b"PREPARE": _prepare,
    b"EXECUTE": _execute,
    b"DEALLOCATE": _deallocate,
    b"CREATE": _create,
    b"DROP": _drop,
    b"HANDLER": _handler,
    b"GET": _get,
    b"INSERT": _dml,
    b"UPDATE": _dml,
    b"DELETE": _dml,
    b"REPLACE": _dml,
    b"DO": _dml,
    b"CALL": _call,
    b"KILL": _kill,
}


# ---------------------------------------------------------------- top level


def _split(raw: bytes, nbe: bool) -> list[bytes] | None:
    """The statements of a multi-statement COM_QUERY, or None if there is only one."""
    pattern = _STATEMENT_NBE if nbe else _STATEMENT_BS
    parts = []
    pos = 0
    n = len(raw)
    while True:
        m = pattern.match(raw, pos)
        assert m is not None  # matches the empty string
        end = m.end()
        if end == n and pos == 0:
            return None
        part = raw[pos:end]
        if _has_code(part):
            parts.append(part)
        if end >= n:
            break
        pos = end + 1  # past the ";"
    return parts if len(parts) > 1 else None


def _has_code(part: bytes) -> bool:
    m = _HEAD.match(part)
    return m is not None and (m.group(1) is not None or bool(_blank(part).strip()))


def _combine(parts: tuple[Classification, ...], hint: Hint | None) -> Classification:
    """A conservative summary; the router can read each statement in parts."""
    kinds = {p.kind for p in parts}
    kind = kinds.pop() if len(kinds) == 1 and kinds <= {Kind.READ, Kind.SESSION} else Kind.WRITE
    pin = unpin = None
    schema = temp_table = None
    kill = None
    for p in parts:
        pin = _pick(pin, p.pin)
        unpin = unpin or p.unpin
        if p.kill is not None:
            kill = _KILL_IN_MULTI
        schema = p.schema or schema
        temp_table = p.temp_table or temp_table
    return Classification(
        kind,
        master_only=kind is Kind.WRITE or any(p.master_only for p in parts),
        pin=pin,
        unpin=unpin,
        hint=hint,
        session_vars=tuple(i for p in parts for i in p.session_vars),
        schema=schema,
        temp_table=temp_table,
        dropped_tables=tuple(t for p in parts for t in p.dropped_tables),
        reads_last_statement=any(p.reads_last_statement for p in parts),
        parts=parts,
        lock_calls=tuple(c for p in parts for c in p.lock_calls),
        lock_names_unknown=any(p.lock_names_unknown for p in parts),
        kill=kill,
    )


_KILL_IN_MULTI: Final = KillRequest(unsupported="KILL in a multi-statement query")


def _classify(
    raw: bytes, depth: int, outer_hint: Hint | None, split: bool = True
) -> Classification:
    m = _HEAD.match(raw)
    assert m is not None  # matches the empty string
    word = m.group(1)
    head = m.start(1) if word is not None else m.end()
    hint = outer_hint
    if head:
        h = _HINT.search(raw, 0, head)
        if h is not None:
            target = h.group(1).lower().decode()
            name = h.group(2)
            if target == "master":
                hint = _HINT_MASTER
            elif name is None:
                hint = _HINT_REPLICA
            else:
                hint = Hint("replica", name.decode())
    split = split and depth < _MAX_DEPTH and _SEMICOLON in raw
    if split and (stmts := _split(raw, nbe=False)) is not None:
        return _combine(tuple(_classify(s, depth + 1, hint) for s in stmts), hint)
    if word is None:
        return _plain(Kind.WRITE, hint, True) if _blank(raw).strip() else _plain(Kind.OTHER, hint)
    handler = _HANDLERS.get(word.upper())
    if handler is None or depth > _MAX_DEPTH:
        return _write(hint)
    c = handler(raw, m.end(1), hint, depth)
    # Read as NO_BACKSLASH_ESCAPES, 'a\\'; DELETE ... is two statements. Only a statement
    # that is not already a write can hide one, so bulk INSERTs are not lexed again.
    if split and c.kind is not _WRITE_KIND and _BACKSLASH in raw:
        if (stmts := _split(raw, nbe=True)) is not None:
            return _combine(tuple(_classify(s, depth + 1, hint) for s in stmts), hint)
    return c


_HINT_MASTER: Final = Hint("master")
_HINT_REPLICA: Final = Hint("replica")


def classify(sql: bytes | bytearray | memoryview, multi_statements: bool = True) -> Classification:
    """Classify one COM_QUERY payload (the bytes after the command byte).

    Pass multi_statements=False when the client did not negotiate CLIENT_MULTI_STATEMENTS:
    the server then rejects a second statement without running anything, so there is
    nothing to split (and a large statement with ``;`` in its data is not lexed twice).
    """
    raw = sql if type(sql) is bytes else bytes(sql)
    cache = _CACHE_MULTI if multi_statements else _CACHE_SINGLE
    shapes = _SHAPES_MULTI if multi_statements else _SHAPES_SINGLE
    cacheable = len(raw) <= _CACHE_TEXT_MAX
    shape: bytes | None = None
    if cacheable:
        c = cache.get(raw)
        if c is not None:
            return c
        shape = _shape(raw)
        if shape is not None:
            c = shapes.get(shape)
            if c is not None:
                _remember(cache, raw, c)  # a text that comes again costs one lookup
                return c
    try:
        c = _classify(raw, 0, None, multi_statements)
    except Exception:  # a classifier bug must not cost the client its connection
        _log.exception("statement classifier failed on %d bytes; routing as a write", len(raw))
        return _WRITE
    kind = c.kind
    if kind is _WRITE_KIND:
        if _DDL.match(raw) is not None:
            c = replace(c, ddl=True)
    elif kind is Kind.SESSION and c.session_vars and all(
        i.scope == "user" and i.name == "baton_consistency" for i in c.session_vars
    ):
        c = replace(c, local=True)
    if cacheable:
        _remember(cache, raw, c)
        if shape is not None and _value_free(c):
            _remember(shapes, shape, c)
    return c


def _remember(cache: dict[bytes, Classification], key: bytes, c: Classification) -> None:
    if len(cache) >= _CACHE_SIZE:
        # The oldest eighth out at once. A dict keeps the slots of deleted entries at its
        # front until it resizes, so taking the single oldest entry at every miss scanned
        # thousands of them (2.2 us per miss, measured); once per 512 misses it is noise.
        for old in list(islice(cache, _CACHE_EVICT)):
            del cache[old]
    cache[key] = c


def _shape(raw: bytes) -> bytes | None:
    """The text with every digit made 0 and every single-quoted string emptied; None when
    the text holds what this cannot read faithfully (backslashes, backticks, double quotes,
    comments), which then is classified as written.

    Why that is sound: the classifier's decisions read keywords, operators and the places of
    literals, never a digit (no keyword it looks for has one) nor a string's content; values
    it does read (a SET's, a lock name, a KILL id, a schema, a table) are in results that are
    not kept by shape (``_value_free``)."""
    if (
        _BACKSLASH in raw
        or _BACKTICK in raw
        or _DQUOTE in raw
        or _HASH in raw
        or b"/*" in raw
        or b"--" in raw
    ):
        return None
    if _QUOTE in raw:
        raw = _SHAPE_STRING.sub(b"''", raw)
    return raw.translate(_DIGITS_TO_ZERO)


def _value_free(c: Classification) -> bool:
    """Whether ``c`` holds nothing read from the statement's values or names, so that every
    text of its shape has it."""
    return (
        c.hint is None
        and not c.session_vars
        and c.schema is None
        and c.temp_table is None
        and not c.dropped_tables
        and c.statement_name is None
        and not c.parts
        and c.kill is None
        and not c.lock_calls
        and not c.lock_names_unknown
        and not c.local
    )


def clear_caches() -> None:
    """Forget every cached classification (tests and benchmarks that want a fresh parse)."""
    for cache in (_CACHE_MULTI, _CACHE_SINGLE, _SHAPES_MULTI, _SHAPES_SINGLE):
        cache.clear()


# Results of recent statement texts (the same text always gets the same, immutable, result):
# applications repeat BEGIN, COMMIT, health checks and many statements verbatim. Bounded,
# oldest entry out first; long texts (bulk INSERTs) are not kept.
_CACHE_SIZE: Final = 4096
_CACHE_EVICT: Final = _CACHE_SIZE // 8
_CACHE_TEXT_MAX: Final = 512
_CACHE_MULTI: Final[dict[bytes, Classification]] = {}
_CACHE_SINGLE: Final[dict[bytes, Classification]] = {}
# ... and of recent statement shapes (``_shape``): an application sends one statement with
# different values (its ids, its strings), which a text cache misses every time (sysbench's
# read/write: 16 statements of 20; a miss costs 4-10 us, a shape 0.5-1.5 us).
_SHAPES_MULTI: Final[dict[bytes, Classification]] = {}
_SHAPES_SINGLE: Final[dict[bytes, Classification]] = {}
_SHAPE_STRING: Final = re.compile(rb"'(?:[^']++|'')*+'")  # without backslashes: no escapes
_DIGITS_TO_ZERO: Final = bytes.maketrans(b"123456789", b"000000000")


# Statements that change the schema, after any comments (the first statement of several).
_DDL: Final = re.compile(
    rb"\s*(?:/\*.*?\*/\s*|(?:--|#)[^\n]*\n\s*)*(?:CREATE|ALTER|DROP|RENAME|TRUNCATE)\b",
    re.I | re.S,
)


# ----------------------------------------------------------------- literals

_LITERAL: Final = re.compile(
    r"""[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?
      | 0[xX][0-9a-fA-F]+ | 0[bB][01]+
      | (?:_[A-Za-z0-9]+\s*|[NnXxBb](?='))?'(?:[^'\\]|\\.|'')*'
      | (?:_[A-Za-z0-9]+\s*)?"(?:[^"\\]|\\.|"")*"
      | (?P<word>[A-Za-z_$][A-Za-z0-9_$]*)""",
    re.X | re.S,
)
# Bare words that are functions: their value differs between backends and over time.
_NOT_LITERAL_WORDS: Final = frozenset(
    w.casefold()
    for w in (
        "CURRENT_DATE CURRENT_TIME CURRENT_TIMESTAMP CURRENT_USER CURRENT_ROLE LOCALTIME "
        "LOCALTIMESTAMP UTC_DATE UTC_TIME UTC_TIMESTAMP"
    ).split()
)


def is_literal(value: str) -> bool:
    """Whether a SET value is safe to replay verbatim on another backend.

    True for a quoted string (with optional introducer), a number, hex/bit literal,
    NULL/TRUE/FALSE/DEFAULT/ON, or a plain word such as utf8mb4; false for expressions,
    variables, and niladic functions like CURRENT_TIMESTAMP.
    """
    m = _LITERAL.fullmatch(value.strip())
    if m is None:
        return False
    word = m.group("word")
    return word is None or word.casefold() not in _NOT_LITERAL_WORDS
