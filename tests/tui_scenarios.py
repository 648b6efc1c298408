"""Scripted deploys for the console: realistic event sequences with awaits between, on a frozen clock.

Used by the TUI tests, `scripts/screenshots.py` and `bench/console.py`. A `ScriptedDeploy` is the
`run` callable the console expects; it can stop at a stage (`hold_at`) until the test lets it go, and
behaves like the core on cancellation: it emits the abort's events and reports exit code 130.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from textual.pilot import Pilot

from tako_core.events import (
    RUNNING_RELEASE,
    SERVER_PHASES,
    WAITING_FOR_RELEASE,
    ArtifactBuilt,
    DeployFinished,
    DeployStarted,
    Event,
    EventSink,
    GateFailed,
    GateOpened,
    Notice,
    Outcome,
    OutputLine,
    Phase,
    PhaseChanged,
    Prompter,
    RolloutProgress,
    ServerResult,
    State,
    UploadProgress,
)
from tako_tui.app import DeployConsole

T0 = 1_790_000_000.0  # a fixed wall-clock instant for every scripted run
SERVERS = ("web-1", "web-2", "web-3")
BUILD = "3f2a9c1"
RELEASE = "python manage.py migrate --noinput"

MIGRATIONS = [
    "Operations to perform:",
    "  Apply all migrations: admin, auth, contenttypes, sessions, shop",
    "Running migrations:",
    "  Applying contenttypes.0001_initial... OK",
    "  Applying auth.0001_initial... OK",
    "  Applying admin.0001_initial... OK",
    "  Applying shop.0011_product_sku... OK",
    "  Applying shop.0012_order_index... OK",
    "  Applying shop.0013_backfill_prices... OK",
    "  Applying shop.0014_order_currency...",
]
FAILURE = [
    "Traceback (most recent call last):",
    '  File "/opt/tako/apps/shop/production/releases/3f2a9c1/manage.py", line 22, in <module>',
    "    main()",
    '  File "/usr/lib/python3/dist-packages/django/db/backends/utils.py", line 89, in _execute',
    "    return self.cursor.execute(sql, params)",
    'django.db.utils.IntegrityError: column "currency" of relation "shop_order" contains null values',
]
FAILURE_ERROR = 'exited with status 1: column "currency" of relation "shop_order" contains null values'


class FakeClock:
    """Frozen wall-clock time, advanced by the script: durations on screen are the same every run."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class ScriptedDeploy:
    clock: FakeClock = field(default_factory=FakeClock)
    servers: tuple[str, ...] = SERVERS
    fail_release: bool = False
    hold_at: str | None = None  # "release": leader running, followers waiting; "end": before DeployFinished
    reraise: bool = False  # after an abort: re-raise CancelledError instead of returning the result
    release_lines: list[str] = field(default_factory=lambda: list(MIGRATIONS))
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    go: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False
    began: float = 0.0
    _sink: EventSink | None = None
    _states: dict[tuple[str, Phase], State] = field(default_factory=dict)

    @property
    def leader(self) -> str:
        return self.servers[0]

    async def __call__(self, sink: EventSink, prompter: Prompter) -> DeployFinished:
        self._sink = sink
        try:
            return await self._deploy()
        except asyncio.CancelledError:
            self.cancelled = True
            finished = self._abort()
            if self.reraise:
                raise
            return finished

    # -- helpers -----------------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        assert self._sink is not None
        if isinstance(event, PhaseChanged) and event.server is not None:
            self._states[(event.server, event.phase)] = event.state
        self._sink(event)

    def phase(self, server: str | None, phase: Phase, state: State, **kw: object) -> None:
        self.emit(PhaseChanged(server=server, phase=phase, state=state, at=self.clock(), **kw))  # type: ignore[arg-type]

    def line(self, server: str | None, phase: Phase, text: str) -> None:
        self.emit(OutputLine(server=server, phase=phase, line=text, at=self.clock()))

    async def step(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await asyncio.sleep(0)  # let the console see each step

    async def hold(self, stage: str) -> None:
        if self.hold_at == stage:
            self.reached.set()
            await self.go.wait()

    # -- the deploy --------------------------------------------------------------------------------

    async def _deploy(self) -> DeployFinished:
        clock, servers, leader = self.clock, self.servers, self.leader
        begin = self.began = clock()
        self.emit(
            DeployStarted(
                app="shop", env="production", servers=servers, leader=leader, release=RELEASE, at=begin
            )
        )
        self.phase(None, Phase.BUILD, State.RUNNING)
        for text in ("$ npm ci && npm run build", "added 312 packages in 1.8s", "built assets in 0.6s"):
            await self.step(0.6)
            self.line(None, Phase.BUILD, text)
        self.emit(ArtifactBuilt(build=BUILD, size=5_200_000, cached=False, at=clock()))
        self.phase(None, Phase.BUILD, State.DONE, seconds=2.4)
        for name in servers:
            self.phase(name, Phase.CONNECT, State.RUNNING)
        await self.step(0.3)
        for name in servers:
            self.phase(name, Phase.CONNECT, State.DONE, seconds=0.3)
            self.phase(name, Phase.UPLOAD, State.RUNNING)
        total = 5_200_000
        cached = servers[-1] if len(servers) > 2 else None
        for sent in (1_300_000, 2_900_000, 4_400_000, total):
            await self.step(0.3)
            for name in servers:
                if name != cached:
                    self.emit(UploadProgress(server=name, sent=sent, total=total, at=clock()))
        for name in servers:
            detail = "cached" if name == cached else ""
            self.phase(name, Phase.UPLOAD, State.DONE, seconds=0.2 if name == cached else 1.2, detail=detail)
            self.phase(name, Phase.INSTALL, State.RUNNING)
        for text in (
            "Collecting django==5.1.3",
            "Installing collected packages: sqlparse, asgiref, django",
            "Successfully installed django-5.1.3",
        ):
            await self.step(2.0)
            for name in servers:
                self.line(name, Phase.INSTALL, text)
        for name in servers:
            self.phase(name, Phase.INSTALL, State.DONE, seconds=6.0)
        self.phase(leader, Phase.RELEASE, State.RUNNING, detail=RUNNING_RELEASE)
        for name in servers[1:]:
            self.phase(name, Phase.RELEASE, State.WAITING, detail=WAITING_FOR_RELEASE)
        for text in self.release_lines:
            await self.step(1.1)
            self.line(leader, Phase.RELEASE, text)
        await self.hold("release")
        if self.fail_release:
            return await self._fail_release(begin)
        await self.step(1.4)
        self.line(leader, Phase.RELEASE, "  Applying shop.0014_order_currency... OK")
        self.phase(leader, Phase.RELEASE, State.DONE, seconds=12.4)
        for name in servers[1:]:
            self.phase(name, Phase.RELEASE, State.DONE, seconds=12.4)
        self.emit(GateOpened(leader=leader, at=clock()))
        for name in servers:
            self.phase(name, Phase.ROLLOUT, State.RUNNING)
            self.emit(RolloutProgress(server=name, ready=0, total=2, at=clock()))
        for ready in (1, 2):
            await self.step(2.5)
            for name in servers:
                self.emit(RolloutProgress(server=name, ready=ready, total=2, at=clock()))
        for name in servers:
            self.phase(name, Phase.ROLLOUT, State.DONE, seconds=5.0)
            self.phase(name, Phase.FINALIZE, State.RUNNING)
        await self.step(0.2)
        for name in servers:
            self.phase(name, Phase.FINALIZE, State.DONE, seconds=0.2)
        self.emit(Notice(message="pruned 1 old release on every server", at=clock()))
        await self.hold("end")
        finished = DeployFinished(
            ok=True,
            exit_code=0,
            seconds=clock() - begin,
            results=tuple(
                ServerResult(server=n, outcome=Outcome.DEPLOYED, message=f"serving {BUILD}") for n in servers
            ),
            at=clock(),
        )
        self.emit(finished)
        return finished

    async def _fail_release(self, begin: float) -> DeployFinished:
        clock, leader = self.clock, self.leader
        for text in FAILURE:
            await self.step(0.1)
            self.line(leader, Phase.RELEASE, text)
        self.phase(leader, Phase.RELEASE, State.FAILED, seconds=11.6, error=FAILURE_ERROR)
        self.emit(
            GateFailed(leader=leader, reason="release command exited with status 1", exit_code=1, at=clock())
        )
        self._cancel_the_rest(f"release command failed on {leader}")
        await self.step(0.4)
        self.emit(
            Notice(message="removed the new release on every server; the old one keeps serving", at=clock())
        )
        await self.hold("end")
        finished = DeployFinished(
            ok=False,
            exit_code=1,
            seconds=clock() - begin,
            results=tuple(
                self._aborted(n, "release command failed" if n == leader else "never switched")
                for n in self.servers
            ),
            error=f"release command failed on {leader}: {FAILURE_ERROR}",
            at=clock(),
        )
        self.emit(finished)
        return finished

    def _cancel_the_rest(self, why: str) -> None:
        for name, phase in self._unfinished():
            self.phase(name, phase, State.CANCELLED, detail=why if phase is Phase.RELEASE else "")

    def _unfinished(self) -> Iterator[tuple[str, Phase]]:
        for name in self.servers:
            for phase in SERVER_PHASES:
                if not self._states.get((name, phase), State.PENDING).finished:
                    yield name, phase

    @staticmethod
    def _aborted(server: str, message: str) -> ServerResult:
        return ServerResult(server=server, outcome=Outcome.ABORTED, message=message)

    def _abort(self) -> DeployFinished:
        """What the core does when its task is cancelled: stop, clean up, report exit code 130."""
        self._cancel_the_rest("aborted")
        self.emit(
            Notice(
                message="aborted: stopped the release command, removed the new release",
                level="warning",
                at=self.clock(),
            )
        )
        finished = DeployFinished(
            ok=False,
            exit_code=130,
            seconds=self.clock() - self.began,
            results=tuple(self._aborted(n, "aborted by the user") for n in self.servers),
            error="aborted by the user",
            at=self.clock(),
        )
        self.emit(finished)
        return finished


async def settle(app: DeployConsole, pilot: Pilot[Any]) -> None:
    """Deliver what the bridge holds and let the screen process it (no waiting on the flush timer)."""
    app.bridge.flush()
    await pilot.pause()
    await pilot.pause()


async def until(pilot: Pilot[Any], condition: Callable[[], bool], within: float = 5.0) -> None:
    """Pause the app until `condition` holds, failing after `within` seconds."""
    async with asyncio.timeout(within):
        while not condition():
            await pilot.pause(0.01)


def console(scenario: ScriptedDeploy) -> DeployConsole:
    return DeployConsole(scenario, title="shop → production", clock=scenario.clock)


@dataclass(frozen=True)
class StreamResult:
    lines: int  # lines that reached the log pane
    seconds: float  # from the first line emitted to the last one in the pane
    max_gap: float  # longest gap between ticks of a 16 ms timer while streaming: the worst frame
    max_gap_cpu: float  # the same gap in this process's CPU time: the work itself, whatever the load
    ticks: int


async def stream_lines(
    total: int = 100_000, chunk: int = 1000, size: tuple[int, int] = (120, 40)
) -> StreamResult:
    """A release command printing `total` lines, `chunk` lines per read, as fast as the loop allows."""
    go = asyncio.Event()
    first: list[float] = []

    async def release(sink: EventSink, prompter: Prompter) -> DeployFinished:
        sink(DeployStarted(app="shop", env="production", servers=SERVERS, leader=SERVERS[0], release=RELEASE))
        sink(
            PhaseChanged(server=SERVERS[0], phase=Phase.RELEASE, state=State.RUNNING, detail=RUNNING_RELEASE)
        )
        await go.wait()
        first.append(time.perf_counter())
        for start in range(0, total, chunk):
            for i in range(start, min(start + chunk, total)):
                sink(
                    OutputLine(
                        server=SERVERS[0], phase=Phase.RELEASE, line=f"  Applying shop.{i:06d}_step... OK"
                    )
                )
            await asyncio.sleep(0)  # the next read from the SSH channel
        await asyncio.Event().wait()  # the release keeps running; the test ends the app
        raise AssertionError("not reached")

    app = DeployConsole(release, title="stream", clock=FakeClock())
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        ticks: list[tuple[float, float]] = []
        app.set_interval(0.016, lambda: ticks.append((time.perf_counter(), time.process_time())))
        await pilot.pause(0.1)
        go.set()
        output = app.deploy_screen.output
        await until(pilot, lambda: output.line_count >= total, within=60)
        done = time.perf_counter()
        await pilot.pause(0.05)
        streaming = [t for t in ticks if t[0] >= first[0]]
        pairs = list(itertools.pairwise(streaming))
        return StreamResult(
            lines=output.line_count,
            seconds=done - first[0],
            max_gap=max((b[0] - a[0] for a, b in pairs), default=0.0),
            max_gap_cpu=max((b[1] - a[1] for a, b in pairs), default=0.0),
            ticks=len(streaming),
        )
