"""The phase board: every server's phases, their states and durations.

It is the one writer of `PhaseChanged` events, and it enforces that a run never goes backwards: once
a phase has finished (done, failed, cancelled, skipped) it keeps that state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from tako_core.events import SERVER_PHASES, EventSink, Phase, PhaseChanged, State

Clock = Callable[[], float]


class PhaseBoard:
    def __init__(self, sink: EventSink, servers: Sequence[str], clock: Clock = time.monotonic) -> None:
        self._sink = sink
        self._clock = clock
        self._servers = tuple(servers)
        self._states: dict[tuple[str | None, Phase], State] = {}
        self._started: dict[tuple[str | None, Phase], float] = {}

    def state(self, server: str | None, phase: Phase) -> State:
        return self._states.get((server, phase), State.PENDING)

    def set(
        self,
        server: str | None,
        phase: Phase,
        state: State,
        *,
        detail: str = "",
        error: str | None = None,
    ) -> None:
        key = (server, phase)
        if self.state(server, phase).finished:
            return
        now = self._clock()
        if not state.finished:
            self._started.setdefault(key, now)
        began = self._started.get(key)
        seconds = now - began if state.finished and began is not None else None
        self._states[key] = state
        self._sink(
            PhaseChanged(server=server, phase=phase, state=state, detail=detail, error=error, seconds=seconds)
        )

    def finish_open(self, state: State, *, detail: str = "") -> None:
        """Close every phase not yet finished (on abort: cancelled; after the rollout: skipped)."""
        for server in self._servers:
            for phase in SERVER_PHASES:
                if not self.state(server, phase).finished:
                    self.set(server, phase, state, detail=detail)
