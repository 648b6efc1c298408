"""The console's home: every env and server of the app at a glance, refreshed live.

Per server: the build it runs, its instances up/total, restarts, the days its HTTPS certificate has
left, and a deploy under way with its holder. The screen asks the app for the data (`load`) and hands
the keys' actions to it; it never talks to a server itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from tako_core.deploy.inspect import AppStatus, ServerView, days_left
from tako_core.events import State
from tako_core.units import ago, duration

from ..widgets.look import ERROR, MUTED, STATE_STYLE

REFRESH = 5.0  # seconds between looks at the servers
LoadEnv = Callable[[str], Awaitable[list[ServerView]]]


class StatusScreen(Screen[None]):
    AUTO_FOCUS = "#status"
    BINDINGS = [
        Binding("l", "logs", "Logs"),
        Binding("r", "releases", "Releases"),
        Binding("s", "secrets", "Secrets"),
        Binding("d", "deploy", "Deploy"),
        Binding("g", "refresh", "Refresh"),
    ]

    def __init__(
        self,
        app_name: str,
        envs: list[str],
        load: LoadEnv,
        act: Callable[[str, str], None],
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        """`act(what, env)` does what a key asks ("logs", "releases", "secrets", "deploy")."""
        super().__init__()
        self._app_name = app_name
        self.envs = envs
        self._load = load
        self._act = act
        self._now = now
        self.views: dict[str, list[ServerView]] = {}

    def compose(self) -> ComposeResult:
        yield Static(id="status-header")
        yield DataTable(id="status", cursor_type="row", zebra_stripes=True)
        yield Static(id="status-hint")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#status", DataTable)
        table.border_title = "Environments and servers"
        table.add_columns("Env", "Server", "Build", "Instances", "Up for", "HTTPS", "Deploy under way")
        hint = "l logs · r releases & rollback · s secrets · d deploy the selected env · ? help"
        self.query_one("#status-hint", Static).update(Text(hint, MUTED))
        self.action_refresh()
        self.set_interval(REFRESH, self.action_refresh)

    @property
    def selected_env(self) -> str:
        table = self.query_one("#status", DataTable)
        if not table.row_count:
            return self.envs[0]
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value).split("/")[0]

    def action_refresh(self) -> None:
        self._header("asking the servers…" if not self.views else "")
        self.run_worker(self._fetch(), exclusive=True, group="status")

    async def _fetch(self) -> None:
        found = await asyncio.gather(*(self._load(env) for env in self.envs))
        self.show(dict(zip(self.envs, found, strict=True)))

    def show(self, views: dict[str, list[ServerView]]) -> None:
        self.views = views
        servers = sum(len(v) for v in views.values())
        unreachable = sum(1 for v in views.values() for s in v if s.error)
        note = f"{len(views)} env(s), {servers} server(s)" + (
            f", {unreachable} unreachable" if unreachable else ""
        )
        self._header(note)
        table = self.query_one("#status", DataTable)
        cursor = table.cursor_row
        table.clear()
        for env, env_views in views.items():
            for view in env_views:
                table.add_row(
                    Text(env, "bold"),
                    Text(view.server, "bold"),
                    *self._cells(view),
                    key=f"{env}/{view.server}",
                )
        if table.row_count:
            table.move_cursor(row=min(cursor, table.row_count - 1))

    def _cells(self, view: ServerView) -> tuple[Text, Text, Text, Text, Text]:
        if view.error:
            return Text(f"unreachable: {view.error}", ERROR), Text(""), Text(""), Text(""), Text("")
        status = view.status
        if status is None:
            return Text("never deployed", MUTED), Text(""), Text(""), Text(""), Text("")
        up = sum(1 for i in status.instances if i.running)
        total = len(status.instances)
        state = State.DONE if up == total and total else State.RUNNING if up else State.FAILED
        health = Text(f"{up}/{total} up", STATE_STYLE[state])
        restarts = sum(i.restarts for i in status.instances)
        if restarts:
            health.append(f"  {restarts} restarts", STATE_STYLE[State.FAILED])
        lease = status.lease
        under_way = (
            Text(f"{lease.build} by {lease.holder}, {ago(lease.started_at, self._now())}", "#f9e2af")
            if lease is not None
            else Text("")
        )
        starts = [i.started_at for i in status.instances if i.running and i.started_at]
        # The youngest instance: a restart shows here at once, where the oldest would hide it.
        uptime = Text(duration(self._now() - max(starts)), MUTED) if starts else Text("")
        return Text(status.current or "—"), health, uptime, self._https(status), under_way

    def _https(self, status: AppStatus) -> Text:
        """How long its certificate has left; red from two weeks before it expires (renewal is due a
        month before, for a 90-day certificate: one that close to its end was not renewed)."""
        cert = status.certificate
        if cert is None:
            return Text("—", MUTED)
        days = days_left(cert, self._now())
        if days < 0:
            return Text("expired", STATE_STYLE[State.FAILED])
        return Text(f"{days:.0f} d left", STATE_STYLE[State.DONE if days >= 14 else State.FAILED])

    def _header(self, note: str) -> None:
        header = Text.assemble(("tako ", "bold #f5a97f"), (self._app_name, "bold"), (f"   {note}", MUTED))
        self.query_one("#status-header", Static).update(header)

    # The keys act on the selected env; the app knows how.
    def action_logs(self) -> None:
        self._act("logs", self.selected_env)

    def action_releases(self) -> None:
        self._act("releases", self.selected_env)

    def action_secrets(self) -> None:
        self._act("secrets", self.selected_env)

    def action_deploy(self) -> None:
        self._act("deploy", self.selected_env)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_logs()  # enter (or a click) on a server
