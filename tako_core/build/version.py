"""The build id and the source date of an artifact, from git when the project is in a work tree.

Build id: the 12-hex short commit for a clean tree; `<commit>-<8 hex of the source hash>` when
`git status` shows changes under the project directory; the source hash's first 12 hex outside
git (or in a repository without commits). Git is asked before the build command runs: the id names
the source the person wrote, not what the build produced, so the build command can read it in
`TAKO_BUILD` (e.g. to stamp a bundle).

Source date (the archive's mtimes and the manifest's `created_at`): `SOURCE_DATE_EPOCH` when set
(the reproducible-builds convention), else the HEAD commit's time, else the newest file's mtime.
Never the wall clock, so the same source gives the same bytes.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tako_core.build.errors import BuildFailed
from tako_core.build.sourceset import Entry
from tako_core.errors import BadInput

GIT_TIMEOUT = 60.0
BUILD_ID = re.compile(r"[a-z0-9][a-z0-9-]*")


@dataclass(frozen=True)
class GitState:
    top: Path  # the work tree's top directory (git prints it with symlinks resolved)
    commit: str  # short, 12 hex
    dirty: bool
    commit_time: int
    changes: tuple[str, ...] = ()  # what makes it dirty: the paths `git status` lists, as it lists them


async def read_git_state(project_dir: Path) -> GitState | None:
    """The git state of `project_dir`, or None when it is not in a work tree with a commit."""
    head = await _git(project_dir, "rev-parse", "--show-toplevel", "--short=12", "HEAD")
    if head is None:
        return None
    top, commit = head.split("\n")[:2]
    status, when = await asyncio.gather(
        _git(project_dir, "status", "--porcelain", "--untracked-files=normal", "--", "."),
        _git(project_dir, "log", "-1", "--format=%ct", "HEAD"),
    )
    if status is None or when is None:
        raise BuildFailed(f"git could not read the state of {project_dir}", hint="run `git status` there")
    changes = tuple(line[3:] for line in status.splitlines() if line.strip())
    return GitState(Path(top), commit.lower(), bool(changes), int(when.strip()), changes)


def dirty_reason(git: GitState | None) -> str | None:
    """Why the build id carries a content hash after the commit, in words; None when it does not."""
    if git is None or not git.dirty:
        return None
    shown = ", ".join(git.changes[:5]) + (f" and {len(git.changes) - 5} more" if len(git.changes) > 5 else "")
    reason = f"build {git.commit} has changes not committed to git: {shown}"
    if any(path.startswith(".tako/") or path == ".tako" for path in git.changes):
        reason += " (commit .tako/: it is part of the app, safe to commit, and the build ids stay clean)"
    return reason


def build_id(git: GitState | None, source_hash: str) -> str:
    if git is None:
        build = source_hash[:12]
    elif git.dirty:
        build = f"{git.commit}-{source_hash[:8]}"
    else:
        build = git.commit
    if not BUILD_ID.fullmatch(build):  # ends up as a directory name on every server
        raise BuildFailed(f"unexpected build id {build!r}", hint="report this as a bug in tako")
    return build


def source_date(git: GitState | None, entries: Iterable[Entry]) -> int:
    fixed = os.environ.get("SOURCE_DATE_EPOCH")
    if fixed is not None:
        try:
            return max(0, int(fixed))
        except ValueError:
            raise BadInput(
                f"SOURCE_DATE_EPOCH={fixed!r} is not a number of seconds",
                hint="set it to an integer Unix time, or unset it",
            ) from None
    if git is not None:
        return git.commit_time
    return max((entry.mtime for entry in entries if entry.kind != "dir"), default=0)


async def _git(cwd: Path, *args: str) -> str | None:
    """git's stdout, or None when git is missing or says no (not a repository, no commit yet)."""
    # No optional locks: `git status` must not take index.lock while the person's own git runs.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    try:
        proc = await asyncio.create_subprocess_exec(
            "git",
            *args,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except FileNotFoundError:
        return None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), GIT_TIMEOUT)
    except TimeoutError:
        raise BuildFailed(
            f"`git {' '.join(args)}` did not answer within {GIT_TIMEOUT:.0f} s",
            hint=f"run it yourself in {cwd} to see why",
        ) from None
    finally:
        if proc.returncode is None:  # timed out or cancelled: don't leave git running
            proc.kill()
    if proc.returncode != 0:
        return None
    return out.decode("utf-8", "surrogateescape")
