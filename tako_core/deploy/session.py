"""One server's side of a deploy: its SSH connection, its agent, its lease, and each step on it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tako_core.agent.contract import new_run_id, upload_name
from tako_core.build import Artifact
from tako_core.config import ResolvedEnv, Server
from tako_core.deploy.certificate import CertificateStep
from tako_core.deploy.delta import Delta
from tako_core.errors import AgentError, TransportError
from tako_core.events import EventSink, OutputLine, Phase, RolloutProgress, UploadProgress
from tako_core.mask import Masker
from tako_core.transport import Connection, ensure_agent
from tako_core.transport.agent_client import AgentClient, LeaseInfo, ReleaseCheck, RunResult

LEASE_TTL = 30.0
RECONNECT_ATTEMPTS = 5

# The build a deploy asks the agent about and its file hashes (once built), for ServerSession.connect.
Wanted = Callable[[], Awaitable[tuple[str, list[str]]]]
_Asked = tuple["asyncio.Future[LeaseInfo]", "asyncio.Future[ReleaseCheck] | None"]


def _drop(*futures: asyncio.Future[Any] | None) -> None:
    """Cancel futures whose answers no longer matter; a failure they already had is read, not logged."""
    for future in futures:
        if future is None:
            continue
        if future.done() and not future.cancelled():
            future.exception()
        future.cancel()


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
        self._leased = False  # whether close() must still let go of the lease
        self.release_run: str | None = None  # the run id while the release command may be running

    @property
    def agent(self) -> AgentClient:
        if self._agent is None:
            raise TransportError(f"not connected to {self.name}")
        return self._agent

    @property
    def _app_env(self) -> tuple[str, str]:
        return self._target.app, self._target.env

    async def connect(
        self, *, force_unlock: bool, wanted: Wanted | None = None
    ) -> asyncio.Future[ReleaseCheck] | None:
        """The SSH connection, an agent of this client's build (installed or upgraded when stale) and
        the lease; with `wanted`, the future of the agent's answer about that build. The lease and
        that question go out right behind the agent's hello: one round trip for the three. Not with
        `force_unlock`: a lease broken on purpose waits for the hello, so that a stale agent is never
        restarted under someone else's deploy."""
        self._conn = await Connection.open(self.server)
        asked: dict[AgentClient, _Asked] = {}

        def behind_hello(agent: AgentClient) -> None:
            asked[agent] = self._ask(agent, force_unlock, wanted)

        try:
            self._agent = await ensure_agent(
                self._conn, behind_hello=None if force_unlock else behind_hello, holder=self._holder
            )
            pipelined = asked.pop(self._agent) if self._agent in asked else None
            leasing, checking = pipelined or self._ask(self._agent, force_unlock, wanted)
            try:
                await leasing
            except BaseException:
                _drop(checking)
                raise
        finally:
            for stale in asked.values():  # asked of an agent since replaced
                _drop(*stale)
        self._lease_task = asyncio.create_task(self._renew_lease(), name=f"lease-{self.name}")
        return checking

    def _ask(self, agent: AgentClient, force_unlock: bool, wanted: Wanted | None) -> _Asked:
        # Before the call: cancelled while it is under way, the lease may still have been granted.
        self._leased = True
        app, env = self._app_env
        leasing = asyncio.ensure_future(
            agent.lease_acquire(app, env, self._holder, build="(building)", ttl=LEASE_TTL, force=force_unlock)
        )
        return leasing, None if wanted is None else asyncio.ensure_future(self._check(agent, wanted))

    async def _check(self, agent: AgentClient, wanted: Wanted) -> ReleaseCheck:
        build, files = await wanted()
        return await agent.check_release(*self._app_env, build, files)

    def codecs(self) -> tuple[str, ...]:
        return self.agent.info.codecs

    async def _stop_renewing(self) -> None:
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task

    async def _renew_lease(self) -> None:
        while True:
            await asyncio.sleep(LEASE_TTL / 3)
            with contextlib.suppress(AgentError, TransportError, OSError):
                await self.agent.lease_renew(*self._app_env, self._holder)

    async def upload(self, artifact: Artifact, delta: Delta | None) -> tuple[str, asyncio.Future[None]]:
        """Send the artifact (or its delta) over the agent's channel; returns its name in ROOT/uploads
        once every chunk is queued, and the future of the agent's last acknowledgement."""
        # Named so the agent's cleanup of this build finds a half-finished upload too; a delta and
        # the whole artifact sent after it (when a kept release changed) share the name.
        name = upload_name(*self._app_env, artifact.build) + "".join(artifact.path.suffixes[-2:])
        path, total = (delta.path, delta.size) if delta is not None else (artifact.path, artifact.size)
        step = max(total // 50, 1)
        last = -step

        def progress(sent: int, total: int) -> None:
            nonlocal last
            if sent - last >= step or sent == total:
                last = sent
                self._sink(UploadProgress(server=self.name, sent=sent, total=total))

        return name, await self.agent.upload(name, Path(path), progress)

    def _output(self, phase: Phase) -> Callable[[str], None]:
        def emit(line: str) -> None:
            self._sink(OutputLine(server=self.name, phase=phase, line=self._mask(line)))

        return emit

    async def install(self, build: str, upload_path: str, delta: Delta | None) -> None:
        await self.agent.prepare(
            *self._app_env,
            build,
            upload_path,
            base=delta.base if delta is not None else None,
            install=self._target.install,
            install_inputs=self._target.install_inputs,
            env_vars=self._target.vars,
            secrets=self._secrets,
            on_output=self._output(Phase.INSTALL),
        )

    async def run_release(self, build: str, command: str) -> RunResult:
        """Start the release command and follow its output to the end, across reconnects. The watch
        goes out right behind the start (this side picks the run's id), not a round trip after it."""
        run_id = new_run_id(build)
        emit = self._output(Phase.RELEASE)
        offset = 0

        def on_line(next_offset: int, line: str) -> None:
            nonlocal offset
            offset = next_offset
            emit(line)

        starting = asyncio.ensure_future(
            self.agent.release_start(
                *self._app_env,
                build,
                command,
                env_vars=self._target.vars,
                secrets=self._secrets,
                timeout=self._target.release_timeout,
                run_id=run_id,
            )
        )
        watching = asyncio.ensure_future(self.agent.release_watch(*self._app_env, run_id, 0, on_line))
        try:
            self.release_run = await starting
        except BaseException:
            watching.cancel()
            raise
        for attempt in range(RECONNECT_ATTEMPTS + 1):
            try:
                result = await watching
            except (TransportError, OSError) as err:
                if attempt == RECONNECT_ATTEMPTS:
                    raise TransportError(
                        f"lost the connection to {self.name} during the release command: {err}",
                        hint="the command keeps running on the server; check it with `tako status`",
                    ) from err
                await self._reconnect()
                watching = asyncio.ensure_future(
                    self.agent.release_watch(*self._app_env, run_id, offset, on_line)
                )
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

    async def certificate(self, step: CertificateStep) -> None:
        if step.chain is not None and step.key is not None:
            await self.agent.cert_install(*self._app_env, step.chain, step.key)
        else:
            await self.agent.cert_remove(*self._app_env)

    async def rollout(self, build: str) -> None:
        """Roll the build out, then point `current` at it and let go of the lease, in one exchange."""
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
            finalize=True,
            release_lease=self._holder,
        )
        await self._stop_renewing()  # not before: a long rollout must not let the lease run out
        self._leased = False

    async def rollback(self, build: str) -> None:
        def progress(ready: int, total: int) -> None:
            self._sink(RolloutProgress(server=self.name, ready=ready, total=total))

        await self.agent.rollback(*self._app_env, build, progress)

    async def kept(self, build: str) -> bool:
        return any(r.build == build and r.complete for r in await self.agent.releases(*self._app_env))

    async def cleanup(self, build: str) -> None:
        await self.agent.cleanup(*self._app_env, build)

    async def close(self) -> None:
        """Release the lease and the connection; never raises (it runs on every way out)."""
        await self._stop_renewing()
        if self._agent is not None:
            if self._leased:
                with contextlib.suppress(AgentError, TransportError, OSError):
                    await self._agent.lease_release(*self._app_env, self._holder)
            with contextlib.suppress(AgentError, TransportError, OSError):
                await self._agent.close()
        if self._conn is not None:
            with contextlib.suppress(TransportError, OSError):
                await self._conn.close()
