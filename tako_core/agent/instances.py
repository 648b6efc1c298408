"""Instances: the app's `start` processes, each on its own loopback port, restarted when they die.

An instance outlives the agent: `leave` stops watching it without stopping it, and the next agent
`adopt`s it (same process, same port) and supervises it as if it had started it."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tako_core.agent import procs
from tako_core.agent.accounts import Account
from tako_core.agent.contract import clip
from tako_core.agent.logs import OutputLog
from tako_core.agent.router import Upstream
from tako_core.mask import Masker

STOP_GRACE = 10.0  # SIGTERM, this long, then SIGKILL
TAIL_LINES = 20
_BACKOFF_MAX = 30.0
_STABLE_AFTER = 60.0  # an instance up this long restarts with a fresh backoff

log = logging.getLogger("tako.agent")


@dataclass(frozen=True, kw_only=True)
class InstanceSpec:
    build: str
    cwd: Path
    command: str
    env: dict[str, str]  # without PORT
    masker: Masker
    pipes: Path  # the directory of the instances' output FIFOs, one per port
    account: Account | None = None  # the app's own user; None: the agent's


class Instance:
    def __init__(self, spec: InstanceSpec, *, index: int, port: int, output: OutputLog) -> None:
        self.spec = spec
        self.index = index
        self.port = port
        self.upstream = Upstream("127.0.0.1", port)
        self.output = output
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.restarts = 0
        self.exit_code: int | None = None  # of the latest process, once it exited
        self.started_at: float | None = None  # wall clock of the latest process's start
        self._proc: procs.Watched | None = None
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._pump: asyncio.Future[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def output_pipe(self) -> Path:
        return self.spec.pipes / str(self.port)

    async def start(self) -> None:
        await self._spawn()
        self._supervisor = asyncio.ensure_future(self._supervise())

    async def adopt(self, pid: int) -> None:
        """Supervise `pid`, this instance's process as an earlier agent left it running."""
        self._proc = procs.Watched(pid)
        self.started_at = procs.started_at(pid)
        self._pump = asyncio.ensure_future(self._read(procs.read_output(self.output_pipe)))
        self._supervisor = asyncio.ensure_future(self._supervise())

    async def _spawn(self) -> None:
        env = dict(self.spec.env, PORT=str(self.port))
        self.exit_code = None
        self.started_at = time.time()
        theirs, ours = procs.open_output(self.output_pipe)
        try:
            self._proc = procs.spawn_instance(
                self.spec.command, self.spec.cwd, env, theirs, self.spec.account
            )
        except BaseException:
            os.close(ours)
            raise
        finally:
            os.close(theirs)
        self._pump = asyncio.ensure_future(self._read(ours))

    async def _read(self, fd: int) -> None:
        source = f"{self.spec.build}#{self.index}"
        async for line in procs.lines(await procs.output_reader(fd), self.spec.masker):
            masked = clip(line)
            self.tail.append(masked)
            self.output.write(source, masked)

    async def _supervise(self) -> None:
        backoff = 1.0
        while True:
            assert self._proc is not None
            started = time.monotonic()
            self.exit_code = await self._proc.wait()
            if self._stopping:
                return
            log.warning(
                "instance %s#%d (port %d) exited with %s; restarting in %.0f s",
                self.spec.build,
                self.index,
                self.port,
                self.exit_code,
                backoff,
            )
            await procs.kill_group(self._proc.pid, 0)  # leftovers would hold the port
            backoff = 1.0 if time.monotonic() - started > _STABLE_AFTER else backoff
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)
            if self._stopping:
                return
            self.restarts += 1
            await self._spawn()

    async def stop(self, grace: float = STOP_GRACE) -> None:
        self._stopping = True
        if self._supervisor:
            self._supervisor.cancel()
        if self._proc is not None:
            await procs.kill_group(self._proc.pid, grace)
            self.exit_code = await self._proc.wait()
        self.output_pipe.unlink(missing_ok=True)

    async def leave(self) -> None:
        """Stop supervising, leave the process running (for the next agent to adopt)."""
        self._stopping = True
        for task in (self._supervisor, self._pump):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (self._supervisor, self._pump) if t), return_exceptions=True)
        if self._proc is not None:
            self._proc.forget()
