"""What the deploy screen knows, folded from the core's events. Plain Python: no Textual, easy to test.

The screen applies each batch of events here, then refreshes only the widgets whose part changed.
Durations run from the events' own time (`at`, wall-clock seconds) to the app's clock, which is
`time.time` unless a test freezes it; a scripted run stamps its events from the same frozen clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tako_core.events import (
    SERVER_PHASES,
    ArtifactBuilt,
    DeployFinished,
    DeployStarted,
    Event,
    GateFailed,
    GateOpened,
    Notice,
    Outcome,
    OutputLine,
    Phase,
    PhaseChanged,
    RolloutProgress,
    ServerResult,
    State,
    UploadProgress,
)
from tako_core.units import duration, progress, size

SHORT_DETAIL = 16  # a done phase's detail up to this long shows beside it


@dataclass
class PhaseView:
    phase: Phase
    state: State = State.PENDING
    detail: str = ""
    error: str | None = None
    seconds: float | None = None  # final duration, from the core
    since: float | None = None  # when it started running or waiting, for the live duration

    @property
    def active(self) -> bool:
        return self.state in (State.RUNNING, State.WAITING)

    def elapsed(self, now: float) -> float | None:
        """The duration to show: the core's once finished, else live since it became active."""
        if self.seconds is not None:
            return self.seconds
        if self.active and self.since is not None:
            return max(0.0, now - self.since)
        return None

    def apply(self, event: PhaseChanged) -> None:
        if event.state in (State.RUNNING, State.WAITING) and not self.active:
            self.since = event.at
        self.state = event.state
        # An empty detail on a later state keeps nothing stale: "Waiting for…" must not outlive waiting.
        self.detail = event.detail
        self.error = event.error
        self.seconds = event.seconds


@dataclass
class ServerView:
    name: str
    leader: bool = False
    phases: dict[Phase, PhaseView] = field(default_factory=lambda: {p: PhaseView(p) for p in SERVER_PHASES})
    upload: tuple[int, int] | None = None  # (sent, total)
    instances: tuple[int, int] | None = None  # (ready, total)
    result: ServerResult | None = None

    @property
    def role(self) -> str:
        return "leader" if self.leader else "follower"

    def phase_state(self, phase: Phase) -> State:
        return self.phases[phase].state

    def info(self, phase: Phase) -> str:
        """The short figure beside a phase: bytes uploaded, instances ready, a done phase's short detail."""
        view = self.phases[phase]
        if phase is Phase.UPLOAD:
            if view.state is State.RUNNING and self.upload is not None:
                return progress(*self.upload)
            if view.detail:
                return view.detail  # e.g. "cached"
            return size(self.upload[1]) if self.upload is not None else ""
        if phase is Phase.ROLLOUT and self.instances is not None and view.state is not State.PENDING:
            ready, total = self.instances
            return f"{ready}/{total} instances"
        if view.state is State.DONE and len(view.detail) <= SHORT_DETAIL:
            return view.detail  # e.g. "agent 0.1.0": worth a glance, not a line of its own
        return ""

    def note(self, phase: Phase) -> str:
        """A sentence under a phase that is not done (e.g. "Waiting for release command")."""
        view = self.phases[phase]
        if phase is Phase.UPLOAD or (phase is Phase.ROLLOUT and self.instances is not None):
            return ""  # their detail is a figure, shown by `info`
        return "" if view.state is State.DONE else view.detail

    @property
    def current(self) -> PhaseView | None:
        """The phase to name in one line: the active one, else the failed one, else the first cancelled
        (where the deploy stopped for this server), else the last one that started."""
        views = list(self.phases.values())
        for wanted in (
            lambda v: v.active,
            lambda v: v.state is State.FAILED,
            lambda v: v.state is State.CANCELLED,
        ):
            for view in views:
                if wanted(view):
                    return view
        started = [v for v in views if v.state is not State.PENDING]
        return started[-1] if started else None

    @property
    def failed(self) -> bool:
        return any(v.state is State.FAILED for v in self.phases.values())

    @property
    def complete(self) -> bool:
        return all(v.state in (State.DONE, State.SKIPPED) for v in self.phases.values())


# Overall state words per the phase most servers are in, for the header.
_PHASE_WORD = {
    Phase.BUILD: "building",
    Phase.CONNECT: "connecting",
    Phase.UPLOAD: "uploading",
    Phase.INSTALL: "installing",
    Phase.RELEASE: "releasing",
    Phase.ROLLOUT: "rolling out",
    Phase.FINALIZE: "finalizing",
}


@dataclass
class Changes:
    """What a batch of events touched, so the screen refreshes only that."""

    header: bool = False
    servers: set[str] = field(default_factory=set)
    lines: list[tuple[str | None, str]] = field(default_factory=list)  # (server, text); None = local
    finished: bool = False


