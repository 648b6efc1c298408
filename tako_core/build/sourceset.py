"""The source set: which files of a project go into the artifact, in a fixed order.

Directories, regular files and symlinks are kept; sockets, FIFOs and devices are skipped (they
cannot be shipped). A symlink is kept as a symlink only when it resolves inside the project,
since `tarfile`'s "data" filter on the server refuses anything else; an absolute link into the
project is stored relative so that it still points inside once extracted elsewhere.
Modes are normalised as git does (0755 when executable, else 0644) so the archive depends on
content, not on umask or on who checked the project out.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tako_core.build.blocking import check
from tako_core.build.errors import SourceSetError
from tako_core.build.ignore import IgnoreRules, always_excluded, rules_above

Kind = Literal["file", "dir", "symlink"]


@dataclass(frozen=True)
class Entry:
    path: str  # posix, relative to the project directory
    kind: Kind
    mode: int
    mtime: int  # whole seconds; only used to date a project outside git
    link: str | None = None  # symlinks: the target as stored in the archive


def collect_source_set(project_dir: Path, anchor: Path, cancel: threading.Event) -> tuple[Entry, ...]:
    """The entries of `project_dir` (resolved), sorted by path; `anchor` is where `.gitignore` rules start."""
    prefix = project_dir.relative_to(anchor).as_posix()
    prefix = "" if prefix == "." else prefix + "/"
    root_rules = rules_above(anchor, project_dir).entering(project_dir, prefix.rstrip("/"))
    entries: list[Entry] = []
    pending: list[tuple[Path, str, IgnoreRules]] = [(project_dir, "", root_rules)]
    while pending:
        check(cancel)
        directory, rel_dir, rules = pending.pop()
        for item in _scan(directory):
            rel = f"{rel_dir}/{item.name}" if rel_dir else item.name
            if always_excluded(item.name, at_root=not rel_dir):
                continue
            is_dir = item.is_dir(follow_symlinks=False)
            if rules.ignored(prefix + rel, is_dir=is_dir):
                continue
            st = item.stat(follow_symlinks=False)
            if item.is_symlink():
                link = _link_target(project_dir, Path(item.path), rel)
                entries.append(Entry(rel, "symlink", 0o777, int(st.st_mtime), link))
            elif is_dir:
                entries.append(Entry(rel, "dir", 0o755, int(st.st_mtime)))
                pending.append((Path(item.path), rel, rules.entering(Path(item.path), prefix + rel)))
            elif stat.S_ISREG(st.st_mode):
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                entries.append(Entry(rel, "file", mode, int(st.st_mtime)))
    if not any(entry.kind == "file" for entry in entries):
        raise SourceSetError(
            f"no files to deploy in {project_dir}",
            hint="check .gitignore: it may exclude everything, or the project directory is wrong",
        )
    entries.sort(key=lambda entry: entry.path)
    return tuple(entries)


def _scan(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as items:
            return list(items)
    except OSError as exc:
        raise SourceSetError(
            f"cannot list {directory}: {exc.strerror}",
            hint="make it readable, or add it to .gitignore if it should not be deployed",
        ) from exc


def _link_target(root: Path, link: Path, rel: str) -> str:
    """The symlink's target as stored in the archive; SourceSetError when it leaves the project."""
    text = os.readlink(link)
    resolved = os.path.realpath(link)
    # The lexical check matters too: the server resolves the link text against the extracted tree.
    lexical = os.path.normpath(os.path.join(os.path.dirname(rel), text))
    outside = not _inside(resolved, root) or (
        not os.path.isabs(text) and (lexical == ".." or lexical.startswith("../"))
    )
    if outside:
        raise SourceSetError(
            f"symlink {rel} points outside the project (-> {text})",
            hint="point it inside the project, replace it with a copy of its target, or add it to .gitignore",
        )
    if os.path.isabs(text):
        return os.path.relpath(resolved, link.parent)
    return text


def _inside(path: str, root: Path) -> bool:
    return path == str(root) or path.startswith(str(root) + os.sep)
