"""The deploy console driven by Pilot with scripted deploys: panels, log pane, abort, prompter, layout."""

from __future__ import annotations

import asyncio

from textual.app import App, ComposeResult
from textual.widget import Widget

from tako_core.events import (
    RUNNING_RELEASE,
    SERVER_PHASES,
    WAITING_FOR_RELEASE,
    DeployFinished,
    EventSink,
    Notice,
    OutputLine,
    Phase,
    Prompter,
    State,
)
from tako_tui.app import ABORT_QUESTION, ConsolePrompter, DeployConsole
from tako_tui.bridge import EventBatch, EventBridge
from tako_tui.screens.confirm import ConfirmScreen
from tako_tui.screens.deploy import DeployScreen
from tako_tui.screens.help import HelpScreen
from tako_tui.widgets.server_panel import ServerGrid
from tako_tui.widgets.summary import Summary

from .tui_scenarios import FAILURE, MIGRATIONS, FakeClock, ScriptedDeploy, console, settle, until


def screen_of(app: DeployConsole) -> DeployScreen:
    return app.deploy_screen


async def test_follower_waits_while_the_leader_runs_the_release() -> None:
    scenario = ScriptedDeploy(hold_at="release")
    app = console(scenario)
    async with app.run_test(size=(120, 40)) as pilot:
        await asyncio.wait_for(scenario.reached.wait(), 5)
        await settle(app, pilot)
        screen = screen_of(app)
        leader, *followers = (screen.panel(name) for name in ("web-1", "web-2", "web-3"))
        assert [p.role for p in screen.panels] == ["leader", "follower", "follower"]
        assert leader.phase_state(Phase.RELEASE) is State.RUNNING
        assert leader.phase_detail(Phase.RELEASE) == RUNNING_RELEASE
        assert RUNNING_RELEASE in leader.plain
        for follower in followers:
            assert follower.phase_state(Phase.RELEASE) is State.WAITING
            assert WAITING_FOR_RELEASE in follower.plain
            assert follower.phase_state(Phase.ROLLOUT) is State.PENDING
        assert [leader.phase_state(p) for p in SERVER_PHASES[:3]] == [State.DONE] * 3
        assert "5.2 MB" in leader.plain
        assert "cached" in screen.panel("web-3").plain
        assert screen.header.overall == "releasing"
        # The release output streams into the log pane as it comes.
        assert screen.output.log_view.lines[-1].endswith(MIGRATIONS[-1])

        scenario.go.set()
        await until(pilot, lambda: not app.running)
        await settle(app, pilot)
        assert all(p.phase_state(phase) is State.DONE for p in screen.panels for phase in SERVER_PHASES)
        assert "2/2 instances" in leader.plain
        assert screen.header.overall == "deployed"
        assert screen.query_one(Summary).display
        assert app.is_running  # the summary stays until q
        await pilot.press("q")
    assert isinstance(app.return_value, DeployFinished)
    assert app.return_value.ok
    assert app.return_value.exit_code == 0


async def test_failed_release_shows_the_failure_cancelled_followers_and_the_last_lines() -> None:
    scenario = ScriptedDeploy(fail_release=True)
    app = console(scenario)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: not app.running)
        await settle(app, pilot)
        screen = screen_of(app)
        leader = screen.panel("web-1")
        assert leader.phase_state(Phase.RELEASE) is State.FAILED
        error = leader.phase_error(Phase.RELEASE)
        assert error is not None
        assert "exited with status 1" in error
        assert "exited with status 1" in leader.plain
        for name in ("web-2", "web-3"):
            panel = screen.panel(name)
            assert [panel.phase_state(p) for p in SERVER_PHASES[3:]] == [State.CANCELLED] * 3
        assert leader.phase_state(Phase.ROLLOUT) is State.CANCELLED
        lines = screen.output.log_view.lines
        assert any(line.endswith(FAILURE[-1]) for line in lines[-6:])
        # The tail is on screen: the log follows it.
        assert screen.output.log_view.following
        assert screen.output.log_view.is_vertical_scroll_end
        assert screen.header.overall == "failed"
        await pilot.press("q")
    assert app.return_value is not None
    assert app.return_value.exit_code == 1


async def test_abort_asks_then_cancels_the_run_and_waits_for_its_report() -> None:
    scenario = ScriptedDeploy(hold_at="release")
    app = console(scenario)
    async with app.run_test(size=(120, 40)) as pilot:
        await asyncio.wait_for(scenario.reached.wait(), 5)
        await pilot.press("a")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, ConfirmScreen)
        assert str(dialog.query_one("#question").render()) == ABORT_QUESTION
        await pilot.press("y")
        await until(pilot, lambda: not app.running)
        await settle(app, pilot)
        assert scenario.cancelled  # the run saw CancelledError
        screen = screen_of(app)
        assert app.screen is screen  # still showing, with the summary
        assert screen.panel("web-1").phase_state(Phase.RELEASE) is State.CANCELLED
        assert screen.panel("web-2").phase_state(Phase.RELEASE) is State.CANCELLED
        assert screen.header.overall == "aborted"
        await pilot.press("q")
    assert app.return_value is not None
    assert app.return_value.exit_code == 130


