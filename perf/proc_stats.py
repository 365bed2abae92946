"""CPU time and memory of a running process, read from /proc (Linux only).

The benchmark samples a proxy before and after each sysbench run; the difference in CPU time
divided by the queries served is the proxy's cost per query, which is far steadier than
throughput on a shared machine (it does not depend on how much CPU the others left us).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """One reading of a process: CPU seconds used so far (all threads), resident memory now
    and at its peak."""

    pid: int
    user_seconds: float
    system_seconds: float
    rss_bytes: int
    peak_rss_bytes: int

    @property
    def cpu_seconds(self) -> float:
        return self.user_seconds + self.system_seconds


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of every thread of pid, in seconds (resolution: one clock tick).

    On loopback, stime includes the kernel's TCP work for the packets the process sends
    (the receiver's side of the stack runs in the sender's system call), so a proxy that only
    relays bytes still shows much system time.
    """
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces and parentheses: split after the last ")".
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """utime + stime of pid, in seconds."""
    return sum(cpu_times(pid))


def memory_bytes(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of pid in bytes: resident memory now and its high-water mark."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024  # reported in kB
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def sample(pid: int) -> ProcessSample:
    """CPU and memory of pid now; raises OSError (FileNotFoundError) if it is gone."""
    rss, peak = memory_bytes(pid)
    user, system = cpu_times(pid)
    return ProcessSample(pid, user, system, rss, peak)


def total_cpu_seconds(pids: list[int]) -> float:
    """Summed CPU seconds of several processes (e.g. every mariadbd of a topology); a process
    that is gone counts as 0."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:
            pass
    return total


@dataclass(frozen=True, slots=True)
class MachineSample:
    """Whole-machine CPU seconds so far (all cores, from /proc/stat): busy and total."""

    busy_seconds: float
    total_seconds: float


def machine_sample() -> MachineSample:
    """Busy = everything but idle and iowait. Taken around a run, busy minus what the
    benchmark's own processes used is the load other tenants put on the shared machine."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is already
    # counted in user/nice, so it is left out of the total.
    total = sum(values[:8])
    idle = values[3] + values[4]
    return MachineSample((total - idle) / CLOCK_TICKS, total / CLOCK_TICKS)


def children(pid: int) -> list[int]:
    """Direct children of pid (every thread's /proc/PID/task/TID/children); [] if it is gone."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            pass
    return found


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (a proxy's worker processes), parent first."""
    tree = [pid]
    i = 0
    while i < len(tree):
        tree.extend(c for c in children(tree[i]) if c not in tree)
        i += 1
    return tree


def tree_sample(pid: int) -> dict[int, ProcessSample]:
    """A sample of pid and of each of its descendants that is still there."""
    samples: dict[int, ProcessSample] = {}
    for p in process_tree(pid):
        try:
            samples[p] = sample(p)
        except OSError:
            pass
    return samples


@dataclass(frozen=True, slots=True)
class TreeUsage:
    """CPU used by a process tree between two samples: in all, and per process."""

    user_seconds: float
    system_seconds: float
    per_process: dict[int, float]  # pid -> CPU seconds (user + system) in the interval
    rss_bytes: int  # summed over the processes alive at the end
    peak_rss_bytes: int  # summed VmHWM (each process's own high-water mark)

    @property
    def cpu_seconds(self) -> float:
        return self.user_seconds + self.system_seconds


def tree_usage(before: dict[int, ProcessSample], after: dict[int, ProcessSample]) -> TreeUsage:
    """What each process used between the samples. A process that started in between counts
    from zero; one that ended in between counts up to ``before`` only (its last part is lost:
    /proc forgets it, and a reaped child's time goes to its parent's cutime, not counted)."""
    user = system = 0.0
    per: dict[int, float] = {}
    for pid, end in after.items():
        start = before.get(pid)
        du = end.user_seconds - (start.user_seconds if start else 0.0)
        ds = end.system_seconds - (start.system_seconds if start else 0.0)
        user += du
        system += ds
        per[pid] = du + ds
    return TreeUsage(
        user, system, per,
        sum(s.rss_bytes for s in after.values()),
        sum(s.peak_rss_bytes for s in after.values()),
    )
