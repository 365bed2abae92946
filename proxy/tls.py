"""Server-side TLS over a memory BIO.

A MySQL client sends SSLRequest and its TLS ClientHello back to back, often in one TCP segment.
``loop.start_tls()`` cannot be handed bytes that were already read, so the front end runs TLS
itself: bytes from the socket go into ``feed()``, plaintext comes out; ``write()`` encrypts.
The object also stands in for the transport, so forwarding code does not care.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from typing import Any


def server_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def client_context(verify: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class TLSTransport:
    """Wraps a plain transport; ``feed`` decrypts, ``write``/``writelines`` encrypt."""

    def __init__(self, ctx: ssl.SSLContext, transport: asyncio.Transport) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_side=True)
        self._transport = transport
        self.handshake_done = False

    def feed(self, data: bytes) -> bytes:
        """Ciphertext in; any application data that could be decrypted out."""
        self._in.write(data)
        if not self.handshake_done:
            try:
                self._obj.do_handshake()
                self.handshake_done = True
            except ssl.SSLWantReadError:
                self._flush()
                return b""
            self._flush()
        chunks = []
        while True:
            try:
                chunk = self._obj.read(262144)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        self._flush()
        return b"".join(chunks)

    def _flush(self) -> None:
        data = self._out.read()
        if data and not self._transport.is_closing():
            self._transport.write(data)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._obj.write(data)
        self._flush()

    def writelines(self, buffers: Iterable[bytes | bytearray | memoryview]) -> None:
        for buf in buffers:
            self._obj.write(buf)
        self._flush()

    @property
    def version(self) -> str | None:
        return self._obj.version()

    def get_extra_info(self, name: str, default: object = None) -> object:
        if name == "ssl_object":
            return self._obj
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        # close, abort, is_closing, pause_reading, resume_reading, get_write_buffer_size, ...
        return getattr(self._transport, name)
