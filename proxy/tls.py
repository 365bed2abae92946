"""TLS contexts for both sides, and server-side TLS over a memory BIO.

Towards backends, ``backend_security`` turns a backend's config into what a login needs: a
context that verifies the server when told to (``tls_ca``/``tls_verify``, hostname included),
and where an RSA key for caching_sha2 full authentication may come from.

A MySQL client sends SSLRequest and its TLS ClientHello back to back, often in one TCP segment.
``loop.start_tls()`` cannot be handed bytes that were already read, so the front end runs TLS
itself: bytes from the socket go into ``feed()``, plaintext comes out; ``write()`` encrypts.
The object also stands in for the transport, so forwarding code does not care.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import BackendConfig


def _harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """TLS 1.2 at least, and no renegotiation: a peer must not restart the handshake on a
    live connection (CPU cost on our side, and a known source of confused-identity bugs)."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    return ctx


def server_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.load_cert_chain(cert, key)
    return ctx


def client_context(
    verify: bool = False, ca: str = "", cert: str = "", key: str = ""
) -> ssl.SSLContext:
    """A context for logging into a backend. ``verify`` checks the server's chain (against
    ``ca``, or the system's trusted CAs) and its name; ``cert``/``key`` present a client
    certificate."""
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if verify:
        if ca:
            ctx.load_verify_locations(cafile=ca)
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


@dataclass(frozen=True, slots=True)
class BackendSecurity:
    """How Baton protects its logins to one backend.

    ``verified`` says the TLS context checks the server's certificate and name: only then may
    caching_sha2 full authentication send a password in clear over it. Without that, the
    password goes out RSA-encrypted to ``server_public_key``, or (only when
    ``get_server_public_key``) to a key the server sends, as MySQL's own client does.
    """

    tls: ssl.SSLContext | None = None
    server_name: str | None = None
    verified: bool = False
    server_public_key: bytes | None = None
    get_server_public_key: bool = False


NO_TLS = BackendSecurity()


log = logging.getLogger("baton.tls")

# tls_settings -> (modification times of its files, what was built from them)
_built: dict[tuple[Any, ...], tuple[tuple[int, ...], BackendSecurity]] = {}


def backend_security(backend: BackendConfig) -> BackendSecurity:
    """The same object for the same settings and files, so that callers can compare by
    identity (a pool is rebuilt when it changes) and the monitor does not re-read files at
    every probe. Replaced files (a rotated CA or certificate) are read again; if they cannot
    be, the previous ones stay in use and the error is logged."""
    settings = backend.tls_settings
    stamps = _stamps(settings)
    previous = _built.get(settings)
    if previous is not None and previous[0] == stamps:
        return previous[1]
    try:
        security = _build(settings)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        if previous is None:
            raise
        log.error("backend_tls_files_unusable backend=%s error=%r keeping=previous", backend.name, exc)
        return previous[1]
    _built[settings] = (stamps, security)
    return security


def _stamps(settings: tuple[Any, ...]) -> tuple[int, ...]:
    _, ca, _, _, cert, key, public_key_path, _ = settings
    stamps = []
    for path in (ca, cert, key, public_key_path):
        try:
            stamps.append(os.stat(path).st_mtime_ns if path else 0)
        except OSError:
            stamps.append(-1)
    return tuple(stamps)


def _build(settings: tuple[Any, ...]) -> BackendSecurity:
    tls, ca, verify, server_name, cert, key, public_key_path, get_key = settings
    public_key = Path(public_key_path).read_bytes() if public_key_path else None
    if not tls:
        return BackendSecurity(None, None, False, public_key, get_key)
    ctx = client_context(verify, ca, cert, key)
    return BackendSecurity(ctx, server_name if verify else None, verify, public_key, get_key)


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
