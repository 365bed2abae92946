"""Socket settings shared by the client side and the backend side."""

from __future__ import annotations

import asyncio
import socket


def tcp_nodelay(transport: asyncio.BaseTransport) -> None:
    """Small request/response packets must leave at once: Nagle would add up to 40 ms."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP (a unix socket): nothing to do
            pass
