"""The log pane: command output from every server (or one), streamed in batches, following the tail.

Lines arrive already masked by the core. The pane keeps a bounded buffer of the merged stream and one
per server, so switching the filter re-shows history without asking anyone.
"""

from __future__ import annotations

from collections import deque

from rich.highlighter import Highlighter
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Log

from .look import ERROR, LOCAL_COLOUR, MUTED, SERVER_COLOURS

LOCAL = "local"  # label of lines with no server: the build, the deploy's own notices
SEPARATOR = " │ "
ALL_LINES = 200_000
SERVER_LINES = 50_000
SLICE = 5_000  # lines written per frame at most: ~10 ms of work on a slow core


class _LineHighlighter(Highlighter):
    """Colours the server prefix and marks tako's own lines (failures, gate, warnings).

    Runs only for the lines on screen (Log caches rendered lines), so it costs nothing per line written.
    """

    def __init__(self) -> None:
        self.colours: dict[str, str] = {}
        self.prefix = 0  # width of "name │ " when the merged stream is shown, else 0

    def highlight(self, text: Text) -> None:
        plain = text.plain
        if self.prefix:
            name = plain[: self.prefix - len(SEPARATOR)].rstrip()
            text.stylize(f"bold {self.colours.get(name, LOCAL_COLOUR)}", 0, len(name))
            text.stylize(MUTED, self.prefix - len(SEPARATOR), self.prefix)
        body = plain[self.prefix :]
        if body.startswith("✗"):
            text.stylize(f"bold {ERROR}", self.prefix)
        elif body.startswith("──"):
            text.stylize("bold", self.prefix)
        elif body.startswith("⚠"):
            text.stylize("#f9e2af", self.prefix)
        elif body.startswith("· "):
            text.stylize(MUTED, self.prefix)


class OutputLog(Log):
    """A Log that follows the tail until the user scrolls up, and again once they scroll back down.

    Log's own auto-scroll asks "am I at the end?" on each write, which a layout change (a horizontal
    scrollbar appearing, the pane shrinking) answers "no" for good; this tracks the user's intent instead.
    """

    following = True

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if new_value >= self.max_scroll_y:
            self.following = True
        elif new_value < old_value:
            self.following = False  # scrolled up: stay put while lines arrive

    def follow(self) -> None:
        self.following = True
        self.scroll_end(animate=False, x_axis=False)

    def on_resize(self) -> None:
        if self.following:
            self.scroll_end(animate=False, x_axis=False)

    def watch_show_horizontal_scrollbar(self, shown: bool) -> None:
        # A long line brings a horizontal scrollbar that covers the last row: keep the tail in view.
        if shown and self.following:
            self.scroll_end(animate=False, x_axis=False)

    def add_lines(self, lines: list[str]) -> None:
        self.write_lines(lines, scroll_end=False)
        if self.following:
            self.scroll_end(animate=False, x_axis=False)


class OutputPane(Vertical):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._all: deque[str] = deque(maxlen=ALL_LINES)
        self._by_server: dict[str, deque[str]] = {}
        self._pending: deque[tuple[str | None, str]] = deque()
        self._draining = False
        self._label_width = len(LOCAL)
        self._highlighter = _LineHighlighter()
        self.server: str | None = None  # the filter: None = every server

    def compose(self) -> ComposeResult:
        log = OutputLog(max_lines=ALL_LINES, highlight=True, id="log")
        log.highlighter = self._highlighter
        yield log

    def on_mount(self) -> None:
        self._retitle()

    @property
    def log_view(self) -> OutputLog:
        return self.query_one("#log", OutputLog)

    @property
    def line_count(self) -> int:
        """Lines currently in the pane (for the shown filter)."""
        return self.log_view.line_count

    def lines_of(self, server: str | None) -> list[str]:
        """A server's buffered lines (None: the local ones), without prefix."""
        return list(self._by_server.get(server or LOCAL, ()))

    def set_servers(self, servers: list[str]) -> None:
        """Fix the prefix width and the colours once the deploy names its servers."""
        self._label_width = max([len(LOCAL), *(len(s) for s in servers)])
        for index, name in enumerate(servers):
            self._highlighter.colours[name] = SERVER_COLOURS[index % len(SERVER_COLOURS)]
        if self.server is None:
            self._highlighter.prefix = self._label_width + len(SEPARATOR)

    def add(self, lines: list[tuple[str | None, str]]) -> None:
        """Queue a batch; it is written in slices of at most SLICE lines per frame."""
        self._pending.extend(lines)
        if not self._draining:
            self._drain()

    def _drain(self) -> None:
        """Write one slice now and the rest after the next refresh, so a flood never stalls a frame."""
        self._write(SLICE)
        self._draining = bool(self._pending)
        if self._draining:
            self.call_after_refresh(self._drain)

    def _write(self, limit: int) -> None:
        """Buffer up to `limit` queued lines and write the ones the filter shows in one call."""
        pending, shown = self._pending, []
        width, shown_server = self._label_width, self.server
        for _ in range(min(limit, len(pending))):
            server, text = pending.popleft()
            name = server or LOCAL
            buffer = self._by_server.get(name)
            if buffer is None:
                buffer = self._by_server[name] = deque(maxlen=SERVER_LINES)
            # A line with embedded newlines (e.g. an error) becomes several log lines.
            for part in text.splitlines() or [""]:
                buffer.append(part)
                merged = f"{name:<{width}}{SEPARATOR}{part}"
                self._all.append(merged)
                if shown_server is None:
                    shown.append(merged)
                elif shown_server == name:
                    shown.append(part)
        if shown:
            self.log_view.add_lines(shown)

    def show(self, server: str | None) -> None:
        """Switch the filter and re-show its buffered history, scrolled to the tail."""
        if server == self.server:
            return
        self._write(len(self._pending))  # buffers first, so the history shown is complete
        self.server = server
        self._highlighter.prefix = 0 if server is not None else self._label_width + len(SEPARATOR)
        log = self.log_view
        log.clear()
        log.add_lines(list(self._all if server is None else self._by_server.get(server, ())))
        log.follow()
        self._retitle()

    def _retitle(self) -> None:
        if self.server is None:
            self.border_title = "Output · all servers"
        else:
            self.border_title = Text.assemble(
                "Output · ", (self.server, "bold"), ("   l: all servers", MUTED)
            )

    def update_follow(self) -> None:
        """Say whether new lines scroll into view (the user scrolled up: they don't)."""
        self.border_subtitle = None if self.log_view.following else "paused · End to follow"
