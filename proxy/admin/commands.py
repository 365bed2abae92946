"""Admin commands: dispatch tables from command text to a reply, like pgbouncer's admin.c.

Not a SQL parser. A command is matched, case-insensitively and with a trailing ``;`` ignored,
against the patterns in ``COMMANDS`` (first match wins); ``SHOW x`` looks ``x`` up in ``SHOW``.
``SELECT`` either answers the few session queries client programs send on connect (``SELECT
@@version_comment LIMIT 1``) or runs on a SQLite snapshot (``tables.run_select``).

Each handler returns a reply value that the session encodes (go-mysql style: decisions are
testable without a socket): a ``Table`` (result set), ``Done`` (OK packet) or ``Refused``
(error packet).

Error codes (stable, documented):

* 1064 / 42000 (MySQL's ER_PARSE_ERROR): the admin port does not know the command, or a
  SELECT is not a single read-only statement over its tables. The message lists what is
  accepted. 1064 rather than 1047 because clients treat 1047 (SQLSTATE 08S01) as a broken
  connection, and a typo in an admin console should not drop the session.
* 9150 / HY000 ``ADMIN_REFUSED``: the command was understood but cannot be done: unknown
  backend or client id, a promotion the failover module refused, a reload rejected because
  the file is invalid (the message carries every config error).
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from ..errors import ADMIN_REFUSED, ADMIN_SYNTAX
from ..health.states import BackendState
from ..protocol.packets import ErrPacket
from . import tables
from .tables import Table, Value

if TYPE_CHECKING:
    from ..health.failover import FailoverCoordinator
    from .view import ProxyView

log = logging.getLogger("baton.admin")

@dataclass(frozen=True, slots=True)
class Done:
    """Carried out: an OK packet whose info text says what happened."""

    info: str = ""
    affected_rows: int = 0


@dataclass(frozen=True, slots=True)
class Refused:
    error: ErrPacket


Reply = Table | Done | Refused


class Refusal(Exception):
    """Raised by a handler: the command cannot be done, for the reason given."""


@dataclass(frozen=True, slots=True)
class Request:
    app: ProxyView
    text: str  # the command, whitespace-normalized, without the trailing ';'
    args: dict[str, str]
    connection_id: int = 0
    user: str = ""


Handler = Callable[[Request], "Reply | Awaitable[Reply]"]


@dataclass(frozen=True, slots=True)
class AdminCommand:
    syntax: str
    help: str
    pattern: re.Pattern[str]
    handler: Handler


# --- SHOW --------------------------------------------------------------------------------------


def _show_commands(req: Request) -> Table:
    rows = [(f"SHOW {what}", desc) for what, (_, desc) in SHOW.items() if desc]
    rows += [(c.syntax, c.help) for c in COMMANDS if c.help]
    return Table(("command", "description"), rows)


SHOW: dict[str, tuple[Callable[[Request], Table], str]] = {
    "BACKENDS": (lambda r: tables.backends_table(r.app), "backends: role, state, epoch, lag, GTID, connections"),
    "POOLS": (lambda r: tables.pools_table(r.app), "connection pools per backend and user"),
    "CLIENTS": (lambda r: tables.clients_table(r.app), "client sessions: state, backends in use, pins"),
    "STATS": (lambda r: tables.stats_table(r.app), "counters: queries, errors, auth failures, held, retried, reloads"),
    "FAILOVERS": (lambda r: tables.failovers_table(r.app), "the failover timeline, one row per promotion"),
    "WORKERS": (lambda r: tables.workers_table(r.app), "processes serving clients: pid, state, clients, restarts"),
    "CLUSTER": (lambda r: tables.cluster_table(r.app), "Baton instances on the Redis channel: epoch, master, lease, failover"),
    "CONFIG": (lambda r: tables.config_table(r.app), "the running config (passwords masked) and the last reload"),
    "VERSION": (lambda r: tables.version_table(r.app), "Baton and server versions"),
    "COMMANDS": (_show_commands, "this list (also HELP)"),
    # Asked by client programs, not by operators: always empty.
    "WARNINGS": (lambda r: Table(("Level", "Code", "Message"), []), ""),
}


def _show(req: Request) -> Reply:
    what = req.args["what"].upper()
    entry = SHOW.get(what)
    if entry is None:
        return syntax_error(f"unknown SHOW {req.args['what']!r}")
    return entry[0](req)


# --- backend, client and process control ------------------------------------------------------


def _backend_name(req: Request) -> str:
    name = unquote(req.args["name"])
    if req.app.config.backend(name) is None:
        known = ", ".join(b.name for b in req.app.config.backends)
        raise Refusal(f"unknown backend {name!r}; configured backends: {known}")
    return name


def _set_backend(req: Request) -> Done:
    name = _backend_name(req)
    state = BackendState(req.args["state"].upper())
    req.app.set_backend_state(name, state)
    log.warning("admin_set_backend backend=%s state=%s", name, state)
    return Done(f"backend {name} set {state}")


def _failover(req: Request) -> FailoverCoordinator:
    failover = req.app.failover
    if failover is None:
        raise Refusal("failover is not available in this Baton process (no failover module running)")
    return failover


def _outcome(req: Request, name: str, record: object) -> Table:
    topology = req.app.topology
    return Table(
        ("backend", "outcome", "master", "epoch"),
        [(name, str(getattr(record, "outcome", "done")), topology.master, topology.epoch)],
    )


async def _promote(req: Request) -> Table:
    failover = _failover(req)
    name = _backend_name(req)
    old = None
    if "old" in req.args:
        old = unquote(req.args["old"])
        if req.app.config.backend(old) is None:
            raise Refusal(f"unknown backend {old!r} after REPLACING")
    source = unquote(req.args.get("source", "admin")).lower()
    log.warning("admin_promote backend=%s replacing=%s source=%s", name, old, source)
    try:
        record = await failover.promote(name, source=source, old=old)
    except Exception as exc:  # PromotionRefused's reason goes back to the operator verbatim
        raise Refusal(f"PROMOTE {name!r} refused: {exc}") from exc
    return _outcome(req, name, record)


async def _switchover(req: Request) -> Table:
    _failover(req)  # refuses when failover is not running
    name = _backend_name(req)
    log.warning("admin_switchover backend=%s", name)
    try:
        record = await req.app.switchover(name)  # holds and drains writes around the switch
    except Exception as exc:
        raise Refusal(f"SWITCHOVER TO {name!r} refused: {exc}") from exc
    return _outcome(req, name, record)


async def _failover_now(req: Request) -> Table:
    failover = _failover(req)
    to = None
    if "name" in req.args:
        to = _backend_name(req)
    log.warning("admin_failover to=%s", to or "-")
    try:
        record = await failover.failover(to, source="admin")
    except Exception as exc:  # PromotionRefused's reason goes back to the operator verbatim
        raise Refusal(f"FAILOVER refused: {exc}") from exc
    return _outcome(req, str(getattr(record, "new", to)), record)


def _set_failover_mode(req: Request) -> Done:
    failover = _failover(req)
    mode = unquote(req.args["mode"]).lower()
    try:
        failover.set_mode(mode)
    except Exception as exc:
        raise Refusal(str(exc)) from exc
    log.warning("admin_set_failover_mode mode=%s", mode)
    verdict = req.app.privileges.verdict
    caveat = ""
    if mode == "auto" and verdict is not None and not verdict.auto:
        caveat = f"; but automatic failover is impossible: {verdict.why_not_auto}"
    return Done(f"failover mode {mode} (until the next reload or restart){caveat}")


def _kill_client(req: Request) -> Done:
    client_id = int(req.args["id"])
    if not req.app.kill_client(client_id):
        raise Refusal(f"no client with id {client_id}; SHOW CLIENTS lists them")
    log.warning("admin_kill_client client=%s", client_id)
    return Done(f"client {client_id} killed", 1)


async def _reload(req: Request) -> Table:
    result = await req.app.reload()
    if not result.ok:
        raise Refusal(f"reload rejected ({result.summary}): " + "; ".join(result.errors))
    return Table(("result", "changes"), [("ok", result.summary)])


def _pause(req: Request) -> Done:
    req.app.pause()
    return Done("paused: new statements wait (running ones finish); RESUME releases them")


def _resume(req: Request) -> Done:
    req.app.resume()
    return Done("resumed")


def _shutdown(req: Request) -> Done:
    graceful = bool(req.args.get("graceful"))
    log.warning("admin_shutdown graceful=%s", graceful)
    # After this reply is written: the session schedules nothing itself.
    req.app.loop.call_soon(req.app.spawn, req.app.shutdown(graceful=graceful))
    return Done("shutting down" + (" gracefully" if graceful else ""))


# --- SELECT and what client programs send on connect ------------------------------------------


def _session_values(req: Request) -> dict[str, object]:
    app = req.app
    return {
        "@@version_comment": "Baton admin console",
        "@@version": app.server_version,
        "version()": app.server_version,
        "database()": None,
        "schema()": None,
        "user()": f"{req.user}@localhost",
        "current_user()": f"{req.user}@localhost",
        "connection_id()": req.connection_id,
        "@@autocommit": 1,
        "@@session.autocommit": 1,
        "@@max_allowed_packet": app.config.proxy.max_allowed_packet,
        "@@session.auto_increment_increment": 1,
        "@@auto_increment_increment": 1,
        # The mariadb client's status command (\s) asks for these.
        "@@character_set_client": "utf8mb4",
        "@@character_set_connection": "utf8mb4",
        "@@character_set_server": "utf8mb4",
        "@@character_set_database": "utf8mb4",
    }


_LIMIT = re.compile(r"\s+LIMIT\s+\d+$", re.IGNORECASE)


def _client_select(req: Request, body: str) -> Table | None:
    """``SELECT @@version_comment LIMIT 1`` and friends: session values, no FROM."""
    items = [i.strip() for i in _LIMIT.sub("", body).split(",")]
    known = _session_values(req)
    if not items or any(i.lower().replace(" ", "") not in known for i in items):
        return None
    row: tuple[Value, ...] = tuple(cast(Value, known[i.lower().replace(" ", "")]) for i in items)
    return Table(tuple(items), [row])


def _select(req: Request) -> Reply:
    answer = _client_select(req, req.args["body"])
    if answer is not None:
        return answer
    try:
        return tables.run_select(tables.snapshot_sources(req.app), req.text)
    except tables.QueryRefused as exc:
        return syntax_error(
            f"SELECT failed: {exc}",
            accepted="one read-only SELECT over tables " + ", ".join(tables.QUERYABLE),
        )


def _ok(req: Request) -> Done:
    return Done()


# --- the table ----------------------------------------------------------------------------------

def _name(group: str) -> str:
    """A backend name, bare or quoted ('db2', "db2", `db2`)."""
    return rf"(?P<{group}>'[^']*'|\"[^\"]*\"|`[^`]*`|[A-Za-z0-9_.-]+)"


_NAME = _name("name")


def _command(syntax: str, help: str, pattern: str, handler: Handler) -> AdminCommand:
    return AdminCommand(syntax, help, re.compile(pattern, re.IGNORECASE | re.DOTALL), handler)


COMMANDS: tuple[AdminCommand, ...] = (
    _command("SHOW <what>", "", r"SHOW\s+(?P<what>\w+)", _show),
    _command("HELP", "", r"HELP", _show_commands),
    _command(
        "SET BACKEND 'name' ONLINE | OFFLINE_SOFT | OFFLINE_HARD",
        "OFFLINE_SOFT drains (running statements finish), OFFLINE_HARD closes its connections now",
        rf"SET\s+BACKEND\s+{_NAME}\s+(?P<state>ONLINE|OFFLINE_SOFT|OFFLINE_HARD)", _set_backend,
    ),
    _command(
        "PROMOTE 'name' [REPLACING 'old'] [SOURCE 'hook']",
        "adopt a promotion made on the servers: 'name' takes the writes, the master it "
        "replaces is fenced; SOURCE 'hook' when a failover manager (Orchestrator, MHA) says so",
        rf"PROMOTE\s+{_NAME}(?:\s+REPLACING\s+{_name('old')})?"
        r"(?:\s+SOURCE\s+(?P<source>'?(?:admin|hook)'?))?",
        _promote,
    ),
    _command("SWITCHOVER TO 'name'", "planned master change to a caught-up replica",
             rf"SWITCHOVER\s+TO\s+{_NAME}", _switchover),
    _command(
        "FAILOVER [TO 'name']",
        "promote a replica now because the master is dead, in any mode: same election, "
        "relay-log wait, repointing and fencing as auto mode",
        rf"FAILOVER(?:\s+TO\s+{_NAME})?", _failover_now,
    ),
    _command(
        "SET FAILOVER MODE 'auto' | 'follow' | 'manual'",
        "change [failover] mode until the next reload; auto with a dead master fails over now",
        r"SET\s+FAILOVER\s+MODE\s*=?\s*(?P<mode>'\w+'|\"\w+\"|\w+)", _set_failover_mode,
    ),
    _command("KILL CLIENT id", "close a client session (SHOW CLIENTS gives ids)",
             r"KILL\s+CLIENT\s+(?P<id>\d+)", _kill_client),
    _command("RELOAD", "re-read the config file; an invalid one is rejected and changes nothing",
             r"RELOAD", _reload),
    _command("PAUSE", "hold new statements; running ones finish", r"PAUSE", _pause),
    _command("RESUME", "release held statements", r"RESUME", _resume),
    _command("SHUTDOWN [GRACEFUL]", "stop Baton; GRACEFUL lets running statements finish first",
             r"SHUTDOWN(?:\s+(?P<graceful>GRACEFUL))?", _shutdown),
    _command(
        "SELECT ... FROM backends | pools | clients | stats | failovers",
        "SQLite SELECT over a snapshot, e.g. SELECT name FROM backends WHERE state='ONLINE'",
        r"SELECT\s+(?P<body>.*)", _select,
    ),
    # Sent by client programs on connect: accepted and ignored.
    _command("SET ...", "", r"SET\s+(?!BACKEND\b|FAILOVER\b).*", _ok),
    _command("USE ...", "", r"USE\s.*", _ok),
    _command("ROLLBACK | COMMIT | BEGIN", "", r"ROLLBACK|COMMIT|BEGIN|START\s+TRANSACTION", _ok),
)

ACCEPTED = (
    "SHOW BACKENDS|POOLS|CLIENTS|STATS|FAILOVERS|CLUSTER|CONFIG|VERSION|COMMANDS, HELP, "
    "SET BACKEND 'name' ONLINE|OFFLINE_SOFT|OFFLINE_HARD, PROMOTE 'name' [REPLACING 'old'], "
    "SWITCHOVER TO 'name', FAILOVER [TO 'name'], SET FAILOVER MODE 'auto|follow|manual', "
    "KILL CLIENT id, RELOAD, PAUSE, RESUME, SHUTDOWN [GRACEFUL], "
    "SELECT ... FROM backends|pools|clients|stats|failovers|cluster"
)


def syntax_error(reason: str, accepted: str = ACCEPTED) -> Refused:
    return Refused(ADMIN_SYNTAX.packet(reason=reason, accepted=accepted))


def unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"`":
        return text[1:-1]
    return text


_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Outer whitespace and trailing semicolons off; inner whitespace runs kept for SELECT
    (a string literal may hold them), collapsed elsewhere."""
    text = text.strip().rstrip(";").strip()
    if text[:6].upper() == "SELECT":
        return text
    return _SPACE.sub(" ", text)


async def execute(app: ProxyView, text: str, *, connection_id: int = 0, user: str = "") -> Reply:
    """The reply to one admin command."""
    command = normalize(text)
    if not command:
        return syntax_error("empty command")
    for entry in COMMANDS:
        match = entry.pattern.fullmatch(command)
        if match is None:
            continue
        args = {k: v for k, v in match.groupdict().items() if v is not None}
        request = Request(app, command, args, connection_id, user)
        try:
            await app.refresh()  # with workers: their sessions, pools and counters, now
            outcome = entry.handler(request)
            reply = await outcome if inspect.isawaitable(outcome) else outcome
        except Refusal as exc:
            return Refused(ADMIN_REFUSED.packet(reason=str(exc)))
        return reply
    shown = command if len(command) <= 60 else command[:57] + "..."
    return syntax_error(f"unknown command {shown!r}")
