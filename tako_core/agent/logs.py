"""Instance output of one app/env: a file of stamped lines, rotated at a size cap, read back by cursor.

Each line is `<epoch seconds> <source> <text>`, the source `<build>#<instance>`. A cursor
`<inode>:<offset>` names the place after a line, so a follower that lost its connection resumes where
it stopped: in the same file, or in the rotated one (`.1`) and then the new file, with no line twice.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from tako_core.agent.contract import LogEntry

log = logging.getLogger("tako.agent")
TAIL_BYTES = 1 << 20  # read back from the end of each file for a tail


def parse(raw: bytes, cursor: str) -> LogEntry:
    text = raw.decode(errors="replace").rstrip("\n")
    stamp, _, rest = text.partition(" ")
    source, _, line = rest.partition(" ")
    try:
        return LogEntry(time=float(stamp), source=source, line=line, cursor=cursor)
    except ValueError:  # a line written before lines were stamped
        return LogEntry(time=0.0, source="", line=text, cursor=cursor)


class OutputLog:
    MAX_BYTES = 8 << 20

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rotated = path.with_suffix(".log.1")
        self._fd: int | None = None
        self._size = 0
        self._wakeup = asyncio.Event()

    @property
    def wakeup(self) -> asyncio.Event:
        """Set at the next write; take it before reading, so a write after the read still wakes."""
        return self._wakeup

    def write(self, source: str, line: str) -> None:
        data = f"{time.time():.6f} {source} {line}\n".encode()
        try:
            if self._fd is not None and self._size + len(data) > self.MAX_BYTES:
                self.close()
                os.replace(self.path, self.rotated)
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._size = os.fstat(self._fd).st_size
            self._size += os.write(self._fd, data)
        except OSError as e:  # a full disk must not take the instance down with it
            log.warning("cannot write %s: %s", self.path, e)
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def tail(self, count: int, since: float = 0.0) -> list[LogEntry]:
        """The newest `count` lines stamped at or after `since`, oldest first."""
        newest: collections.deque[LogEntry] = collections.deque(maxlen=max(count, 0))
        for path in (self.rotated, self.path):
            for entry in _entries(path, None, from_end=TAIL_BYTES):
                if entry.time >= since:
                    newest.append(entry)
        return list(newest) if count > 0 else []

    def after(self, cursor: str) -> Iterator[LogEntry]:
        """Every complete line after `cursor`; from the oldest kept line when it is unknown."""
        inode, _, offset = cursor.partition(":")
        where = int(offset) if offset.isdigit() else 0
        current, rotated = _inode(self.path), _inode(self.rotated)
        if inode == rotated:
            yield from _entries(self.rotated, where)
            yield from _entries(self.path, 0)
        elif inode == current:
            yield from _entries(self.path, where)
        else:
            yield from _entries(self.rotated, 0)
            yield from _entries(self.path, 0)

    def end(self) -> str:
        """The cursor after the last line written so far."""
        try:
            st = os.stat(self.path)
        except OSError:
            return ""
        return f"{st.st_ino}:{st.st_size}"


def _inode(path: Path) -> str | None:
    try:
        return str(os.stat(path).st_ino)
    except OSError:
        return None


def _entries(path: Path, offset: int | None, *, from_end: int = 0) -> Iterator[LogEntry]:
    """Complete lines of `path` from byte `offset` (or the last `from_end` bytes, first partial line
    dropped), each with the cursor after it."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by the with below)
    except OSError:
        return
    with f:
        inode = os.fstat(f.fileno()).st_ino
        if offset is None:
            start = max(f.seek(0, os.SEEK_END) - from_end, 0)
            f.seek(start)
            if start > 0:
                f.readline()  # the cut first line
        else:
            f.seek(offset)
        position = f.tell()
        for raw in iter(f.readline, b""):
            if not raw.endswith(b"\n"):
                return  # still being written: it comes whole next time
            position += len(raw)
            yield parse(raw, f"{inode}:{position}")
