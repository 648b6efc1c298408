"""The consoles: Textual apps over the core. Each runs its work on Textual's event loop.

    from tako_tui.app import DeployConsole

    finished = DeployConsole(
        lambda sink, prompter: deploy(resolved, sink=sink, prompter=prompter, ...),
        title=f"{app} → {env}",
    ).show()

`TakoApp` is what every console shares (as harlequin's `AppBase`); `JobConsole` runs deploy-shaped
jobs (deploy, rollback) on the deploy screen, handing each its event sink and a `ConsolePrompter`
(questions become modals). `DeployConsole` runs one from the start; `ReleasesConsole` shows the
releases screen first; `SecretsConsole` edits secrets. `show()` returns the `DeployFinished` the core
reported (also after an abort: exit code 130), or None when the run was cancelled before it reported
one. If the work raised, the exception is re-raised once the user has quit, so `tako_tui.cli`
renders it like any other error.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from textual.app import App
from textual.binding import Binding
from textual.worker import Worker, WorkerState

from tako_core.deploy.inspect import ServerView
from tako_core.events import DeployFinished, Job
from tako_core.secrets import SecretsStore

from .bridge import EventBridge
from .screens.confirm import ConfirmScreen
from .screens.deploy import DeployScreen
from .screens.help import HelpScreen
from .screens.logs import Follow, LogsScreen
from .screens.releases import Load, ReleasesScreen
from .screens.secrets import SecretsScreen
from .screens.status import StatusScreen

T = TypeVar("T")

ABORT_QUESTION = (
    "Abort the deploy? The release command will be stopped and the new release removed on every server."
)
STYLES = Path(__file__).parent / "styles"


class TakoApp(App[T]):
    """What every tako console shares: the stylesheet, no command palette, and `show()`."""

    CSS_PATH = [STYLES / "console.tcss"]
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, title: str) -> None:
        super().__init__()
        self.title = title
        self.result: T | None = None  # what show() returns
        self.error: BaseException | None = None  # the work raised: re-raised after quitting

    def show(self) -> T | None:
        """Run in the real terminal until the user quits; see the module docstring."""
        _size_from_the_terminal()
        self.run()
        if self.error is not None:
            raise self.error
        return self.result


class JobConsole(TakoApp[DeployFinished]):
    """Runs deploy-shaped jobs on the deploy screen: a worker each, the abort, the core's questions."""

    CSS_PATH = [*TakoApp.CSS_PATH, STYLES / "deploy.tcss"]
    BINDINGS = [
        Binding("a", "abort", "Abort"),
        # The terminal is in raw mode, so Ctrl-C is a key, not SIGINT: it asks, like `a`.
        Binding("ctrl+c", "interrupt", "Abort", show=False, priority=True),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
        Binding("question_mark", "help", "Help"),
    ]

    def __init__(
        self,
        *,
        title: str,
        job_title: str,
        clock: Callable[[], float] = time.time,
        flush_interval: float = 0.05,
    ) -> None:
        """`job_title` heads the deploy screen. `clock` is "now" for every live duration, in the
        timebase of the events' `at` (wall-clock seconds; tests pass a frozen one); `flush_interval`
        is the longest an event waits for the screen."""
        super().__init__(title)
        self.deploy_screen = DeployScreen(job_title, clock)
        self.bridge = EventBridge(self.deploy_screen, flush_interval)
        self.worker: Worker[DeployFinished] | None = None
        self._abort_dialog: ConfirmScreen | None = None

    def on_mount(self) -> None:
        # The app's own objects live as long as it does: out of the collector's scans, a full
        # collection during a flood of output costs ~50 ms less (bench/console.py). Collect first so
        # that only live objects are frozen.
        gc.collect()
        gc.freeze()

    def start(self, run: Job) -> None:
        """Run a deploy-shaped job (deploy, rollback) once, on the deploy screen."""
        if self.worker is not None:
            raise RuntimeError("the console runs one job")
        if self.screen is not self.deploy_screen:
            self.push_screen(self.deploy_screen)
        self.worker = self.run_worker(self._deploy(run), name="deploy", exit_on_error=False)

    async def _deploy(self, run: Job) -> DeployFinished:
        try:
            finished = await run(self.bridge.sink, ConsolePrompter(self))
            if not self.bridge.saw_finished:
                self.bridge.sink(finished)  # the screen's verdict comes from events only
            return finished
        finally:
            # Before the worker's state message: the last events must not trail behind it.
            self.bridge.flush()

    @property
    def running(self) -> bool:
        return self.worker is not None and not self.worker.is_finished

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is not self.worker:
            return
        model = self.deploy_screen.model
        if event.state is WorkerState.SUCCESS:
            self.result = event.worker.result
        elif event.state is WorkerState.CANCELLED:
            # Cancelled before the core reported its end (it normally does, with exit code 130).
            self.result = model.finished
            if model.finished is None:
                model.crash = "The deploy was cancelled before it could report its result."
                self.deploy_screen.show_summary()
        elif event.state is WorkerState.ERROR:
            self.error = event.worker.error
            self.result = model.finished
            model.crash = f"{type(self.error).__name__}: {self.error}"
            self.deploy_screen.show_summary()
        if event.worker.is_finished:
            self.refresh_bindings()
            self._close_abort_dialog()

    # -- actions -------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "abort":
            if self.worker is None:
                return False  # nothing to abort yet (another screen comes first)
            return True if self.running else None  # shown dimmed once the deploy has ended
        return True

    def action_interrupt(self) -> None:
        """Ctrl-C: asks to abort; a second one confirms; once the deploy is over, it quits."""
        if self._abort_dialog is not None:
            self._abort_dialog.dismiss(True)
        elif self.running:
            self.action_abort()
        else:
            self.exit(self.result)

    def action_abort(self) -> None:
        if not self.running:
            return
        model = self.deploy_screen.model
        if model.aborting:
            self.notify("Aborting: waiting for every server to clean up.", timeout=3)
            return
        self._abort_dialog = ConfirmScreen(
            ABORT_QUESTION, title="Abort", yes="Abort", no="Keep deploying", danger=True
        )
        self.push_screen(self._abort_dialog, self._abort_answered)

    def _abort_answered(self, yes: bool | None) -> None:
        self._abort_dialog = None
        if not yes or not self.running or self.worker is None:
            return
        self.deploy_screen.model.aborting = True
        self.deploy_screen.header.refresh()
        # The core turns cancellation into an abort and still reports DeployFinished (exit 130):
        # the screen stays until then.
        self.worker.cancel()

    def _close_abort_dialog(self) -> None:
        if self._abort_dialog is not None and self._abort_dialog.is_current:
            self._abort_dialog.dismiss(False)

    async def action_quit(self) -> None:
        if self.running:
            self.action_abort()  # quitting mid-deploy means aborting it; the summary follows
        else:
            self.exit(self.result)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())


