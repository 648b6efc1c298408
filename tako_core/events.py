"""The facts a deploy reports: a closed union of frozen dataclasses, plus JSON (de)serialisation.

The core pushes events into an `EventSink`; front ends (TUI, plain transcript, JSON lines) render
them. Every output line in an event is already masked. Phase and state names are the product's
words: the TUI, the plain output and the JSON events all use these same strings.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeAlias

from tako_core.errors import EXIT_INTERRUPTED

SCHEMA_VERSION = 1

RUNNING_RELEASE = "Running release command"
WAITING_FOR_RELEASE = "Waiting for release command"


class Phase(StrEnum):
    BUILD = "Build"  # local, before any server phase; events carry server=None
    CONNECT = "Connect"
    UPLOAD = "Upload"
    INSTALL = "Install"
    RELEASE = "Release"
    ROLLOUT = "Rollout"
    FINALIZE = "Finalize"


SERVER_PHASES: tuple[Phase, ...] = (
    Phase.CONNECT,
    Phase.UPLOAD,
    Phase.INSTALL,
    Phase.RELEASE,
    Phase.ROLLOUT,
    Phase.FINALIZE,
)


class State(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"

    @property
    def finished(self) -> bool:
        return self in (State.DONE, State.FAILED, State.CANCELLED, State.SKIPPED)


class Outcome(StrEnum):
    """How a deploy ended for one server."""

    DEPLOYED = "deployed"  # serves the new build
    ROLLED_BACK = "rolled back"  # tried the rollout, failed, old instances keep serving
    ABORTED = "aborted"  # the deploy stopped before the rollout; old build untouched
    FAILED = "failed"  # new instances serve but a later step (finalize) failed; see the message


@dataclass(frozen=True, slots=True, kw_only=True)
class _Event:
    at: float = field(default_factory=time.time, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeployStarted(_Event):
    app: str
    env: str
    servers: tuple[str, ...]
    leader: str
    release: str | None  # the command, or None when the gate is skipped
    rollback_to: str | None = None  # set when this run rolls back to a kept build instead of deploying


@dataclass(frozen=True, slots=True, kw_only=True)
class ArtifactBuilt(_Event):
    """The artifact exists locally (built now, or taken from the cache): its build id is known."""

    build: str
    size: int
    cached: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseChanged(_Event):
    """A phase of one server (or the local build, server=None) entered a state."""

    server: str | None
    phase: Phase
    state: State
    detail: str = ""  # e.g. WAITING_FOR_RELEASE, "cached", "2/3 instances"
    error: str | None = None
    seconds: float | None = None  # how long the phase took, once finished


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadProgress(_Event):
    server: str
    sent: int
    total: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputLine(_Event):
    """One line of a command's output (build, install, release, instance), masked."""

    server: str | None
    phase: Phase
    line: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GateOpened(_Event):
    """The release command succeeded on the leader (or there was none): the rollout may start."""

    leader: str
    skipped: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class GateFailed(_Event):
    """The release command failed, timed out or was stopped: the deploy aborts everywhere."""

    leader: str
    reason: str
    exit_code: int | None = None
    timed_out: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutProgress(_Event):
    server: str
    ready: int
    total: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Notice(_Event):
    """Something worth telling that is not a phase change (agent upgraded, lease renewed late…)."""

    message: str
    server: str | None = None
    level: str = "info"  # "info" | "warning"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerResult:
    server: str
    outcome: Outcome
    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeployFinished(_Event):
    ok: bool
    exit_code: int
    seconds: float
    results: tuple[ServerResult, ...] = ()
    error: str | None = None

    @property
    def interrupted(self) -> bool:
        """Stopped by the user (Ctrl-C, the console's abort, a declined confirmation): exit code 130."""
        return self.exit_code == EXIT_INTERRUPTED


Event: TypeAlias = (
    DeployStarted
    | ArtifactBuilt
    | PhaseChanged
    | UploadProgress
    | OutputLine
    | GateOpened
    | GateFailed
    | RolloutProgress
    | Notice
    | DeployFinished
)

EventSink: TypeAlias = Callable[[Event], None]

EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        DeployStarted,
        ArtifactBuilt,
        PhaseChanged,
        UploadProgress,
        OutputLine,
        GateOpened,
        GateFailed,
        RolloutProgress,
        Notice,
        DeployFinished,
    )
}


class Prompter(Protocol):
    """How the core asks a person a question; each front end brings its own.

    The core decides whether to ask (e.g. before changing production without --yes); a front end that
    has no way to ask (no terminal) raises a `BadInput` saying how to answer up front.
    """

    async def confirm(self, question: str) -> bool: ...


# A deploy-shaped job (a deploy, a rollback) as a front end runs it: with its own sink and prompter.
Job: TypeAlias = Callable[[EventSink, Prompter], Awaitable[DeployFinished]]


def to_json(event: Event) -> dict[str, Any]:
    """A JSON-ready dict: {"v": schema, "event": type name, ...fields}."""
    data: dict[str, Any] = {"v": SCHEMA_VERSION, "event": type(event).__name__}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        if isinstance(value, tuple):
            value = [_plain(v) for v in value]
        data[f.name] = value
    return data


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def from_json(data: dict[str, Any]) -> Event:
    """The inverse of `to_json`; raises ValueError on an unknown type or schema."""
    if data.get("v") != SCHEMA_VERSION:
        raise ValueError(f"unsupported event schema {data.get('v')!r}")
    cls = EVENT_TYPES.get(str(data.get("event")))
    if cls is None:
        raise ValueError(f"unknown event type {data.get('event')!r}")
    kwargs: dict[str, Any] = {k: v for k, v in data.items() if k not in ("v", "event")}
    if "phase" in kwargs:
        kwargs["phase"] = Phase(kwargs["phase"])
    if "state" in kwargs:
        kwargs["state"] = State(kwargs["state"])
    if cls is DeployStarted:
        kwargs["servers"] = tuple(kwargs["servers"])
    if cls is DeployFinished:
        kwargs["results"] = tuple(
            ServerResult(server=r["server"], outcome=Outcome(r["outcome"]), message=r["message"])
            for r in kwargs.get("results", ())
        )
    return cls(**kwargs)
