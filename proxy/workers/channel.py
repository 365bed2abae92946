"""The local channel between the brain and one worker: a socketpair, length-prefixed messages.

Each frame is a 4-byte big-endian length and a pickle of one message from ``messages.py``.
Both ends are Baton processes started by the same brain, so nothing untrusted crosses it; still,
the unpickler accepts only Baton's own classes and a few builtins, so a frame can name nothing
else. ``request`` sends a ``Request`` and resolves when the other end's ``Reply`` comes back;
every other message goes to ``on_message`` in the order it was sent.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import pickle
import struct
from collections.abc import Awaitable, Callable
from typing import Any, cast

from .messages import Reply, Request

log = logging.getLogger("baton.workers")

_HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024
_ALLOWED_MODULES = ("proxy.", "builtins", "collections", "datetime", "pathlib", "enum", "copyreg")


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith(_ALLOWED_MODULES):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a Baton message type")


def decode(body: bytes) -> object:
    return _Unpickler(io.BytesIO(body)).load()


def encode(message: object) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


class ChannelClosed(ConnectionError):
    """The process at the other end is gone."""


class Channel(asyncio.Protocol):
    def __init__(
        self,
        on_message: Callable[[object], None],
        on_request: Callable[[object], Awaitable[object]],
        on_closed: Callable[[], None],
    ) -> None:
        self.on_message = on_message
        self.on_request = on_request
        self.on_closed = on_closed
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[object]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        while len(buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buf)
            if size > MAX_FRAME:
                log.error("channel_frame_too_large size=%d", size)
                self.close()
                return
            end = _HEADER.size + size
            if len(buf) < end:
                return
            body = bytes(buf[_HEADER.size:end])
            del buf[:end]
            try:
                message = decode(body)
            except Exception:
                log.exception("channel_bad_frame")
                continue
            self._dispatch(message)

    def _dispatch(self, message: object) -> None:
        if isinstance(message, Reply):
            fut = self._pending.pop(message.id, None)
            if fut is not None and not fut.done():
                if message.error is not None:
                    fut.set_exception(RuntimeError(message.error))
                else:
                    fut.set_result(message.value)
        elif isinstance(message, Request):
            task = asyncio.ensure_future(self._answer(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            try:
                self.on_message(message)
            except Exception:
                log.exception("channel_message_failed message=%r", type(message).__name__)

    async def _answer(self, request: Request) -> None:
        try:
            value = await self.on_request(request.body)
        except Exception as exc:  # the asker gets the reason; this end carries on
            self.send(Reply(request.id, None, repr(exc)))
        else:
            self.send(Reply(request.id, value, None))

    def send(self, message: object) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(encode(message))

    async def request(self, body: object, timeout: float) -> object:
        if self.closed:
            raise ChannelClosed("worker channel closed")
        request_id = next(self._ids)
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        self.send(Request(request_id, body))
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(request_id, None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ChannelClosed("worker channel closed"))
        self._pending.clear()
        self.on_closed()
