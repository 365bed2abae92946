"""A client transport that speaks the compressed protocol, for clients that ask for it.

Stands in for the client's transport (plain or TLS) the way ``TLSTransport`` does, so the
forwarding code writes stream bytes as always and each write leaves as compressed packets.
Only clients pay for it: backends are spoken to uncompressed (they sit on a fast network
next to Baton, and forwarding their bytes untouched is what keeps the hot path cheap).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .protocol.compression import CompressedStream


class CompressedTransport:
    def __init__(self, transport: Any, stream: CompressedStream) -> None:
        self._transport = transport
        self.stream = stream

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(self.stream.wrap((data,)))

    def writelines(self, buffers: Iterable[bytes | bytearray | memoryview]) -> None:
        self._transport.write(self.stream.wrap(buffers))

    def __getattr__(self, name: str) -> Any:
        # close, abort, is_closing, pause_reading, get_extra_info, version, ...
        return getattr(self._transport, name)


