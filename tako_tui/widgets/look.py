"""How states look on screen: one place, so every widget says them the same way.

Sizes and durations come from `tako_core.units`, which the plain transcript uses too.
"""

from __future__ import annotations

from tako_core.events import State

# A glyph and a Rich style per state. Running spins (see `running_glyph`); the rest are still.
STATE_GLYPH: dict[State, str] = {
    State.PENDING: "○",
    State.RUNNING: "●",
    State.WAITING: "◷",
    State.DONE: "✓",
    State.FAILED: "✗",
    State.CANCELLED: "⊘",
    State.SKIPPED: "↷",
}

STATE_STYLE: dict[State, str] = {
    State.PENDING: "#6c7086",
    State.RUNNING: "bold #f9e2af",
    State.WAITING: "bold #89dceb",
    State.DONE: "bold #a6e3a1",
    State.FAILED: "bold #f38ba8",
    State.CANCELLED: "#fab387",
    State.SKIPPED: "#6c7086",
}

# The phase name's own style: finished-and-boring phases recede, live ones stand out.
NAME_STYLE: dict[State, str] = {
    State.PENDING: "#6c7086",
    State.RUNNING: "bold",
    State.WAITING: "bold",
    State.DONE: "",
    State.FAILED: "bold #f38ba8",
    State.CANCELLED: "#fab387",
    State.SKIPPED: "#6c7086",
}

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

# Colours that tell servers apart in the merged log; assigned in inventory order.
SERVER_COLOURS = ("#89b4fa", "#cba6f7", "#94e2d5", "#f5c2e7", "#b4befe", "#74c7ec", "#f2cdcd", "#eba0ac")
LOCAL_COLOUR = "#9399b2"
MUTED = "#6c7086"
ERROR = "#f38ba8"


def glyph(state: State, now: float) -> str:
    """The state's glyph; a running phase shows a spinner frame derived from the clock (10 fps)."""
    if state is State.RUNNING:
        return SPINNER[int(now * 10) % len(SPINNER)]
    return STATE_GLYPH[state]


def clock(seconds: float) -> str:
    """Elapsed wall time for the header: 00:42, 12:05, 1:02:03."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
