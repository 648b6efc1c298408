"""`?`: the keys and what the glyphs mean."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

from tako_core.events import State

from ..widgets.look import MUTED, STATE_GLYPH, STATE_STYLE

KEYS = (
    ("a  ctrl+c", "abort the deploy (asks first)"),
    ("tab  arrows", "move between server panels"),
    ("enter  click", "show only that server's output"),
    ("l  escape", "show every server's output"),
    ("end", "jump to the newest output and follow it"),
    ("pgup  pgdn", "scroll the output (it stops following)"),
    ("q", "quit once the deploy has ended"),
    ("?", "this help"),
)

# tako console: its views, from the status of every env and server.
VIEWS = (
    ("l  enter", "the env's logs, live: f server filter, / search"),
    ("r", "its releases, and rollback (asks first)"),
    ("s", "the secrets"),
    ("d", "deploy the selected env (asks first)"),
    ("escape  q", "back to the status of every env"),
)

MEANING = {
    State.PENDING: "not started",
    State.RUNNING: "running",
    State.WAITING: "waiting (followers wait for the leader's release command)",
    State.DONE: "done",
    State.FAILED: "failed: the error is under the phase",
    State.CANCELLED: "cancelled: the deploy stopped before it ran",
    State.SKIPPED: "skipped (e.g. no release command)",
}


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        keys = Table.grid(padding=(0, 2))
        keys.add_column(style="bold #f5a97f", no_wrap=True)
        keys.add_column()
        for key, what in KEYS:
            keys.add_row(key, what)
        states = Table.grid(padding=(0, 2))
        states.add_column(no_wrap=True)
        states.add_column()
        for state, meaning in MEANING.items():
            states.add_row(Text(f"{STATE_GLYPH[state]} {state.value}", STATE_STYLE[state]), meaning)
        views = Table.grid(padding=(0, 2))
        views.add_column(style="bold #f5a97f", no_wrap=True)
        views.add_column()
        for key, what in VIEWS:
            views.add_row(key, what)
        with Vertical(id="help"):
            yield Static(Text("Keys (deploy screen)", "bold"))
            yield Static(keys)
            yield Static(Text("\ntako console, from the status of every env", "bold"))
            yield Static(views)
            yield Static(Text("\nPhase states", "bold"))
            yield Static(states)
            yield Static(Text("\nConnect · Upload · Install · Release · Rollout · Finalize", MUTED))
            yield Static(Text("★ leader runs the release command once; followers wait for it.", MUTED))
            yield Static(Text("\nescape to close", MUTED))
