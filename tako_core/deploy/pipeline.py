"""The deploy, stage by stage, exactly as DESIGN.md draws it.

build ∥ connect → upload + install (all servers) → release command on the leader, followers waiting →
rollout (all servers) → finalize. Any failure or interruption before the rollout aborts everywhere:
the release command is stopped, the new release is removed on every server, `current` stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_hex
from typing import TypeVar

from tako_core.build import Artifact, build_artifact
from tako_core.config import ResolvedEnv
from tako_core.deploy.phases import PhaseBoard
from tako_core.deploy.session import ServerSession
from tako_core.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, ConfigError, DeployFailed, TakoError
from tako_core.events import (
    RUNNING_RELEASE,
    WAITING_FOR_RELEASE,
    ArtifactBuilt,
    DeployFinished,
    DeployStarted,
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
from tako_core.mask import Masker
from tako_core.units import size

PRODUCTION_ENVS = frozenset({"production", "prod"})
CLEANUP_TIMEOUT = 60.0

T = TypeVar("T")


@dataclass(frozen=True)
class DeployOptions:
    holder: str  # who deploys, e.g. user@host: shown to anyone the lease refuses
    force_unlock: bool = False
    confirmed: bool = False  # --yes: do not ask before a production deploy
    cache_dir: Path | None = None
    deploy_id: str = field(default_factory=lambda: token_hex(3))

    @property
    def lease_holder(self) -> str:
        """Unique to this one deploy: the agent lets a lease's own holder acquire it again."""
        return f"{self.holder} (deploy {self.deploy_id})"


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


def needs_confirmation(target: ResolvedEnv, options: DeployOptions) -> bool:
    """A production deploy asks first, unless the user said --yes."""
    return not options.confirmed and target.env in PRODUCTION_ENVS


class _Interrupted(Exception):
    """The deploy was cancelled (Ctrl-C, the console's abort); carried to the abort path."""


