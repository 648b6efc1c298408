"""The demo through the console (Pilot, no terminal): the real fleet, the gate seen, then the answers.

The console itself is tested with scripted deploys elsewhere; this checks that the demo's job drives it.
"""

from __future__ import annotations

from tako_core.demo import Demo
from tako_core.events import WAITING_FOR_RELEASE, DeployFinished, Phase, State
from tako_tui.app import DeployConsole

from .test_demo import leftovers
from .tui_scenarios import settle, until


async def test_the_console_shows_each_follower_waiting_then_every_server_serves_the_migration() -> None:
    with Demo(3) as demo:
        demo.start()
        app = DeployConsole(demo.deploy, title="tako demo · hello → production")
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.deploy_screen

            def followers_waiting() -> bool:
                app.bridge.flush()
                return len(screen.panels) == 3 and all(  # the panels appear with the first event
                    screen.panel(name).phase_state(Phase.RELEASE) is State.WAITING
                    for name in ("web-2", "web-3")
                )

            await until(pilot, followers_waiting, within=30)
            assert all(WAITING_FOR_RELEASE in screen.panel(n).plain for n in ("web-2", "web-3"))
            await until(pilot, lambda: not app.running, within=60)
            await settle(app, pilot)
            assert screen.header.overall == "deployed"
            await pilot.press("q")
        assert isinstance(app.return_value, DeployFinished)
        assert app.return_value.exit_code == 0
        answers = demo.answers()
        assert [a.status for a in answers] == [200, 200, 200]
        assert all("schema version 3, table greetings:" in a.body for a in answers)
        workspace = demo.workspace
    assert workspace is not None
    assert not workspace.exists()
    assert leftovers(workspace) == []
