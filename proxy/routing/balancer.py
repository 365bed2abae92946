"""Smooth weighted round robin over replicas (nginx's algorithm).

With weights 1:1 it alternates exactly; with 2:1 it interleaves (a a b a a b) instead of
sending bursts. Candidates change from call to call (a replica lagging, shunned, drained), so
the balancer keeps a running score per name and only considers the names it is given.
"""

from __future__ import annotations


class WeightedRoundRobin:
    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def pick(self, candidates: list[str], weight_of: dict[str, int]) -> str | None:
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0] if weight_of.get(candidates[0], 1) > 0 else None
        current = self._current
        total = 0
        best: str | None = None
        best_score = 0
        for name in candidates:
            weight = weight_of.get(name, 1)
            if weight <= 0:
                continue
            score = current.get(name, 0) + weight
            current[name] = score
            total += weight
            if best is None or score > best_score:
                best, best_score = name, score
        if best is not None:
            current[best] -= total
        return best

    def forget(self, name: str) -> None:
        self._current.pop(name, None)