class _Deploy:
    def __init__(
        self,
        target: ResolvedEnv,
        secrets: dict[str, str],
        sink: EventSink,
        prompter: Prompter,
        options: DeployOptions,
    ) -> None:
        self.target = target
        self.sink = sink
        self.prompter = prompter
        self.options = options
        self.mask = Masker(secrets.values())
        self.board = PhaseBoard(sink, [s.name for s in target.servers])
        self.sessions = [
            ServerSession(
                s, target, holder=options.lease_holder, secrets=secrets, sink=sink, masker=self.mask
            )
            for s in target.servers
        ]
        self.build: str | None = None
        self._gzip: Artifact | None = None
        self._gzip_lock = asyncio.Lock()
        self.started = time.monotonic()

    @property
    def leader(self) -> ServerSession:
        return self.sessions[0]

    async def run(self) -> DeployFinished:
        t = self.target
        self.sink(
            DeployStarted(
                app=t.app,
                env=t.env,
                servers=tuple(s.name for s in t.servers),
                leader=t.leader.name,
                release=t.release,
            )
        )
        try:
            return await self._stages()
        finally:
            await self._close_all()

    async def _stages(self) -> DeployFinished:
        try:
            if not await self._cancellable(self._confirmed()):
                return self._finish(EXIT_INTERRUPTED, Outcome.ABORTED, "not confirmed; nothing was changed")
            await self._cancellable(self._ship_everywhere())
            await self._cancellable(self._release_gate())
        except _Interrupted:
            return await self._abort("interrupted", EXIT_INTERRUPTED)
        except TakoError as err:
            return await self._abort(err.message, EXIT_FAILED)
        except Exception as err:  # a bug must still abort cleanly on every server
            return await self._abort(f"internal error: {type(err).__name__}: {err}", EXIT_FAILED)
        return await self._rollout_everywhere()

    async def _confirmed(self) -> bool:
        if not needs_confirmation(self.target, self.options):
            return True
        servers = ", ".join(s.name for s in self.target.servers)
        return await self.prompter.confirm(f"Deploy {self.target.app} to {self.target.env} ({servers})?")

    async def _cancellable(self, work: Awaitable[T]) -> T:
        try:
            return await work
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            raise _Interrupted from None

    # -- build, connect, upload, install -------------------------------------------------------

    @contextlib.contextmanager
    def _phase(self, server: str | None, phase: Phase, detail: str = "") -> Iterator[dict[str, str]]:
        """Run a step as a phase: running, then done (with the detail the step sets) or failed."""
        self.board.set(server, phase, State.RUNNING, detail=detail)
        done = {"detail": ""}
        try:
            yield done
        except TakoError as err:
            self.board.set(server, phase, State.FAILED, error=self.mask(err.message))
            raise
        self.board.set(server, phase, State.DONE, detail=done["detail"])

    async def _build(self) -> Artifact:
        with self._phase(None, Phase.BUILD) as done:
            artifact = await self._pack("zst")
            self.build = artifact.build
            self.sink(ArtifactBuilt(build=artifact.build, size=artifact.size, cached=artifact.cached))
            cached = ", cached" if artifact.cached else ""
            done["detail"] = f"{artifact.build} ({size(artifact.size)}{cached})"
        return artifact

    async def _pack(self, codec: str) -> Artifact:
        t = self.target

        def output(line: str) -> None:
            self.sink(OutputLine(server=None, phase=Phase.BUILD, line=self.mask(line)))

        return await build_artifact(
            t.config_path.parent,
            t.app,
            t.env,
            t.build,
            t.vars,
            output,
            cache_dir=self.options.cache_dir,
            codec=codec,
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
        try:
            async with asyncio.TaskGroup() as group:
                building = group.create_task(self._build())
                for session in self.sessions:
                    group.create_task(self._ship(session, building))
        except BaseExceptionGroup as group_error:
            raise _root_cause(group_error) from None

    async def _ship(self, session: ServerSession, building: asyncio.Task[Artifact]) -> None:
        name = session.name
        with self._phase(name, Phase.CONNECT) as done:
            await session.connect(force_unlock=self.options.force_unlock)
            done["detail"] = f"agent {session.agent.info.agent_version}"
        artifact = await self._artifact_for(session, building)
        if await session.has_release(artifact.build):
            self.board.set(name, Phase.UPLOAD, State.SKIPPED, detail="already on the server")
            self.board.set(name, Phase.INSTALL, State.SKIPPED, detail="already installed")
            return
        with self._phase(name, Phase.UPLOAD) as done:
            upload_path = await session.upload(artifact)
            done["detail"] = size(artifact.size)
        with self._phase(name, Phase.INSTALL):
            await session.install(artifact.build, upload_path)

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
            reason = f"timed out after {_duration(self.target.release_timeout)}"
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

    async def _abort(self, reason: str, exit_code: int) -> DeployFinished:
        """Stop the release command, remove the new release everywhere, keep `current` and old instances."""
        reason = self.mask(reason)
        self.board.finish_open(State.CANCELLED)
        cleanup = asyncio.ensure_future(self._cleanup_everywhere())
        try:
            await asyncio.shield(cleanup)
        except asyncio.CancelledError:  # a second Ctrl-C: the cleanup still has to finish
            await cleanup
        return self._finish(exit_code, Outcome.ABORTED, reason)

    async def _cleanup_everywhere(self) -> None:
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

    async def _rollout_everywhere(self) -> DeployFinished:
        work = asyncio.ensure_future(asyncio.gather(*(self._roll(s) for s in self.sessions)))
        interrupted = False
        try:
            results = await asyncio.shield(work)
        except asyncio.CancelledError:
            # Instances switch one at a time and each server rolls itself back on failure: stopping
            # halfway would leave less certainty, not more. Let every server finish.
            interrupted = True
            self.sink(
                Notice(message="interrupted during the rollout: letting every server finish", level="warning")
            )
            results = await work
        failed = [r for r in results if r.outcome is not Outcome.DEPLOYED]
        exit_code = EXIT_INTERRUPTED if interrupted else (EXIT_FAILED if failed else EXIT_OK)
        error = f"{len(failed)} of {len(results)} servers did not deploy" if failed else None
        return self._finished(exit_code, tuple(results), error)

    async def _roll(self, session: ServerSession) -> ServerResult:
        assert self.build is not None
        name = session.name
        try:
            with self._phase(name, Phase.ROLLOUT) as done:
                await session.rollout(self.build)
                done["detail"] = f"{self.target.instances}/{self.target.instances} instances"
        except TakoError as err:
            self.board.set(name, Phase.FINALIZE, State.CANCELLED)
            return ServerResult(server=name, outcome=Outcome.ROLLED_BACK, message=self.mask(err.message))
        try:
            with self._phase(name, Phase.FINALIZE):
                await session.finalize(self.build)
        except TakoError as err:
            return ServerResult(server=name, outcome=Outcome.FAILED, message=self.mask(err.message))
        return ServerResult(server=name, outcome=Outcome.DEPLOYED, message=self.build)

    # -- the end -------------------------------------------------------------------------------

    def _finish(self, exit_code: int, outcome: Outcome, reason: str) -> DeployFinished:
        results = tuple(ServerResult(server=s.name, outcome=outcome, message=reason) for s in self.sessions)
        return self._finished(exit_code, results, reason)

    def _finished(
        self, exit_code: int, results: tuple[ServerResult, ...], error: str | None
    ) -> DeployFinished:
        event = DeployFinished(
            ok=exit_code == EXIT_OK,
            exit_code=exit_code,
            seconds=time.monotonic() - self.started,
            results=results,
            error=error,
        )
        self.sink(event)
        return event

    async def _close_all(self) -> None:
        closing = asyncio.ensure_future(asyncio.gather(*(s.close() for s in self.sessions)))
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            await closing


def _root_cause(group: BaseExceptionGroup) -> BaseException:
    """The error to report from a failed stage: the first real failure, not the cancellations it caused."""
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            leaves.append(error)

    walk(group)
    for leaf in leaves:
        if not isinstance(leaf, asyncio.CancelledError):
            return leaf
    return leaves[0]


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:.0f}m"
    return f"{seconds:g}s"
