"""The least CPU a Python proxy can spend per statement: each client connection gets one
connection to the master, and bytes go across unread (uvloop, one ``write`` per callback).

Not a proxy anyone should run (no routing, no protocol, no failover): ``perf/hotpath.py
--floor`` measures it beside Baton, so Baton's user CPU per statement can be split into what
any Python proxy pays (the event loop's callbacks and writes) and what Baton's own work adds.

    python -m perf.floor_proxy run --config config.toml   # [proxy] listen, the master backend
"""

from __future__ import annotations

import asyncio
import sys
import tomllib
from typing import cast

import uvloop


class _Backend(asyncio.Protocol):
    def __init__(self, client: _Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is no subclass)

    def data_received(self, data: bytes) -> None:
        assert self.client.transport is not None
        self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client.transport is not None:
            self.client.transport.close()


class _Client(asyncio.Protocol):
    def __init__(self, master: tuple[str, int]) -> None:
        self.master = master
        self.transport: asyncio.Transport | None = None
        self.backend: _Backend | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is no subclass)
        transport.pause_reading()  # until the backend connection is up
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.backend = await loop.create_connection(lambda: _Backend(self), *self.master)
        assert self.transport is not None
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        assert self.backend is not None and self.backend.transport is not None
        self.backend.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.backend is not None and self.backend.transport is not None:
            self.backend.transport.close()


async def _serve(config_path: str) -> None:
    with open(config_path, "rb") as f:
        config = tomllib.load(f)
    host, port = config["proxy"]["listen"].rsplit(":", 1)
    address = next(b["address"] for b in config["backends"] if b["role"] == "master")
    master_host, master_port = address.rsplit(":", 1)
    master = (master_host, int(master_port))
    server = await asyncio.get_running_loop().create_server(lambda: _Client(master), host, int(port))
    await server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1:2] != ["run"] or "--config" not in sys.argv:
        sys.exit("usage: python -m perf.floor_proxy run --config config.toml")
    uvloop.run(_serve(sys.argv[sys.argv.index("--config") + 1]))
