"""A release assembled from the files of kept releases plus a delta archive: only what changed is sent.

The client asks `has_release` with the new build's file hashes; `missing` answers which of them no
kept complete release holds, by the manifests those releases were shipped with. The client uploads
an archive of only those files (with the manifest, every directory and link) and sends `prepare` with
`base`: each other regular file as path -> [sha256, mode]. After the archive is unpacked as any
other, each base file is copied from a kept release, hashed as it is copied: content that no longer
matches (an install step changed it) refuses the assembly with STALE_BASE, and the client sends the
whole artifact. Copies, not hardlinks: an install step of the new release may write into its files,
which must not change an older release. A base path gets the same checks as an archive member
(agent/extract.py): a plain relative name, not defined twice, not through a symlink of the archive
(checked by name, not on the disk), and the copies count against the same disk caps.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Iterable
from pathlib import Path

from tako_core.agent.contract import BAD_REQUEST, FAILED, STALE_BASE, ProtocolError
from tako_core.agent.extract import caps, prefixes

MANIFEST = ".tako-manifest.json"  # the artifact's first member (tako_core/build/manifest.py)
_BLOCK = 1 << 20


def _plain(rel: object) -> bool:
    """A relative path in normal form that names no parent: what an archive member may be called."""
    return (
        isinstance(rel, str)
        and bool(rel)
        and not os.path.isabs(rel)
        and "\0" not in rel
        and ".." not in rel.split("/")
        and posixpath.normpath(rel) == rel
    )


class _Tree:
    """Paths inside one directory, with links resolved: a path through a link leading out is refused."""

    def __init__(self, root: str | Path) -> None:
        self.root = os.path.realpath(root)
        self._parents: dict[str, str] = {}  # a release has few directories and many files

    def inside(self, rel: object) -> str | None:
        if not _plain(rel):
            return None
        assert isinstance(rel, str)
        head, name = os.path.split(rel)
        if head not in self._parents:
            self._parents[head] = os.path.realpath(os.path.join(self.root, head))
        parent = self._parents[head]
        if os.path.commonpath([self.root, parent]) != self.root:
            return None
        return os.path.join(parent, name)


def available(sources: Iterable[Path]) -> dict[str, tuple[_Tree, str]]:
    """sha256 -> a release (preferred first) and the path of a file shipped there with that content."""
    index: dict[str, tuple[_Tree, str]] = {}
    for source in sources:
        try:
            files = json.loads((source / MANIFEST).read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not isinstance(files, dict):
            continue
        tree = _Tree(source)
        for rel, sha in files.items():
            if _plain(rel) and isinstance(sha, str):
                index.setdefault(sha, (tree, rel))
    return index


def missing(wanted: list[str], sources: Iterable[Path]) -> tuple[str, ...]:
    have = available(sources)
    return tuple(sorted({sha for sha in wanted if sha not in have}))


def assemble(dest: Path, links: set[str], base: dict[str, object], sources: Iterable[Path]) -> None:
    """Copy every base file into `dest` (an unpacked delta archive with the symlinks `links`),
    verifying its hash."""
    have = available(sources)
    tree = _Tree(dest)
    max_bytes, max_members = caps(dest)
    total = 0
    for count, (rel, spec) in enumerate(base.items(), 1):
        target = tree.inside(rel)
        if target is None or any(p in links for p in prefixes(rel)):
            raise ProtocolError(BAD_REQUEST, f"unsafe path in the base files: {rel[:200]!r}")
        if os.path.lexists(target):
            raise ProtocolError(BAD_REQUEST, f"a name defined twice: {rel[:200]!r}")
        if not (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], str)):
            raise ProtocolError(BAD_REQUEST, f"base file {rel[:200]!r} must be [sha256, mode]")
        sha, mode = spec
        if not isinstance(mode, int) or isinstance(mode, bool):
            raise ProtocolError(BAD_REQUEST, f"base file {rel[:200]!r} must be [sha256, mode]")
        found = have.get(sha)
        source = found[0].inside(found[1]) if found is not None else None
        total += _size(source)
        if total > max_bytes or count > max_members:
            raise ProtocolError(
                FAILED,
                f"the release assembles to more than this server can hold ({total} bytes of "
                f"copies so far; {max_bytes} bytes and {max_members} files allowed)",
                hint="free disk space on the server, or make the artifact smaller",
            )
        try:
            copied = source is not None and _copy(source, target, sha, mode & 0o755 | 0o600)
        except OSError as e:
            raise ProtocolError(FAILED, f"cannot write {rel[:200]}: {e.strerror}") from None
        if not copied:
            raise ProtocolError(STALE_BASE, f"no kept release holds {rel[:200]} as shipped")


def _size(path: str | None) -> int:
    try:
        return os.stat(path, follow_symlinks=False).st_size if path is not None else 0
    except OSError:
        return 0  # gone: the copy finds it so


def _copy(source: str, target: str, sha: str, mode: int) -> bool:
    """Copy a regular file, never following a link at either end; False if its content is not `sha`."""
    digest = hashlib.sha256()
    try:
        src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        os.fchmod(dst, mode)  # as extraction sets it, whatever the agent's umask (077)
        with open(dst, "wb") as out:
            while block := os.read(src, _BLOCK):
                digest.update(block)
                out.write(block)
    finally:
        os.close(src)
    return digest.hexdigest() == sha
