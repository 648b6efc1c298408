"""The top two lines: what is being deployed where, for how long, and how it is going."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from textual.widget import Widget

from tako_core.events import State
from tako_core.units import duration, size

from .look import MUTED, STATE_STYLE, clock, glyph
from .model import DeployModel

# The overall state's look: words the model produces → (glyph, style).
_OVERALL = {
    "deployed": ("✓", STATE_STYLE[State.DONE]),
    "rolled back": ("✓", STATE_STYLE[State.DONE]),
    "failed": ("✗", STATE_STYLE[State.FAILED]),
    "crashed": ("✗", STATE_STYLE[State.FAILED]),
    "partly deployed": ("!", STATE_STYLE[State.FAILED]),
    "aborted": ("⊘", STATE_STYLE[State.CANCELLED]),
    "aborting": ("⊘", STATE_STYLE[State.CANCELLED]),
    "release failed": ("✗", STATE_STYLE[State.FAILED]),
}


class DeployHeader(Widget):
    def __init__(self, model: DeployModel, now: Callable[[], float], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._model = model
        self._now = now

    @property
    def overall(self) -> str:
        return self._model.overall()

    def render(self) -> RenderableType:
        model, now = self._model, self._now()
        started = model.started
        top = Text.assemble(("tako ", "bold #f5a97f"))
        if started is None:
            top.append(model.title, "bold")
        else:
            top.append_text(
                Text.assemble((started.app, "bold"), (" → ", MUTED), (started.env, "bold #89b4fa"))
            )
        if model.artifact is not None:
            top.append_text(Text.assemble(("  build ", MUTED), (model.artifact.build, "bold")))
        word = self.overall
        mark, style = _OVERALL.get(word, (glyph(State.RUNNING, now), STATE_STYLE[State.RUNNING]))
        right = Text.assemble((clock(model.elapsed(now)), "bold"), "  ", (f"{mark} {word}", style))
        grid = Table.grid(expand=True)
        grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        grid.add_column(justify="right", no_wrap=True)
        grid.add_row(top, right)
        grid.add_row(self._second_line(now), self._servers_line())
        return grid

    def _second_line(self, now: float) -> Text:
        model = self._model
        line = Text(no_wrap=True, overflow="ellipsis")
        build = model.build
        if build.state is not State.PENDING:
            line.append(f"{glyph(build.state, now)} Build", STATE_STYLE[build.state])
            took = build.elapsed(now)
            if took is not None:
                line.append(f" {duration(took)}", MUTED)
            artifact = model.artifact
            if artifact is not None:
                line.append(f"  {size(artifact.size)}{' cached' if artifact.cached else ''}", MUTED)
            line.append("   ")
        started = model.started
        if started is not None:
            if started.release:
                line.append("release ", MUTED)
                line.append(started.release, "italic")
            else:
                line.append("no release command", MUTED)
        return line

    def _servers_line(self) -> Text:
        count = len(self._model.servers)
        return Text(f"{count} server{'s' if count != 1 else ''}", MUTED) if count else Text("")
