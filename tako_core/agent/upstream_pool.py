"""Connections from the router to one upstream: idle keep-alive ones kept for reuse, new ones opened
with a deadline."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from tako_core.agent.compat import WaitTimeout
from tako_core.agent.stream import Stream

log = logging.getLogger("tako.agent")

CONNECT_TIMEOUT = 5.0  # seconds to open a connection to an upstream
_MAX_IDLE = 256  # pooled idle connections kept per upstream


@dataclass(frozen=True)
class Upstream:
    """Where an app instance listens."""

    host: str
    port: int


class ConnectFailed(Exception):
    """The upstream refused the connection, or did not accept it within CONNECT_TIMEOUT."""


class UpstreamPool:
    __slots__ = ("_idle", "upstream")

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self._idle: list[Stream] = []

    def checkout(self) -> Stream | None:
        """An idle connection that is still good, if any (synchronous: the hot path)."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.reusable():
                return conn
            conn.close()
        return None

    async def connect(self) -> Stream:
        up = self.upstream
        connecting = asyncio.get_running_loop().create_connection(Stream, up.host, up.port)
        try:
            _, conn = await asyncio.wait_for(connecting, CONNECT_TIMEOUT)
        except (OSError, WaitTimeout) as e:
            log.warning("router: cannot connect to %s:%s: %s", up.host, up.port, e)
            raise ConnectFailed from None
        return conn

    def checkin(self, conn: Stream, *, reuse: bool) -> None:
        """Done with `conn`: kept for the next request when `reuse` and it is still good, else closed."""
        if reuse and len(self._idle) < _MAX_IDLE and conn.reusable():
            self._idle.append(conn)
        else:
            conn.close()

    def close_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
