"""A listener on ``[<section>] listen`` that follows config reloads (admin port, metrics).

Binds when the section's ``listen`` is set, follows a reload that changes it (new address
bound first, old one closed after; a failed bind keeps the old one), closes on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from .config import AdminConfig, Config, MetricsConfig


class ListenerHost(Protocol):
    """What a listener needs of the process."""

    @property
    def config(self) -> Config: ...
    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def reload_hooks(self) -> list[Callable[[Config, Config], Awaitable[None]]]: ...


class OperatorListener:
    """A listener on ``[<section>] listen`` that follows config reloads."""

    def __init__(
        self, host: ListenerHost, section: str, factory: Callable[[], asyncio.Protocol]
    ) -> None:
        self.host = host
        self.section = section
        self.factory = factory
        self.server: asyncio.base_events.Server | None = None
        self.listen = ""
        self.log = logging.getLogger(f"baton.{section}")
        host.reload_hooks.append(self._on_reload)

    def _section(self, config: Config) -> AdminConfig | MetricsConfig:
        section: AdminConfig | MetricsConfig = getattr(config, self.section)
        return section

    async def start(self) -> None:
        cfg = self._section(self.host.config)
        if cfg.enabled:
            await self._bind(cfg)

    async def _bind(self, cfg: AdminConfig | MetricsConfig) -> None:
        server = await self.host.loop.create_server(
            self.factory, cfg.host, cfg.port, reuse_address=True
        )
        old, self.server = self.server, server
        if old is not None:
            old.close()
        self.listen = cfg.listen
        self.log.info("%s_listening address=%s", self.section, self.listen)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        self.listen = ""

    async def _on_reload(self, old: Config, new: Config) -> None:
        cfg = self._section(new)
        if cfg.listen == self.listen:
            return
        if not cfg.enabled:
            self.log.info("%s_closed reason=%r", self.section, "disabled by reload")
            self.close()
            return
        try:
            await self._bind(cfg)
        except OSError as exc:
            self.log.error(
                "%s_rebind_failed address=%s error=%r keeping=%s",
                self.section,
                cfg.listen,
                exc,
                self.listen,
            )
