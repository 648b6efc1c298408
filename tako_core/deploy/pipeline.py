"""The deploy, stage by stage.

build ∥ connect → upload + install (all servers) → release command on the leader, followers waiting →
rollout (all servers) → finalize. Any failure or interruption before the rollout aborts everywhere:
the release command is stopped, the new release is removed on every server, `current` stays.
The skeleton (confirmation, abort, interruption, closing the sessions) is `run.Run`'s.
"""

from __future__ import annotations

import asyncio
import contextlib

from tako_core.agent.contract import STALE_BASE
from tako_core.build import Artifact, build_artifact
from tako_core.config import ResolvedEnv
from tako_core.config.tls import AUTO
from tako_core.deploy.autotls import AutoTls, report
from tako_core.deploy.certificate import certificate_step
from tako_core.deploy.delta import Delta, Deltas
from tako_core.deploy.run import DeployOptions, Run, all_or_nothing
from tako_core.deploy.session import ServerSession
from tako_core.errors import ConfigError, DeployFailed, TakoError
from tako_core.events import (
    RUNNING_RELEASE,
    WAITING_FOR_RELEASE,
    ArtifactBuilt,
    DeployFinished,
    EventSink,
    GateFailed,
    GateOpened,
    Notice,
    Outcome,
    OutputLine,
    Phase,
    Prompter,
    ServerResult,
    State,
)
from tako_core.transport.agent_client import AgentReplyError, ReleaseCheck
from tako_core.units import duration, size

CLEANUP_TIMEOUT = 60.0


async def deploy(
    target: ResolvedEnv,
    *,
    secrets: dict[str, str],
    sink: EventSink,
    prompter: Prompter,
    options: DeployOptions,
) -> DeployFinished:
    """Run one deploy to completion; cancelling the task running it aborts the deploy."""
    if target.start is None:
        raise ConfigError(
            "there is no start command: nothing would serve the new release",
            path=target.config_path,
            hint='add start = "<command serving HTTP on 127.0.0.1:$PORT>" to tako.toml',
        )
    return await _Deploy(target, secrets, sink, prompter, options).run()


