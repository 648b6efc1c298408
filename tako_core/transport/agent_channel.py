"""The agent protocol's channel: requests and their replies over any line-oriented reader/writer pair.

Works over asyncio streams (a local socket) and asyncssh's `open_unix_connection` alike. Many calls
may run at once on one channel; replies and events are matched to calls by request id. The typed
calls are `agent_client.AgentClient`'s, built on this.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from tako_core.agent.contract import LEASE_HELD, Json, Message, Op, ProtocolError, decode, encode, request
from tako_core.errors import AgentError, TransportError

M = TypeVar("M", bound=Message)


class Reader(Protocol):
    async def readline(self) -> bytes | str: ...


class Writer(Protocol):
    def write(self, data: bytes) -> Any: ...
    async def drain(self) -> None: ...
    def close(self) -> Any: ...


class AgentReplyError(AgentError):
    """The agent answered a request with an error; `code` is one of the contract's error codes."""

    def __init__(self, code: str, message: str, *, hint: str | None, details: dict[str, Any]) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.details = details


class LeaseHeld(AgentReplyError):
    """Someone else is deploying this app/env: `holder`, `build` and `started_at` (epoch seconds)."""

    @property
    def holder(self) -> str:
        return str(self.details.get("holder", "?"))

    @property
    def build(self) -> str:
        return str(self.details.get("build", "?"))

    @property
    def started_at(self) -> float:
        return float(self.details.get("started_at", 0.0))


class AgentDisconnected(AgentError, TransportError):
    """The connection to the agent ended before the reply came. Also a TransportError: the cure is
    the same as for a dropped SSH connection (reconnect, then e.g. re-attach a release watch)."""


def _refusal(reply: Json) -> AgentReplyError:
    error = reply.get("error") or {}
    kind = LeaseHeld if error.get("code") == LEASE_HELD else AgentReplyError
    return kind(
        str(error.get("code", "")),
        str(error.get("message", "the agent refused the request")),
        hint=error.get("hint"),
        details=dict(error.get("details") or {}),
    )


_Pending = tuple["asyncio.Future[Json]", Callable[[Json], None] | None]


class AgentChannel:
    """One connection to an agent: `_call` sends a request and waits for its reply."""

    def __init__(self, reader: Reader, writer: Writer) -> None:
        self._reader = reader
        self._writer = writer
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self._write_lock = asyncio.Lock()
        self._read_task: asyncio.Task[None] | None = None
        self._closed_reason: str | None = None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._read_task
        self._fail_pending("the connection was closed")

    # --- plumbing -------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = "the agent closed the connection"
        try:
            while True:
                raw = await self._reader.readline()
                if not raw:
                    break
                line = raw.encode() if isinstance(raw, str) else raw
                try:
                    message = decode(line)
                except ProtocolError:
                    continue  # nothing to match it to; the agent never sends these
                pending = self._pending.get(message.get("id"))  # type: ignore[arg-type]
                if pending is None:
                    continue
                future, on_event = pending
                if "event" in message:
                    if on_event is not None and not future.done():
                        try:
                            on_event(message)
                        except Exception as e:  # the caller's callback failed: that call fails
                            future.set_exception(e)
                elif not future.done():
                    future.set_result(message)
        except (OSError, EOFError, asyncio.IncompleteReadError, ValueError) as e:
            reason = f"the connection to the agent broke: {type(e).__name__}"
        finally:
            self._fail_pending(reason)

    def _fail_pending(self, reason: str) -> None:
        self._closed_reason = self._closed_reason or reason
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(AgentDisconnected(reason, hint="reconnect and retry"))

    async def _call(
        self,
        op: Op,
        params: Json,
        reply: type[M],
        on_event: Callable[[Json], None] | None = None,
        *,
        payload: bytes = b"",
    ) -> M:
        """Send one request (its line, then `payload`); its result read as a `reply`, its events
        passed to `on_event`."""
        if self._closed_reason is not None:
            raise AgentDisconnected(self._closed_reason, hint="reconnect and retry")
        request_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (future, on_event)
        try:
            async with self._write_lock:
                try:
                    self._writer.write(encode(request(request_id, op, params)) + payload)
                    await self._writer.drain()
                except (OSError, EOFError) as e:
                    raise AgentDisconnected(f"cannot send to the agent: {e}", hint="reconnect") from None
            answer = await future
            if answer.get("ok") is not True:
                raise _refusal(answer)
            return reply.from_wire(answer)
        except ProtocolError as e:  # from reading the result or an event
            raise AgentError(
                f"the agent's answer to {op.value} is unreadable: {e.message}",
                hint="upgrade tako or the agent so both speak the same protocol",
            ) from None
        finally:
            self._pending.pop(request_id, None)
