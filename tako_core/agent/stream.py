"""The router's connections: one lean asyncio Protocol per socket (client or upstream), read by one task.

A read hands the received bytes straight to the waiting task; reading pauses past a high-water mark and
writes wait while the transport's buffer is full, so a slow peer on either side never grows memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import cast

_HIGH_WATER = 256 * 1024  # unread bytes buffered per connection before reading pauses
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class Stream(asyncio.Protocol):
    """A byte stream over one socket: `read`, `write` + `drain`, half-close, close."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf: list[bytes] = []
        self._buffered = 0
        self._eof = False
        self.lost = False
        self._reader: asyncio.Future[bytes] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._read_paused = False
        self._write_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        r = self._reader
        if r is not None:
            self._reader = None
            if not r.done():
                r.set_result(data)
                return
        self._buf.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return True  # keep the write side open: a half-closed client still gets its response

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self.lost = True
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()

    def _wake_reader(self) -> None:
        r, self._reader = self._reader, None
        if r is not None and not r.done():
            r.set_result(b"")

    def _wake_writer(self) -> None:
        w, self._writable = self._writable, None
        if w is not None and not w.done():
            w.set_result(None)

    async def read(self) -> bytes:
        """The next bytes received; b"" once the peer closed."""
        buf = self._buf
        if buf:
            data = buf[0] if len(buf) == 1 else b"".join(buf)
            buf.clear()
            self._buffered = 0
            if self._read_paused and self.transport is not None:
                self._read_paused = False
                self.transport.resume_reading()
            return data
        if self._eof:
            return b""
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._reader = fut
        return await fut

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        if self.lost:
            raise ConnectionResetError("peer closed the connection")
        if self._write_paused:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._writable = fut
            await fut
            if self.lost:
                raise ConnectionResetError("peer closed the connection")

    def write_eof(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if t.can_write_eof():
            t.write_eof()
        else:
            t.close()  # TLS has no half-close (close_notify ends both ways): close once the buffer is sent

    def quickack(self) -> None:
        """Acknowledge the next segment at once. An app that writes a response in two pieces without
        TCP_NODELAY holds the second until the first is acknowledged, and Linux delays that ACK by
        up to 40 ms: asked only while a response is incomplete, so a one-piece answer costs nothing."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is not None and _QUICKACK is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    def reusable(self) -> bool:
        """An idle pooled connection is reusable when the upstream neither closed it nor sent bytes."""
        t = self.transport
        return not self._eof and not self._buf and t is not None and not t.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
