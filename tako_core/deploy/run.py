"""What every deploy-shaped run shares (the deploy, a rollback): one skeleton, stages that never go back.

    confirm (production asks first, unless --yes) → DeployStarted
    → prepare    everything before any server serves something new; a failure or an interruption
                 aborts everywhere (`cleanup` undoes what `prepare` left) and nothing else changes
    → switch     every server over, each on its own; never stopped halfway, not even by Ctrl-C
    → DeployFinished

The sessions (SSH connection, agent, lease) close on every way out, shielded from a second Ctrl-C.
Cancelling the task running `run()` is how front ends interrupt it; it still reports DeployFinished,
with exit code 130.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_hex
from typing import TypeVar

from tako_core.config import ResolvedEnv
from tako_core.deploy.phases import PhaseBoard
from tako_core.deploy.session import ServerSession
from tako_core.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, TakoError
from tako_core.events import (
    DeployFinished,
    DeployStarted,
    EventSink,
    Notice,
    Outcome,
    Phase,
    Prompter,
    ServerResult,
    State,
)
from tako_core.mask import Masker
from tako_core.secrets import is_key_var

PRODUCTION_ENVS = frozenset({"production", "prod"})

T = TypeVar("T")


@dataclass(frozen=True)
class DeployOptions:
    holder: str  # who deploys, e.g. user@host: shown to anyone the lease refuses
    force_unlock: bool = False
    confirmed: bool = False  # --yes: do not ask before changing production
    cache_dir: Path | None = None
    deploy_id: str = field(default_factory=lambda: token_hex(3))
    tls_wait: float = 60.0  # seconds the deploy waits for an automatic certificate (it never fails for it)

    @property
    def lease_holder(self) -> str:
        """Unique to this one run: the agent lets a lease's own holder acquire it again."""
        return f"{self.holder} (deploy {self.deploy_id})"


def needs_confirmation(target: ResolvedEnv, options: DeployOptions) -> bool:
    """Changing production asks first, unless the user said --yes."""
    return not options.confirmed and target.env in PRODUCTION_ENVS


class _Interrupted(Exception):
    """The run was cancelled (Ctrl-C, the console's abort); carried to the abort path."""


