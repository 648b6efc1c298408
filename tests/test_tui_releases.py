"""The releases screen: per-server status, the releases kept, rollback after a confirmation.

`load` returns the core's `ServerView`s (plain data, as `inspect` would); the rollback job is scripted
(tests/tui_scenarios.py). The real `tako releases` path is the lead's, over the sshd fleet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable

from tako_core.deploy.inspect import AppStatus, InstanceStatus, LeaseInfo, ReleaseInfo, ServerView
from tako_core.events import DeployFinished, EventSink, Job, Prompter
from tako_tui.app import ReleasesConsole
from tako_tui.screens.confirm import ConfirmScreen
from tako_tui.screens.deploy import DeployScreen
from tako_tui.screens.releases import ReleasesScreen

from .tui_scenarios import T0, FakeClock, ScriptedDeploy, until

HOUR = 3600.0


def instances(build: str, up: int, total: int = 2, restarts: int = 0) -> tuple[InstanceStatus, ...]:
    return tuple(
        InstanceStatus(
            index=i, build=build, port=9000 + i, pid=100 + i, running=i < up, restarts=restarts, inflight=0
        )
        for i in range(total)
    )


def server(
    name: str, current: str, kept: list[str], *, up: int = 2, lease: LeaseInfo | None = None
) -> ServerView:
    releases = tuple(
        ReleaseInfo(build=b, complete=True, current=b == current, created_at=T0 - HOUR * (i + 1))
        for i, b in enumerate(kept)
    )
    status = AppStatus(
        app="shop",
        env="production",
        current=current,
        running=current,
        routes=("shop.example.com",),
        instances=instances(current, up),
        lease=lease,
        user="tako-shop-production",
        shares_agent_user=False,
    )
    return ServerView(server=name, agent_version="0.1.0", status=status, releases=releases)


def fleet_views() -> list[ServerView]:
    return [
        server("web-1", "3f2a9c1", ["3f2a9c1", "b71e004", "9c0d2aa"]),
        server("web-2", "3f2a9c1", ["3f2a9c1", "b71e004"], up=1),
        ServerView(server="web-3", error="connection refused"),
    ]


def reachable_views() -> list[ServerView]:
    return fleet_views()[:2]


class Rollbacks:
    """The rollback jobs asked for, each a scripted deploy-shaped run."""

    def __init__(self) -> None:
        self.builds: list[str] = []
        self.clock = FakeClock()

    def __call__(self, build: str) -> Job:
        self.builds.append(build)
        scenario = ScriptedDeploy(clock=self.clock, servers=("web-1", "web-2"), release_lines=[])

        async def job(sink: EventSink, prompter: Prompter) -> DeployFinished:
            return await scenario(sink, prompter)

        return job


def console(views: Callable[[], list[ServerView]], rollbacks: Rollbacks) -> ReleasesConsole:
    async def load() -> list[ServerView]:
        await asyncio.sleep(0)
        return views()

    return ReleasesConsole(load, rollbacks, title="shop → production", clock=FakeClock())


async def loaded(app: ReleasesConsole, pilot: Pilot[Any]) -> ReleasesScreen:
    screen = app.releases_screen
    await until(pilot, lambda: bool(screen.views))
    await pilot.pause()
    return screen


async def test_status_and_releases_per_server() -> None:
    app = console(fleet_views, Rollbacks())
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await loaded(app, pilot)
        status = screen.query_one("#servers-status", DataTable)
        rows = [[str(c) for c in status.get_row_at(i)] for i in range(status.row_count)]
        assert rows[0][:3] == ["web-1", "3f2a9c1", "2/2 up"]
        assert rows[1][2] == "1/2 up"
        assert "unreachable: connection refused" in rows[2][1]
        releases = screen.query_one("#releases", DataTable)
        assert [str(releases.get_row_at(i)[0]) for i in range(releases.row_count)] == [
            "3f2a9c1",
            "b71e004",
            "9c0d2aa",
        ]
        assert [str(c) for c in releases.get_row("9c0d2aa")[2:]] == ["kept", "—"]
        assert str(releases.get_row("3f2a9c1")[2]) == "● current"


async def test_rollback_is_refused_while_a_server_is_unreachable() -> None:
    rollbacks = Rollbacks()
    app = console(fleet_views, rollbacks)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(app, pilot)
        await pilot.press("down", "r")
        await pilot.pause()
        assert isinstance(app.screen, ReleasesScreen)
        assert rollbacks.builds == []


async def test_rollback_to_a_build_one_server_lacks_is_refused() -> None:
    rollbacks = Rollbacks()
    app = console(reachable_views, rollbacks)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(app, pilot)
        await pilot.press("down", "down")  # 9c0d2aa: only web-1 keeps it
        assert app.releases_screen.selected == "9c0d2aa"
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, ReleasesScreen)
        assert rollbacks.builds == []


async def test_confirmed_rollback_runs_on_the_deploy_screen() -> None:
    rollbacks = Rollbacks()
    app = console(reachable_views, rollbacks)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(app, pilot)
        await pilot.press("down")
        assert app.releases_screen.selected == "b71e004"
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")  # not yet
        await pilot.pause()
        assert rollbacks.builds == []
        await pilot.press("r")
        await pilot.pause()
        await pilot.press("y")
        await until(pilot, lambda: app.worker is not None and not app.running)
        assert rollbacks.builds == ["b71e004"]
        assert isinstance(app.screen, DeployScreen)
        assert app.result is not None
        assert app.result.ok
        await pilot.press("q")
    assert app.return_value is not None
    assert app.return_value.exit_code == 0


async def test_quitting_without_a_rollback_returns_none() -> None:
    app = console(reachable_views, Rollbacks())
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(app, pilot)
        await pilot.press("q")
    assert app.return_value is None


@pytest.mark.parametrize("size", [pytest.param((120, 40), id="120x40"), pytest.param((80, 24), id="80x24")])
def test_snapshot(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    lease = LeaseInfo(holder="ci@build-7 (pid 4242)", build="(building)", started_at=T0 - 95, ttl=30)
    views = [
        server("web-1", "3f2a9c1", ["3f2a9c1", "b71e004", "9c0d2aa"], lease=lease),
        server("web-2", "3f2a9c1", ["3f2a9c1", "b71e004"], up=1),
        ServerView(server="web-3", error="connection refused"),
    ]
    app = ReleasesConsole(_returning(views), Rollbacks(), title="shop → production", clock=FakeClock())

    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.pause()
        await loaded(app, pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


def _returning(views: list[ServerView]) -> Callable[[], Any]:
    async def load() -> list[ServerView]:
        return views

    return load
