"""`tako console`: the status of every env and server, its logs live, releases, secrets, a deploy.

Pilot over the real sshd fleet (the console built as the CLI builds it), and snapshots of each view
at 80x24 and 120x40 from scripted data on a frozen clock.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Log

from tako_core.deploy.inspect import CertificateInfo, LeaseInfo, ServerView
from tako_core.deploy.logs import LogLine
from tako_core.secrets import SecretsStore
from tako_tui.app import Console, ConsoleEnv
from tako_tui.commands.console import console_env
from tako_tui.commands.options import load_target
from tako_tui.screens.confirm import ConfirmScreen
from tako_tui.screens.deploy import DeployScreen
from tako_tui.screens.logs import LogsScreen
from tako_tui.screens.releases import ReleasesScreen
from tako_tui.screens.secrets import SecretsScreen
from tests.deploykit import TAKO, get, sample_app, tako
from tests.fleet import Fleet
from tests.test_tui_releases import Rollbacks, server
from tests.tmux import Tmux

from .tui_scenarios import T0, FakeClock, until


def rows(app: Console) -> list[str]:
    table = app.status_screen.query_one("#status", DataTable)
    return [" ".join(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]


def on_status(app: Console) -> bool:
    return app.screen is app.status_screen


def shown(app: Console) -> list[str]:
    return [str(line) for line in app.screen.query_one("#logs", Log).lines]


async def test_the_console_over_real_servers(fleet: Fleet, tako_home: Path, tmp_path: Path) -> None:
    servers = fleet(2)
    cfg = sample_app(tmp_path, servers, extra='[vars]\nSAMPLE_TICK = "0.1"\n')
    first = tako("deploy", "--json", "--yes", cwd=cfg.parent)
    assert first.code == 0, first.stderr
    build = next(e["build"] for e in first.events() if e["event"] == "ArtifactBuilt")
    target = load_target(cfg, None)
    app = Console("web", [console_env(target)], lambda: SecretsStore.open(cfg.parent, "web"))

    async with app.run_test(size=(120, 40)) as pilot:
        # Status: both servers, the build they run, their instance up.
        await until(pilot, lambda: len(rows(app)) == 2 and all("1/1 up" in r for r in rows(app)), 30)
        assert [r.split()[:3] for r in rows(app)] == [["production", s.name, build] for s in servers]
        assert all(r.split()[5].endswith("s") for r in rows(app))  # up for some seconds

        # Logs, live: both servers' ticks; the filter keeps one; a search narrows it.
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, LogsScreen))
        await until(
            pilot, lambda: {line.split(" | ")[0] for line in shown(app) if "tick" in line} == {"s1", "s2"}, 30
        )
        await pilot.press("f")
        await until(pilot, lambda: bool(shown(app)) and all(line.startswith("s1 | ") for line in shown(app)))
        await pilot.press("slash")
        await pilot.press(*"tick 1", "enter")
        assert all(line.startswith("s1 | ") and "tick 1" in line for line in shown(app))
        await pilot.press("escape")
        await until(pilot, lambda: on_status(app))

        # Releases, then back; secrets, then back.
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, ReleasesScreen))
        releases = app.screen
        assert isinstance(releases, ReleasesScreen)
        await until(pilot, lambda: releases.selected == build, 30)
        await pilot.press("escape")
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, SecretsScreen))
        await pilot.press("q")
        await until(pilot, lambda: on_status(app))

        # d: asks, then deploys on the deploy screen; q once it is over comes back here.
        (cfg.parent / "VERSION").write_text("v2\n")
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.click("#yes")
        await until(pilot, lambda: isinstance(app.screen, DeployScreen), 10)
        await until(pilot, lambda: app.deploy_screen.model.finished is not None, 90)
        finished = app.deploy_screen.model.finished
        assert finished is not None
        assert finished.ok
        await pilot.press("q")
        await until(pilot, lambda: on_status(app))
    assert all(get(s).startswith("v2 ") for s in servers)


# --- snapshots ----------------------------------------------------------------------------------------


def up_since(view: ServerView, started_at: float) -> ServerView:
    """The view with its instances started at `started_at`."""
    assert view.status is not None
    instances = tuple(replace(i, started_at=started_at) for i in view.status.instances)
    return replace(view, status=replace(view.status, instances=instances))


def certified(view: ServerView, days: float) -> ServerView:
    """The view with a certificate for its routes that expires `days` after T0."""
    assert view.status is not None
    cert = CertificateInfo(
        app="shop", env="production", names=view.status.routes, issuer="CN=R11", not_after=T0 + days * 86400
    )
    return replace(view, status=replace(view.status, certificate=cert))


def scripted(clock: FakeClock) -> Console:
    lease = LeaseInfo(holder="ci@build-7 (pid 4242)", build="(building)", started_at=T0 - 95, ttl=30)
    views = {
        "production": [
            certified(up_since(server("web-1", "3f2a9c1", ["3f2a9c1", "b71e004"]), T0 - 3 * 3600), 62.2),
            certified(up_since(server("web-2", "3f2a9c1", ["3f2a9c1", "b71e004"], up=1), T0 - 125), 9.4),
            ServerView(server="web-3", error="connection refused"),
        ],
        "staging": [up_since(server("staging-1", "b71e004", ["b71e004"], lease=lease), T0 - 86400)],
    }
    lines = [
        LogLine(server=f"web-{1 + i % 2}", time=T0 + i, build="3f2a9c1", instance=None, line=text)
        for i, text in enumerate(
            [
                "GET / 200 3ms",
                "GET /health 200 1ms",
                "POST /orders 201 41ms",
                "GET /orders/17 200 5ms",
                "warning: slow query (812 ms): SELECT * FROM orders",
                "GET / 200 2ms",
            ]
        )
    ]

    def env(name: str) -> ConsoleEnv:
        async def load() -> list[ServerView]:
            return views[name]

        async def follow(on_line: Callable[[LogLine], None]) -> None:
            for line in lines:
                on_line(line)
            await asyncio.Event().wait()  # live: nothing more comes

        return ConsoleEnv(
            name=name,
            servers=[v.server for v in views[name]],
            instances=1,
            load=load,
            follow=follow,
            deploy=lambda: Rollbacks()("3f2a9c1"),
            rollback=Rollbacks(),
        )

    return Console(
        "shop", [env("production"), env("staging")], lambda: SecretsStore.open(Path("."), "shop"), clock=clock
    )


SIZES = [pytest.param((120, 40), id="120x40"), pytest.param((80, 24), id="80x24")]


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_status(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    app = scripted(FakeClock())

    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.pause()
        await until(pilot, lambda: len(rows(app)) == 4)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_help(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    app = scripted(FakeClock())

    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.pause()
        await until(pilot, lambda: len(rows(app)) == 4)
        await pilot.press("question_mark")
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_logs(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    app = scripted(FakeClock())

    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.pause()
        await until(pilot, lambda: len(rows(app)) == 4)
        await pilot.press("l")
        await until(pilot, lambda: len(shown(app)) == 6)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_bare_tako_is_the_console_on_a_terminal_in_an_app_folder_and_help_elsewhere(
    fleet: Fleet, tako_home: Path, tmp_path: Path, tmux: Tmux
) -> None:
    servers = fleet(1)
    cfg = sample_app(tmp_path, servers)
    helped = tako(cwd=cfg.parent)  # no terminal
    assert helped.code == 0
    assert helped.stdout.startswith("Usage: tako [OPTIONS] [COMMAND]")
    assert "console" in helped.stdout

    command = f"cd {shlex.quote(str(cfg.parent))} && {shlex.join(TAKO)}; sleep 30"
    tmux.run("new-session", "-d", "-s", "t", "-x", "100", "-y", "30", command)
    screen = tmux.wait_for("the console", lambda s: "Environments and servers" in s and "production  s1" in s)
    assert "production" in screen
    tmux.run("send-keys", "-t", "t", "q")
    tmux.wait_for("the console to close", lambda s: "Environments and servers" not in s)
