"""Release runs: one `sh -c` per run, detached from any client, its output in a log with offsets.

The log holds masked lines; a watcher reads it from a byte offset, so a client that lost its
connection re-attaches where it stopped and sees every line once, in order. The result is kept next
to the log (`<run>.json`), so it outlives the watcher and the process.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import io
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tako_core.agent import procs
from tako_core.agent.accounts import Account
from tako_core.agent.compat import WaitTimeout
from tako_core.agent.contract import (
    BAD_REQUEST,
    NOT_FOUND,
    ProtocolError,
    ReleaseRunInfo,
    RunResult,
    clip,
    new_run_id,
)
from tako_core.agent.layout import check_name, write_private
from tako_core.mask import Masker

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL of a run's process group
_OUTPUT_SETTLE = 1.0  # after the command exits, how long its output may still trickle in
_WATCH_POLL = 1.0
_WATCH_BATCH = 256  # lines sent between waits for the connection to drain


class Run:
    def __init__(self, run_id: str, directory: Path) -> None:
        self.run_id = run_id
        self.log = directory / f"{run_id}.log"
        self.result_file = directory / f"{run_id}.json"
        self.result: RunResult | None = None
        self.pgid: int | None = None
        self._stop = asyncio.Event()
        self._wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    @property
    def wakeup(self) -> asyncio.Event:
        return self._wakeup

    def stop(self) -> None:
        self._stop.set()

    async def execute(
        self,
        command: str,
        cwd: Path,
        env: dict[str, str],
        masker: Masker,
        limit: float,
        account: Account | None,
    ) -> None:
        fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab", buffering=0) as log:
            proc = await procs.spawn(command, cwd, env, account=account)
            self.pgid = proc.pid
            assert proc.stdout is not None
            pump = asyncio.ensure_future(self._pump(proc.stdout, log, masker))
            timed_out = stopped = False
            waiter = asyncio.ensure_future(proc.wait())
            stopper = asyncio.ensure_future(self._stop.wait())
            try:
                done, _ = await asyncio.wait({waiter, stopper}, timeout=limit, return_when="FIRST_COMPLETED")
                timed_out, stopped = not done, stopper in done and waiter not in done
            finally:
                stopper.cancel()
                # The command's leftovers (background jobs, a SIGTERM-ignoring child) go with it.
                await procs.kill_group(proc.pid, 0 if waiter.done() else KILL_GRACE)
                await waiter
                # Past the settle time something outside the group holds the pipe; the log ends here.
                with contextlib.suppress(WaitTimeout):
                    await asyncio.wait_for(pump, _OUTPUT_SETTLE)
            self.result = RunResult(exit_code=proc.returncode, timed_out=timed_out, stopped=stopped)
            write_private(self.result_file, json.dumps(self.result.to_wire()).encode())
            self.notify()

    async def _pump(self, stdout: asyncio.StreamReader, log: io.FileIO, masker: Masker) -> None:
        async for line in procs.lines(stdout, masker):
            log.write((clip(line) + "\n").encode())
            self.notify()


class Runs:
    """The runs of every app/env, by id."""

    def __init__(self) -> None:
        self._runs: dict[str, Run] = {}

    def start(
        self,
        directory: Path,
        *,
        build: str,
        command: str,
        cwd: Path,
        env: dict[str, str],
        masker: Masker,
        limit: float,
        run_id: str | None = None,
        account: Account | None = None,
    ) -> Run:
        directory.mkdir(parents=True, exist_ok=True)
        run_id = check_name("run", run_id or new_run_id(build))
        if _build_of(run_id) != build:  # `tako logs --release BUILD` finds a run by the build in its id
            raise ProtocolError(BAD_REQUEST, f"release run {run_id} does not name build {build}")
        run = Run(run_id, directory)
        try:
            run.log.touch(mode=0o600, exist_ok=False)
        except FileExistsError:
            raise ProtocolError(BAD_REQUEST, f"release run {run.run_id} exists already") from None
        run.task = asyncio.ensure_future(run.execute(command, cwd, env, masker, limit, account))
        self._runs[str(run.log)] = run
        return run

    def find(self, directory: Path, run_id: str) -> Run:
        check_name("run", run_id)
        run = self._runs.get(str(directory / f"{run_id}.log"))
        if run is not None:
            return run
        # A run from before an agent restart: its log and result are still on disk.
        run = Run(run_id, directory)
        if not run.log.exists():
            raise ProtocolError(NOT_FOUND, f"no release run {run_id}")
        if run.result_file.exists():
            run.result = RunResult.from_wire(json.loads(run.result_file.read_text()))
        else:
            run.result = RunResult(exit_code=None, timed_out=False, stopped=True)  # lost with its agent
        return run

    def listing(self, directory: Path) -> list[ReleaseRunInfo]:
        """The kept runs, newest first."""
        logs = sorted(directory.glob("run-*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
        found = []
        for log in logs:
            run = self.find(directory, log.stem)
            result = run.result
            found.append(
                ReleaseRunInfo(
                    run_id=run.run_id,
                    build=_build_of(run.run_id),
                    started_at=_started_at(run.run_id),
                    exit_code=result.exit_code if result else None,
                    running=result is None,
                )
            )
        return found

    def prune(self, directory: Path, keep: int) -> None:
        """Remove the logs and results of all but the newest `keep` runs (never a running one)."""
        logs = sorted(directory.glob("run-*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
        for log in logs[keep:]:
            run = self._runs.get(str(log))
            if run is None or run.result is not None:
                self._runs.pop(str(log), None)
                log.unlink(missing_ok=True)
                log.with_suffix(".json").unlink(missing_ok=True)

    async def shutdown(self) -> None:
        for run in self._runs.values():
            if run.task and not run.task.done():
                run.stop()
        tasks = [r.task for r in self._runs.values() if r.task]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _started_at(run_id: str) -> float:
    try:
        return float(calendar.timegm(time.strptime(run_id[4:19], "%Y%m%dT%H%M%S")))
    except ValueError:
        return 0.0


def _build_of(run_id: str) -> str | None:
    """The build in a run id `run-YYYYmmddTHHMMSS-<build>-<6 hex>`; None in older ids without one."""
    middle = run_id[len("run-YYYYmmddTHHMMSS-") : -len("-abcdef")]
    return middle or None


async def watch(
    run: Run, offset: int, on_line: Callable[[int, str], None], drain: Callable[[], Awaitable[None]]
) -> RunResult:
    """Every complete log line from byte `offset` on, then the result once the run has ended.
    `drain` is awaited between batches, so a slow reader slows the watch instead of filling memory."""
    with open(run.log, "rb") as log:  # noqa: ASYNC230 (a local file: reads never block long)
        log.seek(max(offset, 0))
        position = log.tell()
        while True:
            wakeup = run.wakeup  # taken before reading, so a write after the read still wakes us
            finished = run.result is not None
            sent = 0
            for raw in iter(log.readline, b""):
                if not raw.endswith(b"\n"):
                    log.seek(position)  # a line still being written; read it whole later
                    break
                position += len(raw)
                on_line(position, raw[:-1].decode(errors="replace"))
                sent += 1
                if sent == _WATCH_BATCH:
                    break
            if sent == _WATCH_BATCH:
                await drain()
                continue
            if finished and run.result is not None:
                return run.result
            with contextlib.suppress(WaitTimeout):
                await asyncio.wait_for(wakeup.wait(), _WATCH_POLL)
