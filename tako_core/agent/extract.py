"""Unpacking an uploaded artifact (tar.zst or tar.gz) safely into a directory.

With tarfile's "data" filter where the host's Python has it (3.10.12+ / 3.11.4+); Debian 12 ships
3.11.2 without it, so there `checked_members` applies the same rules itself: it refuses absolute
paths, `..`, links leaving the directory, hard links and devices, and drops set-id bits and owners.
zstd comes from the `zstandard` module when importable, else from the `zstd` binary.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tako_core.agent.contract import FAILED, ProtocolError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"


def codecs() -> tuple[str, ...]:
    """The compressions this host can unpack, best first."""
    found = []
    if importlib.util.find_spec("zstandard") is not None or shutil.which("zstd"):
        found.append("zst")
    found.append("gz")
    return tuple(found)


def checked_members(archive: tarfile.TarFile, dest: Path) -> Iterator[tarfile.TarInfo]:
    """The members of `archive`, checked as the data filter would; ProtocolError on the first bad one."""
    root = os.path.realpath(dest)

    def inside(path: str) -> bool:
        return os.path.commonpath([root, os.path.realpath(path)]) == root

    for member in archive:
        name = member.name
        if os.path.isabs(name) or not inside(os.path.join(root, name)):
            raise ProtocolError(FAILED, f"unsafe path in the archive: {name!r}")
        if member.issym():
            target = os.path.join(root, os.path.dirname(name), member.linkname)
            if os.path.isabs(member.linkname) or not inside(target):
                raise ProtocolError(FAILED, f"link leaving the release in the archive: {name!r}")
        elif not (member.isfile() or member.isdir()):
            raise ProtocolError(FAILED, f"unsupported entry in the archive: {name!r}")
        member.mode = (member.mode or 0o644) & 0o755 | 0o600
        member.uid, member.gid = os.getuid(), os.getgid()
        member.uname = member.gname = ""
        yield member


def _extract_stream(stream: Any, dest: Path) -> None:  # a file, GzipFile, zstd or pipe reader
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        extractall: Any = archive.extractall  # `filter` is unknown to typeshed's 3.10 view
        if hasattr(tarfile, "data_filter"):
            extractall(dest, filter="data")
        else:
            extractall(dest, members=checked_members(archive, dest))


def extract(archive: Path, dest: Path) -> None:
    """Unpack `archive` into the existing empty directory `dest`; ProtocolError on any failure."""
    with open(archive, "rb") as f:
        magic = f.read(4)
    try:
        if magic.startswith(GZIP_MAGIC):
            with gzip.open(archive, "rb") as stream:
                _extract_stream(stream, dest)
        elif magic == ZSTD_MAGIC:
            _extract_zstd(archive, dest)
        else:
            raise ProtocolError(FAILED, f"{archive.name} is neither tar.zst nor tar.gz")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ProtocolError(FAILED, f"cannot unpack {archive.name}: {e}") from None


def _extract_zstd(archive: Path, dest: Path) -> None:
    if importlib.util.find_spec("zstandard") is not None:
        import zstandard

        with open(archive, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as stream:
            _extract_stream(stream, dest)
        return
    binary = shutil.which("zstd")
    if binary is None:
        raise ProtocolError(FAILED, "this server cannot unpack zstd", hint="send a tar.gz artifact")
    with subprocess.Popen([binary, "-dcq", str(archive)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        try:
            _extract_stream(proc.stdout, dest)
        finally:
            proc.stdout.close()
            status = proc.wait()
    if status != 0:
        raise ProtocolError(FAILED, f"zstd failed to decompress {archive.name} (exit {status})")
