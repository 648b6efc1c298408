"""Rolling an env back to a kept release: no build, no upload, no release command.

Every server must still keep the build before any server changes; then each server rolls over to it
(health-checked, drained, as in a deploy) and points `current` at it.
"""

from __future__ import annotations

import asyncio
import time

from tako_core.config import ResolvedEnv
from tako_core.deploy.phases import PhaseBoard
from tako_core.deploy.pipeline import DeployOptions
from tako_core.deploy.session import ServerSession
from tako_core.errors import EXIT_FAILED, EXIT_OK, AgentError, TakoError
from tako_core.events import DeployFinished, DeployStarted, EventSink, Outcome, Phase, ServerResult, State
from tako_core.mask import Masker

SKIPPED_IN_ROLLBACK = (Phase.UPLOAD, Phase.INSTALL, Phase.RELEASE)


async def rollback(
    target: ResolvedEnv, build: str, *, secrets: dict[str, str], sink: EventSink, options: DeployOptions
) -> DeployFinished:
    started = time.monotonic()
    names = [s.name for s in target.servers]
    board = PhaseBoard(sink, names)
    mask = Masker(secrets.values())
    sessions = [
        ServerSession(s, target, holder=options.lease_holder, secrets=secrets, sink=sink, masker=mask)
        for s in target.servers
    ]
    sink(DeployStarted(app=target.app, env=target.env, servers=tuple(names), leader=names[0], release=None))

    def finished(exit_code: int, results: list[ServerResult], error: str | None) -> DeployFinished:
        event = DeployFinished(
            ok=exit_code == EXIT_OK,
            exit_code=exit_code,
            seconds=time.monotonic() - started,
            results=tuple(results),
            error=error,
        )
        sink(event)
        return event

    async def check(session: ServerSession) -> None:
        board.set(session.name, Phase.CONNECT, State.RUNNING)
        try:
            await session.connect(force_unlock=options.force_unlock)
            if not await session.kept(build):
                raise AgentError(
                    f"{session.name} does not keep release {build}",
                    hint="`tako releases ls` lists the releases each server keeps",
                )
        except TakoError as err:
            board.set(session.name, Phase.CONNECT, State.FAILED, error=mask(err.message))
            raise
        board.set(session.name, Phase.CONNECT, State.DONE)
        for phase in SKIPPED_IN_ROLLBACK:
            board.set(session.name, phase, State.SKIPPED, detail="rollback")

    async def roll(session: ServerSession) -> ServerResult:
        board.set(session.name, Phase.ROLLOUT, State.RUNNING)
        try:
            await session.rollback(build)
        except TakoError as err:
            board.set(session.name, Phase.ROLLOUT, State.FAILED, error=mask(err.message))
            return ServerResult(server=session.name, outcome=Outcome.ROLLED_BACK, message=mask(err.message))
        board.set(session.name, Phase.ROLLOUT, State.DONE)
        board.set(session.name, Phase.FINALIZE, State.DONE, detail=f"current → {build}")
        return ServerResult(server=session.name, outcome=Outcome.DEPLOYED, message=build)

    try:
        checks = await asyncio.gather(*(check(s) for s in sessions), return_exceptions=True)
        failure = next((c for c in checks if isinstance(c, BaseException)), None)
        if failure is not None:
            board.finish_open(State.CANCELLED)
            reason = mask(failure.message if isinstance(failure, TakoError) else repr(failure))
            results = [ServerResult(server=n, outcome=Outcome.ABORTED, message=reason) for n in names]
            return finished(EXIT_FAILED, results, reason)
        results = list(await asyncio.gather(*(roll(s) for s in sessions)))
        bad = [r for r in results if r.outcome is not Outcome.DEPLOYED]
        error = f"{len(bad)} of {len(results)} servers did not roll back" if bad else None
        return finished(EXIT_FAILED if bad else EXIT_OK, results, error)
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
