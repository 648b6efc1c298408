"""Child processes: their environment, their own process group, reading their output, killing them.

Every command the agent runs (install, release, instances) is `sh -c` in its own session, so a
signal to its process group reaches everything it started, grandchildren included.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import struct
import termios
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from tako_core.agent.accounts import Account
from tako_core.agent.contract import MAX_OUTPUT_LINE
from tako_core.mask import LineSplitter, Masker

INHERITED = ("PATH", "HOME", "LANG")  # all a child gets of the agent's own environment
_POLL = 0.05


def child_env(
    *,
    env_vars: Mapping[str, str],
    secrets: Mapping[str, str],
    build: str,
    data_dir: Path,
    env: str,
    port: int | None = None,
) -> dict[str, str]:
    result = {k: os.environ[k] for k in INHERITED if k in os.environ}
    result.update(env_vars)
    result.update(secrets)
    result.update(TAKO_BUILD=build, TAKO_DATA_DIR=str(data_dir), ENV=env)
    if port is not None:
        result["PORT"] = str(port)
    return result


async def spawn(
    command: str,
    cwd: Path,
    env: dict[str, str],
    *,
    terminal: int | None = None,
    account: Account | None = None,
) -> asyncio.subprocess.Process:
    """`sh -c command` in a new session, stdout and stderr merged into one pipe; or, given a PTY's
    `terminal` (its follower fd), with that as its controlling terminal and stdin, stdout, stderr.
    As `account`'s user when given (HOME its data dir: the agent's own home is not its to read).

    Every process of an app (install, release, instances, one-off runs) starts here."""
    if account is not None:
        env = {**env, "HOME": env.get("TAKO_DATA_DIR", "/")}
    pipes = (asyncio.subprocess.DEVNULL, asyncio.subprocess.PIPE, asyncio.subprocess.STDOUT)
    stdin, stdout, stderr = pipes if terminal is None else (terminal, terminal, terminal)
    return await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        command,
        cwd=cwd,
        env=env,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        preexec_fn=None if terminal is None else _take_terminal,
        user=account.uid if account else None,
        group=account.gid if account else None,
        extra_groups=[] if account else None,
    )


def _take_terminal() -> None:
    """In the child, after setsid: make its stdin (the PTY) the session's controlling terminal, so
    Ctrl-C typed into it signals the command's foreground process group."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def open_terminal(rows: int, cols: int) -> tuple[int, int]:
    """A new PTY of the given size: (leader fd, follower fd)."""
    leader, follower = os.openpty()
    resize(leader, rows, cols)
    return leader, follower


def resize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


async def lines(stream: asyncio.StreamReader, masker: Masker) -> AsyncIterator[str]:
    """Masked output lines; an overlong line comes out in pieces instead of stalling the reader."""
    splitter = LineSplitter(masker, MAX_OUTPUT_LINE)
    while chunk := await stream.read(65536):
        for line in splitter.feed(chunk):
            yield line
    for line in splitter.close():
        yield line


def _group_members(pgid: int) -> list[int] | None:
    """Live (non-zombie) pids in a process group, from /proc; None where /proc is unavailable."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    members = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the command name (which may contain spaces and parens): state ppid pgrp ...
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry))
    return members


def group_alive(pgid: int) -> bool:
    members = _group_members(pgid)
    if members is not None:
        return bool(members)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def kill_group(pgid: int, grace: float) -> None:
    """SIGTERM the group, wait up to `grace` seconds for all of it to exit, then SIGKILL the rest."""
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    poll = 0.002  # most processes exit within milliseconds of SIGTERM: look again soon, then back off
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return
        await asyncio.sleep(poll)
        poll = min(poll * 2, _POLL)
    _signal_group(pgid, signal.SIGKILL)
    # SIGKILL cannot be ignored; wait briefly so callers see the group gone.
    for _ in range(40):
        if not group_alive(pgid):
            return
        await asyncio.sleep(_POLL)


def orphaned_instances(releases: Path) -> list[int]:
    """Session leaders started by an earlier agent for instances under `releases` (cwd inside it,
    PORT in their environment): what a killed agent leaves behind, still holding ports."""
    found = []
    prefix = str(releases.resolve()) + os.sep
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        try:
            if os.getsid(pid) != pid or not (os.readlink(f"/proc/{pid}/cwd") + os.sep).startswith(prefix):
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if any(item.startswith(b"PORT=") for item in environ):
            found.append(pid)
    return found
