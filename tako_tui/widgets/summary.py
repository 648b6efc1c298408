"""The verdict once the deploy ends: a headline, the error, then one line per server."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.widget import Widget

from tako_core.events import DeployFinished, Outcome, State
from tako_core.units import duration

from .look import ERROR, MUTED, STATE_GLYPH, STATE_STYLE
from .model import DeployModel

_OUTCOME_STATE = {
    Outcome.DEPLOYED: State.DONE,
    Outcome.ROLLED_BACK: State.FAILED,
    Outcome.ABORTED: State.CANCELLED,
}
HINT = "q quit · enter on a server: its output"


class Summary(Widget):
    def __init__(self, model: DeployModel, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._model = model
        self.detailed = True  # one row per server; off when the panels are compact rows that say it

    def sync(self) -> None:
        """Show the verdict, coloured by how it ended."""
        finished = self._model.finished
        self.display = True
        self.set_class(finished is not None and finished.ok, "-ok")
        self.set_class(finished is None or not finished.ok, "-failed")
        self.border_subtitle = HINT
        self.refresh(layout=True)

    def render(self) -> RenderableType:
        model = self._model
        finished = model.finished
        if finished is None:
            head = Text(f"{STATE_GLYPH[State.FAILED]} The deploy crashed", STATE_STYLE[State.FAILED])
            return Group(head, Text(model.crash or "", ERROR))
        parts: list[RenderableType] = [self._head(finished)]
        if finished.error:
            parts.append(Text(finished.error, ERROR))
        if finished.results and self.detailed:
            table = Table.grid(padding=(0, 2))
            table.add_column(no_wrap=True)
            table.add_column(no_wrap=True)
            table.add_column(overflow="ellipsis", no_wrap=True)
            for result in finished.results:
                state = _OUTCOME_STATE.get(result.outcome, State.FAILED)
                table.add_row(
                    Text(result.server, "bold"),
                    Text(f"{STATE_GLYPH[state]} {result.outcome.value}", STATE_STYLE[state]),
                    Text(result.message, MUTED),
                )
            parts.append(table)
        return Group(*parts)

    def _head(self, finished: DeployFinished) -> Text:
        took = duration(finished.seconds)
        started = self._model.started
        if finished.ok and started is not None and started.rollback_to is not None:
            return Text(f"✓ Rolled back to {started.rollback_to} in {took}", STATE_STYLE[State.DONE])
        if finished.ok:
            where = f" to {len(finished.results)} servers" if len(finished.results) > 1 else ""
            artifact = self._model.artifact
            build = f" {artifact.build}" if artifact else ""
            return Text(f"✓ Deployed{build}{where} in {took}", STATE_STYLE[State.DONE])
        if finished.interrupted:
            return Text(f"⊘ Aborted after {took}", STATE_STYLE[State.CANCELLED])
        return Text(f"✗ Deploy failed after {took} (exit {finished.exit_code})", STATE_STYLE[State.FAILED])
