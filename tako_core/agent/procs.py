"""Child processes: their environment, their own process group, reading their output, killing them.

Every command the agent runs (install, release, instances) is `sh -c` in its own session, so a
signal to its process group reaches everything it started, grandchildren included.

Instances outlive the agent that started them (an agent restart or upgrade must not restart apps):
their output goes to a FIFO that a successor opens again, and they are watched through a pidfd, so a
successor adopts them the same way (`Watched`, `leftover_instances`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import struct
import subprocess
import termios
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    pipes = (asyncio.subprocess.DEVNULL, asyncio.subprocess.PIPE, asyncio.subprocess.STDOUT)
    stdin, stdout, stderr = pipes if terminal is None else (terminal, terminal, terminal)
    return await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        command,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        preexec_fn=None if terminal is None else _take_terminal,
        **_how(cwd, env, account),
    )


def spawn_instance(
    command: str, cwd: Path, env: dict[str, str], output: int, account: Account | None
) -> Watched:
    """Like `spawn`, for an instance: its stdout and stderr are `output` (see `open_output`), and
    it is no asyncio subprocess, which would kill it when the agent's loop closes."""
    child = subprocess.Popen(
        ["/bin/sh", "-c", command],
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=output,
        **_how(cwd, env, account),
    )
    return Watched(child.pid, child)


def _how(cwd: Path, env: dict[str, str], account: Account | None) -> dict[str, Any]:
    if account is not None:
        env = {**env, "HOME": env.get("TAKO_DATA_DIR", "/")}
    return {
        "cwd": cwd,
        "env": env,
        "start_new_session": True,
        "user": account.uid if account else None,
        "group": account.gid if account else None,
        "extra_groups": [] if account else None,
    }


def open_output(path: Path) -> tuple[int, int]:
    """A new FIFO at `path` for an instance's output: (the instance's end, the agent's end).

    The instance's end is opened read-write, so the FIFO always has a reader: while no agent runs
    (a restart) the instance never gets SIGPIPE, its output waits in the pipe (1 MiB where allowed).
    The agent's end is read-only and non-blocking; a successor agent gets its own with `read_output`."""
    path.parent.mkdir(mode=0o700, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.mkfifo(path, 0o600)
    theirs = os.open(path, os.O_RDWR)
    with contextlib.suppress(OSError):
        fcntl.fcntl(theirs, fcntl.F_SETPIPE_SZ, 1 << 20)
    return theirs, read_output(path)


def read_output(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK)


async def output_reader(fd: int) -> asyncio.StreamReader:
    """A StreamReader over the agent's end of an output FIFO (it takes `fd` over)."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    return reader


class Watched:
    """A process watched through a pidfd (readable once it has exited), so the agent need not be its
    parent: a successor agent watches the instances it adopts the same way. Its exit status is known
    only to the agent that started it (`child`); an adopted process reports UNKNOWN_EXIT."""

    UNKNOWN_EXIT = -255

    def __init__(self, pid: int, child: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._child = child
        self._fd: int | None = os.pidfd_open(pid)
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_reader(self._fd, self._gone)

    def _gone(self) -> None:
        self.forget()
        self.returncode = self._child.wait() if self._child is not None else _reap(self.pid)
        if not self._exited.done():
            self._exited.set_result(None)

    def forget(self) -> None:
        """Stop watching (the agent is leaving it running for its successor)."""
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None

    async def wait(self) -> int:
        await asyncio.shield(self._exited)
        assert self.returncode is not None
        return self.returncode


def _reap(pid: int) -> int:
    """The exit status of a process this one started before it restarted in place (still its
    child); Watched.UNKNOWN_EXIT for one another agent started."""
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return Watched.UNKNOWN_EXIT
    return os.waitstatus_to_exitcode(status) if reaped else Watched.UNKNOWN_EXIT


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


@dataclass(frozen=True)
class Leftover:
    """An instance an earlier agent started: its session leader, port, build and where its stdout goes."""

    pid: int
    port: int
    build: str
    output: str


def leftover_instances(releases: Path) -> list[Leftover]:
    """Session leaders started by an earlier agent for instances under `releases` (cwd inside it,
    PORT in their environment): what a restarted or killed agent leaves behind, holding ports."""
    found = []
    prefix = str(releases.resolve()) + os.sep
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd") + os.sep
            if os.getsid(pid) != pid or not cwd.startswith(prefix):
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            output = os.readlink(f"/proc/{pid}/fd/1")
        except OSError:
            continue
        ports = [item[5:] for item in environ if item.startswith(b"PORT=")]
        if ports and ports[0].isdigit():
            found.append(Leftover(pid, int(ports[0]), cwd[len(prefix) :].split(os.sep)[0], output))
    return found


def started_at(pid: int) -> float | None:
    """Wall clock of a process's start, from /proc (boot time + its start in clock ticks)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")