class DeployModel:
    def __init__(self, title: str) -> None:
        self.title = title
        self.started: DeployStarted | None = None
        self.artifact: ArtifactBuilt | None = None
        self.build = PhaseView(Phase.BUILD)
        self.servers: dict[str, ServerView] = {}
        self.gate: str = "closed"  # closed | open | skipped | failed
        self.finished: DeployFinished | None = None
        self.aborting = False
        self.crash: str | None = None  # the run raised instead of reporting DeployFinished
        self.began_at: float | None = None  # time of the first event: the build may precede DeployStarted

    def server(self, name: str) -> ServerView:
        view = self.servers.get(name)
        if view is None:
            view = self.servers[name] = ServerView(name)
        return view

    def apply(self, events: list[Event]) -> Changes:
        changes = Changes()
        if self.began_at is None and events:
            self.began_at = events[0].at
        for event in events:
            self._apply(event, changes)
        return changes

    def _apply(self, event: Event, changes: Changes) -> None:
        if isinstance(event, OutputLine):
            changes.lines.append((event.server, event.line))
        elif isinstance(event, PhaseChanged):
            if event.server is None:
                self.build.apply(event)
                changes.header = True
            else:
                self.server(event.server).phases[event.phase].apply(event)
                changes.servers.add(event.server)
                changes.header = True
            if event.state is State.FAILED and event.error:
                where = "the build" if event.server is None else event.server
                first, *more = event.error.splitlines() or [""]
                changes.lines.append((event.server, f"✗ {event.phase} failed on {where}: {first}"))
                changes.lines.extend((event.server, f"✗ {line}") for line in more)
        elif isinstance(event, UploadProgress):
            self.server(event.server).upload = (event.sent, event.total)
            changes.servers.add(event.server)
        elif isinstance(event, RolloutProgress):
            self.server(event.server).instances = (event.ready, event.total)
            changes.servers.add(event.server)
        elif isinstance(event, DeployStarted):
            self._start(event)
            changes.header = True
            changes.servers.update(event.servers)
        elif isinstance(event, ArtifactBuilt):
            self.artifact = event
            changes.header = True
        elif isinstance(event, GateOpened):
            self.gate = "skipped" if event.skipped else "open"
            changes.header = True
            if not event.skipped:
                changes.lines.append((event.leader, "── release command succeeded: rolling out"))
        elif isinstance(event, GateFailed):
            self.gate = "failed"
            changes.header = True
            changes.lines.append((event.leader, f"── {event.reason}: aborting on every server"))
        elif isinstance(event, Notice):
            mark = "⚠" if event.level == "warning" else "·"
            changes.lines.append((event.server, f"{mark} {event.message}"))
        elif isinstance(event, DeployFinished):
            self.finished = event
            for result in event.results:
                self.server(result.server).result = result
                changes.servers.add(result.server)
            changes.header = changes.finished = True

    def _start(self, event: DeployStarted) -> None:
        self.started = event
        # Inventory order decides the grid; servers seen before DeployStarted keep their views.
        known = self.servers
        self.servers = {name: known.get(name) or ServerView(name) for name in event.servers}
        self.servers.update({k: v for k, v in known.items() if k not in self.servers})
        for name, view in self.servers.items():
            view.leader = name == event.leader

    @property
    def running(self) -> bool:
        return self.finished is None and self.crash is None

    def overall(self) -> str:
        """One word or two for the header: what the deploy is doing or how it ended."""
        if self.crash is not None:
            return "crashed"
        if self.finished is not None:
            if self.finished.ok:
                rollback = self.started is not None and self.started.rollback_to is not None
                return "rolled back" if rollback else "deployed"
            if self.finished.interrupted:
                return "aborted"
            deployed = [r for r in self.finished.results if r.outcome is Outcome.DEPLOYED]
            return "partly deployed" if deployed else "failed"
        if self.aborting:
            return "aborting"
        if self.gate == "failed":
            return "release failed"
        if self.build.active or self.started is None:
            return "building" if self.build.active else "starting"
        active = [v.phase for s in self.servers.values() for v in s.phases.values() if v.active]
        if not active:
            return "deploying"
        return _PHASE_WORD[min(active, key=SERVER_PHASES.index)]

    def one_line(self, url: str | None = None) -> str:
        """The verdict in a line, for the terminal once the console has closed: how it ended, the build,
        how long it took, and (when it worked) where the app answers."""
        rollback = self.started.rollback_to if self.started is not None else None
        build = rollback or (self.artifact.build if self.artifact is not None else None)
        line = f"tako: {self.overall()}" + (f" {build}" if build else "")
        if self.finished is not None:
            line += f" in {duration(self.finished.seconds)}"
            if self.finished.ok and url:
                line += f" · {url}"
            elif self.finished.error:
                line += f": {self.finished.error}"
        return line

    def elapsed(self, now: float) -> float:
        if self.finished is not None:
            return self.finished.seconds
        return 0.0 if self.began_at is None else max(0.0, now - self.began_at)
