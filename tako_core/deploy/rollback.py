"""Rolling an env back to a kept release: no build, no upload, no release command.

Every server must still keep the build before any server changes; then each server rolls over to it
(health-checked, drained, as in a deploy) and points `current` at it. The skeleton (confirmation,
abort, interruption, closing the sessions) is the deploy's: `run.Run`.
"""

from __future__ import annotations

from tako_core.config import ResolvedEnv
from tako_core.deploy.run import DeployOptions, Run, all_or_nothing
from tako_core.deploy.session import ServerSession
from tako_core.errors import AgentError, TakoError
from tako_core.events import DeployFinished, EventSink, Outcome, Phase, Prompter, ServerResult, State

SKIPPED_IN_ROLLBACK = (Phase.UPLOAD, Phase.INSTALL, Phase.RELEASE)


async def rollback(
    target: ResolvedEnv,
    build: str,
    *,
    secrets: dict[str, str],
    sink: EventSink,
    prompter: Prompter,
    options: DeployOptions,
) -> DeployFinished:
    """Roll every server back to `build`; cancelling the task running it aborts it like a deploy."""
    return await _Rollback(target, build, secrets, sink, prompter, options).run()


class _Rollback(Run):
    verb = "roll back"

    def __init__(
        self,
        target: ResolvedEnv,
        build: str,
        secrets: dict[str, str],
        sink: EventSink,
        prompter: Prompter,
        options: DeployOptions,
    ) -> None:
        super().__init__(target, secrets, sink, prompter, options)
        self.build = self.rollback_to = build

    @property
    def release(self) -> str | None:
        return None  # a rollback never runs the release command

    def question(self) -> str:
        servers = ", ".join(s.name for s in self.target.servers)
        return f"Roll {self.target.app} on {self.target.env} ({servers}) back to {self.build}?"

    async def prepare(self) -> None:
        async with all_or_nothing() as group:
            for session in self.sessions:
                group.create_task(self._check(session))

    async def _check(self, session: ServerSession) -> None:
        with self._phase(session.name, Phase.CONNECT):
            await session.connect(force_unlock=self.options.force_unlock)
            if not await session.kept(self.build):
                raise AgentError(
                    f"{session.name} does not keep release {self.build}",
                    hint="`tako releases ls` lists the releases each server keeps",
                )
        for phase in SKIPPED_IN_ROLLBACK:
            self.board.set(session.name, phase, State.SKIPPED, detail="rollback")

    async def cleanup(self) -> None:
        """Nothing to undo: checking changed nothing on any server."""

    async def after_switch(self) -> None:
        """Nothing to report: a rollback leaves certificates as they are."""

    async def switch(self, session: ServerSession) -> ServerResult:
        name = session.name
        try:
            with self._phase(name, Phase.ROLLOUT):
                await session.rollback(self.build)
        except TakoError as err:
            self.board.set(name, Phase.FINALIZE, State.CANCELLED)
            return ServerResult(server=name, outcome=Outcome.ROLLED_BACK, message=self.mask(err.message))
        self.board.set(name, Phase.FINALIZE, State.DONE, detail=f"current → {self.build}")
        return ServerResult(server=name, outcome=Outcome.DEPLOYED, message=self.build)
