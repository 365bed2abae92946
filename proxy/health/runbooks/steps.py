"""The SQL steps a change of master is made of, and the undo log that takes them back.

Switchover, automatic failover, a resumed promotion and an old master's rejoin are all made
of the same few moves: wait until a server has applied a position, make a replica the
writable master, make a server replicate from another by GTID. They live here once, each
recorded through FailoverCore.sql, so every runbook writes the same steps the same way.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

from proxy.backend import BackendError, QueryError
from proxy.health.runbooks.core import STEP_TIMEOUT_S, FailoverCore, PromotionRefused, log
from proxy.health.states import BackendState
from proxy.health.timeline import FailoverRecord

# Test-only fault point: BATON_TEST_CRASH_AFTER=set_writable makes the process exit (137, as
# after SIGKILL) right after it set a promotion target read_only=0, before it repointed
# anyone or published the promotion. tests/adversity/test_ha_takeover.py kills the lease holder so.
_CRASH_AFTER = os.environ.get("BATON_TEST_CRASH_AFTER", "")


def _crash_point(step: str) -> None:
    if _CRASH_AFTER == step:
        log.error("test_crash_point step=%s: exiting now (BATON_TEST_CRASH_AFTER)", step)
        logging.shutdown()
        os._exit(137)


@dataclass(frozen=True)
class Undo:
    """How to take back one promotion step: `sql` on `backend` (None: only by hand)."""

    backend: str
    sql: str | None
    shown: str | None = None


class ServerSteps:
    """Steps on the servers shared by every runbook, and what they read to choose them."""

    def __init__(self, core: FailoverCore) -> None:
        self._core = core

    async def wait_applied(
        self, rec: FailoverRecord, name: str, pos: str, timeout: float
    ) -> None:
        """Until `name` has applied `pos` (MASTER_GTID_WAIT), or PromotionRefused."""
        if not pos:
            return
        result = await self._core.value(
            name,
            f"SELECT MASTER_GTID_WAIT({quote(pos)}, {timeout:g})",
            timeout=timeout + STEP_TIMEOUT_S,
        )
        if result != "0":
            raise PromotionRefused(f"{name} did not apply {pos} within {timeout:g}s")
        self._core.step(rec, f"{name} has applied {pos}")

    async def take_writes(
        self, rec: FailoverRecord, name: str, semi: bool, undo: list[Undo], *, replicated_from: str
    ) -> None:
        """Make replica `name` the writable master; each step done is added to `undo`.

        RESET SLAVE ALL forgets the old master: undoing it means CHANGE MASTER TO back, which
        needs [failover] replication_user (without it the undo says what to do by hand).
        """
        sql = self._core.sql
        await sql(rec, name, "STOP SLAVE")
        undo.append(Undo(name, "START SLAVE"))
        await sql(rec, name, "RESET SLAVE ALL")
        undo.append(
            Undo(name, *self.change_master(replicated_from))
            if self._core.cfg.replication_user
            else Undo(name, None, f"make it a replica of {replicated_from} again")
        )
        await sql(rec, name, "SET GLOBAL read_only = 0")
        undo.append(Undo(name, "SET GLOBAL read_only = 1"))
        _crash_point("set_writable")
        if semi:
            await sql(rec, name, "SET GLOBAL rpl_semi_sync_master_enabled = 1")
            undo.append(Undo(name, "SET GLOBAL rpl_semi_sync_master_enabled = 0"))

    async def roll_back(self, rec: FailoverRecord | None, undo: list[Undo]) -> None:
        """Undo steps in reverse order, best effort; what cannot be undone is logged."""
        for step in reversed(undo):
            if step.sql is None:
                self._core.step(
                    rec, f"cannot undo on {step.backend}: {step.shown}; fix by hand", logging.ERROR
                )
                continue
            try:
                await self._core.sql(rec, step.backend, step.sql, shown=step.shown)
            except (BackendError, QueryError) as e:
                self._core.step(
                    rec,
                    f"undo failed, fix by hand: {step.backend}: {step.shown or step.sql}: {e}",
                    logging.ERROR,
                )
        undo.clear()

    async def repoint(
        self, rec: FailoverRecord, names: list[str], master: str, semi: bool
    ) -> None:
        """Repoint replicas concurrently; one that fails does not stop the failover."""
        results = await asyncio.gather(
            *(self.follow(rec, n, master, former_master=False, semi=semi) for n in names),
            return_exceptions=True,
        )
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                self._core.step(
                    rec, f"could not repoint {name} to {master}: {result}", logging.ERROR
                )

    async def follow(
        self, rec: FailoverRecord | None, name: str, master: str, *, former_master: bool, semi: bool
    ) -> None:
        """Make `name` replicate from `master` by GTID.

        A former master's own transactions are in its binlog, not in gtid_slave_pos (which
        is stale from its replica days), so its slave position is first set to its binlog
        position: MariaDB's advice, rather than the deprecated MASTER_USE_GTID=current_pos.
        """
        statements: list[tuple[str, str | None]] = [("STOP SLAVE", None)]
        if former_master:
            statements.append(("SET GLOBAL read_only = 1", None))
            statements.append(("SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos", None))
        if semi:
            statements.append(("SET GLOBAL rpl_semi_sync_slave_enabled = 1", None))
        statements += [self.change_master(master), ("START SLAVE", None)]
        for sql, display in statements:
            await self._core.sql(rec, name, sql, shown=display)

    def change_master(self, master: str) -> tuple[str, str]:
        """CHANGE MASTER TO `master` by GTID, and the same text with the password hidden.

        Without [failover] replication_user the server keeps the account it has (a former
        master, or a replica after RESET SLAVE ALL, has none).
        """
        cfg = self._core.cfg
        target = self._core.backends[master]
        change = f"CHANGE MASTER TO MASTER_HOST={quote(target.host)}, MASTER_PORT={target.port}"
        shown = change
        if cfg.replication_user:
            change += f", MASTER_USER={quote(cfg.replication_user)}"
            shown = change + ", MASTER_PASSWORD='***'"
            change += f", MASTER_PASSWORD={quote(cfg.replication_password)}"
        tail = ", MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1"
        return change + tail, shown + tail

    async def histories(self, name: str, master: str) -> tuple[str, str]:
        """@@gtid_binlog_state of `name`, then of `master`. In that order: a replica that
        receives more between the two reads gets it from the master, whose later state
        then has it too, so a busy replica is never taken for a diverged one."""
        mine = await self._core.value(name, "SELECT @@gtid_binlog_state")
        theirs = await self._core.value(master, "SELECT @@gtid_binlog_state")
        return mine, theirs

    def other_replicas(self, new: str, old: str) -> list[str]:
        """Live replicas to repoint: every reachable server with replication configured."""
        return [
            h.name
            for h in self._core.monitor.all_health()
            if h.name not in (new, old)
            and h.alive
            and h.is_replica
            and h.state is not BackendState.OFFLINE_HARD
        ]

    def follows(self, name: str, master: str) -> bool:
        h = self._core.monitor.health(name)
        return h.master_name == master and h.io_running and h.sql_running

    def semi_sync_wanted(self, old: str) -> bool:
        """Semi-sync carries over if the old master had it or any replica acknowledges."""
        healths = self._core.monitor.all_health()
        return any(
            (h.name == old and h.semi_sync_master)
            or (h.name != old and h.alive and h.semi_sync_slave)
            for h in healths
        )


def quote(text: str) -> str:
    """A SQL string literal (default sql_mode: backslash escapes)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