class ConsolePrompter:
    """The core's `Prompter` in the console: each question is a modal; the deploy waits for the answer."""

    def __init__(self, app: JobConsole) -> None:
        self._app = app

    async def confirm(self, question: str) -> bool:
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        dialog = ConfirmScreen(question)

        def answered(yes: bool | None) -> None:
            if not answer.done():
                answer.set_result(bool(yes))

        self._app.push_screen(dialog, answered)
        try:
            return await answer
        except asyncio.CancelledError:
            self._close(dialog, tries=10)  # aborted while asking: the question no longer matters
            raise

    def _close(self, dialog: ConfirmScreen, tries: int) -> None:
        """Dismiss the question once it is on top again (the abort dialog may still cover it)."""
        if dialog.is_current:
            dialog.dismiss(False)
        elif tries and dialog in self._app.screen_stack:
            self._app.call_after_refresh(self._close, dialog, tries - 1)


class DeployConsole(JobConsole):
    """`tako deploy` (and `tako demo`, a rollback): the deploy screen, running the job at once."""

    def __init__(
        self,
        run: Job,
        *,
        title: str,
        clock: Callable[[], float] = time.time,
        flush_interval: float = 0.05,
    ) -> None:
        super().__init__(title=title, job_title=title, clock=clock, flush_interval=flush_interval)
        self._run = run

    def get_default_screen(self) -> DeployScreen:
        return self.deploy_screen

    def on_mount(self) -> None:
        self.start(self._run)  # JobConsole.on_mount runs too: Textual calls each class's handler


