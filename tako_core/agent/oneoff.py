"""One-off commands (`tako run`): run once in the release the instances run, with their environment.

The client sends only the command: the environment (vars, secrets, TAKO_*) is the one the agent
keeps for the instances, so secrets never travel in argv, a file or a process listing, and the run
needs no secrets key on the client. Output is masked before it leaves the agent. With a terminal the
command gets a PTY of the client's size; keys come back through exec_input, resizes through
exec_resize. The run ends with its request: a client that goes away takes its command with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable

from tako_core.agent import procs, releases
from tako_core.agent.compat import WaitTimeout
from tako_core.agent.contract import (
    LEASE_HELD,
    NOT_FOUND,
    ExecResult,
    ExecStarted,
    ProtocolError,
)
from tako_core.agent.leases import Leases
from tako_core.agent.rollout import AppRuntime
from tako_core.mask import ChunkMasker, Masker

KILL_GRACE = 2.0
_SETTLE = 1.0  # after the command exits, how long its last output may take to arrive


class OneOff:
    def __init__(self, proc: asyncio.subprocess.Process, terminal: int | None) -> None:
        self.proc = proc
        self.terminal = terminal  # the PTY's leader fd

    def write(self, data: bytes) -> None:
        if self.terminal is not None:
            os.write(self.terminal, data)

    def resize(self, rows: int, cols: int) -> None:
        if self.terminal is not None:
            procs.resize(self.terminal, rows, cols)


class OneOffs:
    """The one-off commands running now, by id."""

    def __init__(self) -> None:
        self._running: dict[str, OneOff] = {}

    def find(self, exec_id: str) -> OneOff:
        if exec_id not in self._running:
            raise ProtocolError(NOT_FOUND, f"no command {exec_id[:40]!r} runs")
        return self._running[exec_id]

    async def run(
        self,
        runtime: AppRuntime,
        leases: Leases,
        command: str,
        *,
        size: tuple[int, int] | None,
        force: bool,
        started: Callable[[ExecStarted], None],
        output: Callable[[str], None],
        drain: Callable[[], Awaitable[None]],
    ) -> ExecResult:
        state = runtime.state
        if state is None or not releases.is_complete(runtime.layout, state.build):
            raise ProtocolError(NOT_FOUND, f"{runtime.key} runs nothing here yet", hint="deploy it first")
        lease = leases.get(runtime.app, runtime.env)
        if lease is not None and not force:
            raise ProtocolError(
                LEASE_HELD,
                f"{runtime.key} is being deployed by {lease.info.holder} (build {lease.info.build})",
                hint="wait for the deploy to finish, or pass --force to run anyway",
                **lease.info.to_wire(),
            )
        env = runtime.environment(state)
        masker = Masker(state.secrets.values())
        cwd = runtime.layout.release(state.build)
        terminal = follower = None
        if size is not None:
            terminal, follower = procs.open_terminal(*size)
        try:
            proc = await procs.spawn(command, cwd, env, terminal=follower, account=runtime.layout.account())
        except BaseException:
            for fd in (terminal, follower):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            if follower is not None:
                os.close(follower)
        exec_id = os.urandom(8).hex()
        self._running[exec_id] = OneOff(proc, terminal)
        chunks = _terminal(terminal, masker) if terminal is not None else _piped(proc, masker)
        pump = asyncio.ensure_future(_pump(chunks, output, drain))
        try:
            started(ExecStarted(exec_id=exec_id, build=state.build))
            await proc.wait()
            with contextlib.suppress(WaitTimeout):
                await asyncio.wait_for(asyncio.shield(pump), _SETTLE)
        finally:
            del self._running[exec_id]
            await procs.kill_group(proc.pid, 0 if proc.returncode is not None else KILL_GRACE)
            pump.cancel()
            await asyncio.wait([pump])
            if terminal is not None:
                os.close(terminal)
        code = proc.returncode if proc.returncode is not None else -9
        return ExecResult(exit_code=code if code >= 0 else 128 - code)


async def _piped(proc: asyncio.subprocess.Process, masker: Masker) -> AsyncIterator[str]:
    assert proc.stdout is not None
    async for line in procs.lines(proc.stdout, masker):
        yield line + "\n"


async def _terminal(fd: int, masker: Masker) -> AsyncIterator[str]:
    """What the command writes to its PTY, as masked text, until every holder of the follower end
    is gone."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)  # small reads keep each event far below the line limit
        except OSError:  # EIO: the follower end is closed everywhere
            data = b""
        if not data:
            loop.remove_reader(fd)
        queue.put_nowait(data)

    loop.add_reader(fd, readable)
    stream = ChunkMasker(masker)
    try:
        while data := await queue.get():
            if text := stream.feed(data):
                yield text
        if text := stream.close():
            yield text
    finally:
        loop.remove_reader(fd)


async def _pump(
    chunks: AsyncIterator[str], output: Callable[[str], None], drain: Callable[[], Awaitable[None]]
) -> None:
    async for text in chunks:
        output(text)
        await drain()
