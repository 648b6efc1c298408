"""The deploy screen: header, one panel per server, the verdict, the output pane, the footer.

It only renders: events come in as `EventBatch` messages from the bridge, fold into the `DeployModel`,
and the widgets whose part changed repaint. Running and aborting the deploy belong to the app.
"""

from __future__ import annotations

from collections.abc import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer

from tako_core.events import Event

from ..bridge import EventBatch
from ..widgets.header import DeployHeader
from ..widgets.model import DeployModel
from ..widgets.output import OutputPane
from ..widgets.server_panel import ServerGrid, ServerPanel, panel_id
from ..widgets.summary import Summary

TICK = 0.1  # spinner frames and live durations
ROOMY_HEIGHT = 32


class DeployScreen(Screen[None]):
    AUTO_FOCUS = "#log"
    BINDINGS = [
        Binding("l,escape", "show_all", "All output"),
        Binding("end", "follow", "Follow", show=False),
    ]

    def __init__(self, title: str, now: Callable[[], float]) -> None:
        super().__init__()
        self.model = DeployModel(title)
        self._now = now

    def compose(self) -> ComposeResult:
        yield DeployHeader(self.model, self._now, id="header")
        yield ServerGrid(id="servers")
        yield Summary(self.model, id="summary")
        yield OutputPane(id="output")
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(TICK, self._tick)

    # -- what tests and the lead read ------------------------------------------------------------

    def panel(self, server: str) -> ServerPanel:
        return self.query_one(f"#{panel_id(server)}", ServerPanel)

    @property
    def panels(self) -> list[ServerPanel]:
        return list(self.query(ServerPanel))

    @property
    def output(self) -> OutputPane:
        return self.query_one(OutputPane)

    @property
    def header(self) -> DeployHeader:
        return self.query_one(DeployHeader)

    # -- events ------------------------------------------------------------------------------------

    def on_event_batch(self, message: EventBatch) -> None:
        self.apply(message.events)

    def apply(self, events: list[Event]) -> None:
        changes = self.model.apply(events)
        self._mount_new_panels()
        for name in changes.servers:
            self.panel(name).sync()
        if changes.header:
            self.header.refresh()
        if changes.lines:
            self.output.add(changes.lines)
        if changes.finished:
            self.show_summary()

    def show_summary(self) -> None:
        """The deploy ended (or the run crashed): the verdict appears above the output."""
        self.query_one(Summary).sync()
        self.header.refresh()
        for panel in self.panels:
            panel.sync()

    def _mount_new_panels(self) -> None:
        grid = self.query_one(ServerGrid)
        have = {p.server for p in grid.query(ServerPanel)}
        new = [ServerPanel(view, self._now) for name, view in self.model.servers.items() if name not in have]
        if new:
            grid.mount(*new)
            self.output.set_servers(list(self.model.servers))
            self._arrange()

    def _arrange(self) -> None:
        width, height = self.size
        compact = self.query_one(ServerGrid).arrange_panels(width, height)
        summary = self.query_one(Summary)
        summary.detailed = not compact
        summary.refresh(layout=True)
        # A blank row between sections where the terminal has rows to spare.
        self.set_class(height >= ROOMY_HEIGHT, "-roomy")

    def on_resize(self) -> None:
        self._arrange()

    def _tick(self) -> None:
        self.header.refresh()
        for panel in self.panels:
            if panel.has_class("-active") or panel.has_class("-waiting"):
                panel.refresh()
        self.output.update_follow()

    # -- interaction -------------------------------------------------------------------------------

    def on_server_panel_selected(self, message: ServerPanel.Selected) -> None:
        self._select(message.server)

    def action_show_all(self) -> None:
        self._select(None)

    def _select(self, server: str | None) -> None:
        self.output.show(server)
        for panel in self.panels:
            panel.set_class(panel.server == server, "-selected")

    def action_follow(self) -> None:
        self.output.log_view.follow()