async def test_answering_no_keeps_deploying() -> None:
    scenario = ScriptedDeploy(hold_at="release")
    app = console(scenario)
    async with app.run_test(size=(120, 40)) as pilot:
        await asyncio.wait_for(scenario.reached.wait(), 5)
        await pilot.press("a")
        await pilot.pause()
        await pilot.press("n")
        await pilot.pause()
        assert isinstance(app.screen, DeployScreen)
        assert app.running
        scenario.go.set()
        await until(pilot, lambda: not app.running)
        assert not scenario.cancelled
        assert app.result is not None
        assert app.result.ok


async def test_ctrl_c_twice_aborts_and_the_run_may_reraise() -> None:
    scenario = ScriptedDeploy(hold_at="release", reraise=True)
    app = console(scenario)
    async with app.run_test(size=(120, 40)) as pilot:
        await asyncio.wait_for(scenario.reached.wait(), 5)
        await pilot.press("ctrl+c")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("ctrl+c")
        await until(pilot, lambda: not app.running)
        await settle(app, pilot)
        assert scenario.cancelled
        # The core re-raised CancelledError after reporting: the report still counts.
        assert app.result is not None
        assert app.result.exit_code == 130
        assert screen_of(app).header.overall == "aborted"
        await pilot.press("ctrl+c")  # once it is over, Ctrl-C quits
    assert app.return_value is not None
    assert app.return_value.exit_code == 130


async def test_quit_before_the_run_reports_returns_none() -> None:
    started = asyncio.Event()

    async def silent(sink: EventSink, prompter: Prompter) -> DeployFinished:
        started.set()
        await asyncio.sleep(30)  # cancelled long before
        raise AssertionError("not reached")

    app = DeployConsole(silent, title="shop → production", clock=FakeClock())
    async with app.run_test(size=(80, 24)) as pilot:
        await asyncio.wait_for(started.wait(), 5)
        await pilot.press("q")  # mid-deploy, quitting asks to abort
        await pilot.pause()
        await pilot.press("y")
        await until(pilot, lambda: not app.running)
        await settle(app, pilot)
        assert screen_of(app).header.overall == "crashed"
        await pilot.press("q")
    assert app.return_value is None


async def test_a_run_that_raises_is_shown_and_kept_for_the_cli() -> None:
    async def broken(sink: EventSink, prompter: Prompter) -> DeployFinished:
        sink(Notice(message="connecting"))
        raise RuntimeError("agent protocol mismatch")

    app = DeployConsole(broken, title="shop → production", clock=FakeClock())
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: not app.running)
        await settle(app, pilot)
        assert isinstance(app.error, RuntimeError)
        summary = app.deploy_screen.query_one(Summary)
        assert summary.display
        assert "agent protocol mismatch" in str(summary.render_line(1).text)
        await pilot.press("q")
    assert app.return_value is None


async def test_selecting_a_server_shows_only_its_output() -> None:
    scenario = ScriptedDeploy(hold_at="release")
    app = console(scenario)
    async with app.run_test(size=(120, 40)) as pilot:
        await asyncio.wait_for(scenario.reached.wait(), 5)
        await settle(app, pilot)
        screen = screen_of(app)
        everything = screen.output.line_count
        await pilot.click("#panel-web-2")
        await pilot.pause()
        assert screen.output.server == "web-2"
        assert screen.panel("web-2").has_class("-selected")
        assert screen.output.log_view.lines == screen.output.lines_of("web-2")
        assert screen.output.line_count == 3  # its install output; the release runs on web-1

        # Keyboard: focus the leader's panel, enter.
        screen.panel("web-1").focus()
        await pilot.press("enter")
        await pilot.pause()
        assert screen.output.server == "web-1"
        assert screen.output.log_view.lines[-1] == MIGRATIONS[-1]

        await pilot.press("escape")
        await pilot.pause()
        assert screen.output.server is None
        assert screen.output.line_count == everything
        scenario.go.set()


