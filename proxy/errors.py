"""Errors Baton itself reports to clients, each with a stable, documented code.

Backend errors are passed through unchanged; these are only for failures that happen in the
proxy. Codes 9100-9199 are Baton's block: no MySQL or MariaDB server error uses them.
SQLSTATE is chosen so that drivers classify them sensibly: 08xxx for connection trouble (drivers
reconnect or fail over), 40001 for "retry the transaction", 08007 for "outcome unknown".
"""

from __future__ import annotations

from dataclasses import dataclass

from .protocol.framing import frame
from .protocol.packets import ErrPacket, encode_err


@dataclass(frozen=True, slots=True)
class ErrorCode:
    code: int
    sqlstate: str
    template: str
    meaning: str

    def packet(self, **params: object) -> ErrPacket:
        return ErrPacket(self.code, self.sqlstate, self.template.format(**params))

    def frame(self, seq: int, **params: object) -> bytes:
        return frame(encode_err(self.packet(**params)), seq)


BACKEND_UNREACHABLE = ErrorCode(
    9100, "08S01", "Baton: backend {backend} unreachable: {reason}",
    "Baton could not connect or log in to the backend chosen for the statement.",
)
NO_MASTER = ErrorCode(
    9101, "HY000", "Baton: no writable master available after waiting {waited_ms} ms",
    "No master was available and none appeared within [failover] buffer_window_ms.",
)
BUFFER_FULL = ErrorCode(
    9102, "HY000", "Baton: failover buffer full ({limit} statements held)",
    "A statement arrived during a failover while [failover] buffer_max statements were held.",
)
OUTCOME_UNKNOWN = ErrorCode(
    9103, "08007", "Baton: backend {backend} was lost while executing a write; its outcome is unknown",
    "A write or COMMIT was in flight when its backend died. It may or may not have been applied; "
    "Baton did not retry it, so it was not applied twice.",
)
TRANSACTION_LOST = ErrorCode(
    9104, "40001", "Baton: transaction lost in failover (backend {backend}); roll back and retry",
    "The session's open transaction was on a backend that died. The transaction is gone; the "
    "session stays usable and its next transaction runs on the new master.",
)
BACKEND_LOST = ErrorCode(
    9105, "08S01", "Baton: lost connection to backend {backend} during the statement",
    "A backend connection broke while a statement was running and it could not be retried.",
)
POOL_EXHAUSTED = ErrorCode(
    9106, "HY000", "Baton: no free connection to backend {backend} within {timeout_ms} ms "
    "(max_backend_connections={limit})",
    "All [proxy] max_backend_connections connections to the backend were busy for too long.",
)
NO_BACKEND = ErrorCode(
    9107, "HY000", "Baton: no backend available for {target}",
    "A hint named a backend that does not exist or is not usable, or no replica and no master is usable.",
)
PAUSED_TIMEOUT = ErrorCode(
    9108, "HY000", "Baton: proxy paused by an operator for more than {timeout_ms} ms",
    "The admin PAUSE command held the statement longer than the pause timeout.",
)
SESSION_STATE_UNRESTORABLE = ErrorCode(
    9109, "HY000", "Baton: session state could not be restored on backend {backend}: {reason}",
    "Baton could not make a backend connection match the session (schema, variables, prepared "
    "statements), so it refused to run the statement there rather than guess.",
)
SESSION_STATE_LOST = ErrorCode(
    9112, "HY000", "Baton: session state lost in failover: {reason}; the session is usable, "
    "recreate that state",
    "The session had state that lives on one server only (temporary tables, GET_LOCK locks, "
    "LOCK TABLES, user variables assigned in queries, SQL-level PREPARE) and that server or "
    "connection died. Said once, on the next statement; the session then carries on.",
)
BAD_CONSISTENCY = ErrorCode(
    9110, "42000", "Baton: @baton_consistency must be 'session' or 'eventual', not '{value}'",
    "SET @baton_consistency was given a value Baton does not know.",
)
USER_POOL_EXHAUSTED = ErrorCode(
    9113, "HY000", "Baton: user '{user}' has all {limit} of its connections to backend {backend} "
    "busy; none was freed within {timeout_ms} ms ([[users]] max_backend_connections={limit})",
    "The user's share of the backend's pool ([[users]] max_backend_connections) stayed busy for "
    "too long; other users' connections are not taken for it.",
)
NO_CURSOR = ErrorCode(
    9111, "HY000", "Baton: statement {stmt_id} has no open cursor to fetch from",
    "COM_STMT_FETCH for a statement whose cursor is closed or was lost with its backend.",
)
UNKNOWN_THREAD = ErrorCode(
    1094, "HY000", "Unknown thread id: {id}",
    "KILL named a connection id that is not a Baton client connection (MySQL's own code).",
)
NOT_OWNER = ErrorCode(
    1095, "HY000", "You are not owner of thread {id}",
    "KILL named another user's connection (MySQL's own code).",
)
KILL_UNSUPPORTED = ErrorCode(
    1235, "42000", "Baton does not support {what}: KILL takes a connection id as the greeting "
    "gave it (KILL [HARD|SOFT] [CONNECTION|QUERY] id)",
    "A KILL Baton cannot resolve to one of its own sessions (MySQL's code for an unsupported "
    "feature). It is never sent to a backend, where the number would name another thread.",
)
TOO_MANY_CONNECTIONS = ErrorCode(
    1040, "08004", "Too many connections",
    "[proxy] max_client_connections logged-in sessions, or too many connections at the login "
    "prompt (in all or from this address), on that port (MySQL's own code).",
)
USER_CONNECTIONS_LIMIT = ErrorCode(
    1226, "42000",
    "User '{user}' has exceeded the 'max_user_connections' resource (current value: {limit})",
    "The user already had [[users]] max_connections client sessions open (MySQL's own code and "
    "text for an account's MAX_USER_CONNECTIONS); other users are not affected.",
)
UNKNOWN_COMMAND = ErrorCode(
    1047, "08S01", "Unknown command {command:#04x}", "A command byte Baton does not accept (MySQL's own code).",
)
PACKET_TOO_LARGE = ErrorCode(
    1153, "08S01", "Got a packet bigger than 'max_allowed_packet' bytes",
    "A client packet exceeded [proxy] max_allowed_packet, or 16 KiB before login (MySQL's own "
    "code); the connection is closed.",
)
PACKETS_OUT_OF_ORDER = ErrorCode(
    1156, "08S01", "Got packets out of order", "A client packet had a wrong sequence id (MySQL's own code).",
)
MALFORMED_PACKET = ErrorCode(
    1835, "HY000", "Malformed communication packet: {reason}",
    "A client packet could not be parsed (MySQL's own code); the connection is closed.",
)
SERVER_SHUTDOWN = ErrorCode(
    1053, "08S01", "Server shutdown in progress", "Baton is shutting down (MySQL's own code).",
)
LONG_DATA_TOO_LARGE = ErrorCode(
    1105, "HY000", "Parameter of prepared statement which is set through mysql_send_long_data() "
    "is longer than 'max_allowed_packet' bytes ({limit} held per session)",
    "COM_STMT_SEND_LONG_DATA sent more than [proxy] max_allowed_packet bytes in all before an "
    "execute (MariaDB's own code and text); the statement's long data was dropped and this "
    "execute fails; the statement and session stay usable.",
)
TOO_MANY_PREPARED = ErrorCode(
    1461, "42000", "Can't create more than max_prepared_stmt_count statements (current value: {limit})",
    "The session already had [proxy] max_prepared_statements prepared statements open (MySQL's "
    "own code and text); close some (COM_STMT_CLOSE, DEALLOCATE) first.",
)
UNKNOWN_STMT = ErrorCode(
    1243, "HY000", "Unknown prepared statement handler ({stmt_id}) given to {command}",
    "The client used a statement id it never prepared or already closed (MySQL's own code).",
)

LOGIN_THROTTLED = ErrorCode(
    1129, "HY000", "Host '{host}' is blocked after {failures} failed logins; retry in {retry_s} s",
    "Too many failed logins from this address on this port (MySQL's own code for a blocked "
    "host); it may try again when the oldest failure leaves the window.",
)
ADMIN_SYNTAX = ErrorCode(
    1064, "42000", "Baton admin: {reason}. Accepted: {accepted}",
    "The admin port did not understand the command (MySQL's own code; not 1047, whose SQLSTATE "
    "08S01 clients take for a broken connection); the message lists the accepted commands.",
)
ADMIN_REFUSED = ErrorCode(
    9150, "HY000", "Baton admin: {reason}",
    "An admin command was understood but not carried out: unknown backend or client, a "
    "promotion or switchover the failover module refused, or a reload of an invalid config.",
)

BATON_ERRORS = [e for e in list(globals().values()) if isinstance(e, ErrorCode)]


class BatonFailure(Exception):
    """Raised inside Baton when a statement must end with one of Baton's own errors."""

    def __init__(self, code: ErrorCode, **params: object) -> None:
        super().__init__(code.template.format(**params))
        self.code = code
        self.params = params
