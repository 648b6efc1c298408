"""The console driving real deploys over the real sshd fleet (Pilot, no terminal).

The panels must show what really happens: the leader running the release command while each
follower waits, then the rollout; and on a failing release, the leader failed and the followers
cancelled with the failing output in the log.
"""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path

from tako_core.deploy import DeployOptions, deploy
from tako_core.events import (
    RUNNING_RELEASE,
    WAITING_FOR_RELEASE,
    DeployFinished,
    EventSink,
    Phase,
    Prompter,
    State,
)
from tako_tui.app import DeployConsole
from tako_tui.commands.options import load_target
from tests.deploykit import get, sample_app
from tests.fleet import Fleet
from tests.tui_scenarios import settle, until

SLOW = '\n[vars]\nSAMPLE_RELEASE_LINES = "8"\nSAMPLE_RELEASE_PAUSE = "0.25"\n'


def console_for(cfg: Path) -> DeployConsole:
    target = load_target(cfg, None)

    def job(sink: EventSink, prompter: Prompter) -> Awaitable[DeployFinished]:
        options = DeployOptions(holder="pilot@test", confirmed=True)
        return deploy(target, secrets={}, sink=sink, prompter=prompter, options=options)

    return DeployConsole(job, title=f"{target.app} → {target.env}")


async def test_the_panels_follow_a_real_deploy(fleet: Fleet, tako_home: Path, tmp_path: Path) -> None:
    servers = fleet(3)
    cfg = sample_app(tmp_path, servers, release="python3 migrate.py", extra=SLOW)
    app = console_for(cfg)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.deploy_screen

        def panels_shown() -> bool:  # the panels appear once the deploy's first event arrives
            app.bridge.flush()
            return len(screen.panels) == 3

        await until(pilot, panels_shown, within=30)
        leader, followers = screen.panel("s1"), [screen.panel("s2"), screen.panel("s3")]

        def releasing() -> bool:
            app.bridge.flush()
            return leader.phase_state(Phase.RELEASE) is State.RUNNING and all(
                f.phase_state(Phase.RELEASE) is State.WAITING for f in followers
            )

        await until(pilot, releasing, within=30)
        assert leader.role == "leader"
        assert RUNNING_RELEASE in leader.plain
        for follower in followers:
            assert follower.role == "follower"
            assert WAITING_FOR_RELEASE in follower.plain
            assert follower.phase_state(Phase.ROLLOUT) is State.PENDING  # nothing new starts yet
        await until(pilot, lambda: not app.running, within=60)
        await settle(app, pilot)
        for panel in (leader, *followers):
            assert panel.phase_state(Phase.FINALIZE) is State.DONE
        assert any(line.endswith("migration step 8/8") for line in screen.output.log_view.lines)
        assert screen.header.overall == "deployed"
        await pilot.press("q")
    assert isinstance(app.return_value, DeployFinished)
    assert app.return_value.exit_code == 0
    assert all(get(s).startswith("v1 ") for s in servers)


async def test_a_failing_release_shows_on_the_leader_and_cancels_the_followers(
    fleet: Fleet, tako_home: Path, tmp_path: Path
) -> None:
    servers = fleet(3)
    failing = SLOW.replace('PAUSE = "0.25"', 'PAUSE = "0"') + 'SAMPLE_RELEASE_EXIT = "3"\n'
    app = console_for(sample_app(tmp_path, servers, release="python3 migrate.py", extra=failing))
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: not app.running, within=60)
        await settle(app, pilot)
        screen = app.deploy_screen
        leader = screen.panel("s1")
        assert leader.phase_state(Phase.RELEASE) is State.FAILED
        assert "exited with code 3" in (leader.phase_error(Phase.RELEASE) or "")
        for name in ("s2", "s3"):
            assert screen.panel(name).phase_state(Phase.RELEASE) is State.CANCELLED
            assert screen.panel(name).phase_state(Phase.ROLLOUT) is State.CANCELLED
        assert any("migration failed with code 3" in line for line in screen.output.log_view.lines[-8:])
        assert screen.header.overall == "failed"
        await pilot.press("q")
    assert isinstance(app.return_value, DeployFinished)
    assert app.return_value.exit_code == 1
