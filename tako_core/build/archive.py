"""Pack a source set into a deterministic tar, compressed with zstd (default) or gzip.

Determinism: sorted members, fixed mtime (the source date), uid/gid 0 with no names, normalised
modes, a gzip header without name or time, and zstd with workers on (`threads=-1`): zstd's output
is the same for any worker count >= 1 (measured: 1, 2 and all CPUs gave identical bytes; 0 differs),
so the bytes do not depend on the machine, and compression overlaps hashing and tar on the GIL-free
worker. Each file is re-hashed as it is packed; a file changed since it was hashed is an error
rather than an artifact whose manifest lies. The archive is written to a temp file in the
destination's directory, fsynced, then renamed into place.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import zstandard

from tako_core.build.blocking import check
from tako_core.build.digest import SourceDigest
from tako_core.build.errors import SourceSetError
from tako_core.build.ignore import MANIFEST_NAME
from tako_core.build.sourceset import Entry

ZSTD_LEVEL = 3
GZIP_LEVEL = 6
CODECS = ("zst", "gz")


def write_archive(
    dest: Path,
    *,
    root: Path,
    entries: tuple[Entry, ...],
    digest: SourceDigest,
    manifest: bytes,
    mtime: int,
    codec: str,
    cancel: threading.Event,
) -> tuple[str, int]:
    """Write the archive to `dest` atomically; return its sha256 hex and size."""
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with open(fd, "wb") as raw:
            out = _HashingWriter(raw)
            with (
                _compressor(codec, out) as stream,
                tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar,
            ):
                tar.addfile(
                    _info(MANIFEST_NAME, tarfile.REGTYPE, 0o644, mtime, len(manifest)), io.BytesIO(manifest)
                )
                for entry in entries:
                    check(cancel)
                    _add(tar, root, entry, digest, mtime)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return out.sha256.hexdigest(), out.size


def _add(tar: tarfile.TarFile, root: Path, entry: Entry, digest: SourceDigest, mtime: int) -> None:
    if entry.kind == "dir":
        tar.addfile(_info(entry.path, tarfile.DIRTYPE, entry.mode, mtime))
    elif entry.kind == "symlink":
        info = _info(entry.path, tarfile.SYMTYPE, entry.mode, mtime)
        info.linkname = entry.link or ""
        tar.addfile(info)
    else:
        expected = digest.files[entry.path]
        try:
            with (root / entry.path).open("rb") as f:
                reader = _HashingReader(f)
                tar.addfile(_info(entry.path, tarfile.REGTYPE, entry.mode, mtime, expected.size), reader)
        except OSError as exc:  # tarfile's "unexpected end of data" when the file shrank
            raise _changed(entry.path) from exc
        if reader.sha256.hexdigest() != expected.sha256:
            raise _changed(entry.path)


def _changed(path: str) -> SourceSetError:
    return SourceSetError(
        f"{path} changed while the artifact was being packed",
        hint="stop whatever writes to the project directory (a watcher, a dev server) and deploy again",
    )


def _info(name: str, kind: bytes, mode: int, mtime: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = mtime
    info.size = size
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _compressor(codec: str, out: _HashingWriter) -> Any:
    """A binary writer compressing into `out`; closing it ends the stream but leaves `out` open."""
    if codec == "zst":
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1, write_checksum=True)
        # zstandard's stubs want IO[bytes]; it only ever calls write() and flush().
        return compressor.stream_writer(cast("IO[bytes]", out), closefd=False)
    if codec == "gz":
        return gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=GZIP_LEVEL, mtime=0)
    raise ValueError(f"unknown codec {codec!r}")


class _HashingWriter:
    """Passes bytes through to a file, hashing and counting them (the artifact's sha256 and size)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


class _HashingReader:
    """Hashes what tarfile reads, so the packed bytes are checked against the manifest."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.sha256.update(data)
        return data


@dataclass(frozen=True)
class Packed:
    """What an archive was packed from: enough to pack any part of it again without unpacking it."""

    root: Path
    entries: tuple[Entry, ...]
    digest: SourceDigest


def _manifest(artifact: Path) -> tuple[bytes, int]:
    """The manifest's bytes and the members' mtime: read off the start, the rest stays packed."""
    with _reading(artifact) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        member = tar.next()
        data = tar.extractfile(member) if member is not None and member.name == MANIFEST_NAME else None
        if member is None or data is None:
            raise ValueError(f"{artifact.name} does not start with {MANIFEST_NAME}")
        return data.read(), int(member.mtime)


def write_delta(
    artifact: Path, packed: Packed, send: set[str], dest: Path
) -> tuple[int, dict[str, tuple[str, int]]]:
    """`dest`: `artifact` with only the regular files whose sha256 is in `send` (and the manifest, every
    directory and link), packed again from the source set rather than unpacked and re-tarred. Returns
    its size and the files left out, path -> (sha256, mode). SourceSetError when a file to send changed
    since the build, or the source set is not the artifact's."""
    manifest, mtime = _manifest(artifact)
    hashes: dict[str, str] = json.loads(manifest)["files"]
    if hashes != {path: file.sha256 for path, file in packed.digest.files.items()}:
        raise SourceSetError(f"{artifact.name} was not packed from this source set")
    entries = []
    left_out: dict[str, tuple[str, int]] = {}
    for entry in packed.entries:
        if entry.kind == "file" and hashes[entry.path] not in send:
            left_out[entry.path] = (hashes[entry.path], entry.mode)
        else:
            entries.append(entry)
    _sha, size = write_archive(
        dest,
        root=packed.root,
        entries=tuple(entries),
        digest=packed.digest,
        manifest=manifest,
        mtime=mtime,
        codec="gz" if artifact.suffix == ".gz" else "zst",
        cancel=threading.Event(),
    )
    return size, left_out


@contextlib.contextmanager
def _reading(artifact: Path) -> Iterator[IO[bytes]]:
    """The artifact's tar stream, decompressed."""
    with artifact.open("rb") as raw:
        if artifact.suffix == ".gz":
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                yield cast("IO[bytes]", stream)
        else:
            with zstandard.ZstdDecompressor().stream_reader(raw) as zstream:
                yield cast("IO[bytes]", zstream)