class Run(ABC):
    """One run over every server of an env. Subclasses say what to ask, prepare, undo and switch."""

    #: "servers did not <verb>", in the verdict of a run some servers failed
    verb = "deploy"
    rollback_to: str | None = None

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
        # The keys too: a build command could print the one it was not given but found elsewhere.
        keys = (v for k, v in os.environ.items() if is_key_var(k))
        self.mask = Masker([*secrets.values(), *keys])
        self.board = PhaseBoard(sink, [s.name for s in target.servers])
        self.sessions = [
            ServerSession(
                s, target, holder=options.lease_holder, secrets=secrets, sink=sink, masker=self.mask
            )
            for s in target.servers
        ]
        self.started = time.monotonic()

    @property
    def leader(self) -> ServerSession:
        return self.sessions[0]

    # -- what a run says --------------------------------------------------------------------------

    @property
    @abstractmethod
    def release(self) -> str | None:
        """The release command this run runs (DeployStarted shows it), or None."""

    @abstractmethod
    def question(self) -> str:
        """What to ask before changing production."""

    @abstractmethod
    async def prepare(self) -> None:
        """Everything before any server serves something new; raising aborts the run everywhere."""

    @abstractmethod
    async def cleanup(self) -> None:
        """Undo what an aborted `prepare` left on the servers; never raises."""

    @abstractmethod
    async def switch(self, session: ServerSession) -> ServerResult:
        """Move one server over; a failure is its result (it keeps serving what it served), not an error."""

    @abstractmethod
    async def after_switch(self) -> None:
        """What a run reports once every server switched (the sessions are still open); never raises."""

    # -- the skeleton -----------------------------------------------------------------------------

    async def run(self) -> DeployFinished:
        # Asked before anything happens: a front end that cannot ask (no terminal) raises, and the
        # run leaves no trace.
        try:
            confirmed = await self._cancellable(self._confirmed())
        except _Interrupted:
            confirmed = False
        self.started = time.monotonic()  # the run's time is its own, not the time a question waited
        t = self.target
        self.sink(
            DeployStarted(
                app=t.app,
                env=t.env,
                servers=tuple(s.name for s in t.servers),
                leader=t.leader.name,
                release=self.release,
                rollback_to=self.rollback_to,
            )
        )
        if not confirmed:
            return self._finish(EXIT_INTERRUPTED, Outcome.ABORTED, "not confirmed; nothing was changed")
        try:
            return await self._stages()
        finally:
            await self._close_all()

    async def _confirmed(self) -> bool:
        if not needs_confirmation(self.target, self.options):
            return True
        return await self.prompter.confirm(self.question())

    async def _stages(self) -> DeployFinished:
        try:
            await self._cancellable(self.prepare())
        except _Interrupted:
            return await self._abort("interrupted", EXIT_INTERRUPTED)
        except TakoError as err:
            return await self._abort(err.message, EXIT_FAILED)
        except Exception as err:  # a bug must still abort cleanly on every server
            return await self._abort(f"internal error: {type(err).__name__}: {err}", EXIT_FAILED)
        return await self._switch_everywhere()

    async def _cancellable(self, work: Awaitable[T]) -> T:
        try:
            return await work
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            raise _Interrupted from None

    async def _abort(self, reason: str, exit_code: int) -> DeployFinished:
        reason = self.mask(reason)
        self.board.finish_open(State.CANCELLED)
        await _uninterruptible(self.cleanup())
        return self._finish(exit_code, Outcome.ABORTED, reason)

    async def _switch_everywhere(self) -> DeployFinished:
        interrupted = False

        def let_every_server_finish() -> None:
            # Instances switch one at a time and each server rolls itself back on failure: stopping
            # halfway would leave less certainty, not more.
            nonlocal interrupted
            if not interrupted:
                self.sink(
                    Notice(
                        message="interrupted during the rollout: letting every server finish", level="warning"
                    )
                )
            interrupted = True

        switching = asyncio.gather(*(self.switch(s) for s in self.sessions))
        results = await _uninterruptible(switching, let_every_server_finish)
        if not interrupted:
            try:
                await self._cancellable(self.after_switch())
            except _Interrupted:
                interrupted = True
        failed = [r for r in results if r.outcome is not Outcome.DEPLOYED]
        exit_code = EXIT_INTERRUPTED if interrupted else (EXIT_FAILED if failed else EXIT_OK)
        error = f"{len(failed)} of {len(results)} servers did not {self.verb}" if failed else None
        return self._finished(exit_code, tuple(results), error)

    async def _close_all(self) -> None:
        await _uninterruptible(asyncio.gather(*(s.close() for s in self.sessions)))

    # -- helpers for the stages -------------------------------------------------------------------

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


@contextlib.asynccontextmanager
async def all_or_nothing() -> AsyncIterator[asyncio.TaskGroup]:
    """A TaskGroup whose first failure cancels the rest and is raised itself, not the cancellations."""
    try:
        async with asyncio.TaskGroup() as group:
            yield group
    except BaseExceptionGroup as group_error:
        raise _root_cause(group_error) from None


async def _uninterruptible(work: Awaitable[T], interrupted: Callable[[], None] = lambda: None) -> T:
    """Await `work` to its end however often the awaiting task is cancelled meanwhile (each Ctrl-C
    calls `interrupted`): a rollout, a cleanup or a close stopped halfway would leave servers with
    half-switched instances, a partial release or a held lease."""
    future = asyncio.ensure_future(work)
    while True:
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.cancelled():  # the work itself was cancelled, not its awaiting task
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            interrupted()


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
