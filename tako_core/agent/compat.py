"""Python 3.10 differences the agent must honour (it runs on the server's own python3)."""

from __future__ import annotations

import asyncio

# Before 3.11, asyncio.wait_for raises asyncio.TimeoutError, which is not the builtin TimeoutError.
WaitTimeout: type[Exception] = asyncio.TimeoutError
