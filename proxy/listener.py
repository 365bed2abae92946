"""A listener on ``[<section>] listen`` owned by an operator surface (admin port, metrics).

Binds when the section's ``listen`` is set and closes on shutdown; a reload that changes the
address moves it through ``proxy.listeners`` like the proxy's own listener (the new address is
bound before the reload commits; a failed bind refuses the reload).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from .config import Config
from .listeners import Listener


class ListenerHost(Protocol):
    """What a listener needs of the process."""

    @property
    def config(self) -> Config: ...


class OperatorListener(Listener):
    """A listener on ``[<section>] listen`` that reloads move through ``proxy.listeners``."""

    def __init__(
        self, host: ListenerHost, section: str, factory: Callable[[], asyncio.Protocol]
    ) -> None:
        super().__init__(section, factory)
        self.host = host

    async def start(self) -> None:
        await self.start_listening(self.host.config)
