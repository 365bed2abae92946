"""Baton's listening sockets (proxy, admin, metrics) and how a reload moves them.

A reload must not say OK and then fail to listen. So it is two-phase: ``prepare_rebinds``
binds every new address while the old sockets still listen; if any bind fails, the ones
already bound are closed and the reload is refused (``ListenError`` names file, key, address
and reason) before anything of the new config is applied. Only after the new config is
applied does ``Rebind.commit`` close the old sockets. Open connections are never touched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .config import Config


class ListenError(Exception):
    """A new listen address could not be bound."""


class Listener:
    """One listening socket for ``[<section>] listen``."""

    def __init__(self, section: str, factory: Callable[[], asyncio.Protocol], backlog: int = 100) -> None:
        self.section = section
        self.factory = factory
        self.backlog = backlog
        self.server: asyncio.base_events.Server | None = None
        self.listen = ""
        self.log = logging.getLogger(f"baton.{section}")
        # Workers each bind the proxy address: the kernel spreads connections among them.
        self.reuse_port = False

    async def _open(self, cfg: Any) -> asyncio.base_events.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            self.factory, cfg.host, cfg.port, reuse_address=True, backlog=self.backlog,
            reuse_port=self.reuse_port or None,
        )

    async def start_listening(self, config: Config) -> None:
        """Binds ``config``'s address, if enabled (at start-up: a failure is fatal there)."""
        cfg = getattr(config, self.section)
        if getattr(cfg, "enabled", True):
            rebind = Rebind(self, await self._open(cfg), cfg.listen)
            rebind.commit()

    async def prepare(self, config: Config) -> Rebind | None:
        """The new socket for ``config``'s address, bound but not yet in use; None if the
        address does not change. Raises ListenError."""
        cfg = getattr(config, self.section)
        if cfg.listen == self.listen:
            return None
        if not getattr(cfg, "enabled", True):
            return Rebind(self, None, "")
        try:
            return Rebind(self, await self._open(cfg), cfg.listen)
        except OSError as exc:
            keeping = f"still listening on {self.listen!r}" if self.listen else "not listening"
            raise ListenError(
                f"{config.source}: {self.section}.listen: cannot listen on {cfg.listen!r}: "
                f"{exc.strerror or exc}; {keeping}"
            ) from None

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        self.listen = ""


@dataclass(slots=True)
class Rebind:
    """A listener's next socket (None: the section was disabled), waiting for the commit."""

    listener: Listener
    server: asyncio.base_events.Server | None
    listen: str

    def commit(self) -> None:
        listener = self.listener
        old, listener.server, listener.listen = listener.server, self.server, self.listen
        if old is not None:
            old.close()
        if self.server is None:
            listener.log.info("%s_closed reason=%s", listener.section, "disabled by reload")
        else:
            listener.log.info("%s_listening address=%s", listener.section, self.listen)

    def abort(self) -> None:
        if self.server is not None:
            self.server.close()


async def prepare_rebinds(listeners: Iterable[Listener], config: Config) -> list[Rebind]:
    """Binds every changed address of ``config``, or none: on the first failure the sockets
    bound so far are closed and ListenError is raised."""
    rebinds: list[Rebind] = []
    try:
        for listener in listeners:
            rebind = await listener.prepare(config)
            if rebind is not None:
                rebinds.append(rebind)
    except BaseException:
        for rebind in rebinds:
            rebind.abort()
        raise
    return rebinds
