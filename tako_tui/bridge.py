"""Core events → Textual messages, batched.

The core calls the sink synchronously, once per event, on the app's event loop. Posting a message per
event would flood the screen (a release command can print 100,000 lines), so the bridge collects
events and posts them as one `EventBatch` at most every `interval` seconds.
"""

from __future__ import annotations

import asyncio

from textual.message import Message
from textual.message_pump import MessagePump

from tako_core.events import DeployFinished, Event


class EventBatch(Message):
    """Every event since the previous batch, in the order the core emitted them."""

    def __init__(self, events: list[Event]) -> None:
        super().__init__()
        self.events = events


class EventBridge:
    def __init__(self, target: MessagePump, interval: float = 0.05) -> None:
        self._target = target
        self._interval = interval
        self._pending: list[Event] = []
        self._scheduled: asyncio.TimerHandle | None = None
        self.saw_finished = False

    def sink(self, event: Event) -> None:
        """The `EventSink` handed to the core: O(1), never blocks, never touches widgets."""
        self._pending.append(event)
        if isinstance(event, DeployFinished):
            self.saw_finished = True
        if self._scheduled is None:
            self._scheduled = asyncio.get_running_loop().call_later(self._interval, self.flush)

    def flush(self) -> None:
        """Post what has been collected now (also called when the run ends, so nothing lags behind)."""
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        if self._pending:
            events, self._pending = self._pending, []
            self._target.post_message(EventBatch(events))
