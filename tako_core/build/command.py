"""The `build` command of tako.toml, run locally before the source set is collected.

It runs as `sh -c "<command>"` in the project directory itself, like the build tools people
already use (npm, make), so whatever it writes there (`dist/`, compiled assets) is part of the
artifact unless `.gitignore`d. The environment is the caller's plus `[vars]`, `ENV` and
`TAKO_BUILD`; no secrets, and no `TAKO_SECRETS_KEY_*` (the caller drops them: any npm or pip hook
could read them). stdout and stderr are merged so the lines arrive in the order printed.
Cancelling the awaiting task (an aborted deploy) kills the command's whole process group.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

from tako_core.build.errors import BuildFailed
from tako_core.mask import LineSplitter, Masker

LAST_LINES = 20
MAX_LINE = 64 * 1024  # a longer line (a minified bundle on stdout) is passed on in pieces
KILL_GRACE = 5.0


async def run_build_command(
    command: str,
    cwd: Path,
    env: Mapping[str, str],
    on_output: Callable[[str], None],
    masker: Masker | None = None,
) -> None:
    """Run `command`, passing each output line (masked) to `on_output`; BuildFailed unless it exits 0."""
    last: deque[str] = deque(maxlen=LAST_LINES)

    def emit(line: str) -> None:
        last.append(line)
        on_output(line)

    proc = await asyncio.create_subprocess_exec(
        "sh",
        "-c",
        command,
        cwd=cwd,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group, so an abort reaches its children too
    )
    try:
        assert proc.stdout is not None
        await _pump_lines(proc.stdout, LineSplitter(masker or Masker(), MAX_LINE), emit)
        returncode = await proc.wait()
    except BaseException:
        await _kill_group(proc)
        raise
    if returncode != 0:
        how = f"exited with code {returncode}" if returncode > 0 else f"was killed by signal {-returncode}"
        tail = "".join(f"\n  | {line}" for line in last)
        raise BuildFailed(
            f"build command `{command}` {how}" + (f"; last lines:{tail}" if tail else ""),
            hint=f"run `{command}` in {cwd} to reproduce, then fix it or change `build` in tako.toml",
            returncode=returncode,
            last_lines=tuple(last),
        )


async def _pump_lines(
    stream: asyncio.StreamReader, splitter: LineSplitter, emit: Callable[[str], None]
) -> None:
    while chunk := await stream.read(MAX_LINE):
        for line in splitter.feed(chunk):
            emit(line)
    for line in splitter.close():
        emit(line)


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the command's process group, SIGKILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, KILL_GRACE)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), wait)
            return
        except TimeoutError:
            continue
