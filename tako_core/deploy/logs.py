"""The instances' output on an env's servers: the newest lines of all of them in time order, then
(following) every new line as it is written, across dropped connections without gaps or repeats.

Secret values are masked by the agent as it writes the lines: reading them needs no secrets key.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import Callable
from dataclasses import dataclass

from tako_core.config import ResolvedEnv, Server
from tako_core.errors import AgentError, TransportError
from tako_core.transport import Connection
from tako_core.transport.agent_client import AgentClient, LogEntry, ReleaseRunInfo

__all__ = [
    "LogLine",
    "ReleaseOutput",
    "ReleaseRunInfo",
    "ServerLog",
    "labelled",
    "read_logs",
    "release_output",
]

RECONNECT_ATTEMPTS = 5  # in a row; a connection that comes back starts the count again


@dataclass(frozen=True)
class LogLine:
    server: str
    time: float  # epoch seconds; 0 for lines written before lines were stamped
    build: str
    instance: int | None
    line: str


def labelled(line: LogLine, several: bool) -> str:
    """`server | text`; `server#instance | text` when the env runs several instances per server."""
    who = f"{line.server}#{line.instance}" if several and line.instance is not None else line.server
    return f"{who} | {line.line}"


def _line(server: str, entry: LogEntry) -> LogLine:
    build, _, index = entry.source.rpartition("#")
    return LogLine(
        server=server,
        time=entry.time,
        build=build,
        instance=int(index) if index.isdigit() else None,
        line=entry.line,
    )


class ServerLog:
    """One server's instance output: a backlog, then following it from where the backlog ended."""

    def __init__(self, server: Server, target: ResolvedEnv) -> None:
        self.server = server
        self._app_env = (target.app, target.env)
        self._conn: Connection | None = None
        self._agent: AgentClient | None = None
        self.cursor: str | None = None
        self.error: str | None = None  # why this server could not be read

    async def backlog(self, lines: int, since: float) -> list[LogLine]:
        found: list[LogLine] = []
        try:
            agent = await self._connect()
            self.cursor = await agent.logs(
                *self._app_env, lambda e: found.append(_line(self.server.name, e)), lines=lines, since=since
            )
        except (AgentError, TransportError) as err:
            self.error = err.message
        return found

    async def follow(self, on_line: Callable[[LogLine], None]) -> None:
        """Every line after the backlog, as it is written; returns only when the server is lost for
        good (see `error`). Cancel it to stop."""

        def on_entry(entry: LogEntry) -> None:
            self.cursor = entry.cursor
            on_line(_line(self.server.name, entry))

        failures = 0
        while self.error is None:
            try:
                agent = await self._connect()
                failures = 0
                await agent.logs(*self._app_env, on_entry, cursor=self.cursor, follow=True)
            except (AgentError, TransportError) as err:
                failures += 1
                if failures > RECONNECT_ATTEMPTS:
                    self.error = err.message
                    return
                await self._drop()

    async def release_runs(self) -> list[ReleaseRunInfo]:
        """The release command runs this server keeps, newest first ([] when it cannot be read)."""
        try:
            return await (await self._connect()).release_runs(*self._app_env)
        except (AgentError, TransportError) as err:
            self.error = err.message
            return []

    async def release_lines(self, run_id: str) -> list[str]:
        """A run's whole output (a run still going is followed to its end)."""
        lines: list[str] = []
        agent = await self._connect()
        await agent.release_watch(*self._app_env, run_id, 0, lambda _offset, line: lines.append(line))
        return lines

    async def _connect(self) -> AgentClient:
        if self._agent is None:
            if self._conn is None:
                self._conn = await Connection.open(self.server)
            else:
                await self._conn.reconnect()
            self._agent = await self._conn.agent()
        return self._agent

    async def _drop(self) -> None:
        """Forget the agent client; the next `_connect` reconnects the SSH connection too."""
        if self._agent is not None:
            with contextlib.suppress(Exception):
                await self._agent.close()
            self._agent = None

    async def close(self) -> None:
        await self._drop()
        if self._conn is not None:
            with contextlib.suppress(TransportError, OSError):
                await self._conn.close()


def merged(backlogs: list[list[LogLine]], lines: int) -> list[LogLine]:
    """Each server's backlog (in its own order) merged into one in time order; the newest `lines`."""
    every = list(heapq.merge(*backlogs, key=lambda line: line.time))
    return every[-lines:] if lines > 0 else []


async def read_logs(
    servers: list[ServerLog], *, lines: int, since: float, on_line: Callable[[LogLine], None], follow: bool
) -> None:
    """The newest `lines` lines of all servers in time order, then (with `follow`) every new line as
    it comes, until cancelled or every server is lost. Closes the servers' connections at the end."""
    try:
        backlogs = await asyncio.gather(*(s.backlog(lines, since) for s in servers))
        for line in merged(list(backlogs), lines):
            on_line(line)
        if follow:
            await asyncio.gather(*(s.follow(on_line) for s in servers if s.error is None))
    finally:
        await asyncio.gather(*(s.close() for s in servers))


@dataclass(frozen=True)
class ReleaseOutput:
    """The output of one release command run, as the server that ran it (the leader then) kept it."""

    server: str
    run: ReleaseRunInfo
    lines: tuple[str, ...]


async def release_output(servers: list[ServerLog], build: str | None) -> ReleaseOutput | None:
    """The newest release command run of `build` (of any build: None) on any of the servers, with
    its whole output (a run still going is followed to its end); None when no server keeps one."""

    try:
        kept = await asyncio.gather(*(s.release_runs() for s in servers))
        pairs = zip(servers, kept, strict=True)
        found = [(s, r) for s, runs in pairs for r in runs if build in (None, r.build)]
        if not found:
            return None
        log, run = max(found, key=lambda f: f[1].started_at)
        lines = await log.release_lines(run.run_id)
        return ReleaseOutput(server=log.server.name, run=run, lines=tuple(lines))
    finally:
        await asyncio.gather(*(s.close() for s in servers))