class _Deploy(Run):
    def __init__(
        self,
        target: ResolvedEnv,
        secrets: dict[str, str],
        sink: EventSink,
        prompter: Prompter,
        options: DeployOptions,
    ) -> None:
        self._certificate, app_secrets = certificate_step(target, secrets)
        super().__init__(target, app_secrets, sink, prompter, options)
        self.build: str | None = None
        self._gzip: Artifact | None = None
        self._gzip_lock = asyncio.Lock()
        self._deltas = Deltas()
        self._auto = AutoTls(target) if target.tls.mode == AUTO else None

    @property
    def release(self) -> str | None:
        return self.target.release

    def question(self) -> str:
        servers = ", ".join(s.name for s in self.target.servers)
        return f"Deploy {self.target.app} to {self.target.env} ({servers})?"

    async def prepare(self) -> None:
        if self.target.tls.warning:
            self.sink(Notice(message=self.target.tls.warning, level="warning"))
        try:
            await self._ship_everywhere()
        finally:
            self._deltas.close()
        await self._release_gate()

    # -- build, connect, upload, install -------------------------------------------------------

    async def _build(self) -> Artifact:
        with self._phase(None, Phase.BUILD) as done:
            artifact = await self._pack("zst")
            self.build = artifact.build
            self.sink(ArtifactBuilt(build=artifact.build, size=artifact.size, cached=artifact.cached))
            if artifact.dirty:
                self.sink(Notice(message=artifact.dirty, level="warning"))
            cached = ", cached" if artifact.cached else ""
            done["detail"] = f"{artifact.build} ({size(artifact.size)}{cached})"
        return artifact

    async def _pack(self, codec: str) -> Artifact:
        t = self.target

        def output(line: str) -> None:
            self.sink(OutputLine(server=None, phase=Phase.BUILD, line=line))

        return await build_artifact(
            t.config_path.parent,
            t.app,
            t.env,
            t.build,
            t.vars,
            output,
            cache_dir=self.options.cache_dir,
            codec=codec,
            masker=self.mask,
        )

    async def _artifact_for(self, session: ServerSession, building: asyncio.Task[Artifact]) -> Artifact:
        """The zstd artifact, or for a server that cannot unpack zstd a gzip one, packed once on demand."""
        artifact = await building
        if "zst" in session.codecs():
            return artifact
        async with self._gzip_lock:
            if self._gzip is None:
                self.sink(
                    Notice(server=session.name, message="no zstd on this server: packing a gzip artifact")
                )
                self._gzip = await self._pack("gz")
        return self._gzip

    async def _ship_everywhere(self) -> None:
        async with all_or_nothing() as group:
            building = group.create_task(self._build())
            for session in self.sessions:
                group.create_task(self._ship(session, building))

    async def _ship(self, session: ServerSession, building: asyncio.Task[Artifact]) -> None:
        name = session.name
        present: asyncio.Future[ReleaseCheck] | None = None
        telling: asyncio.Future[None] | None = None

        async def wanted() -> tuple[str, list[str]]:
            artifact = await building
            return artifact.build, self._deltas.hashes(artifact)

        try:
            with self._phase(name, Phase.CONNECT) as done:
                # Whether the build is there already goes out with the hello and the lease.
                present = await session.connect(force_unlock=self.options.force_unlock, wanted=wanted)
                done["detail"] = f"agent {session.agent.info.agent_version}"
            if self._auto is not None:  # beside the build, upload and install: the leader may order now
                telling = asyncio.ensure_future(self._auto.tell(session))
            assert present is not None
            check = await present
            # zstd's or gzip's: the same build and files, so the answer is the same
            artifact = await self._artifact_for(session, building)
            if self._certificate is not None:  # before the rollout: the new release starts out on HTTPS
                await session.certificate(self._certificate)
            await self._upload_install(session, artifact, check)
            if telling is not None:
                await telling
        finally:
            for pending in (present, telling):
                if pending is not None:
                    pending.cancel()

    async def _upload_install(self, session: ServerSession, artifact: Artifact, check: ReleaseCheck) -> None:
        name = session.name
        if check.complete:
            self.board.set(name, Phase.UPLOAD, State.SKIPPED, detail="already on the server")
            self.board.set(name, Phase.INSTALL, State.SKIPPED, detail="already installed")
            return
        delta = await self._deltas.delta(artifact, check.missing)
        with self._phase(name, Phase.UPLOAD) as done:
            installing = await self._send(session, artifact, delta)
            whole = size(artifact.size)
            done["detail"] = whole if delta is None else f"{size(delta.size)} changed of {whole}"
        with self._phase(name, Phase.INSTALL):
            try:
                await installing
            except AgentReplyError as err:
                if delta is None or err.code != STALE_BASE:
                    raise
                self.sink(Notice(server=name, message=f"{err.message}: sending the whole artifact"))
                await (await self._send(session, artifact, None))

    async def _send(
        self, session: ServerSession, artifact: Artifact, delta: Delta | None
    ) -> asyncio.Future[None]:
        """Upload; returns once the agent has it all, with the install already under way."""
        upload, acked = await session.upload(artifact, delta)
        # The install goes out right behind the last chunk, not a round trip after it.
        installing = asyncio.ensure_future(session.install(artifact.build, upload, delta))
        try:
            await acked
        except BaseException:
            installing.cancel()
            raise
        return installing

    # -- the release gate ----------------------------------------------------------------------

    async def _release_gate(self) -> None:
        assert self.build is not None
        command = self.target.release
        leader = self.leader
        if command is None:
            for session in self.sessions:
                self.board.set(session.name, Phase.RELEASE, State.SKIPPED, detail="no release command")
            self.sink(GateOpened(leader=leader.name, skipped=True))
            return
        for follower in self.sessions[1:]:
            self.board.set(follower.name, Phase.RELEASE, State.WAITING, detail=WAITING_FOR_RELEASE)
        self.board.set(leader.name, Phase.RELEASE, State.RUNNING, detail=RUNNING_RELEASE)
        try:
            result = await leader.run_release(self.build, command)
        except TakoError as err:
            self.board.set(leader.name, Phase.RELEASE, State.FAILED, error=self.mask(err.message))
            self.sink(GateFailed(leader=leader.name, reason=self.mask(err.message)))
            raise
        if result.exit_code == 0 and not result.timed_out:
            self.sink(GateOpened(leader=leader.name))
            self.board.set(leader.name, Phase.RELEASE, State.DONE)
            for follower in self.sessions[1:]:
                self.board.set(follower.name, Phase.RELEASE, State.DONE, detail=f"passed on {leader.name}")
            return
        if result.timed_out:
            reason = f"timed out after {duration(self.target.release_timeout)}"
        elif result.stopped:
            reason = "was stopped"
        else:
            reason = f"exited with code {result.exit_code}"
        self.board.set(leader.name, Phase.RELEASE, State.FAILED, error=reason)
        self.sink(
            GateFailed(
                leader=leader.name, reason=reason, exit_code=result.exit_code, timed_out=result.timed_out
            )
        )
        raise DeployFailed(f"the release command on {leader.name} {reason}")

    # -- abort ---------------------------------------------------------------------------------

    async def cleanup(self) -> None:
        """Stop the release command, remove the new release everywhere; `current` and old instances stay."""

        async def clean(session: ServerSession) -> None:
            try:
                if session is self.leader:
                    await session.stop_release()
                if self.build is not None:
                    await session.cleanup(self.build)
            except (TakoError, OSError) as err:
                self.sink(
                    Notice(
                        server=session.name, level="warning", message=f"cleanup failed: {self.mask(str(err))}"
                    )
                )

        connected = [s for s in self.sessions if self.board.state(s.name, Phase.CONNECT) is State.DONE]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(clean(s) for s in connected)), CLEANUP_TIMEOUT)

    # -- rollout and finalize ------------------------------------------------------------------

    async def after_switch(self) -> None:
        if self._auto is not None:  # every server, even one whose rollout failed: it serves HTTPS still
            await report(self.sessions, self.target, self.sink, self.options.tls_wait)

    async def switch(self, session: ServerSession) -> ServerResult:
        """Rollout and finalize, one exchange (session.rollout): the agent's error says which failed."""
        assert self.build is not None
        name = session.name
        finalizing: AgentReplyError | None = None
        try:
            with self._phase(name, Phase.ROLLOUT) as done:
                try:
                    await session.rollout(self.build)
                except AgentReplyError as err:
                    if not err.details.get("rolled_out"):
                        raise
                    finalizing = err
                done["detail"] = f"{self.target.instances}/{self.target.instances} instances"
        except TakoError as err:
            self.board.set(name, Phase.FINALIZE, State.CANCELLED)
            return ServerResult(server=name, outcome=Outcome.ROLLED_BACK, message=self.mask(err.message))
        if finalizing is not None:
            self.board.set(name, Phase.FINALIZE, State.FAILED, error=self.mask(finalizing.message))
            return ServerResult(server=name, outcome=Outcome.FAILED, message=self.mask(finalizing.message))
        self.board.set(name, Phase.FINALIZE, State.DONE, detail=f"current → {self.build}")
        return ServerResult(server=name, outcome=Outcome.DEPLOYED, message=self.build)