async def test_the_log_stops_following_when_scrolled_up_and_resumes_on_end() -> None:
    more = asyncio.Event()

    async def chatty(sink: EventSink, prompter: Prompter) -> DeployFinished:
        for i in range(200):
            sink(OutputLine(server="web-1", phase=Phase.RELEASE, line=f"line {i}"))
        await more.wait()
        for i in range(200, 210):
            sink(OutputLine(server="web-1", phase=Phase.RELEASE, line=f"line {i}"))
        await asyncio.sleep(30)
        raise AssertionError("not reached")

    app = DeployConsole(chatty, title="t", clock=FakeClock())
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.deploy_screen.output.line_count == 200)
        await settle(app, pilot)
        log = app.deploy_screen.output.log_view
        assert log.following
        assert log.is_vertical_scroll_end
        log.scroll_to(y=10, animate=False, immediate=True)
        await pilot.pause()
        assert not log.following
        more.set()
        await until(pilot, lambda: app.deploy_screen.output.line_count == 210)
        await settle(app, pilot)
        assert log.scroll_y == 10  # left where the user put it
        await pilot.pause(0.15)  # a tick: the pane says it is paused
        assert app.deploy_screen.output.border_subtitle
        await pilot.press("end")
        await pilot.pause()
        assert log.following
        assert log.is_vertical_scroll_end


async def test_the_prompter_asks_through_a_modal() -> None:
    answers: list[bool] = []

    async def asking(sink: EventSink, prompter: Prompter) -> DeployFinished:
        assert isinstance(prompter, ConsolePrompter)
        answers.append(await prompter.confirm("The lease is held by ci@build-7 since 12:01. Break it?"))
        answers.append(await prompter.confirm("Really?"))
        return DeployFinished(ok=True, exit_code=0, seconds=1.0)

    app = DeployConsole(asking, title="t", clock=FakeClock())
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: len(answers) == 1 and isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await until(pilot, lambda: not app.running)
    assert answers == [True, False]


async def test_aborting_while_the_core_asks_closes_the_question() -> None:
    cancelled = asyncio.Event()

    async def asking(sink: EventSink, prompter: Prompter) -> DeployFinished:
        try:
            await prompter.confirm("Break the stale lease?")
        except asyncio.CancelledError:
            cancelled.set()
            finished = DeployFinished(ok=False, exit_code=130, seconds=1.0, error="aborted")
            sink(finished)
            return finished
        raise AssertionError("not reached")

    app = DeployConsole(asking, title="t", clock=FakeClock())
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("ctrl+c")  # the abort question covers the core's question
        await pilot.pause()
        await pilot.press("ctrl+c")  # and a second Ctrl-C confirms it
        await until(pilot, lambda: not app.running)
        await until(pilot, lambda: isinstance(app.screen, DeployScreen))
        assert cancelled.is_set()
        assert len(app.screen_stack) == 1
        await pilot.press("q")
    assert app.return_value is not None
    assert app.return_value.exit_code == 130


async def test_help_screen_opens_and_closes() -> None:
    scenario = ScriptedDeploy(hold_at="release")
    app = console(scenario)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, DeployScreen)
        scenario.go.set()


async def test_the_grid_fits_the_terminal() -> None:
    for size, servers, columns, compact in (
        ((120, 40), 3, 3, False),
        ((80, 24), 3, 1, True),
        ((120, 40), 9, 1, True),
        ((160, 50), 6, 4, False),
    ):
        names = tuple(f"app-{i}" for i in range(1, servers + 1))
        scenario = ScriptedDeploy(servers=names, hold_at="release")
        app = console(scenario)
        async with app.run_test(size=size) as pilot:
            await asyncio.wait_for(scenario.reached.wait(), 5)
            await settle(app, pilot)
            grid = app.deploy_screen.query_one(ServerGrid)
            assert grid.styles.grid_size_columns == columns, size
            assert grid.has_class("-compact") is compact
            assert all(p.compact is compact for p in app.deploy_screen.panels)
            if compact:
                assert all(p.size.height == 1 for p in app.deploy_screen.panels)
            assert WAITING_FOR_RELEASE in app.deploy_screen.panel(names[1]).plain
            scenario.go.set()


class _Counter(Widget):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def on_event_batch(self, message: EventBatch) -> None:
        self.batches.append(len(message.events))


class _BridgeApp(App[None]):
    def compose(self) -> ComposeResult:
        yield _Counter()


async def test_the_bridge_posts_batches_not_one_message_per_event() -> None:
    app = _BridgeApp()
    async with app.run_test() as pilot:
        counter = app.query_one(_Counter)
        bridge = EventBridge(counter, interval=0.05)
        for i in range(10_000):
            bridge.sink(OutputLine(server="web-1", phase=Phase.RELEASE, line=str(i)))
        await pilot.pause(0.2)
        assert counter.batches == [10_000]
        bridge.sink(OutputLine(server="web-1", phase=Phase.RELEASE, line="late"))
        bridge.flush()  # flushing early leaves no timer behind to post an empty batch
        await pilot.pause(0.1)
        assert counter.batches == [10_000, 1]
