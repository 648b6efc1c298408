"""The plain transcript for CI logs: one line per phase change, output prefixed by its server.

A formatter, not a printer: `PlainTranscript.lines(event)` returns the lines an event adds, and the
front end writes them wherever it likes (the CLI: stderr).
"""

from __future__ import annotations

from tako_core.events import (
    ArtifactBuilt,
    DeployFinished,
    DeployStarted,
    Event,
    GateFailed,
    GateOpened,
    Notice,
    OutputLine,
    PhaseChanged,
    RolloutProgress,
    State,
    UploadProgress,
)
from tako_core.units import duration

LOCAL = "local"


class PlainTranscript:
    def __init__(self) -> None:
        self._width = len(LOCAL)
        self._what = "deploy"  # or "rollback to BUILD", once DeployStarted says so

    def _who(self, server: str | None) -> str:
        return (server or LOCAL).ljust(self._width)

    def lines(self, event: Event) -> list[str]:
        match event:
            case DeployStarted():
                self._width = max(len(LOCAL), *(len(s) for s in event.servers))
                release = event.release if event.release is not None else "none"
                if event.rollback_to is not None:
                    self._what = f"rollback to {event.rollback_to}"
                    n = len(event.servers)
                    return [f"roll {event.app} on {event.env} back to {event.rollback_to}: {n} server(s)"]
                return [
                    f"deploy {event.app} to {event.env}: {len(event.servers)} server(s), "
                    f"leader {event.leader}, release command: {release}"
                ]
            case PhaseChanged(state=State.CANCELLED, seconds=None):
                return []  # a phase that never started: the summary says the deploy was aborted
            case PhaseChanged():
                return [self._phase(event)]
            case OutputLine():
                return [f"{self._who(event.server)} | {event.line}"]
            case ArtifactBuilt():
                return []  # the Build phase's done line says it
            case GateOpened():
                if event.skipped:
                    return ["gate open: no release command"]
                return [f"gate open: the release command succeeded on {event.leader}"]
            case GateFailed():
                return [
                    f"gate closed: the release command on {event.leader} {event.reason}; aborting everywhere"
                ]
            case RolloutProgress():
                return [f"{self._who(event.server)}   Rollout    {event.ready}/{event.total} instances ready"]
            case UploadProgress():
                return []  # the Upload phase's done line carries the size
            case Notice():
                prefix = "warning: " if event.level == "warning" else ""
                return [f"{self._who(event.server)}   {prefix}{event.message}"]
            case DeployFinished():
                return self._summary(event)

    def _phase(self, event: PhaseChanged) -> str:
        parts = [f"{self._who(event.server)}   {event.phase.value:<10} {event.state.value:<9}"]
        if event.seconds is not None and event.state is not State.SKIPPED:
            parts.append(f"{duration(event.seconds):>6}")
        if event.detail:
            parts.append(event.detail)
        if event.error:
            parts.append(f"error: {event.error}")
        return " ".join(parts).rstrip()

    def _summary(self, event: DeployFinished) -> list[str]:
        lines = ["result:"]
        width = max((len(r.outcome.value) for r in event.results), default=0)
        for r in event.results:
            lines.append(f"  {self._who(r.server)}  {r.outcome.value:<{width}}  {r.message}".rstrip())
        verdict = "succeeded" if event.ok else ("interrupted" if event.interrupted else "failed")
        tail = f": {event.error}" if event.error else ""
        lines.append(f"{self._what} {verdict} after {duration(event.seconds)}{tail} (exit {event.exit_code})")
        return lines
