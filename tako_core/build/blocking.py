"""Run blocking work (walking, hashing, compressing) off the event loop, abandonably.

The TUI shares the event loop with the deploy, so nothing here may block it. A cancelled await
cannot stop a thread; the worker instead checks the `cancel` event between files and raises
`Abandoned`, so an aborted deploy stops packing within one file and leaves no temp file behind.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Abandoned(Exception):
    """Raised inside a worker thread whose awaiting task was cancelled; nobody awaits it any more."""


def check(cancel: threading.Event) -> None:
    if cancel.is_set():
        raise Abandoned


async def in_thread(work: Callable[[threading.Event], T]) -> T:
    cancel = threading.Event()
    try:
        return await asyncio.to_thread(work, cancel)
    except asyncio.CancelledError:
        cancel.set()
        raise
