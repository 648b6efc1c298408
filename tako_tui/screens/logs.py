"""The instances' output of one env, live (`tako logs -f` in the console): filter by server, search.

`follow(on_line)` is the core's `read_logs(..., follow=True)`: it runs in a worker until the screen
closes. Lines are kept (the newest KEEP) so a change of filter or search redraws from them; new lines
reach the screen in batches, as the deploy screen's output does.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Input, Log, Static

from tako_core.deploy.logs import LogLine, labelled

from ..widgets.look import MUTED

KEEP = 20_000
FLUSH = 0.1  # seconds between batches of new lines
Follow = Callable[[Callable[[LogLine], None]], Awaitable[None]]


class LogsScreen(Screen[None]):
    AUTO_FOCUS = "#logs"
    BINDINGS = [
        Binding("f", "next_server", "Server filter"),
        Binding("slash", "search", "Search"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, title: str, servers: list[str], follow: Follow, *, several: bool = False) -> None:
        """`several`: the env runs several instances per server, so each line names its instance."""
        super().__init__()
        self._title = title
        self.servers = servers
        self._several = several
        self._follow = follow
        self.lines: collections.deque[LogLine] = collections.deque(maxlen=KEEP)
        self._pending: list[LogLine] = []
        self.server: str | None = None  # the filter: None shows every server
        self.search = ""

    def compose(self) -> ComposeResult:
        yield Static(id="logs-header")
        yield Log(id="logs", max_lines=KEEP, highlight=False)
        yield Input(placeholder="search (enter to apply, escape to close)", id="logs-search")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#logs-search", Input).display = False
        self._header()
        self.set_interval(FLUSH, self._flush)
        self.run_worker(self._follow(self._pending.append), group="logs", exit_on_error=False)

    def matches(self, line: LogLine) -> bool:
        if self.server is not None and line.server != self.server:
            return False
        return not self.search or self.search.lower() in line.line.lower()

    def _flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending[:] = list(self._pending), []
        self.lines.extend(batch)
        self.query_one("#logs", Log).write_lines(
            [labelled(line, self._several) for line in batch if self.matches(line)]
        )

    def _redraw(self) -> None:
        log = self.query_one("#logs", Log)
        log.clear()
        log.write_lines([labelled(line, self._several) for line in self.lines if self.matches(line)])
        self._header()

    def _header(self) -> None:
        where = self.server or "every server"
        search = f" · search {self.search!r}" if self.search else ""
        header = Text.assemble(
            ("tako ", "bold #f5a97f"), (self._title, "bold"), (f"   logs of {where}{search} (live)", MUTED)
        )
        self.query_one("#logs-header", Static).update(header)

    def action_next_server(self) -> None:
        """Every server → the first → the next … → every server again."""
        order: list[str | None] = [None, *self.servers]
        self.server = order[(order.index(self.server) + 1) % len(order)]
        self._redraw()

    def action_search(self) -> None:
        box = self.query_one("#logs-search", Input)
        box.display = True
        box.value = self.search
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.search = event.value.strip()
        event.input.display = False
        self.query_one("#logs", Log).focus()
        self._redraw()

    def action_back(self) -> None:
        box = self.query_one("#logs-search", Input)
        if box.display:
            box.display = False
            self.query_one("#logs", Log).focus()
            return
        self.workers.cancel_group(self, "logs")
        self.app.pop_screen()
