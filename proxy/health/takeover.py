"""Where an automatic failover stands, read from the servers: start, adopt, finish, or undo.

Whoever takes the failover lease may be the second to try: the first holder may have died
half-way. A promotion runs, on the chosen replica, STOP SLAVE IO_THREAD, (wait until
applied), STOP SLAVE, RESET SLAVE ALL, SET GLOBAL read_only = 0, then repoints the others.
So the servers say how far it got:

- a replica that is writable and replicates from nobody went all the way: adopt it as
  master and repoint the others;
- one that replicates from nobody but is still read-only stopped just before the end (it
  had applied everything it received before RESET SLAVE ALL): finish it, then as above;
- replicas of the old master with a stopped thread were stopped by the dead holder: start
  them again (undo), then elect as if nothing had happened;
- two servers in one of the first two situations: refuse; a human must choose.

Finishing and undoing are for a takeover only (another instance held the lease for this
failover): without that evidence a detached read-only replica may be one an operator took
out of replication, and a stopped thread one an operator stopped.

Pure: takes the monitor's BackendHealth values, returns a plan.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from proxy.health.monitor import BackendHealth


@dataclass(frozen=True)
class Resume:
    """What to do before (or instead of) an election.

    adopt: writable and detached, master from now on. finish: detached but read-only, to
    make writable first. restart: replicas of the old master whose threads were stopped.
    conflict: a reason to stop and alarm.
    """

    adopt: str | None = None
    finish: str | None = None
    restart: tuple[str, ...] = ()
    conflict: str | None = None

    @property
    def elect(self) -> bool:
        """Nothing was promoted half-way: choose a candidate as usual."""
        return self.adopt is None and self.finish is None and self.conflict is None


def plan_resume(
    old: str, servers: Iterable[BackendHealth], excluded: Iterable[str], *, took_over: bool
) -> Resume:
    """The plan for the failover away from `old`.

    `servers` are fresh health samples; `excluded` names servers that take no part
    (fenced former masters, OFFLINE_HARD): a fenced old master is detached and read-only
    too, and must not be taken for a half-promoted replica. `took_over`: another instance
    held the lease for this failover before us.
    """
    out = set(excluded) | {old}
    live = [h for h in servers if h.name not in out and h.alive and h.read_only is not None]
    detached = [h for h in live if not h.is_replica]
    writable = [h.name for h in detached if h.read_only is False]
    read_only = [h.name for h in detached if h.read_only is True]
    if len(writable) > 1:
        return Resume(
            conflict=f"several writable servers replicate from nobody: {_names(writable)}"
        )
    if writable and read_only:
        return Resume(
            conflict=f"{writable[0]} is writable but {_names(read_only)} also left replication"
        )
    if writable:
        return Resume(adopt=writable[0])
    if not took_over:
        return Resume()
    if len(read_only) > 1:
        return Resume(conflict=f"several servers left replication half-way: {_names(read_only)}")
    if read_only:
        return Resume(finish=read_only[0])
    stopped = tuple(
        h.name for h in live if h.master_name == old and (h.io_state == "No" or not h.sql_running)
    )
    return Resume(restart=stopped)


def _names(names: list[str]) -> str:
    return ", ".join(names)