class ReleasesConsole(JobConsole):
    """`tako releases`: the releases screen first; a confirmed rollback then runs on the deploy screen."""

    CSS_PATH = [*JobConsole.CSS_PATH, STYLES / "releases.tcss"]

    def __init__(
        self,
        load: Load,
        rollback: Callable[[str], Job],
        *,
        title: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(title=f"{title} · releases", job_title=f"{title} rollback", clock=clock)
        self._rollback = rollback
        self.releases_screen = ReleasesScreen(load, self._roll_back, title=title, now=clock)

    def get_default_screen(self) -> ReleasesScreen:
        return self.releases_screen

    def _roll_back(self, build: str) -> None:
        self.start(self._rollback(build))


@dataclass(frozen=True)
class ConsoleEnv:
    """What `tako console` can do with one env; the CLI builds it over the core."""

    name: str
    servers: list[str]
    instances: int  # per server
    load: Load  # the servers' status and kept releases
    follow: Follow  # the instances' output, live
    deploy: Callable[[], Job]  # a deploy, already confirmed on the console
    rollback: Callable[[str], Job]  # a rollback to a build, already confirmed


class Console(JobConsole):
    """`tako console`: the status of every env first; from there its logs, releases (rollback),
    secrets, and a deploy, which runs on the deploy screen and comes back here when it is over."""

    CSS_PATH = [
        *JobConsole.CSS_PATH,
        STYLES / "releases.tcss",
        STYLES / "secrets.tcss",
        STYLES / "status.tcss",
    ]

    def __init__(
        self,
        app_name: str,
        envs: list[ConsoleEnv],
        secrets: Callable[[], SecretsStore],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(title=f"tako · {app_name}", job_title=app_name, clock=clock)
        self._app_name = app_name
        self._envs = {e.name: e for e in envs}
        self._secrets = secrets
        self._clock = clock
        self.status_screen = StatusScreen(app_name, list(self._envs), self._load, self._act, now=clock)

    def get_default_screen(self) -> StatusScreen:
        return self.status_screen

    def _load(self, env: str) -> Awaitable[list[ServerView]]:
        return self._envs[env].load()

    def _act(self, what: str, env_name: str) -> None:
        env, title = self._envs[env_name], f"{self._app_name} → {env_name}"
        if what == "logs":
            self.push_screen(LogsScreen(title, env.servers, env.follow, several=env.instances > 1))
        elif what == "releases":

            def roll_back(build: str) -> None:
                self._run(f"{title} rollback", env.rollback(build))

            self.push_screen(ReleasesScreen(env.load, roll_back, title=title, now=self._clock))
        elif what == "secrets":
            self.push_screen(SecretsScreen(self._secrets(), list(self._envs), env_name))
        elif what == "deploy":
            question = f"Deploy {self._app_name} to {env_name} ({', '.join(env.servers)})?"

            def answered(yes: bool | None) -> None:
                if yes:
                    self._run(title, env.deploy())

            self.push_screen(ConfirmScreen(question, title="Deploy", yes="Deploy", no="Cancel"), answered)

    def _run(self, title: str, job: Job) -> None:
        """A job on a fresh deploy screen: one at a time, each with its own verdict."""
        if self.running:
            self.notify("A deploy is running: wait for it to end.", severity="warning")
            return
        self.deploy_screen = DeployScreen(title, self._clock)
        self.bridge = EventBridge(self.deploy_screen)
        self.worker = None
        self.start(job)

    async def action_quit(self) -> None:
        if self.screen is self.deploy_screen and not self.running:
            while len(self.screen_stack) > 1:  # back home (the status), to see what it changed
                self.pop_screen()
            self.status_screen.action_refresh()
        else:
            await super().action_quit()


class SecretsConsole(TakoApp[None]):
    """`tako secrets edit`: one screen over one app's SecretsStore; changes are written only when saved."""

    CSS_PATH = [*TakoApp.CSS_PATH, STYLES / "secrets.tcss"]

    def __init__(self, store: SecretsStore, envs: list[str], env: str | None = None) -> None:
        super().__init__(f"tako secrets · {store.app}")
        self.secrets_screen = SecretsScreen(store, envs, env)

    def get_default_screen(self) -> SecretsScreen:
        return self.secrets_screen


def _size_from_the_terminal() -> None:
    """Textual's driver asks `shutil.get_terminal_size`, which prefers COLUMNS/LINES to the terminal:
    exported values (some shells leave them, e.g. bash under tmux here) pin the console to a stale size,
    even across resizes. The console must follow the real terminal."""
    for var in ("COLUMNS", "LINES"):
        os.environ.pop(var, None)
