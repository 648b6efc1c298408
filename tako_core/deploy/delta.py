"""Only what changed: the artifact's files that a server's kept releases lack, packed once per set.

The server answers `has_release` with the hashes none of its kept releases holds (agent/delta.py);
a delta archive holds those files, the manifest, every directory and link, and `base` names every
other file for the agent to copy from a kept release. It is packed from the build's source set (the
artifact's manifest and date, only the files to send), not by unpacking the artifact: 50 MB of
decompressing and re-tarring cost ~0.13 s, packing one file a few ms. A file to send that changed
since the build sends the whole artifact instead. A delta not much smaller than the artifact,
or one whose hash list or base would not fit in a request line, is not worth it: the whole artifact
goes instead, as on a first deploy.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tako_core.agent.contract import MAX_LINE
from tako_core.build import Artifact, SourceSetError
from tako_core.build.archive import file_hashes, write_delta

_FITS = MAX_LINE // 2  # bytes of a hash list or base in one request, leaving room for the rest
_WORTH = 0.5  # a delta is sent when at most this fraction of the artifact


@dataclass(frozen=True)
class Delta:
    path: Path
    size: int
    base: dict[str, tuple[str, int]]  # the files left out: path -> (sha256, mode)


class Deltas:
    """The deltas of one deploy, packed in a scratch directory that `close()` removes."""

    def __init__(self) -> None:
        self._hashes: dict[Path, list[str]] = {}
        self._packed: dict[tuple[Path, frozenset[str]], Delta | None] = {}
        self._lock = asyncio.Lock()
        self._scratch: Path | None = None

    async def hashes(self, artifact: Artifact) -> list[str]:
        """The distinct file hashes to ask a server about; none when the list would not fit."""
        async with self._lock:
            if artifact.path not in self._hashes:
                files = await asyncio.to_thread(file_hashes, artifact.path)
                wanted = sorted(set(files.values()))
                self._hashes[artifact.path] = wanted if len(json.dumps(wanted)) < _FITS else []
        return self._hashes[artifact.path]

    async def delta(self, artifact: Artifact, missing: tuple[str, ...] | None) -> Delta | None:
        """The delta for a server lacking `missing`; None: send the whole artifact."""
        if missing is None:
            return None
        key = (artifact.path, frozenset(missing))
        async with self._lock:
            if key not in self._packed:
                self._packed[key] = await asyncio.to_thread(self._pack, artifact, key[1], len(self._packed))
        return self._packed[key]

    def _pack(self, artifact: Artifact, send: frozenset[str], number: int) -> Delta | None:
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="tako-delta-"))
        dest = self._scratch / f"{number}{''.join(artifact.path.suffixes[-2:])}"
        try:
            size, base = write_delta(artifact.path, artifact.packed, set(send), dest)
        except SourceSetError:  # the project changed since the build: its artifact is what goes
            return None
        if size > artifact.size * _WORTH or len(json.dumps(base)) >= _FITS:
            dest.unlink()
            return None
        return Delta(dest, size, base)

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
