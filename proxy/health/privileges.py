"""What Baton's monitor account may do on a server, read from SHOW GRANTS before it is needed.

A failover that stops half-way because RESET SLAVE ALL needs RELOAD is worse than no
failover: the candidate has stopped replicating and is still read-only. So Baton reads its
grants at start, on reload and in `baton check-config --probe`, and says per backend which
operations it can carry out:

- monitor: SHOW SLAVE STATUS (replication state, lag, the election's positions);
- promote: make a replica the master (STOP SLAVE, RESET SLAVE ALL, SET GLOBAL read_only=0);
- repoint: make a server replicate from the new master (STOP SLAVE, CHANGE MASTER TO,
  START SLAVE, SET GLOBAL gtid_slave_pos);
- fence: SET GLOBAL read_only=1 on a replaced master;
- switchover: all of the above (the old master is fenced, then repointed).

The requirements below were measured on MariaDB 10.11 by running each statement as a user
holding one candidate privilege at a time (tests/test_privileges.py keeps them honest
against a live server). Two surprises: RESET SLAVE ALL needs RELOAD, which SUPER does not
include, and from MariaDB 10.11 SUPER no longer includes READ_ONLY ADMIN. MySQL 8's column
follows its reference manual; Baton's failover SQL itself is MariaDB's (MASTER_USE_GTID,
MASTER_GTID_WAIT), so on MySQL only monitoring is of practical use today.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from proxy.backend import BackendError, Credentials, QueryError, connect
from proxy.config import BackendConfig, FailoverConfig, MonitorConfig
from proxy.tls import backend_security

log = logging.getLogger("baton.privileges")

OPERATIONS = ("monitor", "promote", "repoint", "fence", "switchover")


@dataclass(frozen=True, slots=True)
class Requirement:
    """One statement Baton runs and the privileges, any one of which lets it run."""

    statement: str
    any_of: tuple[str, ...]

    @property
    def privilege(self) -> str:
        """The narrowest privilege to grant (SUPER, where accepted, is listed last)."""
        return self.any_of[0]


def _mariadb(read_only_by_super: bool, semi_sync: bool) -> dict[str, tuple[Requirement, ...]]:
    read_only = ("READ_ONLY ADMIN", "SUPER") if read_only_by_super else ("READ_ONLY ADMIN",)
    slave_admin = ("REPLICATION SLAVE ADMIN", "SUPER")
    monitor = (Requirement("SHOW SLAVE STATUS", ("SLAVE MONITOR", "SUPER")),)
    promote: tuple[Requirement, ...] = (
        *monitor,
        Requirement("STOP SLAVE", slave_admin),
        Requirement("RESET SLAVE ALL", ("RELOAD",)),
        Requirement("SET GLOBAL read_only = 0", read_only),
    )
    if semi_sync:
        promote += (
            Requirement(
                "SET GLOBAL rpl_semi_sync_master_enabled", ("REPLICATION MASTER ADMIN", "SUPER")
            ),
        )
    repoint = (
        Requirement("CHANGE MASTER TO", slave_admin),
        Requirement("START SLAVE", slave_admin),
        Requirement("SET GLOBAL gtid_slave_pos", slave_admin),
    )
    fence = (Requirement("SET GLOBAL read_only = 1", read_only),)
    return {"monitor": monitor, "promote": promote, "repoint": repoint, "fence": fence}


def _mysql(semi_sync: bool) -> dict[str, tuple[Requirement, ...]]:
    variables = ("SYSTEM_VARIABLES_ADMIN", "SUPER")
    replica_admin = ("REPLICATION_SLAVE_ADMIN", "SUPER")
    monitor = (Requirement("SHOW REPLICA STATUS", ("REPLICATION CLIENT", "SUPER")),)
    promote: tuple[Requirement, ...] = (
        *monitor,
        Requirement("STOP REPLICA", replica_admin),
        Requirement("RESET REPLICA ALL", ("RELOAD",)),
        Requirement("SET GLOBAL read_only = 0", variables),
    )
    if semi_sync:
        promote += (Requirement("SET GLOBAL rpl_semi_sync_source_enabled", variables),)
    repoint = (
        Requirement("CHANGE REPLICATION SOURCE TO", replica_admin),
        Requirement("START REPLICA", replica_admin),
    )
    fence = (Requirement("SET GLOBAL read_only = 1", variables),)
    return {"monitor": monitor, "promote": promote, "repoint": repoint, "fence": fence}


def requirements(
    server_version: str, *, semi_sync: bool = False
) -> dict[str, tuple[Requirement, ...]]:
    """Per operation, the statements Baton runs and what each needs on this server."""
    flavor, version = parse_version(server_version)
    if flavor == "mysql":
        table = _mysql(semi_sync)
    else:
        table = _mariadb(read_only_by_super=version < (10, 11), semi_sync=semi_sync)
    table["switchover"] = tuple(
        dict.fromkeys(r for op in ("promote", "repoint", "fence") for r in table[op])
    )
    return table


def parse_version(server_version: str) -> tuple[str, tuple[int, ...]]:
    """("mariadb" | "mysql", (major, minor, patch)) from @@version or a handshake's version.

    MariaDB's handshake may prefix "5.5.5-" for old clients; the real version follows.
    """
    text = server_version.removeprefix("5.5.5-")
    flavor = "mariadb" if "mariadb" in text.lower() else "mysql"
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        return flavor, (0, 0, 0)
    return flavor, tuple(int(part or 0) for part in match.groups())


# Names a server accepts in GRANT but prints differently in SHOW GRANTS.
_ALIASES = {
    "REPLICA MONITOR": "SLAVE MONITOR",
    "REPLICATION REPLICA ADMIN": "REPLICATION SLAVE ADMIN",
    "ALL": "ALL PRIVILEGES",
}
_GLOBAL_GRANT = re.compile(
    r"^GRANT\s+(?P<privileges>.+?)\s+ON\s+(?P<target>\S+)\s+TO\s+(?P<to>\S+)", re.I
)
_ROLE_GRANT = re.compile(
    r"^GRANT\s+(?P<roles>`[^`]+`(?:@`[^`]*`)?(?:\s*,\s*`[^`]+`(?:@`[^`]*`)?)*)\s+TO\s", re.I
)


def global_privileges(grants: Sequence[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    """The privileges granted ON *.* in SHOW GRANTS lines, and notes on what was not counted.

    Run by the account itself, SHOW GRANTS also lists the grants of its active (default)
    role, so those count. A role granted but not active is noted, not counted: Baton does
    not SET ROLE.
    """
    privileges: set[str] = set()
    grantees: set[str] = set()
    roles: list[str] = []
    for line in grants:
        line = line.strip()
        match = _GLOBAL_GRANT.match(line)
        if match is not None:
            grantees.add(match["to"].split("@")[0].strip("`'\""))
            if match["target"] == "*.*":
                privileges.update(_names(match["privileges"]))
            continue
        role = _ROLE_GRANT.match(line)
        if role is not None:
            roles += [r.split("@")[0].strip("`") for r in role["roles"].split(",")]
    notes = tuple(
        f"role {role} is granted but not active by default: its privileges are not counted "
        f"(SET DEFAULT ROLE {role} FOR the monitor account)"
        for role in roles
        if role not in grantees
    )
    return frozenset(privileges), notes


def _names(listed: str) -> list[str]:
    names = []
    for raw in listed.split(","):
        name = " ".join(raw.split()).upper()
        names.append(_ALIASES.get(name, name))
    return names


@dataclass(frozen=True, slots=True)
class Capabilities:
    """Which of Baton's operations one account can perform on one server."""

    monitor: bool
    promote: bool
    repoint: bool
    fence: bool
    switchover: bool
    # Per operation that cannot be performed: the privileges to grant (the narrowest of
    # each statement's alternatives), in the order Baton would run into them.
    missing: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Per (operation, missing privilege), the first statement that needs it (for messages).
    needed_by: dict[tuple[str, str], str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def can(self) -> tuple[str, ...]:
        return tuple(op for op in OPERATIONS if getattr(self, op))

    @property
    def cannot(self) -> tuple[str, ...]:
        return tuple(op for op in OPERATIONS if not getattr(self, op))

    @property
    def auto_failover(self) -> bool:
        """Whether this server can take part in an automatic failover as its new master."""
        return self.monitor and self.promote and self.repoint

    def missing_text(self, operation: str) -> str:
        """E.g. "RELOAD (for RESET SLAVE ALL)"; "" when nothing is missing."""
        return ", ".join(
            f"{p} (for {self.needed_by[operation, p]})" for p in self.missing.get(operation, ())
        )

    def summary(self) -> str:
        """One line: what can be done, and for what cannot, which privilege is missing."""
        parts = [f"can: {', '.join(self.can) or 'nothing'}"]
        parts += [f"cannot {op}: needs {self.missing_text(op)}" for op in self.cannot]
        parts += list(self.notes)
        return "; ".join(parts)


def capabilities_from_grants(
    grants: Sequence[str], server_version: str, *, semi_sync: bool = False
) -> Capabilities:
    """What the account whose SHOW GRANTS output this is can do on a server of this version."""
    held, notes = global_privileges(grants)
    everything = "ALL PRIVILEGES" in held
    missing: dict[str, tuple[str, ...]] = {}
    needed_by: dict[tuple[str, str], str] = {}
    for operation, needs in requirements(server_version, semi_sync=semi_sync).items():
        lacking = [r for r in needs if not everything and not held.intersection(r.any_of)]
        if lacking:
            missing[operation] = tuple(dict.fromkeys(r.privilege for r in lacking))
            for r in lacking:
                needed_by.setdefault((operation, r.privilege), r.statement)
    return Capabilities(
        monitor="monitor" not in missing,
        promote="promote" not in missing,
        repoint="repoint" not in missing,
        fence="fence" not in missing,
        switchover="switchover" not in missing,
        missing=missing,
        needed_by=needed_by,
        notes=notes,
    )


async def probe(
    backend: BackendConfig, monitor: MonitorConfig, *, timeout: float = 5.0
) -> Capabilities:
    """Log in as the monitor account and read its grants on `backend`.

    Raises BackendError (cannot connect or log in) or QueryError (the server refused).
    """
    version, grants, semi_sync = await _read_grants(
        backend, monitor.user, monitor.password, timeout
    )
    return capabilities_from_grants(grants, version, semi_sync=semi_sync)


async def probe_replication(
    backend: BackendConfig, failover: FailoverConfig, *, timeout: float = 5.0
) -> str | None:
    """Why the replication account cannot replicate from `backend`, or None if it can."""
    user = failover.replication_user
    try:
        _, grants, _ = await _read_grants(backend, user, failover.replication_password, timeout)
    except (BackendError, QueryError) as e:
        return f"replication account {user!r}: {_failure(e)}"
    held, _ = global_privileges(grants)
    if held & {"REPLICATION SLAVE", "ALL PRIVILEGES"}:
        return None
    return f"replication account {user!r} lacks REPLICATION SLAVE"


async def _read_grants(
    backend: BackendConfig, user: str, password: str, timeout: float
) -> tuple[str, list[str], bool]:
    """(server version, SHOW GRANTS lines, semi-sync enabled) as `user` sees them."""
    conn = await connect(
        backend.name,
        backend.host,
        backend.port,
        Credentials(user, password.encode(), None),
        timeout=timeout,
        security=backend_security(backend),
        attributes={"_client_name": "baton", "program_name": "baton-probe"},
    )
    try:
        version = await conn.query("SELECT @@version", timeout=timeout)
        shown = await conn.query("SHOW GRANTS", timeout=timeout)
        try:
            semi = await conn.query(
                "SELECT @@rpl_semi_sync_master_enabled OR @@rpl_semi_sync_slave_enabled",
                timeout=timeout,
            )
            semi_sync = semi.rows[0][0] == b"1"
        except QueryError:
            semi_sync = False  # no semi-sync on this server
    finally:
        conn.close()
    server_version = (version.rows[0][0] or b"").decode()
    grants = [(r[0] or b"").decode("utf-8", "replace") for r in shown.rows]
    return server_version, grants, semi_sync


# -- the verdict: per backend, and whether auto failover and switchover can work ----------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether the accounts allow an automatic failover and a switchover, and if not, why."""

    auto: bool
    switchover: bool
    why_not_auto: str = ""
    why_not_switchover: str = ""


Probed = Capabilities | str  # a backend's capabilities, or why they could not be read


def judge(
    probed: Mapping[str, Probed],
    backends: Sequence[BackendConfig],
    master: str | None,
    failover: FailoverConfig,
    replication: Mapping[str, str | None] | None = None,
) -> Verdict:
    """Auto failover needs some promotable replica that can be promoted (and repoint);
    a switchover also needs the master to be fenced and repointed, and a replication_user
    that can replicate from every candidate (`replication`: per backend, why it cannot)."""
    candidates = [b.name for b in backends if b.name != master and b.promotable]
    if not candidates:
        nobody = "no promotable replica is configured"
        return Verdict(False, False, nobody, nobody)
    able = [
        n for n in candidates if isinstance(c := probed.get(n), Capabilities) and c.auto_failover
    ]
    why_auto = "" if able else _why_none(probed, candidates, ("monitor", "promote", "repoint"))
    why_switch = why_auto
    if not why_switch and not failover.replication_user:
        why_switch = "no [failover] replication_user (the old master must become a replica)"
    if not why_switch:
        problems = [
            f"{name}: {why}" for name in candidates if (why := (replication or {}).get(name))
        ]
        why_switch = "; ".join(problems)
    if not why_switch and master is not None:
        held = probed.get(master)
        if not isinstance(held, Capabilities):
            why_switch = f"{master}'s privileges unknown: {held or 'not probed'}"
        elif not (held.fence and held.repoint):
            lacking = "; ".join(
                held.missing_text(op) for op in ("fence", "repoint") if op in held.missing
            )
            why_switch = f"the master {master} cannot be fenced and repointed: needs {lacking}"
    return Verdict(not why_auto, not why_switch, why_auto, why_switch)


def _why_none(probed: Mapping[str, Probed], names: Sequence[str], ops: Sequence[str]) -> str:
    reasons = []
    for name in names:
        c = probed.get(name)
        if not isinstance(c, Capabilities):
            reasons.append(f"{name}: privileges unknown ({c or 'not probed'})")
            continue
        lacking: dict[str, str] = {}  # privilege -> the first statement that needs it
        for op in ops:
            for p in c.missing.get(op, ()):
                lacking.setdefault(p, c.needed_by[op, p])
        reasons.append(f"{name} lacks " + ", ".join(f"{p} (for {s})" for p, s in lacking.items()))
    return "no replica can be promoted: " + "; ".join(reasons)


class PrivilegeReport:
    """The last reading of every backend's grants, and what follows from it.

    Read at start and on reload (log lines), shown by SHOW BACKENDS and
    `baton check-config --probe`.
    """

    def __init__(self) -> None:
        self.probed: dict[str, Probed] = {}
        self.replication: dict[str, str | None] = {}  # per backend: why repl cannot, or None
        self.verdict: Verdict | None = None

    async def refresh(
        self,
        backends: Sequence[BackendConfig],
        monitor: MonitorConfig,
        failover: FailoverConfig,
        master: str | None,
        *,
        timeout: float = 5.0,
    ) -> Verdict:
        results = await asyncio.gather(
            *(probe(b, monitor, timeout=timeout) for b in backends), return_exceptions=True
        )
        self.probed = {
            b.name: r if isinstance(r, Capabilities) else _failure(r)
            for b, r in zip(backends, results, strict=True)
        }
        self.replication = {}
        if failover.replication_user:
            reasons = await asyncio.gather(
                *(probe_replication(b, failover, timeout=timeout) for b in backends)
            )
            self.replication = {b.name: r for b, r in zip(backends, reasons, strict=True)}
        self.verdict = judge(self.probed, backends, master, failover, self.replication)
        return self.verdict

    def lines(self, mode: str) -> list[tuple[int, str]]:
        """(log level, text) per backend and for the verdict; warnings for what cannot work."""
        out: list[tuple[int, str]] = []
        for name, c in self.probed.items():
            if not isinstance(c, Capabilities):
                out.append((logging.WARNING, f"privileges_unknown backend={name} reason={c!r}"))
                continue
            out.append((logging.INFO, f"privileges backend={name} can={','.join(c.can) or '-'}"))
            for op in c.cannot:
                out.append(
                    (
                        logging.WARNING,
                        f"privileges_missing backend={name} operation={op} "
                        f"missing={c.missing_text(op)!r}",
                    )
                )
            for note in c.notes:
                out.append((logging.WARNING, f"privileges_note backend={name} note={note!r}"))
        for name, why in self.replication.items():
            if why is not None:
                out.append((logging.WARNING, f"replication_account backend={name} problem={why!r}"))
        v = self.verdict
        if v is not None:
            auto_level = logging.WARNING if not v.auto and mode == "auto" else logging.INFO
            out.append(
                (
                    auto_level,
                    "automatic_failover "
                    + ("possible" if v.auto else f"impossible reason={v.why_not_auto!r}")
                    + f" mode={mode}",
                )
            )
            out.append(
                (
                    logging.INFO if v.switchover else logging.WARNING,
                    "switchover "
                    + (
                        "possible"
                        if v.switchover
                        else f"impossible reason={v.why_not_switchover!r}"
                    ),
                )
            )
        return out

    def text(self, mode: str) -> list[str]:
        """For `baton check-config --probe`: one line per backend, then the verdict."""
        out = [
            f"  {name}: {c.summary() if isinstance(c, Capabilities) else f'unknown: {c}'}"
            for name, c in self.probed.items()
        ]
        out += [f"  {name}: {why}" for name, why in self.replication.items() if why is not None]
        v = self.verdict
        if v is not None:
            out.append(
                f"automatic failover: {'possible' if v.auto else 'IMPOSSIBLE: ' + v.why_not_auto}"
                f" (mode {mode})"
            )
            out.append(
                "switchover: "
                + ("possible" if v.switchover else "IMPOSSIBLE: " + v.why_not_switchover)
            )
        return out

    def log(self, mode: str) -> None:
        for level, text in self.lines(mode):
            log.log(level, "%s", text)

    def can(self, name: str) -> str | None:
        """SHOW BACKENDS' `can`: the operations possible on `name`, None if unknown."""
        c = self.probed.get(name)
        return ",".join(c.can) or "-" if isinstance(c, Capabilities) else None

    def cannot(self, name: str) -> str | None:
        """SHOW BACKENDS' `cannot`: each impossible operation with what it needs."""
        c = self.probed.get(name)
        if not isinstance(c, Capabilities):
            return c  # why it is unknown
        return "; ".join(f"{op}: needs {c.missing_text(op)}" for op in c.cannot) or None


def _failure(error: BaseException) -> str:
    if isinstance(error, BackendError):
        return error.reason
    if isinstance(error, QueryError):
        return f"SHOW GRANTS refused: {error}"
    return repr(error)
