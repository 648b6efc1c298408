"""One panel per server: its role, the six phases with state and duration, and what went wrong.

A panel renders in full (a bordered box, a row per phase) or compact (one row per server) when the
grid holds too many servers for the terminal. Tests and the lead's real-deploy tests query panels as
`#panel-<server>` and read `phase_state(Phase.RELEASE)`, `phase_detail(...)`, `phase_error(...)`.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Callable

from rich.console import RenderableType
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.containers import Container
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

from tako_core.events import SERVER_PHASES, Outcome, Phase, ServerResult, State
from tako_core.units import duration

from .look import ERROR, MUTED, NAME_STYLE, STATE_GLYPH, STATE_STYLE, glyph
from .model import ServerView

ERROR_LINES = 3  # under a failed phase; the log pane has the rest
LEADER_MARK = "★"


def panel_id(server: str) -> str:
    """A DOM id for a server name (ids allow letters, digits, '-' and '_')."""
    return "panel-" + re.sub(r"[^A-Za-z0-9_-]", "_", server)


class ServerPanel(Widget, can_focus=True):
    BINDINGS = [
        Binding("enter", "select", "Show its log", show=False),
        Binding("up,left", "app.focus_previous", show=False),
        Binding("down,right", "app.focus_next", show=False),
    ]

    compact: reactive[bool] = reactive(False, layout=True, toggle_class="-compact")
    name_width: reactive[int] = reactive(8, layout=True)

    class Selected(Message):
        """The user chose this server: the log pane shows only its lines."""

        def __init__(self, server: str) -> None:
            super().__init__()
            self.server = server

    def __init__(self, view: ServerView, now: Callable[[], float]) -> None:
        super().__init__(id=panel_id(view.name))
        self.view = view
        self._now = now

    # -- what tests and the lead read ------------------------------------------------------------

    @property
    def server(self) -> str:
        return self.view.name

    @property
    def role(self) -> str:
        return self.view.role

    def phase_state(self, phase: Phase) -> State:
        return self.view.phase_state(phase)

    def phase_detail(self, phase: Phase) -> str:
        return self.view.phases[phase].detail

    def phase_error(self, phase: Phase) -> str | None:
        return self.view.phases[phase].error

    @property
    def plain(self) -> str:
        """The panel's text as shown (without colours)."""
        return self._content(max(self.content_size.width, 20)).plain

    # -- rendering ---------------------------------------------------------------------------------

    def sync(self) -> None:
        """Re-read the view: classes for the border colour, the title, a repaint."""
        view = self.view
        self.set_class(view.leader, "-leader")
        self.set_class(view.failed, "-failed")
        self.set_class(view.complete, "-done")
        states = {p.state for p in view.phases.values()}
        self.set_class(State.RUNNING in states, "-active")
        self.set_class(State.WAITING in states and State.RUNNING not in states, "-waiting")
        title = Text.assemble((view.name, "bold"), "  ")
        title.append_text(
            Text(f"{LEADER_MARK} leader", "bold #f5a97f") if view.leader else Text("follower", MUTED)
        )
        self.border_title = title
        result = view.result
        self.border_subtitle = _outcome(result) if result is not None else None
        self.refresh(layout=True)

    def on_mount(self) -> None:
        self.sync()

    def render(self) -> RenderableType:
        return self._content(self.content_size.width)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        # Every row is cut to the width, so the height is the row count (and changes with the view,
        # which Textual's width-keyed cache would miss). Full panels take the tallest one's height,
        # so a row of the grid lines up.
        if self.compact or not isinstance(self.parent, ServerGrid):
            return self.rows(width)
        return max(panel.rows(width) for panel in self.parent.query_children(ServerPanel))

    def rows(self, width: int) -> int:
        return self._content(width).plain.count("\n") + 1

    def _content(self, width: int) -> Text:
        return self._compact_row(width) if self.compact else self._rows(width)

    def _rows(self, width: int) -> Text:
        now, view = self._now(), self.view
        out = Text(no_wrap=False, overflow="fold")
        for index, phase in enumerate(SERVER_PHASES):
            pv = view.phases[phase]
            if index:
                out.append("\n")
            left = Text.assemble(
                (glyph(pv.state, now), STATE_STYLE[pv.state]),
                " ",
                (f"{phase.value:<9}", NAME_STYLE[pv.state]),
            )
            info = view.info(phase)
            if info:
                left.append(info, MUTED if pv.state is State.DONE else "")
            took = pv.elapsed(now)
            right = Text(duration(took) if took is not None else "", MUTED)
            left.truncate(max(0, width - right.cell_len - 1), overflow="ellipsis")
            out.append_text(left)
            out.append(" " * max(1, width - left.cell_len - right.cell_len))
            out.append_text(right)
            note = view.note(phase)
            if note and pv.state is not State.PENDING:
                out.append(f"\n  {note}", _note_style(pv.state))
            if pv.error:
                out.append("\n")
                out.append_text(_error_text(pv.error, width - 2, ERROR_LINES, indent="  "))
        return out

    def _compact_row(self, width: int) -> Text:
        now, view = self._now(), self.view
        out = Text(no_wrap=True, overflow="ellipsis")
        out.append(f"{LEADER_MARK} " if view.leader else "  ", "bold #f5a97f")
        out.append(f"{view.name:<{self.name_width}} ", "bold")
        for phase in SERVER_PHASES:
            state = view.phase_state(phase)
            out.append(glyph(state, now) + " ", STATE_STYLE[state])
        current = None if view.complete else view.current  # all done: the outcome on the right says it
        if current is not None:
            out.append(f" {current.phase.value}", NAME_STYLE[current.state] or "bold")
            words = view.note(current.phase) or view.info(current.phase)
            if words:
                out.append(f" · {words}", _note_style(current.state))
        took = current.elapsed(now) if current is not None else None
        right = Text(duration(took) if took is not None else "", MUTED)
        if view.result is not None:
            right = _outcome(view.result)
        out.truncate(max(0, width - right.cell_len - 1), overflow="ellipsis")
        out.append(" " * max(1, width - out.cell_len - right.cell_len))
        out.append_text(right)
        error = current.error if current is not None else None
        if error:
            out.append("\n")
            out.append_text(
                _error_text(error, width - 2 - self.name_width, 1, indent=" " * (self.name_width + 3))
            )
        return out

    # -- interaction ------------------------------------------------------------------------------

    def action_select(self) -> None:
        self.post_message(self.Selected(self.view.name))

    def on_click(self, event: events.Click) -> None:
        event.stop()
        self.focus()
        self.action_select()


