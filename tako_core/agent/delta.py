"""A release assembled from the files of kept releases plus a delta archive: only what changed is sent.

The client asks `has_release` with the new build's file hashes, cut short (prefixes: a collision
makes the agent claim a file it lacks, which the assembly then refuses); `missing` answers which of
them no kept complete release holds, by the manifests those releases were shipped with. The client
uploads an archive of only those files (with the manifest, every directory and link) and sends
`prepare` with `base`: each other regular file as path -> [sha256, mode], the hash cut short too (a
prefix of the one in the archive's manifest, which the copy is verified against). After the archive
is unpacked as any other, each base file is copied from a kept release. A source whose fstat matches
the stat record taken when its release was unpacked (agent/stamps.py) is copied by the kernel
without being read; any other is hashed as it is copied: content that no longer matches (an install
step changed it) refuses the assembly with STALE_BASE, and the client sends the whole artifact.
Copies, not hardlinks: an install step of the new release may write into its files, which must not
change an older release. A base path gets the same checks as an archive member (agent/extract.py):
a plain relative name, not defined twice, not through a symlink of the archive (checked by name, not
on the disk), and the copies count against the same disk caps.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from tako_core.agent import stamps
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
        self._parents: dict[str, str | None] = {}  # a release has few directories and many files

    def inside(self, rel: object) -> str | None:
        if not _plain(rel):
            return None
        assert isinstance(rel, str)
        head, name = os.path.split(rel)
        if head not in self._parents:
            resolved = os.path.realpath(os.path.join(self.root, head))
            inside = os.path.commonpath([self.root, resolved]) == self.root
            self._parents[head] = resolved if inside else None
        parent = self._parents[head]
        return os.path.join(parent, name) if parent is not None else None


def shipped(release: Path) -> dict[str, str]:
    """Path -> sha256 of the regular files `release` was shipped with, by its manifest; {} if unreadable."""
    try:
        files = json.loads((release / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return files if isinstance(files, dict) else {}


_Found = tuple[_Tree, str, dict[str, stamps.Stamp]]  # a kept release, a file's path there, its record


def available(sources: Iterable[Path], *, recorded: bool = False) -> dict[str, _Found]:
    """sha256 -> a release (preferred first), the path of a file shipped there with that content and,
    if `recorded`, that release's stat record (agent/stamps.py)."""
    index: dict[str, _Found] = {}
    for source in sources:
        files = shipped(source)
        tree, record = _Tree(source), stamps.load(source) if recorded else {}
        for rel, sha in files.items():
            if _plain(rel) and isinstance(sha, str) and sha not in index:
                index[sha] = (tree, rel, record)
    return index


def missing(wanted: list[str], sources: Iterable[Path]) -> tuple[str, ...]:
    """Those of `wanted` (sha256 hex digests, or prefixes of them) no kept release holds."""
    have = available(sources)
    known = {sha[:n] for n in {len(w) for w in wanted} for sha in have}
    return tuple(sorted({w for w in wanted if w not in known}))


def assemble(dest: Path, links: set[str], base: dict[str, object], sources: Iterable[Path]) -> None:
    """Copy every base file into `dest` (an unpacked delta archive with the symlinks `links`),
    each known unchanged by its stat record or hashed."""
    have = available(sources, recorded=True)
    shipping = shipped(dest)
    tree = _Tree(dest)
    max_bytes, max_members = caps(dest)
    total = 0
    for count, (rel, spec) in enumerate(base.items(), 1):
        target = tree.inside(rel)
        if target is None or any(p in links for p in prefixes(rel)):
            raise ProtocolError(BAD_REQUEST, f"unsafe path in the base files: {rel[:200]!r}")
        if not (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], str)):
            raise ProtocolError(BAD_REQUEST, f"base file {rel[:200]!r} must be [sha256, mode]")
        short, mode = spec
        if not isinstance(mode, int) or isinstance(mode, bool):
            raise ProtocolError(BAD_REQUEST, f"base file {rel[:200]!r} must be [sha256, mode]")
        sha = shipping.get(rel)
        if not (isinstance(sha, str) and short and sha.startswith(short)):
            raise ProtocolError(BAD_REQUEST, f"base file {rel[:200]!r} is not in the manifest as such")
        try:
            dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise ProtocolError(BAD_REQUEST, f"a name defined twice: {rel[:200]!r}") from None
        except OSError as e:
            raise ProtocolError(FAILED, f"cannot write {rel[:200]}: {e.strerror}") from None
        with open(dst, "wb") as out:
            os.fchmod(dst, mode & 0o755 | 0o600)  # as extraction sets it, whatever the agent's umask (077)
            found = have.get(sha)
            src = _open(found[0].inside(found[1])) if found is not None else None
            if src is None or found is None:
                raise ProtocolError(STALE_BASE, f"no kept release holds {rel[:200]} as shipped")
            try:
                st = os.fstat(src)
                total += st.st_size
                if total > max_bytes or count > max_members:
                    raise ProtocolError(
                        FAILED,
                        f"the release assembles to more than this server can hold ({total} bytes of "
                        f"copies so far; {max_bytes} bytes and {max_members} files allowed)",
                        hint="free disk space on the server, or make the artifact smaller",
                    )
                stamp = found[2].get(found[1])
                known = stamp is not None and stamps.matches(st, stamp, sha)
                copied = (known and _kernel_copy(src, dst, st)) or _hash_copy(src, out, sha)
            except OSError as e:
                raise ProtocolError(FAILED, f"cannot write {rel[:200]}: {e.strerror}") from None
            finally:
                os.close(src)
        if not copied:
            raise ProtocolError(STALE_BASE, f"no kept release holds {rel[:200]} as shipped")


def _open(source: str | None) -> int | None:
    """A kept file open for reading, never through a link at its end; None if it is not there."""
    try:
        return os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC) if source is not None else None
    except OSError:
        return None


def _kernel_copy(src: int, dst: int, known: os.stat_result) -> bool:
    """Copy a source whose content its record vouches for without reading it into Python; False
    (with both ends rewound, `dst` emptied) where the kernel cannot or the source changed meanwhile."""
    done = 0
    try:
        while done < known.st_size and (step := os.copy_file_range(src, dst, known.st_size - done)):
            done += step
        after = os.fstat(src)
    except OSError:  # EXDEV, ENOSYS or EOPNOTSUPP on some kernels and filesystems
        after = None
    if after is not None and done == after.st_size and after.st_ctime_ns == known.st_ctime_ns:
        return True
    os.lseek(src, 0, os.SEEK_SET)
    os.ftruncate(dst, 0)
    os.lseek(dst, 0, os.SEEK_SET)
    return False


def _hash_copy(src: int, out: BinaryIO, sha: str) -> bool:
    """Copy `src` into `out`, hashing it as it goes; False if its content is not `sha`."""
    digest = hashlib.sha256()
    while block := os.read(src, _BLOCK):
        digest.update(block)
        out.write(block)
    return digest.hexdigest() == sha
