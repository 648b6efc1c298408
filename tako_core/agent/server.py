"""The agent's socket: NDJSON requests in, tagged events and results out, many requests per connection.

Bad input never ends the conversation: a malformed, oversized or unknown request gets an error reply
(with id null when its id is unreadable) and the connection keeps serving. The one exception is an
upload chunk whose `raw` length is unusable: its bytes follow its line, so the stream is out of step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from tako_core.agent.contract import (
    BAD_REQUEST,
    INTERNAL,
    MAX_LINE,
    PROTOCOL_VERSION,
    TOO_LARGE,
    UNSUPPORTED_VERSION,
    UPLOAD_CHUNK,
    Event,
    Json,
    Message,
    Op,
    ProtocolError,
    decode,
    encode,
    event,
    failure,
    ok,
)
from tako_core.agent.params import Params
from tako_core.agent.service import Agent

log = logging.getLogger("tako.agent")

_OVERSIZED = b"\0oversized"  # sentinel; never a real line (real lines end with a newline)


async def read_line(reader: asyncio.StreamReader) -> bytes | None:
    """The next line, `_OVERSIZED` for a line over MAX_LINE (skipped without buffering), None at EOF."""
    oversized = False
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as e:
            return (_OVERSIZED if oversized else e.partial) if e.partial or oversized else None
        except asyncio.LimitOverrunError as e:
            await reader.readexactly(e.consumed)  # drop what we have, keep looking for the newline
            oversized = True
            continue
        return _OVERSIZED if oversized else line


class Connection:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.closed = False
        self._lock = asyncio.Lock()

    def send(self, message: Json) -> None:
        if not self.closed and not self.writer.is_closing():
            self.writer.write(encode(message))

    async def flush(self) -> None:
        async with self._lock:
            if not self.closed and not self.writer.is_closing():
                try:
                    await self.writer.drain()
                except ConnectionError:
                    self.closed = True


class _Events:
    """The events of one request, tagged with its id."""

    def __init__(self, conn: Connection, request_id: int) -> None:
        self._conn = conn
        self._id = request_id

    def __call__(self, message: Event) -> None:
        self._conn.send(event(self._id, message))

    async def drain(self) -> None:
        await self._conn.flush()


class AgentServer:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._background: set[asyncio.Future[Any]] = set()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a socket left by an agent that died; the root lock says it is gone
        old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            self._server = await asyncio.start_unix_server(self._handle, path=str(path), limit=MAX_LINE)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            # Since 3.12 wait_closed() also waits for open connections: end them first.
            for writer in self._writers:
                writer.close()
            await self._server.wait_closed()
        # A change still running (say a rollout waiting for health) is cancelled: its own cleanup
        # routes back to the old instances, where waiting could outlast whoever is stopping us.
        for task in self._background:
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(writer)
        self._writers.add(writer)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    line = await read_line(reader)
                except ConnectionError:
                    break
                if line is None:
                    break
                if line == _OVERSIZED:
                    conn.send(failure(None, ProtocolError(TOO_LARGE, f"request line over {MAX_LINE} bytes")))
                    await conn.flush()
                    continue
                if not line.strip():
                    continue
                message: Json | ProtocolError
                try:
                    message = decode(line)
                except ProtocolError as e:
                    message = e
                else:
                    raw = message.get("raw")  # an upload chunk: that many bytes follow the line
                    if message.get("op") == Op.UPLOAD.value and raw is not None:
                        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= UPLOAD_CHUNK:
                            # What follows cannot be told apart from the next request: end here.
                            bad = ProtocolError(BAD_REQUEST, f"raw must be 0 to {UPLOAD_CHUNK} bytes")
                            conn.send(failure(None, bad))
                            await conn.flush()
                            break
                        try:
                            message["raw"] = await reader.readexactly(raw)
                        except (asyncio.IncompleteReadError, ConnectionError):
                            break
                task = asyncio.ensure_future(self._serve(conn, message))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            conn.closed = True
            for task in tasks:
                task.cancel()
            self._writers.discard(writer)
            writer.close()

    async def _serve(self, conn: Connection, message: Json | ProtocolError) -> None:
        request_id: Any = None
        try:
            if isinstance(message, ProtocolError):
                raise message
            request_id = message.get("id")
            if not isinstance(request_id, int) or isinstance(request_id, bool):
                request_id = None
                raise ProtocolError(BAD_REQUEST, "every request needs an integer id")
            if message.get("v") != PROTOCOL_VERSION:
                raise ProtocolError(
                    UNSUPPORTED_VERSION,
                    f"protocol version {message.get('v')!r} is not {PROTOCOL_VERSION}",
                    hint="upgrade tako or the agent so both speak the same protocol",
                )
            op = Op.parse(message.get("op"))
            work = self.agent.handler(op)(Params(message), _Events(conn, request_id))
            result = await (asyncio.shield(self._keep(work)) if op.detached else work)
            reply = ok(request_id, result)
        except ProtocolError as e:
            reply = failure(request_id, e)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug must cost one request, never the agent
            log.exception("request %s failed", request_id)
            reply = failure(request_id, ProtocolError(INTERNAL, f"internal error: {type(e).__name__}"))
        conn.send(reply)
        await conn.flush()

    def _keep(self, work: Awaitable[Message]) -> asyncio.Future[Message]:
        """Run `work` to its end even if the request waiting for it is cancelled."""
        task = asyncio.ensure_future(work)
        self._background.add(task)

        def done(t: asyncio.Future[Any]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.info("detached request ended with %s", type(t.exception()).__name__)

        task.add_done_callback(done)
        return task