def _outcome(result: ServerResult) -> Text:
    state = {Outcome.DEPLOYED: State.DONE, Outcome.ABORTED: State.CANCELLED}.get(result.outcome, State.FAILED)
    return Text(f"{STATE_GLYPH[state]} {result.outcome.value}", STATE_STYLE[state])


def _note_style(state: State) -> str:
    if state is State.WAITING:
        return "italic #89dceb"
    if state is State.RUNNING:
        return "italic #f9e2af"
    return "italic " + MUTED


def _error_text(error: str, width: int, max_lines: int, *, indent: str) -> Text:
    """The error wrapped to the width, at most `max_lines` rows: a panel must never grow unbounded."""
    room = max(8, width)
    rows: list[str] = []
    for line in (ln for ln in error.splitlines() if ln.strip()):
        rows.extend(textwrap.wrap(line, room) or [""])
    text = Text(no_wrap=True, overflow="ellipsis")
    for i, row in enumerate(rows[:max_lines]):
        if i:
            text.append("\n")
        last = i == max_lines - 1 and len(rows) > max_lines
        text.append(indent + (row[: room - 1] + "…" if last else row), ERROR)
    return text


class ServerGrid(Container):
    """Lays the panels out to fit: as many columns as the width allows, compact rows when crowded."""

    MIN_PANEL_WIDTH = 34
    FULL_PANEL_HEIGHT = 10  # six phases, a note, the border
    MAX_FULL_SERVERS = 6

    def layout_for(self, servers: int, width: int, height: int) -> tuple[int, bool]:
        """(columns, compact) for a screen of width x height."""
        columns = max(1, min(servers, width // self.MIN_PANEL_WIDTH))
        rows = math.ceil(servers / columns) if servers else 0
        # Keep at least ~10 rows for the header, the log pane and the footer.
        crowded = servers > self.MAX_FULL_SERVERS or rows * self.FULL_PANEL_HEIGHT > height - 14
        return (1, True) if crowded else (columns, False)

    def arrange_panels(self, width: int, height: int) -> bool:
        """Lay the panels out for the screen size; True when they are compact rows."""
        panels = list(self.query(ServerPanel))
        columns, compact = self.layout_for(len(panels), width, height)
        self.styles.grid_size_columns = columns
        self.set_class(compact, "-compact")
        self.border_title = "Servers" if compact else None
        name_width = max((len(p.server) for p in panels), default=8)
        for panel in panels:
            panel.compact = compact
            panel.name_width = name_width
        return compact
