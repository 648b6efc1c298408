"""What a release's files were when it was unpacked: a stat record that spares re-reading them.

A delta assembly (agent/delta.py) copies the unchanged files from a kept release and must know their
content is still what the manifest says; reading and hashing 50 MB costs a core ~0.3 s. So when a
release is unpacked, the agent records per manifest file (size, mtime_ns, ctime_ns, inode, sha256)
in a file of its own beside the release (`.<build>.stamps`, 0600, in releases/, which an app running
as its own user cannot write). A kept file whose fstat still matches its record is trusted as that
sha256 without being read: a write or a chmod sets ctime to the present, a file put in its place has
another inode, and ctime cannot be set from user space (git's index check). Anything else - no
record, a garbled one, a file not in it - is hashed as before.

Racy files, as in git: a change in the same clock tick as the record's lstat would keep the ctime
it saw. So the record starts only once the clock has moved past the moment the tree was complete
(`_tick`), and a file whose ctime is not older than that start is left out (hashed when used).
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

Stamp = tuple[int, int, int, int, str]  # size, mtime_ns, ctime_ns, inode, sha256
_TICK_TRIES = 200  # 1 ms apart: a coarse file clock ticks every 1-10 ms


def path_of(release: Path) -> Path:
    return release.parent / f".{release.name}.stamps"


def record(release: Path, files: dict[str, str]) -> None:
    """Record `files` (path -> sha256, the release's manifest) as they are now in `release`. Best
    effort: a record that cannot be written (a full disk) is none, and its files get hashed."""
    dest = path_of(release)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
    try:
        dest.unlink(missing_ok=True)  # an earlier attempt's
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as out:
            start = _tick(out.fileno())
            stamps: dict[str, Stamp] = {}
            for rel, sha in files.items():
                try:
                    st = os.lstat(os.path.join(release, rel))
                except (OSError, ValueError):
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_ctime_ns < start:
                    stamps[rel] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, sha)
            json.dump(stamps, out)
        # No fsync: a record lost or torn in a crash is only garbled, and a garbled one means hashing.
        os.replace(tmp, dest)
    except OSError:
        pass  # no record, as the docstring says
    finally:
        tmp.unlink(missing_ok=True)  # gone already once it replaced the record


def _tick(fd: int) -> int:
    """A ctime later than every change made before this call (the file clock has ticked since)."""
    first = os.fstat(fd).st_ctime_ns
    for _ in range(_TICK_TRIES):
        os.fchmod(fd, 0o600)  # a chmod stamps ctime with the present, even to the same mode
        now = os.fstat(fd).st_ctime_ns
        if now > first:
            return now
        time.sleep(0.001)
    return first  # a clock that never moved: every file counts as racy, all are hashed


def load(release: Path) -> dict[str, Stamp]:
    """The record of `release`; empty when there is none or it is not one (then every file is hashed)."""
    try:
        with open(path_of(release), "rb") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(found, dict):
        return {}
    return {rel: (s[0], s[1], s[2], s[3], s[4]) for rel, s in found.items() if _valid(s)}


def _valid(stamp: object) -> bool:
    return (
        isinstance(stamp, list)
        and len(stamp) == 5
        and all(type(n) is int for n in stamp[:4])
        and isinstance(stamp[4], str)
    )


def matches(st: os.stat_result, stamp: Stamp, sha: str) -> bool:
    """`st` (of an open file) is the file recorded with content `sha`, unchanged since."""
    return (
        stat.S_ISREG(st.st_mode)
        and (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) == stamp[:4]
        and stamp[4] == sha
    )
