"""Releases and status: per server the current build, its instances, any deploy under way; the releases
each server keeps; rollback to one of them after a confirmation (the rollback then runs on the deploy
screen, like a deploy).

The screen only shows what `load` returns (the core's `inspect`) and hands the chosen build back to
the app; it never talks to a server itself.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from tako_core.deploy.inspect import ReleaseInfo, ServerView
from tako_core.events import State
from tako_core.units import ago

from ..widgets.look import ERROR, MUTED, STATE_STYLE
from .confirm import ConfirmScreen

Load = Callable[[], Awaitable[list[ServerView]]]

CURRENT = Text("● current", STATE_STYLE[State.DONE])
KEPT = Text("kept", "")
INCOMPLETE = Text("incomplete", MUTED)
MISSING = Text("—", MUTED)


class ReleasesScreen(Screen[None]):
    AUTO_FOCUS = "#releases"
    BINDINGS = [
        Binding("r", "rollback", "Roll back to it"),
        Binding("g", "refresh", "Refresh"),
        Binding("escape", "back", "Back", show=False),
    ]

    def __init__(
        self,
        load: Load,
        on_rollback: Callable[[str], None],
        *,
        title: str,
        now: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self._load = load
        self._on_rollback = on_rollback
        self._title = title
        self._now = now
        self.views: list[ServerView] = []

    def compose(self) -> ComposeResult:
        yield Static(id="releases-header")
        yield DataTable(id="servers-status", cursor_type="none", zebra_stripes=True)
        yield DataTable(id="releases", cursor_type="row", zebra_stripes=True)
        yield Static(id="releases-hint")
        yield Footer()

    def on_mount(self) -> None:
        status = self.query_one("#servers-status", DataTable)
        status.border_title = "Servers"
        status.add_columns("Server", "Current", "Instances", "Deploy under way")
        self.query_one("#releases", DataTable).border_title = "Releases kept (newest first)"
        self.action_refresh()

    def action_back(self) -> None:
        """Back to the console's status (`tako releases` has nothing below this screen)."""
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()

    # -- loading -------------------------------------------------------------------------------------

    def action_refresh(self) -> None:
        self._header("asking the servers…")
        self.run_worker(self._fetch(), exclusive=True, group="inspect")

    async def _fetch(self) -> None:
        self.show(await self._load())

    def show(self, views: list[ServerView]) -> None:
        self.views = views
        unreachable = sum(1 for v in views if v.error)
        self._header(f"{len(views)} servers" + (f", {unreachable} unreachable" if unreachable else ""))
        self._fill_status(views)
        self._fill_releases(views)

    def _header(self, note: str) -> None:
        header = Text.assemble(("tako ", "bold #f5a97f"), (self._title, "bold"), (f"   {note}", MUTED))
        self.query_one("#releases-header", Static).update(header)

    def _fill_status(self, views: list[ServerView]) -> None:
        table = self.query_one("#servers-status", DataTable)
        table.clear()
        now = self._now()
        for view in views:
            if view.error:
                table.add_row(Text(view.server, "bold"), Text(f"unreachable: {view.error}", ERROR), "", "")
                continue
            status = view.status
            if status is None:
                table.add_row(Text(view.server, "bold"), Text("never deployed", MUTED), "", "")
                continue
            up = sum(1 for i in status.instances if i.running)
            restarts = sum(i.restarts for i in status.instances)
            total = len(status.instances)
            state = State.DONE if up == total else State.RUNNING if up else State.FAILED
            health = Text(f"{up}/{total} up", STATE_STYLE[state])
            if restarts:
                health.append(f"  {restarts} restarts", STATE_STYLE[State.FAILED])
            lease = status.lease
            under_way = (
                Text(f"{lease.build} by {lease.holder}, {ago(lease.started_at, now)}", "#f9e2af")
                if lease is not None
                else Text("")
            )
            table.add_row(Text(view.server, "bold"), Text(status.current or "—"), health, under_way)

    def _fill_releases(self, views: list[ServerView]) -> None:
        table = self.query_one("#releases", DataTable)
        table.clear(columns=True)
        table.add_column("Build", key="build")
        table.add_column("Built", key="when")
        reachable = [v for v in views if not v.error]
        for view in reachable:
            table.add_column(view.server, key=view.server)
        kept: dict[str, dict[str, ReleaseInfo]] = {}
        for view in reachable:
            for release in view.releases:
                kept.setdefault(release.build, {})[view.server] = release
        now = self._now()
        newest_first = sorted(kept.items(), key=lambda item: -max(r.created_at for r in item[1].values()))
        for build, where in newest_first:
            created = max(r.created_at for r in where.values())
            cells = [_mark(where.get(v.server)) for v in reachable]
            table.add_row(Text(build, "bold"), Text(ago(created, now), MUTED), *cells, key=build)
        hint = "r or enter: roll every server back to the selected build (its release command is not run)"
        self.query_one("#releases-hint", Static).update(Text(hint, MUTED))

    # -- rollback ------------------------------------------------------------------------------------

    @property
    def selected(self) -> str | None:
        table = self.query_one("#releases", DataTable)
        if not table.row_count:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "releases":  # enter on a release
            self.action_rollback()

    def action_rollback(self) -> None:
        build = self.selected
        if build is None:
            return
        problem = self._why_not(build)
        if problem:
            self.notify(problem, severity="warning", timeout=5)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._on_rollback(build)

        question = (
            f"Roll {self._title} back to {build} on every server? Instances restart on it, one at a time; "
            "the release command is not run."
        )
        self.app.push_screen(
            ConfirmScreen(question, title="Rollback", yes="Roll back", no="Cancel"), answered
        )

    def _why_not(self, build: str) -> str:
        """Why a rollback to `build` cannot start, or "" (the core checks again before changing anything)."""
        for view in self.views:
            if view.error:
                return f"{view.server} is unreachable: every server must roll back together"
            release = next((r for r in view.releases if r.build == build), None)
            if release is None or not release.complete:
                return f"{view.server} does not keep a complete {build}"
        if all(view.status is not None and view.status.current == build for view in self.views):
            return f"{build} is already current everywhere"
        return ""


def _mark(release: ReleaseInfo | None) -> Text:
    if release is None:
        return MISSING
    if release.current:
        return CURRENT
    return KEPT if release.complete else INCOMPLETE
