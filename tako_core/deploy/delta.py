"""Only what changed: the artifact's files that a server's kept releases lack, packed once per set.

The server answers `has_release` with the hashes none of its kept releases holds (agent/delta.py);
a delta archive holds those files, the manifest, every directory and link, and `base` names every
other file for the agent to copy from a kept release. Hashes travel cut to SHORT hex digits. The
delta is packed from the build's source set (the artifact's manifest and date, only the files to
send), not by unpacking the artifact: for 50 MB, decompressing and re-tarring took ~0.1 s, this
~15 ms. A file to send that changed since the build sends the whole artifact instead, and so does
a delta not much smaller than the artifact, or one whose hash list or base would not fit in a
request line, as on a first deploy.
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
from tako_core.build.archive import write_delta

_FITS = MAX_LINE // 2  # bytes of a hash list or base in one request, leaving room for the rest
_WORTH = 0.5  # a delta is sent when at most this fraction of the artifact
# Hashes travel cut to 64 bits: on a 10 Mbit/s link the full hex of a 2000-file app's list and
# base cost ~0.26 s, cut ~0.1 s. A collision only costs time: the agent verifies each copy against
# the full hash in the delta's manifest, and refuses (STALE_BASE: the whole artifact goes) if none fits.
SHORT = 16


@dataclass(frozen=True)
class Delta:
    path: Path
    size: int
    base: dict[str, tuple[str, int]]  # the files left out: path -> (sha256[:SHORT], mode)


class Deltas:
    """The deltas of one deploy, packed in a scratch directory that `close()` removes."""

    def __init__(self) -> None:
        self._packed: dict[tuple[Path, frozenset[str]], Delta | None] = {}
        self._lock = asyncio.Lock()
        self._scratch: Path | None = None

    @staticmethod
    def hashes(artifact: Artifact) -> list[str]:
        """The distinct file hashes (cut short) to ask a server about; none when the list would not fit.
        The build's digest of the files is the artifact's manifest (zstd's and gzip's alike)."""
        wanted = sorted({file.sha256[:SHORT] for file in artifact.packed.digest.files.values()})
        return wanted if len(json.dumps(wanted)) < _FITS else []

    async def delta(self, artifact: Artifact, missing: tuple[str, ...] | None) -> Delta | None:
        """The delta for a server lacking `missing` (hashes as `hashes` gave them); None: send the
        whole artifact."""
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
        files = artifact.packed.digest.files.values()
        wanted = {file.sha256 for file in files if file.sha256[:SHORT] in send}
        try:
            size, left_out = write_delta(artifact.path, artifact.packed, wanted, dest)
        except SourceSetError:  # the project changed since the build: its artifact is what goes
            return None
        base = {path: (sha[:SHORT], mode) for path, (sha, mode) in left_out.items()}
        if size > artifact.size * _WORTH or len(json.dumps(base)) >= _FITS:
            dest.unlink()
            return None
        return Delta(dest, size, base)

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
