"""One server's side of a deploy: its SSH connection, its agent, its lease, and each step on it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

from tako_core.agent.contract import upload_name
from tako_core.build import Artifact
from tako_core.config import ResolvedEnv, Server
from tako_core.errors import AgentError, TransportError
from tako_core.events import EventSink, OutputLine, Phase, RolloutProgress, UploadProgress
from tako_core.mask import Masker
from tako_core.transport import Connection, ensure_agent
from tako_core.transport.agent_client import AgentClient, RunResult

LEASE_TTL = 30.0
RECONNECT_ATTEMPTS = 5


class ServerSession:
    """Everything the deploy does on one server, in order; the pipeline decides when."""

    def __init__(
        self,
        server: Server,
        target: ResolvedEnv,
        *,
        holder: str,
        secrets: dict[str, str],
        sink: EventSink,
        masker: Masker,
    ) -> None:
        self.server = server
        self.name = server.name
        self._target = target
        self._holder = holder
        self._secrets = secrets
        self._sink = sink
        self._mask = masker
        self._conn: Connection | None = None
        self._agent: AgentClient | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self.release_run: str | None = None  # the run id while the release command may be running

    @property
    def agent(self) -> AgentClient:
        if self._agent is None:
            raise TransportError(f"not connected to {self.name}")
        return self._agent

    @property
    def _app_env(self) -> tuple[str, str]:
        return self._target.app, self._target.env

    async def connect(self, *, force_unlock: bool) -> None:
        self._conn = await Connection.open(self.server)
        self._agent = await ensure_agent(self._conn)
        await self.agent.lease_acquire(
            *self._app_env, self._holder, build="(building)", ttl=LEASE_TTL, force=force_unlock
        )
        self._lease_task = asyncio.create_task(self._renew_lease(), name=f"lease-{self.name}")

    def codecs(self) -> tuple[str, ...]:
        return self.agent.info.codecs

    async def _renew_lease(self) -> None:
        while True:
            await asyncio.sleep(LEASE_TTL / 3)
            with contextlib.suppress(AgentError, TransportError, OSError):
                await self.agent.lease_renew(*self._app_env, self._holder)

    async def has_release(self, build: str) -> bool:
        return await self.agent.has_release(*self._app_env, build)

    async def upload(self, artifact: Artifact) -> str:
        assert self._conn is not None
        # Named so the agent's cleanup of this build finds a half-finished upload too.
        name = upload_name(*self._app_env, artifact.build) + "".join(artifact.path.suffixes[-2:])
        remote = f"{self.server.root}/uploads/{name}"
        step = max(artifact.size // 50, 1)
        last = -step

        def progress(sent: int, total: int) -> None:
            nonlocal last
            if sent - last >= step or sent == total:
                last = sent
                self._sink(UploadProgress(server=self.name, sent=sent, total=total))

        await self._conn.put(Path(artifact.path), remote, progress)
        return remote

    def _output(self, phase: Phase) -> Callable[[str], None]:
        def emit(line: str) -> None:
            self._sink(OutputLine(server=self.name, phase=phase, line=self._mask(line)))

        return emit

    async def install(self, build: str, upload_path: str) -> None:
        await self.agent.prepare(
            *self._app_env,
            build,
            upload_path,
            install=self._target.install,
            install_inputs=self._target.install_inputs,
            env_vars=self._target.vars,
            secrets=self._secrets,
            on_output=self._output(Phase.INSTALL),
        )

    async def run_release(self, build: str, command: str) -> RunResult:
        """Start the release command and follow its output to the end, across reconnects."""
        self.release_run = await self.agent.release_start(
            *self._app_env,
            build,
            command,
            env_vars=self._target.vars,
            secrets=self._secrets,
            timeout=self._target.release_timeout,
        )
        emit = self._output(Phase.RELEASE)
        offset = 0

        def on_line(next_offset: int, line: str) -> None:
            nonlocal offset
            offset = next_offset
            emit(line)

        for attempt in range(RECONNECT_ATTEMPTS + 1):
            try:
                result = await self.agent.release_watch(*self._app_env, self.release_run, offset, on_line)
            except (TransportError, OSError) as err:
                if attempt == RECONNECT_ATTEMPTS:
                    raise TransportError(
                        f"lost the connection to {self.name} during the release command: {err}",
                        hint="the command keeps running on the server; check it with `tako status`",
                    ) from err
                await self._reconnect()
                continue
            self.release_run = None
            return result
        raise AssertionError("unreachable")

    async def _reconnect(self) -> None:
        assert self._conn is not None
        await self._conn.reconnect()
        self._agent = await self._conn.agent()

    async def stop_release(self) -> None:
        if self.release_run is not None:
            await self.agent.release_stop(*self._app_env, self.release_run)
            self.release_run = None

    async def rollout(self, build: str) -> None:
        t = self._target

        def progress(ready: int, total: int) -> None:
            self._sink(RolloutProgress(server=self.name, ready=ready, total=total))

        await self.agent.rollout(
            *self._app_env,
            build,
            start=t.start or "",  # deploy() refuses a target without one
            instances=t.instances,
            health_path=t.health_path,
            routes=t.routes,
            env_vars=t.vars,
            secrets=self._secrets,
            on_progress=progress,
        )

    async def rollback(self, build: str) -> None:
        def progress(ready: int, total: int) -> None:
            self._sink(RolloutProgress(server=self.name, ready=ready, total=total))

        await self.agent.rollback(*self._app_env, build, progress)

    async def kept(self, build: str) -> bool:
        return any(r.build == build and r.complete for r in await self.agent.releases(*self._app_env))

    async def finalize(self, build: str) -> None:
        await self.agent.finalize(*self._app_env, build)

    async def cleanup(self, build: str) -> None:
        await self.agent.cleanup(*self._app_env, build)

    async def close(self) -> None:
        """Release the lease and the connection; never raises (it runs on every way out)."""
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
        if self._agent is not None:
            with contextlib.suppress(AgentError, TransportError, OSError):
                await self._agent.lease_release(*self._app_env, self._holder)
            with contextlib.suppress(AgentError, TransportError, OSError):
                await self._agent.close()
        if self._conn is not None:
            with contextlib.suppress(TransportError, OSError):
                await self._conn.close()
