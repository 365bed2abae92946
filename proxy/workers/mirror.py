"""A worker's Topology follows the brain's, through the Topology's own inputs.

The brain alone monitors and decides; a worker receives the brain's ``TopologySnapshot`` after
every change and replays the difference on its local Topology: a newer epoch as a promotion
learnt from elsewhere (``promote(epoch=...)``, the path other Baton instances' promotions take
through Redis), fencing and its end, state changes, then read_only/replication observations.
The local bus then tells the worker's own subscribers (held statements, pools, sessions) exactly
as the monitor's verdicts would in one process. Pure: no I/O.
"""

from __future__ import annotations

import time
from typing import cast

from ..health.events import PROMOTION_SOURCES, PromotionSource
from ..health.states import StateChange
from ..health.topology import Topology, TopologySnapshot


def follow(topology: Topology, snapshot: TopologySnapshot, source: str) -> None:
    known = set(topology.backends())
    if snapshot.epoch > topology.epoch and snapshot.master is not None and snapshot.master in known:
        how = cast(PromotionSource, source if source in PROMOTION_SOURCES else "redis")
        topology.promote(snapshot.master, source=how, epoch=snapshot.epoch)
    local = {b.name: b for b in topology.snapshot().backends}
    for b in snapshot.backends:
        mine = local.get(b.name)
        if mine is None:
            continue
        if b.fenced and not mine.fenced:
            topology.fence(b.name)
        elif mine.fenced and not b.fenced and b.name != topology.master:
            topology.unfence(b.name)
        if b.state is not mine.state:
            topology.apply_state_change(
                b.name, StateChange(mine.state, b.state, "as the brain's monitor decided", time.monotonic(), b.lag_s)
            )
        if b.read_only is not None and (b.read_only, b.replicating_from, b.lag_s) != (
            mine.read_only, mine.replicating_from, mine.lag_s
        ):
            topology.observe(b.name, b.read_only, b.replicating_from, lag_s=b.lag_s)


def comparable(snapshot: TopologySnapshot) -> tuple[object, ...]:
    """The parts of a snapshot a worker cares about (not the time it was taken)."""
    return (snapshot.epoch, snapshot.master, snapshot.backends)
