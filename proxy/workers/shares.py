"""What each worker gets of the configured totals, and whose a connection id is.

Caps are divided so that the configured total holds across workers: worker ``i`` of ``n`` gets
``total // n``, plus one for the first ``total % n`` workers (7 over 2: 4 and 3). A share is
never below 1, so a cap smaller than the number of workers (2 connections, 4 workers) allows
one per worker: the total is then ``n``, not the cap. Divided: [proxy]
max_backend_connections and max_client_connections, and each user's max_connections and
max_backend_connections (0, unlimited, stays 0). The kernel spreads clients over workers by
a hash of their address, not evenly, so a worker may refuse a client while another has room.

Connection ids: worker ``i`` of ``n`` hands out ``k * n + i + 1`` (k = 0, 1, ...), so ids never
collide and ``(id - 1) % n`` names the worker holding a session. A restarted worker starts
``k`` past every id its previous run could have used (``generation << GENERATION_SHIFT``).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

from ..config import Config

GENERATION_SHIFT = 20


def share(total: int, index: int, count: int) -> int:
    base, extra = divmod(total, count)
    return max(1, base + (1 if index < extra else 0))


def worker_config(config: Config, index: int, count: int) -> Config:
    """``config`` with worker ``index``'s share of every connection cap."""
    if count == 1:
        return config
    proxy = dataclasses.replace(
        config.proxy,
        max_backend_connections=share(config.proxy.max_backend_connections, index, count),
        max_client_connections=share(config.proxy.max_client_connections, index, count),
    )
    users = tuple(
        dataclasses.replace(
            u,
            max_connections=share(u.max_connections, index, count) if u.max_connections else 0,
            max_backend_connections=(
                min(share(u.max_backend_connections, index, count), proxy.max_backend_connections)
                if u.max_backend_connections else 0
            ),
        )
        for u in config.users
    )
    return dataclasses.replace(config, proxy=proxy, users=users)


def connection_ids(index: int, count: int, generation: int) -> Iterator[int]:
    return (k * count + index + 1 for k in itertools.count(generation << GENERATION_SHIFT))


def worker_of(client_id: int, count: int) -> int:
    return (client_id - 1) % count
