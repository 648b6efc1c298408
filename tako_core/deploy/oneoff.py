"""Running a command once on one server of an env, as its instances run (`tako run`).

The agent spawns it: in the release the instances run, with the environment it keeps for them
(vars, secrets, TAKO_*), output masked. The client sends the command and, with a terminal, the keys
and window sizes; secrets never pass through argv, a file, or this machine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tako_core.config import ResolvedEnv, Server
from tako_core.transport import Connection
from tako_core.transport.agent_client import AgentClient


class OneOff:
    def __init__(
        self, server: Server, target: ResolvedEnv, command: str, *, size: tuple[int, int] | None, force: bool
    ) -> None:
        self.server = server
        self._target = target
        self._command = command
        self._size = size
        self._force = force
        self._agent: AgentClient | None = None
        self._exec_id: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def run(self, on_output: Callable[[str], None]) -> int:
        """Run it to its end; its exit code. Cancelling this ends the remote command too."""
        async with Connection.open(self.server) as conn:
            self._agent = await conn.agent()
            try:
                return await self._agent.exec(
                    self._target.app,
                    self._target.env,
                    self._command,
                    size=self._size,
                    force=self._force,
                    on_started=lambda started: self._exec_id.set_result(started.exec_id),
                    on_output=on_output,
                )
            finally:
                await self._agent.close()

    async def send(self, data: bytes) -> None:
        """Keys typed on the terminal, for the command's PTY."""
        exec_id = await self._exec_id
        assert self._agent is not None
        await self._agent.exec_input(exec_id, data)

    async def resize(self, rows: int, cols: int) -> None:
        exec_id = await self._exec_id
        assert self._agent is not None
        await self._agent.exec_resize(exec_id, rows, cols)
