"""Unpacking an uploaded artifact (tar.zst or tar.gz) safely into a directory.

Every member is checked against the archive's own entries, not the disk (`realpath` gives up at
PATH_MAX, so a long symlink chain passes a disk-based check while the kernel still follows it:
CVE-2025-4517): no absolute names or `..`, no name defined twice, no member whose path passes
through a symlink member, symlink targets resolved lexically, inside the release and not through a
symlink, no hard links or devices; set-id bits and owners are dropped. Directories are made here,
so nothing sets attributes through a link at the end. tarfile's "data" filter is added where it
is patched (`os.path.ALLOW_MISSING` exists). Unpacked bytes and members are counted while
streaming and capped by the free disk. zstd comes from `zstandard` when importable, else `zstd`.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import posixpath
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tako_core.agent.contract import FAILED, ProtocolError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
PATCHED_DATA_FILTER = hasattr(tarfile, "data_filter") and hasattr(os.path, "ALLOW_MISSING")
MAX_MEMBERS = 1_000_000
DISK_RESERVE = 64 << 20  # left free on the disk (or a 20th of a smaller one)


def codecs() -> tuple[str, ...]:
    """The compressions this host can unpack, best first."""
    found = []
    if importlib.util.find_spec("zstandard") is not None or shutil.which("zstd"):
        found.append("zst")
    found.append("gz")
    return tuple(found)


def caps(dest: Path) -> tuple[int, int]:
    """(bytes, members) an archive may unpack to in `dest`: what its disk has free, less a reserve."""
    disk = os.statvfs(dest)
    reserve = min(DISK_RESERVE, disk.f_blocks * disk.f_frsize // 20)
    members = disk.f_favail - disk.f_files // 20 if disk.f_files else MAX_MEMBERS
    return disk.f_bavail * disk.f_frsize - reserve, min(members, MAX_MEMBERS)


def _refuse(what: str, name: str) -> ProtocolError:
    return ProtocolError(FAILED, f"{what} in the archive: {name[:200]!r}")


def prefixes(path: str) -> Iterator[str]:
    """ "a/b/c" -> "a", "a/b", "a/b/c"."""
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        yield "/".join(parts[:i])


def checked_members(archive: tarfile.TarFile, dest: Path, links: set[str]) -> Iterator[tarfile.TarInfo]:
    """The file and symlink members of `archive` (directories are made here); ProtocolError on the
    first bad member or once the unpacked size or member count passes the caps. `links` collects
    the symlink members' names."""
    max_bytes, max_members = caps(dest)
    seen: set[str] = set()
    through: set[str] = set()  # every path a link target passes on its way
    total = 0
    for count, member in enumerate(archive, 1):
        raw = member.name
        name = posixpath.normpath(raw)
        if name == "." and member.isdir():  # `tar -C dir .` starts with "./"
            continue
        if raw.startswith("/") or name == ".." or name.startswith("../") or name == ".":
            raise _refuse("unsafe path", raw)
        if name in seen:
            raise _refuse("a name defined twice", raw)
        if any(p in links for p in prefixes(posixpath.dirname(name))):
            raise _refuse("a path through a symlink", raw)
        seen.add(name)
        total += member.size if member.isfile() else 0
        if total > max_bytes or count > max_members:
            raise ProtocolError(
                FAILED,
                f"the archive unpacks to more than this server can hold ({count} members, "
                f"{total} bytes so far; {max_bytes} bytes and {max_members} members allowed)",
                hint="free disk space on the server, or make the artifact smaller",
            )
        if member.issym():
            _check_link(name, member.linkname, links, through)
            links.add(name)
        elif member.isdir():
            (dest / name).mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(dest / name, member.mode & 0o755 | 0o700, follow_symlinks=False)
            continue
        elif not member.isfile():
            raise _refuse("an unsupported entry", raw)
        member.name = name
        member.mode = (member.mode or 0o644) & 0o755 | 0o600
        member.uid, member.gid = os.getuid(), os.getgid()
        member.uname = member.gname = ""
        yield member


def _check_link(name: str, target: str, links: set[str], through: set[str]) -> None:
    if name in through:  # an earlier link's target resolved lexically through this name
        raise _refuse("a symlink on another link's way", name)
    if target.startswith("/"):
        raise _refuse("a link leaving the release", name)
    here = posixpath.dirname(name)
    for part in target.split("/"):
        here = posixpath.normpath(posixpath.join(here, part))
        if here == ".." or here.startswith("../"):
            raise _refuse("a link leaving the release", name)
        if here in links:
            raise _refuse("a link through a symlink", name)
        through.add(here)


def _extract_stream(stream: Any, dest: Path, links: set[str]) -> None:  # a file, GzipFile, zstd or pipe
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        extractall: Any = archive.extractall  # `filter` is unknown to typeshed's 3.10 view
        options = {}
        if hasattr(tarfile, "data_filter"):  # 3.12+ warns without a filter; ours checked already
            options["filter"] = "data" if PATCHED_DATA_FILTER else "fully_trusted"
        extractall(dest, members=checked_members(archive, dest, links), **options)


def extract(archive: Path, dest: Path) -> set[str]:
    """Unpack `archive` into the existing empty directory `dest`; ProtocolError on any failure.
    Returns its symlinks' names: what a file added later (agent/delta.py) must not pass through."""
    with open(archive, "rb") as f:
        magic = f.read(4)
    links: set[str] = set()
    try:
        if magic.startswith(GZIP_MAGIC):
            with gzip.open(archive, "rb") as stream:
                _extract_stream(stream, dest, links)
        elif magic == ZSTD_MAGIC:
            _extract_zstd(archive, dest, links)
        else:
            raise ProtocolError(FAILED, f"{archive.name} is neither tar.zst nor tar.gz")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ProtocolError(FAILED, f"cannot unpack {archive.name}: {e}") from None
    return links


def _extract_zstd(archive: Path, dest: Path, links: set[str]) -> None:
    if importlib.util.find_spec("zstandard") is not None:
        import zstandard

        with open(archive, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as stream:
            _extract_stream(stream, dest, links)
        return
    binary = shutil.which("zstd")
    if binary is None:
        raise ProtocolError(FAILED, "this server cannot unpack zstd", hint="send a tar.gz artifact")
    with subprocess.Popen([binary, "-dcq", str(archive)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        try:
            _extract_stream(proc.stdout, dest, links)
        finally:
            proc.stdout.close()
            status = proc.wait()
    if status != 0:
        raise ProtocolError(FAILED, f"zstd failed to decompress {archive.name} (exit {status})")
